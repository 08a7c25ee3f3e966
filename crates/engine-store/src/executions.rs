//! Interval executions (CONTRACT.md §5): what the manager reads of a strategy's
//! `execution_interval_s`, `max_execution_s` and statistics, and the batched write
//! of the statistics with the last executions (`strategy_recent_executions`, a ring
//! of [`RECENT_KEPT`] slots per strategy), read back when the manager starts.

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

/// How many of a strategy's last executions are kept.
pub const RECENT_KEPT: usize = 30;

/// One execution as published on `strategy:execution:{id}`: when it started, how
/// long it took, and its outcome (`ok`, `error`, `timeout` or `skipped`), in its
/// strategy's `slot` (0 to [`RECENT_KEPT`] - 1, the next after the newest's: it
/// replaces the oldest).
#[derive(Debug, Clone, PartialEq)]
pub struct RecentExecutionRow {
    pub slot: i16,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub outcome: String,
}

/// The statistics update, and with it the new executions, each put in its slot
/// (replacing what was there: the strategy's oldest). A deleted strategy's are
/// dropped.
const WRITE_STATS_AND_RECENT: &str = "\
    WITH added AS ( \
        INSERT INTO strategy_recent_executions (strategy_id, slot, started_at, duration_ms, outcome) \
        SELECT n.* FROM unnest($11::uuid[], $12::int2[], $13::timestamptz[], $14::int8[], $15::text[]) \
               AS n(strategy_id, slot, started_at, duration_ms, outcome) \
        WHERE EXISTS (SELECT 1 FROM strategy_configs c WHERE c.id = n.strategy_id) \
        ON CONFLICT (strategy_id, slot) DO UPDATE SET started_at = excluded.started_at, \
            duration_ms = excluded.duration_ms, outcome = excluded.outcome) \
    UPDATE strategy_configs c SET \
        next_execution_at = t.next_at, last_execution_at = t.last_at, \
        execution_count = t.total, successful_executions = t.ok, \
        failed_executions = t.failed, skipped_executions = t.skipped, \
        last_execution_duration_ms = t.duration_ms, avg_execution_ms = t.avg_ms, \
        last_execution_error = t.error \
    FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::int8[], $5::int8[], \
                $6::int8[], $7::int8[], $8::int8[], $9::float8[], $10::text[]) \
         AS t(id, next_at, last_at, total, ok, failed, skipped, duration_ms, avg_ms, error) \
    WHERE c.id = t.id";

/// Write the statistics of several strategies and their new executions (`recent`,
/// oldest first) in one statement (a deleted strategy's are dropped).
pub async fn write_execution_stats(
    pool: &PgPool,
    rows: &[(Uuid, ExecutionStatsRow)],
    recent: &[(Uuid, RecentExecutionRow)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() && recent.is_empty() {
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
    // One row per slot (the newest), or the upsert would touch a row twice.
    let mut seen = std::collections::HashSet::new();
    let mut recent: Vec<&(Uuid, RecentExecutionRow)> = recent
        .iter()
        .rev()
        .filter(|(id, r)| seen.insert((*id, r.slot)))
        .collect();
    recent.reverse();
    let recent_ids: Vec<Uuid> = recent.iter().map(|(id, _)| *id).collect();
    let slots: Vec<i16> = recent.iter().map(|(_, r)| r.slot).collect();
    let started: Vec<DateTime<Utc>> = recent.iter().map(|(_, r)| r.started_at).collect();
    let took: Vec<i64> = recent.iter().map(|(_, r)| r.duration_ms).collect();
    let outcome: Vec<&str> = recent.iter().map(|(_, r)| r.outcome.as_str()).collect();
    sqlx::query(WRITE_STATS_AND_RECENT)
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
        .bind(&recent_ids)
        .bind(&slots)
        .bind(&started)
        .bind(&took)
        .bind(&outcome)
        .execute(pool)
        .await?;
    Ok(())
}

/// Every strategy's kept executions, oldest first, by strategy (for the manager's
/// start: at most [`RECENT_KEPT`] each).
pub async fn recent_executions(
    pool: &PgPool,
) -> Result<Vec<(Uuid, RecentExecutionRow)>, sqlx::Error> {
    let rows: Vec<(Uuid, i16, DateTime<Utc>, i64, String)> = sqlx::query_as(
        "SELECT strategy_id, slot, started_at, duration_ms, outcome \
         FROM strategy_recent_executions ORDER BY strategy_id, started_at, slot",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, slot, started_at, duration_ms, outcome)| {
            let row = RecentExecutionRow {
                slot,
                started_at,
                duration_ms,
                outcome,
            };
            (id, row)
        })
        .collect())
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
        write_execution_stats(pool, &[(a, stats.clone()), gone], &[])
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

    #[tokio::test]
    async fn the_newest_executions_are_kept_in_a_ring_of_30_per_strategy() {
        let db = TestDb::create().await;
        let pool = &db.pool;
        let mut ids = Vec::new();
        for name in ["a", "b"] {
            let id: Uuid = sqlx::query_scalar(
                "INSERT INTO strategy_configs (name, strategy_type, execution_interval_s) \
                 VALUES ($1, 'dca', 60) RETURNING id",
            )
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap();
            ids.push(id);
        }
        let (a, b) = (ids[0], ids[1]);
        let start = Utc::now();
        let execution = |id: Uuid, i: i64| {
            let row = RecentExecutionRow {
                slot: (i % RECENT_KEPT as i64) as i16,
                started_at: start + chrono::TimeDelta::seconds(i),
                duration_ms: i,
                outcome: if i % 2 == 0 { "ok" } else { "error" }.into(),
            };
            (id, row)
        };
        // 56 executions of a, each in the slot after the last, in batches of 20, 35
        // (more than is kept: slots repeat) and 1; 5 of b; one of a strategy deleted
        // meanwhile.
        let gone = Uuid::new_v4();
        for range in [0..20, 20..55, 55..56] {
            let mut batch: Vec<_> = range.clone().map(|i| execution(a, i)).collect();
            if range.start == 0 {
                batch.extend((0..5).map(|i| execution(b, i)));
                batch.push(execution(gone, 0));
            }
            write_execution_stats(pool, &[], &batch).await.unwrap();
        }
        let kept = recent_executions(pool).await.unwrap();
        let of = |id: Uuid| -> Vec<i64> {
            kept.iter()
                .filter(|(k, _)| *k == id)
                .map(|(_, r)| r.duration_ms)
                .collect()
        };
        assert_eq!(of(a), (26..56).collect::<Vec<_>>());
        assert_eq!(of(b), (0..5).collect::<Vec<_>>());
        assert!(of(gone).is_empty());
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM strategy_recent_executions WHERE strategy_id = $1",
        )
        .bind(a)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(stored, RECENT_KEPT as i64);
        db.drop().await;
    }
}
