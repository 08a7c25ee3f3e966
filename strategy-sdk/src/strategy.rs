//! The [`Strategy`] trait: the whole surface a strategy author implements.
//!
//! Strategy logic is synchronous and does no I/O of its own: it reacts to events and
//! acts through the [`Context`] (paper orders, subscriptions, metrics); the executor
//! runtime does the networking.

use crate::config::ConfigError;
use crate::context::Context;
use crate::execution::{ExecuteError, ExecutionReport};
use crate::modes::{Bar, Signal};
pub use engine_protocol::{ShutdownReason, Tick};

use serde_json::Value;
use std::time::Duration;

/// A trading strategy. Constructed from its config by the function registered in the
/// [`crate::Registry`], which is where a bad config is rejected.
///
/// Only `on_start` and `on_tick` are required. The callbacks never overlap, and
/// each sees the time of its event in [`Context::now`].
///
/// ```
/// use serde_json::{json, Value};
/// use std::time::Duration;
/// use strategy_sdk::testkit::TestHarness;
/// use strategy_sdk::{parse_config, ConfigError, Context, Strategy, Tick};
///
/// /// Counts ticks, reports the count every `every_ms` milliseconds.
/// struct Counter { every_ms: u64, ticks: u64 }
///
/// impl Strategy for Counter {
///     fn on_start(&mut self, ctx: &mut Context) {
///         ctx.subscribe("BTC-USD");
///     }
///     fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {
///         self.ticks += 1;
///     }
///     fn timer_interval(&self) -> Option<Duration> {
///         Some(Duration::from_millis(self.every_ms))
///     }
///     fn on_timer(&mut self, ctx: &mut Context) {
///         ctx.set_metric("ticks", self.ticks);
///     }
///     fn update_config(&mut self, _ctx: &mut Context, config: &Value) -> Result<(), ConfigError> {
///         let every_ms: u64 = parse_config::<serde_json::Map<String, Value>>(config)?
///             .get("every_ms")
///             .and_then(Value::as_u64)
///             .ok_or_else(|| ConfigError::new("every_ms", "a whole number of milliseconds"))?;
///         self.every_ms = every_ms;
///         Ok(())
///     }
/// }
///
/// let mut h = TestHarness::started(Counter { every_ms: 1000, ticks: 0 });
/// h.ticks("BTC-USD", &[1.0, 2.0]).timer();
/// assert_eq!(h.metric("ticks"), Some(&json!(2)));
/// assert!(h.update_config(&json!({"every_ms": "soon"})).is_err());
/// h.update_config(&json!({"every_ms": 250})).unwrap();
/// assert_eq!(h.strategy().timer_interval(), Some(Duration::from_millis(250)));
/// ```
pub trait Strategy: Send {
    /// Called once before any tick: subscribe to tokens here.
    fn on_start(&mut self, ctx: &mut Context);

    /// A market tick for a subscribed token (the broker already knows its price).
    fn on_tick(&mut self, ctx: &mut Context, tick: &Tick);

    /// How often [`Strategy::on_timer`] runs; `None` (the default) for never.
    fn timer_interval(&self) -> Option<Duration> {
        None
    }

    /// Every [`Strategy::timer_interval`] while running.
    fn on_timer(&mut self, _ctx: &mut Context) {}

    /// Paused: no ticks or timers are delivered until resumed.
    fn on_pause(&mut self, _ctx: &mut Context) {}

    /// Resumed after a pause: ticks and timers flow again.
    fn on_resume(&mut self, _ctx: &mut Context) {}

    /// A new config at run time (the whole config, not a patch). Validate it fully;
    /// on `Err` keep the old one. The default rejects every update.
    fn update_config(&mut self, _ctx: &mut Context, _config: &Value) -> Result<(), ConfigError> {
        Err(ConfigError::new(
            "",
            "this strategy does not accept config updates while running; stop it, update, then start it",
        ))
    }

    /// Called once before the process exits, also after [`Context::halt`] (with
    /// [`ShutdownReason::Stop`]).
    fn on_shutdown(&mut self, _ctx: &mut Context, _reason: ShutdownReason) {}

    /// Interval execution: one step, run once per `execution_interval_s` on the
    /// manager's clock and once per `trigger` command, with the same [`Context`] as
    /// every callback (the latest prices, the paper broker, metrics). `Ok` with an
    /// optional message when it ended well (doing nothing on purpose is ending well:
    /// say why in the message), `Err` with the reason otherwise. A running strategy
    /// only; never at the same time as another callback. The default says the
    /// strategy does not support it: a strategy that implements it also registers
    /// with [`crate::Registry::register_interval`].
    ///
    /// ```
    /// use strategy_sdk::testkit::TestHarness;
    /// use strategy_sdk::{Context, ExecuteError, ExecutionReport, Strategy, Tick};
    ///
    /// /// Buys 1 BTC-USD per execution.
    /// struct Stack;
    /// impl Strategy for Stack {
    ///     fn on_start(&mut self, ctx: &mut Context) {
    ///         ctx.subscribe("BTC-USD");
    ///     }
    ///     fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
    ///     fn on_execute(&mut self, ctx: &mut Context) -> Result<ExecutionReport, ExecuteError> {
    ///         let fill = ctx.buy("BTC-USD", 1.0).map_err(|e| ExecuteError::new(e.to_string()))?;
    ///         Ok(ExecutionReport::with_message(format!("bought 1 at {}", fill.price)))
    ///     }
    /// }
    ///
    /// let mut h = TestHarness::started(Stack);
    /// assert!(h.execute().is_err(), "no price yet");
    /// h.tick("BTC-USD", 100.0);
    /// assert_eq!(h.execute().unwrap().message(), Some("bought 1 at 100"));
    /// assert_eq!(h.position("BTC-USD").qty, 1.0);
    /// ```
    fn on_execute(&mut self, _ctx: &mut Context) -> Result<ExecutionReport, ExecuteError> {
        Err(ExecuteError::unsupported())
    }

    /// Screener: how good a buy the symbol is on its latest bar, judged from its bar
    /// `history` (oldest first, the latest last; the strategy's `token` is the
    /// symbol), on a scale of 0 (worst) to 100 (best). `None` means the symbol does
    /// not pass: too little history, or rejected by the strategy's own filters and
    /// thresholds. [`Context::now`] is the latest bar's time. The default is `None`:
    /// a strategy that scores also declares [`crate::RunMode::Screener`] when it is
    /// registered. A score outside 0–100 is clamped by the host, and a NaN is `None`.
    ///
    /// Derive it from the same state your `on_tick` trades on (e.g. replay the
    /// history's closes through the code `on_tick` uses), so that the screener and
    /// live trading never disagree.
    fn score(&self, _ctx: &Context, _history: &[Bar]) -> Option<f64> {
        None
    }

    /// Screener: the least [`Strategy::score`] that passes. A screener run marks a
    /// symbol `passed` when it has a score and the score is at least this, and ranks
    /// only the symbols that pass. The default, 50, is the middle of the scale: a
    /// score above it says "better than neutral". A strategy with its own threshold
    /// (`bullish_breakout`'s `min_score`) returns it here.
    fn passing_score(&self) -> f64 {
        50.0
    }

    /// Alert: whether the strategy's signal fires on the latest bar of `history`
    /// (oldest first), with what an alert carries: its type, a message and a
    /// priority. [`Context::now`] is the latest bar's time. The default is `None`: a
    /// strategy that signals also declares [`crate::RunMode::Alert`] when it is
    /// registered.
    fn signal(&self, _ctx: &Context, _history: &[Bar]) -> Option<Signal> {
        None
    }
}
