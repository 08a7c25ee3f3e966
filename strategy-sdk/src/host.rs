//! [`Host`]: a strategy and its [`Context`] as an executor drives them — events go
//! in, reports come out.
//!
//! The executor runtime and the [`crate::testkit`] both drive strategies through it,
//! so a strategy meets the same rules under test as in production: a tick's price
//! reaches the broker before the strategy sees the tick, nothing but prices arrives
//! while paused, and `on_shutdown` runs once. A strategy author does not need it: a
//! strategy only ever sees its `&mut Context`, and tests use
//! [`crate::testkit::TestHarness`].

use crate::broker::{BrokerSnapshot, Fill, OrderError, OrderIds, PriceSlot, SnapshotError};
use crate::config::ConfigError;
use crate::context::Context;
use crate::execution::{ExecutionError, ExecutionReport};
use crate::modes::{Bar, Signal};
use crate::strategy::{ShutdownReason, Strategy, Tick};
use chrono::{DateTime, Utc};
use engine_protocol::StrategyMetrics;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;
use uuid::Uuid;

/// Where a hosted strategy is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Built, `on_start` not called yet.
    Created,
    /// Ticks and timers are delivered.
    Running,
    /// Prices are still recorded, but no tick or timer is delivered.
    Paused,
    /// `on_shutdown` ran: nothing more is delivered.
    Stopped,
}

/// One strategy and its context, driven event by event.
///
/// Each event method sets the context's clock, calls the strategy if the phase
/// allows, and says whether it did. After a call, the driver looks at
/// [`Host::take_subscriptions_changed`] and at the context's
/// [`Context::halt_reason`] and acts on them.
///
/// ```
/// use chrono::Utc;
/// use strategy_sdk::host::{Host, Phase};
/// use strategy_sdk::{Context, ShutdownReason, Strategy, Tick};
/// use uuid::Uuid;
///
/// struct Follow;
/// impl Strategy for Follow {
///     fn on_start(&mut self, ctx: &mut Context) {
///         ctx.subscribe("BTC-USD");
///     }
///     fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
///         ctx.set_metric("last", tick.price);
///     }
/// }
///
/// let mut host = Host::new(Uuid::nil(), "follow", Box::new(Follow));
/// assert!(host.start(Utc::now()));
/// assert!(host.take_subscriptions_changed());
/// let tick = Tick {
///     token: "BTC-USD".into(), price: 100.0, timestamp: Utc::now(),
///     volume: None, bid: None, ask: None,
/// };
/// assert!(host.tick(&tick));
/// assert!(host.pause(Utc::now()));
/// assert!(!host.tick(&tick), "paused: the price is recorded, the tick not delivered");
/// host.shutdown(Utc::now(), ShutdownReason::Stop);
/// assert_eq!(host.phase(), Phase::Stopped);
/// assert_eq!(host.metrics().extra["last"], 100.0);
/// ```
pub struct Host<S: Strategy + ?Sized = dyn Strategy> {
    ctx: Context,
    phase: Phase,
    strategy: Box<S>,
}

