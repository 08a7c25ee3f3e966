//! The performance metrics of a backtest, named as the run's result names them
//! (`performance_metrics`), with their exact definitions.
//!
//! Returns and ratios are fractions (0.05 is 5 %). The inputs are the equity at the
//! close of every bar, `E_1 … E_n`, after the initial capital `E_0 = C`, and the
//! closed trades (see [`super::Trade`]: net of fees, with the return on the value
//! put in).
//!
//! | metric | definition | `None` (JSON `null`) when |
//! |---|---|---|
//! | `total_return` | `E_n / C − 1` | never |
//! | `cagr` | `(E_n / C)^(1 / years) − 1`, `years` = the span of the bars (last − first bar time, plus one bar interval) / 365 days; −1 when `E_n ≤ 0` | never |
//! | `max_drawdown` | largest `(P_i − E_i) / P_i`, `P_i` = `max(E_0 … E_i)`, as a positive fraction | never |
//! | `sharpe_ratio` | `mean(r) / sd(r) × √(periods a year)`: `r_i = E_i / E_{i−1} − 1` (0 once `E_{i−1} ≤ 0`), `sd` the sample standard deviation (n − 1), periods a year = 365 days / the bar interval, risk-free rate 0 | fewer than 2 returns, or `sd` = 0 |
//! | `sortino_ratio` | `mean(r) / dd × √(periods a year)`, `dd = √(Σ min(r_i, 0)² / n)` (downside deviation against 0, over all n returns) | fewer than 2 returns, or no negative return |
//! | `calmar_ratio` | `cagr / max_drawdown` | no drawdown |
//! | `hit_rate` | winning trades (net PnL > 0) / trades | no trades |
//! | `average_return` | mean of the trades' returns (net PnL / value put in) | no trades |
//! | `profit_factor` | sum of the winning trades' PnL / −(sum of the losing trades' PnL) | no losing trade |
//! | `expectancy` | sum of the trades' net PnL / trades: money expected per trade | no trades |
//! | `exposure` | bars at whose close a position was open / bars | never |
//!
//! A value that would not be a finite number is `None` too.
//!
//! Next to freqtrade's `freqtrade/data/metrics.py`: `cagr` (over 365-day years) and
//! `expectancy` (win rate × average win − loss rate × average loss, which is the
//! mean PnL per trade) are the same; `profit_factor` and `hit_rate` are the usual
//! ones. Sharpe and Sortino differ on purpose: freqtrade divides the sum of trade
//! profits by the days and annualises with √365, where here they come from the
//! equity at every bar, annualised by the bar interval (as the contract says), so
//! time out of the market and open positions count. Calmar here is the textbook
//! `cagr / max_drawdown`, and an undefined metric is `null`, not freqtrade's −100.

use super::Trade;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const YEAR_SECONDS: f64 = 365.0 * 86_400.0;

/// What a backtest measured. Every field is always present; an undefined one is
/// `None`, which serializes as `null`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PerformanceMetrics {
    pub average_return: Option<f64>,
    pub hit_rate: Option<f64>,
    pub sharpe_ratio: Option<f64>,
    pub sortino_ratio: Option<f64>,
    pub calmar_ratio: Option<f64>,
    pub total_return: Option<f64>,
    pub cagr: Option<f64>,
    pub max_drawdown: Option<f64>,
    pub profit_factor: Option<f64>,
    pub expectancy: Option<f64>,
    pub exposure: Option<f64>,
}

/// What the metrics are computed from.
#[derive(Debug, Clone, Copy)]
pub struct MetricsInput<'a> {
    /// `C`, above 0.
    pub initial_capital: f64,
    /// `E_1 … E_n`: the equity at each bar's close.
    pub equity: &'a [f64],
    /// The closed trades.
    pub trades: &'a [Trade],
    /// How many of the bars closed with a position open.
    pub exposed_bars: usize,
    /// The bar interval (for the periods a year).
    pub bar_interval: Duration,
    /// The time the bars cover (for `cagr`).
    pub span: Duration,
}

impl PerformanceMetrics {
    /// The metrics of `input`, as defined in the [module docs](self).
    pub fn compute(input: &MetricsInput<'_>) -> Self {
        let mut equity = EquityStats::new(input.initial_capital);
        for &e in input.equity {
            equity.push(e);
        }
        PerformanceMetrics::from_stats(
            &equity,
            &TradeStats::of(input.trades),
            input.exposed_bars,
            input.bar_interval,
            input.span,
        )
    }

