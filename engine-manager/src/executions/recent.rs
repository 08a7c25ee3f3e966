//! [`RecentExecutions`]: the last [`RECENT_KEPT`] executions of each interval
//! strategy this manager executed (start, duration, outcome), kept in memory by the
//! executions task as it publishes them, for the HTTP API's `executions.recent` and
//! the dashboard's duration sparkline. Nothing is read back from Redis or written to
//! the database: after a manager restart the list starts empty, and in a cluster a
//! node knows the executions of the strategies it runs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use uuid::Uuid;

/// Executions kept per strategy.
pub const RECENT_KEPT: usize = 30;

/// One execution as published on `strategy:execution:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentExecution {
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// `ok`, `error`, `timeout` or `skipped`.
    pub outcome: &'static str,
}

#[derive(Debug, Default)]
pub struct RecentExecutions {
    by_strategy: Mutex<HashMap<Uuid, VecDeque<RecentExecution>>>,
}

impl RecentExecutions {
    /// Keep `execution` as the strategy's newest, forgetting its oldest past
    /// [`RECENT_KEPT`].
    pub fn record(&self, strategy_id: Uuid, execution: RecentExecution) {
        let mut by_strategy = self.by_strategy.lock().expect("recent executions lock");
        let list = by_strategy.entry(strategy_id).or_default();
        if list.len() == RECENT_KEPT {
            list.pop_front();
        }
        list.push_back(execution);
    }

    /// The strategy's kept executions, oldest first.
    pub fn of(&self, strategy_id: Uuid) -> Vec<RecentExecution> {
        let by_strategy = self.by_strategy.lock().expect("recent executions lock");
        by_strategy
            .get(&strategy_id)
            .map(|list| list.iter().cloned().collect())
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
            recent.record(id, execution);
        }
        let kept: Vec<u64> = recent.of(id).iter().map(|e| e.duration_ms).collect();
        assert_eq!(kept, (5..RECENT_KEPT as u64 + 5).collect::<Vec<_>>());
        assert!(recent.of(Uuid::new_v4()).is_empty());
    }
}
