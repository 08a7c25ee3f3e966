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

use chrono::{DateTime, Utc};
use engine_protocol::Tick;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A way of running a strategy. Every strategy runs `live`; a strategy type declares
/// the others it supports when it is registered
/// ([`crate::Registry::register_with_modes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Trading on live ticks (the strategy's executor).
    Live,
    /// Replaying bars through `on_tick` with the paper broker.
    Backtest,
    /// Ranking symbols by [`crate::Strategy::score`].
    Screener,
    /// Raising [`crate::Strategy::signal`]s.
    Alert,
}

impl RunMode {
    /// Every mode, in the order `--list` shows them.
    pub const ALL: [RunMode; 4] = [
        RunMode::Live,
        RunMode::Backtest,
        RunMode::Screener,
        RunMode::Alert,
    ];

    /// The word used in `strategy_runs.mode` and `--list`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Live => "live",
            RunMode::Backtest => "backtest",
            RunMode::Screener => "screener",
            RunMode::Alert => "alert",
        }
    }
}

impl fmt::Display for RunMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a run mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run mode '{0}'; allowed: live, backtest, screener, alert")]
pub struct UnknownRunMode(pub String);

impl FromStr for RunMode {
    type Err = UnknownRunMode;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        RunMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == word)
            .ok_or_else(|| UnknownRunMode(word.to_string()))
    }
}

/// One bar of market data (`market_bars`): `ts` is the bar's time (its open).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    pub ts: DateTime<Utc>,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

impl Bar {
    /// A bar of one tick: open, high, low and close are its price, the volume its
    /// volume (0 without one). What a strategy that keeps bars builds from live ticks.
    pub fn from_tick(tick: &Tick) -> Bar {
        Bar {
            ts: tick.timestamp,
            open: tick.price,
            high: tick.price,
            low: tick.price,
            close: tick.price,
            volume: tick.volume.unwrap_or(0.0),
        }
    }

    /// The tick a backtest delivers for this bar: `token` at the close, stamped with
    /// the bar's time, with the bar's volume.
    pub fn close_tick(&self, token: &str) -> Tick {
        Tick {
            token: token.to_string(),
            price: self.close,
            timestamp: self.ts,
            volume: Some(self.volume),
            bid: None,
            ask: None,
        }
    }
}

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