    /// The metrics from what a streaming backtest gathered: the same numbers as
    /// [`PerformanceMetrics::compute`] on the whole series, without keeping it.
    pub fn from_stats(
        equity: &EquityStats,
        trades: &TradeStats,
        exposed_bars: usize,
        bar_interval: Duration,
        span: Duration,
    ) -> Self {
        let capital = equity.capital;
        let last = equity.last;
        let periods = periods_a_year(bar_interval);
        let cagr = last.and_then(|e| cagr(capital, e, span));
        let max_drawdown = last.map(|_| equity.max_drawdown);
        let exposure = (equity.bars > 0).then(|| exposed_bars as f64 / equity.bars as f64);
        PerformanceMetrics {
            average_return: finite(trades.average_return()),
            hit_rate: finite(trades.hit_rate()),
            sharpe_ratio: periods.and_then(|p| finite(equity.returns.sharpe(p))),
            sortino_ratio: periods.and_then(|p| finite(equity.returns.sortino(p))),
            calmar_ratio: finite(
                cagr.zip(max_drawdown)
                    .and_then(|(c, d)| (d > 0.0).then(|| c / d)),
            ),
            total_return: finite(last.map(|e| e / capital - 1.0)),
            cagr: finite(cagr),
            max_drawdown: finite(max_drawdown),
            profit_factor: finite(trades.profit_factor()),
            expectancy: finite(trades.expectancy()),
            exposure: finite(exposure),
        }
    }
}

fn finite(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite())
}

fn periods_a_year(interval: Duration) -> Option<f64> {
    let seconds = interval.as_secs_f64();
    (seconds > 0.0).then(|| YEAR_SECONDS / seconds)
}

/// The equity series `E_1 … E_n` folded as it comes: its bar returns, running peak,
/// worst drawdown and last value. A few numbers, whatever the length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EquityStats {
    capital: f64,
    previous: f64,
    peak: f64,
    max_drawdown: f64,
    last: Option<f64>,
    bars: usize,
    returns: ReturnStats,
}

impl EquityStats {
    /// Before the first bar: `E_0` = `capital`.
    pub fn new(capital: f64) -> Self {
        EquityStats {
            capital,
            previous: capital,
            peak: capital,
            max_drawdown: 0.0,
            last: None,
            bars: 0,
            returns: ReturnStats::default(),
        }
    }

    /// The equity at the next bar's close.
    pub fn push(&mut self, e: f64) {
        let r = if self.previous > 0.0 {
            e / self.previous - 1.0
        } else {
            0.0
        };
        self.returns.push(r);
        self.previous = e;
        self.peak = self.peak.max(e);
        if self.peak > 0.0 {
            self.max_drawdown = self.max_drawdown.max((self.peak - e) / self.peak);
        }
        self.last = Some(e);
        self.bars += 1;
    }

    /// The last equity pushed.
    pub fn last(&self) -> Option<f64> {
        self.last
    }

    /// How many values were pushed.
    pub fn bars(&self) -> usize {
        self.bars
    }
}

/// Mean, sample variance (Welford) and downside square sum of bar returns.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct ReturnStats {
    n: usize,
    mean: f64,
    m2: f64,
    downside_sq: f64,
}

impl ReturnStats {
    fn push(&mut self, r: f64) {
        self.n += 1;
        let delta = r - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (r - self.mean);
        self.downside_sq += r.min(0.0).powi(2);
    }

    fn sharpe(&self, periods_a_year: f64) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let sd = (self.m2 / (self.n - 1) as f64).sqrt();
        (sd > 0.0).then(|| self.mean / sd * periods_a_year.sqrt())
    }

    fn sortino(&self, periods_a_year: f64) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let dd = (self.downside_sq / self.n as f64).sqrt();
        (dd > 0.0).then(|| self.mean / dd * periods_a_year.sqrt())
    }
}

fn cagr(capital: f64, last: f64, span: Duration) -> Option<f64> {
    let years = span.as_secs_f64() / YEAR_SECONDS;
    if years <= 0.0 {
        return None;
    }
    let ratio = last / capital;
    Some(if ratio <= 0.0 {
        -1.0
    } else {
        ratio.powf(1.0 / years) - 1.0
    })
}

