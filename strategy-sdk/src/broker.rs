//! A paper broker: fills market orders at the last known price and keeps positions,
//! realised and unrealised PnL, the orders count and the success rate (the share of
//! closed trades that made money). A fee in basis points of each fill's value can
//! be charged (backtests' `fee_bps`); live trading charges none.
//!
//! A strategy reads it through [`crate::Context::broker`] and trades through
//! [`crate::Context::buy`] and [`crate::Context::sell`]; prices reach it from the
//! ticks before the strategy sees them.
//!
//! Every order gets a client order id ([`OrderIds`]): `e{epoch}-{owner}-{session}-{seq}`,
//! which carries the lease epoch its executor traded under (CONTRACT.md §7), so an
//! order a stale owner placed is recognisable wherever it is recorded.
//!
//! What it keeps survives a restart of the executor: [`PaperBroker::snapshot`] is
//! what the executor reports to the manager, and [`crate::Host::restore_broker`]
//! gives it back to the next executor before `on_start`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Which way an order goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

/// An open position: signed quantity (negative = short) at an average entry price.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Position {
    pub qty: f64,
    pub avg_price: f64,
}

/// A filled order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fill {
    /// The order's client order id ([`OrderIds`]): unique per strategy, carrying
    /// the lease epoch it was placed under.
    pub client_order_id: String,
    pub token: String,
    pub side: Side,
    pub qty: f64,
    pub price: f64,
    /// Profit or loss this fill realised by reducing a position (before fees).
    pub realised_pnl: f64,
    /// The fee charged on this fill: `qty × price × fee_bps / 10 000` (0 live).
    pub fee: f64,
}

/// Why an order was rejected (a rejected order changes nothing and is not counted).
#[derive(Debug, Clone, PartialEq)]
pub enum OrderError {
    /// No tick has been seen for the token yet, so there is no price to fill at.
    NoPrice { token: String },
    /// Quantity must be a finite number above zero.
    BadQuantity { qty: f64 },
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderError::NoPrice { token } => {
                write!(f, "no price yet for '{token}'; wait for its first tick")
            }
            OrderError::BadQuantity { qty } => {
                write!(f, "order quantity {qty} must be a finite number above zero")
            }
        }
    }
}

impl std::error::Error for OrderError {}

pub(crate) const EPSILON: f64 = 1e-12;

/// How the broker names its orders: `e{epoch}-{owner}-{session}-{seq}` (or
/// `e{epoch}-{owner}-{seq}` without a session).
///
/// - `epoch`: the lease epoch the executor trades under (`strategy_configs.lease_epoch`,
///   or the run's `strategy_runs.lease_epoch`): an order of a stale owner has an older
///   one.
/// - `owner`: the strategy id's first 8 hex digits.
/// - `session`: what tells two executors of one strategy apart: live, the executor's
///   start time (milliseconds since 1970, base 36); in a run, `r` and the run id's
///   first 12 hex digits, `.` and the symbol's position in the run.
/// - `seq`: the broker's order count after the fill (it continues from the broker
///   state a previous executor left).
///
/// Unique per strategy: within a session by `seq`, across sessions by the session.
/// No part but the epoch can hold a `-`, so [`OrderIds::epoch_of`] reads it back.
///
/// ```
/// use strategy_sdk::broker::OrderIds;
/// use uuid::Uuid;
///
/// let id: Uuid = "1a2b3c4d-0000-4000-8000-000000000000".parse().unwrap();
/// let ids = OrderIds::new(7, id, "mif2k3xq");
/// assert_eq!(ids.id(42), "e7-1a2b3c4d-mif2k3xq-42");
/// assert_eq!(OrderIds::epoch_of("e7-1a2b3c4d-mif2k3xq-42"), Some(7));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderIds {
    epoch: i64,
    /// Everything before the sequence number, its last `-` included.
    prefix: String,
}

impl OrderIds {
    /// Ids under `epoch` for strategy `strategy_id`, in `session` (a `-` in it is
    /// replaced by `.`; an empty session leaves that part out).
    pub fn new(epoch: i64, strategy_id: uuid::Uuid, session: &str) -> Self {
        let owner = &strategy_id.simple().to_string()[..8];
        let session = session.replace('-', ".");
        let prefix = if session.is_empty() {
            format!("e{epoch}-{owner}-")
        } else {
            format!("e{epoch}-{owner}-{session}-")
        };
        OrderIds { epoch, prefix }
    }

    /// A live executor's session: its start time in milliseconds since 1970, base 36.
    pub fn live_session(started: chrono::DateTime<chrono::Utc>) -> String {
        base36(u64::try_from(started.timestamp_millis()).unwrap_or(0))
    }

    /// A run's session for the symbol at `position`: `r{12 hex of the run id}.{position}`.
    pub fn run_session(run_id: uuid::Uuid, position: usize) -> String {
        format!("r{}.{position}", &run_id.simple().to_string()[..12])
    }

    /// The epoch the ids carry.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The id of the order numbered `seq`.
    pub fn id(&self, seq: u64) -> String {
        let mut id = String::with_capacity(self.prefix.len() + 8);
        id.push_str(&self.prefix);
        id.push_str(&seq.to_string());
        id
    }

