//! Runs (CONTRACT.md §4) from the command line: `run` inserts a `strategy_runs` row
//! and follows it (its `strategy:run:{id}` channel, with a read of the row every
//! half second as the safety net) with a live progress bar, then prints the result;
//! `runs` lists runs, `run-show` shows one with its items, `cancel` inserts `cancel`
//! command rows and waits for their outcome.

use super::control::build_patch;
use super::run_view::{self, Progress};
use super::spinner::Spinner;
use super::{store, Finished, Target};
use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;
use engine_protocol::runs::{RunEvent, RunState};
use engine_protocol::secrets::mask;
use engine_store::runs_api::{self as db, NewRun, QueueEstimate, RunRecord};
use engine_store::CommandStatus;
use futures_util::StreamExt;
use serde_json::Value;
use sqlx::PgPool;
use std::io::{IsTerminal, Write};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the row is read while a run is followed.
const POLL: Duration = Duration::from_millis(500);

/// How long `cancel` waits for the command's outcome.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// `run NAME --mode M [--set key=value]... [--priority P] [--timeout T] [--no-wait] [--json]`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The strategy whose code and config the run uses, by name.
    pub name: String,

    /// `backtest`, `screener` or `alert`.
    #[arg(long)]
    pub mode: String,

    /// A parameter of the run: `--set symbols='["AAPL"]' --set fee_bps=5
    /// --set config.min_score=60`. The value is taken as JSON when it parses as JSON,
    /// else as a string; `a.b=1` sets a nested key.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// `high`, `normal` or `low`: high runs leave the queue first.
    #[arg(long, default_value = "normal")]
    pub priority: String,

    /// Longest run time (`90`, `10m`, `2h`; at most a day): past it the run ends
    /// `timed_out`.
    #[arg(long, value_parser = parse_run_timeout)]
    pub timeout: Option<i32>,

    /// Insert the run and exit at once with its id.
    #[arg(long)]
    pub no_wait: bool,

    /// Print the finished run (or, with --no-wait, the inserted one) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cancel RUN_ID | NAME --all-runs`.
#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// The run's id, or with --all-runs the strategy's name.
    pub target: String,

    /// Cancel every queued and running run of the strategy named.
    #[arg(long)]
    pub all_runs: bool,

    /// Insert the command and exit without waiting for its outcome.
    #[arg(long)]
    pub no_wait: bool,
}

/// A run's timeout: seconds (`90`) or a duration (`10m`), 0 < t ≤ 86400.
pub fn parse_run_timeout(text: &str) -> Result<i32, String> {
    let secs = match text.trim().parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => humantime::parse_duration(text.trim())
            .map(|d| d.as_secs())
            .map_err(|_| {
                format!(
                    "'{text}' is not a number of seconds such as 600, or a duration such as 10m"
                )
            })?,
    };
    if secs == 0 || secs > db::MAX_TIMEOUT_S as u64 {
        return Err(format!(
            "a run's timeout must be above 0 and at most 86400 seconds (a day), got {text}"
        ));
    }
    Ok(secs as i32)
}

/// The run's `parameters` from the `--set` flags.
pub fn parameters(set: &[String]) -> anyhow::Result<Value> {
    build_patch(None, set, &[])
}

/// `enginectl run`.
pub async fn run(
    target: &Target,
    args: RunArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Finished> {
    let mode = db::parse_mode(&args.mode)?;
    let priority = db::parse_priority(Some(&args.priority))?;
    let parameters = parameters(&args.set)?;
    let pool = target.pool().await?;
    let strategy = store::resolve_one(&pool, &args.name).await?;
    let new = NewRun {
        strategy_id: strategy.id,
        mode,
        parameters,
        priority,
        timeout_s: args.timeout,
        // The session's `engine.on_behalf_of` (`--as`) says it.
        on_behalf_of: None,
    };
    let inserted =
        db::insert_run(&pool, &new)
            .await
            .map_err(|err| match db::run_refusal(&err) {
                Some(words) => anyhow!("the run was not inserted: {words}"),
                None => store::query_error(err, "insert into strategy_runs"),
            })?;
    let run_id = inserted.id;
    let row = read_run(&pool, run_id).await?;
    if args.no_wait {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&row)?);
        } else {
            println!("{run_id}");
            eprintln!("{}", queued_words(&pool, &row).await);
            eprintln!(
                "follow it with `enginectl run-show {run_id}`; cancel it with `enginectl cancel {run_id}`"
            );
        }
        return Ok(Finished::Ok);
    }
    eprintln!(
        "run {run_id}: {} of '{}'; {}",
        mode,
        strategy.name,
        queued_words(&pool, &row).await
    );
    let Some(done) = follow(target, &pool, run_id, &shutdown).await? else {
        eprintln!(
            "interrupted: run {run_id} goes on; `enginectl run-show {run_id}` shows it, `enginectl cancel {run_id}` cancels it"
        );
        return Ok(Finished::Interrupted);
    };
    report(&done, args.json)
}

