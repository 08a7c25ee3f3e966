//! `enginectl watch`: a live table of every strategy, redrawn in place about once a
//! second. It starts from the database and the state hashes (what `list` shows),
//! then follows the Redis channels (`strategy:status:*`, `strategy:health`,
//! `strategy:metrics:*`, `engine:health`, one PSUBSCRIBE connection); every few
//! seconds it re-reads the database, so strategies added or removed appear and a
//! message lost by pub/sub is repaired.

use super::state;
use super::table;
use super::view::{self, StrategyView, TickSeen};
use super::{Finished, Target};
use crate::lease_words::DescribeLease;
use engine_protocol::{glob_escape, Channels};
use engine_store::lease::LeaseInfo;
use engine_store::Status;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the database is read again.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// How long without `engine:health` before the manager is called silent.
const ENGINE_SILENT_AFTER: Duration = Duration::from_secs(10);

/// What the subscriber task tells the board.
#[derive(Debug)]
enum Feed {
    Message { channel: String, payload: Value },
    Connected,
    Lost(String),
}

/// One strategy on the board, with when its moving numbers were true.
#[derive(Debug, Clone)]
struct Row {
    view: StrategyView,
    /// When `view.uptime_s` was measured.
    uptime_seen: Instant,
}

impl Row {
    fn new(view: StrategyView) -> Row {
        Row {
            view,
            uptime_seen: Instant::now(),
        }
    }

    fn is_up(&self) -> bool {
        self.view.status.is_up()
    }

    /// An executor's `strategy:metrics:{id}` message: PnL, and what the tick's age is
    /// computed from.
    fn apply_metrics(&mut self, payload: &Value) {
        let metrics = payload.get("metrics");
        let number = |field: &str| metrics.and_then(|m| m.get(field)).and_then(Value::as_f64);
        if let Some(pnl) = number("pnl") {
            self.view.pnl = Some(pnl);
        }
        if let Some(total) = number("pnl_total") {
            self.view.pnl_total = Some(total);
        }
        if let Some(age) = number("last_tick_age_ms") {
            self.view.last_tick_age_ms = Some(age);
        }
        if let Some(at) = metrics.and_then(engine_protocol::last_tick_at) {
            self.view.last_tick_at = Some(at);
            self.view.tick = TickSeen {
                at: Some(at),
                reported_at: payload
                    .get("timestamp")
                    .and_then(Value::as_str)
                    .and_then(engine_protocol::parse_timestamp),
                report_every: metrics.and_then(engine_protocol::metrics_interval),
                measured_age_ms: self.view.last_tick_age_ms,
            };
        }
    }

    /// The view with its uptime moved on to now, and its tick age computed now from
    /// the time of the last tick.
    fn current(&self) -> StrategyView {
        let mut view = self.view.clone();
        if self.is_up() {
            view.uptime_s = view
                .uptime_s
                .map(|s| s + self.uptime_seen.elapsed().as_secs_f64());
        }
        if view.tick.at.is_some() {
            view.last_tick_age_ms = view.tick.age_ms(chrono::Utc::now());
        }
        view
    }
}

/// The manager's line at the top.
#[derive(Debug, Clone)]
enum EngineLine {
    /// From the lease row when the board was loaded.
    Lease(Option<LeaseInfo>),
    /// From the last `engine:health`.
    Health(Value, Instant),
}

/// Everything on screen.
struct Board {
    rows: BTreeMap<Uuid, Row>,
    engine: EngineLine,
    redis: String,
    database: Option<String>,
}

impl Board {
    fn load(&mut self, views: Vec<StrategyView>) {
        self.rows = views.into_iter().map(|v| (v.id, Row::new(v))).collect();
    }

