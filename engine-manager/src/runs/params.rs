//! A run's parameters (CONTRACT.md §4), checked and resolved without I/O: the keys
//! each mode takes with their types and defaults, the config patch, the symbols'
//! default, the date range. What needs the database (which symbols exist, the span
//! of the bars) is handed in by the caller (`runs::prepare`), so every rule here is
//! unit-tested.
//!
//! Every mode also takes `start` and `end` (an extension of the contract, which
//! names them for backtests only): a screener or an alert scan as of a past date.

use chrono::{DateTime, Months, NaiveDate, NaiveTime, TimeDelta, Utc};
use engine_protocol::runs::RunMode;
use serde_json::{Map, Value};

/// The keys each mode takes.
const BACKTEST_KEYS: &[&str] = &[
    "symbols",
    "start",
    "end",
    "interval",
    "initial_capital",
    "fee_bps",
    "config",
];
const SCREENER_KEYS: &[&str] = &["symbols", "start", "end", "limit", "interval", "config"];
const ALERT_KEYS: &[&str] = &["symbols", "start", "end", "threshold", "interval", "config"];

pub const DEFAULT_INTERVAL: &str = "1d";
pub const DEFAULT_INITIAL_CAPITAL: f64 = 10_000.0;
pub const DEFAULT_FEE_BPS: f64 = 0.0;
pub const DEFAULT_LIMIT: u64 = 100;
/// The default span: the last two years of the bars there are.
const DEFAULT_SPAN_MONTHS: u32 = 24;

/// What is wrong with a run's parameters; the words go to the run's `error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown parameter '{key}' for a {mode} run; allowed: {}", allowed.join(", "))]
    UnknownKey {
        key: String,
        mode: RunMode,
        allowed: &'static [&'static str],
    },
    #[error("parameters.{key} must be {expected}, got {got}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        got: Value,
    },
    #[error("parameters.{key} must be a date (2024-01-31) or an RFC 3339 time (2024-01-31T00:00:00Z), got {got}")]
    BadDate { key: &'static str, got: Value },
    #[error("parameters.interval '{0}' is not a bar size; use a number and a unit, like 1m, 5m, 1h, 1d or 1w")]
    BadInterval(String),
    #[error(
        "parameters.symbols is empty; name at least one symbol, or leave it out for the default"
    )]
    EmptySymbols,
    #[error("unknown symbol{} {}: not in securities; symbols must be rows of securities (enginectl data generate or import adds them)", if .0.len() == 1 { "" } else { "s" }, .0.join(", "))]
    UnknownSymbols(Vec<String>),
    #[error("the strategy's config token '{0}' is not in securities, and a backtest without parameters.symbols runs over it; pass parameters.symbols, or add '{0}' to securities")]
    UnknownToken(String),
    #[error("no symbols to run over: securities has no active symbol; load market data first (enginectl data generate or import) or pass parameters.symbols")]
    NoSymbols,
    #[error(
        "the date range is empty: start {start} is after end {end}; start must be on or before end"
    )]
    EmptyRange {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("no {interval} bars for {symbols}{}", available_intervals(.available))]
    NoBars {
        interval: String,
        symbols: String,
        available: Vec<(String, i64)>,
    },
    #[error("no {interval} bars of {symbols} between {start} and {end}; the bars there are run from {first} to {last}")]
    NoBarsInRange {
        interval: String,
        symbols: String,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    },
}

fn available_intervals(available: &[(String, i64)]) -> String {
    if available.is_empty() {
        return "; market_bars has none of these symbols at any interval (load some with enginectl data generate or import)".to_string();
    }
    let list: Vec<String> = available
        .iter()
        .map(|(interval, n)| format!("{interval} ({n} symbol{})", if *n == 1 { "" } else { "s" }))
        .collect();
    format!("; the intervals with bars of them are: {}", list.join(", "))
}

/// The parameters of a run, checked; what is not given is `None` or its default.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub symbols: Option<Vec<String>>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub interval: String,
    pub interval_s: u64,
    pub initial_capital: f64,
    pub fee_bps: f64,
    pub limit: Option<u64>,
    pub threshold: Option<f64>,
    /// `parameters.config`: a JSON merge patch over the strategy's config.
    pub config_patch: Option<Value>,
}

/// The keys a mode takes.
pub fn allowed_keys(mode: RunMode) -> &'static [&'static str] {
    match mode {
        RunMode::Backtest | RunMode::Live => BACKTEST_KEYS,
        RunMode::Screener => SCREENER_KEYS,
        RunMode::Alert => ALERT_KEYS,
    }
}

