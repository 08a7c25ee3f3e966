//! What a run's outbox lines become: the row's progress (at most 4 writes a second,
//! always at the end), `strategy_run_items` rows (batched), `strategy:run:{run_id}`
//! events (`progress` at most 10 a second) and `strategy:alerts` messages (each at
//! once). The [`Reporter`] keeps the latest progress and what is still to write.

use crate::Shared;
use chrono::Utc;
use engine_protocol::runs::{
    AlertEvent, RunEvent, RunEventMetrics, RunEventType, RunMode, RunOutput, RunState,
};
use engine_store::runs::{self as store, RunItem, RunProgress, RunRow};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// The least time between two writes of a run's row while it runs.
pub const ROW_INTERVAL: Duration = Duration::from_millis(250);
/// The least time between two `progress` events of a run.
pub const EVENT_INTERVAL: Duration = Duration::from_millis(100);
/// Items are written with the row, or as soon as this many wait.
const ITEM_BATCH: usize = 1000;

/// How the run's process said it ended, if it did.
#[derive(Debug, Clone, PartialEq)]
pub enum Said {
    Result(Value),
    Error(String),
}

/// Who the run is (for events and writes).
#[derive(Debug, Clone)]
pub struct RunIdentity {
    pub run_id: Uuid,
    pub strategy_id: Uuid,
    pub name: String,
    pub mode: RunMode,
    /// The lease epoch the run's writes are conditional on.
    pub epoch: i64,
}

impl RunIdentity {
    pub fn of(row: &RunRow) -> RunIdentity {
        RunIdentity {
            run_id: row.id,
            strategy_id: row.strategy_id,
            name: row.name.clone(),
            mode: row.mode,
            epoch: row.lease_epoch,
        }
    }
}

/// The latest progress of one run and what is still to be written or published.
pub struct Reporter {
    pub who: RunIdentity,
    pub progress: RunProgress,
    pub said: Option<Said>,
    items: Vec<RunItem>,
    row_due: bool,
    last_row: Option<Instant>,
    event_due: bool,
    last_event: Option<Instant>,
    /// The row was found gone (its strategy was deleted) or no longer active.
    pub row_gone: bool,
}

impl Reporter {
    pub fn new(who: RunIdentity) -> Reporter {
        Reporter {
            who,
            progress: RunProgress {
                stage: Some("loading".to_string()),
                ..RunProgress::default()
            },
            said: None,
            items: Vec::new(),
            row_due: false,
            last_row: None,
            event_due: false,
            last_event: None,
            row_gone: false,
        }
    }

    /// Take in one outbox line: progress is kept (written and published when due),
    /// an alert and a stage's end are published at once, an item is kept for the
    /// next write and published as `ticker_completed`.
    pub fn take(&mut self, shared: &Shared, line: RunOutput) {
        match line {
            RunOutput::Started { total_items, .. } => {
                self.progress.total_items = Some(total_items);
                self.progress.completed_items.get_or_insert(0);
                self.row_due = true;
            }
            RunOutput::Progress {
                stage,
                progress_percent,
                completed_items,
                total_items,
                current_item,
                message,
                items_per_second,
                eta_s,
            } => {
                let p = &mut self.progress;
                p.stage = Some(stage);
                p.progress_percent = progress_percent.clamp(0.0, 100.0);
                p.completed_items = Some(completed_items);
                p.total_items = Some(total_items);
                p.current_item = current_item;
                p.message = message;
                p.items_per_second = items_per_second;
                p.eta_s = eta_s;
                self.row_due = true;
                self.event_due = true;
            }
            RunOutput::StageCompleted { stage } => {
                self.progress.message = Some(format!("{stage} done"));
                self.publish(shared, RunEventType::StageCompleted, RunState::Running);
            }
            RunOutput::Item {
                item,
                position,
                passed,
                score,
                detail,
            } => {
                self.progress.current_item = Some(item.clone());
                self.items.push(RunItem {
                    item,
                    position: i32::try_from(position).unwrap_or(i32::MAX),
                    passed,
                    score,
                    detail,
                });
                self.row_due = true;
                self.publish(shared, RunEventType::TickerCompleted, RunState::Running);
            }
            RunOutput::Alert {
                symbol,
                kind,
                message,
                priority,
                timestamp,
            } => shared.publisher.publish(
                shared.channels.alerts(),
                &AlertEvent {
                    run_id: self.who.run_id,
                    strategy_id: self.who.strategy_id,
                    name: self.who.name.clone(),
                    timestamp,
                    symbol,
                    kind,
                    message,
                    priority,
                },
            ),
            RunOutput::Result { result } => self.said = Some(Said::Result(result)),
            RunOutput::Error { error } => self.said = Some(Said::Error(error)),
        }
    }

    /// Write the row and publish a `progress` event if either is due and its
    /// interval has passed (or items wait in numbers). A failed write is tried again
    /// on a later call: progress catches up once the database is back.
    pub async fn flush_due(&mut self, shared: &Shared) {
        let now = Instant::now();
        if self.event_due && self.last_event.is_none_or(|t| now - t >= EVENT_INTERVAL) {
            self.publish(shared, RunEventType::Progress, RunState::Running);
        }
        let row_time = self.last_row.is_none_or(|t| now - t >= ROW_INTERVAL);
        if self.row_due && row_time {
            self.last_row = Some(now);
            match self.write_row(shared).await {
                Ok(still_active) => {
                    self.row_due = false;
                    self.row_gone |= !still_active;
                }
                Err(err) => {
                    tracing::warn!(run_id = %self.who.run_id, error = %err, "cannot write the run's progress; trying again");
                }
            }
        } else if self.items.len() >= ITEM_BATCH {
            // Many items between two row writes: the items alone, the row stays due.
            if let Err(err) = self.write_items(shared).await {
                tracing::warn!(run_id = %self.who.run_id, error = %err, "cannot write the run's items; trying again");
            }
        }
    }

    /// The items waiting, then the progress.
    async fn write_row(&mut self, shared: &Shared) -> Result<bool, sqlx::Error> {
        self.write_items(shared).await?;
        store::write_progress(
            &shared.pool,
            self.who.run_id,
            &self.progress,
            self.who.epoch,
        )
        .await
    }

    /// Write the items waiting (kept if the write fails).
    pub async fn write_items(&mut self, shared: &Shared) -> Result<(), sqlx::Error> {
        store::insert_items(&shared.pool, self.who.run_id, &self.items).await?;
        self.items.clear();
        Ok(())
    }

    /// A message on `strategy:run:{run_id}` with the progress as it is.
    pub fn publish(&mut self, shared: &Shared, event_type: RunEventType, state: RunState) {
        if event_type == RunEventType::Progress {
            self.last_event = Some(Instant::now());
            self.event_due = false;
        }
        let p = &self.progress;
        let event = RunEvent {
            event_type,
            run_id: self.who.run_id,
            strategy_id: self.who.strategy_id,
            name: self.who.name.clone(),
            timestamp: Utc::now(),
            mode: self.who.mode,
            state,
            stage: p.stage.clone(),
            progress_percent: p.progress_percent,
            current_item: p.current_item.clone(),
            total_items: p.total_items,
            completed_items: p.completed_items,
            message: p.message.clone(),
            metrics: RunEventMetrics {
                items_per_second: p.items_per_second,
                eta_s: p.eta_s,
            },
        };
        shared
            .publisher
            .publish(shared.channels.run(self.who.run_id), &event);
    }
}
