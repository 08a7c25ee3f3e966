//! [`RecentExecutions`]: the last [`RECENT_KEPT`] executions of each interval
//! strategy (start, duration, outcome), kept in memory by the executions task as it
//! publishes them, for the HTTP API's `executions.recent` and the dashboard's
//! duration sparkline. The task also writes them to `strategy_recent_executions`
//! with its batched statistics, and a manager starts from what is kept there
//! ([`RecentExecutions::load`]), so the lists survive a restart. In a cluster a node
//! lists the executions it published and those kept when it started.

use chrono::{DateTime, Utc};
use engine_store::executions::{self as store, RecentExecutionRow};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

/// Executions kept per strategy (in memory and in the database).
pub use engine_store::executions::RECENT_KEPT;

/// How long the start-up read of the kept executions may take before the lists
/// start empty instead.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcomes an execution can have.
const OUTCOMES: [&str; 4] = ["ok", "error", "timeout", "skipped"];

/// One execution as published on `strategy:execution:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentExecution {
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// `ok`, `error`, `timeout` or `skipped`.
    pub outcome: &'static str,
}

impl RecentExecution {
    /// As the database keeps it, in `slot` of its strategy's ring.
    pub fn to_row(&self, slot: i16) -> RecentExecutionRow {
        RecentExecutionRow {
            slot,
            started_at: self.started_at,
            duration_ms: i64::try_from(self.duration_ms).unwrap_or(i64::MAX),
            outcome: self.outcome.to_string(),
        }
    }

    /// From the database (`None`: an outcome this manager does not know).
    pub fn from_row(row: &RecentExecutionRow) -> Option<RecentExecution> {
        let outcome = OUTCOMES.into_iter().find(|o| *o == row.outcome)?;
        Some(RecentExecution {
            started_at: row.started_at,
            duration_ms: u64::try_from(row.duration_ms).unwrap_or(0),
            outcome,
        })
    }
}

/// One strategy's executions, and the slot of its ring in the database the next
/// one goes to (the oldest's, once the ring is full).
#[derive(Debug, Default)]
struct Kept {
    list: VecDeque<RecentExecution>,
    next_slot: i16,
}

#[derive(Debug, Default)]
pub struct RecentExecutions {
    by_strategy: Mutex<HashMap<Uuid, Kept>>,
}

impl RecentExecutions {
    /// Keep `execution` as the strategy's newest, forgetting its oldest past
    /// [`RECENT_KEPT`]; the slot of the strategy's ring in the database it goes to.
    pub fn record(&self, strategy_id: Uuid, execution: RecentExecution) -> i16 {
        let mut by_strategy = self.by_strategy.lock().expect("recent executions lock");
        let kept = by_strategy.entry(strategy_id).or_default();
        if kept.list.len() == RECENT_KEPT {
            kept.list.pop_front();
        }
        kept.list.push_back(execution);
        let slot = kept.next_slot;
        kept.next_slot = (slot + 1) % RECENT_KEPT as i16;
        slot
    }

    /// At start-up, before any execution: the executions the database kept. Read
    /// within [`LOAD_TIMEOUT`], or the lists start empty (said in the log).
    pub async fn load(&self, pool: &PgPool) {
        let rows = match tokio::time::timeout(LOAD_TIMEOUT, store::recent_executions(pool)).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot read the last executions; executions.recent starts empty");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    "reading the last executions timed out; executions.recent starts empty"
                );
                return;
            }
        };
        let mut by_strategy = self.by_strategy.lock().expect("recent executions lock");
        for (id, row) in rows {
            let kept = by_strategy.entry(id).or_default();
            if let Some(execution) = RecentExecution::from_row(&row) {
                if kept.list.len() == RECENT_KEPT {
                    kept.list.pop_front();
                }
                kept.list.push_back(execution);
            }
            kept.next_slot = (row.slot + 1) % RECENT_KEPT as i16;
        }
    }

    /// The strategy's kept executions, oldest first.
    pub fn of(&self, strategy_id: Uuid) -> Vec<RecentExecution> {
        let by_strategy = self.by_strategy.lock().expect("recent executions lock");
        by_strategy
            .get(&strategy_id)
            .map(|kept| kept.list.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_are_kept_oldest_first() {
        let recent = RecentExecutions::default();
        let id = Uuid::new_v4();
        let start = Utc::now();
        for ms in 0..(RECENT_KEPT as u64 + 5) {
            let execution = RecentExecution {
                started_at: start + chrono::TimeDelta::milliseconds(ms as i64),
                duration_ms: ms,
                outcome: "ok",
            };
            let slot = recent.record(id, execution);
            assert_eq!(
                slot as u64,
                ms % RECENT_KEPT as u64,
                "the ring's slots in turn"
            );
        }
        let kept: Vec<u64> = recent.of(id).iter().map(|e| e.duration_ms).collect();
        assert_eq!(kept, (5..RECENT_KEPT as u64 + 5).collect::<Vec<_>>());
        assert!(recent.of(Uuid::new_v4()).is_empty());
    }

    #[test]
    fn an_execution_survives_the_round_trip_through_the_row() {
        for outcome in OUTCOMES {
            let execution = RecentExecution {
                started_at: Utc::now(),
                duration_ms: 42,
                outcome,
            };
            let back = RecentExecution::from_row(&execution.to_row(3));
            assert_eq!(back, Some(execution));
        }
        let mut unknown = RecentExecution {
            started_at: Utc::now(),
            duration_ms: 1,
            outcome: "ok",
        }
        .to_row(0);
        unknown.outcome = "later".into();
        assert_eq!(RecentExecution::from_row(&unknown), None);
    }
}
