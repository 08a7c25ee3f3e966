//! The `enginectl` binary: parse flags, run the subcommand (the logic lives in
//! the `enginectl` library), map the outcome to an exit code: 0 success, 1 a failed
//! command or check or any other error (printed on stderr), 2 bad usage (clap),
//! 130 interrupted by Ctrl-C while waiting (`watch` and `logs -f` end with 0).

use clap::Parser;
use enginectl::Cli;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("enginectl: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                trigger.cancel();
            }
        });
        let run = enginectl::run(cli, shutdown.clone());
        tokio::pin!(run);
        let result = tokio::select! {
            result = &mut run => Some(result),
            // `watch` and `logs -f` end by themselves on Ctrl-C; anything else that
            // is waiting is abandoned (its command rows stay and are carried out).
            _ = shutdown.cancelled() => tokio::time::timeout(Duration::from_secs(1), &mut run).await.ok(),
        };
        match result {
            Some(Ok(finished)) => ExitCode::from(finished.exit_code()),
            Some(Err(err)) => {
                eprintln!("error: {err:#}");
                ExitCode::from(1)
            }
            None => {
                eprintln!("interrupted; command rows already inserted stay and the manager carries them out");
                ExitCode::from(130)
            }
        }
    })
}
