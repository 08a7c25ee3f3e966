//! A backtest run: per symbol the SDK's streaming [`Backtest`] over its bars, one
//! `item` per symbol as it finishes, and the result of CONTRACT §4.
//!
//! **Several symbols make an equal-weight portfolio.** The run's
//! `initial_capital` is split evenly over its symbols; each symbol's backtest trades
//! its share alone (a symbol without bars keeps its share in cash). The portfolio's
//! equity is the sum of the symbols' equities on a common time grid (the bar
//! interval, or a wider step so that the grid has at most [`MAX_GRID`] points; each
//! symbol's equity carried from its last bar, its share before its first bar), and
//! its `performance_metrics` are those of that summed curve (Sharpe and Sortino
//! annualised by the grid step), with the trade metrics over every symbol's trades
//! and `exposure` the share of all symbols' bars that closed with a position open.
//! With one symbol the portfolio is that symbol: its metrics and curve exactly.
//!
//! `summary.positive_signals` counts the symbols whose backtest made money (total
//! return above 0): the same test as an item's `passed`, whose `score` is the
//! symbol's total return. The result holds no wall-clock figure, so the same input
//! gives the same result.

use super::outbox::Position;
use super::{RunError, RunScope, PROGRESS_EVERY_BARS};
use chrono::{DateTime, TimeDelta, Utc};
use engine_protocol::runs::RunOutput;
use serde_json::{json, Map, Value};
use std::time::Duration;
use strategy_sdk::backtest::{
    downsample, Backtest, BacktestReport, BacktestSettings, EquityPoint, EquityStats,
    PerformanceMetrics, TradeStats, MAX_EQUITY_POINTS,
};
use strategy_sdk::{Bar, OrderIds};

/// The most points of the portfolio's time grid.
pub const MAX_GRID: usize = 100_000;

/// What is kept of a symbol's backtest once it is done.
struct Outcome {
    symbol: String,
    metrics: PerformanceMetrics,
    bars: usize,
    exposed_bars: usize,
    trades: TradeStats,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// The symbol's own curve (kept only when it is the only symbol).
    curve: Vec<EquityPoint>,
}

/// The symbol being replayed.
struct Replay {
    symbol: String,
    position: usize,
    backtest: Backtest,
    cursor: GridCursor,
}

pub(super) fn run(scope: &mut RunScope<'_>) -> Result<Value, RunError> {
    let input = scope.input;
    let symbols = input.symbols.len().max(1);
    let share = input.initial_capital / symbols as f64;
    let mut grid = Grid::new(input.start, input.end, input.interval_s, symbols > 1);
    let mut source = scope.open_bars()?;
    let mut done = vec![false; input.symbols.len()];
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut replay: Option<Replay> = None;
    let mut countdown = 1;
    scope.open_orders()?;
    scope.reporter.stage("evaluating")?;
    while let Some((symbol, bar)) = source.next_bar().map_err(|e| scope.bars_error(e))? {
        if replay.as_ref().is_none_or(|r| r.symbol != symbol) {
            let symbol = symbol.to_string();
            if let Some(finished) = replay.take() {
                outcomes.push(finish(scope, &mut grid, finished, symbols)?);
            }
            replay = Some(begin(scope, symbol, &mut done, share)?);
        }
        let r = replay.as_mut().expect("a symbol is being replayed");
        step(r, &bar, &mut grid)?;
        countdown -= 1;
        if countdown == 0 {
            countdown = PROGRESS_EVERY_BARS;
            scope.write_orders(r.backtest.take_orders())?;
            let at = Position {
                fraction: source.fraction(r.position),
                completed_items: outcomes.len() as i64,
                current_item: Some(&r.symbol),
            };
            scope.reporter.progress(at)?;
        }
    }
    if let Some(finished) = replay.take() {
        outcomes.push(finish(scope, &mut grid, finished, symbols)?);
    }
    if let Some(orders) = &mut scope.orders {
        orders.finish()?;
    }
    if outcomes.is_empty() {
        return Err(scope.no_bars());
    }
    write_missing(scope, &done)?;
    scope.reporter.stage("aggregating")?;
    let result = result(scope, outcomes, &grid, source.rows());
    let at = Position {
        fraction: 1.0,
        completed_items: input.symbols.len() as i64,
        current_item: None,
    };
    let message = format!("backtested {} symbols", input.symbols.len());
    scope.reporter.final_progress(at, message)?;
    scope.reporter.stage_completed()?;
    Ok(result)
}

