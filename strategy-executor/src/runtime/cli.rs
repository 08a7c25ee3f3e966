//! The flags ([`Cli`]) and the three modes: `--list`, `--validate`, and run mode
//! (handed to [`super::start::run`]).

use super::config::read_config;
use super::errors::{print_error, EXIT_FAILURE};
use super::start::{run, RunOptions};
use clap::{CommandFactory, Parser};
use engine_protocol::control;
use engine_protocol::Channels;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use strategy_sdk::Registry;
use uuid::Uuid;

/// Hosts one strategy: started by `engine-manager` (one process per strategy), or by
/// hand.
///
/// Modes: `--list [--json]`, `--validate --strategy-type T [--config-file PATH|-]`,
/// run mode `--strategy-id ID --strategy-type T [--config-file PATH|-]`, and one
/// finite run `--run-id ID --runs-dir DIR` (its input on stdin).
/// The config (a JSON object) is read from a file or from stdin (`-`), never from
/// the command line, because it may hold API keys.
#[derive(Debug, Clone, Parser)]
#[command(name = "strategy-executor", version)]
pub struct Cli {
    /// Print the registered strategy types (with a description, an example config and
    /// the run modes each supports) and exit.
    #[arg(long, conflicts_with = "validate")]
    pub list: bool,

    /// With --list: print a JSON array of {strategy_type, description, example_config,
    /// modes}.
    #[arg(long, requires = "list")]
    pub json: bool,

    /// Check that --strategy-type accepts the config, print `ok` and exit 0; exit 2
    /// with the reason on stderr if it does not. Run-mode flags are ignored.
    #[arg(long, requires = "strategy_type")]
    pub validate: bool,

    /// Identity of the strategy (run mode), used in the Redis channel names.
    #[arg(long, value_name = "UUID", conflicts_with = "run_id")]
    pub strategy_id: Option<Uuid>,

    /// Do one run (backtest, screener or alert; CONTRACT §4) and exit: its input
    /// is read from stdin, its bars from its bars file, and its output appended to
    /// `{runs_dir}/{run_id}.out`. Started by the manager.
    #[arg(long, value_name = "UUID", requires = "runs_dir", conflicts_with_all = ["list", "validate"])]
    pub run_id: Option<Uuid>,

    /// The manager's runs directory (with --run-id).
    #[arg(long, value_name = "DIR", requires = "run_id")]
    pub runs_dir: Option<PathBuf>,

    /// Human name of the strategy (run mode; defaults to the strategy type).
    #[arg(long)]
    pub name: Option<String>,

    /// The registry key of the strategy to run, e.g. `sma_crossover`.
    #[arg(long, value_name = "TYPE")]
    pub strategy_type: Option<String>,

    /// Where to read the config JSON object: a file, or `-` for stdin. Without it the
    /// config is `{}`.
    #[arg(long, value_name = "PATH|-")]
    pub config_file: Option<PathBuf>,

    /// Redis to subscribe and publish to. A manager that gives each executor its own
    /// Redis user puts that user's URL here (in the environment, never argv).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis channel name (empty gives the contract's names).
    #[arg(long, env = "ENGINE_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,

    /// Unix socket of the manager's control link; the executor connects to it and
    /// reconnects forever.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// How often metrics are published on `strategy:metrics:{id}` (e.g. `5s`, `200ms`).
    #[arg(long, default_value = "5s", value_parser = parse_period)]
    pub metrics_interval: Duration,

    /// The `node` reported in status messages (defaults to the host name).
    #[arg(long)]
    pub node: Option<String>,

    /// The --config-file input is the manager's spawn envelope, `{"config": {...},
    /// "broker_state": ...}`, rather than the bare config: the broker is restored
    /// from `broker_state` (a previous executor's report) before the strategy starts.
    #[arg(long, requires = "config_file", conflicts_with = "validate")]
    pub spawn_envelope: bool,

    /// Come up paused: `on_start` runs, then `on_pause`, and the first status is
    /// `paused`. The manager uses it to restart a paused strategy that crashed, so
    /// that it never trades, even for a moment, while operators want it paused.
    #[arg(long)]
    pub start_paused: bool,
}