/// The closed trades folded as they come: the trade metrics without the list.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TradeStats {
    count: usize,
    wins: usize,
    gross_profit: f64,
    gross_loss: f64,
    net: f64,
    returns: f64,
}

impl TradeStats {
    /// The stats of `trades`.
    pub fn of(trades: &[Trade]) -> Self {
        let mut stats = TradeStats::default();
        for trade in trades {
            stats.add(trade);
        }
        stats
    }

    /// Count one more closed trade.
    pub fn add(&mut self, trade: &Trade) {
        self.count += 1;
        if trade.pnl > 0.0 {
            self.wins += 1;
        }
        self.gross_profit += trade.pnl.max(0.0);
        self.gross_loss += (-trade.pnl).max(0.0);
        self.net += trade.pnl;
        self.returns += trade.return_ratio;
    }

    /// Another set of trades, as if each had been added.
    pub fn merge(&mut self, other: &TradeStats) {
        self.count += other.count;
        self.wins += other.wins;
        self.gross_profit += other.gross_profit;
        self.gross_loss += other.gross_loss;
        self.net += other.net;
        self.returns += other.returns;
    }

    /// Trades counted.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Trades with a net PnL above 0.
    pub fn wins(&self) -> usize {
        self.wins
    }

    fn average_return(&self) -> Option<f64> {
        (self.count > 0).then(|| self.returns / self.count as f64)
    }

    fn hit_rate(&self) -> Option<f64> {
        (self.count > 0).then(|| self.wins as f64 / self.count as f64)
    }

    fn profit_factor(&self) -> Option<f64> {
        (self.gross_loss > 0.0).then(|| self.gross_profit / self.gross_loss)
    }