    /// The epoch a client order id carries (`None` if it is not one of these ids).
    pub fn epoch_of(client_order_id: &str) -> Option<i64> {
        let rest = client_order_id.strip_prefix('e')?;
        let (epoch, _) = rest.split_once('-')?;
        epoch.parse().ok()
    }
}

impl Default for OrderIds {
    /// Epoch 0, the nil strategy, no session (the test kit's, until it is told).
    fn default() -> Self {
        OrderIds::new(0, uuid::Uuid::nil(), "")
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// A token interned by the broker: where its last price is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PriceSlot(usize);

/// An interned token's last price (NaN before its first) and position.
#[derive(Debug, Clone)]
struct Mark {
    token: String,
    price: f64,
    position: Position,
}

/// The version of [`BrokerSnapshot`] this SDK writes and reads.
pub const BROKER_SNAPSHOT_VERSION: u32 = 1;

/// What survives a restart of the executor: the open positions, the realised PnL and
/// the counts, and the last price of each open position (so that unrealised PnL is
/// right before the first tick of the next run). JSON, kept by the manager in
/// `strategy_configs.broker_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerSnapshot {
    pub version: u32,
    pub positions: BTreeMap<String, Position>,
    /// The last price of each token with an open position, when one was known.
    #[serde(default)]
    pub marks: BTreeMap<String, f64>,
    pub realised_pnl: f64,
    pub orders_count: u64,
    pub closed_trades: u64,
    pub winning_trades: u64,
}

/// Why a snapshot cannot be restored (nothing of it is then used).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "broker snapshot version {found} is not supported (this SDK reads version {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("broker snapshot field {field} is {value}; expected a finite number")]
    NotFinite { field: String, value: f64 },
    #[error(
        "broker snapshot position in '{token}' needs a non-zero qty and an avg_price above zero"
    )]
    BadPosition { token: String },
    #[error("broker snapshot mark of '{token}' is {price}; expected a price above zero")]
    BadMark { token: String, price: f64 },
    #[error("broker snapshot counts {winning} winning of {closed} closed trades")]
    BadCounts { winning: u64, closed: u64 },
}

impl BrokerSnapshot {
    /// Check that every number can be what a broker holds.
    pub fn check(&self) -> Result<(), SnapshotError> {
        if self.version != BROKER_SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: self.version,
                supported: BROKER_SNAPSHOT_VERSION,
            });
        }
        if !self.realised_pnl.is_finite() {
            return Err(SnapshotError::NotFinite {
                field: "realised_pnl".into(),
                value: self.realised_pnl,
            });
        }
        for (token, pos) in &self.positions {
            let qty_ok = pos.qty.is_finite() && pos.qty.abs() >= EPSILON;
            if !(qty_ok && pos.avg_price.is_finite() && pos.avg_price > 0.0) {
                return Err(SnapshotError::BadPosition {
                    token: token.clone(),
                });
            }
        }
        if let Some((token, price)) = self
            .marks
            .iter()
            .find(|(_, p)| !(p.is_finite() && **p > 0.0))
        {
            return Err(SnapshotError::BadMark {
                token: token.clone(),
                price: *price,
            });
        }
        if self.winning_trades > self.closed_trades {
            return Err(SnapshotError::BadCounts {
                winning: self.winning_trades,
                closed: self.closed_trades,
            });
        }
        Ok(())
    }
}

/// Positions and PnL of one strategy's paper orders.
///
/// ```
/// use strategy_sdk::testkit::TestHarness;
/// use strategy_sdk::{Context, Strategy, Tick};
///
/// /// Buys 2 at the first tick and sells 1 at the third.
/// struct TwoSteps { ticks: u32 }
///
/// impl Strategy for TwoSteps {
///     fn on_start(&mut self, ctx: &mut Context) {
///         ctx.subscribe("ETH-USD");
///     }
///     fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
///         self.ticks += 1;
///         match self.ticks {
///             1 => { ctx.buy(&tick.token, 2.0).unwrap(); }
///             3 => { ctx.sell(&tick.token, 1.0).unwrap(); }
///             _ => {}
///         }
///     }
/// }
///
/// let mut h = TestHarness::started(TwoSteps { ticks: 0 });
/// h.ticks("ETH-USD", &[100.0, 105.0, 110.0]);
/// let broker = h.ctx().broker();
/// assert_eq!(broker.orders_count(), 2);
/// assert_eq!(broker.position("ETH-USD").qty, 1.0);
/// assert_eq!(broker.realised_pnl(), 10.0); // 1 bought at 100, sold at 110
/// assert_eq!(broker.unrealised_pnl(), 10.0); // 1 still held, worth 110
/// assert_eq!(broker.pnl(), 20.0);
/// assert_eq!(broker.success_rate(), 1.0);
/// ```
#[derive(Debug, Clone)]
pub struct PaperBroker {
    positions: BTreeMap<String, Position>,
    /// Each token seen, interned: its [`PriceSlot`] indexes `marks`.
    slots: BTreeMap<String, PriceSlot>,
    /// Each interned token's last price and position (a copy of `positions`), so
    /// that valuing the book ([`PaperBroker::pnl`]) touches no string.
    marks: Vec<Mark>,
    realised_pnl: f64,
    orders_count: u64,
    closed_trades: u64,
    winning_trades: u64,
    /// Prices restored from a snapshot: they value open positions until a tick of
    /// this run brings a price, and never fill an order.
    restored_marks: BTreeMap<String, f64>,
    /// [`PaperBroker::pnl`] when this run began (0, or the restored PnL).
    pnl_at_start: f64,
    /// Fills so far in this run: a change means the snapshot changed.
    fills_this_run: u64,
    fee_bps: f64,
    fees: f64,
    /// How its orders are named.
    order_ids: OrderIds,
}

