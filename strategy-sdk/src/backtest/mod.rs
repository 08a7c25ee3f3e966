//! The backtest core: replay one symbol's bars through a strategy and the paper
//! broker, and measure what it did. No I/O: the bars come in, a
//! [`BacktestReport`] comes out, and the same input always gives the same report.
//!
//! How a backtest runs ([`run_backtest`]):
//! - `on_start` at the first bar's time (a strategy that subscribes there must
//!   subscribe to the symbol: one that follows another token is an error), then for
//!   each bar in time order one tick of
//!   the symbol at the bar's close, stamped with the bar's time (`ts`, its open as
//!   stored in `market_bars`), so [`crate::Context::now`] is the bar's time and
//!   [`crate::Context::bar`] the bar. The strategy's `on_tick` is the one that trades
//!   live.
//! - Orders fill at once at that close through the same [`crate::PaperBroker`] as
//!   live, which charges `fee_bps` of each fill's value.
//! - After each bar the equity is `initial_capital` + the broker's PnL (realised,
//!   unrealised at the close, less fees).
//! - At the end a position still open is closed at the last close (paying the fee),
//!   so that every trade is counted; its [`Trade::closed_at_end`] says so, and the
//!   last equity point includes that fee.
//! - A strategy that halts itself ([`crate::Context::halt`]) is shut down and the
//!   replay ends at that bar; [`BacktestReport::halt_reason`] says why.
//!
//! A trade is a round trip: from the fill that opens a position from flat to the fill
//! that brings it back to flat (a fill that flips the position ends one trade and
//! starts the next, its fee split between them by quantity). Its PnL is net of every
//! fee paid on it; its return is that PnL over the value put in (the quantity times
//! the price of every fill that opened or added to it).
//!
//! The metrics and their definitions are in [`metrics`].
//!
//! ```
//! use chrono::{DateTime, TimeDelta};
//! use std::time::Duration;
//! use strategy_sdk::backtest::{run_backtest, BacktestSettings};
//! use strategy_sdk::{Bar, Context, Strategy, Tick};
//!
//! /// Buys 1 on the first tick and holds.
//! struct BuyAndHold;
//! impl Strategy for BuyAndHold {
//!     fn on_start(&mut self, _ctx: &mut Context) {}
//!     fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
//!         if ctx.position(&tick.token).qty == 0.0 {
//!             let _ = ctx.buy(&tick.token, 1.0);
//!         }
//!     }
//! }
//!
//! let start = DateTime::from_timestamp(1_704_067_200, 0).unwrap();
//! let bars: Vec<Bar> = [100.0, 110.0, 121.0].iter().enumerate().map(|(i, &close)| Bar {
//!     ts: start + TimeDelta::days(i as i64),
//!     open: close, high: close, low: close, close, volume: 1000.0,
//! }).collect();
//! let settings = BacktestSettings::new("AAPL", Duration::from_secs(86_400), 1000.0);
//! let report = run_backtest(Box::new(BuyAndHold), &bars, &settings).unwrap();
//! assert_eq!(report.final_equity, 1021.0); // bought at 100, closed at 121
//! assert_eq!(report.trades.len(), 1);
//! assert!(report.trades[0].closed_at_end);
//! assert_eq!(report.metrics.hit_rate, Some(1.0));
//! assert_eq!(report.metrics.profit_factor, None); // no losing trade
//! ```

pub mod metrics;
mod trades;

pub use metrics::{EquityStats, MetricsInput, PerformanceMetrics, TradeStats};
pub use trades::{Direction, Trade};

use crate::broker::{Fill, OrderIds};
use crate::host::{BarFeed, Host};
use crate::modes::Bar;
use crate::strategy::{ShutdownReason, Strategy};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use trades::TradeBook;
use uuid::Uuid;

/// The most points an equity curve is downsampled to.
pub const MAX_EQUITY_POINTS: usize = 500;

/// The largest fee: 10 000 basis points is the whole value of a fill.
pub const MAX_FEE_BPS: f64 = 10_000.0;