fn parse_period(text: &str) -> Result<Duration, String> {
    let period = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if period.is_zero() {
        return Err("must be above zero, e.g. 5s or 200ms".to_string());
    }
    Ok(period)
}

/// The whole executor program: parse the flags from the process arguments and run.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     let mut registry = strategy_executor::strategies::builtin_registry();
///     // registry.register("my_strategy", "…", serde_json::json!({}), my_constructor);
///     strategy_executor::runtime::main_with(registry)
/// }
/// ```
pub fn main_with(registry: Registry) -> ExitCode {
    private_process();
    let cli = Cli::parse();
    run_cli(cli, &registry)
}

/// Not dumpable (`PR_SET_DUMPABLE` 0), before any strategy code runs: another
/// process of the same user — another strategy's executor, under one
/// `--executor-user` — can then neither read this one's `/proc/<pid>/environ` (its
/// own Redis user's password) or memory (its resolved secrets) nor ptrace it, and a
/// crash leaves no core file holding them. The manager reads only what `/proc`
/// shows everyone (`stat`, `status`, `cmdline`), and signals it as before.
fn private_process() {
    use rustix::process::{set_dumpable_behavior, DumpableBehavior};
    if let Err(err) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        eprintln!("strategy-executor: cannot make the process non-dumpable: {err}");
    }
}

/// Run the program for already parsed flags.
pub fn run_cli(cli: Cli, registry: &Registry) -> ExitCode {
    if cli.list {
        return list(registry, cli.json);
    }
    if let (Some(run_id), Some(runs_dir)) = (cli.run_id, cli.runs_dir.as_deref()) {
        return super::run::run_process(run_id, runs_dir, registry);
    }
    if cli.validate {
        let strategy_type = cli.strategy_type.as_deref().unwrap_or_default();
        return validate(registry, strategy_type, cli.config_file.as_deref());
    }
    let (Some(strategy_id), Some(strategy_type)) = (cli.strategy_id, cli.strategy_type.clone())
    else {
        let err = Cli::command().error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "run mode needs --strategy-id and --strategy-type (or use --list or --validate)",
        );
        let _ = err.print();
        return ExitCode::from(control::EXIT_BAD_CONFIG as u8);
    };
    let options = RunOptions {
        strategy_id,
        name: cli.name.unwrap_or_else(|| strategy_type.clone()),
        strategy_type,
        config_file: cli.config_file,
        spawn_envelope: cli.spawn_envelope,
        redis_url: cli.redis_url,
        channels: Channels::new(cli.redis_prefix),
        control_socket: cli.control_socket,
        metrics_interval: cli.metrics_interval,
        node: cli.node.unwrap_or_else(engine_protocol::node_name),
        start_paused: cli.start_paused,
    };
    run(options, registry)
}

/// `--list`: one block per registered type.
fn list(registry: &Registry, json: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let written = if json {
        let infos: Vec<_> = registry.infos().collect();
        let text = serde_json::to_string_pretty(&infos).expect("strategy infos serialize");
        writeln!(out, "{text}")
    } else {
        registry.infos().try_for_each(|info| {
            writeln!(out, "{} — {}", info.strategy_type, info.description)?;
            writeln!(out, "    example config: {}", info.example_config)?;
            let modes: Vec<&str> = info.modes.iter().map(|mode| mode.as_str()).collect();
            writeln!(out, "    modes: {}", modes.join(", "))?;
            let interval = if info.supports_interval { "yes" } else { "no" };
            writeln!(out, "    interval executions: {interval}")
        })
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FAILURE),
    }
}

/// `--validate`: build the strategy from the config and throw it away.
fn validate(registry: &Registry, strategy_type: &str, config_file: Option<&Path>) -> ExitCode {
    let config = match read_config(config_file) {
        Ok(config) => config,
        Err(err) => return print_error(&err, control::EXIT_BAD_CONFIG),
    };
    match registry.create(strategy_type, &config) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(err) => print_error(&err, control::EXIT_BAD_CONFIG),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_must_be_positive() {
        assert_eq!(parse_period("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_period("0s").is_err());
        assert!(parse_period("soon").is_err());
    }
}
