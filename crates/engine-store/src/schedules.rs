//! Schedules of runs (CONTRACT.md §5 `strategy_schedules`): what the manager reads
//! and writes (every schedule's timetable, a due time fired into one run under the
//! `overlap` rule, the statistics), and what `enginectl` and the HTTP API insert,
//! change and list.
//!
//! Exactly once per due time: a run made by a schedule carries `schedule_id` and
//! `scheduled_for`, UNIQUE together, and [`fire`] inserts it with `ON CONFLICT DO
//! NOTHING` in the same transaction that advances `next_run_at` (the schedule's row
//! locked), so neither a manager killed at the due moment nor two managers at the
//! same due time can make a second run for it.

use crate::vocab::{CatchUp, Overlap};
use chrono::{DateTime, Utc};
use engine_protocol::runs::{RunMode, RunPriority};
use serde_json::Value;
use sqlx::PgPool;
use std::borrow::Cow;
use uuid::Uuid;

/// A schedule's timetable as the manager plans with it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ScheduleTiming {
    pub id: Uuid,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval_s: Option<i32>,
    pub enabled: bool,
    pub catch_up: CatchUp,
    pub next_run_at: Option<DateTime<Utc>>,
}

const TIMING_COLUMNS: &str = "id, cron, timezone, interval_s, enabled, catch_up, next_run_at";

/// Every schedule's timetable.
pub async fn timings(pool: &PgPool) -> Result<Vec<ScheduleTiming>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {TIMING_COLUMNS} FROM strategy_schedules"))
        .fetch_all(pool)
        .await
}

/// One schedule's timetable (`None`: deleted).
pub async fn timing(pool: &PgPool, id: Uuid) -> Result<Option<ScheduleTiming>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TIMING_COLUMNS} FROM strategy_schedules WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A due time to turn into a run.
#[derive(Debug, Clone, PartialEq)]
pub struct DueRun {
    pub schedule_id: Uuid,
    /// The due time the run serves (`strategy_runs.scheduled_for`).
    pub due: DateTime<Utc>,
    /// The schedule's next due time after this one.
    pub next: Option<DateTime<Utc>>,
    /// Earlier due times that get no run of their own, added to `missed`.
    pub missed: i64,
}

/// What [`fire`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    /// A run was made; `cancelled`: the unfinished runs a `cancel` command was
    /// inserted for (`overlap` `cancel_previous`).
    Made { run_id: Uuid, cancelled: Vec<Uuid> },
    /// No run: the last one is unfinished and `overlap` is `skip`.
    SkippedOverlap { unfinished: Uuid },
    /// This due time was served already (by this manager before a restart, or by
    /// another one): nothing changed.
    AlreadyServed,
    /// The schedule is gone or disabled.
    Inactive,
}

/// What `overlap` makes of a due time, given the schedule's unfinished runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlapAction {
    Make,
    Skip,
    CancelThenMake(Vec<Uuid>),
}