/// What a backtest of one symbol needs besides the strategy and the bars.
#[derive(Debug, Clone, PartialEq)]
pub struct BacktestSettings {
    /// The symbol the bars are of: the ticks' token (the strategy's `token`).
    pub symbol: String,
    /// The bar size (`1d` is 86 400 s): annualises Sharpe and Sortino, and is the
    /// last bar's share of the span.
    pub bar_interval: Duration,
    /// The equity before the first bar, above 0.
    pub initial_capital: f64,
    /// Fee in basis points of each fill's value, 0 to 10 000.
    pub fee_bps: f64,
}

impl BacktestSettings {
    /// Settings without fees.
    pub fn new(symbol: impl Into<String>, bar_interval: Duration, initial_capital: f64) -> Self {
        BacktestSettings {
            symbol: symbol.into(),
            bar_interval,
            initial_capital,
            fee_bps: 0.0,
        }
    }
}

/// Why a backtest could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BacktestError {
    #[error("no bars to replay")]
    NoBars,
    #[error("bars must be in time order: bar {index} at {ts} is not after {previous}")]
    OutOfOrder {
        index: usize,
        ts: DateTime<Utc>,
        previous: DateTime<Utc>,
    },
    #[error("bar {index} at {ts} closes at {close}; a close must be a finite number above 0")]
    BadClose {
        index: usize,
        ts: DateTime<Utc>,
        close: f64,
    },
    #[error("initial_capital {0} must be a finite number above 0")]
    BadCapital(f64),
    #[error("fee_bps {0} must be a number from 0 to 10000")]
    BadFee(f64),
    #[error("the bar interval must be above zero")]
    BadInterval,
    /// The strategy subscribed to other tokens in `on_start`: its config names
    /// another symbol, and it would ignore every bar.
    #[error("the strategy follows {}, not {symbol}; set its token to {symbol}", subscriptions.join(", "))]
    OtherSymbol {
        symbol: String,
        subscriptions: Vec<String>,
    },
}

/// The equity at a bar's close.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EquityPoint {
    pub ts: DateTime<Utc>,
    pub equity: f64,
}

/// A fill of a backtest and the bar time it filled at (kept only when asked,
/// [`Backtest::keep_orders`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimedFill {
    pub at: DateTime<Utc>,
    pub fill: Fill,
}

/// What a backtest of one symbol did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BacktestReport {
    pub symbol: String,
    /// Bars replayed (fewer than given when the strategy halted).
    pub bars: usize,
    /// The first and the last replayed bar's time.
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub initial_capital: f64,
    pub final_equity: f64,
    /// Fees paid in all.
    pub fees: f64,
    /// Fills, the closing one at the end included.
    pub orders: u64,
    pub trades: Vec<Trade>,
    pub metrics: PerformanceMetrics,
    /// The equity at each bar's close, downsampled to at most
    /// [`MAX_EQUITY_POINTS`] (the first and the last always kept).
    pub equity_curve: Vec<EquityPoint>,
    /// Why the strategy halted itself, if it did.
    pub halt_reason: Option<String>,
    /// The fills not taken yet with [`Backtest::take_orders`] (the closing ones at
    /// the end included), when [`Backtest::keep_orders`] asked for them; else empty.
    pub order_log: Vec<TimedFill>,
}

/// Replay `bars` (in strictly increasing time order) of `settings.symbol` through
/// `strategy`, as the [module docs](self) describe. [`Backtest`] does the same bar
/// by bar, for bars that are streamed rather than held.
pub fn run_backtest<S: Strategy + ?Sized>(
    strategy: Box<S>,
    bars: &[Bar],
    settings: &BacktestSettings,
) -> Result<BacktestReport, BacktestError> {
    if bars.is_empty() {
        return Err(BacktestError::NoBars);
    }
    let mut backtest = Backtest::new(strategy, settings.clone())?;
    for bar in bars {
        if !backtest.bar(bar)? {
            break;
        }
    }
    backtest.finish()
}