impl<S: Strategy + ?Sized> Host<S> {
    /// Host `strategy` (built by its constructor) for the strategy `strategy_id`.
    pub fn new(strategy_id: Uuid, name: impl Into<String>, strategy: Box<S>) -> Self {
        Host {
            ctx: Context::new(strategy_id, name),
            phase: Phase::Created,
            strategy,
        }
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    pub fn strategy(&self) -> &S {
        &self.strategy
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// How often the strategy wants [`Host::timer`]; read again after a config update.
    pub fn timer_interval(&self) -> Option<Duration> {
        self.strategy.timer_interval()
    }

    /// Give the broker the state a previous run of this strategy left (its
    /// [`crate::PaperBroker::snapshot`]), before `on_start`: the strategy starts with
    /// those positions, realised PnL and counts. On `Err` (a snapshot that cannot be
    /// a broker's, or a strategy already started) nothing changes.
    pub fn restore_broker(&mut self, snapshot: BrokerSnapshot) -> Result<(), RestoreError> {
        if self.phase != Phase::Created {
            return Err(RestoreError::AlreadyStarted);
        }
        self.ctx
            .restore_broker(snapshot)
            .map_err(RestoreError::Snapshot)
    }

    /// Name the orders from now on with `ids` (the lease epoch and the session of
    /// the executor or run: see [`OrderIds`]); kept through [`Host::restore_broker`].
    pub fn set_order_ids(&mut self, ids: OrderIds) {
        self.ctx.set_order_ids(ids);
    }

    /// `on_start`, once: `Created` → `Running`.
    pub fn start(&mut self, now: DateTime<Utc>) -> bool {
        if self.phase != Phase::Created {
            return false;
        }
        self.phase = Phase::Running;
        self.ctx.set_now(now);
        self.strategy.on_start(&mut self.ctx);
        true
    }

    /// Record the tick's price, then deliver it if running (the clock is the tick's
    /// timestamp). True when the strategy saw it.
    pub fn tick(&mut self, tick: &Tick) -> bool {
        if self.phase == Phase::Stopped {
            return false;
        }
        self.ctx.set_now(tick.timestamp);
        self.ctx.mark_price(&tick.token, tick.price);
        if self.phase != Phase::Running {
            return false;
        }
        self.strategy.on_tick(&mut self.ctx, tick);
        true
    }

    /// A bar, as a backtest replays it: the tick of `token` at the bar's close,
    /// stamped with the bar's time, with [`Context::bar`] the bar while the strategy
    /// handles it. True when the strategy saw it. (Many bars of one token: use a
    /// [`BarFeed`], which allocates nothing and looks nothing up per bar.)
    pub fn bar(&mut self, token: &str, bar: &Bar) -> bool {
        let mut feed = self.bar_feed(token);
        self.feed_bar(&mut feed, bar)
    }

    /// A feed of `token`'s bars for [`Host::feed_bar`]: the token is interned once.
    pub fn bar_feed(&mut self, token: &str) -> BarFeed {
        BarFeed {
            slot: self.ctx.price_slot(token),
            tick: Tick {
                token: token.to_string(),
                price: f64::NAN,
                timestamp: self.ctx.now(),
                volume: None,
                bid: None,
                ask: None,
            },
        }
    }

    /// [`Host::bar`] through `feed`: the tick is the feed's own, rewritten in place,
    /// and the price reaches the broker by its slot. No allocation, no lookup.
    #[inline]
    pub fn feed_bar(&mut self, feed: &mut BarFeed, bar: &Bar) -> bool {
        if self.phase == Phase::Stopped {
            return false;
        }
        let tick = &mut feed.tick;
        tick.price = bar.close;
        tick.timestamp = bar.ts;
        tick.volume = Some(bar.volume);
        self.ctx.set_now(bar.ts);
        self.ctx.mark_slot(feed.slot, bar.close);
        if self.phase != Phase::Running {
            return false;
        }
        self.ctx.set_bar(Some(*bar));
        self.strategy.on_tick(&mut self.ctx, &feed.tick);
        self.ctx.set_bar(None);
        true
    }

    /// Stop keeping custom metrics ([`Context::set_metric`] does nothing): for runs,
    /// where nothing reports them.
    pub fn drop_custom_metrics(&mut self) {
        self.ctx.drop_custom_metrics();
    }

    /// The strategy's [`Strategy::score`] of `history` (oldest first), the clock at
    /// the latest bar's time: clamped to 0–100, `None` for no score or a NaN, and
    /// `None` without asking the strategy when there are no bars.
    pub fn score(&mut self, history: &[Bar]) -> Option<f64> {
        self.ctx.set_now(history.last()?.ts);
        let score = self.strategy.score(&self.ctx, history)?;
        (!score.is_nan()).then(|| score.clamp(0.0, 100.0))
    }

    /// The strategy's [`Strategy::signal`] on the latest bar of `history`, the clock
    /// at that bar's time (`None`, without asking, when there are no bars).
    pub fn signal(&mut self, history: &[Bar]) -> Option<Signal> {
        self.ctx.set_now(history.last()?.ts);
        self.strategy.signal(&self.ctx, history)
    }

    /// Charge `fee_bps` on every later fill (backtests).
    pub(crate) fn set_fee_bps(&mut self, fee_bps: f64) {
        self.ctx.set_fee_bps(fee_bps);
    }

    /// `on_timer`, if running.
    pub fn timer(&mut self, now: DateTime<Utc>) -> bool {
        if self.phase != Phase::Running {
            return false;
        }
        self.ctx.set_now(now);
        self.strategy.on_timer(&mut self.ctx);
        true
    }

    /// One interval execution: the strategy's [`Strategy::on_execute`], if running,
    /// the clock at `now`. A panic in `on_execute` is caught and returned as
    /// [`ExecutionError::Panicked`] (the strategy stays `Running`; its own fields may
    /// be half-updated, the broker is not, since every order is applied whole). This
    /// is the one callback whose panic is caught: a panic in any other unwinds out of
    /// the host, and the executor exits and is restarted by the crash rules. (With
    /// `panic = "abort"` nothing can be caught.)
    ///
    /// ```
    /// use chrono::Utc;
    /// use strategy_sdk::{Context, ExecuteError, ExecutionError, ExecutionReport, Host, Strategy, Tick};
    /// use uuid::Uuid;
    ///
    /// struct Fragile;
    /// impl Strategy for Fragile {
    ///     fn on_start(&mut self, _ctx: &mut Context) {}
    ///     fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
    ///     fn on_execute(&mut self, ctx: &mut Context) -> Result<ExecutionReport, ExecuteError> {
    ///         match ctx.last_price("BTC-USD") {
    ///             None => panic!("no price"),
    ///             Some(price) => Ok(ExecutionReport::with_message(format!("price {price}"))),
    ///         }
    ///     }
    /// }
    ///
    /// let mut host = Host::new(Uuid::nil(), "fragile", Box::new(Fragile));
    /// let err = host.execute(Utc::now()).unwrap_err();
    /// assert_eq!(err.to_string(), "the strategy is not running (it is not started)");
    /// host.start(Utc::now());
    /// let err = host.execute(Utc::now()).unwrap_err();
    /// assert_eq!(err, ExecutionError::Panicked("no price".into()));
    /// ```
    pub fn execute(&mut self, now: DateTime<Utc>) -> Result<ExecutionReport, ExecutionError> {
        if self.phase != Phase::Running {
            return Err(ExecutionError::NotRunning(self.phase));
        }
        self.ctx.set_now(now);
        let (strategy, ctx) = (&mut self.strategy, &mut self.ctx);
        match catch_unwind(AssertUnwindSafe(|| strategy.on_execute(ctx))) {
            Ok(result) => result.map_err(ExecutionError::Failed),
            Err(payload) => Err(ExecutionError::Panicked(engine_protocol::panic_message(
                payload.as_ref(),
            ))),
        }
    }

    /// `on_pause`, if running: `Running` → `Paused`.
    pub fn pause(&mut self, now: DateTime<Utc>) -> bool {
        if self.phase != Phase::Running {
            return false;
        }
        self.phase = Phase::Paused;
        self.ctx.set_now(now);
        self.strategy.on_pause(&mut self.ctx);
        true
    }

    /// `on_resume`, if paused: `Paused` → `Running`.
    pub fn resume(&mut self, now: DateTime<Utc>) -> bool {
        if self.phase != Phase::Paused {
            return false;
        }
        self.phase = Phase::Running;
        self.ctx.set_now(now);
        self.strategy.on_resume(&mut self.ctx);
        true
    }

    /// Hand the strategy a whole new config; on `Err` it keeps the old one.
    pub fn update_config(&mut self, now: DateTime<Utc>, config: &Value) -> Result<(), ConfigError> {
        self.ctx.set_now(now);
        self.strategy.update_config(&mut self.ctx, config)
    }

    /// Close every open position at the last prices (a stop with `mode: flatten`);
    /// the fills, and the positions it could not close.
    pub fn flatten(&mut self, now: DateTime<Utc>) -> (Vec<Fill>, Vec<OrderError>) {
        self.ctx.set_now(now);
        self.ctx.flatten()
    }

    /// `on_shutdown`, once: → `Stopped`.
    pub fn shutdown(&mut self, now: DateTime<Utc>, reason: ShutdownReason) -> bool {
        if self.phase == Phase::Stopped {
            return false;
        }
        self.phase = Phase::Stopped;
        self.ctx.set_now(now);
        self.strategy.on_shutdown(&mut self.ctx, reason);
        true
    }

    /// Whether the subscriptions changed since the last call (and reset the flag).
    pub fn take_subscriptions_changed(&mut self) -> bool {
        self.ctx.take_subscriptions_changed()
    }

    /// PnL, counts and the strategy's custom metrics, as reported on
    /// `strategy:metrics:{id}`.
    pub fn metrics(&self) -> StrategyMetrics {
        self.ctx.metrics()
    }

    /// Keep every fill from now on, for [`Host::take_fills`]. Off by default, so that
    /// a long run keeps no history.
    pub fn record_fills(&mut self) {
        self.ctx.record_fills();
    }

    /// The fills since the last call (empty unless [`Host::record_fills`] was called).
    pub fn take_fills(&mut self) -> Vec<Fill> {
        self.ctx.take_fills()
    }
}

/// One token's bars on their way into a [`Host`] ([`Host::bar_feed`]): the tick
/// each bar becomes, reused, and the token's price slot in the broker.
#[derive(Debug)]
pub struct BarFeed {
    tick: Tick,
    slot: PriceSlot,
}

/// Why [`Host::restore_broker`] did not restore.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestoreError {
    #[error("the broker can only be restored before the strategy starts")]
    AlreadyStarted,
    #[error("the saved broker state is not usable")]
    Snapshot(#[source] SnapshotError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its callbacks and trades on every tick.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<&'static str>,
    }

    impl Strategy for Recorder {
        fn on_start(&mut self, ctx: &mut Context) {
            self.calls.push("start");
            ctx.subscribe("BTC");
        }
        fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
            self.calls.push("tick");
            ctx.buy(&tick.token, 1.0).unwrap();
        }
        fn on_timer(&mut self, _ctx: &mut Context) {
            self.calls.push("timer");
        }
        fn on_pause(&mut self, _ctx: &mut Context) {
            self.calls.push("pause");
        }
        fn on_resume(&mut self, _ctx: &mut Context) {
            self.calls.push("resume");
        }
        fn on_shutdown(&mut self, _ctx: &mut Context, _reason: ShutdownReason) {
            self.calls.push("shutdown");
        }
    }

