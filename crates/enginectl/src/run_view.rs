//! What `enginectl run`, `runs` and `run-show` print about a run: the progress line
//! (a bar, percent, items/s, ETA, current symbol) and a finished run's result as
//! tables — a backtest's summary, metrics and per-symbol metrics, a screener's
//! ranked results, an alert run's alerts.

use super::table::{self, Align, Table, NONE};
use engine_protocol::runs::{RunEvent, RunState};
use engine_store::runs_api::{RunItem, RunRecord};
use serde_json::{Map, Value};

/// Where a run is, from its row or one of its events.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub state: RunState,
    pub stage: Option<String>,
    pub percent: f64,
    pub completed: Option<i64>,
    pub total: Option<i64>,
    pub items_per_second: Option<f64>,
    pub eta_s: Option<f64>,
    pub current: Option<String>,
}

impl From<&RunRecord> for Progress {
    fn from(r: &RunRecord) -> Progress {
        Progress {
            state: r.state,
            stage: r.stage.clone(),
            percent: r.progress_percent,
            completed: r.completed_items,
            total: r.total_items,
            items_per_second: r.items_per_second,
            eta_s: r.eta_s,
            current: r.current_item.clone(),
        }
    }
}

impl From<&RunEvent> for Progress {
    fn from(e: &RunEvent) -> Progress {
        Progress {
            state: e.state,
            stage: e.stage.clone(),
            percent: e.progress_percent,
            completed: e.completed_items,
            total: e.total_items,
            items_per_second: e.metrics.items_per_second,
            eta_s: e.metrics.eta_s,
            current: e.current_item.clone(),
        }
    }
}

/// Width of the bar in characters.
const BAR: usize = 24;

/// `[#########---------]  42.0%  21/50  7.0/s  ETA 3.0s  MSFT  evaluating`.
pub fn progress_line(p: &Progress) -> String {
    let percent = if p.percent.is_finite() {
        p.percent.clamp(0.0, 100.0)
    } else {
        0.0
    };
    let filled = ((percent / 100.0) * BAR as f64).round() as usize;
    let mut parts = vec![format!(
        "[{}{}] {percent:5.1}%",
        "#".repeat(filled),
        "-".repeat(BAR - filled)
    )];
    match (p.completed, p.total) {
        (Some(done), Some(total)) => parts.push(format!("{done}/{total}")),
        (None, Some(total)) => parts.push(format!("0/{total}")),
        _ => {}
    }
    if let Some(rate) = p.items_per_second.filter(|r| r.is_finite()) {
        parts.push(format!("{rate:.1}/s"));
    }
    if let Some(eta) = p.eta_s {
        parts.push(format!("ETA {}", table::duration(eta)));
    }
    if let Some(current) = p.current.as_deref().filter(|c| !c.is_empty()) {
        parts.push(current.to_string());
    }
    let stage = p.stage.as_deref().unwrap_or(p.state.as_str());
    parts.push(stage.to_string());
    parts.join("  ")
}

/// A number as a table shows it: `-` for null, up to 4 decimals.
pub fn number(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
            Some(x) => format!("{x:.4}"),
            None => n.to_string(),
        },
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => NONE.to_string(),
        Some(other) => other.to_string(),
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => NONE.to_string(),
        Some(other) => other.to_string(),
    }
}

/// The result of a finished run as text: tables by mode; anything unexpected as
/// JSON, so nothing is hidden.
pub fn result_text(mode: &str, result: &Value) -> String {
    let mut out = String::new();
    match mode {
        "backtest" => backtest(result, &mut out),
        "screener" => screener(result, &mut out),
        "alert" => alerts(result, &mut out),
        _ => {}
    }
    if out.is_empty() {
        out = serde_json::to_string_pretty(result).unwrap_or_default();
        out.push('\n');
    }
    out
}

/// The contract's eleven metrics, in its order.
const METRICS: [&str; 11] = [
    "total_return",
    "cagr",
    "sharpe_ratio",
    "sortino_ratio",
    "calmar_ratio",
    "max_drawdown",
    "average_return",
    "hit_rate",
    "profit_factor",
    "expectancy",
    "exposure",
];

