//! Interval executions (CONTRACT.md §5): what the manager reads of a strategy's
//! `execution_interval_s`, `max_execution_s` and statistics, and the batched write
//! of the statistics.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A strategy's interval columns and execution statistics, with its id.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct IntervalRow {
    pub id: Uuid,
    #[sqlx(flatten)]
    pub columns: ExecutionColumns,
}

/// The interval columns of `strategy_configs` and the statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct ExecutionColumns {
    /// `NULL`: a continuous strategy.
    pub execution_interval_s: Option<i32>,
    pub max_execution_s: i32,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub stats: ExecutionStatsRow,
}

/// The columns of [`ExecutionColumns`], for a `SELECT`.
pub const EXECUTION_COLUMNS: &str =
    "execution_interval_s, max_execution_s, next_execution_at, last_execution_at, \
     execution_count, successful_executions, failed_executions, skipped_executions, \
     last_execution_duration_ms, avg_execution_ms, last_execution_error";

/// The statistics columns, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct ExecutionStatsRow {
    pub next_execution_at: Option<DateTime<Utc>>,
    pub last_execution_at: Option<DateTime<Utc>>,
    pub execution_count: i64,
    pub successful_executions: i64,
    pub failed_executions: i64,
    pub skipped_executions: i64,
    pub last_execution_duration_ms: Option<i64>,
    pub avg_execution_ms: Option<f64>,
    pub last_execution_error: Option<String>,
}

/// The interval columns and statistics of the strategies `ids` that still exist.
pub async fn interval_rows(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<IntervalRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT id, {EXECUTION_COLUMNS} FROM strategy_configs WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Write the statistics of several strategies in one statement (a deleted strategy's
/// are dropped).
pub async fn write_execution_stats(
    pool: &PgPool,
    rows: &[(Uuid, ExecutionStatsRow)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    let column =
        |f: fn(&ExecutionStatsRow) -> i64| -> Vec<i64> { rows.iter().map(|(_, s)| f(s)).collect() };
    let next: Vec<Option<DateTime<Utc>>> = rows.iter().map(|(_, s)| s.next_execution_at).collect();
    let last: Vec<Option<DateTime<Utc>>> = rows.iter().map(|(_, s)| s.last_execution_at).collect();
    let duration: Vec<Option<i64>> = rows
        .iter()
        .map(|(_, s)| s.last_execution_duration_ms)
        .collect();
    let avg: Vec<Option<f64>> = rows.iter().map(|(_, s)| s.avg_execution_ms).collect();
    let error: Vec<Option<String>> = rows
        .iter()
        .map(|(_, s)| s.last_execution_error.clone())
        .collect();
    sqlx::query(
        "UPDATE strategy_configs c SET \
             next_execution_at = t.next_at, last_execution_at = t.last_at, \
             execution_count = t.total, successful_executions = t.ok, \
             failed_executions = t.failed, skipped_executions = t.skipped, \
             last_execution_duration_ms = t.duration_ms, avg_execution_ms = t.avg_ms, \
             last_execution_error = t.error \
         FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::int8[], $5::int8[], \
                     $6::int8[], $7::int8[], $8::int8[], $9::float8[], $10::text[]) \
              AS t(id, next_at, last_at, total, ok, failed, skipped, duration_ms, avg_ms, error) \
         WHERE c.id = t.id",
    )
    .bind(&ids)
    .bind(&next)
    .bind(&last)
    .bind(column(|s| s.execution_count))
    .bind(column(|s| s.successful_executions))
    .bind(column(|s| s.failed_executions))
    .bind(column(|s| s.skipped_executions))
    .bind(&duration)
    .bind(&avg)
    .bind(&error)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::TestDb;

    #[tokio::test]
    async fn statistics_are_written_in_one_batch_and_read_back() {
        let db = TestDb::create().await;
        let pool = &db.pool;
        let a: Uuid = sqlx::query_scalar(
            "INSERT INTO strategy_configs (name, strategy_type, execution_interval_s) \
             VALUES ('a', 'dca', 60) RETURNING id",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let rows = interval_rows(pool, &[a, Uuid::new_v4()]).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].columns.execution_interval_s, Some(60));
        assert_eq!(rows[0].columns.max_execution_s, 30);
        assert_eq!(rows[0].columns.stats, ExecutionStatsRow::default());
        let stats = ExecutionStatsRow {
            next_execution_at: Some(Utc::now()),
            last_execution_at: Some(Utc::now()),
            execution_count: 3,
            successful_executions: 2,
            failed_executions: 1,
            skipped_executions: 4,
            last_execution_duration_ms: Some(12),
            avg_execution_ms: Some(10.5),
            last_execution_error: Some("no price".into()),
        };
        let gone = (Uuid::new_v4(), stats.clone());
        write_execution_stats(pool, &[(a, stats.clone()), gone])
            .await
            .unwrap();
        let back = &interval_rows(pool, &[a]).await.unwrap()[0].columns.stats;
        assert_eq!(back.execution_count, 3);
        assert_eq!(back.skipped_executions, 4);
        assert_eq!(back.last_execution_error.as_deref(), Some("no price"));
        assert_eq!(back.avg_execution_ms, Some(10.5));
        db.drop().await;
    }

    #[tokio::test]
    async fn the_schema_refuses_intervals_and_time_limits_out_of_range_in_words() {
        let db = TestDb::create().await;
        let pool = &db.pool;
        for (column, value, words) in [
            (
                "execution_interval_s",
                0,
                "execution_interval_s is 0; it must be a whole number of seconds from 1",
            ),
            ("execution_interval_s", -5, "execution_interval_s is -5"),
            (
                "max_execution_s",
                0,
                "max_execution_s is 0; it must be a whole number of seconds from 1 to 3600",
            ),
            ("max_execution_s", 3601, "max_execution_s is 3601"),
        ] {
            let err = sqlx::query(&format!(
                "INSERT INTO strategy_configs (name, strategy_type, {column}) VALUES ('x', 'dca', {value})"
            ))
            .execute(pool)
            .await
            .unwrap_err();
            let refusal = crate::operator::schema_refusal(&err).expect("a refusal in words");
            assert!(refusal.contains(words), "{column} {value}: {refusal}");
        }
        db.drop().await;
    }
}