/// A backtest of one symbol fed bar by bar: what [`run_backtest`] does, in memory
/// that does not grow with the bars (the equity series is folded into
/// [`EquityStats`] as it comes, and its curve decimated as it grows; only the
/// trades are kept).
///
/// ```
/// use chrono::{DateTime, TimeDelta};
/// use std::time::Duration;
/// use strategy_sdk::backtest::{Backtest, BacktestSettings};
/// use strategy_sdk::{Bar, Context, Strategy, Tick};
///
/// struct BuyAndHold;
/// impl Strategy for BuyAndHold {
///     fn on_start(&mut self, _ctx: &mut Context) {}
///     fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
///         if ctx.position(&tick.token).qty == 0.0 {
///             let _ = ctx.buy(&tick.token, 1.0);
///         }
///     }
/// }
///
/// let start = DateTime::from_timestamp(1_704_067_200, 0).unwrap();
/// let settings = BacktestSettings::new("AAPL", Duration::from_secs(86_400), 1000.0);
/// let mut backtest = Backtest::new(Box::new(BuyAndHold), settings).unwrap();
/// for (i, close) in [100.0, 110.0, 121.0].into_iter().enumerate() {
///     let ts = start + TimeDelta::days(i as i64);
///     let bar = Bar { ts, open: close, high: close, low: close, close, volume: 1.0 };
///     assert!(backtest.bar(&bar).unwrap(), "the replay goes on");
/// }
/// assert_eq!(backtest.bars(), 3);
/// assert_eq!(backtest.finish().unwrap().final_equity, 1021.0);
/// ```
pub struct Backtest<S: Strategy + ?Sized = dyn Strategy> {
    host: Host<S>,
    feed: BarFeed,
    settings: BacktestSettings,
    book: TradeBook,
    equity: EquityStats,
    /// The latest bar's equity, folded into `equity` when the next bar comes (the
    /// last one is amended by the closing fee first).
    pending: Option<EquityPoint>,
    curve: CurveSampler,
    exposed_bars: usize,
    first: Option<DateTime<Utc>>,
    halted: bool,
    /// Every fill with its bar time, when kept ([`Backtest::keep_orders`]).
    order_log: Option<Vec<TimedFill>>,
}

impl<S: Strategy + ?Sized> Backtest<S> {
    /// Check the settings and host `strategy`; it starts at the first bar.
    pub fn new(strategy: Box<S>, settings: BacktestSettings) -> Result<Self, BacktestError> {
        check_settings(&settings)?;
        let mut host = Host::new(Uuid::nil(), settings.symbol.as_str(), strategy);
        host.set_fee_bps(settings.fee_bps);
        host.record_fills();
        host.drop_custom_metrics();
        let feed = host.bar_feed(&settings.symbol);
        Ok(Backtest {
            host,
            feed,
            equity: EquityStats::new(settings.initial_capital),
            settings,
            book: TradeBook::default(),
            pending: None,
            curve: CurveSampler::default(),
            exposed_bars: 0,
            first: None,
            halted: false,
            order_log: None,
        })
    }

    /// Name the orders with `ids` (a run's lease epoch and session, see [`OrderIds`]).
    pub fn set_order_ids(&mut self, ids: OrderIds) {
        self.host.set_order_ids(ids);
    }

    /// Keep every fill with its bar time, for [`Backtest::take_orders`] (and the
    /// report's `order_log`). Off by default: a long backtest keeps no history.
    pub fn keep_orders(&mut self) {
        self.order_log.get_or_insert_with(Vec::new);
    }