impl PaperBroker {
    pub(crate) fn new() -> Self {
        PaperBroker {
            positions: BTreeMap::new(),
            slots: BTreeMap::new(),
            marks: Vec::new(),
            realised_pnl: 0.0,
            orders_count: 0,
            closed_trades: 0,
            winning_trades: 0,
            restored_marks: BTreeMap::new(),
            pnl_at_start: 0.0,
            fills_this_run: 0,
            fee_bps: 0.0,
            fees: 0.0,
            order_ids: OrderIds::default(),
        }
    }

    /// Name later orders with `ids` (kept through a restore).
    pub(crate) fn set_order_ids(&mut self, ids: OrderIds) {
        self.order_ids = ids;
    }

    /// How its orders are named.
    pub fn order_ids(&self) -> &OrderIds {
        &self.order_ids
    }

    /// Charge `fee_bps` basis points of the value of every later fill (0, the
    /// default, charges nothing; a negative or non-finite value counts as 0).
    pub(crate) fn set_fee_bps(&mut self, fee_bps: f64) {
        self.fee_bps = if fee_bps.is_finite() && fee_bps > 0.0 {
            fee_bps
        } else {
            0.0
        };
    }

    /// A broker holding what `snapshot` says, as a new run begins.
    pub(crate) fn restored(snapshot: BrokerSnapshot) -> Result<Self, SnapshotError> {
        snapshot.check()?;
        let mut broker = PaperBroker {
            positions: snapshot.positions,
            realised_pnl: snapshot.realised_pnl,
            orders_count: snapshot.orders_count,
            closed_trades: snapshot.closed_trades,
            winning_trades: snapshot.winning_trades,
            restored_marks: snapshot.marks,
            ..PaperBroker::new()
        };
        let held: Vec<(String, Position)> = broker
            .positions
            .iter()
            .map(|(token, pos)| (token.clone(), *pos))
            .collect();
        for (token, position) in held {
            let slot = broker.slot(&token);
            broker.marks[slot.0].position = position;
        }
        broker.pnl_at_start = broker.pnl();
        Ok(broker)
    }

    /// What survives a restart (see [`BrokerSnapshot`]).
    pub fn snapshot(&self) -> BrokerSnapshot {
        let marks = self
            .positions
            .keys()
            .filter_map(|token| Some((token.clone(), self.mark_of(token)?)))
            .collect();
        BrokerSnapshot {
            version: BROKER_SNAPSHOT_VERSION,
            positions: self.positions.clone(),
            marks,
            realised_pnl: self.realised_pnl,
            orders_count: self.orders_count,
            closed_trades: self.closed_trades,
            winning_trades: self.winning_trades,
        }
    }

    /// Orders filled in this run (a change means [`PaperBroker::snapshot`] changed
    /// more than its marks).
    pub fn fills_this_run(&self) -> u64 {
        self.fills_this_run
    }

    /// The price open positions are valued at: this run's last price, else the one
    /// restored with the snapshot.
    fn mark_of(&self, token: &str) -> Option<f64> {
        self.last_price(token)
            .or_else(|| self.restored_marks.get(token).copied())
    }

    /// Record the latest price of `token` (called for every tick).
    pub(crate) fn mark(&mut self, token: &str, price: f64) {
        if price.is_finite() && price > 0.0 {
            let slot = self.slot(token);
            self.marks[slot.0].price = price;
        }
    }

    /// The slot of `token`'s price, interning it on first sight: a driver that
    /// feeds one token many times ([`crate::host::BarFeed`]) marks by slot, without a
    /// lookup per price.
    pub(crate) fn slot(&mut self, token: &str) -> PriceSlot {
        if let Some(slot) = self.slots.get(token) {
            return *slot;
        }
        let slot = PriceSlot(self.marks.len());
        self.marks.push(Mark {
            token: token.to_string(),
            price: f64::NAN,
            position: Position::default(),
        });
        self.slots.insert(token.to_string(), slot);
        slot
    }

    /// [`PaperBroker::mark`] by slot: an index, no lookup.
    #[inline]
    pub(crate) fn mark_slot(&mut self, slot: PriceSlot, price: f64) {
        if price.is_finite() && price > 0.0 {
            self.marks[slot.0].price = price;
        }
    }

    /// The last price seen for `token`.
    pub fn last_price(&self, token: &str) -> Option<f64> {
        let slot = self.slots.get(token)?;
        let price = self.marks[slot.0].price;
        (!price.is_nan()).then_some(price)
    }

