//! `enginectl`: the operators' tool. It speaks to the engine the way an operator
//! with `psql` and `redis-cli` would: it reads `strategy_configs`, inserts rows in
//! `strategy_commands` and waits for their outcome, reads the state hashes and
//! subscribes to the channels on Redis, and reads the executors' log files. It never
//! talks to the manager directly, so it works the same against a manager on another
//! host (except `logs`, which reads files).
//!
//! # Layout
//! - [`Cli`] / [`Command`]: the flags (clap); [`run`] dispatches.
//! - [`store`]: every SQL statement of the tool. [`state`]: Redis reads.
//! - [`control`]: `start` … `update`, `add`, `remove` (insert rows, wait, report).
//! - [`view`]: one strategy's row as `list` and `watch` show it; [`table`]: plain
//!   text tables; [`spinner`]: progress on stderr.
//! - [`watch`], [`logs`], [`history`], [`audit`], [`doctor`], [`executor`] (`types`, validation).
//! - [`nodes`]: `nodes`, the cluster's nodes. [`cluster`]: `drain`, `undrain`, `move`.
//! - [`orders`]: `orders`, a strategy's paper orders (`strategy_orders`).
//! - [`data`]: `data`, `data generate`, `data import` (market data for runs).
//! - [`runs`]: `run` (insert a run, follow it with a progress bar, print its
//!   result), `runs`, `run-show`, `cancel`; [`run_view`]: how a run is shown.
//! - [`schedules`]: `schedule add|list|remove|enable|disable` (runs on a timetable).
//! - [`shell`]: names quoted for the shell in every hint that prints a command line.

pub mod audit;
pub mod cluster;
pub mod control;
pub mod data;
pub mod doctor;
pub mod executor;
pub mod feed;
pub mod history;
pub mod lease_words;
pub mod logs;
pub mod nodes;
pub mod orders;
pub mod run_view;
pub mod runs;
pub mod schedules;
pub mod shell;
pub mod spinner;
pub mod state;
pub use engine_store::operator as store;
pub mod table;
pub mod view;
pub mod watch;

use clap::{Parser, Subcommand};
use engine_protocol::Channels;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// enginectl: list, start, stop, update and watch the engine's strategies.
///
/// It works through the database (commands are rows in `strategy_commands`, carried
/// out by the running engine-manager) and Redis, with the same flags and environment
/// variables as engine-manager.
#[derive(Debug, Clone, Parser)]
#[command(name = "enginectl", version, about, long_about)]
pub struct Cli {
    /// PostgreSQL URL of the engine's database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/strategy_engine",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Redis URL (for `list`, `watch` and `doctor`).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis channel and key (the manager's --redis-prefix).
    #[arg(long, env = "ENGINE_REDIS_PREFIX", default_value = "", global = true)]
    pub redis_prefix: String,

