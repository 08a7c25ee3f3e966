//! The test kit: drive a strategy with ticks, timers, pauses, config updates and a
//! stop, and read what it did — fills, positions, PnL, custom metrics, a halt —
//! with plain `cargo test`: no Redis, no manager, no process.
//!
//! A [`TestHarness`] drives the strategy through the same [`Host`] the executor
//! runtime uses, with the runtime's rules: a tick's price reaches the broker before
//! the strategy sees it, a paused strategy gets prices but no ticks or timers, and a
//! strategy that halts itself is shut down at once (`on_shutdown` with
//! [`ShutdownReason::Stop`]), after which every event is dropped — the process
//! would have exited.
//!
//! Time is a test clock: it starts at 2024-01-01T00:00:00Z and moves only with
//! [`TestHarness::advance`]; ticks are stamped with it.
//!
//! ```
//! use strategy_sdk::testkit::TestHarness;
//! use strategy_sdk::{Context, Strategy, Tick};
//!
//! /// Buys 1 whenever the price falls below `floor`, up to a position of 3.
//! struct DipBuyer { floor: f64 }
//!
//! impl Strategy for DipBuyer {
//!     fn on_start(&mut self, ctx: &mut Context) {
//!         ctx.subscribe("SOL-USD");
//!     }
//!     fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
//!         if tick.price < self.floor && ctx.position(&tick.token).qty < 3.0 {
//!             let _ = ctx.buy(&tick.token, 1.0);
//!         }
//!     }
//! }
//!
//! let mut h = TestHarness::started(DipBuyer { floor: 100.0 });
//! h.ticks("SOL-USD", &[101.0, 99.0, 98.0, 102.0]);
//! assert_eq!(h.fills().len(), 2);
//! assert_eq!(h.fills()[1].price, 98.0);
//! assert_eq!(h.position("SOL-USD").qty, 2.0);
//! assert_eq!(h.pnl(), (102.0 - 99.0) + (102.0 - 98.0));
//!
//! h.pause().tick("SOL-USD", 90.0);
//! assert_eq!(h.fills().len(), 2, "paused: no trading");
//! ```

use crate::broker::{BrokerSnapshot, Fill, Position};
use crate::config::ConfigError;
use crate::context::Context;
use crate::execution::{ExecutionError, ExecutionReport};
use crate::host::{Host, Phase, RestoreError};
use crate::modes::{Bar, Signal};
use crate::registry::{Registry, RegistryError};
use crate::strategy::{ShutdownReason, Strategy, Tick};
use chrono::{DateTime, Utc};
use engine_protocol::StrategyMetrics;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// The test clock's first instant: 2024-01-01T00:00:00Z.
const START_UNIX_SECONDS: i64 = 1_704_067_200;

/// A strategy under test. `S` is the concrete strategy (so that the test can look
/// at it with [`TestHarness::strategy`]), or `dyn Strategy` when it comes from a
/// [`Registry`].
pub struct TestHarness<S: Strategy + ?Sized = dyn Strategy> {
    host: Host<S>,
    now: DateTime<Utc>,
    fills: Vec<Fill>,
}

impl<S: Strategy> TestHarness<S> {
    /// `strategy`, not started yet (see [`TestHarness::start`]).
    pub fn new(strategy: S) -> Self {
        Self::from_box(Box::new(strategy))
    }

    /// `strategy`, started: `on_start` has run.
    pub fn started(strategy: S) -> Self {
        let mut harness = Self::new(strategy);
        harness.start();
        harness
    }
}

impl TestHarness {
    /// The strategy `strategy_type` built from `config` by `registry`, as the
    /// executor builds it, not started yet.
    ///
    /// ```
    /// # use strategy_sdk::{Context, Registry, Strategy, Tick};
    /// # use strategy_sdk::testkit::TestHarness;
    /// # struct Nop;
    /// # impl Strategy for Nop {
    /// #     fn on_start(&mut self, _ctx: &mut Context) {}
    /// #     fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
    /// # }
    /// let mut registry = Registry::new();
    /// registry.register("nop", "does nothing", serde_json::json!({}), |_config: &serde_json::Value| {
    ///     Ok(Box::new(Nop) as Box<dyn Strategy>)
    /// });
    /// let mut h = TestHarness::from_registry(&registry, "nop", &serde_json::json!({})).unwrap();
    /// h.start().tick("BTC-USD", 1.0);
    /// assert!(TestHarness::from_registry(&registry, "other", &serde_json::json!({})).is_err());
    /// ```
    pub fn from_registry(
        registry: &Registry,
        strategy_type: &str,
        config: &Value,
    ) -> Result<Self, RegistryError> {
        Ok(Self::from_box(registry.create(strategy_type, config)?))
    }
}

