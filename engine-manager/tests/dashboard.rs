//! The web dashboard in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver, with `fantoccini`). The page lists the strategies with
//! their status, follows a status published on Redis within a bounded wait, refuses a
//! stop without the bearer token and shows why, stops a strategy with it (the row in
//! the database says `stopped`), and leaves a screenshot in `target/dashboard.png`
//! (`UPDATE_DASHBOARD_SCREENSHOT=1` also copies it to `engine-manager/docs/`).
//!
//! For the person on duty: the kill switch asks in a dialog (cancel inserts nothing,
//! confirm stops every strategy), a config edit the strategy rejects shows its words
//! and sends nothing while an accepted one is applied, the detail panel shows the
//! log's last lines and the history, and a strategy whose executor is killed raises
//! the alarm (banner and page title). An interval strategy's row draws its last
//! executions as a sparkline, one point per execution.
//!
//! It needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`ops/test.sh` installs
//! them); without them it fails and says how to install them, it never skips.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{wait_for, TestEngine, DEADLINE};
use engine_manager::config::HttpToken;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::{Path, PathBuf};
use uuid::Uuid;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "dashboard-test-token";

fn require_browser() {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard browser test needs Chromium and chromedriver, missing: {}. \
         Install them with `sudo apt-get install -y chromium chromium-driver` \
         (bash ops/test.sh does this for you)",
        missing.join(", ")
    );
}

/// chromedriver on a free loopback port, and the Chromium profile it uses. Dropping
/// it ends both (and any browser process left on that profile).
struct Browser {
    driver: tokio::process::Child,
    profile: PathBuf,
    client: Option<Client>,
}

impl Browser {
    async fn start() -> Browser {
        require_browser();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let profile =
            std::env::temp_dir().join(format!("engine-dashboard-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut browser = Browser {
            driver,
            profile,
            client: None,
        };
        let url = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to listen", DEADLINE, || {
            let url = url.clone();
            async move {
                tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
                    .await
                    .ok()
            }
        })
        .await;
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1500,700",
                    format!("--user-data-dir={}", browser.profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("start a Chromium session through chromedriver");
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session")
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }

    /// The text of the first element matching `css`, once `check` accepts it.
    async fn wait_text(&self, what: &str, css: &str, check: impl Fn(&str) -> bool) -> String {
        let client = self.client().clone();
        let check = &check;
        wait_for(what, DEADLINE, || {
            let client = client.clone();
            async move {
                let text = client
                    .find(Locator::Css(css))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                check(&text).then_some(text)
            }
        })
        .await
    }

    /// Type the bearer token into the page's token field.
    async fn enter_token(&self) {
        self.client()
            .find(Locator::Id("token"))
            .await
            .unwrap()
            .send_keys(TOKEN)
            .await
            .unwrap();
    }

    /// Set a form field's value (a textarea's, whatever its current content).
    async fn set_value(&self, css: &str, value: &str) {
        self.client()
            .execute(
                "document.querySelector(arguments[0]).value = arguments[1];",
                vec![json!(css), json!(value)],
            )
            .await
            .unwrap_or_else(|e| panic!("cannot set {css}: {e}"));
    }

