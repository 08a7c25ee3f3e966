//! End-to-end tests of the `strategy-executor` binary: real processes, a real Redis
//! (at `REDIS_URL`, default `redis://127.0.0.1:6379`) and a test-side Unix listener
//! playing the manager's end of the control link.
//!
//! Each test uses its own Redis prefix and its own temporary directory, so the tests
//! run in parallel. Every wait is bounded by a deadline.

#![allow(clippy::too_many_lines)] // tests may be long; the 80-line rule is for the code they test
use engine_protocol::control::{self, ExecutorMessage, ManagerMessage};
use engine_protocol::{Channels, Status, StopMode};
use engine_protocol::{ExecutorCommand, ExecutorCommandKind, MetricsMessage, StatusMessage};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Child;
use uuid::Uuid;

/// How long any single expected event may take.
const DEADLINE: Duration = Duration::from_secs(10);

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_strategy-executor")
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A private temporary directory, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("executor-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn socket(&self) -> PathBuf {
        self.0.join("control.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the executor logs of a failed test, and show them.
            for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    eprintln!("--- {} ---\n{text}", entry.path().display());
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Poll `condition` until it returns `Some`, or panic after `deadline`.
async fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        if tokio::time::Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Run the binary to completion with `stdin` as its input.
fn run_to_end(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(exe())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// An executor in run mode, its output going to a log file in the test directory.
struct Executor {
    child: Child,
    strategy_id: Uuid,
    log: PathBuf,
}

struct Spawn<'a> {
    dir: &'a TestDir,
    strategy_id: Uuid,
    /// Read the config from this file instead of stdin.
    config_file: Option<PathBuf>,
    strategy_type: &'a str,
    config: Value,
    prefix: String,
    redis_url: String,
    extra_args: Vec<String>,
    control_socket: bool,
}

impl<'a> Spawn<'a> {
    fn new(dir: &'a TestDir, strategy_type: &'a str, config: Value) -> Self {
        Spawn {
            dir,
            strategy_id: Uuid::new_v4(),
            config_file: None,
            strategy_type,
            config,
            prefix: format!("t-{}:", Uuid::new_v4()),
            redis_url: redis_url(),
            extra_args: Vec::new(),
            control_socket: true,
        }
    }

    fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    fn channels(&self) -> Channels {
        Channels::new(self.prefix.clone())
    }

    async fn start(self) -> Executor {
        let strategy_id = self.strategy_id;
        let log = self.dir.path().join(format!("executor-{strategy_id}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = tokio::process::Command::new(exe());
        command
            .arg("--strategy-id")
            .arg(strategy_id.to_string())
            .arg("--name")
            .arg(format!("test-{}", self.strategy_type))
            .arg("--strategy-type")
            .arg(self.strategy_type)
            .arg("--config-file")
            .arg(
                self.config_file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("-")),
            )
            .arg("--redis-url")
            .arg(&self.redis_url)
            .arg("--redis-prefix")
            .arg(&self.prefix)
            .args(&self.extra_args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .kill_on_drop(true);
        if self.control_socket {
            command.arg("--control-socket").arg(self.dir.socket());
        }
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if self.config_file.is_none() {
            stdin
                .write_all(self.config.to_string().as_bytes())
                .await
                .unwrap();
        }
        drop(stdin);
        Executor {
            child,
            strategy_id,
            log,
        }
    }
}

impl Executor {
    fn pid(&self) -> u32 {
        self.child.id().expect("the executor is running")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the exit, bounded; returns the exit code.
    async fn exit_code(&mut self, deadline: Duration) -> i32 {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => status
                .unwrap()
                .code()
                .expect("exited, not killed by a signal"),
            Err(_) => panic!(
                "executor did not exit within {deadline:?}; its log:\n{}",
                self.log()
            ),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// The test's end of one control-link connection.
struct Link {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

async fn accept(listener: &UnixListener) -> Link {
    let (stream, _) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("the executor connects to the control socket")
        .unwrap();
    link_of(stream)
}

fn link_of(stream: UnixStream) -> Link {
    let (read, writer) = stream.into_split();
    Link {
        lines: BufReader::new(read).lines(),
        writer,
    }
}

impl Link {
    /// The next frame, or `None` when the executor closed the connection.
    async fn next(&mut self) -> Option<ExecutorMessage> {
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("a control frame within the deadline")
            .unwrap()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad frame {line}: {e}")))
    }

    /// Skip frames until one matches; panic at the deadline or when the link closes.
    async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ExecutorMessage) -> Option<T>,
    ) -> T {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let remaining = until.saturating_duration_since(tokio::time::Instant::now());
            let frame = tokio::time::timeout(remaining, self.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("link closed while waiting for {what}"));
            if let Some(value) = pick(&frame) {
                return value;
            }
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    async fn send(&mut self, command: ExecutorCommand) {
        let frame = control::encode_frame(&ManagerMessage::Command(command));
        self.send_raw(&frame).await;
    }

    /// Expect the greeting: hello with our id and pid, then the state it reports.
    async fn expect_hello(&mut self, executor: &Executor) -> Status {
        match self.next().await {
            Some(ExecutorMessage::Hello {
                strategy_id,
                pid,
                status,
            }) => {
                assert_eq!(strategy_id, executor.strategy_id);
                assert_eq!(pid, executor.pid());
                let state = self.next().await;
                assert!(
                    matches!(state, Some(ExecutorMessage::State { status: s, .. }) if s == status),
                    "hello is followed by the same state, got {state:?}"
                );
                status
            }
            other => panic!("expected hello first, got {other:?}"),
        }
    }

    /// Expect the greeting, then `running` (readiness).
    async fn expect_ready(&mut self, executor: &Executor) {
        let status = self.expect_hello(executor).await;
        if status != Status::Running {
            self.expect("state running", |f| match f {
                ExecutorMessage::State {
                    status: Status::Running,
                    ..
                } => Some(()),
                _ => None,
            })
            .await;
        }
    }

    async fn expect_ack(&mut self, command_id: Uuid) -> (bool, Option<String>) {
        self.expect("the ack", |f| match f {
            ExecutorMessage::Ack {
                command_id: id,
                ok,
                error,
            } if *id == command_id => Some((*ok, error.clone())),
            _ => None,
        })
        .await
    }
}

fn command(strategy_id: Uuid, kind: ExecutorCommandKind) -> ExecutorCommand {
    ExecutorCommand {
        strategy_id: Some(strategy_id),
        name: "test".to_string(),
        timestamp: chrono::Utc::now(),
        command: kind,
        command_id: Uuid::new_v4(),
        config: None,
        mode: None,
        reason: None,
        source: None,
    }
}

/// A Redis subscription made before the executor starts, so nothing is missed.
async fn subscribe(channel: &str) -> redis::aio::PubSub {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.expect("redis is reachable");
    pubsub.subscribe(channel).await.unwrap();
    pubsub
}

async fn next_json<T: serde::de::DeserializeOwned>(
    pubsub: &mut redis::aio::PubSub,
    what: &str,
    mut accept: impl FnMut(&T) -> bool,
) -> T {
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut stream = pubsub.on_message();
    loop {
        let remaining = until.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(remaining, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what} on redis"))
            .expect("redis connection open");
        let value: T = serde_json::from_slice(message.get_payload_bytes()).unwrap();
        if accept(&value) {
            return value;
        }
    }
}

/// Publish, and say how many subscribers received it.
async fn publish(channel: &str, payload: &str) -> i64 {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::AsyncCommands::publish(&mut connection, channel, payload)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------
// One-shot modes
// ---------------------------------------------------------------------------------

#[test]
fn list_names_the_builtin_strategies() {
    let output = run_to_end(&["--list"], "");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for name in [
        "dca",
        "heartbeat",
        "sma_crossover",
        "mean_reversion",
        "bullish_breakout",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} — "))),
            "{name} missing from:\n{text}"
        );
    }
    assert!(text.contains("example config: {"), "{text}");
    assert!(text.contains("    modes: live\n"), "{text}");
    assert!(
        text.contains("    modes: live, backtest, screener, alert\n"),
        "{text}"
    );
    assert!(
        text.contains("dca — ") && text.contains("    interval executions: yes\n"),
        "{text}"
    );
    assert!(text.contains("    interval executions: no\n"), "{text}");

    let output = run_to_end(&["--list", "--json"], "");
    assert!(output.status.success());
    let infos: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let mut names: Vec<&str> = infos
        .iter()
        .map(|i| i["strategy_type"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bullish_breakout",
            "dca",
            "heartbeat",
            "mean_reversion",
            "sma_crossover"
        ]
    );
    assert!(infos.iter().all(|i| i["example_config"].is_object()));
    let dca = infos.iter().find(|i| i["strategy_type"] == "dca").unwrap();
    assert_eq!(dca["supports_interval"], true);
    // `dca`, and `heartbeat` for its interval test hook.
    assert!(infos.iter().all(|i| i["supports_interval"]
        == (i["strategy_type"] == "dca" || i["strategy_type"] == "heartbeat")));
    assert!(infos.iter().all(|i| i["modes"][0] == "live"));
}

#[test]
fn unknown_strategy_type_exits_2_and_lists_the_registered_ones() {
    let id = Uuid::new_v4().to_string();
    let output = run_to_end(
        &[
            "--strategy-id",
            &id,
            "--strategy-type",
            "sma_crosover",
            "--config-file",
            "-",
            "--redis-url",
            "redis://127.0.0.1:1",
        ],
        "{}",
    );
    assert_eq!(output.status.code(), Some(control::EXIT_BAD_CONFIG));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr.trim_end(),
        "error: unknown strategy_type 'sma_crosover'; registered: bullish_breakout, dca, heartbeat, mean_reversion, sma_crossover"
    );
}

#[test]
fn bad_config_key_exits_2_naming_the_key() {
    let id = Uuid::new_v4().to_string();
    let config = json!({"token": "BTC-USD", "fast_perod": 5, "slow_period": 20});
    let output = run_to_end(
        &[
            "--strategy-id",
            &id,
            "--strategy-type",
            "sma_crossover",
            "--config-file",
            "-",
            "--redis-url",
            "redis://127.0.0.1:1",
        ],
        &config.to_string(),
    );
    assert_eq!(output.status.code(), Some(control::EXIT_BAD_CONFIG));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("fast_perod"), "{stderr}");
}

#[test]
fn validate_accepts_a_good_config_and_rejects_a_bad_one() {
    let dir = TestDir::new();
    let good = dir.path().join("good.json");
    std::fs::write(&good, json!({"interval_ms": 50}).to_string()).unwrap();
    let output = run_to_end(
        &[
            "--validate",
            "--strategy-type",
            "heartbeat",
            "--config-file",
            good.to_str().unwrap(),
        ],
        "",
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), "ok");

    let output = run_to_end(
        &[
            "--validate",
            "--strategy-type",
            "heartbeat",
            "--config-file",
            "-",
        ],
        &json!({"interval_ms": 1}).to_string(),
    );
    assert_eq!(output.status.code(), Some(control::EXIT_BAD_CONFIG));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("interval_ms"), "{stderr}");

    let output = run_to_end(&["--validate", "--strategy-type", "nope"], "");
    assert_eq!(output.status.code(), Some(control::EXIT_BAD_CONFIG));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(
            "unknown strategy_type 'nope'; registered: bullish_breakout, dca, heartbeat, mean_reversion, sma_crossover"
        ),
        "{stderr}"
    );

    let output = run_to_end(
        &[
            "--validate",
            "--strategy-type",
            "heartbeat",
            "--config-file",
            "-",
        ],
        "[1, 2]",
    );
    assert_eq!(output.status.code(), Some(control::EXIT_BAD_CONFIG));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("must be a JSON object"), "{stderr}");
}

