//! Redis is not a back door (CONTRACT.md §8, issue #14): each executor connects as a
//! Redis user of its own, read from its environment as strategy code would read it,
//! which may publish its own status and metrics and nothing else — not another
//! strategy's channels, not the command channels, not market data, no key. A command
//! published on Redis reaches no executor; the control link's does. The users live
//! as long as their executors (through a manager restart, and a Redis that lost
//! them), and go with them or, left behind by a manager that died, at the next
//! start-up. A manager whose Redis user may not create users gives executors its own
//! URL and says so.

mod common;

use common::{environ, wait_for, TestEngine, DEADLINE};
use engine_manager::redis_users::{user_name, USERS_DIR};
use engine_protocol::{ExecutorCommand, ExecutorCommandKind};
use serde_json::json;
use std::collections::HashSet;
use uuid::Uuid;

/// The `REDIS_URL` a live executor holds.
fn executor_redis_url(pid: u32) -> String {
    environ(pid)
        .into_iter()
        .find_map(|(name, value)| (name == "REDIS_URL").then_some(value))
        .unwrap_or_else(|| panic!("executor {pid} has no REDIS_URL"))
}

/// The Redis user a URL names (percent-decoded, as the client sends it).
fn url_user(url: &str) -> String {
    let url = url::Url::parse(url).expect("the executor's Redis URL parses");
    percent_decode(url.username())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("a UTF-8 user name")
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("the URL opens")
        .get_multiplexed_async_connection()
        .await
        .expect("the executor's credentials log in")
}

/// `PUBLISH channel payload` with `con`: the number of receivers, or the error code.
async fn publish(
    con: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    payload: &str,
) -> Result<i64, String> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(con)
        .await
        .map_err(|e: redis::RedisError| e.code().unwrap_or("no code").to_string())
}

/// The Redis users whose names start with this engine's prefix.
async fn users(engine: &TestEngine) -> HashSet<String> {
    let mut con = engine.redis_conn().await;
    let all: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut con)
        .await
        .unwrap();
    all.into_iter()
        .filter(|u| u.starts_with(&engine.prefix))
        .collect()
}

async fn wait_user(engine: &TestEngine, name: &str, present: bool) {
    wait_for(
        &format!(
            "redis user {name} to be {}",
            if present { "there" } else { "gone" }
        ),
        DEADLINE,
        || async { (users(engine).await.contains(name) == present).then_some(()) },
    )
    .await;
}