/// "queued, 3rd in the queue (2 at once), estimated start 10:15:02 (in 12s)".
async fn queued_words(pool: &PgPool, run: &RunRecord) -> String {
    if run.state != RunState::Queued {
        return run.state.to_string();
    }
    let estimate = async {
        let (queued, active) = db::queue(pool).await?;
        let (max_concurrent, _) = db::max_concurrent(pool).await?;
        let averages = db::mode_averages(pool).await?;
        let e = QueueEstimate {
            now: Utc::now(),
            max_concurrent,
            averages,
        };
        Ok::<_, sqlx::Error>((e.start_of(run, &queued, &active), max_concurrent, e.now))
    };
    let position = run.position_in_queue.unwrap_or(1);
    match estimate.await {
        Ok((start, slots, now)) => format!(
            "queued, position {position} in the queue ({slots} run at once), estimated start {}",
            start_words(start, now)
        ),
        Err(_) => format!("queued, position {position} in the queue"),
    }
}

fn start_words(start: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match start {
        None => "unknown (no finished run of this mode to learn from)".to_string(),
        Some(t) if t <= now => "now".to_string(),
        Some(t) => format!(
            "{} (in {})",
            t.format("%H:%M:%S UTC"),
            super::table::duration((t - now).as_seconds_f64())
        ),
    }
}

async fn read_run(pool: &PgPool, id: Uuid) -> anyhow::Result<RunRecord> {
    db::run(pool, id)
        .await
        .map_err(|e| store::query_error(e, "read strategy_runs"))?
        .map(masked)
        .ok_or_else(|| anyhow!("no run with id {id} (it was deleted with its strategy?)"))
}

/// `run` as it may be shown: secret-looking values of its parameters and config
/// masked ([`engine_protocol::secrets::mask`]).
fn masked(mut run: RunRecord) -> RunRecord {
    run.parameters = mask(&run.parameters);
    run.config = run.config.as_ref().map(mask);
    run
}

async fn subscribe(target: &Target, run_id: Uuid) -> anyhow::Result<redis::aio::PubSubStream> {
    let connect = async {
        let mut pubsub = super::state::client(&target.redis_url)?
            .get_async_pubsub()
            .await?;
        pubsub.subscribe(target.channels.run(run_id)).await?;
        Ok::<_, anyhow::Error>(pubsub.into_on_message())
    };
    tokio::time::timeout(super::state::REDIS_TIMEOUT, connect)
        .await
        .context("Redis did not answer")?
}

/// The progress bar on stderr: redrawn in place on a terminal; elsewhere a line
/// when the state or stage changes.
struct Bar {
    terminal: bool,
    last: Option<(RunState, Option<String>)>,
    drawn: bool,
}

impl Bar {
    fn new() -> Bar {
        Bar {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, p: &Progress) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{}\x1b[K", run_view::progress_line(p));
            self.drawn = true;
        } else if self.last.as_ref() != Some(&(p.state, p.stage.clone())) {
            let _ = writeln!(err, "{}", run_view::progress_line(p));
        }
        let _ = err.flush();
        self.last = Some((p.state, p.stage.clone()));
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.drawn = false;
        }
    }
}

