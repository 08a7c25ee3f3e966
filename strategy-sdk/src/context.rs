//! The [`Context`] a strategy acts through: market data subscriptions, paper orders,
//! logging, custom metrics, and ending itself for good.
//!
//! Only the methods a strategy calls are public. Feeding prices, setting the clock,
//! building the metrics report and flattening on stop belong to whoever drives the
//! strategy: the executor runtime and the test kit do that through [`crate::Host`].

use crate::broker::{
    BrokerSnapshot, Fill, OrderError, OrderIds, PaperBroker, Position, PriceSlot, Side,
    SnapshotError,
};
use crate::modes::Bar;
use chrono::{DateTime, Utc};
use engine_protocol::StrategyMetrics;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use uuid::Uuid;

/// What a strategy sees of the world while one of its callbacks runs.
///
/// ```
/// use strategy_sdk::testkit::TestHarness;
/// use strategy_sdk::{Context, Strategy, Tick};
///
/// /// Buys 1 on the first tick, then reports how far the price moved since.
/// #[derive(Default)]
/// struct BuyOnce { entry: Option<f64> }
///
/// impl Strategy for BuyOnce {
///     fn on_start(&mut self, ctx: &mut Context) {
///         ctx.subscribe("BTC-USD");
///     }
///     fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
///         match self.entry {
///             None => {
///                 let fill = ctx.buy(&tick.token, 1.0).expect("the tick's price is known");
///                 self.entry = Some(fill.price);
///             }
///             Some(entry) => ctx.set_metric("move", tick.price - entry),
///         }
///     }
/// }
///
/// let mut h = TestHarness::started(BuyOnce::default());
/// assert!(h.ctx().subscriptions().contains("BTC-USD"));
/// h.ticks("BTC-USD", &[100.0, 104.0]);
/// assert_eq!(h.ctx().position("BTC-USD").qty, 1.0);
/// assert_eq!(h.ctx().metric("move"), Some(&4.0.into()));
/// ```
pub struct Context {
    strategy_id: Uuid,
    name: String,
    broker: PaperBroker,
    subscriptions: BTreeSet<String>,
    subscriptions_changed: bool,
    custom_metrics: Map<String, Value>,
    halt_reason: Option<String>,
    now: DateTime<Utc>,
    /// The bar whose close is the tick being handled, when driven by bars.
    bar: Option<Bar>,
    /// Every fill since the last [`Context::take_fills`], when recording (the test
    /// kit records; the runtime does not, so a long run keeps no history).
    fill_log: Option<Vec<Fill>>,
    /// Whether [`Context::set_metric`] keeps what it is given (off in runs, where
    /// nothing reports custom metrics: a strategy's loop then pays nothing for them).
    keep_custom_metrics: bool,
}

impl Context {
    pub(crate) fn new(strategy_id: Uuid, name: impl Into<String>) -> Self {
        let mut broker = PaperBroker::new();
        broker.set_order_ids(OrderIds::new(0, strategy_id, ""));
        Context {
            strategy_id,
            name: name.into(),
            broker,
            subscriptions: BTreeSet::new(),
            subscriptions_changed: false,
            custom_metrics: Map::new(),
            halt_reason: None,
            now: Utc::now(),
            bar: None,
            fill_log: None,
            keep_custom_metrics: true,
        }
    }

    /// The strategy's id (`strategy_configs.id`).
    pub fn strategy_id(&self) -> Uuid {
        self.strategy_id
    }

    /// The strategy's name (`strategy_configs.name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Time of the event being handled: a tick's own timestamp, the clock otherwise.
    /// Live, the clock is the wall clock; driven by bars (a backtest, a screener, an
    /// alert) it is the bar's time, so a strategy never reads the wall clock there.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// In a backtest, the bar whose close the current tick is (with its open, high,
    /// low and volume); `None` live, where ticks are all there is.
    pub fn bar(&self) -> Option<&Bar> {
        self.bar.as_ref()
    }

    /// Receive ticks of `token` (from `live_data:{token}`).
    pub fn subscribe(&mut self, token: &str) {
        if self.subscriptions.insert(token.to_string()) {
            self.subscriptions_changed = true;
        }
    }

    /// Stop receiving ticks of `token`.
    pub fn unsubscribe(&mut self, token: &str) {
        if self.subscriptions.remove(token) {
            self.subscriptions_changed = true;
        }
    }

    /// The tokens subscribed to.
    pub fn subscriptions(&self) -> &BTreeSet<String> {
        &self.subscriptions
    }

    /// A paper market order, filled at once at `token`'s last price.
    pub fn buy(&mut self, token: &str, qty: f64) -> Result<Fill, OrderError> {
        self.order(token, Side::Buy, qty)
    }

    /// A paper market order, filled at once at `token`'s last price.
    pub fn sell(&mut self, token: &str, qty: f64) -> Result<Fill, OrderError> {
        self.order(token, Side::Sell, qty)
    }

    fn order(&mut self, token: &str, side: Side, qty: f64) -> Result<Fill, OrderError> {
        let result = self.broker.submit(token, side, qty);
        match &result {
            Ok(fill) => {
                tracing::info!(
                    strategy = %self.name, token, side = ?fill.side, qty, price = fill.price,
                    realised_pnl = fill.realised_pnl, client_order_id = %fill.client_order_id,
                    "paper order filled"
                );
                self.record(fill);
            }
            Err(e) => tracing::warn!(strategy = %self.name, token, "paper order rejected: {e}"),
        }
        result
    }