    /// The fills kept since the last call (empty unless [`Backtest::keep_orders`]).
    pub fn take_orders(&mut self) -> Vec<TimedFill> {
        self.order_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn log_fills(&mut self, fills: Vec<Fill>, at: DateTime<Utc>) {
        if let Some(log) = &mut self.order_log {
            log.extend(fills.into_iter().map(|fill| TimedFill { at, fill }));
        }
    }

    /// Bars replayed so far.
    pub fn bars(&self) -> usize {
        self.curve.count
    }

    /// The equity after the latest bar (the initial capital before the first).
    pub fn equity(&self) -> f64 {
        self.pending
            .map_or(self.settings.initial_capital, |point| point.equity)
    }

    /// Replay the next bar (later than the one before). `Ok(false)` once the
    /// strategy has halted itself: the replay is over, later bars are ignored.
    #[inline]
    pub fn bar(&mut self, bar: &Bar) -> Result<bool, BacktestError> {
        if self.halted {
            return Ok(false);
        }
        let index = self.curve.count;
        if !bar.close.is_finite() || bar.close <= 0.0 {
            return Err(BacktestError::BadClose {
                index,
                ts: bar.ts,
                close: bar.close,
            });
        }
        match self.pending.take() {
            None => self.begin(bar.ts)?,
            Some(previous) if bar.ts <= previous.ts => {
                self.pending = Some(previous);
                return Err(BacktestError::OutOfOrder {
                    index,
                    ts: bar.ts,
                    previous: previous.ts,
                });
            }
            Some(previous) => self.equity.push(previous.equity),
        }
        self.host.feed_bar(&mut self.feed, bar);
        let fills = self.host.take_fills();
        if !fills.is_empty() {
            self.book.record_all(&fills, bar.ts, false);
            self.log_fills(fills, bar.ts);
        }
        if self.book.is_open() {
            self.exposed_bars += 1;
        }
        let point = EquityPoint {
            ts: bar.ts,
            equity: self.settings.initial_capital + self.host.context().broker().pnl(),
        };
        self.pending = Some(point);
        self.curve.push(point);
        self.halted = self.host.context().halt_reason().is_some();
        Ok(!self.halted)
    }

    /// `on_start` at the first bar's time, and the check of what it subscribed to.
    fn begin(&mut self, ts: DateTime<Utc>) -> Result<(), BacktestError> {
        self.first = Some(ts);
        self.host.start(ts);
        let symbol = self.settings.symbol.as_str();
        let subscriptions = self.host.context().subscriptions();
        if !subscriptions.is_empty() && !subscriptions.contains(symbol) {
            return Err(BacktestError::OtherSymbol {
                symbol: symbol.to_string(),
                subscriptions: subscriptions.iter().cloned().collect(),
            });
        }
        Ok(())
    }

    /// Close what is still open at the last close, shut the strategy down and
    /// measure: the report of the [module docs](self).
    pub fn finish(mut self) -> Result<BacktestReport, BacktestError> {
        let (Some(first), Some(last)) = (self.first, self.pending) else {
            return Err(BacktestError::NoBars);
        };
        self.host.flatten(last.ts);
        let closing = self.host.take_fills();
        self.book.record_all(&closing, last.ts, true);
        self.log_fills(closing, last.ts);
        self.host.shutdown(last.ts, ShutdownReason::Stop);
        let broker = self.host.context().broker();
        let final_equity = self.settings.initial_capital + broker.pnl();
        self.equity.push(final_equity);
        let trades = self.book.into_trades();
        let span = (last.ts - first).to_std().unwrap_or_default() + self.settings.bar_interval;
        let metrics = PerformanceMetrics::from_stats(
            &self.equity,
            &TradeStats::of(&trades),
            self.exposed_bars,
            self.settings.bar_interval,
            span,
        );
        Ok(BacktestReport {
            symbol: self.settings.symbol.clone(),
            bars: self.curve.count,
            start: first,
            end: last.ts,
            initial_capital: self.settings.initial_capital,
            final_equity,
            fees: broker.fees(),
            orders: broker.orders_count(),
            trades,
            metrics,
            equity_curve: self.curve.finish(final_equity, MAX_EQUITY_POINTS),
            halt_reason: self.host.context().halt_reason().map(str::to_string),
            order_log: self.order_log.take().unwrap_or_default(),
        })
    }
}

fn check_settings(settings: &BacktestSettings) -> Result<(), BacktestError> {
    let capital = settings.initial_capital;
    if !capital.is_finite() || capital <= 0.0 {
        return Err(BacktestError::BadCapital(capital));
    }
    let fee = settings.fee_bps;
    if !(0.0..=MAX_FEE_BPS).contains(&fee) {
        return Err(BacktestError::BadFee(fee));
    }
    if settings.bar_interval.is_zero() {
        return Err(BacktestError::BadInterval);
    }
    Ok(())
}

/// An equity curve kept small as it grows: every `stride`-th point, the stride
/// doubling (and every other point dropped) whenever [`CURVE_BUFFER`] are held; the
/// last point is kept apart. Up to [`CURVE_BUFFER`] bars it holds every point.
#[derive(Debug, Default)]
struct CurveSampler {
    points: Vec<EquityPoint>,
    /// The stride less one (the stride is a power of two).
    mask: usize,
    count: usize,
    last: Option<EquityPoint>,
}

/// Points a [`CurveSampler`] holds at most (twice [`MAX_EQUITY_POINTS`]).
const CURVE_BUFFER: usize = 2 * MAX_EQUITY_POINTS;

impl CurveSampler {
    #[inline]
    fn push(&mut self, point: EquityPoint) {
        if self.count & self.mask == 0 {
            if self.points.len() == CURVE_BUFFER {
                let mut keep = false;
                self.points.retain(|_| {
                    keep = !keep;
                    keep
                });
                self.mask = self.mask * 2 + 1;
            }
            if self.count & self.mask == 0 {
                self.points.push(point);
            }
        }
        self.count += 1;
        self.last = Some(point);
    }

