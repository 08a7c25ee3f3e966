//! `enginectl data`: the market data runs read (CONTRACT.md §4, `securities` and
//! `market_bars`).
//!
//! - `data` / `data status`: what is loaded, per interval.
//! - `data generate`: seeded simulated bars for N symbols (`market_sim::bars`), with
//!   names and sectors in `securities`.
//! - `data import FILE...`: CSV files of bars ([`csv`]), each checked whole before a
//!   row is sent, so a bad line loads nothing of its file.
//!
//! Both loads go through `engine_store::market::load_bars` (binary COPY into
//! `market_bars`, replacing the stored bars of the span they cover), with a
//! [`progress::Progress`] bar, and end with rows and rows/s.

pub mod csv;
pub mod progress;

use crate::table::{Align, Table};
use crate::{Finished, Target};
use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use engine_protocol::runs::bars_file::{Bar, BarsWriter};
use engine_store::market::{self, BarSpan, BarsLoad, Security, COPY_CHUNK_BYTES};
use market_sim::bars::{self as sim, BarInterval, SimSecurity, SymbolNames};
use progress::{per_second, thousands, Progress};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: Option<DataCommand>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DataCommand {
    /// What is loaded: securities, and bars per interval (the default).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Simulated bars (seeded geometric Brownian motion, volume with bursts) for N
    /// symbols, and their names and sectors in `securities`. Replaces the stored
    /// bars of those symbols and interval within the span.
    Generate(GenerateArgs),
    /// Load CSV files of bars (`date,open,high,low,close,volume` or
    /// `timestamp,...`). Each file is checked whole first: a bad line names the file,
    /// the line and the column, and nothing of that file is loaded. Replaces the
    /// stored bars of the symbol and interval within the file's first and last time.
    Import(ImportArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// How many symbols.
    #[arg(long, default_value_t = 10)]
    pub symbols: usize,
    /// These symbols instead of --symbols (comma-separated). A symbol gets the same
    /// name, sector and price level under one seed whatever else is generated.
    #[arg(long, value_delimiter = ',', conflicts_with = "symbols")]
    pub tickers: Vec<String>,
    /// How generated symbols are named: `tickers` (KOVA, BRIX) or `numbered`
    /// (SYM0001).
    #[arg(long, value_enum, default_value = "tickers")]
    pub names: NamesArg,
    /// How far back the bars go (`2y`, `90days`, `6months`).
    #[arg(long, default_value = "2y", value_parser = humantime::parse_duration)]
    pub span: Duration,
    /// Bar size: 1m, 5m, 15m, 1h, 4h, 1d, 1w.
    #[arg(long, default_value = "1d")]
    pub interval: BarInterval,
    /// The last bar is the one holding this time (a date means its last moment, or
    /// an RFC 3339 time) [default: now].
    #[arg(long, value_parser = parse_end)]
    pub end: Option<DateTime<Utc>>,
    /// The same seed (and flags) gives the same bars.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// PostgreSQL connections loading at once. With 2, the securities and the
    /// deletion of the spans are committed first and each connection COPYs its
    /// share in its own transaction (a failure can leave part of the bars: run it
    /// again); with 1, everything is one transaction.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub jobs: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NamesArg {
    Tickers,
    Numbered,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// CSV files, one symbol each.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The symbol of the bars [default: the file's name without its extension, in
    /// capitals]. Only with one file.
    #[arg(long)]
    pub symbol: Option<String>,
    /// Bar size (1m, 1h, 1d, ...) [default: the shortest time between two rows].
    #[arg(long)]
    pub interval: Option<BarInterval>,
}

/// `--end`: a date (its last moment) or an RFC 3339 time.
fn parse_end(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let end = date.and_hms_opt(23, 59, 59).map(|t| t.and_utc());
        return end.ok_or_else(|| format!("'{text}' is out of range"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("'{text}' is neither a date (2025-12-31) nor an RFC 3339 time (2025-12-31T16:00:00Z)"))
}

/// Run `enginectl data …`.
pub async fn data(target: &Target, args: DataArgs) -> anyhow::Result<Finished> {
    match args.command.unwrap_or(DataCommand::Status { json: false }) {
        DataCommand::Status { json } => status(target, json).await,
        DataCommand::Generate(args) => generate(target, args).await,
        DataCommand::Import(args) => import(target, args).await,
    }
}

async fn status(target: &Target, json: bool) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let summary = market::summary(&pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(Finished::Ok);
    }
    println!(
        "securities: {} ({} active)",
        thousands(summary.securities as u64),
        thousands(summary.active as u64)
    );
    if summary.intervals.is_empty() {
        println!(
            "no bars loaded; try: enginectl data generate --symbols 500 --span 2y --interval 1d"
        );
        return Ok(Finished::Ok);
    }
    let mut table = Table::new(&[
        ("INTERVAL", Align::Left),
        ("SYMBOLS", Align::Right),
        ("BARS", Align::Right),
        ("FIRST", Align::Left),
        ("LAST", Align::Left),
    ]);
    for i in &summary.intervals {
        table.push(vec![
            i.interval.clone(),
            thousands(i.symbols as u64),
            thousands(i.bars as u64),
            timestamp(i.first),
            timestamp(i.last),
        ]);
    }
    print!("{}", table.render());
    Ok(Finished::Ok)
}

/// The symbols `generate` makes: `--tickers`, else `--symbols` names.
fn generated_symbols(args: &GenerateArgs) -> anyhow::Result<Vec<String>> {
    if !args.tickers.is_empty() {
        return args.tickers.iter().map(|t| checked_symbol(t)).collect();
    }
    if args.symbols == 0 {
        bail!("--symbols 0 generates nothing; give 1 or more (or --tickers A,B)");
    }
    let names = match args.names {
        NamesArg::Tickers => SymbolNames::Tickers,
        NamesArg::Numbered => SymbolNames::Numbered,
    };
    Ok(sim::symbols(args.symbols, names, args.seed))
}

async fn generate(target: &Target, args: GenerateArgs) -> anyhow::Result<Finished> {
    let sims: Vec<SimSecurity> = generated_symbols(&args)?
        .iter()
        .map(|s| SimSecurity::new(s, args.seed))
        .collect();
    let interval = args.interval;
    let count = sim::bars_in_span(args.span, interval);
    let first = sim::first_bar(args.end.unwrap_or_else(Utc::now), interval, count);
    let last = first + chrono::TimeDelta::seconds((interval.seconds() * (count - 1)) as i64);
    let securities: Vec<Security> = sims
        .iter()
        .map(|s| Security {
            symbol: s.symbol.clone(),
            name: Some(s.name.clone()),
            sector: Some(s.sector.to_string()),
        })
        .collect();
    let spans: Vec<BarSpan> = sims
        .iter()
        .map(|s| BarSpan {
            symbol: s.symbol.clone(),
            first,
            last,
        })
        .collect();
    let interval_word = interval.to_string();
    let rows = sims.iter().flat_map(|s| {
        s.bars(interval, first, count, args.seed)
            .map(move |bar| Ok((s.symbol.as_str(), bar)))
    });
    let pool = target.pool().await?;
    let symbols_word = match sims.len() {
        1 => sims[0].symbol.clone(),
        n => format!("{n} symbols"),
    };
    let label = format!("{symbols_word} × {} {interval_word} bars", thousands(count));
    let mut progress = Progress::new(label, count * sims.len() as u64);
    let load = BarsLoad {
        interval: &interval_word,
        securities: &securities,
        spans: &spans,
    };
    let outcome = load_in_parts(&pool, load, args.jobs, rows, &mut progress).await?;
    let elapsed = progress.finish();
    println!(
        "generated {} bars: {symbols_word} × {} {interval_word} bars ({} … {}), seed {}{}, in {}",
        thousands(outcome.bars),
        thousands(count),
        timestamp(first),
        timestamp(last),
        args.seed,
        replaced_words(outcome.replaced),
        rate_words(outcome.bars, elapsed)
    );
    Ok(Finished::Ok)
}

/// Load `rows` in one transaction (`jobs` 1), or on `jobs` connections at once,
/// each taking the next chunk of rows as it is ready, after the securities and the
/// deletion of the spans are committed (`market::prepare_parts`).
async fn load_in_parts<'s>(
    pool: &sqlx::PgPool,
    load: BarsLoad<'_>,
    jobs: u8,
    mut rows: impl Iterator<Item = anyhow::Result<(&'s str, Bar)>>,
    progress: &mut Progress,
) -> anyhow::Result<market::LoadOutcome> {
    if jobs <= 1 {
        return market::load_bars(
            pool,
            load,
            |w| fill_chunk(w, || rows.next().transpose()),
            |sent| progress.update(sent),
        )
        .await;
    }
    let replaced = market::prepare_parts(pool, load).await?;
    let rows = RefCell::new(rows);
    let encoded = Cell::new(0u64);
    let progress = RefCell::new(progress);
    let part = || {
        market::copy_bars(
            pool,
            load.interval,
            |w| {
                let n = fill_chunk(w, || rows.borrow_mut().next().transpose())?;
                encoded.set(encoded.get() + n);
                Ok(n)
            },
            |_| progress.borrow_mut().update(encoded.get()),
        )
    };
    let parts = futures_util::future::try_join_all((0..jobs).map(|_| part())).await?;
    Ok(market::LoadOutcome {
        bars: parts.iter().sum(),
        replaced,
    })
}

/// Encode rows from `next` until a COPY chunk is full or they run out; returns how
/// many.
fn fill_chunk<'s>(
    w: &mut BarsWriter<Vec<u8>>,
    mut next: impl FnMut() -> anyhow::Result<Option<(&'s str, Bar)>>,
) -> anyhow::Result<u64> {
    let mut written = 0;
    while w.get_mut().len() < COPY_CHUNK_BYTES {
        let Some((symbol, bar)) = next()? else { break };
        w.write(symbol, &bar)?;
        written += 1;
    }
    Ok(written)
}

/// `1.2s (304,000 bars/s)`
fn rate_words(bars: u64, elapsed: Duration) -> String {
    format!(
        "{} ({} bars/s)",
        crate::table::duration(elapsed.as_secs_f64()),
        thousands(per_second(bars, elapsed) as u64)
    )
}

/// A bar time: the date alone at midnight, else to the minute (UTC).
fn timestamp(at: DateTime<Utc>) -> String {
    if at.timestamp() % 86_400 == 0 {
        at.format("%Y-%m-%d").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M").to_string()
    }
}

fn replaced_words(replaced: u64) -> String {
    if replaced == 0 {
        String::new()
    } else {
        format!(", replacing {} stored bars", thousands(replaced))
    }
}

/// A symbol as given, or why it cannot be one.
fn checked_symbol(text: &str) -> anyhow::Result<String> {
    let symbol = text.trim();
    if symbol.is_empty() || symbol.chars().any(|c| c.is_whitespace() || c == ',') {
        bail!("'{text}' is not a symbol; a symbol is a word without spaces or commas, e.g. AAPL or BTC-USD");
    }
    Ok(symbol.to_string())
}

/// The symbol of a file: `--symbol`, else its name without the extension, in
/// capitals.
fn file_symbol(file: &Path, given: Option<&str>) -> anyhow::Result<String> {
    match given {
        Some(symbol) => checked_symbol(symbol),
        None => {
            let stem = file.file_stem().map(|s| s.to_string_lossy().to_uppercase());
            checked_symbol(stem.as_deref().unwrap_or_default())
                .with_context(|| format!("{}: pass --symbol", file.display()))
        }
    }
}

async fn import(target: &Target, args: ImportArgs) -> anyhow::Result<Finished> {
    if args.symbol.is_some() && args.files.len() > 1 {
        bail!("--symbol names the symbol of one file; with {} files, each takes its file's name (AAPL.csv is AAPL)", args.files.len());
    }
    let pool = target.pool().await?;
    let started = std::time::Instant::now();
    let (mut bars, mut loaded, mut failed) = (0u64, 0usize, 0usize);
    for file in &args.files {
        match import_file(&pool, file, &args).await {
            Ok(rows) => {
                bars += rows;
                loaded += 1;
            }
            Err(err) => {
                failed += 1;
                eprintln!("error: {err:#}; nothing of {} was loaded", file.display());
            }
        }
    }
    if args.files.len() > 1 {
        let elapsed = started.elapsed();
        println!(
            "imported {} bars from {loaded} of {} files in {}",
            thousands(bars),
            args.files.len(),
            rate_words(bars, elapsed)
        );
    }
    Ok(if failed == 0 {
        Finished::Ok
    } else {
        Finished::Failed
    })
}

/// Check one file whole, then load it. Returns the bars loaded.
async fn import_file(pool: &sqlx::PgPool, file: &Path, args: &ImportArgs) -> anyhow::Result<u64> {
    let symbol = file_symbol(file, args.symbol.as_deref())?;
    let started = std::time::Instant::now();
    let path = file.to_path_buf();
    let scan = tokio::task::spawn_blocking(move || -> anyhow::Result<csv::FileScan> {
        let reader = open(&path)?;
        Ok(csv::scan(&path, reader)?)
    })
    .await??;
    let interval = file_interval(file, &scan, args.interval)?;
    let interval_word = interval.to_string();
    let mut reader = csv::CsvReader::open(file, open(file)?)?;
    let mut progress = Progress::new(
        format!("{symbol} {interval_word} from {}", file.display()),
        scan.rows,
    );
    let outcome = market::load_bars(
        pool,
        BarsLoad {
            interval: &interval_word,
            securities: &[Security {
                symbol: symbol.clone(),
                name: None,
                sector: None,
            }],
            spans: &[BarSpan {
                symbol: symbol.clone(),
                first: scan.first,
                last: scan.last,
            }],
        },
        |w| {
            fill_chunk(w, || {
                Ok(reader.next_bar()?.map(|(_, bar)| (symbol.as_str(), bar)))
            })
        },
        |sent| progress.update(sent),
    )
    .await?;
    progress.finish();
    // From the start of the check: the rate of the whole import.
    let elapsed = started.elapsed();
    println!(
        "{symbol} {interval_word}: {} bars from {} ({} … {}){}, in {}",
        thousands(outcome.bars),
        file.display(),
        timestamp(scan.first),
        timestamp(scan.last),
        replaced_words(outcome.replaced),
        rate_words(outcome.bars, elapsed)
    );
    Ok(outcome.bars)
}

fn open(file: &Path) -> anyhow::Result<std::io::BufReader<std::fs::File>> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    Ok(std::io::BufReader::with_capacity(256 * 1024, f))
}

