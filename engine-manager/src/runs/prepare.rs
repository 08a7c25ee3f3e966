//! Before a run's process starts: its parameters checked and resolved against the
//! database (`params` decides; this module asks `securities` and `market_bars`),
//! and the COPY of its bars from PostgreSQL into `{runs_dir}/{run_id}.bars` begun (a
//! large run's in two parts, the second in `{run_id}.bars.1`, by two COPYs at once).
//! The process starts while the COPY goes on and reads the file as it grows.

use super::params::{self, DefaultSymbols, ParamError};
use crate::Shared;
use chrono::{DateTime, Utc};
use engine_protocol::runs::{self as proto, RunInput, RunMode, RunSymbol};
use engine_store::runs::{self as store, BarsCopy, CopyBarsError, RunRow, Security};
use std::path::{Path, PathBuf};

/// Why a run could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The run's own fault: it ends `error` with these words.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The database is away or failed: tried again.
    #[error("cannot read the run's market data")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bars(#[from] CopyBarsError),
    /// A secret reference of the config cannot be resolved: the run's own fault.
    #[error("the run's process was not started")]
    Secrets(#[source] crate::secrets::SecretsError),
}

/// A prepared run: what its process gets on stdin (the config's secret references
/// resolved), the config as the run's row keeps it (references as they are), and
/// the COPY of its bars under way.
pub struct Prepared {
    pub input: RunInput,
    pub stored_config: serde_json::Value,
    pub copy: BarsCopy,
}

/// Check and resolve `row`'s parameters and its config's secret references, begin
/// the COPY of its bars into its bars file, and return what its process gets on
/// stdin, with the COPY under way.
pub async fn prepare(
    shared: &Shared,
    row: &RunRow,
    runs_dir: &Path,
) -> Result<Prepared, PrepareError> {
    let pool = &shared.pool;
    let req = params::parse(row.mode, &row.parameters)?;
    let stored_config = params::merged_config(&row.strategy_config, req.config_patch.as_ref());
    let config = shared
        .secrets
        .resolve(&stored_config)
        .await
        .map_err(PrepareError::Secrets)?
        .config;
    let securities = symbols(shared, row, &req, &config).await?;
    let names: Vec<String> = securities.iter().map(|s| s.symbol.clone()).collect();
    let Some(span) = store::bars_span(pool, &names, &req.interval).await? else {
        return Err(ParamError::NoBars {
            interval: req.interval.clone(),
            symbols: params::describe_symbols(&names),
            available: store::intervals_with_bars(pool, &names).await?,
        }
        .into());
    };
    let (start, end) = params::date_range(req.start, req.end, span)?;
    // Without an `end` the range holds the last bar there is: no need to ask.
    let asked_range = req.end.is_some();
    if asked_range && !store::bars_exist(pool, &names, &req.interval, start, end).await? {
        return Err(ParamError::NoBarsInRange {
            interval: req.interval.clone(),
            symbols: params::describe_symbols(&names),
            start,
            end,
            first: span.0,
            last: span.1,
        }
        .into());
    }
    let bars = BarsAsked {
        names: &names,
        interval: &req.interval,
        interval_s: req.interval_s,
        range: (start, end),
        span,
    };
    let (bars_path, more_bars_paths, copy) = start_copy(shared, row.id, runs_dir, &bars).await?;
    let lease_epoch = engine_store::orders::run_lease_epoch(pool, row.id).await?;
    let input = RunInput {
        run_id: row.id,
        strategy_id: row.strategy_id,
        name: row.name.clone(),
        strategy_type: row.strategy_type.clone(),
        mode: row.mode,
        config,
        symbols: securities
            .into_iter()
            .map(|s| RunSymbol {
                symbol: s.symbol,
                name: s.name,
                sector: s.sector,
            })
            .collect(),
        interval: req.interval,
        interval_s: req.interval_s,
        initial_capital: req.initial_capital,
        fee_bps: req.fee_bps,
        limit: req.limit,
        threshold: req.threshold,
        start,
        end,
        bars_path,
        more_bars_paths,
        outbox_path: proto::outbox_path(runs_dir, row.id),
        progress_interval_ms: shared.config.run_progress_interval.as_millis() as u64,
        lease_epoch: lease_epoch.unwrap_or(0),
        // A backtest's fills go to `strategy_orders` at its end (screeners and
        // alerts place no orders).
        orders_path: (row.mode == RunMode::Backtest).then(|| proto::orders_path(runs_dir, row.id)),
    };
    Ok(Prepared {
        input,
        stored_config,
        copy,
    })
}

