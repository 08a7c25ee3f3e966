//! Asking the executor binary whether a config is acceptable, offline:
//! `strategy-executor --validate --strategy-type T --config-file -` with the config on
//! stdin (never in argv). Used by the manager (an `update` of a strategy that is not
//! running) and by `enginectl` (before it inserts a command); each says in its own
//! words what a failure means.

use crate::executor_env::RunAs;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncWriteExt;

/// What one `--validate` run said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The exit code (`None`: killed by a signal). `Some(0)`: accepted;
    /// [`crate::control::EXIT_BAD_CONFIG`]: rejected.
    pub code: Option<i32>,
    /// What it printed on stderr, trimmed (the reason of a rejection).
    pub stderr: String,
}

impl Verdict {
    pub fn accepted(&self) -> bool {
        self.code == Some(0)
    }
}

/// Why the executor could not be asked.
#[derive(Debug, Error)]
pub enum ValidateError {
    #[error("cannot run {} --validate", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} --validate did not finish within {}s", path.display(), timeout.as_secs())]
    TimedOut { path: PathBuf, timeout: Duration },
    #[error("cannot read the output of {}", path.display())]
    Wait {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The arguments of a `--validate` run (after the binary's path).
pub fn validate_args(strategy_type: &str) -> [&str; 5] {
    [
        "--validate",
        "--strategy-type",
        strategy_type,
        "--config-file",
        "-",
    ]
}

/// Run `path --validate` for `strategy_type` with `config` on stdin, for at most
/// `timeout` (the child is killed when it runs over).
pub async fn validate_config(
    path: &Path,
    strategy_type: &str,
    config: &Value,
    timeout: Duration,
) -> Result<Verdict, ValidateError> {
    validate_config_as(path, strategy_type, config, timeout, None).await
}

/// [`validate_config`], the process run as `run_as` when given (the manager's
/// `--executor-user`).
pub async fn validate_config_as(
    path: &Path,
    strategy_type: &str,
    config: &Value,
    timeout: Duration,
    run_as: Option<&RunAs>,
) -> Result<Verdict, ValidateError> {
    // Strategy code runs here (its constructor): the allow-list environment only.
    let mut command = tokio::process::Command::new(path);
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
    let mut child = command
        .args(validate_args(strategy_type))
        .env_clear()
        .envs(crate::executor_env::inherited_as(run_as))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ValidateError::Spawn {
            path: path.to_path_buf(),
            source,
        })?;
    let input = child.stdin.take();
    let bytes = serde_json::to_vec(config).unwrap_or_default();
    let feed = async move {
        if let Some(mut pipe) = input {
            // An executor that exits without reading closes the pipe: its exit says why.
            let _ = pipe.write_all(&bytes).await;
            let _ = pipe.shutdown().await;
        }
    };
    let (_, output) = tokio::time::timeout(timeout, async {
        tokio::join!(feed, child.wait_with_output())
    })
    .await
    .map_err(|_| ValidateError::TimedOut {
        path: path.to_path_buf(),
        timeout,
    })?;
    let output = output.map_err(|source| ValidateError::Wait {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Verdict {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}