    fn tick(price: f64) -> Tick {
        Tick {
            token: "BTC".into(),
            price,
            timestamp: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            volume: None,
            bid: None,
            ask: None,
        }
    }

    #[test]
    fn phases_gate_the_callbacks() {
        let now = Utc::now();
        let mut host = Host::new(Uuid::nil(), "t", Box::new(Recorder::default()));
        assert!(!host.tick(&tick(1.0)), "not started");
        assert!(!host.timer(now));
        assert!(host.start(now));
        assert!(!host.start(now), "on_start runs once");
        assert!(!host.resume(now), "not paused");
        assert!(host.tick(&tick(10.0)));
        assert!(host.timer(now));
        assert!(host.pause(now));
        assert!(!host.pause(now));
        assert!(!host.tick(&tick(12.0)));
        assert_eq!(host.context().last_price("BTC"), Some(12.0), "price kept");
        assert_eq!(host.context().now(), tick(12.0).timestamp);
        assert!(!host.timer(now));
        assert!(host.resume(now));
        assert!(host.shutdown(now, ShutdownReason::Stop));
        assert!(
            !host.shutdown(now, ShutdownReason::Stop),
            "on_shutdown runs once"
        );
        assert!(!host.tick(&tick(13.0)));
        assert_eq!(host.context().last_price("BTC"), Some(12.0));
        assert_eq!(
            host.strategy().calls,
            ["start", "tick", "timer", "pause", "resume", "shutdown"]
        );
        assert_eq!(host.phase(), Phase::Stopped);
    }