    /// Fill a market order at the last price.
    pub(crate) fn submit(&mut self, token: &str, side: Side, qty: f64) -> Result<Fill, OrderError> {
        if !qty.is_finite() || qty <= 0.0 {
            return Err(OrderError::BadQuantity { qty });
        }
        let price = self.last_price(token).ok_or_else(|| OrderError::NoPrice {
            token: token.to_string(),
        })?;
        self.orders_count += 1;
        self.fills_this_run += 1;
        let delta = match side {
            Side::Buy => qty,
            Side::Sell => -qty,
        };
        if !self.positions.contains_key(token) {
            self.positions
                .insert(token.to_string(), Position::default());
        }
        let pos = self.positions.get_mut(token).expect("inserted above");
        let mut realised = 0.0;
        if pos.qty.abs() < EPSILON || pos.qty.signum() == delta.signum() {
            // Opening or adding: a new weighted average entry price.
            let new_qty = pos.qty + delta;
            pos.avg_price = (pos.qty * pos.avg_price + delta * price) / new_qty;
            pos.qty = new_qty;
        } else {
            // Reducing, closing or flipping.
            let closed = delta.abs().min(pos.qty.abs());
            realised = closed * (price - pos.avg_price) * pos.qty.signum();
            let remainder = pos.qty + delta;
            if remainder.abs() < EPSILON {
                pos.qty = 0.0;
                pos.avg_price = 0.0;
            } else if remainder.signum() == pos.qty.signum() {
                pos.qty = remainder;
            } else {
                pos.qty = remainder;
                pos.avg_price = price;
            }
            self.realised_pnl += realised;
            self.closed_trades += 1;
            if realised > 0.0 {
                self.winning_trades += 1;
            }
        }
        let position = *pos;
        if pos.qty.abs() < EPSILON {
            self.positions.remove(token);
        }
        let slot = self.slot(token);
        self.marks[slot.0].position = position;
        let fee = qty * price * self.fee_bps / 10_000.0;
        self.fees += fee;
        Ok(Fill {
            client_order_id: self.order_ids.id(self.orders_count),
            token: token.to_string(),
            side,
            qty,
            price,
            realised_pnl: realised,
            fee,
        })
    }

    /// Close the position in `token`, if any, at the last price.
    pub(crate) fn close(&mut self, token: &str) -> Result<Option<Fill>, OrderError> {
        let Some(pos) = self.positions.get(token).copied() else {
            return Ok(None);
        };
        let side = if pos.qty > 0.0 { Side::Sell } else { Side::Buy };
        self.submit(token, side, pos.qty.abs()).map(Some)
    }