    /// The curve with the last point's equity set to `final_equity`, downsampled to
    /// at most `max` points (the first and the last kept).
    fn finish(mut self, final_equity: f64, max: usize) -> Vec<EquityPoint> {
        if let Some(mut last) = self.last {
            last.equity = final_equity;
            match self.points.last_mut() {
                Some(kept) if kept.ts == last.ts => *kept = last,
                _ => self.points.push(last),
            }
        }
        downsample(&self.points, max)
    }
}

/// At most `max` of `points`, evenly spread by index, the first and the last kept.
pub fn downsample<T: Copy>(points: &[T], max: usize) -> Vec<T> {
    if points.len() <= max {
        return points.to_vec();
    }
    if max < 2 {
        return points[..max].to_vec();
    }
    let step = (points.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|k| points[(k as f64 * step).round() as usize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Context;
    use crate::strategy::Tick;
    use crate::testing::assert_close;
    use chrono::TimeDelta;
    use std::sync::{Arc, Mutex};

    const DAY: Duration = Duration::from_secs(86_400);

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_704_067_200, 0).unwrap()
    }

    fn daily(closes: &[f64]) -> Vec<Bar> {
        closes
            .iter()
            .enumerate()
            .map(|(i, &close)| Bar {
                ts: start() + TimeDelta::days(i as i64),
                open: close,
                high: close + 1.0,
                low: close - 1.0,
                close,
                volume: 100.0 + i as f64,
            })
            .collect()
    }

    /// Trades signed quantities at given tick numbers, halts at one if told, and
    /// notes the clock and the bar it saw on each tick.
    #[derive(Default)]
    struct Script {
        orders: Vec<(usize, f64)>,
        halt_at: Option<usize>,
        ticks: usize,
        seen: Seen,
    }

    /// The clock and the bar at each tick.
    type Seen = Arc<Mutex<Vec<(DateTime<Utc>, Option<Bar>)>>>;

    impl Strategy for Script {
        fn on_start(&mut self, _ctx: &mut Context) {}
        fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
            self.seen
                .lock()
                .unwrap()
                .push((ctx.now(), ctx.bar().copied()));
            for &(at, qty) in &self.orders {
                if at == self.ticks {
                    let _ = if qty > 0.0 {
                        ctx.buy(&tick.token, qty)
                    } else {
                        ctx.sell(&tick.token, -qty)
                    };
                }
            }
            if self.halt_at == Some(self.ticks) {
                ctx.halt("enough");
            }
            self.ticks += 1;
        }
    }

    fn settings(fee_bps: f64) -> BacktestSettings {
        BacktestSettings {
            fee_bps,
            ..BacktestSettings::new("AAPL", DAY, 1000.0)
        }
    }

