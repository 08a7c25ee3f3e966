//! Secured transports work by URL alone: PostgreSQL with `sslmode=require`, Redis with
//! a password, and Redis over TLS (`rediss://`). The Redis servers here are private
//! instances on free loopback ports, started and removed by the test.

mod common;

use common::{TestEngine, DEADLINE};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use uuid::Uuid;

/// A private `redis-server`, killed on drop.
struct PrivateRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    fn start(dir: &Path, args: &[&str]) -> PrivateRedis {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .args(args.iter().map(|a| a.replace("{port}", &port.to_string())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (ops/ensure-services.sh installs it)");
        PrivateRedis {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start a heartbeat through the engine and see its `running` on Redis at `url`.
async fn start_and_observe(engine: &TestEngine, url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut pubsub = common::wait_for("the private redis to accept connections", DEADLINE, || {
        let client = client.clone();
        async move { client.get_async_pubsub().await.ok() }
    })
    .await;
    let id = engine
        .add_heartbeat(&format!("hb-{}", Uuid::new_v4().simple()))
        .await;
    let metrics = engine.channels.metrics(id);
    pubsub.subscribe(&metrics).await.unwrap();
    engine.run_ok(Some(id), "start", json!({})).await;
    // The executor publishes its metrics through the same authenticated/TLS URL.
    let msg = tokio::time::timeout(DEADLINE, async {
        use futures_util::StreamExt;
        pubsub.on_message().next().await
    })
    .await
    .expect("a metrics message over the secured Redis")
    .expect("subscription open");
    let payload: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
    assert_eq!(payload["strategy_id"], id.to_string());
    engine.run_ok(Some(id), "stop", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_password() {
    let mut engine = TestEngine::new().await;
    let redis = PrivateRedis::start(
        &engine.state_dir.join("redis-auth"),
        &["--port", "{port}", "--requirepass", "s3cret-pw"],
    );
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}/0", redis.port);
    engine.config.redis_url = url.clone();
    engine.start_manager().await;
    start_and_observe(&engine, &url).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls() {
    let mut engine = TestEngine::new().await;
    let dir = engine.state_dir.join("redis-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let redis = PrivateRedis::start(
        &dir,
        &[
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &cert,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "tls-pw",
        ],
    );
    // A self-signed certificate: `#insecure` skips verification (a real deployment
    // uses a certificate its roots trust and drops the fragment).
    let url = format!("rediss://:tls-pw@127.0.0.1:{}/0#insecure", redis.port);
    engine.config.redis_url = url.clone();
    // `#insecure` is refused without it (test builds' Redis client can skip the check).
    engine.config.tls_insecure = true;
    engine.start_manager().await;
    start_and_observe(&engine, &url).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_sslmode_require() {
    let mut engine = TestEngine::new().await;
    let app = format!("engine-ssl-{}", Uuid::new_v4().simple());
    engine.config.database_url =
        format!("{}?sslmode=require&application_name={app}", engine.db_url);
    engine.start_manager().await;
    let id = engine.add_heartbeat("hb-ssl").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let (total, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
    )
    .bind(&app)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert!(total > 0, "the manager's connections were not found");
    assert_eq!(total, encrypted, "every manager connection uses TLS");
    engine.finish().await;
}