impl<S: Strategy + ?Sized> TestHarness<S> {
    /// A boxed strategy, not started yet.
    pub fn from_box(strategy: Box<S>) -> Self {
        let mut host = Host::new(Uuid::nil(), "test", strategy);
        host.record_fills();
        TestHarness {
            host,
            now: DateTime::from_timestamp(START_UNIX_SECONDS, 0).expect("a valid instant"),
            fills: Vec::new(),
        }
    }

    // ---- events ----

    /// Before [`TestHarness::start`]: begin with the broker state a previous run
    /// left (its `ctx().broker().snapshot()`), as the engine does after a restart.
    ///
    /// ```
    /// # use strategy_sdk::{Context, Strategy, Tick};
    /// # use strategy_sdk::testkit::TestHarness;
    /// # struct BuyOnce;
    /// # impl Strategy for BuyOnce {
    /// #     fn on_start(&mut self, ctx: &mut Context) { ctx.subscribe("BTC-USD"); }
    /// #     fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
    /// #         if ctx.position(&tick.token).qty == 0.0 { ctx.buy(&tick.token, 1.0).unwrap(); }
    /// #     }
    /// # }
    /// let mut first = TestHarness::started(BuyOnce);
    /// first.ticks("BTC-USD", &[100.0, 110.0]);
    /// let mut second = TestHarness::new(BuyOnce);
    /// second.restore_broker(first.ctx().broker().snapshot()).unwrap();
    /// second.start().tick("BTC-USD", 120.0);
    /// assert_eq!(second.position("BTC-USD").qty, 1.0, "held, not bought again");
    /// assert_eq!(second.metrics().pnl_total, Some(20.0));
    /// assert_eq!(second.metrics().pnl, 10.0, "this run's");
    /// ```
    pub fn restore_broker(&mut self, snapshot: BrokerSnapshot) -> Result<&mut Self, RestoreError> {
        self.host.restore_broker(snapshot)?;
        Ok(self)
    }

    /// Run `on_start` (once).
    pub fn start(&mut self) -> &mut Self {
        let now = self.now;
        self.host.start(now);
        self.settle()
    }

    /// A tick of `token` at `price`, stamped with the test clock.
    pub fn tick(&mut self, token: &str, price: f64) -> &mut Self {
        self.send(Tick {
            token: token.to_string(),
            price,
            timestamp: self.now,
            volume: None,
            bid: None,
            ask: None,
        })
    }

    /// One tick of `token` per price, in order.
    pub fn ticks(&mut self, token: &str, prices: &[f64]) -> &mut Self {
        for &price in prices {
            self.tick(token, price);
        }
        self
    }

    /// A tick as it comes off `live_data:{token}` (any timestamp, volume, bid, ask).
    /// Like the runtime, it is delivered whether or not the strategy subscribed.
    pub fn send(&mut self, tick: Tick) -> &mut Self {
        self.host.tick(&tick);
        self.settle()
    }

    /// One tick of `token` per bar, at its close and stamped with its time, as a
    /// backtest delivers them ([`Context::bar`] is the bar meanwhile). The test clock
    /// is left alone.
    pub fn bars(&mut self, token: &str, bars: &[Bar]) -> &mut Self {
        for bar in bars {
            self.host.bar(token, bar);
            self.settle();
        }
        self
    }

    /// The strategy's screener score of `history`, as a screener run asks for it
    /// (0–100, or `None` when the symbol does not pass).
    pub fn score(&mut self, history: &[Bar]) -> Option<f64> {
        self.host.score(history)
    }

    /// The strategy's alert signal on the latest bar of `history`, as an alert run
    /// asks for it.
    pub fn signal(&mut self, history: &[Bar]) -> Option<Signal> {
        self.host.signal(history)
    }

