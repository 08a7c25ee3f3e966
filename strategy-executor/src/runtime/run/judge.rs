//! Screener and alert runs: per symbol, the strategy's own judgement of its bar
//! history — [`strategy_sdk::Strategy::score`] (0–100) for a screener,
//! [`strategy_sdk::Strategy::signal`] on the latest bar for an alert scan.
//!
//! A symbol's bars are gathered as the file streams by (the latest
//! [`MAX_HISTORY`] of them at most) and judged when its last bar has been read.
//!
//! - Screener: an `item` per symbol with its score; `passed` when it has a score of
//!   at least the strategy's [`strategy_sdk::Strategy::passing_score`]. The result
//!   ranks the symbols that passed, best first (ties by symbol), at most `limit`;
//!   `scores` has every symbol that has a score.
//! - Alert: a signal fires when the strategy's signal fires on the latest bar and,
//!   with a `threshold`, the symbol's score is at least that threshold (a minimum
//!   score, 0–100: only strong enough signals become alerts). Each alert is an
//!   `alert` line the moment it is found (its `timestamp` the latest bar's time),
//!   then the symbol's `item` (`passed` = fired).

use super::outbox::Position;
use super::{RunError, RunScope, PROGRESS_EVERY_BARS};
use engine_protocol::runs::RunOutput;
use serde_json::{json, Map, Value};
use strategy_sdk::{Bar, Host, Signal, SignalPriority};

/// The most bars of one symbol a judgement is given (the latest).
pub const MAX_HISTORY: usize = 100_000;

/// What a judgement of one symbol gave.
enum Verdict {
    Screened {
        score: Option<f64>,
        passed: bool,
    },
    Alerted {
        score: Option<f64>,
        signal: Option<Signal>,
    },
}

/// A screener's symbol, for the ranking.
struct Screened {
    symbol: String,
    score: Option<f64>,
    passed: bool,
    current_price: f64,
    sector: Option<String>,
}

pub(super) fn screener(scope: &mut RunScope<'_>) -> Result<Value, RunError> {
    let mut screened = Vec::new();
    judge_all(
        scope,
        false,
        &mut |scope: &mut RunScope<'_>, position: usize, history: &[Bar], verdict: Verdict| {
            let Verdict::Screened { score, passed } = verdict else {
                return Ok(());
            };
            let symbol = &scope.input.symbols[position];
            let current_price = history.last().map(|bar| bar.close);
            scope.reporter.write(&RunOutput::Item {
                item: symbol.symbol.clone(),
                position: position as i64,
                passed: Some(passed),
                score,
                detail: Some(json!({"current_price": current_price, "bars": history.len()})),
            })?;
            if let Some(current_price) = current_price {
                screened.push(Screened {
                    symbol: symbol.symbol.clone(),
                    score,
                    passed,
                    current_price,
                    sector: symbol.sector.clone(),
                });
            }
            Ok(())
        },
    )?;
    scope.reporter.stage("ranking")?;
    let limit = scope.input.limit.unwrap_or(100) as usize;
    let scores: Map<String, Value> = screened
        .iter()
        .filter_map(|s| Some((s.symbol.clone(), json!(s.score?))))
        .collect();
    let mut ranked: Vec<&Screened> = screened.iter().filter(|s| s.passed).collect();
    ranked.sort_by(|a, b| {
        let (a_score, b_score) = (a.score.unwrap_or(0.0), b.score.unwrap_or(0.0));
        b_score
            .total_cmp(&a_score)
            .then_with(|| a.symbol.cmp(&b.symbol))
    });
    let passed = ranked.len();
    let ranked: Vec<Value> = ranked
        .into_iter()
        .take(limit)
        .map(|s| {
            json!({
                "symbol": s.symbol,
                "score": s.score,
                "current_price": s.current_price,
                "sector": s.sector,
            })
        })
        .collect();
    finish(
        scope,
        format!("{passed} of {} symbols passed", scope.input.symbols.len()),
    )?;
    Ok(json!({
        "ranked_results": ranked,
        "scores": scores,
        "universe_size": scope.input.symbols.len(),
        "passed": passed,
    }))
}

