//! The manager's HTTP server against a real manager, database and Redis: status
//! codes, `/health` (200, and 503 with Redis unreachable), `/metrics` parsed by a
//! Prometheus parser, the command API end to end (row inserted, outcome read back),
//! the bearer token, the Host/Origin guard, and the server-sent-events relay.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{wait_for, TestEngine, DEADLINE};
use engine_manager::config::HttpToken;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use uuid::Uuid;

use common::http_client::{client, get};

async fn post(
    base: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = client().post(format!("{base}{path}"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Poll `GET /api/commands/{id}` until the command has finished.
async fn outcome(base: &str, id: &str) -> Value {
    wait_for(
        &format!("command {id} to finish (via HTTP)"),
        DEADLINE,
        || async move {
            let (status, body) = get(base, &format!("/api/commands/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["finished"].as_bool().unwrap_or(false).then_some(body)
        },
    )
    .await
}

/// `/metrics` parsed: every sample as (name, labels, value).
async fn scrape(base: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let r = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape =
        prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            let labels: HashMap<String, String> = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (s.metric, labels, value)
        })
        .collect()
}

fn find<'a>(
    samples: &'a [(String, HashMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_api_health_and_metrics() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-http").await;
    let base = engine.http_base().await;

    // The dashboard page and its assets are served.
    let page = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/dashboard.js"));
    for asset in ["/dashboard.js", "/dashboard.css"] {
        let r = client().get(format!("{base}{asset}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
    }

    // POST start: 202 with the row's id; the row is in the table; the outcome is read back.
    let (status, accepted) = post(&base, "/api/strategies/hb-http/start", None, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["status"], "pending");
    assert_eq!(accepted["strategy_id"], id.to_string());
    let command_id = accepted["id"].as_str().unwrap().to_string();
    let row: (Option<Uuid>, String) =
        sqlx::query_as("SELECT strategy_id, command FROM strategy_commands WHERE id = $1")
            .bind(Uuid::parse_str(&command_id).unwrap())
            .fetch_one(&engine.pool)
            .await
            .expect("the API inserted a command row");
    assert_eq!(row, (Some(id), "start".to_string()));
    let done = outcome(&base, &command_id).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(done["error"], Value::Null);
    assert!(done["executed_at"].is_string() && done["created_at"].is_string());
    assert_eq!(engine.state(id).await.status, "running");

    // A failing command: its error comes back through the API.
    let (status, accepted) = post(
        &base,
        "/api/strategies/hb-http/resume",
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, accepted_pause) =
        post(&base, &format!("/api/strategies/{id}/pause"), None, None).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a strategy id works as well as its name: {accepted_pause}"
    );
    assert_eq!(
        outcome(&base, accepted["id"].as_str().unwrap()).await["status"],
        "executed"
    );
    assert_eq!(
        outcome(&base, accepted_pause["id"].as_str().unwrap()).await["status"],
        "executed"
    );
    let (_, again) = post(&base, "/api/strategies/hb-http/resume", None, None).await;
    assert_eq!(
        outcome(&base, again["id"].as_str().unwrap()).await["status"],
        "executed"
    );

    // 404 / 400 paths, each with a JSON error that says what would be right.
    let (status, body) = post(&base, "/api/strategies/hb-htp/start", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("hb-htp"), "{body}");
    assert!(
        body.get("did_you_mean").is_some() || body.get("hint").is_some(),
        "{body}"
    );
    let (status, body) = post(&base, "/api/strategies/hb-http/halt", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["allowed"],
        json!([
            "start", "stop", "restart", "update", "pause", "resume", "cancel", "trigger", "move"
        ])
    );
    let (status, body) = post(
        &base,
        "/api/strategies/hb-http/stop",
        Some(json!({"timeout_s": -1})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("timeout_s"),
        "{body}"
    );
    let bad_json = client()
        .post(format!("{base}/api/strategies/hb-http/update"))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);
    let (status, _) = get(&base, "/api/strategies/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&base, "/api/commands/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&base, &format!("/api/commands/{}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(&base, "/no/such/thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["endpoints"].is_array());
    let (status, _) = get(&base, "/api/history?minutes=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The strategy list and the detail view.
    let (status, list) = get(&base, "/api/strategies").await;
    assert_eq!(status, StatusCode::OK);
    let listed = list["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hb-http")
        .expect("the strategy is listed")
        .clone();
    assert_eq!(listed["status"], "running");
    assert_eq!(listed["strategy_type"], "heartbeat");
    assert!(listed["pid"].is_number());
    let (status, detail) = get(&base, "/api/strategies/hb-http").await;
    assert_eq!(status, StatusCode::OK);
    assert!(detail["recent_commands"].as_array().unwrap().len() >= 4);
    assert!(!detail["recent_events"].as_array().unwrap().is_empty());

    // Live health and metrics arrive in the API once the sampler and executor report.
    wait_for(
        "health and metrics in /api/strategies/hb-http",
        DEADLINE,
        || {
            let base = base.clone();
            async move {
                let (_, d) = get(&base, "/api/strategies/hb-http").await;
                (d["health"]["memory_mb"].as_f64()? > 0.0
                    && d["metrics"]["orders_count"].is_number())
                .then_some(())
            }
        },
    )
    .await;

    // /health: everything reachable.
    let (status, health) = get(&base, "/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"]["ok"], true);
    assert_eq!(health["redis"]["ok"], true);
    assert_eq!(health["strategies"]["running"], 1);

    // /metrics: parses, and has the per-strategy and engine-wide series.
    let samples = wait_for("per-strategy health series in /metrics", DEADLINE, || {
        let base = base.clone();
        async move {
            let samples = scrape(&base).await;
            let name = [("name", "hb-http")];
            (find(&samples, "engine_strategy_cpu_percent", &name).is_some()
                && find(&samples, "engine_strategy_orders", &name).is_some())
            .then_some(samples)
        }
    })
    .await;
    let who = [("name", "hb-http"), ("type", "heartbeat")];
    assert_eq!(find(&samples, "engine_strategy_up", &who), Some(&1.0));
    let running = [("name", "hb-http"), ("status", "running")];
    assert_eq!(
        find(&samples, "engine_strategy_status", &running),
        Some(&1.0)
    );
    let stopped = [("name", "hb-http"), ("status", "stopped")];
    assert_eq!(
        find(&samples, "engine_strategy_status", &stopped),
        Some(&0.0)
    );
    assert!(*find(&samples, "engine_strategy_memory_resident_bytes", &who).unwrap() > 0.0);
    assert_eq!(find(&samples, "engine_strategy_restarts", &who), Some(&0.0));
    assert!(find(&samples, "engine_strategy_pnl", &who).is_some());
    assert!(find(&samples, "engine_strategy_positions", &who).is_some());
    assert!(find(&samples, "engine_strategy_uptime_seconds", &who).is_some());
    let started = [("command", "start"), ("status", "executed")];
    assert!(*find(&samples, "engine_commands_total", &started).unwrap() >= 1.0);
    let latency = samples
        .iter()
        .find(|(n, l, _)| {
            n == "engine_command_latency_seconds"
                && l.get("command").map(String::as_str) == Some("start")
        })
        .expect("the latency histogram");
    assert!(latency.2 >= 1.0, "histogram count {}", latency.2);
    assert_eq!(find(&samples, "engine_database_up", &[]), Some(&1.0));
    assert_eq!(find(&samples, "engine_redis_up", &[]), Some(&1.0));
    assert!(*find(&samples, "engine_manager_memory_resident_bytes", &[]).unwrap() > 0.0);
    assert!(find(&samples, "engine_manager_uptime_seconds", &[]).is_some());

    // The guard: a foreign Host (DNS rebinding) and a cross-site POST are refused.
    let r = client()
        .get(format!("{base}/api/strategies"))
        .header("Host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client()
        .post(format!("{base}/api/strategies/hb-http/stop"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let own_origin = client()
        .post(format!("{base}/api/strategies/hb-http/stop"))
        .header("Origin", base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(own_origin.status(), StatusCode::ACCEPTED);
    let body: Value = own_origin.json().await.unwrap();
    assert_eq!(
        outcome(&base, body["id"].as_str().unwrap()).await["status"],
        "executed"
    );
    assert_eq!(engine.state(id).await.status, "stopped");
    engine.finish().await;
}

/// Insert a command row as if it was written `age` ago (`executed_at` too when it
/// is finished).
async fn old_command(
    engine: &TestEngine,
    strategy_id: Uuid,
    command: &str,
    status: &str,
    age: &str,
) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO strategy_commands (strategy_id, command, status, created_at, executed_at) \
         VALUES ($1, $2, $3, now() - $4::interval, \
                 CASE WHEN $3 IN ('executed', 'failed') THEN now() - $4::interval END) \
         RETURNING id",
    )
    .bind(strategy_id)
    .bind(command)
    .bind(status)
    .bind(age)
    .fetch_one(&engine.pool)
    .await
    .expect("insert an old command")
}

/// `--command-retention` (30 days by default): finished rows older than it are
/// deleted by the prune that runs at start-up and every hour; an old row still
/// pending is kept (and carried out), a recent finished one too; and the command
/// counters of `/metrics` still count the deleted rows (seeded before the prune).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_retention_prunes_only_old_finished_rows() {
    let mut engine = TestEngine::new().await;
    assert_eq!(
        engine.config.command_retention,
        std::time::Duration::from_secs(30 * 86400)
    );
    let id = engine.add_heartbeat("hb-retention").await;
    let old_executed = old_command(&engine, id, "stop", "executed", "40 days").await;
    let old_failed = old_command(&engine, id, "pause", "failed", "40 days").await;
    let old_pending = old_command(&engine, id, "stop", "pending", "40 days").await;
    let recent = old_command(&engine, id, "stop", "executed", "29 days").await;
    engine.start_manager().await;

    let pool = engine.pool.clone();
    let remaining = |ids: Vec<Uuid>| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM strategy_commands WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    wait_for("the old finished commands to be pruned", DEADLINE, || {
        let left = remaining(vec![old_executed, old_failed]);
        async move { left.await.is_empty().then_some(()) }
    })
    .await;
    let mut kept = remaining(vec![old_pending, recent]).await;
    kept.sort();
    let mut expected = vec![old_pending, recent];
    expected.sort();
    assert_eq!(kept, expected, "pending and recent rows are kept");
    // The old pending stop is carried out now, and stays.
    assert_eq!(engine.outcome(old_pending).await.status, "executed");
    assert_eq!(remaining(vec![old_pending]).await, vec![old_pending]);

    // Two stops seeded (one of them pruned since), one counted as it was written.
    let base = engine.http_base().await;
    let count = |samples: &[(String, HashMap<String, String>, f64)], command, status| {
        let labels = [("command", command), ("status", status)];
        find(samples, "engine_commands_total", &labels).copied()
    };
    let samples = wait_for("the stops counted in /metrics", DEADLINE, || {
        let base = base.clone();
        async move {
            let samples = scrape(&base).await;
            (count(&samples, "stop", "executed") == Some(3.0)).then_some(samples)
        }
    })
    .await;
    assert_eq!(
        count(&samples, "pause", "failed"),
        Some(1.0),
        "a pruned row stays counted"
    );
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_commands() {
    let mut engine = TestEngine::new().await;
    engine.config.http_token = Some(HttpToken("s3cret-token".into()));
    engine.start_manager().await;
    engine.add_heartbeat("hb-token").await;
    let base = engine.http_base().await;

    let r = client()
        .post(format!("{base}/api/strategies/hb-token/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    let (status, body) = post(&base, "/api/strategies/hb-token/start", None, Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM strategy_commands")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "a refused request inserted a command");

    let (status, body) = post(
        &base,
        "/api/strategies/hb-token/start",
        None,
        Some("s3cret-token"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        outcome(&base, body["id"].as_str().unwrap()).await["status"],
        "executed"
    );
    // Reading needs no token.
    let (status, _) = get(&base, "/api/strategies/hb-token").await;
    assert_eq!(status, StatusCode::OK);
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_redis_is_unreachable() {
    let mut engine = TestEngine::new().await;
    // A loopback port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    engine.config.redis_url = format!("redis://127.0.0.1:{closed}");
    engine.start_manager().await;
    let base = engine.http_base().await;

    let (status, health) = get(&base, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["redis"]["ok"], false);
    assert!(health["redis"]["error"].is_string());
    assert_eq!(health["database"]["ok"], true);
    let samples = scrape(&base).await;
    assert_eq!(find(&samples, "engine_redis_up", &[]), Some(&0.0));
    assert_eq!(find(&samples, "engine_database_up", &[]), Some(&1.0));
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_relay_redis_to_the_browser() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-events").await;
    let base = engine.http_base().await;

    let response = reqwest::Client::new()
        .get(format!("{base}/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut events = EventReader::new(response);
    let (_, hello) = events.next(|kind, _| kind == "hello").await;
    assert_eq!(hello["redis_prefix"], engine.prefix);

    // A message whose strategy_id does not match its channel is dropped; the good one
    // published after it is the first status event to arrive.
    let mut redis = engine.redis_conn().await;
    let forged = json!({"strategy_id": Uuid::new_v4(), "name": "x", "status": "error",
                        "timestamp": chrono::Utc::now(), "node": "n", "pid": null});
    let good = json!({"strategy_id": id, "name": "hb-events", "status": "backoff",
                      "timestamp": chrono::Utc::now(), "node": "n", "pid": null,
                      "error": "published by the test"});
    let _: () = redis::cmd("PUBLISH")
        .arg(engine.channels.status(id))
        .arg(forged.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("PUBLISH")
        .arg(engine.channels.status(id))
        .arg(good.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    let (_, status) = events.next(|kind, _| kind == "status").await;
    assert_eq!(status["strategy_id"], id.to_string());
    assert_eq!(status["error"], "published by the test");

    // The manager's own traffic is relayed too: engine health every interval.
    let (_, engine_health) = events.next(|kind, _| kind == "engine").await;
    assert!(engine_health["strategies_running"].is_number());
    engine.finish().await;
}

/// Reads server-sent events ("event: x\ndata: y\n\n") from a streaming response.
struct EventReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl EventReader {
    fn new(response: reqwest::Response) -> EventReader {
        EventReader {
            body: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            buffer: String::new(),
        }
    }

    /// The next event for which `want(kind, data)` holds (bounded by DEADLINE).
    async fn next(&mut self, want: impl Fn(&str, &Value) -> bool) -> (String, Value) {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut kind = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if want(&kind, &value) {
                    return (kind, value);
                }
            }
            let chunk = tokio::time::timeout_at(until, self.body.next())
                .await
                .expect("timed out waiting for a server-sent event")
                .expect("the event stream ended")
                .expect("reading the event stream");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_http_address_is_not_fatal_and_is_retried() {
    let mut engine = TestEngine::new().await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap();
    engine.config.http_addr = engine_manager::config::HttpAddr(Some(addr));
    engine.start_manager().await;
    // The manager works without HTTP: commands still run.
    let id = engine.add_heartbeat("hb-port-taken").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    assert!(!engine
        .state_dir
        .join(engine_manager::http::ADDR_FILE)
        .exists());

    // Once the address is free, the server comes up on it.
    drop(squatter);
    let base = engine.http_base().await;
    assert_eq!(base, format!("http://{addr}"));
    let (status, health) = get(&base, "/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    engine.finish().await;
}

/// What PostgreSQL refuses to store is answered as the client's mistake (400, in
/// words), never as "the database is unavailable" (503) with PostgreSQL's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_database_refuses_is_a_bad_request_in_words() {
    let engine = TestEngine::started().await;
    engine.add_heartbeat("hb-refused").await;
    let base = engine.http_base().await;

    // jsonb cannot hold \u0000.
    let (status, body) = post(
        &base,
        "/api/strategies/hb-refused/update",
        Some(json!({"config": {"label": "a\u{0}b"}})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("\\u0000"), "{error}");
    assert!(!error.contains("error returned from database"), "{error}");

    // A name with a NUL character: no strategy can be called that.
    let (status, body) = get(&base, "/api/strategies/hb%00x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("NUL"), "{error}");
    assert!(!error.contains("error returned from database"), "{error}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM strategy_commands")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    engine.finish().await;
}

/// POST a raw body (with the token) and read the JSON answer.
async fn post_raw(base: &str, path: &str, body: &str, token: &str) -> (StatusCode, Value) {
    let r = client()
        .post(format!("{base}{path}"))
        .header("Content-Type", "application/json")
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn command_rows(engine: &TestEngine) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM strategy_commands")
        .fetch_one(&engine.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_is_checked_by_the_strategy_before_an_update() {
    const TOKEN: &str = "duty-token";
    let mut engine = TestEngine::new().await;
    engine.config.http_token = Some(HttpToken(TOKEN.into()));
    engine.start_manager().await;
    let id = engine.add_heartbeat("hb-check").await;
    let base = engine.http_base().await;
    let path = "/api/strategies/hb-check/validate";

    // The guard holds: no token, a wrong token, a foreign Origin.
    let (status, _) = post(&base, path, Some(json!({"config": {}})), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let r = client()
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .header("Origin", "http://evil.example")
        .json(&json!({"config": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Bad input: a 4xx in words.
    for (body, words) in [
        ("not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ("{}", "no \"config\""),
        (r#"{"config": 5}"#, "config must be a JSON object"),
        (r#"{"config": {}, "dry": true}"#, "unknown field 'dry'"),
    ] {
        let (status, answer) = post_raw(&base, path, body, TOKEN).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(words), "{body}: {error}");
    }
    let (status, answer) = post_raw(
        &base,
        "/api/strategies/hb-nope/validate",
        r#"{"config": {}}"#,
        TOKEN,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("hb-nope"));

    // The strategy's own verdict, in its words; nothing is inserted.
    let (status, answer) = post_raw(&base, path, r#"{"config": {"interval_ms": 0}}"#, TOKEN).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["valid"], false);
    let reason = answer["reason"].as_str().unwrap();
    assert!(
        reason.contains("interval_ms") && reason.contains("10 to 3600000"),
        "{reason}"
    );
    let (status, answer) = post_raw(&base, path, r#"{"config": {"interval_ms": 75}}"#, TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["config"]["interval_ms"], 75);
    assert_eq!(command_rows(&engine).await, 0, "validation inserted a row");
    assert_eq!(engine.state(id).await.config["interval_ms"], 50);
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_tail_and_the_kill_switch_over_http() {
    const TOKEN: &str = "duty-token";
    let mut engine = TestEngine::new().await;
    engine.config.http_token = Some(HttpToken(TOKEN.into()));
    engine.start_manager().await;
    let a = engine.add_heartbeat("hb-duty-a").await;
    let b = engine.add_heartbeat("hb-duty-b").await;
    let base = engine.http_base().await;

    // Never started: no log yet, said plainly.
    let (status, answer) = get(&base, "/api/strategies/hb-duty-a/logs").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["exists"], false);
    assert_eq!(answer["lines"], json!([]));
    for bad in ["0", "abc", "99999", "-1"] {
        let (status, answer) = get(
            &base,
            &format!("/api/strategies/hb-duty-a/logs?lines={bad}"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("lines must be"),
            "{answer}"
        );
    }
    let (status, _) = get(&base, "/api/strategies/hb-nope/logs").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    engine.run_ok(Some(a), "start", json!({})).await;
    engine.run_ok(Some(b), "start", json!({})).await;
    let lines = wait_for("log lines of a running strategy", DEADLINE, || {
        let base = base.clone();
        async move {
            let (status, answer) = get(&base, "/api/strategies/hb-duty-a/logs?lines=3").await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            let lines = answer["lines"].as_array().cloned().unwrap_or_default();
            (!lines.is_empty()).then_some(lines)
        }
    })
    .await;
    assert!(lines.len() <= 3, "{lines:?}");

    // The kill switch: only stop, pause and resume; parameters checked; the token.
    let (status, answer) = post_raw(&base, "/api/global/start", "", TOKEN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("stop, pause or resume"));
    let (status, answer) =
        post_raw(&base, "/api/global/stop", r#"{"timeout_s": "x"}"#, TOKEN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("timeout_s"),
        "{answer}"
    );
    let (status, _) = post(&base, "/api/global/stop", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        command_rows(&engine).await,
        2,
        "a refused request inserted a row"
    );

    let (status, answer) = post_raw(&base, "/api/global/pause", "", TOKEN).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["strategy_id"], Value::Null);
    assert_eq!(
        outcome(&base, answer["id"].as_str().unwrap()).await["status"],
        "executed"
    );
    assert_eq!(engine.state(a).await.status, "paused");
    assert_eq!(engine.state(b).await.status, "paused");
    let (status, answer) = post_raw(&base, "/api/global/stop", r#"{"timeout_s": 5}"#, TOKEN).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        outcome(&base, answer["id"].as_str().unwrap()).await["status"],
        "executed"
    );
    assert_eq!(engine.state(a).await.status, "stopped");
    assert_eq!(engine.state(b).await.status, "stopped");
    engine.finish().await;
}