fn pause_command(strategy_id: Option<Uuid>) -> String {
    serde_json::to_string(&ExecutorCommand {
        strategy_id,
        name: "attacker".to_string(),
        timestamp: chrono::Utc::now(),
        command: ExecutorCommandKind::Pause,
        command_id: Uuid::new_v4(),
        config: None,
        mode: None,
        reason: None,
        source: Some("manager".to_string()),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_strategy_cannot_command_or_impersonate_another_and_redis_commands_are_not_obeyed() {
    let engine = TestEngine::started().await;
    let a = engine.add_heartbeat("acl-a").await;
    let b = engine.add_heartbeat("acl-b").await;
    engine.run_ok(Some(a), "start", json!({})).await;
    engine.run_ok(Some(b), "start", json!({})).await;
    let lease_said: Option<String> =
        sqlx::query_scalar("SELECT redis_acl FROM engine_manager_lease WHERE id = 1")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert_eq!(lease_said.as_deref(), Some("per-executor users"));

    // What strategy a's code finds in its environment: a user of its own.
    let url_a = executor_redis_url(engine.live_pid(a).await);
    assert_eq!(url_user(&url_a), user_name(&engine.prefix, a));
    assert_ne!(
        url_a, engine.config.redis_url,
        "the executor has the manager's URL"
    );
    let url_b = executor_redis_url(engine.live_pid(b).await);
    assert_eq!(url_user(&url_b), user_name(&engine.prefix, b));

    let ch = &engine.channels;
    let mut as_a = connect(&url_a).await;
    // Its own channels: allowed.
    let status = json!({"strategy_id": a, "name": "acl-a", "status": "running"}).to_string();
    assert!(publish(&mut as_a, &ch.status(a), &status).await.is_ok());
    assert!(publish(&mut as_a, &ch.metrics(a), "{}").await.is_ok());
    // Another strategy's, the command channels, market data: refused.
    let fake = json!({"strategy_id": b, "name": "acl-b", "status": "stopped"}).to_string();
    for channel in [
        ch.status(b),
        ch.metrics(b),
        ch.commands(b),
        ch.commands(a),
        ch.global_commands(),
        ch.live_data("AAA"),
        ch.health(),
        ch.execution(b),
    ] {
        assert_eq!(
            publish(&mut as_a, &channel, &fake).await,
            Err("NOPERM".to_string()),
            "strategy a may publish on {channel}"
        );
    }
    // No key either: not the state hashes dashboards read, not anything else.
    let hset: redis::RedisResult<i64> = redis::cmd("HSET")
        .arg(ch.state_key(b))
        .arg("status")
        .arg("stopped")
        .query_async(&mut as_a)
        .await;
    assert_eq!(hset.unwrap_err().code(), Some("NOPERM"));
    let acl: redis::RedisResult<Vec<String>> =
        redis::cmd("ACL").arg("USERS").query_async(&mut as_a).await;
    assert_eq!(acl.unwrap_err().code(), Some("NOPERM"));
    // It may still subscribe to market data (what it is for).
    let mut pubsub = redis::Client::open(url_a.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(ch.live_data("AAA")).await.unwrap();
    assert!(pubsub.subscribe(ch.status(b)).await.is_err());

    // A command published on Redis, by someone who may (the test's own superuser
    // connection), for one strategy and for all: no executor receives it.
    let mut admin = engine.redis_conn().await;
    for (channel, target) in [(ch.commands(a), Some(a)), (ch.global_commands(), None)] {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(pause_command(target))
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(receivers, 0, "an executor listens on {channel}");
    }
    // The control link's command is obeyed; after it went through the executor
    // (acknowledged), a is paused by it and b, commanded only over Redis, runs.
    engine.run_ok(Some(a), "pause", json!({})).await;
    engine.wait_status(a, "paused").await;
    engine
        .run_ok(Some(b), "update", json!({"config": {"interval_ms": 60}}))
        .await;
    assert_eq!(engine.state(b).await.status, "running");

    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_users_live_as_long_as_their_executors() {
    let mut engine = TestEngine::started().await;
    let a = engine.add_heartbeat("users-a").await;
    engine.run_ok(Some(a), "start", json!({})).await;
    let name_a = user_name(&engine.prefix, a);
    wait_user(&engine, &name_a, true).await;
    let record = engine.state_dir.join(USERS_DIR).join(a.to_string());
    let digest = std::fs::read_to_string(&record).expect("the user is recorded");
    assert_eq!(digest.trim().len(), 64, "a SHA-256 digest: {digest}");
    let url_a = executor_redis_url(engine.live_pid(a).await);
    assert!(
        !digest.contains(url::Url::parse(&url_a).unwrap().password().unwrap()),
        "the password itself is on disk"
    );

    // A manager that died left a user behind for an executor that is gone.
    engine.stop_manager().await;
    let ghost = Uuid::new_v4();
    let ghost_name = user_name(&engine.prefix, ghost);
    let mut admin = engine.redis_conn().await;
    let ghost_digest = format!("{:064x}", 7);
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&ghost_name)
        .arg("on")
        .arg(format!("#{ghost_digest}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    std::fs::write(
        engine.state_dir.join(USERS_DIR).join(ghost.to_string()),
        &ghost_digest,
    )
    .unwrap();

    // The next manager adopts a, whose user stays, and deletes the ghost's.
    engine.start_manager().await;
    wait_user(&engine, &ghost_name, false).await;
    assert!(users(&engine).await.contains(&name_a));
    assert!(record.exists());
    // The adopted executor still publishes with its credentials.
    let mut metrics = engine.subscribe(&engine.channels.metrics(a)).await;
    metrics
        .expect("a's metrics after adoption", |_, _| true)
        .await;

    // Redis loses the user (a restart without an ACL file): the manager makes it
    // again from the digest, and a's credentials work again.
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&name_a)
        .query_async(&mut admin)
        .await
        .unwrap();
    wait_user(&engine, &name_a, true).await;
    connect(&url_a).await;

    // Stopped for good: the user and its record go.
    engine.run_ok(Some(a), "stop", json!({})).await;
    wait_user(&engine, &name_a, false).await;
    assert!(!record.exists());
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acl_rights_executors_get_the_managers_url_and_the_manager_says_so() {
    let mut engine = TestEngine::new().await;
    // The manager logs in as a user that may do everything but manage users.
    let manager_user = format!("{}manager-no-acl", engine.prefix);
    let mut admin = engine.redis_conn().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&manager_user)
        .arg("on")
        .arg(">manager-password")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-acl")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(&engine.config.redis_url).unwrap();
    url.set_username(&manager_user).unwrap();
    url.set_password(Some("manager-password")).unwrap();
    engine.config.redis_url = url.to_string();
    engine.start_manager().await;

    let a = engine.add_heartbeat("shared-a").await;
    engine.run_ok(Some(a), "start", json!({})).await;
    let url_a = executor_redis_url(engine.live_pid(a).await);
    assert_eq!(url_a, engine.config.redis_url);
    let mut metrics = engine.subscribe(&engine.channels.metrics(a)).await;
    metrics.expect("a's metrics", |_, _| true).await;

    let said: String = wait_for(
        "the manager to say how executors reach redis",
        DEADLINE,
        || {
            let pool = engine.pool.clone();
            async move {
                sqlx::query_scalar::<_, Option<String>>(
                    "SELECT redis_acl FROM engine_manager_lease WHERE id = 1",
                )
                .fetch_one(&pool)
                .await
                .ok()
                .flatten()
            }
        },
    )
    .await;
    assert!(said.starts_with("shared URL: "), "{said}");
    assert!(said.contains("NOPERM"), "{said}");
    assert!(
        !users(&engine).await.contains(&user_name(&engine.prefix, a)),
        "a user was made without the right to"
    );
    engine.finish().await;
}