/// The interval of a file: `--interval` (which no two rows may be closer than), or
/// the shortest time between two rows.
fn file_interval(
    file: &Path,
    scan: &csv::FileScan,
    given: Option<BarInterval>,
) -> anyhow::Result<BarInterval> {
    let spacing = scan.spacing.map(|s| s.num_seconds());
    match (given, spacing) {
        (Some(interval), Some(gap)) if gap < interval.seconds() as i64 => bail!(
            "{}: two rows are {} apart, closer than the interval {interval}; give the file's bar size with --interval (or leave it out to take the spacing)",
            file.display(),
            crate::table::duration(gap as f64)
        ),
        (Some(interval), _) => Ok(interval),
        (None, Some(gap)) => u64::try_from(gap)
            .ok()
            .and_then(BarInterval::from_seconds)
            .with_context(|| {
                format!("{}: rows less than a second apart; pass --interval", file.display())
            }),
        (None, None) => bail!(
            "{}: one bar says nothing of the bar size; pass --interval (1m, 1h, 1d, ...)",
            file.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn end_words() {
        assert_eq!(
            parse_end("2025-12-31").unwrap().to_rfc3339(),
            "2025-12-31T23:59:59+00:00"
        );
        assert!(parse_end("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn symbols_of_files() {
        assert_eq!(
            file_symbol(Path::new("data/aapl.csv"), None).unwrap(),
            "AAPL"
        );
        assert_eq!(
            file_symbol(Path::new("x.csv"), Some("BTC-USD")).unwrap(),
            "BTC-USD"
        );
        assert!(file_symbol(Path::new("my file.csv"), None).is_err());
        let scan = csv::FileScan {
            rows: 2,
            first: Utc::now(),
            last: Utc::now(),
            spacing: Some(TimeDelta::minutes(1)),
        };
        let p = Path::new("f.csv");
        assert_eq!(file_interval(p, &scan, None).unwrap().to_string(), "1m");
        let err = file_interval(p, &scan, Some("1h".parse().unwrap())).unwrap_err();
        assert!(
            err.to_string().contains("closer than the interval 1h"),
            "{err}"
        );
    }
}