    /// Scores the last close, signals above 50, and notes the clock it saw.
    struct Judge;
    impl Strategy for Judge {
        fn on_start(&mut self, _ctx: &mut Context) {}
        fn on_tick(&mut self, ctx: &mut Context, _tick: &Tick) {
            ctx.set_metric("bar_close", ctx.bar().map(|bar| bar.close));
        }
        fn score(&self, ctx: &Context, history: &[Bar]) -> Option<f64> {
            assert_eq!(Some(ctx.now()), history.last().map(|bar| bar.ts));
            history.last().map(|bar| bar.close)
        }
        fn signal(&self, _ctx: &Context, history: &[Bar]) -> Option<Signal> {
            let close = history.last()?.close;
            (close > 50.0)
                .then(|| Signal::new("high", format!("{close}"), crate::SignalPriority::Normal))
        }
    }

    fn bar(close: f64) -> Bar {
        Bar {
            ts: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            open: close,
            high: close,
            low: close,
            close,
            volume: 1.0,
        }
    }

    #[test]
    fn scores_are_clamped_and_bars_are_in_the_context_while_delivered() {
        let mut host = Host::new(Uuid::nil(), "t", Box::new(Judge));
        assert_eq!(host.score(&[bar(42.0)]), Some(42.0));
        assert_eq!(host.context().now(), bar(42.0).ts);
        assert_eq!(host.score(&[bar(142.0)]), Some(100.0));
        assert_eq!(host.score(&[bar(f64::NAN)]), None);
        assert_eq!(host.score(&[]), None);
        assert_eq!(host.signal(&[bar(60.0)]).unwrap().message, "60");
        assert_eq!(host.signal(&[bar(40.0)]), None);

        host.start(Utc::now());
        assert!(host.bar("BTC", &bar(7.0)));
        assert_eq!(host.metrics().extra["bar_close"], 7.0);
        assert_eq!(host.context().now(), bar(7.0).ts);
        assert!(host.context().bar().is_none(), "only while it is delivered");
        host.tick(&tick(8.0));
        assert!(
            host.metrics().extra["bar_close"].is_null(),
            "a live tick has no bar"
        );
    }