/// The bars a run reads: its symbols (in the file's order) and interval, the range
/// asked and the span of the bars there are.
struct BarsAsked<'a> {
    names: &'a [String],
    interval: &'a str,
    interval_s: u64,
    range: (DateTime<Utc>, DateTime<Utc>),
    span: (DateTime<Utc>, DateTime<Utc>),
}

/// Begin the COPY of a run's bars, in one part or `--run-copy-parts`: the first
/// file's path, the others', and the COPY under way.
async fn start_copy(
    shared: &Shared,
    run_id: uuid::Uuid,
    runs_dir: &Path,
    bars: &BarsAsked<'_>,
) -> Result<(PathBuf, Vec<PathBuf>, BarsCopy), PrepareError> {
    let ((start, end), span) = (bars.range, bars.span);
    let parts = bars_parts(
        bars.names.len(),
        start.max(span.0),
        end.min(span.1),
        bars.interval_s,
        shared.config.run_copy_parts as usize,
    );
    let mut paths = vec![proto::bars_path(runs_dir, run_id)];
    paths.extend((1..parts).map(|part| proto::bars_part_path(runs_dir, run_id, part)));
    let parts: Vec<_> = store::split_bars(bars.names, start, end, span, parts)
        .into_iter()
        .zip(paths.iter().cloned())
        .collect();
    let copy = store::start_bars_copies(&shared.pool, bars.interval, &parts)
        .await
        .map_err(|err| match err {
            // The database away is tried again, like every other read here.
            CopyBarsError::Database(err) => PrepareError::Database(err),
            err => PrepareError::Bars(err),
        })?;
    let first = paths.remove(0);
    Ok((first, paths, copy))
}

/// Bars (at most, as the span and the interval give them) from which a run's COPY
/// is split in parts: one COPY of the 1M one-minute bars of two years takes
/// PostgreSQL 0.8 s of one core here, two of half as many take it about half that
/// on two cores, while a small run is not worth a second connection.
const BARS_PER_PART: u64 = 150_000;

/// How many parts a run's bars are copied in: one, or `most` (`--run-copy-parts`,
/// at most [`proto::MAX_BARS_PARTS`]) for a run of at least twice [`BARS_PER_PART`]
/// bars at most.
fn bars_parts(
    symbols: usize,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    interval_s: u64,
    most: usize,
) -> usize {
    let per_symbol = (end - start).num_seconds().max(0) as u64 / interval_s.max(1) + 1;
    let bars = per_symbol.saturating_mul(symbols as u64);
    if bars >= 2 * BARS_PER_PART {
        most.clamp(1, proto::MAX_BARS_PARTS)
    } else {
        1
    }
}

/// The run's symbols with what `securities` says of them, in the order of the bars
/// file: those asked (each must be in `securities`), else the mode's default.
async fn symbols(
    shared: &Shared,
    row: &RunRow,
    req: &params::Requested,
    config: &serde_json::Value,
) -> Result<Vec<Security>, PrepareError> {
    let pool = &shared.pool;
    let asked = match (&req.symbols, params::default_symbols(row.mode, config)) {
        (Some(asked), _) => asked.clone(),
        (None, DefaultSymbols::Token(token)) => {
            let found = store::securities(pool, std::slice::from_ref(&token)).await?;
            if found.is_empty() {
                return Err(ParamError::UnknownToken(token).into());
            }
            return Ok(found);
        }
        (None, DefaultSymbols::EveryActive) => {
            let every = store::active_securities(pool).await?;
            if every.is_empty() {
                return Err(ParamError::NoSymbols.into());
            }
            return Ok(every);
        }
    };
    let found = store::securities(pool, &asked).await?;
    let known: Vec<String> = found.iter().map(|s| s.symbol.clone()).collect();
    let unknown = params::unknown_symbols(&asked, &known);
    if !unknown.is_empty() {
        return Err(ParamError::UnknownSymbols(unknown).into());
    }
    Ok(found)
}