    fn apply(&mut self, channels: &Channels, channel: &str, payload: &Value) {
        let Some(rest) = channel.strip_prefix(channels.prefix()) else {
            return;
        };
        if rest == "engine:health" {
            self.engine = EngineLine::Health(payload.clone(), Instant::now());
            return;
        }
        let id = payload
            .get("strategy_id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Uuid>().ok());
        let Some(row) = id.and_then(|id| self.rows.get_mut(&id)) else {
            return; // a strategy the next reload will bring in
        };
        let now = Instant::now();
        if rest.starts_with("strategy:status:") {
            // The row's status is the manager's observation; an executor's own
            // message is only its view.
            if payload.get("source").and_then(Value::as_str) == Some("executor") {
                return;
            }
            let Some(status) = payload
                .get("status")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Status>().ok())
            else {
                return;
            };
            let was_up = row.is_up();
            row.view.status = status;
            row.view.pid = payload
                .get("pid")
                .and_then(Value::as_i64)
                .and_then(|p| i32::try_from(p).ok());
            if let Some(error) = payload.get("error").and_then(Value::as_str) {
                row.view.last_error = Some(error.to_string());
            }
            if !row.is_up() {
                row.view.uptime_s = None;
                row.view.cpu_percent = None;
                row.view.memory_mb = None;
                row.view.last_tick_age_ms = None;
                row.view.last_tick_at = None;
                row.view.tick = Default::default();
                row.view.stale = false;
            } else if !was_up {
                row.view.uptime_s = Some(0.0);
                row.uptime_seen = now;
            }
        } else if rest == "strategy:health" {
            let number = |field: &str| payload.get(field).and_then(Value::as_f64);
            row.view.cpu_percent = number("cpu_percent").or(row.view.cpu_percent);
            row.view.memory_mb = number("memory_mb").or(row.view.memory_mb);
            if let Some(uptime) = number("uptime_s") {
                row.view.uptime_s = Some(uptime);
                row.uptime_seen = now;
            }
            if let Some(restarts) = payload.get("restart_count").and_then(Value::as_i64) {
                row.view.restart_count = i32::try_from(restarts).unwrap_or(i32::MAX);
            }
            row.view.stale = payload
                .get("stale")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            row.view.last_tick_age_ms = number("last_tick_age_ms");
            row.view.tick.measured_age_ms = number("last_tick_age_ms");
        } else if rest.starts_with("strategy:metrics:") {
            row.apply_metrics(payload);
        }
    }

    fn engine_line(&self) -> String {
        match &self.engine {
            EngineLine::Lease(None) => "engine-manager: none has served this database yet".into(),
            EngineLine::Lease(Some(lease)) if lease.is_alive() => {
                format!("engine-manager {}", lease.describe())
            }
            EngineLine::Lease(Some(lease)) => {
                format!("engine-manager: NOT RUNNING; {}", lease.describe())
            }
            EngineLine::Health(msg, seen) => {
                let number = |f: &str| msg.get(f).and_then(Value::as_f64);
                let mut line =
                    format!(
                    "engine-manager pid {} on {}: up {}, {} running, CPU {}, MEM {} (heard {} ago)",
                    msg.get("pid").and_then(Value::as_u64).unwrap_or_default(),
                    msg.get("node").and_then(Value::as_str).unwrap_or("?"),
                    number("uptime_s").map(table::duration).unwrap_or_else(|| "?".into()),
                    msg.get("strategies_running").and_then(Value::as_u64).unwrap_or_default(),
                    table::percent(number("cpu_percent")),
                    table::megabytes(number("memory_mb")),
                    table::duration(seen.elapsed().as_secs_f64()),
                );
                if seen.elapsed() > ENGINE_SILENT_AFTER {
                    line.push_str(" — SILENT");
                }
                line
            }
        }
    }

    fn render(&self) -> String {
        let mut views: Vec<StrategyView> = self.rows.values().map(Row::current).collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = format!(
            "enginectl watch: {} strategies, {} UTC, Ctrl-C quits\n{}\nredis: {}",
            views.len(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
            self.engine_line(),
            self.redis,
        );
        if let Some(err) = &self.database {
            out.push_str(&format!("\ndatabase: {err}"));
        }
        out.push_str("\n\n");
        if views.is_empty() {
            out.push_str("no strategies yet; add one with `enginectl add NAME --type TYPE`\n");
        } else {
            out.push_str(&view::list_table(&views).render());
        }
        out
    }
}

/// `enginectl watch [--once] [--interval D]`.
pub async fn watch(
    target: &Target,
    once: bool,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let mut redis = state::connect(&target.redis_url).await.ok();
    let (views, redis_error) = view::collect_views(&pool, redis.as_mut(), &target.channels).await?;
    let lease = engine_store::lease::lease(&pool).await?;
    let mut board = Board {
        rows: BTreeMap::new(),
        engine: EngineLine::Lease(lease),
        redis: match (&redis, redis_error) {
            (None, _) => "unreachable (numbers from the database)".into(),
            (Some(_), Some(err)) => format!("{err:#}"),
            (Some(_), None) => "connected".into(),
        },
        database: None,
    };
    board.load(views);
    if once {
        pool.close().await;
        print!("{}", fit_frame(&board.render(), terminal_columns()));
        return Ok(Finished::Ok);
    }

    let (tx, mut rx) = mpsc::channel(1024);
    let feed_stop = shutdown.child_token();
    let feed = tokio::spawn(subscribe(
        target.redis_url.clone(),
        target.channels.clone(),
        tx,
        feed_stop.clone(),
    ));
    let interactive = std::io::stdout().is_terminal();
    let mut screen = Screen::new(interactive);
    let mut redraw = tokio::time::interval(interval.max(Duration::from_millis(100)));
    let mut reload = tokio::time::interval_at(Instant::now() + RELOAD_EVERY, RELOAD_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = redraw.tick() => screen.draw(&board.render()),
            _ = reload.tick() => {
                if redis.is_none() {
                    redis = state::connect(&target.redis_url).await.ok();
                }
                match view::collect_views(&pool, redis.as_mut(), &target.channels).await {
                    Ok((views, redis_error)) => {
                        board.database = None;
                        board.load(views);
                        if redis_error.is_some() {
                            redis = None;
                        }
                    }
                    Err(err) => board.database = Some(format!("{err:#}")),
                }
                if let EngineLine::Lease(_) = board.engine {
                    if let Ok(lease) = engine_store::lease::lease(&pool).await {
                        board.engine = EngineLine::Lease(lease);
                    }
                }
            }
            feed = rx.recv() => match feed {
                Some(Feed::Message { channel, payload }) => {
                    board.apply(&target.channels, &channel, &payload)
                }
                Some(Feed::Connected) => board.redis = "connected (live)".into(),
                Some(Feed::Lost(why)) => board.redis = format!("{why}; reconnecting"),
                None => break,
            },
        }
    }
    feed_stop.cancel();
    let _ = feed.await;
    screen.restore();
    pool.close().await;
    Ok(Finished::Ok)
}