/// Check `parameters` for a run in `mode`: unknown keys, types and ranges.
pub fn parse(mode: RunMode, parameters: &Value) -> Result<Requested, ParamError> {
    let empty = Map::new();
    let params = parameters.as_object().unwrap_or(&empty);
    let allowed = allowed_keys(mode);
    if let Some(key) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ParamError::UnknownKey {
            key: key.clone(),
            mode,
            allowed,
        });
    }
    let interval = match params.get("interval") {
        None => DEFAULT_INTERVAL.to_string(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => return Err(wrong("interval", "a bar size like \"1d\"", other)),
    };
    let interval_s =
        interval_seconds(&interval).ok_or_else(|| ParamError::BadInterval(interval.clone()))?;
    let limit = match params.get("limit") {
        None if mode == RunMode::Screener => Some(DEFAULT_LIMIT),
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n >= 1)
                .ok_or_else(|| wrong("limit", "a whole number of at least 1", v))?,
        ),
    };
    Ok(Requested {
        symbols: symbols(params.get("symbols"))?,
        start: date(params.get("start"), "start", DayEdge::Start)?,
        end: date(params.get("end"), "end", DayEdge::End)?,
        interval,
        interval_s,
        initial_capital: number(params, "initial_capital", "a number above 0", |x| x > 0.0)?
            .unwrap_or(DEFAULT_INITIAL_CAPITAL),
        fee_bps: number(
            params,
            "fee_bps",
            "a number of basis points from 0 to 10000",
            |x| (0.0..=10_000.0).contains(&x),
        )?
        .unwrap_or(DEFAULT_FEE_BPS),
        limit,
        threshold: number(params, "threshold", "a number", |_| true)?,
        config_patch: match params.get("config") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(wrong(
                    "config",
                    "an object (a JSON merge patch over the strategy's config)",
                    other,
                ))
            }
        },
    })
}

fn wrong(key: &'static str, expected: &'static str, got: &Value) -> ParamError {
    ParamError::WrongType {
        key,
        expected,
        got: got.clone(),
    }
}

fn number(
    params: &Map<String, Value>,
    key: &'static str,
    expected: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Result<Option<f64>, ParamError> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite() && ok(*x))
            .map(Some)
            .ok_or_else(|| wrong(key, expected, v)),
    }
}

fn symbols(value: Option<&Value>) -> Result<Option<Vec<String>>, ParamError> {
    const EXPECTED: &str = "an array of symbols, like [\"AAPL\", \"MSFT\"]";
    let Some(value) = value else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(wrong("symbols", EXPECTED, value));
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str().map(str::trim) {
            Some(s) if !s.is_empty() => {
                if !out.iter().any(|o| o == s) {
                    out.push(s.to_string());
                }
            }
            _ => return Err(wrong("symbols", EXPECTED, value)),
        }
    }
    if out.is_empty() {
        return Err(ParamError::EmptySymbols);
    }
    Ok(Some(out))
}

#[derive(Clone, Copy)]
enum DayEdge {
    Start,
    End,
}

/// A date (`2024-01-31`: its first instant for `start`, its last for `end`) or an
/// RFC 3339 time.
fn date(
    value: Option<&Value>,
    key: &'static str,
    edge: DayEdge,
) -> Result<Option<DateTime<Utc>>, ParamError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let bad = || ParamError::BadDate {
        key,
        got: value.clone(),
    };
    let text = value.as_str().map(str::trim).ok_or_else(bad)?;
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad())?;
    let start = day.and_time(NaiveTime::MIN).and_utc();
    Ok(Some(match edge {
        DayEdge::Start => start,
        DayEdge::End => start + TimeDelta::days(1) - TimeDelta::microseconds(1),
    }))
}

/// `1m` → 60, `1d` → 86400 (units `s`, `m`, `h`, `d`, `w`); `None` if not a bar size.
pub fn interval_seconds(interval: &str) -> Option<u64> {
    let split = interval.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = interval.split_at(split);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let unit_s = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(unit_s)
}

/// The config a run uses: the strategy's with `patch` merged in (RFC 7386).
pub fn merged_config(strategy_config: &Value, patch: Option<&Value>) -> Value {
    let mut config = strategy_config.clone();
    if let Some(patch) = patch {
        json_patch::merge(&mut config, patch);
    }
    config
}

/// Where a run's symbols come from when `parameters.symbols` is not given.
#[derive(Debug, Clone, PartialEq)]
pub enum DefaultSymbols {
    /// A backtest of a strategy whose config names a `token`: that symbol.
    Token(String),
    /// Every active symbol of `securities`.
    EveryActive,
}

pub fn default_symbols(mode: RunMode, config: &Value) -> DefaultSymbols {
    match (mode, config.get("token").and_then(Value::as_str)) {
        (RunMode::Backtest, Some(token)) if !token.trim().is_empty() => {
            DefaultSymbols::Token(token.trim().to_string())
        }
        _ => DefaultSymbols::EveryActive,
    }
}