    #[test]
    fn replays_bars_with_fees_by_hand() {
        // Capital 1000, fee 10 bps. Closes 100 104 110 105 100; buy 2 at bar 0, sell
        // 2 at bar 2, buy 1 at bar 3, closed at the end at bar 4.
        // bar 0: fee 0.2 → 999.8          bar 1: +2 × 4 → 1007.8
        // bar 2: realised 20, fee 0.22 → 1019.58 (flat)
        // bar 3: fee 0.105 → 1019.475     bar 4: −5 unrealised → 1014.475, then the
        //   close at 100 pays 0.1 → 1014.375.
        // Trades: long 2 on 200, 20 − 0.2 − 0.22 = 19.58; long 1 on 105,
        //   −5 − 0.105 − 0.1 = −5.205 (closed at the end).
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Script {
            orders: vec![(0, 2.0), (2, -2.0), (3, 1.0)],
            seen: seen.clone(),
            ..Script::default()
        };
        let bars = daily(&[100.0, 104.0, 110.0, 105.0, 100.0]);
        let report = run_backtest(Box::new(script), &bars, &settings(10.0)).unwrap();

        let curve: Vec<f64> = report.equity_curve.iter().map(|p| p.equity).collect();
        for (got, want) in curve
            .iter()
            .zip([999.8, 1007.8, 1019.58, 1019.475, 1014.375])
        {
            assert_close(*got, want);
        }
        assert_eq!(report.equity_curve[4].ts, bars[4].ts);
        assert_close(report.final_equity, 1014.375);
        assert_close(report.fees, 0.625);
        assert_eq!((report.bars, report.orders), (5, 4));
        assert_eq!((report.start, report.end), (bars[0].ts, bars[4].ts));

        let [first, second] = &report.trades[..] else {
            panic!("two trades: {:?}", report.trades)
        };
        assert_eq!(
            (first.direction, first.qty, first.entry_value),
            (Direction::Long, 2.0, 200.0)
        );
        assert_eq!(
            (first.entry_time, first.exit_time),
            (bars[0].ts, bars[2].ts)
        );
        assert_close(first.pnl, 19.58);
        assert_close(first.return_ratio, 19.58 / 200.0);
        assert!(!first.closed_at_end);
        assert_close(second.pnl, -5.205);
        assert!(second.closed_at_end);

        let m = report.metrics;
        assert_close(m.total_return.unwrap(), 0.014375);
        assert_close(m.exposure.unwrap(), 0.8); // bars 0, 1, 3, 4
        assert_close(m.hit_rate.unwrap(), 0.5);
        assert_close(m.profit_factor.unwrap(), 19.58 / 5.205);
        assert_close(m.expectancy.unwrap(), (19.58 - 5.205) / 2.0);
        assert_close(
            m.average_return.unwrap(),
            (19.58 / 200.0 - 5.205 / 105.0) / 2.0,
        );
        // Peak 1019.58, then 1014.375.
        assert_close(m.max_drawdown.unwrap(), 5.205 / 1019.58);

        // One tick per bar, the clock at the bar's time, the bar in the context.
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 5);
        for ((now, bar), expected) in seen.iter().zip(&bars) {
            assert_eq!(*now, expected.ts);
            assert_eq!(bar.as_ref(), Some(expected));
        }
    }

    #[test]
    fn a_flip_ends_one_trade_and_starts_the_next() {
        // Long 1 at 100; selling 2 at 110 realises +10 and opens a short 1 at 110;
        // the end buys it back at 100: +10 more.
        let script = Script {
            orders: vec![(0, 1.0), (1, -2.0)],
            ..Script::default()
        };
        let report = run_backtest(
            Box::new(script),
            &daily(&[100.0, 110.0, 100.0]),
            &settings(0.0),
        )
        .unwrap();
        let summary: Vec<_> = report
            .trades
            .iter()
            .map(|t| (t.direction, t.pnl, t.entry_value, t.closed_at_end))
            .collect();
        assert_eq!(
            summary,
            [
                (Direction::Long, 10.0, 100.0, false),
                (Direction::Short, 10.0, 110.0, true)
            ]
        );
        assert_close(report.final_equity, 1020.0);
    }

    #[test]
    fn no_trades_gives_nulls_not_missing_metrics() {
        let report = run_backtest(
            Box::new(Script::default()),
            &daily(&[100.0, 101.0]),
            &settings(0.0),
        )
        .unwrap();
        assert!(report.trades.is_empty());
        let json = serde_json::to_value(report.metrics).unwrap();
        for key in [
            "average_return",
            "hit_rate",
            "profit_factor",
            "expectancy",
            "sharpe_ratio",
            "calmar_ratio",
        ] {
            assert!(json[key].is_null(), "{key}: {json}");
        }
        assert_eq!(json["total_return"], 0.0);
        assert_eq!(json["exposure"], 0.0);
    }

    #[test]
    fn the_same_input_gives_the_same_report() {
        let closes: Vec<f64> = (0..800).map(|i| 100.0 + ((i * 37) % 23) as f64).collect();
        let bars = daily(&closes);
        let run = || {
            let script = Script {
                orders: (0..800)
                    .step_by(7)
                    .map(|i| (i, if i % 2 == 0 { 1.5 } else { -1.5 }))
                    .collect(),
                ..Script::default()
            };
            run_backtest(Box::new(script), &bars, &settings(5.0)).unwrap()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(a.bars, 800);
        assert_eq!(a.equity_curve.len(), MAX_EQUITY_POINTS);
        assert_eq!(a.equity_curve[0].ts, bars[0].ts);
        assert_eq!(a.equity_curve[499].ts, bars[799].ts);
    }

    #[test]
    fn a_halt_ends_the_replay() {
        let script = Script {
            orders: vec![(0, 1.0)],
            halt_at: Some(1),
            ..Script::default()
        };
        let report = run_backtest(
            Box::new(script),
            &daily(&[100.0, 90.0, 120.0]),
            &settings(0.0),
        )
        .unwrap();
        assert_eq!(report.bars, 2);
        assert_eq!(report.halt_reason.as_deref(), Some("enough"));
        assert_close(report.final_equity, 990.0);
        assert!(report.trades[0].closed_at_end);
    }

    #[test]
    fn bad_input_is_refused_before_any_work() {
        let bars = daily(&[100.0, 101.0]);
        let run = |bars: &[Bar], settings: &BacktestSettings| {
            run_backtest(Box::new(Script::default()), bars, settings).unwrap_err()
        };
        assert_eq!(run(&[], &settings(0.0)), BacktestError::NoBars);
        let backwards = [bars[1], bars[0]];
        assert!(matches!(
            run(&backwards, &settings(0.0)),
            BacktestError::OutOfOrder { index: 1, .. }
        ));
        let twice = [bars[0], bars[0]];
        assert!(matches!(
            run(&twice, &settings(0.0)),
            BacktestError::OutOfOrder { .. }
        ));
        let zero = [Bar {
            close: 0.0,
            ..bars[0]
        }];
        let err = run(&zero, &settings(0.0));
        assert!(
            err.to_string()
                .contains("a close must be a finite number above 0"),
            "{err}"
        );
        assert_eq!(run(&bars, &settings(-1.0)), BacktestError::BadFee(-1.0));
        assert_eq!(
            run(&bars, &settings(f64::NAN)).to_string(),
            "fee_bps NaN must be a number from 0 to 10000"
        );
        let broke = BacktestSettings::new("AAPL", DAY, 0.0);
        assert_eq!(run(&bars, &broke), BacktestError::BadCapital(0.0));
        let instant = BacktestSettings::new("AAPL", Duration::ZERO, 1000.0);
        assert_eq!(run(&bars, &instant), BacktestError::BadInterval);
    }

    /// Follows one token, whatever the backtest's symbol.
    struct Follows(&'static str);
    impl Strategy for Follows {
        fn on_start(&mut self, ctx: &mut Context) {
            ctx.subscribe(self.0);
        }
        fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
    }

    #[test]
    fn a_strategy_following_another_symbol_is_refused() {
        let bars = daily(&[100.0]);
        let err = run_backtest(Box::new(Follows("MSFT")), &bars, &settings(0.0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the strategy follows MSFT, not AAPL; set its token to AAPL"
        );
        assert!(run_backtest(Box::new(Follows("AAPL")), &bars, &settings(0.0)).is_ok());
    }

    #[test]
    fn downsampling_keeps_the_ends_and_spreads_evenly() {
        let points: Vec<usize> = (0..1000).collect();
        let kept = downsample(&points, 500);
        assert_eq!(kept.len(), 500);
        assert_eq!((kept[0], kept[499]), (0, 999));
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        // 0..5 into 3: indices 0, 2, 4.
        assert_eq!(downsample(&[0, 1, 2, 3, 4], 3), [0, 2, 4]);
        assert_eq!(downsample(&[7, 8], 500), [7, 8]);
    }
}
