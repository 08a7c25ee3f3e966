//! The broker's state from one executor of a strategy to the next: restored from
//! what the manager handed over at spawn (before `on_start`), and reported on the
//! control link for the next executor — once the strategy started, after fills
//! (looked at every metrics interval) and before the process exits.
//!
//! A saved state that cannot be used (unreadable, or saved by another
//! `strategy_type`) never stops the executor: it logs why, starts with a fresh
//! broker, and says so in its first report, which replaces the saved state.

use super::errors::error_chain;
use super::event_loop::EventLoop;
use chrono::{DateTime, Utc};
use engine_protocol::control::ExecutorMessage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strategy_sdk::{BrokerSnapshot, Host};

/// The largest state reported: frames on the control link are at most 1 MiB.
const MAX_REPORT_BYTES: usize = 256 * 1024;

/// What the manager keeps in `strategy_configs.broker_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedBrokerRecord {
    /// Whose broker it is: a strategy of another type starts fresh.
    strategy_type: String,
    saved_at: DateTime<Utc>,
    broker: BrokerSnapshot,
}

/// The broker state handed over at spawn, not looked at yet.
#[derive(Debug, Clone, Default)]
pub(super) struct SavedBroker(Option<Value>);

impl SavedBroker {
    pub(super) fn from_spawn(state: Option<Value>) -> Self {
        SavedBroker(state.filter(|state| !state.is_null()))
    }
}

/// What the loop remembers about its reports.
#[derive(Debug, Default)]
pub(super) struct BrokerReports {
    strategy_type: String,
    /// The broker's `fills_this_run` at the last report (`None` before the first).
    reported_fills: Option<u64>,
    /// Why the saved state was not used, for the first report.
    discarded: Option<String>,
}

/// Restore `saved` into `host`: `Ok(false)` when there was nothing to restore,
/// `Err(why)` when it could not be used (the broker is then fresh).
fn restore_into(
    host: &mut Host,
    saved: Option<Value>,
    strategy_type: &str,
) -> Result<bool, String> {
    let Some(saved) = saved else {
        return Ok(false);
    };
    let record: SavedBrokerRecord =
        serde_json::from_value(saved).map_err(|e| format!("it is unreadable ({e})"))?;
    if record.strategy_type != strategy_type {
        return Err(format!(
            "it was saved by strategy_type '{}' and this executor runs '{strategy_type}'",
            record.strategy_type
        ));
    }
    host.restore_broker(record.broker)
        .map_err(|e| error_chain(&e))?;
    Ok(true)
}

impl EventLoop {
    /// Before the strategy starts: take over the broker state the previous executor
    /// reported, or say why not and start fresh.
    pub(super) fn restore_broker(&mut self, saved: SavedBroker, strategy_type: &str) {
        self.broker_reports.strategy_type = strategy_type.to_string();
        match restore_into(&mut self.host, saved.0, strategy_type) {
            Ok(false) => tracing::info!("no saved broker state; starting with a fresh broker"),
            Ok(true) => {
                let broker = self.host.context().broker();
                tracing::info!(
                    positions = broker.positions_count(),
                    realised_pnl = broker.realised_pnl(),
                    orders_count = broker.orders_count(),
                    pnl_total = broker.pnl(),
                    "broker restored from the state the previous executor reported"
                );
            }
            Err(why) => {
                tracing::warn!(
                    "the saved broker state was not used, {why}; starting with a fresh broker"
                );
                self.broker_reports.discarded =
                    Some(format!("saved broker state discarded: {why}"));
            }
        }
    }

    /// Report the broker's state on the control link (nothing without one).
    pub(super) fn report_broker_state(&mut self) {
        if self.out.link.is_none() {
            return;
        }
        let broker = self.host.context().broker();
        self.broker_reports.reported_fills = Some(broker.fills_this_run());
        let record = SavedBrokerRecord {
            strategy_type: self.broker_reports.strategy_type.clone(),
            saved_at: Utc::now(),
            broker: broker.snapshot(),
        };
        let state = match serde_json::to_value(&record) {
            Ok(state) if state.to_string().len() <= MAX_REPORT_BYTES => state,
            Ok(_) => {
                tracing::warn!(
                    positions = broker.positions_count(),
                    "broker state not reported: it is over {MAX_REPORT_BYTES} bytes"
                );
                return;
            }
            Err(err) => {
                tracing::warn!("broker state not reported, it does not serialize: {err}");
                return;
            }
        };
        let discarded = self.broker_reports.discarded.take();
        self.send_link(ExecutorMessage::BrokerState { state, discarded });
    }

    /// Report the broker's state if an order filled since the last report.
    pub(super) fn report_broker_state_if_traded(&mut self) {
        let fills = self.host.context().broker().fills_this_run();
        if self.broker_reports.reported_fills != Some(fills) {
            self.report_broker_state();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use strategy_sdk::testkit::TestHarness;
    use strategy_sdk::{Context, Strategy, Tick};
    use uuid::Uuid;

    /// Buys 1 on the first tick of a run when flat.
    struct BuyWhenFlat;

    impl Strategy for BuyWhenFlat {
        fn on_start(&mut self, ctx: &mut Context) {
            ctx.subscribe("BTC");
        }
        fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
            if ctx.position(&tick.token).qty == 0.0 {
                ctx.buy(&tick.token, 1.0).unwrap();
            }
        }
    }

    fn saved(strategy_type: &str) -> Value {
        let mut first = TestHarness::started(BuyWhenFlat);
        first.ticks("BTC", &[100.0, 105.0]);
        serde_json::to_value(SavedBrokerRecord {
            strategy_type: strategy_type.into(),
            saved_at: Utc::now(),
            broker: first.ctx().broker().snapshot(),
        })
        .unwrap()
    }

    fn host() -> Host {
        Host::new(Uuid::nil(), "t", Box::new(BuyWhenFlat))
    }

    #[test]
    fn a_saved_record_of_the_same_type_is_restored() {
        let mut host = host();
        assert_eq!(
            restore_into(&mut host, Some(saved("buyer")), "buyer"),
            Ok(true)
        );
        let broker = host.context().broker();
        assert_eq!(broker.position("BTC").qty, 1.0);
        assert_eq!(broker.orders_count(), 1);
        assert_eq!(broker.pnl(), 5.0);
        assert_eq!(restore_into(&mut self::host(), None, "buyer"), Ok(false));
    }

    #[test]
    fn another_type_or_a_malformed_record_leaves_a_fresh_broker() {
        let cases = [
            (saved("seller"), "saved by strategy_type 'seller'"),
            (json!({"strategy_type": "buyer"}), "unreadable"),
            (json!([1, 2]), "unreadable"),
            (
                {
                    let mut v = saved("buyer");
                    v["broker"]["positions"]["BTC"]["avg_price"] = json!(-3.0);
                    v
                },
                "position in 'BTC'",
            ),
            (
                {
                    let mut v = saved("buyer");
                    v["broker"]["version"] = json!(99);
                    v
                },
                "version 99",
            ),
        ];
        for (record, expected) in cases {
            let mut host = host();
            let why = restore_into(&mut host, Some(record), "buyer").unwrap_err();
            assert!(why.contains(expected), "{why} should say {expected}");
            let broker = host.context().broker();
            assert_eq!(broker.positions_count(), 0);
            assert_eq!(broker.orders_count(), 0);
        }
    }

    #[test]
    fn null_at_spawn_is_nothing_saved() {
        assert!(SavedBroker::from_spawn(Some(Value::Null)).0.is_none());
        assert!(SavedBroker::from_spawn(Some(json!({}))).0.is_some());
    }
}
