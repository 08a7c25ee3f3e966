//! Running the `strategy-executor` binary the way the manager does, for what only it
//! knows: the registered strategy types (`--list --json`) and whether a config is
//! acceptable (`--validate`, the config on stdin, never in argv).

use super::{Finished, Target};
use anyhow::{bail, Context};
use engine_protocol::control::EXIT_BAD_CONFIG;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long one run of the executor (`--list`, `--validate`) may take.
pub const EXECUTOR_TIMEOUT: Duration = Duration::from_secs(15);

/// The flag, else `strategy-executor` beside this binary, else the one on PATH.
pub fn default_path(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("strategy-executor")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("strategy-executor"))
}

/// One registered strategy type, as `strategy-executor --list --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeInfo {
    pub strategy_type: String,
    pub description: String,
    pub example_config: Value,
    /// The modes it runs in (`live`, `backtest`, `screener`, `alert`); empty from an
    /// executor older than runs.
    #[serde(default)]
    pub modes: Vec<String>,
    /// Whether it supports interval executions.
    #[serde(default)]
    pub supports_interval: bool,
}

/// What one run of the executor printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run_executor(path: &Path, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Ran> {
    let mut command = tokio::process::Command::new(path);
    command
        .args(args)
        // Strategy code runs here: none of enginectl's settings (its database URL).
        .env_clear()
        .envs(engine_protocol::executor_env::inherited())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|err| cannot_run(path, err))?;
    let input = child.stdin.take();
    let feed = async move {
        if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
            // An executor that exits without reading closes the pipe: its exit says why.
            let _ = pipe.write_all(bytes).await;
            let _ = pipe.shutdown().await;
        }
    };
    let (_, output) = tokio::time::timeout(EXECUTOR_TIMEOUT, async {
        tokio::join!(feed, child.wait_with_output())
    })
    .await
    .with_context(|| {
        format!(
            "{} {} did not finish within {}s",
            path.display(),
            args.join(" "),
            EXECUTOR_TIMEOUT.as_secs()
        )
    })?;
    let output = output.with_context(|| format!("cannot read the output of {}", path.display()))?;
    Ok(Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// "cannot run the strategy executor …", with a hint when it is not there.
fn cannot_run(path: &Path, err: std::io::Error) -> anyhow::Error {
    let hint = if err.kind() == std::io::ErrorKind::NotFound {
        "; build it (cargo build --release) or pass --executor-path / ENGINE_EXECUTOR_PATH"
    } else {
        ""
    };
    anyhow::Error::new(err).context(format!(
        "cannot run the strategy executor {}{hint}",
        path.display()
    ))
}

/// The registered strategy types (`strategy-executor --list --json`).
pub async fn list_types(path: &Path) -> anyhow::Result<Vec<TypeInfo>> {
    let ran = run_executor(path, &["--list", "--json"], None).await?;
    if ran.code != Some(0) {
        bail!(
            "{} --list --json failed ({}): {}",
            path.display(),
            describe_code(ran.code),
            ran.stderr
        );
    }
    serde_json::from_str(&ran.stdout).with_context(|| {
        format!(
            "{} --list --json did not print the expected JSON array (is it a strategy-executor?)",
            path.display()
        )
    })
}

/// Whether `strategy_type` accepts `config`: `Ok(Err(reason))` when the executor
/// rejects it (exit code 2), an error when it cannot be asked.
pub async fn validate(
    path: &Path,
    strategy_type: &str,
    config: &Value,
) -> anyhow::Result<Result<(), String>> {
    use engine_protocol::validate::{validate_args, validate_config, ValidateError};
    let verdict = match validate_config(path, strategy_type, config, EXECUTOR_TIMEOUT).await {
        Ok(verdict) => verdict,
        Err(ValidateError::Spawn { source, .. }) => return Err(cannot_run(path, source)),
        Err(ValidateError::TimedOut { .. }) => bail!(
            "{} {} did not finish within {}s",
            path.display(),
            validate_args(strategy_type).join(" "),
            EXECUTOR_TIMEOUT.as_secs()
        ),
        Err(err @ ValidateError::Wait { .. }) => return Err(err.into()),
    };
    match verdict.code {
        Some(0) => Ok(Ok(())),
        Some(code) if code == EXIT_BAD_CONFIG => {
            let reason = verdict
                .stderr
                .strip_prefix("error: ")
                .unwrap_or(&verdict.stderr);
            Ok(Err(reason.to_string()))
        }
        code => bail!(
            "{} --validate failed ({}): {}",
            path.display(),
            describe_code(code),
            verdict.stderr
        ),
    }
}

/// An interval needs a type that supports interval execution: an error naming the
/// types that do when `strategy_type` does not (an unknown type is left to the
/// config check, which lists the known ones).
pub async fn check_interval_support(path: &Path, strategy_type: &str) -> anyhow::Result<()> {
    let infos = list_types(path)
        .await
        .context("cannot check that the type supports interval execution")?;
    match infos
        .iter()
        .find(|info| info.strategy_type == strategy_type)
    {
        Some(info) if !info.supports_interval => {
            let supported: Vec<&str> = infos
                .iter()
                .filter(|info| info.supports_interval)
                .map(|info| info.strategy_type.as_str())
                .collect();
            bail!(
                "strategy type '{strategy_type}' does not support interval execution (--interval); types that do: {}",
                supported.join(", ")
            )
        }
        _ => Ok(()),
    }
}

fn describe_code(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".to_string(),
    }
}

/// `enginectl types [--json]`.
pub async fn types(target: &Target, json: bool) -> anyhow::Result<Finished> {
    let infos = list_types(&target.executor_path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
        return Ok(Finished::Ok);
    }
    for (i, info) in infos.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{}", info.strategy_type);
        println!("  {}", info.description);
        println!("  example config: {}", info.example_config);
        if !info.modes.is_empty() {
            println!("  modes: {}", info.modes.join(", "));
        }
        let interval = if info.supports_interval { "yes" } else { "no" };
        println!("  interval executions: {interval}");
    }
    Ok(Finished::Ok)
}
