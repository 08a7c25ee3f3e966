//! The `engine-manager` binary: parse flags, start logging, run until SIGTERM/SIGINT.

use clap::Parser;
use engine_manager::config::ManagerConfig;
use engine_manager::{error_chain, LogFormat};
use std::io::IsTerminal;
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Threads for blocking work (`/proc` reads, opening log files, log rotation). Each
/// of those calls is short; tokio's default (up to 512) lets a start-all of hundreds
/// of strategies create a thread per start, and every thread that allocates leaves a
/// glibc malloc arena behind, resident for the manager's lifetime (BENCHMARKS.md:
/// "After the restructure").
const BLOCKING_THREADS: usize = 4;

fn main() -> ExitCode {
    let config = ManagerConfig::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("engine-manager: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        // Registered before anything starts, and watched here rather than in a task
        // of its own: no signal is missed, and no task goes unwatched.
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(err), _) | (_, Err(err)) => {
                eprintln!("engine-manager: cannot watch SIGTERM and SIGINT: {err}");
                return ExitCode::from(1);
            }
        };
        let shutdown = CancellationToken::new();
        let run = engine_manager::run(config, shutdown.clone());
        tokio::pin!(run);
        let result = tokio::select! {
            result = &mut run => result,
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                shutdown.cancel();
                run.await
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                let text = error_chain(&err);
                tracing::error!("{text}");
                eprintln!("engine-manager: {text}");
                ExitCode::from(err.exit_code())
            }
        }
    })
}
