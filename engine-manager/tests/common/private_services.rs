//! Private PostgreSQL and Redis servers for tests that take them away: each test gets
//! its own `postgres` (a fresh `initdb` cluster in a temporary directory) and its own
//! `redis-server`, each on a free loopback port, that it can stop and start again on
//! the SAME port to simulate an outage. Both are cleaned up on drop. The machine's
//! shared services (5432, 6379) are never touched.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, `initdb` and
//! `postgres` run as the `postgres` OS user (its uid and gid from `/etc/passwd`) and the
//! data directory is chowned to it. The binaries are found under
//! `/usr/lib/postgresql/<newest>/bin`, or in `PG_BIN_DIR` when that is set.
//!
//! Use them through [`PrivateServices::start`], or one at a time:
//!
//! ```ignore
//! let mut pg = PrivatePostgres::start().await;
//! let url = pg.url("engine");          // postgres://postgres@127.0.0.1:<port>/engine
//! pg.stop(PgStop::Fast).await;          // clients see their connections close
//! pg.start_again().await;               // same port, same data
//! ```
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use uuid::Uuid;

/// How long a server may take to accept connections after it was started.
pub const SERVICE_START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a server may take to exit after it was asked to.
pub const SERVICE_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// A port on 127.0.0.1 that nothing listens on now, outside the ephemeral range (so
/// an outgoing connection is unlikely to take it while our server is stopped), never
/// a shared service's port.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 20_000 + (rand::random::<u16>() % 10_000);
        if port == 5432 || port == 6379 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1 between 20000 and 29999");
}

/// A fresh directory under the system's temporary directory, readable by everyone (so
/// the `postgres` user can reach the data directory inside it).
fn temp_base(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("engine-{kind}-{}", Uuid::new_v4().simple()));
    fs::create_dir_all(&dir).expect("create a temporary directory");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn open_log(path: &Path) -> (Stdio, Stdio) {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open a service log");
    let err = file.try_clone().expect("clone a log handle");
    (Stdio::from(file), Stdio::from(err))
}

fn send_signal(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Wait for `child` to exit within `deadline`; SIGKILL it if it does not.
async fn reap(child: &mut Child, what: &str, deadline: Duration) {
    if tokio::time::timeout(deadline, child.wait()).await.is_err() {
        eprintln!("{what} did not exit within {deadline:?}; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// Best effort from a destructor: signal, poll for the exit for up to `deadline`, then
/// SIGKILL. (Drop cannot await; this blocks the dropping thread for that long at most.)
fn reap_blocking(child: &mut Child, signal: rustix::process::Signal, deadline: Duration) {
    send_signal(child, signal);
    let until = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.start_kill();
}

// ------------------------------------------------------------------------ PostgreSQL

/// How to stop PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgStop {
    /// SIGINT: "fast" shutdown — clients are disconnected, a checkpoint is written.
    Fast,
    /// SIGQUIT: "immediate" shutdown — like a crash; the next start runs recovery.
    Immediate,
}

/// The uid and gid to run PostgreSQL as: the `postgres` user when we are root.
fn postgres_owner() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root, PostgreSQL needs the `postgres` OS user: none in /etc/passwd");
    let fields: Vec<&str> = line.split(':').collect();
    let uid = fields[2].parse().expect("postgres uid");
    let gid = fields[3].parse().expect("postgres gid");
    Some((uid, gid))
}

/// The directory holding `initdb` and `postgres`.
fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or set PG_BIN_DIR)")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/<version>/bin/postgres found (or set PG_BIN_DIR)")
}

