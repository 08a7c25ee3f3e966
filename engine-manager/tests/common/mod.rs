//! The test harness of every integration test crate here (`mod common;`): a real
//! manager (in-process, via `engine_manager::run`, or the binary as a subprocess)
//! driving real `strategy-executor` processes, each test on its own database and its
//! own Redis namespace. Waits are bounded conditions, never bare sleeps; one set of
//! deadlines ([`DEADLINE`], [`engine::MANAGER_STOP_DEADLINE`]).
//!
//! # Layout
//! - [`cgroups`]: where the manager puts an executor's limits group (cgroup v1).
//! - [`cluster`]: cluster nodes (the manager binary with `--cluster`), owners, and
//!   each strategy's executors across the nodes.
//! - [`db_proxy`]: a TCP proxy between a manager and PostgreSQL that cuts or stalls
//!   its connections.
//! - [`feed`]: market data: a token's ticks published until dropped.
//! - [`engine`]: [`TestEngine`], one test's engine, on the machine's shared
//!   PostgreSQL and Redis ([`TestEngine::new`]) or on private servers the test may
//!   take away ([`TestEngine::on_private_services`]); Redis subscriptions.
//! - [`operator`]: the database as an operator sees it, and [`wait_for`].
//! - [`private_services`]: a private `postgres` and `redis-server` per test.
//! - [`processes`]: an engine's executors in the process table.
//! - [`log_capture`]: the in-process managers' log lines.
//! - [`http_client`]: the API tests' HTTP client and JSON GET.
//! - [`manager_binary`]: the `engine-manager` binary as a subprocess.
#![allow(dead_code)] // each test crate uses a part of the harness
#![allow(unused_imports)] // re-exported for the test crates, each uses some

pub mod cgroups;
pub mod cluster;
pub mod db_proxy;
pub mod engine;
pub mod feed;
pub mod http_client;
pub mod log_capture;
pub mod manager_binary;
pub mod operator;
pub mod private_services;
pub mod processes;

pub use engine::{Subscription, TestEngine};
pub use feed::Feed;
pub use log_capture::LogCapture;
pub use manager_binary::{manager_env, spawn_manager_binary, wait_lease};
pub use operator::{
    process_alive, try_wait_for, wait_for, CommandState, Operator, StrategyState, DEADLINE,
};
pub use private_services::{PgStop, PrivateServices, RedisStop};
pub use processes::{
    environ, executors_alive_together, executors_by_strategy, executors_in_proc,
    kill_all_executors, sigkill, write_executable, SLEEPING_RUN,
};

use std::path::PathBuf;

/// The admin URL of the machine's PostgreSQL; each test creates its own database
/// through it.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The machine's Redis; each test works under its own key prefix.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// The workspace's `strategy-executor` (built by `cargo build --workspace`).
pub fn executor_path() -> PathBuf {
    workspace_bin("strategy-executor")
}

/// A binary of the workspace (`strategy-executor`, `enginectl`, `engine-manager`),
/// found beside the test binary's directory (`target/debug/deps/…` → `target/debug`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --all-targets` before the tests",
        path.display()
    );
    path
}
