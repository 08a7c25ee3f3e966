//! The `engine-manager` binary: parse flags, start logging, run until SIGTERM/SIGINT.

use clap::Parser;
use engine_manager::config::ManagerConfig;
use engine_manager::{error_chain, LogFormat};
use std::io::IsTerminal;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

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
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("engine-manager: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            trigger.cancel();
        });
        match engine_manager::run(config, shutdown).await {
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