/// The replay of the next symbol in the file.
fn begin(
    scope: &RunScope<'_>,
    symbol: String,
    done: &mut [bool],
    share: f64,
) -> Result<Replay, RunError> {
    let input = scope.input;
    let position = scope.position(&symbol)?;
    if std::mem::replace(&mut done[position], true) {
        return Err(RunError::Scattered { symbol });
    }
    scope.working_on(&symbol);
    let interval = Duration::from_secs(input.interval_s.max(1));
    let settings = BacktestSettings {
        fee_bps: input.fee_bps,
        ..BacktestSettings::new(symbol.as_str(), interval, share)
    };
    let mut backtest =
        Backtest::new(scope.instance(&symbol)?, settings).map_err(|source| RunError::Backtest {
            symbol: symbol.clone(),
            source,
        })?;
    // The run's orders carry its lease epoch; the run and the symbol's position
    // keep them apart from every other run's of the strategy.
    let session = OrderIds::run_session(input.run_id, position);
    backtest.set_order_ids(OrderIds::new(
        input.lease_epoch,
        input.strategy_id,
        &session,
    ));
    if scope.orders.is_some() {
        backtest.keep_orders();
    }
    Ok(Replay {
        symbol,
        position,
        backtest,
        cursor: GridCursor::new(share),
    })
}

/// One bar of the symbol being replayed (a halted strategy ignores the rest).
#[inline]
fn step(r: &mut Replay, bar: &Bar, grid: &mut Grid) -> Result<(), RunError> {
    r.backtest.bar(bar).map_err(|source| RunError::Backtest {
        symbol: r.symbol.clone(),
        source,
    })?;
    if grid.enabled() {
        grid.record(&mut r.cursor, bar.ts, r.backtest.equity());
    }
    Ok(())
}

/// The symbol's report, its `item` line, and what the result keeps of it.
fn finish(
    scope: &mut RunScope<'_>,
    grid: &mut Grid,
    replay: Replay,
    symbols: usize,
) -> Result<Outcome, RunError> {
    let Replay {
        symbol,
        position,
        backtest,
        mut cursor,
    } = replay;
    let mut report = backtest.finish().map_err(|source| RunError::Backtest {
        symbol: symbol.clone(),
        source,
    })?;
    scope.write_orders(std::mem::take(&mut report.order_log))?;
    grid.close(&mut cursor, report.final_equity);
    let total_return = report.metrics.total_return;
    let mut detail = metrics_json(&report.metrics);
    if let Value::Object(map) = &mut detail {
        map.insert("bars".into(), json!(report.bars));
        map.insert("trades".into(), json!(report.trades.len()));
        map.insert("initial_capital".into(), json!(report.initial_capital));
        map.insert("final_equity".into(), json!(report.final_equity));
        map.insert("fees".into(), json!(report.fees));
        map.insert("halt_reason".into(), json!(report.halt_reason));
    }
    scope.reporter.write(&RunOutput::Item {
        item: symbol.clone(),
        position: position as i64,
        passed: Some(total_return.is_some_and(|r| r > 0.0)),
        score: total_return,
        detail: Some(detail),
    })?;
    Ok(outcome(symbol, report, symbols == 1))
}

fn outcome(symbol: String, report: BacktestReport, keep_curve: bool) -> Outcome {
    let exposure = report.metrics.exposure.unwrap_or(0.0);
    Outcome {
        symbol,
        metrics: report.metrics,
        bars: report.bars,
        exposed_bars: (exposure * report.bars as f64).round() as usize,
        trades: TradeStats::of(&report.trades),
        start: report.start,
        end: report.end,
        curve: if keep_curve {
            report.equity_curve
        } else {
            Vec::new()
        },
    }
}

/// An `item` for each symbol that had no bars in the range.
fn write_missing(scope: &mut RunScope<'_>, done: &[bool]) -> Result<(), RunError> {
    for (position, symbol) in scope.input.symbols.iter().enumerate() {
        if !done[position] {
            scope.reporter.write(&RunOutput::Item {
                item: symbol.symbol.clone(),
                position: position as i64,
                passed: Some(false),
                score: None,
                detail: Some(json!({"bars": 0, "message": "no bars in the run's range"})),
            })?;
        }
    }
    Ok(())
}

fn metrics_json(metrics: &PerformanceMetrics) -> Value {
    serde_json::to_value(metrics).expect("metrics serialize")
}