fn backtest(result: &Value, out: &mut String) {
    if let Some(Value::Object(summary)) = result.get("summary") {
        out.push_str("summary\n");
        let mut t = Table::new(&[("FIELD", Align::Left), ("VALUE", Align::Right)]);
        for (k, v) in summary {
            let shown = if v.is_object() || v.is_array() {
                v.to_string()
            } else {
                number(Some(v))
            };
            t.push(vec![k.clone(), shown]);
        }
        out.push_str(&t.render());
    }
    if let Some(Value::Object(metrics)) = result.get("performance_metrics") {
        out.push_str("\nperformance metrics\n");
        let mut t = Table::new(&[("METRIC", Align::Left), ("VALUE", Align::Right)]);
        for name in ordered_keys(metrics) {
            t.push(vec![name.clone(), number(metrics.get(&name))]);
        }
        out.push_str(&t.render());
    }
    let per_symbol = per_symbol_rows(result.get("per_symbol"));
    if !per_symbol.is_empty() {
        out.push_str("\nper symbol\n");
        let mut t = Table::new(&[
            ("SYMBOL", Align::Left),
            ("TOTAL RETURN", Align::Right),
            ("SHARPE", Align::Right),
            ("MAX DD", Align::Right),
            ("HIT RATE", Align::Right),
            ("TRADES", Align::Right),
        ]);
        for (symbol, m) in per_symbol {
            t.push(vec![
                symbol,
                number(m.get("total_return")),
                number(m.get("sharpe_ratio")),
                number(m.get("max_drawdown")),
                number(m.get("hit_rate")),
                number(m.get("trades")),
            ]);
        }
        out.push_str(&t.render());
    }
}

/// The contract's metrics first, in its order, then any others.
fn ordered_keys(metrics: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = METRICS
        .iter()
        .filter(|k| metrics.contains_key(**k))
        .map(|k| k.to_string())
        .collect();
    keys.extend(
        metrics
            .keys()
            .filter(|k| !METRICS.contains(&k.as_str()))
            .cloned(),
    );
    keys
}

/// `per_symbol` as (symbol, metrics): an object by symbol, or an array of objects
/// with a `symbol`.
fn per_symbol_rows(v: Option<&Value>) -> Vec<(String, Map<String, Value>)> {
    let flat = |m: &Map<String, Value>| -> Map<String, Value> {
        // Metrics may sit under `performance_metrics` or at the top.
        let mut all = m.clone();
        if let Some(Value::Object(inner)) = m.get("performance_metrics") {
            all.extend(inner.clone());
        }
        all
    };
    match v {
        Some(Value::Object(by_symbol)) => by_symbol
            .iter()
            .filter_map(|(s, m)| m.as_object().map(|m| (s.clone(), flat(m))))
            .collect(),
        Some(Value::Array(rows)) => rows
            .iter()
            .filter_map(Value::as_object)
            .map(|m| (text(m.get("symbol")), flat(m)))
            .collect(),
        _ => Vec::new(),
    }
}

fn screener(result: &Value, out: &mut String) {
    let Some(Value::Array(ranked)) = result.get("ranked_results") else {
        return;
    };
    let universe = number(result.get("universe_size"));
    out.push_str(&format!(
        "ranked results: {} of a universe of {universe}\n",
        ranked.len()
    ));
    let mut t = Table::new(&[
        ("RANK", Align::Right),
        ("SYMBOL", Align::Left),
        ("SCORE", Align::Right),
        ("PRICE", Align::Right),
        ("SECTOR", Align::Left),
    ]);
    for (i, r) in ranked.iter().enumerate() {
        t.push(vec![
            (i + 1).to_string(),
            text(r.get("symbol")),
            number(r.get("score")),
            number(r.get("current_price")),
            text(r.get("sector")),
        ]);
    }
    out.push_str(&t.render());
}

fn alerts(result: &Value, out: &mut String) {
    let Some(Value::Array(alerts)) = result.get("alerts") else {
        return;
    };
    let monitored = number(result.get("symbols_monitored"));
    out.push_str(&format!(
        "alerts: {} from {monitored} symbols monitored\n",
        alerts.len()
    ));
    if alerts.is_empty() {
        return;
    }
    let mut t = Table::new(&[
        ("SYMBOL", Align::Left),
        ("TYPE", Align::Left),
        ("PRIORITY", Align::Left),
        ("MESSAGE", Align::Left),
    ]);
    for a in alerts {
        t.push(vec![
            text(a.get("symbol")),
            text(a.get("type")),
            text(a.get("priority")),
            table::shorten(&text(a.get("message")), 80),
        ]);
    }
    out.push_str(&t.render());
}

/// A run's items as a table.
pub fn items_table(items: &[RunItem]) -> String {
    let mut t = Table::new(&[
        ("POS", Align::Right),
        ("ITEM", Align::Left),
        ("PASSED", Align::Left),
        ("SCORE", Align::Right),
        ("PROCESSED", Align::Left),
    ]);
    for i in items {
        t.push(vec![
            i.position.map_or(NONE.to_string(), |p| p.to_string()),
            i.item.clone(),
            i.passed.map_or(NONE.to_string(), |p| p.to_string()),
            i.score.map_or(NONE.to_string(), |s| format!("{s:.2}")),
            table::timestamp(i.processed_at),
        ]);
    }
    t.render()
}

