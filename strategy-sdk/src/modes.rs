//! Run modes and what a strategy judges in them: the [`RunMode`]s a strategy type
//! supports, the [`Bar`]s it is given outside live trading, and the [`Signal`] it
//! raises in an alert run.
//!
//! Every mode drives the same [`crate::Strategy`]; only the source of time and
//! prices changes:
//! - `live`: ticks from Redis, the wall clock.
//! - `backtest`: bars replayed in time order by [`crate::backtest`], one tick per bar
//!   at its close, [`crate::Context::now`] the bar's time, orders filled at the close
//!   by the same paper broker.
//! - `screener`: [`crate::Strategy::score`] on each symbol's bar history.
//! - `alert`: [`crate::Strategy::signal`] on each symbol's bar history.

use serde::{Deserialize, Serialize};

pub use engine_protocol::runs::bars_file::Bar;
pub use engine_protocol::runs::{RunMode, UnknownRunMode};

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalPriority {
    High,
    Normal,
    Low,
}

/// A strategy's signal firing on the latest bar: what an alert run raises (its
/// `type`, `message` and `priority` in the run's `alerts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// What fired, a short word such as `bullish_breakout` or `oversold`.
    #[serde(rename = "type")]
    pub kind: String,
    /// One human line saying why.
    pub message: String,
    pub priority: SignalPriority,
}

impl Signal {
    pub fn new(
        kind: impl Into<String>,
        message: impl Into<String>,
        priority: SignalPriority,
    ) -> Self {
        Signal {
            kind: kind.into(),
            message: message.into(),
            priority,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use serde_json::json;

    #[test]
    fn run_modes_are_words() {
        for mode in RunMode::ALL {
            assert_eq!(mode.as_str().parse::<RunMode>(), Ok(mode));
            assert_eq!(serde_json::to_value(mode).unwrap(), json!(mode.as_str()));
        }
        let err = "replay".parse::<RunMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown run mode 'replay'; allowed: live, backtest, screener, alert"
        );
    }

    #[test]
    fn signals_serialize_as_alerts_do() {
        let signal = Signal::new("oversold", "z-score -2.5", SignalPriority::High);
        assert_eq!(
            serde_json::to_value(&signal).unwrap(),
            json!({"type": "oversold", "message": "z-score -2.5", "priority": "high"})
        );
    }

    #[test]
    fn bars_and_ticks() {
        let ts = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let bar = Bar {
            ts,
            open: 1.0,
            high: 3.0,
            low: 0.5,
            close: 2.0,
            volume: 7.0,
        };
        let tick = bar.close_tick("AAPL");
        assert_eq!(
            (tick.price, tick.timestamp, tick.volume),
            (2.0, ts, Some(7.0))
        );
        let back = Bar::from_tick(&tick);
        assert_eq!((back.high, back.low, back.volume), (2.0, 2.0, 7.0));
    }
}
