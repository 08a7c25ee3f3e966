//! The broker state of the strategy's executor: the latest one it reported on the
//! control link, kept in `strategy_configs.broker_state` and handed to the next
//! executor at spawn, so that positions and PnL survive restarts, crashes and reboots.
//!
//! Latest wins. A report is written when it arrives (an executor reports once it
//! started, after fills at most once a metrics interval, and before it exits); a
//! write the database does not take is retried every second, and until it lands the
//! report in memory is what the next executor gets.

use super::{bounded, StrategySupervisor};
use engine_store::manager as db;
use serde_json::Value;

/// The latest report, and whether the row has it.
#[derive(Debug, Default)]
pub struct BrokerState {
    latest: Option<Value>,
    unwritten: bool,
    /// The last write failed (logged once per outage; the retry takes over).
    write_failed: bool,
}

impl BrokerState {
    /// A report the row does not have yet (written within a second).
    pub fn is_unwritten(&self) -> bool {
        self.unwritten && self.latest.is_some()
    }

    pub fn from_row(state: Option<Value>) -> Self {
        BrokerState {
            latest: state,
            ..BrokerState::default()
        }
    }

    /// What the next executor starts from.
    pub fn latest(&self) -> Option<&Value> {
        self.latest.as_ref()
    }

    /// The row was read again: its state counts (an operator may have reset it),
    /// unless a newer report has not reached it yet.
    pub fn reloaded(&mut self, state: Option<Value>) {
        if !self.unwritten {
            self.latest = state;
        }
    }

    fn reported(&mut self, state: Value) {
        self.latest = Some(state);
        self.unwritten = true;
    }
}

impl StrategySupervisor {
    /// A `broker_state` frame: keep it, write it, and record why a saved state was
    /// discarded, if it was.
    pub(super) async fn keep_broker_state(&mut self, state: Value, discarded: Option<String>) {
        if !state.is_object() {
            tracing::warn!("dropped a broker_state frame that is not a JSON object");
            return;
        }
        self.broker.reported(state);
        // While the database is away the once-a-second retry writes it: a write
        // here would hold the executor's frames up for its timeout.
        if !self.journal.database_away() && !self.broker.write_failed {
            self.write_broker_state().await;
        }
        if let Some(why) = discarded {
            tracing::warn!("the executor started with a fresh broker: {why}");
            self.record_event(&why, None).await;
        }
    }

    /// Write the latest report if the row does not have it yet.
    pub(super) async fn write_broker_state(&mut self) {
        let Some(state) = self
            .broker
            .latest
            .as_ref()
            .filter(|_| self.broker.unwritten)
        else {
            return;
        };
        let write = db::write_broker_state(&self.shared.pool, self.id, state, self.fence_epoch());
        let result = bounded(write).await;
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.broker.write_failed) {
                    tracing::info!("recorded the broker state again");
                }
                self.broker.unwritten = false;
            }
            Err(err) => {
                if !std::mem::replace(&mut self.broker.write_failed, true) {
                    tracing::warn!(error = %err, "could not record the broker state; retrying every second (the next executor gets the latest report meanwhile)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reload_keeps_a_report_the_row_does_not_have_yet() {
        let mut state = BrokerState::from_row(Some(json!({"n": 1})));
        state.reloaded(None);
        assert_eq!(state.latest(), None, "an operator's reset counts");
        state.reported(json!({"n": 2}));
        state.reloaded(Some(json!({"n": 1})));
        assert_eq!(state.latest(), Some(&json!({"n": 2})), "newer than the row");
        state.unwritten = false;
        state.reloaded(Some(json!({"n": 3})));
        assert_eq!(state.latest(), Some(&json!({"n": 3})));
    }
}