/// Runs as a table (`enginectl runs`).
pub fn runs_table(runs: &[RunRecord]) -> String {
    let mut t = Table::new(&[
        ("RUN", Align::Left),
        ("STRATEGY", Align::Left),
        ("MODE", Align::Left),
        ("STATE", Align::Left),
        ("PROGRESS", Align::Right),
        ("ITEMS", Align::Right),
        ("QUEUE", Align::Right),
        ("PRIORITY", Align::Left),
        ("CREATED", Align::Left),
        ("TOOK", Align::Right),
        ("ERROR", Align::Left),
    ]);
    for r in runs {
        let items = match (r.completed_items, r.total_items) {
            (Some(d), Some(t)) => format!("{d}/{t}"),
            (None, Some(t)) => format!("0/{t}"),
            _ => NONE.to_string(),
        };
        let took = match (r.started_at, r.finished_at) {
            (Some(s), Some(f)) => table::duration((f - s).as_seconds_f64()),
            (Some(s), None) => table::duration((chrono::Utc::now() - s).as_seconds_f64()),
            _ => NONE.to_string(),
        };
        t.push(vec![
            r.id.to_string(),
            r.strategy.clone(),
            r.mode.to_string(),
            r.state.to_string(),
            format!("{:.1}%", r.progress_percent),
            items,
            r.position_in_queue
                .map_or(NONE.to_string(), |p| p.to_string()),
            r.priority.to_string(),
            table::timestamp(r.created_at),
            took,
            r.error
                .as_deref()
                .map_or(String::new(), |e| table::shorten(e, 60)),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn progress(percent: f64) -> Progress {
        Progress {
            state: RunState::Running,
            stage: Some("evaluating".into()),
            percent,
            completed: Some(21),
            total: Some(50),
            items_per_second: Some(7.0),
            eta_s: Some(3.0),
            current: Some("MSFT".into()),
        }
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            progress_line(&progress(50.0)),
            "[############------------]  50.0%  21/50  7.0/s  ETA 3.0s  MSFT  evaluating"
        );
        let mut queued = progress(0.0);
        queued.state = RunState::Queued;
        queued.stage = None;
        queued.completed = None;
        queued.total = None;
        queued.items_per_second = None;
        queued.eta_s = None;
        queued.current = None;
        assert_eq!(
            progress_line(&queued),
            "[------------------------]   0.0%  queued"
        );
        assert!(progress_line(&progress(250.0)).contains("100.0%"));
    }

    #[test]
    fn results_as_tables() {
        let backtest = json!({
            "summary": {"symbols_processed": 2, "bars": 1000, "trades": 12},
            "performance_metrics": {"sharpe_ratio": 1.23456, "total_return": 0.1, "profit_factor": null},
            "per_symbol": {"AAPL": {"total_return": 0.2, "sharpe_ratio": 1.5, "trades": 7}},
        });
        let text = result_text("backtest", &backtest);
        assert!(text.contains("symbols_processed"), "{text}");
        let metrics = text.split("performance metrics").nth(1).unwrap();
        assert!(metrics.find("total_return").unwrap() < metrics.find("sharpe_ratio").unwrap());
        assert!(text.contains("1.2346"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("profit_factor") && l.ends_with(" -")),
            "{text}"
        );
        assert!(text.contains("AAPL"), "{text}");
        let screener = json!({"ranked_results": [
            {"symbol": "NVDA", "score": 91.5, "current_price": 480.1, "sector": "Technology"},
            {"symbol": "AAPL", "score": 80, "current_price": 190, "sector": null}],
            "universe_size": 500});
        let text = result_text("screener", &screener);
        assert!(
            text.starts_with("ranked results: 2 of a universe of 500"),
            "{text}"
        );
        assert!(text.contains("   1  NVDA    91.5000"), "{text}");
        let alert = json!({"alerts": [{"symbol": "TSLA", "type": "signal", "priority": "high",
                           "message": "crossed above"}], "symbols_monitored": 3});
        let text = result_text("alert", &alert);
        assert!(
            text.contains("TSLA") && text.contains("crossed above"),
            "{text}"
        );
        // Something unexpected is shown as JSON.
        assert!(result_text("backtest", &json!({"x": 1})).contains("\"x\": 1"));
    }
}
