//! The operator's side of a test: bounded waits, and the database as an operator
//! sees it (strategy and command rows), whichever PostgreSQL the engine runs on.

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

/// Deadline of the waits for what should happen promptly (a command, a status).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Poll `check` every 20 ms until it yields `Some`, or panic naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_wait_for(deadline, &mut check).await {
        Some(v) => v,
        None => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

/// Poll `check` every 20 ms until it yields `Some`; `None` after `deadline`.
pub async fn try_wait_for<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn process_alive(pid: u32) -> bool {
    engine_protocol::procfs::start_ticks(pid).is_some()
}

// ------------------------------------------------------------------ database rows

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StrategyState {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    pub desired_state: String,
    pub pid: Option<i32>,
    pub last_error: Option<String>,
    pub restart_count: i32,
    pub config: Value,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

const STATE_COLUMNS: &str =
    "id, name, status, desired_state, pid, last_error, restart_count, config, started_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommandState {
    pub status: String,
    pub error: Option<String>,
}

/// The operator's side of the database: inserts strategies and commands, reads rows.
#[derive(Clone)]
pub struct Operator {
    pub pool: PgPool,
}

impl Operator {
    /// A small pool that gives up quickly while the database is away.
    pub async fn connect(url: &str) -> Operator {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect(url)
            .await
            .expect("operator connection");
        Operator { pool }
    }

    /// A strategy that does not start at boot (`auto_start` false, the default).
    pub async fn add_strategy(&self, name: &str, strategy_type: &str, config: Value) -> Uuid {
        self.insert_strategy(name, strategy_type, config, false)
            .await
    }

    pub async fn insert_strategy(
        &self,
        name: &str,
        strategy_type: &str,
        config: Value,
        auto_start: bool,
    ) -> Uuid {
        sqlx::query_scalar(
            "INSERT INTO strategy_configs (name, strategy_type, config, auto_start) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(strategy_type)
        .bind(config)
        .bind(auto_start)
        .fetch_one(&self.pool)
        .await
        .expect("insert strategy")
    }

    /// Insert a command; `Err` if the database refused or is away.
    pub async fn try_command(
        &self,
        strategy_id: Option<Uuid>,
        command: &str,
        parameters: &Value,
    ) -> Result<Uuid, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO strategy_commands (strategy_id, command, parameters) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(strategy_id)
        .bind(command)
        .bind(parameters)
        .fetch_one(&self.pool)
        .await
    }

    pub async fn command(
        &self,
        strategy_id: Option<Uuid>,
        command: &str,
        parameters: Value,
    ) -> Uuid {
        self.try_command(strategy_id, command, &parameters)
            .await
            .expect("insert command")
    }

    /// Wait until the command ends (`executed` or `failed`); returns its row.
    pub async fn outcome(&self, id: Uuid, deadline: Duration) -> CommandState {
        let pool = self.pool.clone();
        wait_for(&format!("command {id} to finish"), deadline, || {
            let pool = pool.clone();
            async move {
                let row: CommandState =
                    sqlx::query_as("SELECT status, error FROM strategy_commands WHERE id = $1")
                        .bind(id)
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                matches!(row.status.as_str(), "executed" | "failed").then_some(row)
            }
        })
        .await
    }

    /// Insert a command and wait until it ends; its id and final row.
    pub async fn run(
        &self,
        strategy_id: Option<Uuid>,
        command: &str,
        parameters: Value,
    ) -> (Uuid, CommandState) {
        let id = self.command(strategy_id, command, parameters).await;
        (id, self.outcome(id, DEADLINE).await)
    }

    /// Insert a command and require that it ends `executed`.
    pub async fn run_ok(
        &self,
        strategy_id: Option<Uuid>,
        command: &str,
        parameters: Value,
    ) -> Uuid {
        let (id, out) = self.run(strategy_id, command, parameters).await;
        assert_eq!(out.status, "executed", "{command} failed: {:?}", out.error);
        id
    }

    pub async fn try_state(&self, id: Uuid) -> Option<StrategyState> {
        sqlx::query_as(&format!(
            "SELECT {STATE_COLUMNS} FROM strategy_configs WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .ok()
    }

    pub async fn state(&self, id: Uuid) -> StrategyState {
        self.try_state(id).await.expect("strategy row")
    }

    pub async fn states(&self) -> Result<Vec<StrategyState>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {STATE_COLUMNS} FROM strategy_configs ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
    }

    pub async fn wait_status(&self, id: Uuid, status: &str) -> StrategyState {
        self.wait_status_within(id, status, DEADLINE).await
    }

    pub async fn wait_status_within(
        &self,
        id: Uuid,
        status: &str,
        deadline: Duration,
    ) -> StrategyState {
        let want = status.to_string();
        wait_for(&format!("strategy {id} to be {status}"), deadline, || {
            let want = want.clone();
            async move { self.try_state(id).await.filter(|s| s.status == want) }
        })
        .await
    }
}