    /// One beat of the strategy's timer, whatever its interval.
    pub fn timer(&mut self) -> &mut Self {
        let now = self.now;
        self.host.timer(now);
        self.settle()
    }

    /// One interval execution (or a `trigger` command), at the test clock, as the
    /// executor runs it: only while running; a panic in `on_execute` comes back as
    /// [`ExecutionError::Panicked`]; a strategy that halts itself is shut down.
    ///
    /// ```
    /// # use strategy_sdk::{Context, ExecuteError, ExecutionReport, Strategy, Tick};
    /// # use strategy_sdk::testkit::TestHarness;
    /// # struct Once;
    /// # impl Strategy for Once {
    /// #     fn on_start(&mut self, _ctx: &mut Context) {}
    /// #     fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
    /// #     fn on_execute(&mut self, ctx: &mut Context) -> Result<ExecutionReport, ExecuteError> {
    /// #         Ok(ExecutionReport::with_message(format!("at {}", ctx.now().format("%H:%M"))))
    /// #     }
    /// # }
    /// let mut h = TestHarness::started(Once);
    /// h.advance(std::time::Duration::from_secs(3600));
    /// assert_eq!(h.execute().unwrap().message(), Some("at 01:00"));
    /// h.pause();
    /// assert!(h.execute().unwrap_err().to_string().contains("paused"));
    /// ```
    pub fn execute(&mut self) -> Result<ExecutionReport, ExecutionError> {
        let now = self.now;
        let result = self.host.execute(now);
        self.settle();
        result
    }

    /// Move the test clock forward.
    pub fn advance(&mut self, by: Duration) -> &mut Self {
        self.now += chrono::Duration::from_std(by).expect("a duration a test can use");
        self
    }

    /// The `pause` command (`on_pause`, if running).
    pub fn pause(&mut self) -> &mut Self {
        let now = self.now;
        self.host.pause(now);
        self.settle()
    }

    /// The `resume` command (`on_resume`, if paused).
    pub fn resume(&mut self) -> &mut Self {
        let now = self.now;
        self.host.resume(now);
        self.settle()
    }

    /// The `update` command: the whole new config, which the strategy may reject.
    pub fn update_config(&mut self, config: &Value) -> Result<(), ConfigError> {
        let now = self.now;
        let result = self.host.update_config(now, config);
        self.settle();
        result
    }

    /// The `stop` command (mode `leave`): `on_shutdown` with `reason`.
    pub fn stop(&mut self, reason: ShutdownReason) -> &mut Self {
        let now = self.now;
        self.host.shutdown(now, reason);
        self.settle()
    }

    /// The `stop` command with mode `flatten`: every position is closed at its last
    /// price, then `on_shutdown` runs.
    pub fn stop_flattening(&mut self, reason: ShutdownReason) -> &mut Self {
        if self.host.phase() != Phase::Stopped {
            let now = self.now;
            self.host.flatten(now);
        }
        self.stop(reason)
    }

    /// After every event: collect the fills, and shut a halted strategy down.
    fn settle(&mut self) -> &mut Self {
        if self.host.context().halt_reason().is_some() {
            let now = self.now;
            self.host.shutdown(now, ShutdownReason::Stop);
        }
        self.fills.extend(self.host.take_fills());
        self
    }

    // ---- what it did ----

    /// The strategy itself.
    pub fn strategy(&self) -> &S {
        self.host.strategy()
    }

    /// The strategy's context: subscriptions, positions, the broker, metrics.
    pub fn ctx(&self) -> &Context {
        self.host.context()
    }

    /// Where the strategy is: `Created`, `Running`, `Paused` or `Stopped`.
    pub fn phase(&self) -> Phase {
        self.host.phase()
    }

    /// The test clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Every fill so far, in order (orders, closed positions and a flatten's fills).
    pub fn fills(&self) -> &[Fill] {
        &self.fills
    }

    /// The position in `token`.
    pub fn position(&self, token: &str) -> Position {
        self.ctx().position(token)
    }

    /// Realised plus unrealised PnL.
    pub fn pnl(&self) -> f64 {
        self.ctx().broker().pnl()
    }

    /// A custom metric the strategy set.
    pub fn metric(&self, key: &str) -> Option<&Value> {
        self.ctx().metric(key)
    }

