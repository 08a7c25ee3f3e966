//! The real `engine-manager` binary as a subprocess (so a test can SIGKILL it): its
//! environment from a [`ManagerConfig`], its start, and the wait for its lease.

use super::operator::{wait_for, Operator};
use super::workspace_bin;
use engine_manager::config::ManagerConfig;
use std::path::Path;
use std::time::Duration;

/// The environment that gives the `engine-manager` binary the settings of `config`
/// (every variable it reads; see `engine_manager::config`).
pub fn manager_env(config: &ManagerConfig) -> Vec<(String, String)> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut env = vec![
        ("DATABASE_URL", config.database_url.clone()),
        ("REDIS_URL", config.redis_url.clone()),
        ("ENGINE_REDIS_PREFIX", config.redis_prefix.clone()),
        ("ENGINE_STATE_DIR", config.state_dir.display().to_string()),
        ("ENGINE_HEALTH_INTERVAL", ms(config.health_interval)),
        ("ENGINE_METRICS_INTERVAL", ms(config.metrics_interval)),
        ("ENGINE_POLL_INTERVAL", ms(config.poll_interval)),
        ("ENGINE_START_TIMEOUT", ms(config.start_timeout)),
        ("ENGINE_ACK_TIMEOUT", ms(config.ack_timeout)),
        ("ENGINE_RESTART_DELAY", ms(config.restart_delay)),
        ("ENGINE_RESTART_MAX_DELAY", ms(config.restart_max_delay)),
        ("ENGINE_RESTART_JITTER", config.restart_jitter.to_string()),
        (
            "ENGINE_RESTART_MAX_CRASHES",
            config.restart_max_crashes.to_string(),
        ),
        ("ENGINE_LOG_FORMAT", "pretty".to_string()),
        ("ENGINE_HTTP_ADDR", "off".to_string()),
        ("NO_COLOR", "1".to_string()),
        ("RUST_LOG", "info".to_string()),
    ];
    if let Some(path) = &config.executor_path {
        env.push(("ENGINE_EXECUTOR_PATH", path.display().to_string()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Start the real `engine-manager` binary with exactly `env` (plus `PATH`), its
/// output appended to `log`. It is SIGKILLed if the handle is dropped.
pub fn spawn_manager_binary(env: &[(String, String)], log: &Path) -> tokio::process::Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("manager log");
    let err = out.try_clone().expect("manager log");
    tokio::process::Command::new(workspace_bin("engine-manager"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(out))
        .stderr(std::process::Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn engine-manager")
}

/// Wait until the manager with OS pid `pid` holds the lease (it serves the database).
pub async fn wait_lease(op: &Operator, pid: u32, deadline: Duration) {
    wait_for(
        &format!("manager {pid} to take its lease"),
        deadline,
        || async {
            let holder: Option<i32> =
                sqlx::query_scalar("SELECT pid FROM engine_manager_lease WHERE id = 1")
                    .fetch_optional(&op.pool)
                    .await
                    .ok()
                    .flatten();
            (holder == Some(pid as i32)).then_some(())
        },
    )
    .await
}