impl OverlapAction {
    pub fn decide(overlap: Overlap, unfinished: &[Uuid]) -> OverlapAction {
        match (overlap, unfinished) {
            (_, []) | (Overlap::Queue, _) => OverlapAction::Make,
            (Overlap::Skip, _) => OverlapAction::Skip,
            (Overlap::CancelPrevious, runs) => OverlapAction::CancelThenMake(runs.to_vec()),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Locked {
    enabled: bool,
    next_run_at: Option<DateTime<Utc>>,
    overlap: Overlap,
}

/// Turn one due time into at most one run, under the schedule's `overlap` rule, and
/// write the statistics, in one transaction (see the module documentation). The run
/// is made from the schedule's row as it is now (strategy, mode, parameters,
/// priority, timeout). A due time before the stored `next_run_at` was served
/// already.
pub async fn fire(pool: &PgPool, due: &DueRun) -> Result<Fired, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: Option<Locked> = sqlx::query_as(
        "SELECT enabled, next_run_at, overlap FROM strategy_schedules WHERE id = $1 FOR UPDATE",
    )
    .bind(due.schedule_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(locked) = locked.filter(|l| l.enabled) else {
        return Ok(Fired::Inactive);
    };
    if locked.next_run_at.is_some_and(|next| next > due.due) {
        return Ok(Fired::AlreadyServed);
    }
    let unfinished: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM strategy_runs WHERE schedule_id = $1 \
         AND state IN ('queued', 'starting', 'running') ORDER BY created_at, seq",
    )
    .bind(due.schedule_id)
    .fetch_all(&mut *tx)
    .await?;
    let fired = match OverlapAction::decide(locked.overlap, &unfinished) {
        OverlapAction::Skip => Fired::SkippedOverlap {
            unfinished: unfinished[0],
        },
        OverlapAction::Make => make_run(&mut tx, due, Vec::new()).await?,
        OverlapAction::CancelThenMake(previous) => {
            // The same path as an operator's cancel: a `cancel` command per run.
            sqlx::query(
                "INSERT INTO strategy_commands (strategy_id, command, parameters) \
                 SELECT strategy_id, 'cancel', jsonb_build_object('run_id', id) \
                 FROM strategy_runs WHERE id = ANY($1) ORDER BY created_at, seq",
            )
            .bind(&previous)
            .execute(&mut *tx)
            .await?;
            make_run(&mut tx, due, previous).await?
        }
    };
    let (made, skipped, run_id) = match &fired {
        Fired::Made { run_id, .. } => (1_i64, 0_i64, Some(*run_id)),
        Fired::SkippedOverlap { .. } => (0, 1, None),
        _ => (0, 0, None),
    };
    sqlx::query(
        "UPDATE strategy_schedules SET next_run_at = $2, missed = missed + $3, \
             runs_created = runs_created + $4, skipped_overlap = skipped_overlap + $5, \
             last_run_at = CASE WHEN $6::uuid IS NULL THEN last_run_at ELSE now() END, \
             last_run_id = COALESCE($6, last_run_id), last_error = NULL, updated_at = now() \
         WHERE id = $1",
    )
    .bind(due.schedule_id)
    .bind(due.next)
    .bind(due.missed)
    .bind(made)
    .bind(skipped)
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(fired)
}

async fn make_run(
    tx: &mut sqlx::PgConnection,
    due: &DueRun,
    cancelled: Vec<Uuid>,
) -> Result<Fired, sqlx::Error> {
    let run_id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO strategy_runs (strategy_id, mode, parameters, priority, timeout_s, \
             schedule_id, scheduled_for) \
         SELECT strategy_id, mode, parameters, priority, timeout_s, id, $2 \
         FROM strategy_schedules WHERE id = $1 \
         ON CONFLICT (schedule_id, scheduled_for) DO NOTHING RETURNING id",
    )
    .bind(due.schedule_id)
    .bind(due.due)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match run_id {
        Some(run_id) => Fired::Made { run_id, cancelled },
        None => Fired::AlreadyServed,
    })
}

/// The schedule waits for `next` (`None`: never again); `missed` due times passed
/// with no run. Clears `last_error`.
pub async fn set_next(
    pool: &PgPool,
    id: Uuid,
    next: Option<DateTime<Utc>>,
    missed: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE strategy_schedules SET next_run_at = $2, missed = missed + $3, last_error = NULL, \
             updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(next)
    .bind(missed)
    .execute(pool)
    .await?;
    Ok(())
}

/// The schedule makes nothing: disabled (`error` `None`), or it cannot work and
/// `error` says why. `next_run_at` is cleared.
pub async fn set_idle(pool: &PgPool, id: Uuid, error: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE strategy_schedules SET next_run_at = NULL, last_error = $2, updated_at = now() \
         WHERE id = $1 AND (next_run_at IS NOT NULL OR last_error IS DISTINCT FROM $2)",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

// ------------------------------------------------------------------ operators

/// A schedule as an operator asks for it (checked by the caller: the timetable with
/// `engine_protocol::schedule`, the words by their types); also the operator's
/// part of a [`ScheduleRecord`].
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct NewSchedule {
    pub strategy_id: Uuid,
    pub mode: RunMode,
    pub parameters: Value,
    pub priority: RunPriority,
    pub timeout_s: Option<i32>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval_s: Option<i32>,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
}

/// Insert a schedule; its id. See [`schedule_refusal`] for the schema's refusals.
pub async fn insert_schedule(pool: &PgPool, s: &NewSchedule) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO strategy_schedules (strategy_id, mode, parameters, priority, timeout_s, \
             cron, timezone, interval_s, overlap, catch_up) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(s.strategy_id)
    .bind(s.mode)
    .bind(&s.parameters)
    .bind(s.priority)
    .bind(s.timeout_s)
    .bind(&s.cron)
    .bind(&s.timezone)
    .bind(s.interval_s)
    .bind(s.overlap)
    .bind(s.catch_up)
    .fetch_one(pool)
    .await
}