/// The symbols of `asked` that `known` does not have, in the order asked.
pub fn unknown_symbols(asked: &[String], known: &[String]) -> Vec<String> {
    asked
        .iter()
        .filter(|s| !known.contains(s))
        .cloned()
        .collect()
}

/// The date range of a run from what was asked and the span of the bars there are
/// (`first`, `last`): by default the last two years of them.
pub fn date_range(
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    (_first, last): (DateTime<Utc>, DateTime<Utc>),
) -> Result<(DateTime<Utc>, DateTime<Utc>), ParamError> {
    let end = end.unwrap_or(last);
    let start = start.unwrap_or_else(|| {
        end.checked_sub_months(Months::new(DEFAULT_SPAN_MONTHS))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    });
    if start > end {
        return Err(ParamError::EmptyRange { start, end });
    }
    Ok((start, end))
}

/// `AAPL`, `AAPL, MSFT and 3 more`: symbols named in a message.
pub fn describe_symbols(symbols: &[String]) -> String {
    match symbols {
        [] => "no symbols".to_string(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [a, b, rest @ ..] => format!("{a}, {b} and {} more", rest.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn err(mode: RunMode, params: Value) -> String {
        parse(mode, &params).unwrap_err().to_string()
    }

    #[test]
    fn defaults_per_mode() {
        let b = parse(RunMode::Backtest, &json!({})).unwrap();
        assert_eq!(b.interval, "1d");
        assert_eq!(b.interval_s, 86_400);
        assert_eq!(b.initial_capital, 10_000.0);
        assert_eq!(b.fee_bps, 0.0);
        assert_eq!(
            (b.limit, b.threshold, b.symbols, b.config_patch),
            (None, None, None, None)
        );
        assert_eq!(
            parse(RunMode::Screener, &json!({})).unwrap().limit,
            Some(100)
        );
        assert_eq!(parse(RunMode::Alert, &json!({})).unwrap().limit, None);
    }

    #[test]
    fn values_given_are_taken() {
        let b = parse(
            RunMode::Backtest,
            &json!({"symbols": ["AAPL", " MSFT", "AAPL"], "start": "2024-01-01", "end": "2024-06-30",
                    "interval": "1m", "initial_capital": 5000, "fee_bps": 2.5, "config": {"fast": 3}}),
        )
        .unwrap();
        assert_eq!(
            b.symbols,
            Some(vec!["AAPL".to_string(), "MSFT".to_string()])
        );
        assert_eq!(b.start, Some(t("2024-01-01T00:00:00Z")));
        assert_eq!(b.end, Some(t("2024-06-30T23:59:59.999999Z")));
        assert_eq!(
            (b.interval_s, b.initial_capital, b.fee_bps),
            (60, 5000.0, 2.5)
        );
        assert_eq!(b.config_patch, Some(json!({"fast": 3})));
        let s = parse(
            RunMode::Screener,
            &json!({"limit": 5, "end": "2024-06-30T12:00:00+02:00"}),
        )
        .unwrap();
        assert_eq!(s.limit, Some(5));
        assert_eq!(s.end, Some(t("2024-06-30T10:00:00Z")));
        assert_eq!(
            parse(RunMode::Alert, &json!({"threshold": 70}))
                .unwrap()
                .threshold,
            Some(70.0)
        );
    }

    #[test]
    fn unknown_keys_name_the_allowed_ones() {
        assert_eq!(
            err(RunMode::Screener, json!({"symbol": ["A"]})),
            "unknown parameter 'symbol' for a screener run; allowed: symbols, start, end, limit, interval, config"
        );
        assert!(err(RunMode::Backtest, json!({"limit": 3})).contains("for a backtest run; allowed: symbols, start, end, interval, initial_capital, fee_bps, config"));
        assert!(err(RunMode::Alert, json!({"fee_bps": 3}))
            .contains("allowed: symbols, start, end, threshold, interval, config"));
    }

    #[test]
    fn wrong_types_say_what_would_be_right() {
        let cases = [
            (RunMode::Backtest, json!({"symbols": "AAPL"}), "parameters.symbols must be an array of symbols, like [\"AAPL\", \"MSFT\"], got \"AAPL\""),
            (RunMode::Backtest, json!({"symbols": [1]}), "parameters.symbols must be an array of symbols"),
            (RunMode::Backtest, json!({"symbols": []}), "parameters.symbols is empty"),
            (RunMode::Backtest, json!({"fee_bps": "5"}), "parameters.fee_bps must be a number of basis points from 0 to 10000, got \"5\""),
            (RunMode::Backtest, json!({"fee_bps": -1}), "from 0 to 10000, got -1"),
            (RunMode::Backtest, json!({"initial_capital": 0}), "parameters.initial_capital must be a number above 0, got 0"),
            (RunMode::Screener, json!({"limit": 0}), "parameters.limit must be a whole number of at least 1, got 0"),
            (RunMode::Screener, json!({"limit": 2.5}), "got 2.5"),
            (RunMode::Alert, json!({"threshold": "high"}), "parameters.threshold must be a number, got \"high\""),
            (RunMode::Backtest, json!({"start": "yesterday"}), "parameters.start must be a date (2024-01-31) or an RFC 3339 time (2024-01-31T00:00:00Z), got \"yesterday\""),
            (RunMode::Backtest, json!({"end": 20240101}), "parameters.end must be a date"),
            (RunMode::Backtest, json!({"interval": "daily"}), "parameters.interval 'daily' is not a bar size; use a number and a unit, like 1m, 5m, 1h, 1d or 1w"),
            (RunMode::Backtest, json!({"interval": 1}), "parameters.interval must be a bar size like \"1d\", got 1"),
            (RunMode::Backtest, json!({"config": [1]}), "parameters.config must be an object (a JSON merge patch over the strategy's config), got [1]"),
        ];
        for (mode, params, want) in cases {
            let got = err(mode, params.clone());
            assert!(got.contains(want), "{params}: {got}");
        }
    }

    #[test]
    fn bar_sizes() {
        assert_eq!(interval_seconds("1m"), Some(60));
        assert_eq!(interval_seconds("15m"), Some(900));
        assert_eq!(interval_seconds("4h"), Some(14_400));
        assert_eq!(interval_seconds("1w"), Some(604_800));
        for bad in ["", "d", "0d", "1y", "1.5h", "-1d"] {
            assert_eq!(interval_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_config_patch_merges_over_the_strategys_config() {
        let base = json!({"token": "AAPL", "fast": 5, "slow": 20});
        assert_eq!(
            merged_config(
                &base,
                Some(&json!({"fast": 3, "slow": null, "extra": true}))
            ),
            json!({"token": "AAPL", "fast": 3, "extra": true})
        );
        assert_eq!(merged_config(&base, None), base);
    }

    #[test]
    fn default_symbols_follow_the_mode_and_the_token() {
        let with_token = json!({"token": "AAPL"});
        assert_eq!(
            default_symbols(RunMode::Backtest, &with_token),
            DefaultSymbols::Token("AAPL".into())
        );
        assert_eq!(
            default_symbols(RunMode::Screener, &with_token),
            DefaultSymbols::EveryActive
        );
        assert_eq!(
            default_symbols(RunMode::Alert, &with_token),
            DefaultSymbols::EveryActive
        );
        assert_eq!(
            default_symbols(RunMode::Backtest, &json!({})),
            DefaultSymbols::EveryActive
        );
        let asked = vec!["A".to_string(), "B".to_string(), "C".to_string()];
        assert_eq!(unknown_symbols(&asked, &["B".to_string()]), vec!["A", "C"]);
        assert_eq!(
            ParamError::UnknownSymbols(vec!["ZZZ".into()]).to_string(),
            "unknown symbol ZZZ: not in securities; symbols must be rows of securities (enginectl data generate or import adds them)"
        );
    }

    #[test]
    fn date_ranges_default_to_the_last_two_years_of_bars() {
        let span = (t("2020-01-01T00:00:00Z"), t("2024-06-30T00:00:00Z"));
        assert_eq!(
            date_range(None, None, span),
            Ok((t("2022-06-30T00:00:00Z"), t("2024-06-30T00:00:00Z")))
        );
        assert_eq!(
            date_range(Some(t("2024-01-01T00:00:00Z")), None, span),
            Ok((t("2024-01-01T00:00:00Z"), t("2024-06-30T00:00:00Z")))
        );
        let reversed = date_range(
            Some(t("2024-05-01T00:00:00Z")),
            Some(t("2024-01-01T00:00:00Z")),
            span,
        );
        assert_eq!(
            reversed.unwrap_err().to_string(),
            "the date range is empty: start 2024-05-01 00:00:00 UTC is after end 2024-01-01 00:00:00 UTC; start must be on or before end"
        );
    }

    #[test]
    fn missing_bars_name_the_intervals_there_are() {
        let e = ParamError::NoBars {
            interval: "1h".into(),
            symbols: describe_symbols(&["A".into(), "B".into(), "C".into()]),
            available: vec![("1d".into(), 3), ("1m".into(), 1)],
        };
        assert_eq!(
            e.to_string(),
            "no 1h bars for A, B and 1 more; the intervals with bars of them are: 1d (3 symbols), 1m (1 symbol)"
        );
    }
}
