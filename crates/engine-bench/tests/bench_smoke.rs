//! Keeps `engine-bench` working: runs it in `--quick` mode against the debug
//! `engine-manager` and `strategy-executor` (real PostgreSQL and Redis) and checks
//! that it completes, prints its table and writes its JSON, and leaves nothing
//! behind. No timing is asserted: debug builds on a shared machine measure nothing.

#![allow(clippy::too_many_lines)] // a test reads best as one story

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of the workspace, beside `engine-bench` (built by `cargo build --workspace`).
fn workspace_bin(name: &str) -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_engine-bench"));
    let path = bench.with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --all-targets` before the tests",
        path.display()
    );
    path
}

#[test]
fn quick_bench_completes_and_prints_its_table() {
    let dir = std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("bench.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine-bench"))
        .arg("--quick")
        .arg("--json")
        .arg(&json_path)
        .arg("--manager-path")
        .arg(workspace_bin("engine-manager"))
        .arg("--executor-path")
        .arg(workspace_bin("strategy-executor"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run engine-bench");
    // Read both pipes while it runs so that neither fills up.
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "engine-bench --quick did not finish within 10 minutes; stderr:\n{}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(
        status.success(),
        "engine-bench --quick failed ({status}); stderr:\n{stderr}\nstdout:\n{stdout}"
    );
    for needle in [
        "| figure | n | p50 | p99 | goal | verdict |",
        "`start` INSERT → `running`",
        "metrics persisted",
        "market ticks through one executor",
        "### Growth curve",
        "INSERT → completed",
        "cancel INSERT → executed",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the JSON file"))
            .expect("valid JSON");
    assert_eq!(json["quick"], true);
    let figures = json["figures"].as_array().expect("figures");
    assert!(figures.len() >= 10, "{figures:?}");
    for figure in figures {
        assert!(
            figure["p50"].is_number() || figure["value"].is_number(),
            "a figure was not measured: {figure}"
        );
    }
    assert_eq!(json["growth"].as_array().map(Vec::len), Some(2));

    // Everything it created is gone: databases, Redis keys, state directories.
    let engines = json["extra"]["engines"]
        .as_array()
        .expect("engines")
        .clone();
    assert_eq!(
        engines.len(),
        5,
        "latency, throughput, two scales and runs: {engines:?}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let pool = sqlx::PgPool::connect(&admin)
            .await
            .expect("connect to PostgreSQL");
        let redis = redis::Client::open(
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string()),
        )
        .unwrap();
        let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
        for engine in &engines {
            let db = engine["database"].as_str().unwrap();
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                    .bind(db)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(left, 0, "database {db} was not dropped");
            let prefix = engine["redis_prefix"].as_str().unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(keys.is_empty(), "Redis keys left: {keys:?}");
            let state_dir = PathBuf::from(engine["state_dir"].as_str().unwrap());
            assert!(
                !state_dir.exists(),
                "{} was not removed",
                state_dir.display()
            );
        }
        pool.close().await;
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