    /// The manager's state directory (`logs` reads `<state-dir>/logs/<name>.log`).
    #[arg(
        long,
        env = "ENGINE_STATE_DIR",
        default_value = "engine-state",
        global = true
    )]
    pub state_dir: PathBuf,

    /// The strategy-executor binary (for `add`, `types`, `doctor`) [default: the one
    /// beside this binary, else `strategy-executor` on PATH].
    #[arg(long, env = "ENGINE_EXECUTOR_PATH", global = true)]
    pub executor_path: Option<PathBuf>,

    /// Whom you act for: the `on_behalf_of` of the commands and runs you insert and
    /// of your strategy edits in `engine_audit` [default: your login name]. The
    /// database stamps `issued_by` (your database role) itself.
    #[arg(long = "as", value_name = "NAME", env = "ENGINECTL_AS", global = true)]
    pub on_behalf_of: Option<String>,

    /// Accept TLS that does not verify the server's certificate (`sslmode=require`
    /// and the like to a remote PostgreSQL, a `rediss://…#insecure` Redis URL), as
    /// engine-manager's flag does; said on stderr and by `doctor`. Without it a
    /// remote database gets `sslmode=verify-full`.
    #[arg(long, env = "ENGINE_TLS_INSECURE", global = true)]
    pub tls_insecure: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Every strategy: status, desired state, pid, uptime, CPU, memory, restarts,
    /// PnL, tick age, last error.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Register a new strategy (its config is checked by the executor first).
    Add(control::AddArgs),
    /// Stop a strategy (if it runs), then delete it with its history.
    Remove {
        name: String,
        /// How long to wait for the stop.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Start strategies (a no-op for running ones).
    Start(control::TargetArgs),
    /// Stop strategies; `--all` is the global kill switch.
    Stop(control::StopArgs),
    /// Stop, then start strategies (new pid).
    Restart(control::StopArgs),
    /// Pause strategies (the process stays up, the strategy does not trade).
    Pause(control::TargetArgs),
    /// Resume paused strategies.
    Resume(control::TargetArgs),
    /// Change a strategy's config with a JSON merge patch, live if it runs.
    Update(control::UpdateArgs),
    /// Change a strategy's interval execution: `--interval SECONDS`, `--no-interval`,
    /// `--max-execution SECONDS`.
    Edit(control::EditArgs),
    /// Execute interval strategies once now, and wait for the execution's outcome.
    Trigger(control::TargetArgs),
    /// Start a run of a strategy's code (backtest, screener or alert), follow its
    /// progress and print its result (Ctrl-C leaves it running).
    Run(runs::RunArgs),
    /// Runs, newest first: state, progress, place in the queue, error.
    Runs {
        /// Only the runs of this strategy.
        name: Option<String>,
        /// Only runs in these states (queued, starting, running, completed, error,
        /// cancelled, timed_out; repeat or comma-separate).
        #[arg(long)]
        state: Vec<String>,
        /// How many runs at most.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: i64,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One run: its parameters, progress, result and items.
    RunShow {
        /// The run's id.
        id: String,
        /// Print JSON (the run with its items).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run (or with --all-runs every queued and running run of a strategy)
    /// and wait until it is cancelled.
    Cancel(runs::CancelArgs),
    /// Schedules of runs: `schedule add NAME --mode screener --cron '30 18 * * 1-5'`,
    /// `schedule list`, `schedule remove|enable|disable ID`.
    Schedule {
        #[command(subcommand)]
        command: schedules::ScheduleCommand,
    },
    /// The registered strategy types, with a description, an example config, the
    /// run modes each supports and whether it supports interval executions.
    Types {
        /// Print the executor's JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live table of every strategy, fed by Redis (Ctrl-C to quit).
    Watch {
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
        /// How often the table is redrawn.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Print a strategy's executor log (stdout and stderr).
    Logs {
        name: String,
        /// Keep printing what is appended (Ctrl-C to quit).
        #[arg(short, long)]
        follow: bool,
        /// How many lines from the end.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// A strategy's commands and state transitions, newest first.
    History {
        name: String,
        /// How many entries.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Who asked for what: every command, run and strategy edit or deletion, with
    /// the database role and whom its tool acted for (`engine_audit`), newest first.
    Audit {
        /// Only this strategy's entries (also after it was deleted).
        #[arg(long)]
        strategy: Option<String>,
        /// From this time on: RFC 3339 (2026-12-01T09:00:00Z) or a duration back
        /// from now (90m, 2d).
        #[arg(long)]
        since: Option<String>,
        /// How many entries.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A strategy's paper orders (`strategy_orders`), newest first: its live
    /// executors', or with --run one run's; each with its client order id and the
    /// lease epoch it was placed under.
    Orders {
        name: String,
        /// One run's orders (its id, as `enginectl runs NAME` shows it).
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        /// How many orders (1 to 1000).
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: i64,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check PostgreSQL, migrations, Redis, the executor binary and the manager.
    Doctor,
    /// The cluster's nodes (managers started with --cluster): host, pid, heartbeat
    /// age, strategies owned / capacity, draining.
    Nodes {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Market data for runs: what is loaded (`data`), `data generate`, `data import`.
    Data(data::DataArgs),
    /// Cluster: hand a node's strategies to the other nodes (each stopped there with
    /// positions left, started elsewhere); the node takes no new ones until undrained.
    Drain(cluster::NodeArgs),
    /// Cluster: let a drained node take new strategies again.
    Undrain(cluster::NodeArgs),
    /// Cluster: move a strategy to another node (stopped where it runs, started there).
    Move(cluster::MoveArgs),
}

/// What every subcommand shares: the flags that say where the engine is.
#[derive(Debug, Clone)]
pub struct Target {
    pub database_url: String,
    pub redis_url: String,
    pub channels: Channels,
    pub state_dir: PathBuf,
    pub executor_path: PathBuf,
    /// `--as`, else the login name.
    pub on_behalf_of: Option<String>,
    /// `--tls-insecure`.
    pub tls_insecure: bool,
}

impl Target {
    pub fn from_cli(cli: &Cli) -> Target {
        Target {
            database_url: cli.database_url.clone(),
            redis_url: cli.redis_url.clone(),
            channels: Channels::new(cli.redis_prefix.clone()),
            state_dir: cli.state_dir.clone(),
            executor_path: executor::default_path(cli.executor_path.as_deref()),
            on_behalf_of: cli.on_behalf_of.clone().or_else(login_name),
            tls_insecure: cli.tls_insecure,
        }
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        store::connect_as(&self.database_url, self.on_behalf_of.as_deref()).await
    }
}

/// What `--tls-insecure` costs, said on stderr and by `doctor`.
pub const TLS_INSECURE_WARNING: &str = "--tls-insecure is set: TLS to PostgreSQL and Redis may skip the check of the server's certificate, so anyone on the network path could pose as the server; use sslmode=verify-full and drop --tls-insecure (ENGINE_TLS_INSECURE)";

/// The name of the user running the tool (`USER`, else `LOGNAME`).
fn login_name() -> Option<String> {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|value| value.trim().to_string())
        .find(|value| !value.is_empty())
}

/// How a subcommand ended when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Exit code 0.
    Ok,
    /// Something the tool reported (a failed command, a failed check): exit code 1.
    Failed,
    /// Ctrl-C ended the wait and the tool said what goes on: exit code 130.
    Interrupted,
}

impl Finished {
    pub fn exit_code(self) -> u8 {
        match self {
            Finished::Ok => 0,
            Finished::Failed => 1,
            Finished::Interrupted => 130,
        }
    }
}

/// Run one subcommand. `shutdown` ends the long-running ones (`watch`, `logs -f`).
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<Finished> {
    let target = Target::from_cli(&cli);
    engine_store::tls::allow_unverified(target.tls_insecure);
    if target.tls_insecure {
        eprintln!("warning: {TLS_INSECURE_WARNING}");
    }
    match cli.command {
        Command::List { json } => view::list(&target, json).await,
        Command::Add(args) => control::add(&target, args).await,
        Command::Remove { name, timeout } => control::remove(&target, &name, timeout).await,
        Command::Start(args) => {
            control::simple(&target, engine_store::CommandWord::Start, args).await
        }
        Command::Pause(args) => {
            control::simple(&target, engine_store::CommandWord::Pause, args).await
        }
        Command::Resume(args) => {
            control::simple(&target, engine_store::CommandWord::Resume, args).await
        }
        Command::Stop(args) => {
            control::stop_or_restart(&target, engine_store::CommandWord::Stop, args).await
        }
        Command::Restart(args) => {
            control::stop_or_restart(&target, engine_store::CommandWord::Restart, args).await
        }
        Command::Update(args) => control::update(&target, args).await,
        Command::Edit(args) => control::edit(&target, args).await,
        Command::Trigger(args) => {
            control::simple(&target, engine_store::CommandWord::Trigger, args).await
        }
        Command::Types { json } => executor::types(&target, json).await,
        Command::Watch { once, interval } => watch::watch(&target, once, interval, shutdown).await,
        Command::Logs {
            name,
            follow,
            lines,
        } => logs::logs(&target, &name, follow, lines, shutdown).await,
        Command::History { name, lines, json } => {
            history::history(&target, &name, lines, json).await
        }
        Command::Audit {
            strategy,
            since,
            lines,
            json,
        } => audit::audit(&target, strategy, since.as_deref(), lines, json).await,
        Command::Orders {
            name,
            run,
            limit,
            json,
        } => orders::orders(&target, &name, run.as_deref(), limit, json).await,
        Command::Doctor => doctor::doctor(&target).await,
        Command::Nodes { json } => nodes::nodes(&target, json).await,
        Command::Run(args) => runs::run(&target, args, shutdown).await,
        Command::Runs {
            name,
            state,
            limit,
            json,
        } => runs::list(&target, name.as_deref(), &state, limit, json).await,
        Command::RunShow { id, json } => runs::show(&target, &id, json).await,
        Command::Cancel(args) => runs::cancel(&target, args).await,
        Command::Schedule { command } => schedules::schedule(&target, command).await,
        Command::Data(args) => data::data(&target, args).await,
        Command::Drain(args) => cluster::drain(&target, args, true).await,
        Command::Undrain(args) => cluster::drain(&target, args, false).await,
        Command::Move(args) => cluster::move_strategy(&target, args).await,
    }
}