    /// Close every open position; returns the fills and the tokens it could not close.
    pub(crate) fn close_all(&mut self) -> (Vec<Fill>, Vec<OrderError>) {
        let tokens: Vec<String> = self.positions.keys().cloned().collect();
        let mut fills = Vec::new();
        let mut errors = Vec::new();
        for token in tokens {
            match self.close(&token) {
                Ok(Some(fill)) => fills.push(fill),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        (fills, errors)
    }

    /// The position in `token` (zero when there is none).
    pub fn position(&self, token: &str) -> Position {
        self.positions.get(token).copied().unwrap_or_default()
    }

    /// The open positions, by token.
    pub fn positions(&self) -> &BTreeMap<String, Position> {
        &self.positions
    }

    /// How many tokens have an open position.
    pub fn positions_count(&self) -> usize {
        self.positions.len()
    }

    /// Orders filled so far.
    pub fn orders_count(&self) -> u64 {
        self.orders_count
    }

    /// Profit or loss of the trades closed so far (restored ones included).
    pub fn realised_pnl(&self) -> f64 {
        self.realised_pnl
    }

    /// Mark-to-market PnL of the open positions at the last prices (a restored
    /// position is valued at its restored price until this run sees a tick of it).
    pub fn unrealised_pnl(&self) -> f64 {
        self.marks
            .iter()
            .filter(|mark| mark.position.qty != 0.0)
            .map(|mark| {
                let pos = mark.position;
                let last = if mark.price.is_nan() {
                    self.mark_of(&mark.token).unwrap_or(pos.avg_price)
                } else {
                    mark.price
                };
                pos.qty * (last - pos.avg_price)
            })
            .sum()
    }

    /// Fees charged so far (always 0 live).
    pub fn fees(&self) -> f64 {
        self.fees
    }

    /// Realised plus unrealised, less the fees, since the broker's state was last
    /// reset: restored positions and realised PnL count, so this carries on across
    /// restarts. It is reported as `pnl_total`.
    pub fn pnl(&self) -> f64 {
        self.realised_pnl + self.unrealised_pnl() - self.fees
    }

    /// What this run made or lost: [`PaperBroker::pnl`] minus its value when the run
    /// began (equal to it for a broker that was not restored). Reported as `pnl`.
    pub fn run_pnl(&self) -> f64 {
        self.pnl() - self.pnl_at_start
    }

    /// Fills that reduced, closed or flipped a position.
    pub fn closed_trades(&self) -> u64 {
        self.closed_trades
    }

    /// Share of closed trades that made money, 0 to 1 (0 before any trade closed).
    pub fn success_rate(&self) -> f64 {
        if self.closed_trades == 0 {
            0.0
        } else {
            self.winning_trades as f64 / self.closed_trades as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: f64 = 1e-9;

    #[track_caller]
    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < TOL,
            "expected {expected}, got {actual}"
        );
    }

    fn broker_with(prices: &[(&str, f64)]) -> PaperBroker {
        let mut b = PaperBroker::new();
        for (token, price) in prices {
            b.mark(token, *price);
        }
        b
    }

    #[test]
    fn open_long_fills_at_last_price() {
        let mut b = broker_with(&[("BTC", 100.0)]);
        let fill = b.submit("BTC", Side::Buy, 2.0).unwrap();
        assert_eq!(fill.token, "BTC");
        assert_eq!(fill.side, Side::Buy);
        assert_close(fill.qty, 2.0);
        assert_close(fill.price, 100.0);
        assert_close(fill.realised_pnl, 0.0);
        let pos = b.position("BTC");
        assert_close(pos.qty, 2.0);
        assert_close(pos.avg_price, 100.0);
        assert_eq!(b.positions_count(), 1);
        assert_eq!(b.orders_count(), 1);
        assert_eq!(b.closed_trades(), 0);
        assert_close(b.success_rate(), 0.0);
        assert_close(b.pnl(), 0.0);
    }

    #[test]
    fn adding_averages_the_entry_price() {
        let mut b = broker_with(&[("BTC", 100.0)]);
        b.submit("BTC", Side::Buy, 2.0).unwrap();
        b.mark("BTC", 110.0);
        let fill = b.submit("BTC", Side::Buy, 1.0).unwrap();
        assert_close(fill.realised_pnl, 0.0);
        let pos = b.position("BTC");
        assert_close(pos.qty, 3.0);
        assert_close(pos.avg_price, 310.0 / 3.0);
        // 3 × (110 − 103.33…) = 20
        assert_close(b.unrealised_pnl(), 20.0);
        assert_close(b.realised_pnl(), 0.0);
        assert_eq!(b.closed_trades(), 0, "adding is not a closed trade");
    }

    #[test]
    fn partial_then_full_close_realise_pnl() {
        let mut b = broker_with(&[("BTC", 100.0)]);
        b.submit("BTC", Side::Buy, 2.0).unwrap();
        b.mark("BTC", 110.0);
        b.submit("BTC", Side::Buy, 1.0).unwrap();
        let avg = 310.0 / 3.0;

        // Partial close: 1 of 3 at 120.
        b.mark("BTC", 120.0);
        let fill = b.submit("BTC", Side::Sell, 1.0).unwrap();
        assert_close(fill.realised_pnl, 120.0 - avg);
        let pos = b.position("BTC");
        assert_close(pos.qty, 2.0);
        assert_close(pos.avg_price, avg);
        assert_close(b.realised_pnl(), 120.0 - avg);
        assert_close(b.unrealised_pnl(), 2.0 * (120.0 - avg));
        assert_eq!(b.closed_trades(), 1);
        assert_close(b.success_rate(), 1.0);

        // Full close of the remaining 2 at 90: a loss.
        b.mark("BTC", 90.0);
        let fill = b.submit("BTC", Side::Sell, 2.0).unwrap();
        assert_close(fill.realised_pnl, 2.0 * (90.0 - avg));
        assert_eq!(b.position("BTC"), Position::default());
        assert_eq!(b.positions_count(), 0);
        assert!(b.positions().is_empty());
        // 16.67 − 26.67 = −10 in all: 3 bought for 310, sold for 120 + 180 = 300.
        assert_close(b.realised_pnl(), -10.0);
        assert_close(b.unrealised_pnl(), 0.0);
        assert_close(b.pnl(), -10.0);
        assert_eq!(b.orders_count(), 4);
        assert_eq!(b.closed_trades(), 2);
        assert_close(b.success_rate(), 0.5);
    }

    #[test]
    fn flip_long_to_short_realises_the_long_and_opens_at_the_fill_price() {
        let mut b = broker_with(&[("ETH", 100.0)]);
        b.submit("ETH", Side::Buy, 1.0).unwrap();
        b.mark("ETH", 105.0);
        let fill = b.submit("ETH", Side::Sell, 3.0).unwrap();
        assert_close(fill.qty, 3.0);
        assert_close(fill.realised_pnl, 5.0);
        let pos = b.position("ETH");
        assert_close(pos.qty, -2.0);
        assert_close(pos.avg_price, 105.0);
        assert_close(b.realised_pnl(), 5.0);
        assert_close(b.unrealised_pnl(), 0.0);
        assert_eq!(b.closed_trades(), 1);
        assert_close(b.success_rate(), 1.0);

        // And back: short 2 at 105, buy 3 at 100 → +10 realised, long 1 at 100.
        b.mark("ETH", 100.0);
        let fill = b.submit("ETH", Side::Buy, 3.0).unwrap();
        assert_close(fill.realised_pnl, 10.0);
        let pos = b.position("ETH");
        assert_close(pos.qty, 1.0);
        assert_close(pos.avg_price, 100.0);
        assert_close(b.realised_pnl(), 15.0);
        assert_eq!(b.closed_trades(), 2);
    }

    #[test]
    fn short_positions_gain_when_the_price_falls() {
        let mut b = broker_with(&[("SOL", 50.0)]);
        b.submit("SOL", Side::Sell, 2.0).unwrap();
        b.mark("SOL", 40.0);
        b.submit("SOL", Side::Sell, 2.0).unwrap();
        let pos = b.position("SOL");
        assert_close(pos.qty, -4.0);
        assert_close(pos.avg_price, 45.0);
        // −4 × (40 − 45) = +20
        assert_close(b.unrealised_pnl(), 20.0);

        let fill = b.submit("SOL", Side::Buy, 1.0).unwrap();
        assert_close(fill.realised_pnl, 5.0);
        assert_close(b.position("SOL").qty, -3.0);
        assert_close(b.position("SOL").avg_price, 45.0);

        b.mark("SOL", 60.0);
        // −3 × (60 − 45) = −45
        assert_close(b.unrealised_pnl(), -45.0);
        assert_close(b.pnl(), 5.0 - 45.0);
        let fill = b.close("SOL").unwrap().unwrap();
        assert_eq!(fill.side, Side::Buy);
        assert_close(fill.qty, 3.0);
        assert_close(fill.realised_pnl, -45.0);
        assert_close(b.realised_pnl(), -40.0);
        assert_eq!(b.positions_count(), 0);
        assert_eq!(b.closed_trades(), 2);
        assert_close(b.success_rate(), 0.5);
    }

    #[test]
    fn unrealised_pnl_uses_each_tokens_last_price() {
        let mut b = broker_with(&[("BTC", 100.0), ("ETH", 10.0)]);
        b.submit("BTC", Side::Buy, 1.5).unwrap();
        b.submit("ETH", Side::Sell, 4.0).unwrap();
        b.mark("BTC", 102.0);
        b.mark("ETH", 9.5);
        // 1.5 × 2 + (−4) × (−0.5) = 3 + 2
        assert_close(b.unrealised_pnl(), 5.0);
        assert_close(b.pnl(), 5.0);
        assert_eq!(b.positions_count(), 2);
        // A third token's price changes nothing.
        b.mark("SOL", 1.0);
        assert_close(b.unrealised_pnl(), 5.0);
    }

    #[test]
    fn invalid_marks_are_ignored() {
        let mut b = broker_with(&[("BTC", 100.0)]);
        b.mark("BTC", 0.0);
        b.mark("BTC", -5.0);
        b.mark("BTC", f64::NAN);
        b.mark("BTC", f64::INFINITY);
        assert_eq!(b.last_price("BTC"), Some(100.0));
        b.mark("ETH", f64::NAN);
        assert_eq!(b.last_price("ETH"), None);
    }

    #[test]
    fn break_even_close_is_a_closed_trade_but_not_a_win() {
        let mut b = broker_with(&[("BTC", 100.0)]);
        b.submit("BTC", Side::Buy, 1.0).unwrap();
        b.submit("BTC", Side::Sell, 1.0).unwrap();
        assert_eq!(b.closed_trades(), 1);
        assert_close(b.success_rate(), 0.0);
        assert_close(b.realised_pnl(), 0.0);
    }

    #[test]
    fn success_rate_is_winning_over_closed_trades() {
        let mut b = broker_with(&[("BTC", 100.0)]);
        // Three round trips: win, loss, win.
        for (entry, exit) in [(100.0, 110.0), (110.0, 105.0), (105.0, 106.0)] {
            b.mark("BTC", entry);
            b.submit("BTC", Side::Buy, 1.0).unwrap();
            b.mark("BTC", exit);
            b.submit("BTC", Side::Sell, 1.0).unwrap();
        }
        assert_eq!(b.orders_count(), 6);
        assert_eq!(b.closed_trades(), 3);
        assert_close(b.success_rate(), 2.0 / 3.0);
        assert_close(b.realised_pnl(), 10.0 - 5.0 + 1.0);
    }

    #[test]
    fn close_all_flattens_every_position() {
        let mut b = broker_with(&[("BTC", 100.0), ("ETH", 10.0)]);
        b.submit("BTC", Side::Buy, 2.0).unwrap();
        b.submit("ETH", Side::Sell, 3.0).unwrap();
        b.mark("BTC", 101.0);
        b.mark("ETH", 11.0);
        let (fills, errors) = b.close_all();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(fills.len(), 2);
        let btc = fills.iter().find(|f| f.token == "BTC").unwrap();
        assert_eq!(btc.side, Side::Sell);
        assert_close(btc.qty, 2.0);
        assert_close(btc.realised_pnl, 2.0);
        let eth = fills.iter().find(|f| f.token == "ETH").unwrap();
        assert_eq!(eth.side, Side::Buy);
        assert_close(eth.qty, 3.0);
        assert_close(eth.realised_pnl, -3.0);
        assert_eq!(b.positions_count(), 0);
        assert_close(b.realised_pnl(), -1.0);
        assert_close(b.unrealised_pnl(), 0.0);
        assert_eq!(b.orders_count(), 4);
        assert_eq!(b.closed_trades(), 2);
        assert_close(b.success_rate(), 0.5);

        // Nothing left: a no-op that places no order.
        let (fills, errors) = b.close_all();
        assert!(fills.is_empty() && errors.is_empty());
        assert_eq!(b.close("BTC"), Ok(None));
        assert_eq!(b.orders_count(), 4);
    }

    #[test]
    fn rejected_orders_are_not_counted() {
        let mut b = PaperBroker::new();
        assert_eq!(
            b.submit("BTC", Side::Buy, 1.0),
            Err(OrderError::NoPrice {
                token: "BTC".into()
            })
        );
        b.mark("BTC", 100.0);
        for qty in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = b.submit("BTC", Side::Sell, qty).unwrap_err();
            assert!(
                matches!(err, OrderError::BadQuantity { .. }),
                "qty {qty}: {err:?}"
            );
        }
        // A bad quantity is rejected even before the price is looked up.
        assert!(matches!(
            b.submit("ETH", Side::Buy, 0.0),
            Err(OrderError::BadQuantity { .. })
        ));
        assert_eq!(b.orders_count(), 0);
        assert_eq!(b.positions_count(), 0);
        assert_eq!(b.closed_trades(), 0);
        assert_close(b.pnl(), 0.0);
    }

    #[test]
    fn order_errors_say_what_to_do() {
        let e = OrderError::NoPrice {
            token: "BTC".into(),
        };
        assert_eq!(
            e.to_string(),
            "no price yet for 'BTC'; wait for its first tick"
        );
        let e = OrderError::BadQuantity { qty: -1.0 };
        assert_eq!(
            e.to_string(),
            "order quantity -1 must be a finite number above zero"
        );
    }

    #[test]
    fn fees_are_charged_on_every_fill_and_only_when_set() {
        let mut b = broker_with(&[("BTC", 100.0)]);
        assert_close(b.submit("BTC", Side::Buy, 1.0).unwrap().fee, 0.0);
        b.set_fee_bps(10.0);
        // 10 bps of 2 × 100 = 0.2
        let fill = b.submit("BTC", Side::Buy, 2.0).unwrap();
        assert_close(fill.fee, 0.2);
        b.mark("BTC", 110.0);
        // Selling 3 at 110: 10 bps of 330 = 0.33; realised 3 × 10 = 30 before fees.
        let fill = b.close("BTC").unwrap().unwrap();
        assert_close(fill.fee, 0.33);
        assert_close(fill.realised_pnl, 30.0);
        assert_close(b.fees(), 0.53);
        assert_close(b.pnl(), 30.0 - 0.53);
        b.set_fee_bps(-1.0);
        assert_close(b.submit("BTC", Side::Buy, 1.0).unwrap().fee, 0.0);
    }

    #[test]
    fn fractional_quantities_close_to_exactly_flat() {
        let mut b = broker_with(&[("BTC", 100.0)]);
        for _ in 0..10 {
            b.submit("BTC", Side::Buy, 0.1).unwrap();
        }
        b.submit("BTC", Side::Sell, 1.0).unwrap();
        assert_eq!(b.positions_count(), 0, "{:?}", b.positions());
        assert_eq!(b.position("BTC").qty, 0.0);
    }

    /// Long 1 BTC at 99 with +1 realised (a short closed at a profit), short 2 ETH.
    fn traded() -> PaperBroker {
        let mut b = broker_with(&[("BTC", 100.0), ("ETH", 10.0)]);
        b.submit("BTC", Side::Sell, 1.0).unwrap();
        b.mark("BTC", 99.0);
        b.submit("BTC", Side::Buy, 2.0).unwrap();
        b.submit("ETH", Side::Sell, 2.0).unwrap();
        b.mark("BTC", 104.0);
        b.mark("ETH", 9.0);
        b
    }

    #[test]
    fn a_snapshot_round_trips_through_json_into_the_same_broker_state() {
        let before = traded();
        let json = serde_json::to_value(before.snapshot()).unwrap();
        let snapshot: BrokerSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(snapshot, before.snapshot());
        let after = PaperBroker::restored(snapshot).unwrap();
        assert_eq!(after.positions(), before.positions());
        assert_close(after.realised_pnl(), 1.0);
        assert_eq!(after.orders_count(), 3);
        assert_eq!(after.closed_trades(), 1);
        assert_close(after.success_rate(), 1.0);
        // Valued at the restored marks: pnl carries on, this run's pnl starts at 0.
        assert_close(after.unrealised_pnl(), before.unrealised_pnl());
        assert_close(after.pnl(), 1.0 + 5.0 + 2.0);
        assert_close(after.run_pnl(), 0.0);
        assert_eq!(after.fills_this_run(), 0);
        assert_eq!(after.snapshot(), before.snapshot(), "nothing lost or added");
    }

    #[test]
    fn a_restored_broker_trades_on_from_its_positions_and_counts() {
        let mut b = PaperBroker::restored(traded().snapshot()).unwrap();
        // A restored mark values a position but never fills an order.
        assert_eq!(b.last_price("BTC"), None);
        assert!(matches!(
            b.submit("BTC", Side::Sell, 1.0),
            Err(OrderError::NoPrice { .. })
        ));
        b.mark("BTC", 106.0);
        assert_close(b.pnl(), 1.0 + 7.0 + 2.0);
        assert_close(b.run_pnl(), 2.0);
        let fill = b.submit("BTC", Side::Sell, 1.0).unwrap();
        assert_close(fill.realised_pnl, 7.0);
        assert_close(b.realised_pnl(), 8.0);
        assert_eq!(b.orders_count(), 4);
        assert_eq!(b.closed_trades(), 2);
        assert_eq!(b.fills_this_run(), 1);
        assert_close(b.run_pnl(), 2.0);
        assert!(!b.snapshot().positions.contains_key("BTC"));
    }

    #[test]
    fn a_fresh_broker_snapshot_is_empty_and_its_run_pnl_is_its_pnl() {
        let snapshot = PaperBroker::new().snapshot();
        assert!(snapshot.positions.is_empty() && snapshot.marks.is_empty());
        assert_eq!(snapshot.orders_count, 0);
        let b = traded();
        assert_close(b.run_pnl(), b.pnl());
    }

    #[test]
    fn an_impossible_snapshot_is_refused_with_the_field_at_fault() {
        let good = traded().snapshot();
        let mut bad = good.clone();
        bad.version = 2;
        let err = PaperBroker::restored(bad).unwrap_err();
        assert!(matches!(
            err,
            SnapshotError::UnsupportedVersion { found: 2, .. }
        ));
        let mut bad = good.clone();
        bad.realised_pnl = f64::NAN;
        let err = PaperBroker::restored(bad).unwrap_err();
        assert!(err.to_string().contains("realised_pnl"), "{err}");
        let mut bad = good.clone();
        bad.positions.insert(
            "SOL".into(),
            Position {
                qty: 1.0,
                avg_price: 0.0,
            },
        );
        let err = PaperBroker::restored(bad).unwrap_err();
        assert!(err.to_string().contains("'SOL'"), "{err}");
        let mut bad = good.clone();
        bad.marks.insert("BTC".into(), -1.0);
        assert!(matches!(
            PaperBroker::restored(bad),
            Err(SnapshotError::BadMark { .. })
        ));
        let mut bad = good;
        bad.winning_trades = 5;
        assert!(matches!(
            PaperBroker::restored(bad),
            Err(SnapshotError::BadCounts {
                winning: 5,
                closed: 1
            })
        ));
    }

    #[test]
    fn client_order_ids_carry_the_epoch_and_count_on_from_a_restored_broker() {
        let strategy: uuid::Uuid = "1a2b3c4d-5e6f-4000-8000-000000000001".parse().unwrap();
        let mut b = broker_with(&[("BTC", 100.0)]);
        b.set_order_ids(OrderIds::new(3, strategy, "s1"));
        let first = b.submit("BTC", Side::Buy, 1.0).unwrap();
        let second = b.submit("BTC", Side::Sell, 1.0).unwrap();
        assert_eq!(first.client_order_id, "e3-1a2b3c4d-s1-1");
        assert_eq!(second.client_order_id, "e3-1a2b3c4d-s1-2");
        assert_eq!(OrderIds::epoch_of(&second.client_order_id), Some(3));

        // The next executor (a new session, a newer epoch) counts on from the
        // state the first one left: no id is ever given twice for one strategy.
        let mut next = PaperBroker::restored(b.snapshot()).unwrap();
        next.set_order_ids(OrderIds::new(4, strategy, "s2"));
        next.mark("BTC", 101.0);
        let third = next.submit("BTC", Side::Buy, 1.0).unwrap();
        assert_eq!(third.client_order_id, "e4-1a2b3c4d-s2-3");
        assert_eq!(OrderIds::epoch_of(&third.client_order_id), Some(4));
    }

    #[test]
    fn the_same_count_in_two_sessions_gives_two_ids() {
        // A crash before the broker state was reported: the next executor starts
        // from an older count, and its session keeps its ids apart.
        let strategy = uuid::Uuid::new_v4();
        let mut ids = std::collections::BTreeSet::new();
        for session in ["a", "b"] {
            let mut b = broker_with(&[("ETH", 10.0)]);
            b.set_order_ids(OrderIds::new(0, strategy, session));
            for _ in 0..3 {
                assert!(ids.insert(b.submit("ETH", Side::Buy, 1.0).unwrap().client_order_id));
            }
        }
        assert_eq!(ids.len(), 6);
    }

    #[test]
    fn order_id_parts_never_hold_a_dash_but_the_epoch_is_read_back() {
        let strategy = uuid::Uuid::nil();
        let ids = OrderIds::new(12, strategy, "x-y");
        assert_eq!(ids.id(5), "e12-00000000-x.y-5");
        assert_eq!(OrderIds::default().id(1), "e0-00000000-1");
        let run: uuid::Uuid = "9f8e7d6c-5b4a-4000-8000-000000000000".parse().unwrap();
        assert_eq!(OrderIds::run_session(run, 2), "r9f8e7d6c5b4a.2");
        let started = chrono::DateTime::from_timestamp_millis(1_764_600_000_000).unwrap();
        let session = OrderIds::live_session(started);
        assert!(
            session.chars().all(|c| c.is_ascii_alphanumeric()),
            "{session}"
        );
        assert_ne!(
            session,
            OrderIds::live_session(started + chrono::TimeDelta::milliseconds(1))
        );
        assert_eq!(OrderIds::epoch_of("e12-00000000-x.y-5"), Some(12));
        assert_eq!(OrderIds::epoch_of("x12-0-1"), None);
        assert_eq!(OrderIds::epoch_of("e-1"), None);
        assert_eq!(OrderIds::epoch_of(""), None);
    }
}