/// The four subscriptions of the board (patterns, the prefix escaped).
pub fn patterns(channels: &Channels) -> Vec<String> {
    let prefix = glob_escape(channels.prefix());
    vec![
        format!("{prefix}strategy:status:*"),
        format!("{prefix}strategy:health"),
        format!("{prefix}strategy:metrics:*"),
        format!("{prefix}engine:health"),
    ]
}

/// Follow the channels until `stop`, reconnecting every second while Redis is away.
async fn subscribe(
    url: String,
    channels: Channels,
    tx: mpsc::Sender<Feed>,
    stop: CancellationToken,
) {
    let Ok(client) = state::client(&url) else {
        let _ = tx.send(Feed::Lost("invalid Redis URL".into())).await;
        return;
    };
    let patterns = patterns(&channels);
    loop {
        let connect = async {
            let mut pubsub = tokio::time::timeout(state::REDIS_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| "connecting to Redis timed out".to_string())?
                .map_err(|e| format!("Redis unreachable: {e}"))?;
            pubsub
                .psubscribe(&patterns)
                .await
                .map_err(|e| format!("PSUBSCRIBE failed: {e}"))?;
            Ok::<_, String>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            r = connect => r,
        };
        match pubsub {
            Ok(pubsub) => {
                let _ = tx.send(Feed::Connected).await;
                let mut stream = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        msg = stream.next() => msg,
                    };
                    let Some(msg) = msg else { break };
                    let payload =
                        serde_json::from_slice(msg.get_payload_bytes()).unwrap_or(Value::Null);
                    let feed = Feed::Message {
                        channel: msg.get_channel_name().to_string(),
                        payload,
                    };
                    if tx.send(feed).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Feed::Lost("Redis connection lost".into())).await;
            }
            Err(why) => {
                let _ = tx.send(Feed::Lost(why)).await;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The terminal: frames drawn in place (interactive) or one after another.
struct Screen {
    interactive: bool,
    started: bool,
}

impl Screen {
    fn new(interactive: bool) -> Screen {
        Screen {
            interactive,
            started: false,
        }
    }

    fn draw(&mut self, frame: &str) {
        let mut out = std::io::stdout().lock();
        if self.interactive {
            if !self.started {
                // Hide the cursor and clear the screen once; then redraw from home,
                // clearing each line's rest and everything below (no flicker).
                let _ = write!(out, "\x1b[?25l\x1b[2J");
                self.started = true;
            }
            let _ = write!(out, "\x1b[H");
            // A line wider than the terminal would wrap and push the table off screen.
            for line in fit_frame(frame, terminal_columns()).lines() {
                let _ = writeln!(out, "{line}\x1b[K");
            }
            let _ = write!(out, "\x1b[J");
        } else {
            let _ = writeln!(out, "{frame}");
        }
        let _ = out.flush();
    }

    fn restore(&mut self) {
        if self.interactive && self.started {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\x1b[?25h");
            let _ = out.flush();
            self.started = false;
        }
    }
}

/// The width of the terminal on stdout, if stdout is one.
fn terminal_columns() -> Option<usize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// Every line of `frame` cut to `columns` characters, ending in `…` when cut (the
/// last error is the last column, so it is what gives way).
fn fit_frame(frame: &str, columns: Option<usize>) -> String {
    let Some(columns) = columns else {
        return frame.to_string();
    };
    let mut out = String::with_capacity(frame.len());
    for line in frame.lines() {
        if line.chars().count() > columns {
            out.extend(line.chars().take(columns.saturating_sub(1)));
            out.push('…');
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(id: Uuid, status: &str) -> StrategyView {
        StrategyView {
            id,
            name: "w".into(),
            strategy_type: "heartbeat".into(),
            status: status.parse().expect("a status word"),
            desired_state: engine_store::DesiredState::Running,
            auto_start: false,
            pid: Some(1),
            uptime_s: Some(10.0),
            cpu_percent: Some(1.0),
            memory_mb: Some(2.0),
            memory_limit_mb: None,
            cpu_limit_percent: None,
            restart_count: 0,
            pnl: None,
            pnl_total: None,
            last_tick_age_ms: None,
            last_tick_at: None,
            stale: false,
            tick: Default::default(),
            last_error: None,
            executions: None,
            node: None,
        }
    }

    fn empty_board() -> Board {
        Board {
            rows: BTreeMap::new(),
            engine: EngineLine::Lease(None),
            redis: "connected".into(),
            database: None,
        }
    }

    #[test]
    fn messages_update_the_board() {
        let channels = Channels::new("p:");
        let id = Uuid::new_v4();
        let mut board = empty_board();
        board.load(vec![view(id, "running")]);
        let sid = id.to_string();
        board.apply(
            &channels,
            &channels.health(),
            &json!({"strategy_id": sid, "cpu_percent": 5.5, "memory_mb": 12.0, "uptime_s": 30,
                    "stale": true, "last_tick_age_ms": 61000.0}),
        );
        board.apply(
            &channels,
            &channels.metrics(id),
            &json!({"strategy_id": sid, "metrics": {"pnl": -1.25, "pnl_total": 7.5}}),
        );
        let v = board.rows[&id].view.clone();
        assert_eq!(
            (v.cpu_percent, v.memory_mb, v.pnl, v.pnl_total),
            (Some(5.5), Some(12.0), Some(-1.25), Some(7.5))
        );
        assert!(v.stale);
        // An executor's own status message does not change the manager's status.
        board.apply(
            &channels,
            &channels.status(id),
            &json!({"strategy_id": sid, "status": "stopping", "source": "executor"}),
        );
        assert_eq!(board.rows[&id].view.status, Status::Running);
        board.apply(
            &channels,
            &channels.status(id),
            &json!({"strategy_id": sid, "status": "stopped", "pid": null, "source": "manager"}),
        );
        let v = board.rows[&id].view.clone();
        assert_eq!(
            (v.status.as_str(), v.pid, v.cpu_percent, v.stale),
            ("stopped", None, None, false)
        );
        // Another engine's traffic (another prefix) is ignored.
        board.apply(&channels, "q:engine:health", &json!({"pid": 9}));
        assert!(matches!(board.engine, EngineLine::Lease(..)));
        board.apply(
            &channels,
            "p:engine:health",
            &json!({"pid": 9, "node": "h"}),
        );
        assert!(
            board.engine_line().contains("pid 9 on h"),
            "{}",
            board.engine_line()
        );
        let frame = board.render();
        assert!(
            frame.contains("NAME") && frame.contains("stopped"),
            "{frame}"
        );
    }

    #[test]
    fn a_long_last_error_is_cut_to_the_terminal_width() {
        let id = Uuid::new_v4();
        let mut board = empty_board();
        let mut failing = view(id, "backoff");
        failing.last_error = Some("exit status 1: ".to_string() + &"x".repeat(300));
        board.load(vec![failing]);
        let frame = fit_frame(&board.render(), Some(80));
        let row = frame
            .lines()
            .find(|l| l.starts_with("w "))
            .expect("the row");
        assert!(row.ends_with('…'), "{row}");
        for line in frame.lines() {
            assert!(line.chars().count() <= 80, "{line:?} is wider than 80");
        }
        assert_eq!(fit_frame("short\n", Some(80)), "short\n");
        // Not a terminal (a pipe, a file): nothing is cut.
        let whole = board.render();
        assert_eq!(fit_frame(&whole, None), whole);
    }

    #[test]
    fn patterns_escape_the_prefix() {
        let p = patterns(&Channels::new("a*b:"));
        assert_eq!(p[0], "a\\*b:strategy:status:*");
        assert_eq!(p[3], "a\\*b:engine:health");
    }
}
