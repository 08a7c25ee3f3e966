//! The [`Context`] a strategy acts through: market data subscriptions, paper orders,
//! logging, custom metrics, and ending itself for good.

use crate::broker::{Fill, OrderError, PaperBroker, Position, Side};
use chrono::{DateTime, Utc};
use engine_protocol::StrategyMetrics;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use uuid::Uuid;

pub struct Context {
    strategy_id: Uuid,
    name: String,
    broker: PaperBroker,
    subscriptions: BTreeSet<String>,
    subscriptions_changed: bool,
    custom_metrics: Map<String, Value>,
    halt_reason: Option<String>,
    now: DateTime<Utc>,
}

impl Context {
    pub fn new(strategy_id: Uuid, name: impl Into<String>) -> Self {
        Context {
            strategy_id,
            name: name.into(),
            broker: PaperBroker::new(),
            subscriptions: BTreeSet::new(),
            subscriptions_changed: false,
            custom_metrics: Map::new(),
            halt_reason: None,
            now: Utc::now(),
        }
    }

    pub fn strategy_id(&self) -> Uuid {
        self.strategy_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Time of the event being handled.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Receive ticks of `token` (from `live_data:{token}`).
    pub fn subscribe(&mut self, token: &str) {
        if self.subscriptions.insert(token.to_string()) {
            self.subscriptions_changed = true;
        }
    }

    pub fn unsubscribe(&mut self, token: &str) {
        if self.subscriptions.remove(token) {
            self.subscriptions_changed = true;
        }
    }

    pub fn subscriptions(&self) -> &BTreeSet<String> {
        &self.subscriptions
    }

    pub fn buy(&mut self, token: &str, qty: f64) -> Result<Fill, OrderError> {
        self.order(token, Side::Buy, qty)
    }

    pub fn sell(&mut self, token: &str, qty: f64) -> Result<Fill, OrderError> {
        self.order(token, Side::Sell, qty)
    }

    fn order(&mut self, token: &str, side: Side, qty: f64) -> Result<Fill, OrderError> {
        let result = self.broker.submit(token, side, qty);
        match &result {
            Ok(fill) => tracing::info!(
                strategy = %self.name, token, side = ?fill.side, qty, price = fill.price,
                realised_pnl = fill.realised_pnl, "paper order filled"
            ),
            Err(e) => tracing::warn!(strategy = %self.name, token, "paper order rejected: {e}"),
        }
        result
    }

    /// Close the position in `token`, if any.
    pub fn close_position(&mut self, token: &str) -> Result<Option<Fill>, OrderError> {
        self.broker.close(token)
    }

    pub fn position(&self, token: &str) -> Position {
        self.broker.position(token)
    }

    pub fn last_price(&self, token: &str) -> Option<f64> {
        self.broker.last_price(token)
    }

    pub fn broker(&self) -> &PaperBroker {
        &self.broker
    }

    /// Log a line attributed to this strategy.
    pub fn log(&self, message: &str) {
        tracing::info!(strategy = %self.name, "{message}");
    }

    /// Add or replace a custom metric, reported beside pnl and the counts.
    pub fn set_metric(&mut self, key: &str, value: impl Into<Value>) {
        self.custom_metrics.insert(key.to_string(), value.into());
    }

    /// End this strategy for good (e.g. a breached loss limit): it shuts down and the
    /// engine marks it `error` with `reason` and does not restart it.
    pub fn halt(&mut self, reason: impl Into<String>) {
        if self.halt_reason.is_none() {
            self.halt_reason = Some(reason.into());
        }
    }

    pub fn halt_reason(&self) -> Option<&str> {
        self.halt_reason.as_deref()
    }

    /// The metrics reported on `strategy:metrics:{id}`.
    pub fn metrics(&self) -> StrategyMetrics {
        StrategyMetrics {
            pnl: self.broker.pnl(),
            positions_count: self.broker.positions_count() as i64,
            orders_count: self.broker.orders_count() as i64,
            success_rate: self.broker.success_rate(),
            extra: self.custom_metrics.clone(),
        }
    }

    // ---- for the runtime ----

    /// Set the time of the event about to be handled.
    pub fn set_now(&mut self, now: DateTime<Utc>) {
        self.now = now;
    }

    /// Feed a tick's price to the broker before the strategy sees it.
    pub fn mark_price(&mut self, token: &str, price: f64) {
        self.broker.mark(token, price);
    }

    /// Mutable broker, for the runtime's `flatten` on stop.
    pub fn broker_mut(&mut self) -> &mut PaperBroker {
        &mut self.broker
    }

    /// Whether subscriptions changed since the last call (and reset the flag).
    pub fn take_subscriptions_changed(&mut self) -> bool {
        std::mem::take(&mut self.subscriptions_changed)
    }
}