/// Delete a schedule (its runs stay, with `schedule_id` cleared); whether it existed.
pub async fn delete_schedule(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM strategy_schedules WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Enable or disable a schedule; whether it existed.
pub async fn set_enabled(pool: &PgPool, id: Uuid, enabled: bool) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE strategy_schedules SET enabled = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(enabled)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// A schedule with its strategy's name, as `enginectl schedule list` and the HTTP
/// API show it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct ScheduleRecord {
    pub id: Uuid,
    /// The strategy's name.
    pub strategy: String,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub schedule: NewSchedule,
    pub enabled: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_run_id: Option<Uuid>,
    pub runs_created: i64,
    pub skipped_overlap: i64,
    pub missed: i64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every schedule (of one strategy, when given), by strategy name then age.
pub async fn list_schedules(
    pool: &PgPool,
    strategy_id: Option<Uuid>,
) -> Result<Vec<ScheduleRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.id, s.strategy_id, c.name AS strategy, s.mode, s.parameters, s.priority, \
                s.timeout_s, s.cron, s.timezone, s.interval_s, s.enabled, s.overlap, s.catch_up, \
                s.next_run_at, s.last_run_at, s.last_run_id, s.runs_created, s.skipped_overlap, \
                s.missed, s.last_error, s.created_at, s.updated_at \
         FROM strategy_schedules s JOIN strategy_configs c ON c.id = s.strategy_id \
         WHERE $1::uuid IS NULL OR s.strategy_id = $1 \
         ORDER BY c.name, s.created_at, s.id",
    )
    .bind(strategy_id)
    .fetch_all(pool)
    .await
}