/// Follow the run until it is over (`None`: interrupted first).
async fn follow(
    target: &Target,
    pool: &PgPool,
    run_id: Uuid,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<RunRecord>> {
    let mut messages = subscribe(target, run_id).await.ok();
    let mut bar = Bar::new();
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                bar.clear();
                return Ok(None);
            }
            msg = next_message(&mut messages) => {
                let Some(msg) = msg else {
                    messages = None; // Redis went away: the row carries on
                    continue;
                };
                let Ok(event) = serde_json::from_slice::<RunEvent>(msg.get_payload_bytes()) else {
                    continue;
                };
                bar.show(&Progress::from(&event));
                if event.state.is_final() {
                    // The row says so too at once, or at the next poll.
                    poll.reset_immediately();
                }
            }
            _ = poll.tick() => {
                let row = read_run(pool, run_id).await?;
                if row.state.is_final() {
                    bar.clear();
                    return Ok(Some(row));
                }
                if messages.is_none() || bar.last.is_none() {
                    bar.show(&Progress::from(&row));
                }
            }
        }
    }
}

async fn next_message(messages: &mut Option<redis::aio::PubSubStream>) -> Option<redis::Msg> {
    match messages {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Print a finished run; `Failed` unless it completed.
fn report(run: &RunRecord, json: bool) -> anyhow::Result<Finished> {
    let finished = if run.state == RunState::Completed {
        Finished::Ok
    } else {
        Finished::Failed
    };
    if json {
        println!("{}", serde_json::to_string_pretty(run)?);
        return Ok(finished);
    }
    let took = match (run.started_at, run.finished_at) {
        (Some(s), Some(f)) => format!(" in {}", super::table::duration((f - s).as_seconds_f64())),
        _ => String::new(),
    };
    match run.state {
        RunState::Completed => {
            println!("run {} completed{took}", run.id);
            if let Some(result) = &run.result {
                print!("{}", run_view::result_text(run.mode.as_str(), result));
            }
        }
        state => {
            eprintln!(
                "error: run {} ended {state}{took}: {}",
                run.id,
                run.error.as_deref().unwrap_or("no reason given")
            );
        }
    }
    Ok(finished)
}

/// `enginectl runs [NAME] [--state S] [--limit N] [--json]`.
pub async fn list(
    target: &Target,
    name: Option<&str>,
    states: &[String],
    limit: i64,
    json: bool,
) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let strategy_id = match name {
        Some(name) => Some(store::resolve_one(&pool, name).await?.id),
        None => None,
    };
    let states = states
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<RunState>())
        .collect::<Result<Vec<_>, _>>()?;
    let filter = db::RunFilter {
        strategy_id,
        states,
        limit,
    };
    let runs: Vec<RunRecord> = db::runs(&pool, &filter)
        .await
        .map_err(|e| store::query_error(e, "read strategy_runs"))?
        .into_iter()
        .map(masked)
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else if runs.is_empty() {
        println!("no runs; start one with `enginectl run NAME --mode backtest`");
    } else {
        print!("{}", run_view::runs_table(&runs));
    }
    Ok(Finished::Ok)
}

/// `enginectl run-show ID [--json]`: the run, its result and its items.
pub async fn show(target: &Target, id: &str, json: bool) -> anyhow::Result<Finished> {
    let id: Uuid = id
        .trim()
        .parse()
        .map_err(|_| anyhow!("'{id}' is not a run id (a UUID); `enginectl runs` lists them"))?;
    let pool = target.pool().await?;
    let run = read_run(&pool, id).await?;
    let items = db::run_items(&pool, id, 100_000)
        .await
        .map_err(|e| store::query_error(e, "read strategy_run_items"))?;
    if json {
        let mut value = serde_json::to_value(&run)?;
        value["items"] = serde_json::to_value(&items)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(Finished::Ok);
    }
    print!("{}", run_view::runs_table(std::slice::from_ref(&run)));
    println!("\nparameters: {}", run.parameters);
    if let Some(config) = &run.config {
        println!("config: {config}");
    }
    if !run.state.is_final() {
        println!(
            "progress: {}",
            run_view::progress_line(&Progress::from(&run))
        );
    }
    if let Some(message) = &run.message {
        println!("message: {message}");
    }
    if let Some(error) = &run.error {
        println!("error: {error}");
    }
    if let Some(result) = &run.result {
        println!();
        print!("{}", run_view::result_text(run.mode.as_str(), result));
    }
    if !items.is_empty() {
        println!("\nitems ({})", items.len());
        print!("{}", run_view::items_table(&items));
    }
    Ok(Finished::Ok)
}