/// A private PostgreSQL cluster on its own port.
pub struct PrivatePostgres {
    base: PathBuf,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PrivatePostgres {
    /// `initdb` a fresh cluster and start it; returns once it accepts connections.
    pub async fn start() -> PrivatePostgres {
        let base = temp_base("pg");
        let data = base.join("data");
        fs::create_dir_all(&data).expect("create the data directory");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).expect("chmod data");
        let owner = postgres_owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).expect("chown data to postgres");
        }
        let bin = pg_bin_dir();
        let log = base.join("postgres.log");
        let (out, err) = open_log(&log);
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale", "C"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let status = initdb.status().await.expect("run initdb");
        assert!(
            status.success(),
            "initdb failed ({status}):\n{}",
            log_tail(&log, 30)
        );
        let mut pg = PrivatePostgres {
            base,
            data,
            log,
            bin,
            port: free_port(),
            owner,
            child: None,
        };
        pg.start_again().await;
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` (user postgres, trust authentication).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Start the server (again) on the same port and wait until it accepts connections.
    pub async fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "private PostgreSQL is already running"
        );
        let (out, err) = open_log(&self.log);
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // fsync=off is safe here: the OS outlives every simulated crash. Commits
            // stay synchronous, so an immediate shutdown loses no acknowledged one.
            .args(["-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .args(["-c", "shared_buffers=32MB"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(false);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().expect("spawn postgres"));
        let until = Instant::now() + SERVICE_START_DEADLINE;
        let url = self.url("postgres");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "private postgres exited at start ({status}):\n{}",
                        log_tail(&self.log, 30)
                    );
                }
            }
            use sqlx::Connection;
            if let Ok(Ok(conn)) =
                tokio::time::timeout(Duration::from_secs(2), sqlx::PgConnection::connect(&url))
                    .await
            {
                let _ = conn.close().await;
                return;
            }
            if Instant::now() >= until {
                panic!(
                    "private postgres on port {} did not accept connections within {SERVICE_START_DEADLINE:?}:\n{}",
                    self.port,
                    log_tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop the server and wait until it has exited (the port is closed then).
    pub async fn stop(&mut self, mode: PgStop) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let signal = match mode {
            PgStop::Fast => rustix::process::Signal::INT,
            PgStop::Immediate => rustix::process::Signal::QUIT,
        };
        send_signal(&child, signal);
        reap(&mut child, "private postgres", SERVICE_STOP_DEADLINE).await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            reap_blocking(
                &mut child,
                rustix::process::Signal::QUIT,
                Duration::from_secs(10),
            );
        }
        if std::env::var_os("KEEP_PRIVATE_SERVICES").is_none() {
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

// ------------------------------------------------------------------------------ Redis

/// How to stop Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisStop {
    /// SIGTERM: a clean shutdown.
    Term,
    /// SIGKILL: the server vanishes.
    Kill,
}

/// A private `redis-server` on its own port (nothing saved to disk: a restart is empty).
pub struct PrivateRedis {
    base: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let base = temp_base("redis");
        let mut redis = PrivateRedis {
            log: base.join("redis.log"),
            base,
            port: free_port(),
            child: None,
        };
        redis.start_again().await;
        redis
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Start the server (again) on the same port and wait until it answers PING.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "private Redis is already running");
        let (out, err) = open_log(&self.log);
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.base)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("redis url");
        let until = Instant::now() + SERVICE_START_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "private redis exited at start ({status}):\n{}",
                        log_tail(&self.log, 30)
                    );
                }
            }
            let pong = async {
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), pong).await {
                return;
            }
            if Instant::now() >= until {
                panic!(
                    "private redis on port {} did not answer within {SERVICE_START_DEADLINE:?}:\n{}",
                    self.port,
                    log_tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop the server and wait until it has exited.
    pub async fn stop(&mut self, mode: RedisStop) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        match mode {
            RedisStop::Term => send_signal(&child, rustix::process::Signal::TERM),
            RedisStop::Kill => {
                let _ = child.start_kill();
            }
        }
        reap(&mut child, "private redis", SERVICE_STOP_DEADLINE).await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.try_wait();
        }
        if std::env::var_os("KEEP_PRIVATE_SERVICES").is_none() {
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

/// Both private servers of one test.
pub struct PrivateServices {
    pub pg: PrivatePostgres,
    pub redis: PrivateRedis,
}

impl PrivateServices {
    /// Start both, side by side.
    pub async fn start() -> PrivateServices {
        let (pg, redis) = tokio::join!(PrivatePostgres::start(), PrivateRedis::start());
        PrivateServices { pg, redis }
    }
}
