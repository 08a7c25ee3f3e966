//! Runs over HTTP against a real manager, database and Redis: `POST /api/runs`
//! (202 with the queue position, the estimated start and the event stream; bad
//! input refused in words with nothing inserted), reads of a run, its items, the
//! lists and the queue, `POST /api/runs/{id}/cancel` (the `cancel` command row), the
//! token, and `GET /api/runs/{id}/events` (the first event is the run's present
//! state from its row; the channel's events follow; the stream ends after the final
//! one with the row's result).
//!
//! The SSE test plays the manager's part of a run by hand (it writes the row and
//! publishes on `strategy:run:{id}`), so it tests the API alone.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{TestEngine, DEADLINE};
use engine_manager::config::HttpToken;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use common::http_client::{client, get};

async fn post(base: &str, path: &str, body: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn count(engine: &TestEngine, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&engine.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_inserted_read_listed_and_cancelled() {
    let engine = TestEngine::started().await;
    let sid = engine
        .add_strategy("sma-runs", "sma_crossover", json!({"token": "AAPL"}), false)
        .await;
    let base = engine.http_base().await;

    // A run: 202, queued, its place, an estimated start, its event stream.
    let (status, first) = post(
        &base,
        "/api/runs",
        r#"{"strategy": "sma-runs", "mode": "backtest", "parameters": {"symbols": ["AAPL"], "fee_bps": 5}, "priority": "low", "timeout_s": 600}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["status"], "queued");
    let run_id: Uuid = first["run_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(first["sse_endpoint"], format!("/api/runs/{run_id}/events"));
    assert!(first["estimated_start_time"].is_string(), "{first}");
    let row: (Uuid, String, Value, String, Option<i32>) = sqlx::query_as(
        "SELECT strategy_id, mode, parameters, priority, timeout_s FROM strategy_runs WHERE id = $1",
    )
    .bind(run_id)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            sid,
            "backtest".into(),
            json!({"symbols": ["AAPL"], "fee_bps": 5}),
            "low".into(),
            Some(600),
        )
    );
    // By id, default priority and no parameters.
    let (status, second) = post(
        &base,
        "/api/runs",
        &json!({"strategy": sid.to_string(), "mode": "screener"}).to_string(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    let second_id = second["run_id"].as_str().unwrap().to_string();

    // Reads: the run, the queue, the lists.
    let (status, run) = get(&base, &format!("/api/runs/{run_id}")).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["strategy"], "sma-runs");
    assert_eq!(run["mode"], "backtest");
    assert!(run["can_cancel"].is_boolean(), "{run}");
    for key in [
        "state",
        "progress",
        "stage",
        "started_at",
        "estimated_completion",
        "metrics",
        "result",
    ] {
        assert!(
            run.get(key).is_some(),
            "GET /api/runs/{{id}} lacks {key}: {run}"
        );
    }
    let (status, queue) = get(&base, "/api/queue").await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert!(queue["max_concurrent"].as_i64().unwrap() >= 1, "{queue}");
    assert!(
        queue["total_queued"].is_number() && queue["queue"].is_array(),
        "{queue}"
    );
    let (_, listed) = get(&base, "/api/runs?strategy=sma-runs").await;
    let ids: Vec<&str> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![second_id.as_str(), &run_id.to_string()],
        "newest first"
    );
    let (status, _) = get(&base, "/api/runs?state=nonsense").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, none) = get(&base, "/api/runs?strategy=sma-runs&state=timed_out").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["runs"], json!([]));

    // Items, in processing order.
    sqlx::query(
        "INSERT INTO strategy_run_items (run_id, item, position, passed, score) VALUES \
         ($1, 'MSFT', 1, false, 40), ($1, 'AAPL', 0, true, 81.5)",
    )
    .bind(run_id)
    .execute(&engine.pool)
    .await
    .unwrap();
    let (status, items) = get(&base, &format!("/api/runs/{run_id}/items")).await;
    assert_eq!(status, StatusCode::OK, "{items}");
    assert_eq!(items["items"][0]["item"], "AAPL");
    assert_eq!(items["items"][0]["score"], 81.5);
    assert_eq!(items["items"][1]["passed"], false);

    // Unknown and malformed ids.
    let (status, body) = get(&base, &format!("/api/runs/{}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = get(&base, "/api/runs/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Cancel: a command row for the run's strategy, 202 with its id.
    let (status, cancel) = post(&base, &format!("/api/runs/{run_id}/cancel"), "", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancel}");
    let command_id: Uuid = cancel["id"].as_str().unwrap().parse().unwrap();
    let (strategy_id, word, params): (Option<Uuid>, String, Value) = sqlx::query_as(
        "SELECT strategy_id, command, parameters FROM strategy_commands WHERE id = $1",
    )
    .bind(command_id)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(strategy_id, Some(sid));
    assert_eq!(word, "cancel");
    assert_eq!(params, json!({"run_id": run_id}));
    let (status, body) = post(
        &base,
        &format!("/api/runs/{}/cancel", Uuid::new_v4()),
        "",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_runs_are_refused_in_words_and_insert_nothing() {
    let engine = TestEngine::started().await;
    engine
        .add_strategy("sma-bad", "sma_crossover", json!({}), false)
        .await;
    let base = engine.http_base().await;
    let cases: [(&str, StatusCode, &str); 11] = [
        ("not json", StatusCode::BAD_REQUEST, "not valid JSON"),
        ("[1]", StatusCode::BAD_REQUEST, "must be a JSON object"),
        (
            r#"{"mode": "backtest"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "strategy is missing",
        ),
        (
            r#"{"strategy": "sma-bad"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "mode is missing",
        ),
        (
            r#"{"strategy": "sma-bad", "mode": "replay"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "backtest, screener, alert",
        ),
        (
            r#"{"strategy": "sma-bad", "mode": "live"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "backtest, screener, alert",
        ),
        (
            r#"{"strategy": "sma-bad", "mode": "alert", "priority": "urgent"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "high, normal, low",
        ),
        (
            r#"{"strategy": "sma-bad", "mode": "alert", "timeout_s": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "0 < timeout_s <= 86400",
        ),
        (
            r#"{"strategy": "sma-bad", "mode": "alert", "timeout_s": 90000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "0 < timeout_s <= 86400",
        ),
        (
            r#"{"strategy": "sma-bad", "mode": "alert", "parameters": [1]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "parameters must be a JSON object",
        ),
        (
            r#"{"strategy": "sma-bad", "mode": "alert", "symbol": "AAPL"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field 'symbol'",
        ),
    ];
    for (body, want, words) in cases {
        let (status, answer) = post(&base, "/api/runs", body, None).await;
        assert_eq!(status, want, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{body}: {error}");
    }
    let (status, answer) = post(
        &base,
        "/api/runs",
        r#"{"strategy": "sma-bda", "mode": "alert"}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("no strategy named 'sma-bda'"));
    assert_eq!(
        count(&engine, "SELECT count(*) FROM strategy_runs").await,
        0
    );
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_runs_and_cancels() {
    let mut engine = TestEngine::new().await;
    engine.config.http_token = Some(HttpToken("run-token".into()));
    engine.start_manager().await;
    engine
        .add_strategy("sma-token", "sma_crossover", json!({}), false)
        .await;
    let base = engine.http_base().await;
    let body = r#"{"strategy": "sma-token", "mode": "screener"}"#;
    let (status, _) = post(&base, "/api/runs", body, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&base, "/api/runs", body, Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        count(&engine, "SELECT count(*) FROM strategy_runs").await,
        0
    );
    let (status, run) = post(&base, "/api/runs", body, Some("run-token")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run_id = run["run_id"].as_str().unwrap();
    let (status, _) = post(&base, &format!("/api/runs/{run_id}/cancel"), "", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        count(&engine, "SELECT count(*) FROM strategy_commands").await,
        0
    );
    // Reading needs no token.
    let (status, _) = get(&base, &format!("/api/runs/{run_id}")).await;
    assert_eq!(status, StatusCode::OK);
    engine.finish().await;
}

/// Server-sent events, until the stream ends.
struct Events {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl Events {
    async fn open(base: &str, path: &str) -> Events {
        let response = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Events {
            body: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (name, data), or `None` once the stream ended (bounded).
    async fn next(&mut self) -> Option<(String, Value)> {
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
                if kind.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((kind, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
            let chunk = tokio::time::timeout_at(until, self.body.next())
                .await
                .expect("timed out waiting for a server-sent event");
            match chunk {
                None => return None,
                Some(chunk) => self.buffer.push_str(&String::from_utf8_lossy(
                    &chunk.expect("reading the stream"),
                )),
            }
        }
    }
}

/// A run the test plays the manager for: inserted and made `running` (with `set`)
/// in one transaction, so that the real manager never sees it queued.
async fn running_run(engine: &TestEngine, strategy: Uuid, set: &str) -> Uuid {
    let mut tx = engine.pool.begin().await.unwrap();
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO strategy_runs (strategy_id, mode) VALUES ($1, 'screener') RETURNING id",
    )
    .bind(strategy)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(&format!(
        "UPDATE strategy_runs SET state = 'running', started_at = now(), {set}, updated_at = now() \
         WHERE id = $1"
    ))
    .bind(id)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_events_start_with_the_present_state_and_end_after_the_final_one() {
    let engine = TestEngine::started().await;
    let sid = engine
        .add_strategy("sma-sse", "sma_crossover", json!({}), false)
        .await;
    let base = engine.http_base().await;
    // The manager takes over runs left active only at its start: once a probe run
    // has been through its queue, it leaves the runs this test plays alone.
    let probe: Uuid = sqlx::query_scalar(
        "INSERT INTO strategy_runs (strategy_id, mode) VALUES ($1, 'alert') RETURNING id",
    )
    .bind(sid)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    common::wait_for("the manager to take the probe run", DEADLINE, || async {
        let state: String = sqlx::query_scalar("SELECT state FROM strategy_runs WHERE id = $1")
            .bind(probe)
            .fetch_one(&engine.pool)
            .await
            .ok()?;
        (state != "queued").then_some(())
    })
    .await;
    // A run already half done (written as the manager would), seen by a late page.
    let run_id = running_run(
        &engine,
        sid,
        "progress_percent = 42, completed_items = 21, total_items = 50, stage = 'evaluating', \
         current_item = 'MSFT', eta_s = 3, items_per_second = 7",
    )
    .await;
    let mut events = Events::open(&base, &format!("/api/runs/{run_id}/events")).await;
    let (kind, first) = events.next().await.expect("a first event");
    assert_eq!(kind, "snapshot");
    assert_eq!(first["state"], "running");
    assert_eq!(first["progress_percent"], 42.0);
    assert_eq!(first["current_item"], "MSFT");
    assert_eq!(first["metrics"]["eta_s"], 3.0);
    assert!(first["estimated_completion"].is_string(), "{first}");

    // The channel's events follow, named by their event_type.
    let mut redis = engine.redis_conn().await;
    let event = |event_type: &str, state: &str, percent: f64| {
        json!({"event_type": event_type, "run_id": run_id, "strategy_id": sid, "name": "sma-sse",
               "timestamp": chrono::Utc::now(), "mode": "screener", "state": state,
               "stage": "evaluating", "progress_percent": percent, "current_item": "NVDA",
               "total_items": 50, "completed_items": 30, "message": null,
               "metrics": {"items_per_second": 8.0, "eta_s": 2.0}})
    };
    // Published until the stream has it (the subscription is made as the stream opens).
    let progress = event("progress", "running", 60.0);
    let _: () = redis::cmd("PUBLISH")
        .arg(engine.channels.run(run_id))
        .arg(progress.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    let (kind, data) = events.next().await.expect("the progress event");
    assert_eq!(kind, "progress", "{data}");
    assert_eq!(data["progress_percent"], 60.0);

    // The final event, then the row's final state with its result, then the end.
    sqlx::query(
        "UPDATE strategy_runs SET state = 'completed', progress_percent = 100, finished_at = now(), \
         result = '{\"universe_size\": 50}', updated_at = now() WHERE id = $1",
    )
    .bind(run_id)
    .execute(&engine.pool)
    .await
    .unwrap();
    let _: () = redis::cmd("PUBLISH")
        .arg(engine.channels.run(run_id))
        .arg(event("completed", "completed", 100.0).to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    let (kind, _) = events.next().await.expect("the completed event");
    assert_eq!(kind, "completed");
    let (kind, last) = events.next().await.expect("the final snapshot");
    assert_eq!(kind, "snapshot");
    assert_eq!(last["state"], "completed");
    assert_eq!(last["result"]["universe_size"], 50);
    assert_eq!(last["can_cancel"], false);
    assert!(
        events.next().await.is_none(),
        "the stream goes on after the end"
    );

    // A page that opens after the end gets the final state, and the stream ends.
    let mut late = Events::open(&base, &format!("/api/runs/{run_id}/events")).await;
    let (kind, data) = late.next().await.unwrap();
    assert_eq!(
        (kind.as_str(), data["state"].as_str()),
        ("snapshot", Some("completed"))
    );
    assert!(late.next().await.is_none());

    // Without the channel (nothing published), the row alone ends the stream.
    let quiet = running_run(&engine, sid, "stage = 'evaluating'").await;
    let mut events = Events::open(&base, &format!("/api/runs/{quiet}/events")).await;
    let (_, first) = events.next().await.unwrap();
    assert!(first["state"].is_string());
    sqlx::query(
        "UPDATE strategy_runs SET state = 'cancelled', error = 'cancelled by the test', \
         finished_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(quiet)
    .execute(&engine.pool)
    .await
    .unwrap();
    let last = loop {
        let (_, data) = events
            .next()
            .await
            .expect("the row's final state on the stream");
        if data["state"] == "cancelled" {
            break data;
        }
    };
    assert_eq!(last["error"], "cancelled by the test");
    assert!(events.next().await.is_none());
    engine.finish().await;
}

/// `symbols` in `securities` with `days` daily bars each from 2024-01-01.
async fn seed_bars(engine: &TestEngine, symbols: &[&str], days: i32) {
    sqlx::query(
        "INSERT INTO securities (symbol, name, sector) \
         SELECT s, s || ' Inc', 'Tech' FROM unnest($1::text[]) s",
    )
    .bind(symbols)
    .execute(&engine.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT s, '1d', '2024-01-01T00:00:00Z'::timestamptz + make_interval(days => i), \
                100 + i, 101 + i, 99 + i, 100 + i + (i % 7) - 3, 1000 + 10 * i \
         FROM unnest($1::text[]) s, generate_series(0, $2 - 1) i",
    )
    .bind(symbols)
    .bind(days)
    .execute(&engine.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_posted_over_http_progresses_and_ends_with_its_result() {
    let engine = TestEngine::started().await;
    engine
        .add_strategy("sma-e2e", "sma_crossover", json!({"token": "AAA"}), false)
        .await;
    seed_bars(&engine, &["AAA", "BBB"], 300).await;
    let base = engine.http_base().await;
    let (status, run) = post(
        &base,
        "/api/runs",
        r#"{"strategy": "sma-e2e", "mode": "backtest", "parameters": {"symbols": ["AAA", "BBB"], "start": "2024-01-01", "end": "2024-12-31"}}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let id = run["run_id"].as_str().unwrap().to_string();
    // The stream from the start: a snapshot, the run's events, its end.
    let mut events = Events::open(&base, &format!("/api/runs/{id}/events")).await;
    let mut kinds = Vec::new();
    let mut last = Value::Null;
    while let Some((kind, data)) = events.next().await {
        kinds.push(kind);
        last = data;
    }
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("snapshot"),
        "{kinds:?}"
    );
    assert_eq!(last["state"], "completed", "{kinds:?} {last}");
    assert!(last["result"]["performance_metrics"].is_object(), "{last}");
    let (_, items) = get(&base, &format!("/api/runs/{id}/items")).await;
    assert_eq!(items["count"], 2, "{items}");
    let (_, done) = get(&base, &format!("/api/runs/{id}")).await;
    assert_eq!(done["can_cancel"], false);
    assert_eq!(done["progress_percent"], 100.0);
    let (_, queue) = get(&base, "/api/queue").await;
    assert_eq!(
        queue["max_concurrent"], 2,
        "the manager's default, from its lease row"
    );
    assert_eq!(queue["max_concurrent_reported"], true);
    engine.finish().await;
}