    async fn click(&self, css: &str) {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
        // A browser left by a failed test: its command line names our unique profile.
        kill_processes_mentioning(&self.profile);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// SIGKILL the processes whose command line contains `needle` (a unique path).
fn kill_processes_mentioning(needle: &Path) {
    let needle = needle.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn target_dir() -> PathBuf {
    // target/debug/deps/dashboard-<hash> → target
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

fn row(id: Uuid) -> String {
    format!("tr[data-id=\"{id}\"]")
}

/// Publish on Redis, as an executor would, that strategy `id` (`name`) is in
/// `backoff` with `error`: what the page shows comes through the manager's relay.
async fn publish_backoff(engine: &TestEngine, id: Uuid, name: &str, error: &str) {
    publish_status(
        engine,
        id,
        name,
        json!({"status": "backoff", "node": "test", "error": error}),
    )
    .await;
}

/// Publish on Redis a status message of strategy `id` (`name`) with `fields`.
async fn publish_status(engine: &TestEngine, id: Uuid, name: &str, fields: serde_json::Value) {
    let mut redis = engine.redis_conn().await;
    let mut message = json!({
        "strategy_id": id, "name": name, "timestamp": chrono::Utc::now(), "pid": null,
    });
    for (key, value) in fields.as_object().unwrap() {
        message[key] = value.clone();
    }
    let _: () = redis::cmd("PUBLISH")
        .arg(engine.channels.status(id))
        .arg(message.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_state_and_sends_commands() {
    require_browser();
    let mut engine = TestEngine::new().await;
    engine.config.http_token = Some(HttpToken(TOKEN.into()));
    engine.start_manager().await;
    let running = engine.add_heartbeat("dash-running").await;
    let idle = engine.add_heartbeat("dash-idle").await;
    let broken = engine
        .add_strategy("dash-broken", "sma_crosover", json!({}), false)
        .await;
    engine.run_ok(Some(running), "start", json!({})).await;
    engine.run_failed(Some(broken), "start", json!({})).await;
    engine.wait_status(broken, "error").await;
    let base = engine.http_base().await;

    let browser = Browser::start().await;
    browser.client().goto(&format!("{base}/")).await.unwrap();

    // Every strategy is listed with its status.
    browser
        .wait_text(
            "the running strategy's row",
            &format!("{} .status", row(running)),
            |t| t == "running",
        )
        .await;
    browser
        .wait_text(
            "the idle strategy's row",
            &format!("{} .status", row(idle)),
            |t| t == "stopped",
        )
        .await;
    browser
        .wait_text(
            "the broken strategy's row",
            &format!("{} .status", row(broken)),
            |t| t == "error",
        )
        .await;
    let error = browser
        .wait_text(
            "the broken strategy's error",
            &format!("{} .last-error", row(broken)),
            |t| !t.is_empty(),
        )
        .await;
    assert!(error.contains("sma_crosover"), "{error}");
    browser
        .wait_text("the live connection", "#conn", |t| t == "live")
        .await;

    // A status published on Redis shows up (relayed by the manager over SSE).
    publish_backoff(&engine, idle, "dash-idle", "published on redis by the test").await;
    browser
        .wait_text(
            "the published status on the page",
            &format!("{} .status", row(idle)),
            |t| t == "backoff",
        )
        .await;
    browser
        .wait_text(
            "the published error on the page",
            &format!("{} .last-error", row(idle)),
            |t| t.contains("published on redis"),
        )
        .await;
    // Outside a cluster no node owns a strategy: the node column says so (the
    // message's `node` is only the manager's name).
    let node = browser
        .wait_text(
            "the idle strategy's node",
            &format!("{} .node", row(idle)),
            |t| !t.is_empty(),
        )
        .await;
    assert_eq!(node, "–");

    // Health arrives live for the running strategy.
    browser
        .wait_text(
            "CPU of the running strategy",
            &format!("{} .cpu .val", row(running)),
            |t| t.ends_with('%'),
        )
        .await;

    // Stop without the token: refused, and the row says why; nothing was inserted.
    browser
        .click(&format!("{} button[data-cmd=\"stop\"]", row(running)))
        .await;
    let refused = browser
        .wait_text(
            "the refusal",
            &format!("{} .outcome[data-state=\"refused\"]", row(running)),
            |t| !t.is_empty(),
        )
        .await;
    assert!(refused.contains("token"), "{refused}");
    assert_eq!(engine.state(running).await.status, "running");

    // With the token: the command runs and the outcome is shown.
    browser.enter_token().await;
    browser
        .click(&format!("{} button[data-cmd=\"stop\"]", row(running)))
        .await;
    let outcome = browser
        .wait_text(
            "the stop outcome",
            &format!("{} .outcome[data-state=\"executed\"]", row(running)),
            |t| t.starts_with("stop: executed"),
        )
        .await;
    assert!(outcome.contains("executed"), "{outcome}");
    let state = engine.state(running).await;
    assert_eq!(state.status, "stopped");
    assert_eq!(state.desired_state, "stopped");
    browser
        .wait_text(
            "the stopped status on the page",
            &format!("{} .status", row(running)),
            |t| t == "stopped",
        )
        .await;

    // A command that fails shows its error text.
    browser
        .click(&format!("{} button[data-cmd=\"start\"]", row(broken)))
        .await;
    let failed = browser
        .wait_text(
            "the failed start",
            &format!("{} .outcome[data-state=\"failed\"]", row(broken)),
            |t| !t.is_empty(),
        )
        .await;
    assert!(
        failed.contains("failed") && failed.contains("sma_crosover"),
        "{failed}"
    );

    // The screenshot: a test artifact, and optionally the README's picture.
    let png = browser.client().screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let artifact = target_dir().join("dashboard.png");
    std::fs::write(&artifact, &png).unwrap();
    eprintln!("dashboard screenshot: {}", artifact.display());
    if std::env::var_os("UPDATE_DASHBOARD_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("dashboard.png"), &png).unwrap();
    }

    // The detail panel shows times as 24-hour UTC with the date, like everything else.
    browser.click(&format!("{} .name", row(broken))).await;
    let first_time = browser
        .wait_text(
            "a command time in the detail panel",
            "#detail-body table td",
            |t| !t.is_empty(),
        )
        .await;
    assert!(is_utc_with_date(&first_time), "{first_time:?}");

    browser.close().await;
    engine.finish().await;
}

/// "2026-11-21 01:55:08.472 UTC"
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_node_each_strategy_shows_its_node_and_follows_it() {
    require_browser();
    let mut engine = TestEngine::new().await;
    engine.config.cluster = true;
    engine.config.node = Some("dash-node".into());
    engine.start_manager().await;
    let running = engine.add_heartbeat("node-running").await;
    let idle = engine.add_heartbeat("node-idle").await;
    engine.run_ok(Some(running), "start", json!({})).await;
    let base = engine.http_base().await;
    // The API gives each strategy's owner.
    let (_, body) = common::http_client::get(&base, "/api/strategies").await;
    assert_eq!(body["cluster"], true, "{body}");
    let listed = body["strategies"].as_array().unwrap();
    let of = |id: Uuid| {
        listed
            .iter()
            .find(|s| s["id"] == id.to_string())
            .map(|s| s["node"].clone())
    };
    assert_eq!(of(running), Some(json!("dash-node")), "{body}");
    assert_eq!(of(idle), Some(serde_json::Value::Null), "{body}");

    let browser = Browser::start().await;
    browser.client().goto(&format!("{base}/")).await.unwrap();
    browser
        .wait_text("the node column", "#strategies thead", |t| {
            t.contains("node")
        })
        .await;
    browser
        .wait_text(
            "the running strategy's node",
            &format!("{} .node", row(running)),
            |t| t == "dash-node",
        )
        .await;
    browser
        .wait_text(
            "the unowned strategy's node",
            &format!("{} .node", row(idle)),
            |t| t == "–",
        )
        .await;
    browser
        .wait_text("the live connection", "#conn", |t| t == "live")
        .await;
    // Another node speaks for it (a move, a failover): the cell follows.
    let moved = json!({"status": "running", "node": "dash-other"});
    publish_status(&engine, running, "node-running", moved).await;
    browser
        .wait_text(
            "the node after the move",
            &format!("{} .node", row(running)),
            |t| t == "dash-other",
        )
        .await;
    browser.close().await;
    engine.finish().await;
}

fn is_utc_with_date(text: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.3f UTC").is_ok()
}

async fn count(engine: &TestEngine, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&engine.pool)
        .await
        .unwrap()
}

/// Edit the config in the open detail panel and press apply.
async fn apply_config(browser: &Browser, config: serde_json::Value) {
    browser
        .wait_text("the config editor", "#config-apply", |t| t == "apply")
        .await;
    browser.set_value("#config-edit", &config.to_string()).await;
    browser.click("#config-apply").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_for_the_person_on_duty() {
    require_browser();
    let mut engine = TestEngine::new().await;
    engine.config.http_token = Some(HttpToken(TOKEN.into()));
    // A killed executor stays in backoff long enough to be seen.
    engine.config.restart_delay = std::time::Duration::from_secs(60);
    engine.config.restart_max_delay = std::time::Duration::from_secs(120);
    engine.start_manager().await;
    let a = engine.add_heartbeat("duty-a").await;
    let b = engine.add_heartbeat("duty-b").await;
    engine.run_ok(Some(a), "start", json!({})).await;
    engine.run_ok(Some(b), "start", json!({})).await;
    let base = engine.http_base().await;

    let browser = Browser::start().await;
    browser.client().goto(&format!("{base}/")).await.unwrap();
    for id in [a, b] {
        browser
            .wait_text("a running row", &format!("{} .status", row(id)), |t| {
                t == "running"
            })
            .await;
    }
    browser.enter_token().await;

    // An order of `a` (as its executor would have reported it) for the panel's
    // recent orders.
    sqlx::query(
        "INSERT INTO strategy_orders (strategy_id, client_order_id, lease_epoch, node, token, \
             side, quantity, price, fee, at) \
         VALUES ($1, 'e4-dash-s-1', 4, 'n1', 'BTC-USD', 'buy', 1.5, 101.25, 0, now())",
    )
    .bind(a)
    .execute(&engine.pool)
    .await
    .unwrap();

    // The detail panel: the log's last lines, the recent orders and the history.
    browser.click(&format!("{} .name", row(a))).await;
    let orders = browser
        .wait_text(
            "the recent orders in the detail panel",
            "#detail-orders",
            |t| t.contains("e4-dash-s-1"),
        )
        .await;
    assert!(
        orders.contains("epoch 4") && orders.contains("BTC-USD"),
        "{orders}"
    );
    let log = browser
        .wait_text("the log lines in the detail panel", "#detail-logs", |t| {
            !t.is_empty() && t != "loading…"
        })
        .await;
    assert!(
        !log.starts_with("could not") && !log.starts_with("no log yet"),
        "{log}"
    );
    browser
        .wait_text("the history in the detail panel", "#detail-body", |t| {
            // Section titles are upper-cased by the style sheet.
            let t = t.to_lowercase();
            t.contains("history: commands") && t.contains("start") && t.contains("→ running")
        })
        .await;

    // An edit the strategy rejects: its words, and no command row.
    apply_config(&browser, json!({"interval_ms": 0})).await;
    let rejected = browser
        .wait_text(
            "the strategy's rejection",
            "#config-msg[data-state=\"rejected\"]",
            |t| !t.is_empty(),
        )
        .await;
    assert!(
        rejected.contains("interval_ms") && rejected.contains("10 to 3600000"),
        "{rejected}"
    );
    let updates = "SELECT count(*) FROM strategy_commands WHERE command = 'update'";
    assert_eq!(count(&engine, updates).await, 0, "a rejected edit was sent");

    // An edit it accepts: an update row, executed, and the config changed.
    apply_config(&browser, json!({"interval_ms": 80})).await;
    browser
        .wait_text(
            "the update's outcome",
            "#config-msg[data-state=\"executed\"]",
            |t| t.starts_with("update: executed"),
        )
        .await;
    let executed = "SELECT count(*) FROM strategy_commands WHERE command = 'update' \
                    AND status = 'executed' AND parameters = '{\"config\": {\"interval_ms\": 80}}'";
    assert_eq!(count(&engine, executed).await, 1);
    assert_eq!(engine.state(a).await.config["interval_ms"], 80);
    browser.click("#detail-close").await;

    // Restart one strategy from its row.
    browser
        .click(&format!("{} button[data-cmd=\"restart\"]", row(b)))
        .await;
    browser
        .wait_text(
            "the restart's outcome",
            &format!("{} .outcome[data-state=\"executed\"]", row(b)),
            |t| t.starts_with("restart: executed"),
        )
        .await;

    // The kill switch asks first; cancel does nothing.
    let globals = "SELECT count(*) FROM strategy_commands WHERE strategy_id IS NULL";
    browser.click("#global-stop").await;
    let question = browser
        .wait_text("the confirmation dialog", "#confirm-text", |t| {
            !t.is_empty()
        })
        .await;
    assert!(question.contains("Stop every"), "{question}");
    browser.click("#confirm-cancel").await;
    browser
        .wait_text("the cancelled kill switch", "#global-outcome", |t| {
            t == "stop all: cancelled"
        })
        .await;
    assert_eq!(
        count(&engine, globals).await,
        0,
        "a cancelled stop was sent"
    );
    assert_eq!(engine.state(a).await.status, "running");

    // Confirmed: one global row, executed, and every strategy stopped.
    browser.click("#global-stop").await;
    browser
        .wait_text("the confirmation dialog", "#confirm-ok", |t| {
            t == "stop all"
        })
        .await;
    browser.click("#confirm-ok").await;
    browser
        .wait_text(
            "the kill switch's outcome",
            "#global-outcome[data-state=\"executed\"]",
            |t| t.starts_with("stop all: executed"),
        )
        .await;
    let executed = "SELECT count(*) FROM strategy_commands WHERE strategy_id IS NULL \
                    AND command = 'stop' AND status = 'executed'";
    assert_eq!(count(&engine, executed).await, 1);
    for id in [a, b] {
        assert_eq!(engine.state(id).await.status, "stopped");
        browser
            .wait_text("a stopped row", &format!("{} .status", row(id)), |t| {
                t == "stopped"
            })
            .await;
    }

    // The alarm: an executor killed (SIGKILL) puts its strategy in backoff.
    assert_eq!(browser.client().title().await.unwrap(), "strategy engine");
    engine.run_ok(Some(a), "start", json!({})).await;
    let pid = engine
        .state(a)
        .await
        .pid
        .expect("a running strategy has a pid");
    let pid = rustix::process::Pid::from_raw(pid).expect("a valid pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    engine.wait_status(a, "backoff").await;
    let banner = browser
        .wait_text("the alarm banner", "#alarm-text", |t| !t.is_empty())
        .await;
    assert!(banner.contains("duty-a (backoff)"), "{banner}");
    let client = browser.client().clone();
    let title = wait_for("the alarm in the page title", DEADLINE, || {
        let client = client.clone();
        async move {
            let title = client.title().await.ok()?;
            title.starts_with("(1) ⚠").then_some(title)
        }
    })
    .await;
    assert!(title.ends_with("strategy engine"), "{title}");
    let png = browser.client().screenshot().await.expect("screenshot");
    std::fs::write(target_dir().join("dashboard-duty.png"), &png).unwrap();

    browser.close().await;
    engine.finish().await;
}

/// The Runs panel: a run started from the page's form moves its bar and shows its
/// result (a backtest's metrics and equity curve); bad parameters are refused on the
/// page; a queued run's cancel button cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_from_the_page_moves_its_bar_and_shows_its_result() {
    require_browser();
    let engine = TestEngine::started().await;
    engine
        .add_strategy("dash-sma", "sma_crossover", json!({"token": "AAA"}), false)
        .await;
    sqlx::raw_sql(
        "INSERT INTO securities (symbol, name, sector) VALUES ('AAA', 'A Inc', 'Tech'), ('BBB', 'B Inc', 'Tech'); \
         INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT s, '1d', '2023-01-01T00:00:00Z'::timestamptz + make_interval(days => i), \
                100 + i, 101 + i, 99 + i, 100 + i + (i % 7) - 3, 1000 + 10 * i \
         FROM unnest(ARRAY['AAA', 'BBB']) s, generate_series(0, 699) i",
    )
    .execute(&engine.pool)
    .await
    .unwrap();
    let base = engine.http_base().await;
    let browser = Browser::start().await;
    browser.client().goto(&format!("{base}/")).await.unwrap();
    browser
        .wait_text("the strategy in the run form", "#run-strategy", |t| {
            t.contains("dash-sma")
        })
        .await;

    // Parameters that are not JSON are refused on the page; nothing is inserted.
    browser.set_value("#run-params", "{symbols").await;
    browser.click("#run-start").await;
    browser
        .wait_text("the refusal", "#run-outcome", |t| {
            t.contains("not valid JSON")
        })
        .await;
    assert_eq!(
        count(&engine, "SELECT count(*) FROM strategy_runs").await,
        0
    );

    // A backtest from the form: its row appears, its bar moves to 100 %, its result shows.
    browser
        .set_value(
            "#run-params",
            r#"{"symbols": ["AAA", "BBB"], "fee_bps": 5}"#,
        )
        .await;
    browser.click("#run-start").await;
    browser
        .wait_text("the run queued", "#run-outcome", |t| t.contains("queued"))
        .await;
    let id: Uuid = sqlx::query_scalar("SELECT id FROM strategy_runs")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    let bar = format!("tr[data-run=\"{id}\"] .pct");
    browser
        .wait_text("the bar at 100 %", &bar, |t| t == "100.0%")
        .await;
    browser
        .wait_text(
            "the run completed",
            &format!("tr[data-run=\"{id}\"] .run-state"),
            |t| t == "completed",
        )
        .await;
    browser
        .click(&format!("tr[data-run=\"{id}\"] button.run-show"))
        .await;
    browser
        .wait_text("the metrics", "#run-result-body", |t| {
            // (headings are shown in capitals)
            t.to_lowercase().contains("performance metrics") && t.contains("sharpe_ratio")
        })
        .await;
    let points: String = browser
        .client()
        .execute(
            "const s = document.querySelector('#run-result-body svg.equity'); return s ? s.dataset.points : '0';",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap_or("0")
        .to_string();
    assert!(
        points.parse::<usize>().unwrap() > 1,
        "an equity curve is drawn"
    );
    let _ = browser
        .client()
        .screenshot()
        .await
        .map(|png| std::fs::write(target_dir().join("dashboard-runs.png"), png));
    browser.close().await;
    engine.finish().await;
}

/// An interval strategy's execution sparkline as the page draws it: hidden or not,
/// its polyline's points, its tooltip and the text beside it (`None`: no row yet).
#[derive(Debug, serde::Deserialize)]
struct Sparkline {
    hidden: bool,
    points: String,
    title: String,
    text: String,
}

impl Sparkline {
    async fn of(browser: &Browser, id: Uuid) -> Option<Sparkline> {
        let value = browser
            .client()
            .execute(
                "const w = document.querySelector(arguments[0]); if (!w) return null; \
                 return { hidden: w.hidden, title: w.title, \
                          points: w.querySelector('polyline').getAttribute('points') || '', \
                          text: w.querySelector('.val').textContent };",
                vec![json!(format!("{} .metric.exec", row(id)))],
            )
            .await
            .ok()?;
        serde_json::from_value(value).ok()
    }

    fn point_count(&self) -> usize {
        self.points.split_whitespace().count()
    }
}

/// The executions of `name` the API lists (`executions.recent`), skipped ones left
/// out as the sparkline leaves them out.
async fn recent_ran(base: &str, name: &str) -> Vec<serde_json::Value> {
    let (_, body) = common::http_client::get(base, &format!("/api/strategies/{name}")).await;
    body["executions"]["recent"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|x| x["outcome"] != "skipped")
        .collect()
}

/// The execution sparkline in the real page: an interval strategy executed a few
/// times, then paused so that its list holds still; its row draws one point per
/// execution the API lists (each published on `strategy:execution:{id}`), the
/// tooltip names their durations and the text the last one; a continuous strategy
/// has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_strategys_executions_are_drawn_as_a_sparkline() {
    require_browser();
    let engine = TestEngine::started().await;
    let beat = engine
        .add_strategy(
            "dash-interval",
            "heartbeat",
            json!({"execute_delay_ms": 30}),
            false,
        )
        .await;
    sqlx::query("UPDATE strategy_configs SET execution_interval_s = 1 WHERE id = $1")
        .bind(beat)
        .execute(&engine.pool)
        .await
        .unwrap();
    let continuous = engine.add_heartbeat("dash-continuous").await;
    engine.run_ok(Some(continuous), "start", json!({})).await;
    let mut executions = engine.subscribe(&engine.channels.execution(beat)).await;
    engine.run_ok(Some(beat), "start", json!({})).await;
    let published = executions
        .expect_n(3, "an execution", |_, m| m["outcome"] == "ok")
        .await;
    engine.run_ok(Some(beat), "pause", json!({})).await;
    let base = engine.http_base().await;
    let listed = recent_ran(&base, "dash-interval").await;
    assert!(listed.len() >= 3, "{listed:?}");
    for (listed, message) in listed.iter().zip(&published) {
        assert_eq!(listed["started_at"], message["started_at"], "{listed}");
    }

    let browser = Browser::start().await;
    browser.client().goto(&format!("{base}/")).await.unwrap();
    let n = listed.len();
    let spark = wait_for("the sparkline with a point per execution", DEADLINE, || {
        let browser = &browser;
        async move {
            let spark = Sparkline::of(browser, beat).await?;
            (!spark.hidden && spark.point_count() == n).then_some(spark)
        }
    })
    .await;
    let durations: Vec<String> = listed
        .iter()
        .map(|x| x["duration_ms"].as_u64().unwrap().to_string())
        .collect();
    assert!(
        spark.title.starts_with(&format!(
            "last {} executions: {} ms",
            listed.len(),
            durations.join(", ")
        )),
        "{spark:?}"
    );
    assert_eq!(spark.text, format!("{} ms", durations.last().unwrap()));
    // Paused, the list held still while the page drew it.
    assert_eq!(recent_ran(&base, "dash-interval").await, listed);
    let none = Sparkline::of(&browser, continuous).await;
    assert!(none.is_some_and(|s| s.hidden && s.points.is_empty()));
    browser.close().await;
    engine.finish().await;
}

const READ_TOKEN: &str = "dashboard-read-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_a_server_that_guards_reads_asks_for_a_token_and_streams_with_it() {
    require_browser();
    let mut engine = TestEngine::new().await;
    engine.config.http_token = Some(HttpToken(TOKEN.into()));
    engine.config.http_read_token = Some(HttpToken(READ_TOKEN.into()));
    engine.start_manager().await;
    let id = engine.add_heartbeat("dash-guarded").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let base = engine.http_base().await;

    // The event stream takes the token as a query parameter, checked like the header.
    let http = reqwest::Client::new();
    for (query, expected) in [
        ("", 401),
        ("?access_token=wrong", 401),
        ("?access_token=dashboard-read-token", 200),
    ] {
        let answer = http
            .get(format!("{base}/api/events{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), expected, "/api/events{query}");
    }
    let elsewhere = http
        .get(format!("{base}/api/strategies?access_token={READ_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        elsewhere.status().as_u16(),
        401,
        "only event streams take it in the query"
    );

    let browser = Browser::start().await;
    browser.client().goto(&format!("{base}/")).await.unwrap();
    // The first read is refused: the page asks for a token.
    let why = browser
        .wait_text("the token form", "#token-why", |t| !t.is_empty())
        .await;
    assert!(why.contains("requires a bearer token"), "{why}");
    browser
        .client()
        .find(Locator::Id("token-ask"))
        .await
        .unwrap()
        .send_keys(READ_TOKEN)
        .await
        .unwrap();
    browser.click("#token-use").await;

    // With it, the snapshot and the live stream come through.
    browser
        .wait_text("the strategy's row", &format!("{} .status", row(id)), |t| {
            t == "running"
        })
        .await;
    browser
        .wait_text("the live connection", "#conn", |t| t == "live")
        .await;
    publish_backoff(
        &engine,
        id,
        "dash-guarded",
        "sent through the guarded stream",
    )
    .await;
    browser
        .wait_text(
            "a status relayed by the guarded stream",
            &format!("{} .last-error", row(id)),
            |t| t.contains("sent through the guarded stream"),
        )
        .await;
    // Kept for the tab only.
    let kept = browser
        .client()
        .execute(
            "return [sessionStorage.getItem('engine.token'), localStorage.getItem('engine.token')];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, json!([READ_TOKEN, null]));
    browser.close().await;
    engine.finish().await;
}