/// `enginectl cancel RUN_ID` or `cancel NAME --all-runs`.
pub async fn cancel(target: &Target, args: CancelArgs) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let (strategy_id, run, label) = if args.all_runs {
        let strategy = store::resolve_one(&pool, &args.target).await?;
        let label = format!("every queued and running run of '{}'", strategy.name);
        (strategy.id, None, label)
    } else {
        let id: Uuid = args.target.trim().parse().map_err(|_| {
            anyhow!(
                "'{}' is not a run id (a UUID); give a run's id, or a strategy's name with --all-runs",
                args.target
            )
        })?;
        let run = read_run(&pool, id).await?;
        if run.state.is_final() {
            bail!(
                "run {id} is already over ({}); nothing to cancel",
                run.state
            );
        }
        (run.strategy_id, Some(id), format!("run {id}"))
    };
    let command = db::insert_cancel(&pool, strategy_id, run, None)
        .await
        .map_err(|e| store::query_error(e, "insert into strategy_commands"))?;
    if args.no_wait {
        println!("cancel of {label} sent (command {})", command.id);
        return Ok(Finished::Ok);
    }
    let spinner = Spinner::start(format!("cancelling {label}"));
    let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
    let outcome = loop {
        let rows = store::command_progress(&pool, &[command.id]).await?;
        let row = rows.into_iter().next();
        if row.as_ref().is_some_and(|r| r.is_finished()) || tokio::time::Instant::now() >= deadline
        {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    spinner.finish().await;
    match outcome {
        Some(p) if p.status == CommandStatus::Executed => {
            println!("cancelled {label}");
            Ok(Finished::Ok)
        }
        Some(p) if p.status == CommandStatus::Failed => {
            eprintln!(
                "error: cancel of {label} failed: {}",
                p.error.as_deref().unwrap_or("no reason given")
            );
            Ok(Finished::Failed)
        }
        other => {
            let status = other.map_or("gone", |p| p.status.as_str());
            eprintln!(
                "error: the cancel of {label} is still {status} after {}s; the row stays and the manager carries it out (command {})",
                CANCEL_WAIT.as_secs(),
                command.id
            );
            Ok(Finished::Failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_flags_build_the_parameters() {
        let p = parameters(&[
            "symbols=[\"AAPL\"]".into(),
            "fee_bps=5".into(),
            "config.min_score=60".into(),
            "start=2024-01-01".into(),
            "interval=1d".into(),
        ])
        .unwrap();
        assert_eq!(
            p,
            json!({"symbols": ["AAPL"], "fee_bps": 5, "config": {"min_score": 60},
                   "start": "2024-01-01", "interval": "1d"})
        );
        assert_eq!(parameters(&[]).unwrap(), json!({}));
        let err = parameters(&["fee_bps".into()]).unwrap_err().to_string();
        assert!(err.contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_run_timeout("90"), Ok(90));
        assert_eq!(parse_run_timeout("10m"), Ok(600));
        assert_eq!(parse_run_timeout("1day"), Ok(86_400));
        assert!(parse_run_timeout("0").unwrap_err().contains("above 0"));
        assert!(parse_run_timeout("2d")
            .unwrap_err()
            .contains("at most 86400"));
        assert!(parse_run_timeout("soon")
            .unwrap_err()
            .contains("duration such as 10m"));
    }

    #[test]
    fn start_times_in_words() {
        let now = Utc::now();
        assert_eq!(start_words(Some(now), now), "now");
        assert!(start_words(None, now).starts_with("unknown"));
        let later = start_words(Some(now + chrono::TimeDelta::seconds(75)), now);
        assert!(later.ends_with("(in 1m15s)"), "{later}");
    }
}