    /// Close the position in `token`, if any.
    pub fn close_position(&mut self, token: &str) -> Result<Option<Fill>, OrderError> {
        let result = self.broker.close(token);
        if let Ok(Some(fill)) = &result {
            self.record(fill);
        }
        result
    }

    /// The position in `token` (zero when there is none).
    pub fn position(&self, token: &str) -> Position {
        self.broker.position(token)
    }

    /// The last price seen for `token`.
    pub fn last_price(&self, token: &str) -> Option<f64> {
        self.broker.last_price(token)
    }

    /// The paper broker: positions, PnL, orders count, success rate.
    pub fn broker(&self) -> &PaperBroker {
        &self.broker
    }

    /// Log a line attributed to this strategy.
    pub fn log(&self, message: &str) {
        tracing::info!(strategy = %self.name, "{message}");
    }

    /// Add or replace a custom metric, reported beside pnl and the counts. In a run
    /// (backtest, screener, alert) custom metrics are not reported, and not kept.
    #[inline(always)]
    pub fn set_metric(&mut self, key: &str, value: impl Into<Value>) {
        if !self.keep_custom_metrics {
            return;
        }
        let value = value.into();
        match self.custom_metrics.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                self.custom_metrics.insert(key.to_string(), value);
            }
        }
    }

    /// Whether [`Context::set_metric`] keeps what it is given: `false` in a run
    /// (backtest, screener, alert), where custom metrics are not reported. A strategy
    /// may skip working its metrics out then.
    #[inline]
    pub fn keeps_custom_metrics(&self) -> bool {
        self.keep_custom_metrics
    }

    /// A custom metric set with [`Context::set_metric`].
    pub fn metric(&self, key: &str) -> Option<&Value> {
        self.custom_metrics.get(key)
    }

    /// End this strategy for good (e.g. a breached loss limit): it shuts down and the
    /// engine marks it `error` with `reason` and does not restart it. The first
    /// reason given is kept.
    pub fn halt(&mut self, reason: impl Into<String>) {
        if self.halt_reason.is_none() {
            self.halt_reason = Some(reason.into());
        }
    }

    /// Why the strategy halted itself, once it did.
    pub fn halt_reason(&self) -> Option<&str> {
        self.halt_reason.as_deref()
    }

    // ---- for the Host ----

    pub(crate) fn set_now(&mut self, now: DateTime<Utc>) {
        self.now = now;
    }

    /// Replace the broker with one restored from `snapshot` (nothing changes on `Err`;
    /// the order ids stay as they were set).
    pub(crate) fn restore_broker(&mut self, snapshot: BrokerSnapshot) -> Result<(), SnapshotError> {
        let mut broker = PaperBroker::restored(snapshot)?;
        broker.set_order_ids(self.broker.order_ids().clone());
        self.broker = broker;
        Ok(())
    }

    pub(crate) fn set_order_ids(&mut self, ids: OrderIds) {
        self.broker.set_order_ids(ids);
    }

    pub(crate) fn set_bar(&mut self, bar: Option<Bar>) {
        self.bar = bar;
    }

    pub(crate) fn set_fee_bps(&mut self, fee_bps: f64) {
        self.broker.set_fee_bps(fee_bps);
    }

    pub(crate) fn mark_price(&mut self, token: &str, price: f64) {
        self.broker.mark(token, price);
    }

    pub(crate) fn price_slot(&mut self, token: &str) -> PriceSlot {
        self.broker.slot(token)
    }

    #[inline]
    pub(crate) fn mark_slot(&mut self, slot: PriceSlot, price: f64) {
        self.broker.mark_slot(slot, price);
    }

    pub(crate) fn drop_custom_metrics(&mut self) {
        self.keep_custom_metrics = false;
        self.custom_metrics.clear();
    }

    pub(crate) fn take_subscriptions_changed(&mut self) -> bool {
        std::mem::take(&mut self.subscriptions_changed)
    }

    /// Close every position (a stop with `mode: flatten`).
    pub(crate) fn flatten(&mut self) -> (Vec<Fill>, Vec<OrderError>) {
        let (fills, errors) = self.broker.close_all();
        for fill in &fills {
            self.record(fill);
        }
        (fills, errors)
    }

    /// The report published on `strategy:metrics:{id}`.
    pub(crate) fn metrics(&self) -> StrategyMetrics {
        StrategyMetrics {
            pnl: self.broker.run_pnl(),
            pnl_total: Some(self.broker.pnl()),
            positions_count: self.broker.positions_count() as i64,
            orders_count: self.broker.orders_count() as i64,
            success_rate: self.broker.success_rate(),
            extra: self.custom_metrics.clone(),
        }
    }

    pub(crate) fn record_fills(&mut self) {
        self.fill_log.get_or_insert_with(Vec::new);
    }

    pub(crate) fn take_fills(&mut self) -> Vec<Fill> {
        self.fill_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn record(&mut self, fill: &Fill) {
        if let Some(log) = &mut self.fill_log {
            log.push(fill.clone());
        }
    }
}