// ---------------------------------------------------------------------------------
// Run mode over the control link
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn control_link_hello_pause_update_and_shutdown() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let mut executor = Spawn::new(&dir, "heartbeat", json!({"interval_ms": 50}))
        .start()
        .await;
    let mut link = accept(&listener).await;
    link.expect_ready(&executor).await;

    // pause: ack, then the paused state; a second pause is acknowledged as well.
    let pause = command(executor.strategy_id, ExecutorCommandKind::Pause);
    link.send(pause.clone()).await;
    assert_eq!(link.expect_ack(pause.command_id).await, (true, None));
    link.expect("state paused", |f| match f {
        ExecutorMessage::State {
            status: Status::Paused,
            command_id,
            ..
        } => {
            assert_eq!(*command_id, Some(pause.command_id));
            Some(())
        }
        _ => None,
    })
    .await;
    let pause_again = command(executor.strategy_id, ExecutorCommandKind::Pause);
    link.send(pause_again.clone()).await;
    assert_eq!(link.expect_ack(pause_again.command_id).await, (true, None));

    // Garbage and an oversized frame are dropped without harm.
    link.send_raw(b"this is not json\n").await;
    let mut huge = vec![b'x'; control::MAX_FRAME_BYTES + 10];
    huge.push(b'\n');
    link.send_raw(&huge).await;

    // A rejected config: ack ok=false with the strategy's reason.
    let mut update = command(executor.strategy_id, ExecutorCommandKind::UpdateConfig);
    update.config = Some(json!({"interval_ms": 1}));
    link.send(update.clone()).await;
    let (ok, error) = link.expect_ack(update.command_id).await;
    assert!(!ok);
    let error = error.unwrap();
    assert!(error.contains("interval_ms"), "{error}");

    // Missing config: ack ok=false.
    let update = command(executor.strategy_id, ExecutorCommandKind::UpdateConfig);
    link.send(update.clone()).await;
    let (ok, error) = link.expect_ack(update.command_id).await;
    assert!(!ok);
    assert!(error.unwrap().contains("config"));

    // A good config is accepted.
    let mut update = command(executor.strategy_id, ExecutorCommandKind::UpdateConfig);
    update.config = Some(json!({"interval_ms": 100}));
    link.send(update.clone()).await;
    assert_eq!(link.expect_ack(update.command_id).await, (true, None));

    // resume: ack, running.
    let resume = command(executor.strategy_id, ExecutorCommandKind::Resume);
    link.send(resume.clone()).await;
    assert_eq!(link.expect_ack(resume.command_id).await, (true, None));
    link.expect("state running", |f| match f {
        ExecutorMessage::State {
            status: Status::Running,
            ..
        } => Some(()),
        _ => None,
    })
    .await;

    // shutdown: ack, stopping, exit 0.
    let mut shutdown = command(executor.strategy_id, ExecutorCommandKind::Shutdown);
    shutdown.mode = Some(StopMode::Flatten);
    shutdown.reason = Some("stop".to_string());
    link.send(shutdown.clone()).await;
    assert_eq!(link.expect_ack(shutdown.command_id).await, (true, None));
    link.expect("state stopping", |f| match f {
        ExecutorMessage::State {
            status: Status::Stopping,
            reason,
            ..
        } => {
            assert_eq!(reason.as_deref(), Some("stop"));
            Some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(executor.exit_code(DEADLINE).await, 0, "{}", executor.log());
    let log = executor.log();
    assert!(log.contains("invalid control link frame dropped"), "{log}");
    assert!(log.contains("frame longer than"), "{log}");
}

#[tokio::test]
async fn duplicate_command_is_acknowledged_again_but_applied_once() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let mut executor = Spawn::new(&dir, "heartbeat", json!({"interval_ms": 1000}))
        .start()
        .await;
    let mut link = accept(&listener).await;
    link.expect_ready(&executor).await;

    let pause = command(executor.strategy_id, ExecutorCommandKind::Pause);
    let resume = command(executor.strategy_id, ExecutorCommandKind::Resume);
    link.send(pause.clone()).await;
    link.send(pause.clone()).await;
    link.send(resume.clone()).await;
    let (mut pause_acks, mut paused_states, mut running_states) = (0, 0, 0);
    loop {
        match link.next().await.expect("link open") {
            ExecutorMessage::State {
                status: Status::Paused,
                ..
            } => paused_states += 1,
            ExecutorMessage::State {
                status: Status::Running,
                ..
            } => running_states += 1,
            ExecutorMessage::Ack { command_id, ok, .. } if command_id == pause.command_id => {
                assert!(ok);
                pause_acks += 1;
            }
            ExecutorMessage::Ack { command_id, ok, .. } if command_id == resume.command_id => {
                assert!(ok);
                break;
            }
            // The broker state it reports once started (not a command's effect).
            ExecutorMessage::BrokerState { .. } => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(pause_acks, 2, "a duplicate is acknowledged again");
    assert_eq!(paused_states, 1, "a duplicate is not applied again");
    assert_eq!(running_states, 0);
    // The ack comes first, then the state the command caused.
    assert!(matches!(
        link.next().await,
        Some(ExecutorMessage::State {
            status: Status::Running,
            command_id: Some(id),
            ..
        }) if id == resume.command_id
    ));

    executor.signal("TERM");
    assert_eq!(executor.exit_code(DEADLINE).await, 0);
}

/// The next `broker_state` frame: its state and its `discarded` note.
async fn broker_state(link: &mut Link) -> (Value, Option<String>) {
    link.expect("a broker_state frame", |f| match f {
        ExecutorMessage::BrokerState { state, discarded } => {
            Some((state.clone(), discarded.clone()))
        }
        _ => None,
    })
    .await
}

/// A heartbeat started as the manager starts it, with `envelope` on stdin, and
/// ready; its link and its first `broker_state` report.
async fn spawn_with_envelope(
    dir: &TestDir,
    envelope: Value,
) -> (Executor, Link, (Value, Option<String>)) {
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let executor = Spawn::new(dir, "heartbeat", envelope)
        .arg("--spawn-envelope")
        .start()
        .await;
    let mut link = accept(&listener).await;
    link.expect_ready(&executor).await;
    let first = broker_state(&mut link).await;
    (executor, link, first)
}

#[tokio::test]
async fn the_spawn_envelope_restores_the_broker_and_it_is_reported_until_exit() {
    let dir = TestDir::new();
    let saved = json!({
        "strategy_type": "heartbeat",
        "saved_at": "2026-11-30T10:00:00Z",
        "broker": {"version": 1, "positions": {"BTC": {"qty": -2.0, "avg_price": 50.0}},
                   "marks": {"BTC": 45.0}, "realised_pnl": 7.5, "orders_count": 5,
                   "closed_trades": 2, "winning_trades": 1}
    });
    let envelope = json!({"config": {"interval_ms": 1000}, "broker_state": saved});
    let (mut executor, mut link, (state, discarded)) = spawn_with_envelope(&dir, envelope).await;
    assert_eq!(discarded, None);
    assert_eq!(state["strategy_type"], "heartbeat");
    assert_eq!(state["broker"], saved["broker"], "restored as saved");

    // The last report goes out before the process exits.
    executor.signal("TERM");
    let (state, _) = broker_state(&mut link).await;
    assert_eq!(state["broker"]["orders_count"], 5);
    assert_eq!(executor.exit_code(DEADLINE).await, 0);
    assert!(
        executor.log().contains("broker restored"),
        "{}",
        executor.log()
    );
}

#[tokio::test]
async fn an_unusable_broker_state_is_discarded_and_the_strategy_runs_fresh() {
    let dir = TestDir::new();
    let envelope =
        json!({"config": {}, "broker_state": {"strategy_type": "heartbeat", "broker": 42}});
    let (mut executor, _link, (state, discarded)) = spawn_with_envelope(&dir, envelope).await;
    let discarded = discarded.expect("the first report says why the saved state was not used");
    assert!(
        discarded.starts_with("saved broker state discarded: it is unreadable"),
        "{discarded}"
    );
    assert_eq!(state["broker"]["orders_count"], 0);
    assert_eq!(state["broker"]["positions"], json!({}));
    executor.signal("TERM");
    assert_eq!(executor.exit_code(DEADLINE).await, 0);
    assert!(
        executor.log().contains("starting with a fresh broker"),
        "{}",
        executor.log()
    );
}

#[tokio::test]
async fn sigterm_exits_0() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let mut executor = Spawn::new(&dir, "heartbeat", json!({})).start().await;
    let mut link = accept(&listener).await;
    link.expect_ready(&executor).await;
    executor.signal("TERM");
    link.expect("state stopping", |f| match f {
        ExecutorMessage::State {
            status: Status::Stopping,
            reason,
            ..
        } => {
            assert_eq!(reason.as_deref(), Some("host_shutdown"));
            Some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(executor.exit_code(DEADLINE).await, 0);
}

#[tokio::test]
async fn sighup_is_ignored() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let mut executor = Spawn::new(&dir, "heartbeat", json!({})).start().await;
    let mut link = accept(&listener).await;
    link.expect_ready(&executor).await;
    executor.signal("HUP");
    wait_for("the SIGHUP log line", DEADLINE, || {
        executor
            .log()
            .contains("SIGHUP received and ignored")
            .then_some(())
    })
    .await;
    let pause = command(executor.strategy_id, ExecutorCommandKind::Pause);
    link.send(pause.clone()).await;
    assert_eq!(link.expect_ack(pause.command_id).await, (true, None));
    executor.signal("INT");
    assert_eq!(executor.exit_code(DEADLINE).await, 0);
}

#[tokio::test]
async fn halting_strategy_sends_halted_and_exits_4() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let spawn = Spawn::new(
        &dir,
        "heartbeat",
        json!({"interval_ms": 20, "halt_after_beats": 2}),
    );
    let mut status = subscribe(&spawn.channels().status(spawn.strategy_id)).await;
    let mut executor = spawn.start().await;
    let mut link = accept(&listener).await;
    link.expect_hello(&executor).await;
    let reason = link
        .expect("halted", |f| match f {
            ExecutorMessage::Halted { reason } => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert!(reason.contains("halt_after_beats"), "{reason}");
    assert_eq!(executor.exit_code(DEADLINE).await, control::EXIT_HALTED);
    assert!(executor.log().contains(&format!("halted: {reason}")));
    let message: StatusMessage = next_json(&mut status, "status error", |m: &StatusMessage| {
        m.status == Status::Error
    })
    .await;
    assert_eq!(message.error.as_deref(), Some(reason.as_str()));
    assert_eq!(message.source.as_deref(), Some("executor"));
}

#[tokio::test]
async fn metrics_and_status_are_published_on_redis() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let spawn = Spawn::new(
        &dir,
        "heartbeat",
        json!({"interval_ms": 20, "token": "TEST"}),
    )
    .arg("--metrics-interval")
    .arg("200ms")
    .arg("--node")
    .arg("test-node");
    let channels = spawn.channels();
    let mut metrics = subscribe(&channels.metrics(spawn.strategy_id)).await;
    let mut status = subscribe(&channels.status(spawn.strategy_id)).await;
    let mut executor = spawn.start().await;
    let mut link = accept(&listener).await;
    link.expect_ready(&executor).await;
    let message: StatusMessage = next_json(&mut status, "status running", |m: &StatusMessage| {
        m.status == Status::Running
    })
    .await;
    assert_eq!(message.pid, Some(executor.pid()));
    assert_eq!(message.node, "test-node");
    assert_eq!(message.source.as_deref(), Some("executor"));

    let message: MetricsMessage =
        next_json(&mut metrics, "metrics", |_: &MetricsMessage| true).await;
    assert_eq!(message.strategy_id, executor.strategy_id);
    let raw = serde_json::to_value(&message).unwrap();
    for key in [
        "pnl",
        "positions_count",
        "orders_count",
        "success_rate",
        "uptime_s",
        "ticks_received",
        "last_tick_age_ms",
        "last_tick_at",
        "metrics_interval_ms",
        "subscribed_tokens",
        "beats",
    ] {
        assert!(
            raw["metrics"].get(key).is_some(),
            "{key} missing from {raw}"
        );
    }

    // Ticks reach the strategy once it subscribed to its token.
    let tick = json!({"token": "TEST", "price": 101.5, "timestamp": chrono::Utc::now()});
    let live = channels.live_data("TEST");
    let message: MetricsMessage = {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            publish(&live, &tick.to_string()).await;
            publish(&live, "not a tick").await;
            let m: MetricsMessage =
                next_json(&mut metrics, "metrics", |_: &MetricsMessage| true).await;
            if m.metrics
                .extra
                .get("ticks_received")
                .and_then(Value::as_u64)
                > Some(0)
            {
                break m;
            }
            assert!(tokio::time::Instant::now() < until, "no tick was received");
        }
    };
    assert!(message.metrics.extra["last_tick_age_ms"].is_u64());
    // The time of the last tick, absolute, so its age can be computed when shown.
    let at = message.metrics.extra["last_tick_at"].as_str().unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
    let age = chrono::Utc::now() - at.with_timezone(&chrono::Utc);
    assert!(age >= chrono::Duration::zero() && age < chrono::Duration::seconds(30));
    assert_eq!(message.metrics.extra["subscribed_tokens"], json!(["TEST"]));

    // Commands come on the control link only (CONTRACT.md §8): the Redis command
    // channels have no subscriber here, so whatever anyone publishes there reaches
    // no executor — linked or not, for this strategy or every one.
    let mut global = command(Uuid::nil(), ExecutorCommandKind::Pause);
    global.strategy_id = None;
    let own = command(executor.strategy_id, ExecutorCommandKind::Pause);
    for (channel, payload) in [
        (channels.commands(executor.strategy_id), &own),
        (channels.global_commands(), &global),
    ] {
        let receivers = publish(&channel, &serde_json::to_string(payload).unwrap()).await;
        assert_eq!(receivers, 0, "{channel} has a subscriber");
    }
    // On the link: acknowledged there, status on Redis with its id.
    let pause = command(executor.strategy_id, ExecutorCommandKind::Pause);
    link.send(pause.clone()).await;
    assert_eq!(link.expect_ack(pause.command_id).await, (true, None));
    let message: StatusMessage = next_json(&mut status, "status paused", |m: &StatusMessage| {
        m.status == Status::Paused
    })
    .await;
    assert_eq!(message.command_id, Some(pause.command_id));
    assert_eq!(message.pid, Some(executor.pid()));
    assert_eq!(message.node, "test-node");
    assert_eq!(message.source.as_deref(), Some("executor"));

    // With the manager gone, still nothing listens on the command channels.
    drop(link);
    drop(listener);
    let mut resume = command(Uuid::nil(), ExecutorCommandKind::Resume);
    resume.strategy_id = None;
    let receivers = publish(
        &channels.global_commands(),
        &serde_json::to_string(&resume).unwrap(),
    )
    .await;
    assert_eq!(
        receivers, 0,
        "an unlinked executor listens for global commands"
    );

    executor.signal("TERM");
    let message: StatusMessage = next_json(&mut status, "status stopped", |m: &StatusMessage| {
        m.status == Status::Stopped
    })
    .await;
    assert_eq!(message.reason.as_deref(), Some("host_shutdown"));
    assert_eq!(executor.exit_code(DEADLINE).await, 0);
}

#[tokio::test]
async fn reconnects_after_the_manager_goes_away() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let mut executor = Spawn::new(&dir, "heartbeat", json!({})).start().await;
    let mut link = accept(&listener).await;
    link.expect_ready(&executor).await;

    // The manager goes away and comes back on the same path.
    drop(link);
    drop(listener);
    std::fs::remove_file(dir.socket()).unwrap();

    let listener = UnixListener::bind(dir.socket()).unwrap();
    let mut link = accept(&listener).await;
    assert_eq!(link.expect_hello(&executor).await, Status::Running);

    // And once more, the hello carrying the current (paused) status.
    let pause = command(executor.strategy_id, ExecutorCommandKind::Pause);
    link.send(pause.clone()).await;
    assert_eq!(link.expect_ack(pause.command_id).await, (true, None));
    drop(link);
    drop(listener);
    std::fs::remove_file(dir.socket()).unwrap();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let mut link = accept(&listener).await;
    assert_eq!(link.expect_hello(&executor).await, Status::Paused);

    executor.signal("TERM");
    assert_eq!(executor.exit_code(DEADLINE).await, 0);
}

#[tokio::test]
async fn starts_before_the_manager_listens_and_without_redis() {
    let dir = TestDir::new();
    let mut spawn = Spawn::new(&dir, "heartbeat", json!({"interval_ms": 20}));
    // Nothing listens there: Redis is down for this executor.
    spawn.redis_url = "redis://:hunter2@127.0.0.1:1".to_string();
    let mut executor = spawn.arg("--metrics-interval").arg("50ms").start().await;
    // Let a few connection attempts fail before the manager listens.
    wait_for("a failed control link attempt", DEADLINE, || {
        executor
            .log()
            .contains("control link not connected")
            .then_some(())
    })
    .await;
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let mut link = accept(&listener).await;
    assert_eq!(link.expect_hello(&executor).await, Status::Running);

    let shutdown = command(executor.strategy_id, ExecutorCommandKind::Shutdown);
    let started = std::time::Instant::now();
    link.send(shutdown.clone()).await;
    assert_eq!(link.expect_ack(shutdown.command_id).await, (true, None));
    assert_eq!(executor.exit_code(DEADLINE).await, 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown waited on redis: {:?}",
        started.elapsed()
    );
    let log = executor.log();
    assert!(!log.contains("hunter2"), "password in the log:\n{log}");
    assert!(log.contains("redis://:***@127.0.0.1:1"), "{log}");
    assert_eq!(
        log.matches("publishing to redis failed").count(),
        1,
        "one warning per outage:\n{log}"
    );
    assert_eq!(
        log.matches("redis subscriber disconnected").count(),
        1,
        "one warning per outage:\n{log}"
    );
}

#[tokio::test]
async fn config_never_appears_on_the_command_line() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let secret = format!("secret-{}", Uuid::new_v4());
    // Unknown to heartbeat, so put it where a strategy might keep a key: the token.
    let config = json!({"interval_ms": 1000, "token": secret});
    let mut executor = Spawn::new(&dir, "heartbeat", config).start().await;
    let mut link = accept(&listener).await;
    link.expect_ready(&executor).await;

    let cmdline = std::fs::read(format!("/proc/{}/cmdline", executor.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!("--strategy-id {}", executor.strategy_id)),
        "{cmdline}"
    );
    assert!(!cmdline.contains(&secret), "{cmdline}");
    assert!(!cmdline.contains("interval_ms"), "{cmdline}");

    executor.signal("TERM");
    assert_eq!(executor.exit_code(DEADLINE).await, 0);
}

#[tokio::test]
async fn config_file_is_read_from_a_path() {
    let dir = TestDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let config_path = dir.path().join("config.json");
    std::fs::write(
        &config_path,
        json!({"interval_ms": 20, "halt_after_beats": 1}).to_string(),
    )
    .unwrap();
    let mut spawn = Spawn::new(&dir, "heartbeat", json!({}));
    spawn.config_file = Some(config_path);
    let mut executor = spawn.start().await;
    let mut link = accept(&listener).await;
    link.expect("halted", |f| {
        matches!(f, ExecutorMessage::Halted { .. }).then_some(())
    })
    .await;
    assert_eq!(executor.exit_code(DEADLINE).await, control::EXIT_HALTED);
}