/// What the schema refused about a schedule, in the operator's words; `None` for
/// any other error.
pub fn schedule_refusal(err: &sqlx::Error) -> Option<Cow<'static, str>> {
    if let Some(words) = crate::limits::size_refusal(err) {
        return Some(Cow::Owned(words));
    }
    let db = err.as_database_error()?;
    let words = match db.constraint()? {
        "schedule_mode_vocabulary" => "a schedule's mode is one of backtest, screener, alert",
        "schedule_priority_vocabulary" => "a schedule's priority is one of high, normal, low",
        "schedule_timeout_range" => "timeout_s must be above 0 and at most 86400 seconds, or NULL",
        "schedule_parameters_is_a_json_object" => "parameters must be a JSON object",
        "schedule_interval_positive" => "interval_s must be above 0 seconds",
        "schedule_cron_or_interval" => "a schedule has exactly one of cron and interval_s",
        "schedule_timezone_with_cron" => "timezone applies to a cron schedule only",
        "schedule_overlap_vocabulary" => "overlap is one of skip, queue, cancel_previous",
        "schedule_catch_up_vocabulary" => "catch_up is one of one, none",
        "strategy_schedules_strategy_id_fkey" => {
            "no such strategy (it was deleted); `enginectl list` shows the strategies"
        }
        _ => return None,
    };
    Some(Cow::Borrowed(words))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::TestDb;
    use chrono::TimeDelta;

    #[test]
    fn overlap_decides_from_the_unfinished_runs() {
        let a = Uuid::from_u128(1);
        for overlap in Overlap::ALL {
            assert_eq!(OverlapAction::decide(overlap, &[]), OverlapAction::Make);
        }
        assert_eq!(
            OverlapAction::decide(Overlap::Skip, &[a]),
            OverlapAction::Skip
        );
        assert_eq!(
            OverlapAction::decide(Overlap::Queue, &[a]),
            OverlapAction::Make
        );
        assert_eq!(
            OverlapAction::decide(Overlap::CancelPrevious, &[a]),
            OverlapAction::CancelThenMake(vec![a])
        );
    }

    async fn schedule(pool: &PgPool, overlap: Overlap) -> Uuid {
        let strategy: Uuid = sqlx::query_scalar(
            "INSERT INTO strategy_configs (name, strategy_type) VALUES ($1, 'heartbeat') RETURNING id",
        )
        .bind(format!("s{}", Uuid::new_v4().simple()))
        .fetch_one(pool)
        .await
        .unwrap();
        let new = NewSchedule {
            strategy_id: strategy,
            mode: RunMode::Screener,
            parameters: serde_json::json!({"limit": 5}),
            priority: RunPriority::High,
            timeout_s: Some(60),
            cron: None,
            timezone: None,
            interval_s: Some(60),
            overlap,
            catch_up: CatchUp::One,
        };
        insert_schedule(pool, &new).await.unwrap()
    }

    fn due_at(id: Uuid, due: DateTime<Utc>) -> DueRun {
        DueRun {
            schedule_id: id,
            due,
            next: Some(due + TimeDelta::seconds(60)),
            missed: 0,
        }
    }

    async fn row(pool: &PgPool, id: Uuid) -> ScheduleRecord {
        list_schedules(pool, None)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.id == id)
            .unwrap()
    }

    #[tokio::test]
    async fn a_due_time_makes_one_run_however_often_and_by_whomever_it_is_fired() {
        let db = TestDb::create().await;
        let pool = &db.pool;
        let id = schedule(pool, Overlap::Queue).await;
        let t = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        // Two managers racing the same due time, and one firing it again after a
        // restart that forgot it: one run.
        let due = due_at(id, t);
        let (a, b) = tokio::join!(fire(pool, &due), fire(pool, &due));
        let outcomes = [a.unwrap(), b.unwrap()];
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| matches!(o, Fired::Made { .. }))
                .count(),
            1,
            "{outcomes:?}"
        );
        assert!(outcomes.contains(&Fired::AlreadyServed));
        assert_eq!(
            fire(pool, &due_at(id, t)).await.unwrap(),
            Fired::AlreadyServed
        );
        // The run is made from the schedule's row.
        let runs: Vec<(DateTime<Utc>, Value)> = sqlx::query_as(
            "SELECT scheduled_for, jsonb_build_array(mode, parameters, priority, timeout_s) \
             FROM strategy_runs WHERE schedule_id = $1",
        )
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(
            runs,
            vec![(t, serde_json::json!(["screener", {"limit": 5}, "high", 60]))]
        );
        // Even with next_run_at set back by hand, the unique key holds.
        set_next(pool, id, Some(t), 0).await.unwrap();
        assert_eq!(
            fire(pool, &due_at(id, t)).await.unwrap(),
            Fired::AlreadyServed
        );
        let s = row(pool, id).await;
        assert_eq!((s.runs_created, s.skipped_overlap, s.missed), (1, 0, 0));
        db.drop().await;
    }

    #[tokio::test]
    async fn overlap_skip_counts_and_cancel_previous_inserts_a_cancel_command() {
        let db = TestDb::create().await;
        let pool = &db.pool;
        let t = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let skip = schedule(pool, Overlap::Skip).await;
        let Fired::Made { run_id: first, .. } = fire(pool, &due_at(skip, t)).await.unwrap() else {
            panic!("the first due time makes a run");
        };
        let later = DueRun {
            missed: 2,
            ..due_at(skip, t + TimeDelta::seconds(60))
        };
        assert_eq!(
            fire(pool, &later).await.unwrap(),
            Fired::SkippedOverlap { unfinished: first }
        );
        let s = row(pool, skip).await;
        assert_eq!((s.runs_created, s.skipped_overlap, s.missed), (1, 1, 2));
        assert_eq!(s.last_run_id, Some(first));
        assert_eq!(s.schedule.overlap, Overlap::Skip);
        assert_eq!(s.next_run_at, Some(t + TimeDelta::seconds(120)));

        let cancel = schedule(pool, Overlap::CancelPrevious).await;
        let Fired::Made { run_id: old, .. } = fire(pool, &due_at(cancel, t)).await.unwrap() else {
            panic!("the first due time makes a run");
        };
        let fired = fire(pool, &due_at(cancel, t + TimeDelta::seconds(60)))
            .await
            .unwrap();
        let Fired::Made { cancelled, .. } = fired else {
            panic!("{fired:?}");
        };
        assert_eq!(cancelled, vec![old]);
        let commands: Vec<(String, Value)> =
            sqlx::query_as("SELECT command, parameters FROM strategy_commands ORDER BY created_at")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(
            commands,
            vec![("cancel".to_string(), serde_json::json!({"run_id": old}))]
        );

        // A disabled schedule makes nothing.
        set_enabled(pool, skip, false).await.unwrap();
        assert_eq!(
            fire(pool, &due_at(skip, t + TimeDelta::seconds(600)))
                .await
                .unwrap(),
            Fired::Inactive
        );
        db.drop().await;
    }
}