    #[test]
    fn subscription_changes_are_reported_once() {
        let mut host = Host::new(Uuid::nil(), "t", Box::new(Recorder::default()));
        assert!(!host.take_subscriptions_changed());
        host.start(Utc::now());
        assert!(host.take_subscriptions_changed());
        assert!(!host.take_subscriptions_changed());
    }

    #[test]
    fn fills_are_kept_only_when_asked_and_flatten_closes_all() {
        let now = Utc::now();
        let mut host = Host::new(Uuid::nil(), "t", Box::new(Recorder::default()));
        host.start(now);
        host.tick(&tick(10.0));
        assert!(host.take_fills().is_empty(), "not recording");
        host.record_fills();
        host.tick(&tick(11.0));
        let (fills, errors) = host.flatten(now);
        assert!(errors.is_empty());
        assert_eq!(fills.len(), 1);
        let recorded = host.take_fills();
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[1], fills[0]);
        assert!(host.take_fills().is_empty());
        let metrics = host.metrics();
        assert_eq!(metrics.orders_count, 3);
        assert_eq!(metrics.positions_count, 0);
        assert_eq!(metrics.pnl, 1.0);
    }
    /// Executes by its script: ok, an error, or a panic with a formatted message.
    struct Scripted {
        next: Vec<&'static str>,
    }
    impl Strategy for Scripted {
        fn on_start(&mut self, _ctx: &mut Context) {}
        fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
        fn on_execute(
            &mut self,
            ctx: &mut Context,
        ) -> Result<ExecutionReport, crate::ExecuteError> {
            match self.next.remove(0) {
                "ok" => Ok(ExecutionReport::with_message(ctx.now().to_rfc3339())),
                "err" => Err(crate::ExecuteError::new("nothing to do")),
                other => panic!("scripted {other}"),
            }
        }
    }

    #[test]
    fn executions_run_only_while_running_and_panics_become_errors() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let script = vec!["ok", "err", "boom", "ok"];
        let mut host = Host::new(Uuid::nil(), "t", Box::new(Scripted { next: script }));
        assert_eq!(
            host.execute(now),
            Err(ExecutionError::NotRunning(Phase::Created))
        );
        host.start(now);
        let report = host.execute(now).unwrap();
        assert_eq!(report.message(), Some("2023-11-14T22:13:20+00:00"));
        let err = host.execute(now).unwrap_err();
        assert_eq!(err.to_string(), "nothing to do");
        let err = host.execute(now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the strategy panicked during the execution: scripted boom"
        );
        assert_eq!(host.phase(), Phase::Running, "a panic does not stop it");
        host.pause(now);
        let err = host.execute(now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the strategy is not running (it is paused)"
        );
        host.resume(now);
        assert!(host.execute(now).is_ok());
        host.shutdown(now, ShutdownReason::Stop);
        assert_eq!(
            host.execute(now),
            Err(ExecutionError::NotRunning(Phase::Stopped))
        );
    }

    #[test]
    fn strategies_without_on_execute_say_so() {
        let mut host = Host::new(Uuid::nil(), "t", Box::new(Recorder::default()));
        host.start(Utc::now());
        let err = host.execute(Utc::now()).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not support interval execution"),
            "{err}"
        );
    }

    #[test]
    fn order_ids_set_on_the_host_survive_a_restore_and_reach_the_fills() {
        let id: Uuid = "0123abcd-0000-4000-8000-000000000000".parse().unwrap();
        let mut first = Host::new(id, "t", Box::new(Recorder::default()));
        first.start(Utc::now());
        first.tick(&tick(10.0));
        let snapshot = first.context().broker().snapshot();

        let mut host = Host::new(id, "t", Box::new(Recorder::default()));
        host.set_order_ids(crate::OrderIds::new(9, id, "next"));
        host.restore_broker(snapshot).unwrap();
        host.record_fills();
        host.start(Utc::now());
        host.tick(&tick(11.0));
        let fills = host.take_fills();
        assert_eq!(fills.len(), 1);
        assert_eq!(fills[0].client_order_id, "e9-0123abcd-next-2");
    }
}