pub(super) fn alert(scope: &mut RunScope<'_>) -> Result<Value, RunError> {
    let mut alerts = Vec::new();
    let mut signals = Map::new();
    judge_all(
        scope,
        true,
        &mut |scope: &mut RunScope<'_>, position: usize, history: &[Bar], verdict: Verdict| {
            let Verdict::Alerted { score, signal } = verdict else {
                return Ok(());
            };
            let symbol = scope.input.symbols[position].symbol.clone();
            let timestamp = history.last().map(|bar| bar.ts);
            if let (Some(signal), Some(timestamp)) = (&signal, timestamp) {
                let priority = priority_word(signal.priority).to_string();
                scope.reporter.write(&RunOutput::Alert {
                    symbol: symbol.clone(),
                    kind: signal.kind.clone(),
                    message: signal.message.clone(),
                    priority: priority.clone(),
                    timestamp,
                })?;
                alerts.push(json!({
                    "symbol": symbol,
                    "type": signal.kind,
                    "message": signal.message,
                    "priority": priority,
                }));
            }
            signals.insert(
                symbol.clone(),
                json!({"signal": signal.as_ref().map(|s| &s.kind), "timestamp": timestamp}),
            );
            scope.reporter.write(&RunOutput::Item {
                item: symbol,
                position: position as i64,
                passed: Some(signal.is_some()),
                score,
                detail: Some(json!({"signal": signal, "bars": history.len()})),
            })?;
            Ok(())
        },
    )?;
    finish(scope, format!("{} alerts", alerts.len()))?;
    Ok(json!({
        "alerts": alerts,
        "signals": signals,
        "symbols_monitored": scope.input.symbols.len(),
        "threshold": scope.input.threshold,
    }))
}

fn priority_word(priority: SignalPriority) -> &'static str {
    match priority {
        SignalPriority::High => "high",
        SignalPriority::Normal => "normal",
        SignalPriority::Low => "low",
    }
}

/// The last progress line and the stage completed.
fn finish(scope: &mut RunScope<'_>, message: String) -> Result<(), RunError> {
    let at = Position {
        fraction: 1.0,
        completed_items: scope.input.symbols.len() as i64,
        current_item: None,
    };
    scope.reporter.final_progress(at, message)?;
    scope.reporter.stage_completed()?;
    Ok(())
}

/// What to do with each symbol's judgement: `(scope, position, history, verdict)`.
type OnVerdict<'f> =
    dyn FnMut(&mut RunScope<'_>, usize, &[Bar], Verdict) -> Result<(), RunError> + 'f;

/// Stream the bars, judge each symbol when its bars are all read, and hand the
/// verdict on; then the symbols without bars (judged on no history).
fn judge_all(
    scope: &mut RunScope<'_>,
    alerting: bool,
    on_verdict: &mut OnVerdict<'_>,
) -> Result<(), RunError> {
    let mut source = scope.open_bars()?;
    let mut done = vec![false; scope.input.symbols.len()];
    let mut history: Vec<Bar> = Vec::new();
    let mut current: Option<(String, usize)> = None;
    let mut completed = 0i64;
    let mut countdown = 1;
    scope.reporter.stage("evaluating")?;
    loop {
        let next = source.next_bar().map_err(|e| scope.bars_error(e))?;
        let changed = match (&next, &current) {
            (Some((symbol, _)), Some((name, _))) => symbol != name,
            _ => true,
        };
        if changed {
            let next = next.as_ref().map(|(symbol, _)| symbol.to_string());
            if let Some((_, position)) = current.take() {
                let verdict = judge(scope, position, &history, alerting)?;
                on_verdict(scope, position, &history, verdict)?;
                completed += 1;
                history.clear();
            }
            let Some(symbol) = next else {
                break;
            };
            let position = scope.position(&symbol)?;
            if std::mem::replace(&mut done[position], true) {
                return Err(RunError::Scattered { symbol });
            }
            scope.working_on(&symbol);
            current = Some((symbol, position));
        }
        if let Some((_, bar)) = next {
            if history.len() == 2 * MAX_HISTORY {
                history.drain(..MAX_HISTORY);
            }
            history.push(bar);
        }
        countdown -= 1;
        if changed || countdown == 0 {
            countdown = PROGRESS_EVERY_BARS;
            let at = Position {
                fraction: source.fraction(current.as_ref().map_or(0, |(_, position)| *position)),
                completed_items: completed,
                current_item: current.as_ref().map(|(symbol, _)| symbol.as_str()),
            };
            scope.reporter.progress(at)?;
        }
    }
    if completed == 0 && !scope.input.symbols.is_empty() {
        return Err(scope.no_bars());
    }
    for position in (0..done.len()).filter(|&p| !done[p]) {
        let verdict = judge(scope, position, &[], alerting)?;
        on_verdict(scope, position, &[], verdict)?;
    }
    Ok(())
}

/// One symbol's judgement, by a fresh instance of the strategy for it.
fn judge(
    scope: &RunScope<'_>,
    position: usize,
    history: &[Bar],
    alerting: bool,
) -> Result<Verdict, RunError> {
    let input = scope.input;
    let symbol = &input.symbols[position].symbol;
    scope.working_on(symbol);
    let mut host = Host::new(
        input.strategy_id,
        input.name.as_str(),
        scope.instance(symbol)?,
    );
    host.drop_custom_metrics();
    let score = host.score(history);
    if !alerting {
        let passed = score.is_some_and(|s| s >= host.strategy().passing_score());
        return Ok(Verdict::Screened { score, passed });
    }
    let strong_enough = match input.threshold {
        None => true,
        Some(threshold) => score.is_some_and(|s| s >= threshold),
    };
    let signal = host.signal(history).filter(|_| strong_enough);
    Ok(Verdict::Alerted { score, signal })
}