    fn expectancy(&self) -> Option<f64> {
        (self.count > 0).then(|| self.net / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backtest::Direction;
    use crate::testing::assert_close;
    use chrono::DateTime;

    const DAY: Duration = Duration::from_secs(86_400);

    fn trade(pnl: f64, return_ratio: f64) -> Trade {
        let ts = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Trade {
            direction: Direction::Long,
            entry_time: ts,
            exit_time: ts,
            qty: 1.0,
            entry_value: pnl / return_ratio,
            pnl,
            return_ratio,
            closed_at_end: false,
        }
    }

    /// C = 100, equity 110, 99, 108.9: returns +0.1, −0.1, +0.1.
    const EQUITY: [f64; 3] = [110.0, 99.0, 108.9];

    fn returns(rs: &[f64]) -> ReturnStats {
        let mut stats = ReturnStats::default();
        for &r in rs {
            stats.push(r);
        }
        stats
    }

    fn sharpe(rs: &[f64], periods: f64) -> Option<f64> {
        returns(rs).sharpe(periods)
    }

    fn sortino(rs: &[f64], periods: f64) -> Option<f64> {
        returns(rs).sortino(periods)
    }

    fn max_drawdown(capital: f64, equity: &[f64]) -> f64 {
        let mut stats = EquityStats::new(capital);
        for &e in equity {
            stats.push(e);
        }
        stats.max_drawdown
    }

    #[test]
    fn returns_sharpe_and_sortino_by_hand() {
        let mut stats = EquityStats::new(100.0);
        for e in EQUITY {
            stats.push(e);
        }
        let r = [0.1, -0.1, 0.1];
        assert_close(stats.returns.sharpe(365.0), sharpe(&r, 365.0).unwrap());
        // mean = 0.1/3 = 1/30; deviations 1/15, −2/15, 1/15; sample variance
        // (1/225 + 4/225 + 1/225) / 2 = 1/75, sd = 1/(5√3).
        // Sharpe, daily bars (365 a year): (1/30) × 5√3 × √365 = √1095 / 6.
        assert_close(sharpe(&r, 365.0), 1095f64.sqrt() / 6.0);
        // Downside deviation √((−0.1)² / 3) = 0.1/√3;
        // Sortino: (1/30) / (0.1/√3) × √365 = (√3/3) × √365 = √1095 / 3.
        assert_close(sortino(&r, 365.0), 1095f64.sqrt() / 3.0);
        // No losing bar: no Sortino; a constant return: no Sharpe; one return: neither.
        assert_eq!(sortino(&[0.1, 0.2], 365.0), None);
        assert_eq!(sharpe(&[0.1, 0.1], 365.0), None);
        assert_eq!(sharpe(&[0.1], 365.0), None);
        // Hourly bars: 8760 periods a year.
        assert_close(periods_a_year(Duration::from_secs(3600)), 8760.0);
    }

    #[test]
    fn drawdown_is_from_the_running_peak_including_the_capital() {
        // Peak 110, trough 99: (110 − 99) / 110 = 0.1; then 108.9 is 0.01 down.
        assert_close(Some(max_drawdown(100.0, &EQUITY)), 0.1);
        // Below the capital at once: 100 → 80 = 0.2 down, then a new peak 120 → 90.
        assert_close(Some(max_drawdown(100.0, &[80.0, 120.0, 90.0])), 0.25);
        assert_close(Some(max_drawdown(100.0, &[100.0, 101.0])), 0.0);
    }

    #[test]
    fn cagr_compounds_over_365_day_years() {
        // 100 → 121 over two years: 1.21^(1/2) − 1 = 0.1.
        assert_close(cagr(100.0, 121.0, DAY * 730), 0.1);
        // 100 → 110 over half a year: 1.1² − 1 = 0.21.
        assert_close(cagr(100.0, 110.0, DAY * 365 / 2), 0.21);
        assert_close(cagr(100.0, -5.0, DAY * 365), -1.0);
        assert_eq!(cagr(100.0, 110.0, Duration::ZERO), None);
    }

    #[test]
    fn trade_metrics_by_hand() {
        // PnL 10, −5, 20, −5 on returns 0.1, −0.05, 0.2, −0.05:
        // hit rate 2/4; profit factor 30 / 10 = 3; expectancy 20 / 4 = 5;
        // average return 0.2 / 4 = 0.05.
        let trades = [
            trade(10.0, 0.1),
            trade(-5.0, -0.05),
            trade(20.0, 0.2),
            trade(-5.0, -0.05),
        ];
        let s = TradeStats::of(&trades);
        assert_close(s.hit_rate(), 0.5);
        assert_close(s.profit_factor(), 3.0);
        assert_close(s.expectancy(), 5.0);
        assert_close(s.average_return(), 0.05);
        // No losing trade: no profit factor.
        let s = TradeStats::of(&trades[..1]);
        assert_eq!(s.profit_factor(), None);
        assert_close(s.hit_rate(), 1.0);
        // No trade at all: none of them.
        let s = TradeStats::of(&[]);
        assert_eq!(
            (
                s.average_return(),
                s.hit_rate(),
                s.profit_factor(),
                s.expectancy()
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn compute_puts_it_together_and_undefined_is_null() {
        // The three daily bars above, one winning trade, 2 of 3 bars exposed, over a
        // year and a half: cagr = 1.089^(1/1.5) − 1; calmar = cagr / 0.1.
        let trades = [trade(8.9, 0.089)];
        let m = PerformanceMetrics::compute(&MetricsInput {
            initial_capital: 100.0,
            equity: &EQUITY,
            trades: &trades,
            exposed_bars: 2,
            bar_interval: DAY,
            span: DAY * 365 * 3 / 2,
        });
        let cagr = 1.089f64.powf(1.0 / 1.5) - 1.0;
        assert_close(m.total_return, 0.089);
        assert_close(m.cagr, cagr);
        assert_close(m.max_drawdown, 0.1);
        assert_close(m.calmar_ratio, cagr / 0.1);
        assert_close(m.sharpe_ratio, 1095f64.sqrt() / 6.0);
        assert_close(m.exposure, 2.0 / 3.0);
        assert_close(m.hit_rate, 1.0);
        assert_eq!(m.profit_factor, None);
        let json = serde_json::to_value(m).unwrap();
        assert_eq!(json.as_object().unwrap().len(), 11);
        assert!(json["profit_factor"].is_null());

        // Flat equity, no trades: no drawdown, so no Calmar; no Sharpe.
        let m = PerformanceMetrics::compute(&MetricsInput {
            initial_capital: 100.0,
            equity: &[100.0, 100.0],
            trades: &[],
            exposed_bars: 0,
            bar_interval: DAY,
            span: DAY * 2,
        });
        assert_close(m.total_return, 0.0);
        assert_close(m.max_drawdown, 0.0);
        assert_close(m.exposure, 0.0);
        assert_eq!(
            (m.calmar_ratio, m.sharpe_ratio, m.hit_rate),
            (None, None, None)
        );
    }
}