/// The result of CONTRACT §4.
fn result(scope: &RunScope<'_>, mut outcomes: Vec<Outcome>, grid: &Grid, rows: u64) -> Value {
    let input = scope.input;
    let idle = input.symbols.len() - outcomes.len();
    let mut trades = TradeStats::default();
    for outcome in &outcomes {
        trades.merge(&outcome.trades);
    }
    let start = outcomes.iter().map(|o| o.start).min().expect("an outcome");
    let end = outcomes.iter().map(|o| o.end).max().expect("an outcome");
    let (metrics, curve) = if input.symbols.len() == 1 {
        let only = outcomes.pop().expect("one outcome");
        let (metrics, curve) = (only.metrics, only.curve);
        outcomes.push(Outcome {
            curve: Vec::new(),
            ..only
        });
        (metrics, curve)
    } else {
        let bars: usize = outcomes.iter().map(|o| o.bars).sum();
        let exposed: usize = outcomes.iter().map(|o| o.exposed_bars).sum();
        grid.portfolio(
            input.initial_capital,
            idle as f64 * input.initial_capital / input.symbols.len() as f64,
            &trades,
            exposed,
            bars,
        )
    };
    // Each symbol's metrics with its bars and closed trades (what `enginectl run`
    // shows per symbol).
    let per_symbol: Map<String, Value> = outcomes
        .iter()
        .map(|o| {
            let mut metrics = metrics_json(&o.metrics);
            if let Value::Object(map) = &mut metrics {
                map.insert("bars".into(), json!(o.bars));
                map.insert("trades".into(), json!(o.trades.count()));
            }
            (o.symbol.clone(), metrics)
        })
        .collect();
    let positive = outcomes
        .iter()
        .filter(|o| o.metrics.total_return.is_some_and(|r| r > 0.0))
        .count();
    let curve: Vec<Value> = curve
        .iter()
        .map(|p| json!({"ts": p.ts, "equity": p.equity}))
        .collect();
    json!({
        "summary": {
            "total_instances": input.symbols.len(),
            "positive_signals": positive,
            "symbols_processed": outcomes.len(),
            "bars": rows,
            "trades": trades.count(),
            "date_range": {"start": start, "end": end},
        },
        "performance_metrics": metrics_json(&metrics),
        "per_symbol": per_symbol,
        "equity_curve": curve,
        "initial_capital": input.initial_capital,
        "fee_bps": input.fee_bps,
        "interval": input.interval,
    })
}

/// The portfolio's time grid: per point, the sum of the symbols' equities at the
/// end of that step.
struct Grid {
    enabled: bool,
    start: DateTime<Utc>,
    step_s: i64,
    sums: Vec<f64>,
    /// The first and last point any symbol had a bar in.
    used: Option<(usize, usize)>,
}

/// Where one symbol is on the grid: the points before `filled` hold its equity.
struct GridCursor {
    filled: usize,
    last: f64,
}

impl GridCursor {
    fn new(share: f64) -> Self {
        GridCursor {
            filled: 0,
            last: share,
        }
    }
}

impl Grid {
    fn new(start: DateTime<Utc>, end: DateTime<Utc>, interval_s: u64, enabled: bool) -> Self {
        let interval_s = interval_s.max(1) as i64;
        let span = (end - start).num_seconds().max(0) + interval_s;
        let step_s = interval_s.max((span + MAX_GRID as i64 - 1) / MAX_GRID as i64);
        let points = if enabled {
            ((span + step_s - 1) / step_s).max(1) as usize
        } else {
            0
        };
        Grid {
            enabled,
            start,
            step_s,
            sums: vec![0.0; points],
            used: None,
        }
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn index(&self, ts: DateTime<Utc>) -> usize {
        let offset = (ts - self.start).num_seconds().max(0) / self.step_s;
        (offset as usize).min(self.sums.len() - 1)
    }

    /// The symbol's equity after a bar at `ts`.
    #[inline]
    fn record(&mut self, cursor: &mut GridCursor, ts: DateTime<Utc>, equity: f64) {
        let at = self.index(ts);
        self.used = Some(match self.used {
            None => (at, at),
            Some((lo, hi)) => (lo.min(at), hi.max(at)),
        });
        self.fill(cursor, at);
        cursor.last = equity;
    }

    fn fill(&mut self, cursor: &mut GridCursor, to: usize) {
        while cursor.filled < to {
            self.sums[cursor.filled] += cursor.last;
            cursor.filled += 1;
        }
    }

    /// The symbol is done: its final equity from its last bar on.
    fn close(&mut self, cursor: &mut GridCursor, final_equity: f64) {
        if self.enabled {
            cursor.last = final_equity;
            self.fill(cursor, self.sums.len());
        }
    }

    /// The portfolio's metrics and curve (`idle`: the cash of symbols without bars).
    fn portfolio(
        &self,
        capital: f64,
        idle: f64,
        trades: &TradeStats,
        exposed_bars: usize,
        bars: usize,
    ) -> (PerformanceMetrics, Vec<EquityPoint>) {
        let (lo, hi) = self.used.unwrap_or((0, 0));
        let mut stats = EquityStats::new(capital);
        let mut points = Vec::with_capacity(hi + 1 - lo);
        for (i, sum) in self.sums[lo..=hi].iter().enumerate() {
            let equity = sum + idle;
            stats.push(equity);
            let ts = self.start + TimeDelta::seconds((lo + i) as i64 * self.step_s);
            points.push(EquityPoint { ts, equity });
        }
        let step = Duration::from_secs(self.step_s as u64);
        let span = step * (hi + 1 - lo) as u32;
        let mut metrics = PerformanceMetrics::from_stats(&stats, trades, 0, step, span);
        metrics.exposure = (bars > 0).then(|| exposed_bars as f64 / bars as f64);
        (metrics, downsample(&points, MAX_EQUITY_POINTS))
    }
}