    /// The metrics as the executor would report them on `strategy:metrics:{id}`
    /// (without the runtime's own tick counters).
    pub fn metrics(&self) -> StrategyMetrics {
        self.host.metrics()
    }

    /// Why the strategy halted itself, if it did.
    pub fn halt_reason(&self) -> Option<&str> {
        self.ctx().halt_reason()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Side;
    use serde::Deserialize;
    use serde_json::json;

    /// Long below `buy_below`, flat above `sell_above`; halts at `max_loss`.
    #[derive(Default)]
    struct Bands {
        config: BandsConfig,
        timers: u32,
        shutdowns: Vec<ShutdownReason>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct BandsConfig {
        buy_below: f64,
        sell_above: f64,
        max_loss: Option<f64>,
    }

    impl Strategy for Bands {
        fn on_start(&mut self, ctx: &mut Context) {
            ctx.subscribe("BTC");
        }
        fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
            let held = ctx.position(&tick.token).qty;
            if tick.price < self.config.buy_below && held == 0.0 {
                ctx.buy(&tick.token, 2.0).unwrap();
            } else if tick.price > self.config.sell_above && held > 0.0 {
                ctx.close_position(&tick.token).unwrap();
            }
            ctx.set_metric("last", tick.price);
            if let Some(limit) = self.config.max_loss {
                if ctx.broker().pnl() <= -limit {
                    ctx.halt("max_loss");
                }
            }
        }
        fn timer_interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(1))
        }
        fn on_timer(&mut self, ctx: &mut Context) {
            self.timers += 1;
            ctx.set_metric("timers", self.timers);
            ctx.set_metric("at", ctx.now().to_rfc3339());
        }
        fn update_config(&mut self, _ctx: &mut Context, config: &Value) -> Result<(), ConfigError> {
            self.config = crate::parse_config(config)?;
            Ok(())
        }
        fn on_shutdown(&mut self, _ctx: &mut Context, reason: ShutdownReason) {
            self.shutdowns.push(reason);
        }
    }

    fn bands(max_loss: Option<f64>) -> Bands {
        Bands {
            config: BandsConfig {
                buy_below: 100.0,
                sell_above: 110.0,
                max_loss,
            },
            ..Bands::default()
        }
    }

    #[test]
    fn records_fills_positions_pnl_and_metrics() {
        let mut h = TestHarness::started(bands(None));
        assert_eq!(h.phase(), Phase::Running);
        assert!(h.ctx().subscriptions().contains("BTC"));
        h.ticks("BTC", &[105.0, 99.0, 104.0]);
        assert_eq!(h.fills().len(), 1);
        assert_eq!(h.fills()[0].side, Side::Buy);
        assert_eq!(h.position("BTC").qty, 2.0);
        assert_eq!(h.pnl(), 10.0);
        assert_eq!(h.metric("last"), Some(&json!(104.0)));
        h.tick("BTC", 111.0);
        assert_eq!(h.fills().len(), 2, "close_position is a fill too");
        assert_eq!(h.fills()[1].realised_pnl, 24.0);
        let metrics = h.metrics();
        assert_eq!(metrics.orders_count, 2);
        assert_eq!(metrics.positions_count, 0);
        assert_eq!(metrics.success_rate, 1.0);
        assert_eq!(metrics.extra["last"], json!(111.0));
    }

    #[test]
    fn paused_strategies_see_prices_but_no_ticks_or_timers() {
        let mut h = TestHarness::started(bands(None));
        h.pause().tick("BTC", 90.0).timer();
        assert_eq!(h.phase(), Phase::Paused);
        assert!(h.fills().is_empty());
        assert_eq!(h.metric("timers"), None);
        assert_eq!(h.ctx().last_price("BTC"), Some(90.0));
        h.resume().timer().tick("BTC", 91.0);
        assert_eq!(h.metric("timers"), Some(&json!(1)));
        assert_eq!(h.fills().len(), 1);
    }

    #[test]
    fn the_clock_moves_only_when_told() {
        let mut h = TestHarness::started(bands(None));
        let start = h.now();
        assert_eq!(start.to_rfc3339(), "2024-01-01T00:00:00+00:00");
        h.timer();
        assert_eq!(h.metric("at"), Some(&json!(start.to_rfc3339())));
        h.advance(Duration::from_secs(90))
            .timer()
            .tick("BTC", 100.0);
        assert_eq!(h.ctx().now(), start + chrono::Duration::seconds(90));
        assert_eq!(h.metric("timers"), Some(&json!(2)));
    }

    #[test]
    fn a_halt_shuts_the_strategy_down_and_drops_later_events() {
        let mut h = TestHarness::started(bands(Some(15.0)));
        h.ticks("BTC", &[99.0, 95.0]);
        assert!(h.halt_reason().is_none());
        h.ticks("BTC", &[90.0, 50.0, 150.0]);
        assert_eq!(h.halt_reason(), Some("max_loss"));
        assert_eq!(h.phase(), Phase::Stopped);
        assert_eq!(h.strategy().shutdowns, [ShutdownReason::Stop]);
        assert_eq!(h.fills().len(), 1, "nothing after the halt");
        assert_eq!(h.metric("last"), Some(&json!(90.0)));
    }

    #[test]
    fn config_updates_are_applied_or_rejected() {
        let mut h = TestHarness::started(bands(None));
        let err = h.update_config(&json!({"buy_below": 1})).unwrap_err();
        assert!(err.to_string().contains("sell_above"), "{err}");
        h.update_config(&json!({"buy_below": 50, "sell_above": 60}))
            .unwrap();
        h.tick("BTC", 45.0);
        assert_eq!(h.fills()[0].price, 45.0);
    }

    #[test]
    fn stop_flattening_closes_positions_then_shuts_down() {
        let mut h = TestHarness::started(bands(None));
        h.ticks("BTC", &[99.0, 101.0]);
        h.stop_flattening(ShutdownReason::Restart);
        assert_eq!(h.phase(), Phase::Stopped);
        assert_eq!(h.position("BTC").qty, 0.0);
        assert_eq!(h.fills().len(), 2);
        assert_eq!(h.fills()[1].side, Side::Sell);
        assert_eq!(h.pnl(), 4.0);
        assert_eq!(h.strategy().shutdowns, [ShutdownReason::Restart]);
        h.stop(ShutdownReason::Stop).tick("BTC", 1.0);
        assert_eq!(h.strategy().shutdowns.len(), 1, "on_shutdown runs once");
    }

    /// Halts on its second execution.
    struct Twice {
        executions: u32,
    }
    impl Strategy for Twice {
        fn on_start(&mut self, _ctx: &mut Context) {}
        fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
        fn on_execute(
            &mut self,
            ctx: &mut Context,
        ) -> Result<ExecutionReport, crate::ExecuteError> {
            self.executions += 1;
            if self.executions == 2 {
                ctx.halt("done");
            }
            Ok(ExecutionReport::done())
        }
    }

    #[test]
    fn executions_follow_the_runtime_rules() {
        let mut h = TestHarness::new(Twice { executions: 0 });
        assert_eq!(h.execute(), Err(ExecutionError::NotRunning(Phase::Created)));
        h.start();
        assert_eq!(h.execute(), Ok(ExecutionReport::done()));
        assert!(h.execute().is_ok());
        assert_eq!(h.phase(), Phase::Stopped, "a halt shuts it down");
        assert_eq!(h.halt_reason(), Some("done"));
        assert_eq!(h.execute(), Err(ExecutionError::NotRunning(Phase::Stopped)));
        assert_eq!(h.strategy().executions, 2);
    }

    #[test]
    fn harnesses_from_a_registry_are_not_started() {
        let mut registry = Registry::new();
        registry.register("bands", "", json!({}), |config: &Value| {
            let config: BandsConfig = crate::parse_config(config)?;
            Ok(Box::new(Bands {
                config,
                ..Bands::default()
            }) as Box<dyn Strategy>)
        });
        let config = json!({"buy_below": 10, "sell_above": 20});
        let mut h = TestHarness::from_registry(&registry, "bands", &config).unwrap();
        assert_eq!(h.phase(), Phase::Created);
        h.tick("BTC", 5.0);
        assert!(h.fills().is_empty(), "not started: no tick delivered");
        h.start().tick("BTC", 5.0);
        assert_eq!(h.fills().len(), 1);
        let err = TestHarness::from_registry(&registry, "bands", &json!({"x": 1}))
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("bands: "), "{err}");
    }
}
