//! Executor processes: spawning one (config and broker state on stdin, output to its log file, its own
//! process group; a run's process with its run input on stdin), recognising one again after a manager restart (pid plus start
//! time), awaiting its exit, signalling it, and reading the tail of its log.

use crate::limits::{Confinement, LimitGroup, Limiter};
use crate::tasks::blocking;
use engine_protocol::executor_env::RunAs;
use engine_protocol::limits::ResourceLimits;
use engine_protocol::procfs;
use rustix::process::{Pid, Signal};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use engine_protocol::procfs::{is_same_process, start_ticks};

/// Every live executor whose command line names `control_socket` (that is, one a
/// manager of this state directory started), by strategy id: `(pid, start ticks)`.
///
/// The process table is the truth about what runs: this finds executors even when
/// the database never heard of their pid (a manager that died between the spawn and
/// the write).
pub fn scan_executors(control_socket: &Path) -> HashMap<Uuid, Vec<(u32, u64)>> {
    scan(b"--control-socket", control_socket, b"--strategy-id")
}

/// Every live run process whose command line names `runs_dir` (`--runs-dir`), by
/// run id (`--run-id`), as [`scan_executors`] does for executors.
pub fn scan_runs(runs_dir: &Path) -> HashMap<Uuid, Vec<(u32, u64)>> {
    scan(b"--runs-dir", runs_dir, b"--run-id")
}

/// The live processes whose `owner_flag` is `owner`, by the UUID after `id_flag`.
fn scan(owner_flag: &[u8], owner: &Path, id_flag: &[u8]) -> HashMap<Uuid, Vec<(u32, u64)>> {
    let mut found: HashMap<Uuid, Vec<(u32, u64)>> = HashMap::new();
    let owner = owner.as_os_str().as_encoded_bytes();
    for (pid, cmdline) in procfs::command_lines() {
        if cmdline.value_of(owner_flag) != Some(owner) {
            continue;
        }
        let Some(id) = cmdline
            .value_of(id_flag)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<Uuid>().ok())
        else {
            continue;
        };
        if let Some(ticks) = start_ticks(pid) {
            found.entry(id).or_default().push((pid, ticks));
        }
    }
    found
}

/// What the spawn of a run's process needs.
pub struct RunSpawnSpec<'a> {
    pub executor_path: &'a Path,
    pub run_id: Uuid,
    pub runs_dir: &'a Path,
    pub log_path: &'a Path,
    /// Written on its stdin.
    pub input: &'a engine_protocol::runs::RunInput,
    /// Its strategy's limits, in force before it reads its input.
    pub confine: Confine<'a>,
    /// The user it runs as (`--executor-user`), else the manager's.
    pub run_as: Option<&'a RunAs>,
}

/// The limits a new process is held to, in the group `engine/<id>`: put in force
/// after the spawn and before anything is written on its stdin (the executor creates
/// its strategy only after reading all of it).
#[derive(Debug, Clone, Copy)]
pub struct Confine<'a> {
    pub limiter: &'a Arc<Limiter>,
    /// The strategy's or the run's id: the group's name.
    pub id: Uuid,
    pub limits: ResourceLimits,
}

/// What one spawn needs.
pub struct SpawnSpec<'a> {
    pub executor_path: &'a Path,
    pub strategy_id: Uuid,
    pub name: &'a str,
    pub strategy_type: &'a str,
    pub config: &'a serde_json::Value,
    /// The broker state the previous executor reported, for this one to restore.
    pub broker_state: Option<&'a serde_json::Value>,
    pub control_socket: &'a Path,
    pub redis_url: &'a str,
    pub redis_prefix: &'a str,
    pub metrics_interval: std::time::Duration,
    pub log_path: &'a Path,
    /// Pass `--start-paused`: the executor comes up `paused`.
    pub start_paused: bool,
    /// The strategy has an `execution_interval_s` (its type must support it).
    pub interval: bool,
    /// In a cluster: the lease the executor trades under (it exits when it ends).
    pub lease: Option<engine_protocol::control::LeaseGrant>,
    /// `strategy_configs.lease_epoch`: what its client order ids carry.
    pub lease_epoch: i64,
    /// The manager's node (`--node`): what the executor's status messages say.
    pub node: &'a str,
    pub confine: Confine<'a>,
    /// The user it runs as (`--executor-user`), else the manager's.
    pub run_as: Option<&'a RunAs>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("executor binary not found at {path}; build it (cargo build --release) or set --executor-path / ENGINE_EXECUTOR_PATH")]
    NotFound { path: PathBuf },
    #[error("cannot run the executor binary {path}")]
    Exec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the executor log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How an executor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    Code(i32),
    Signal(i32),
    /// An adopted process (not our child): its exit status cannot be read.
    Unknown,
    /// Killed by the kernel for memory: its group's OOM kill count rose (or, under
    /// rlimits, an allocation failed at the limit); `limit_mb` is its `memory_mb`.
    OutOfMemory {
        limit_mb: Option<u64>,
    },
}

impl ExitInfo {
    fn from_status(status: ExitStatus) -> ExitInfo {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitInfo::Code(code),
            (None, Some(sig)) => ExitInfo::Signal(sig),
            _ => ExitInfo::Unknown,
        }
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "exit code {c}"),
            ExitInfo::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(name) => write!(f, "killed by signal {s} ({})", name.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            ExitInfo::Unknown => write!(f, "exited (status unknown: adopted process)"),
            ExitInfo::OutOfMemory {
                limit_mb: Some(limit),
            } => write!(f, "killed: out of memory, limit {limit} MB"),
            ExitInfo::OutOfMemory { limit_mb: None } => write!(f, "killed: out of memory"),
        }
    }
}

enum ExitWatch {
    Child(tokio::process::Child),
    Pidfd(AsyncFd<OwnedFd>),
    Exited(ExitInfo),
}

/// A live executor process that this manager supervises.
pub struct ExecutorProcess {
    pub pid: u32,
    pub start_ticks: u64,
    /// Where its log was when it started: the lines after it are this run's.
    pub log_path: PathBuf,
    pub log_offset: u64,
    watch: ExitWatch,
    /// Its limits group (none under rlimits alone), removed after the exit.
    pub group: Option<LimitGroup>,
    /// The limits it was started with (updated live).
    pub limits: ResourceLimits,
    /// The limits that are not enforced, and why (said once after the spawn).
    pub unenforced: Option<String>,
    /// How it ended, once [`ExecutorProcess::wait`] has looked (an OOM kill or not).
    examined: Arc<OnceLock<ExitInfo>>,
}

impl ExecutorProcess {
    /// Spawn an executor: its own process group (so a terminal's Ctrl-C or the
    /// manager's death never reaches it), stdout and stderr appended to `log_path`,
    /// the config and the broker state written on stdin (never in argv). The file system work (the
    /// binary's check, the log's directory and file) and the `/proc` read run on the
    /// blocking pool: a start-all of hundreds of strategies must not stall the
    /// async workers.
    pub async fn spawn(spec: &SpawnSpec<'_>) -> Result<ExecutorProcess, SpawnError> {
        let (executor_path, log_path) = (
            spec.executor_path.to_path_buf(),
            spec.log_path.to_path_buf(),
        );
        let (log, log2, log_offset) = blocking(move || open_log(&executor_path, &log_path)).await?;
        let input = engine_protocol::control::SpawnInput {
            config: spec.config.clone(),
            broker_state: spec.broker_state.cloned(),
            interval: spec.interval,
            lease: spec.lease,
            epoch: Some(spec.lease_epoch),
        };
        let input = serde_json::to_vec(&input).expect("a JSON value serializes");
        let started = Started {
            executor_path: spec.executor_path,
            log_path: spec.log_path,
            log_offset,
            confine: spec.confine,
        };
        started.launch(command(spec, log, log2), &input).await
    }

    /// Spawn a run's process: `--run-id {id} --runs-dir {dir}` (never
    /// `--strategy-id`), its own process group, output appended to its log, the
    /// [`engine_protocol::runs::RunInput`] on stdin. Its environment is the
    /// allow-list alone (no database URL, no Redis URL).
    pub async fn spawn_run(spec: &RunSpawnSpec<'_>) -> Result<ExecutorProcess, SpawnError> {
        let (executor_path, log_path) = (
            spec.executor_path.to_path_buf(),
            spec.log_path.to_path_buf(),
        );
        let (log, log2, log_offset) = blocking(move || open_log(&executor_path, &log_path)).await?;
        let mut cmd = tokio::process::Command::new(spec.executor_path);
        cmd.arg("--run-id")
            .arg(spec.run_id.to_string())
            .arg("--runs-dir")
            .arg(spec.runs_dir);
        detach(&mut cmd, log, log2, spec.run_as);
        let input = serde_json::to_vec(spec.input).expect("a run input serializes");
        let started = Started {
            executor_path: spec.executor_path,
            log_path: spec.log_path,
            log_offset,
            confine: spec.confine,
        };
        started.launch(cmd, &input).await
    }

    /// Take over an executor a previous manager started, if `pid` is still that
    /// process (same start time). Its exit is watched through a pidfd.
    pub fn adopt(
        pid: u32,
        ticks: u64,
        log_path: PathBuf,
        group: Option<LimitGroup>,
        limits: ResourceLimits,
    ) -> Option<ExecutorProcess> {
        if !is_same_process(pid, ticks) {
            return None;
        }
        let rpid = Pid::from_raw(pid as i32)?;
        let fd = rustix::process::pidfd_open(rpid, rustix::process::PidfdFlags::empty()).ok()?;
        // Checked again after opening the pidfd: the pid cannot be reused any more.
        if !is_same_process(pid, ticks) {
            return None;
        }
        // `AsyncFd::new` is deprecated because a borrowed fd could be closed while
        // registered; here AsyncFd owns the OwnedFd, so it stays open until dropped.
        #[allow(deprecated)]
        let watch = ExitWatch::Pidfd(AsyncFd::new(fd).ok()?);
        let log_offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        Some(ExecutorProcess {
            pid,
            start_ticks: ticks,
            log_path,
            log_offset,
            watch,
            group,
            limits,
            unenforced: None,
            examined: Arc::default(),
        })
    }

    /// Wait until the process exits (cancel-safe; returns at once if it already did).
    /// An exit the kernel caused for memory is [`ExitInfo::OutOfMemory`]; the limits
    /// group is removed after the exit.
    pub async fn wait(&mut self) -> ExitInfo {
        let info = self.wait_status().await;
        if let Some(examined) = self.examined.get() {
            return *examined;
        }
        // Examined on the blocking pool, the verdict kept in `examined`: dropped
        // midway (a `select!`), the examination still finishes and the next call
        // finds its verdict (the group is gone by then).
        let examined = self.examined.clone();
        let group = self.group.clone();
        let limit_mb = self.limits.memory_mb;
        let (log_path, log_offset) = (self.log_path.clone(), self.log_offset);
        let info = blocking(move || {
            *examined.get_or_init(|| {
                let oom = match &group {
                    Some(group) => {
                        let killed = group.oom_killed();
                        group.remove();
                        killed
                    }
                    // Under rlimits: an allocation refused at RLIMIT_DATA aborts.
                    None => {
                        limit_mb.is_some()
                            && info == ExitInfo::Signal(6)
                            && log_tail(&log_path, log_offset, 3).contains("memory allocation of")
                    }
                };
                if oom {
                    ExitInfo::OutOfMemory { limit_mb }
                } else {
                    info
                }
            })
        })
        .await;
        self.group = None;
        self.watch = ExitWatch::Exited(info);
        info
    }

    async fn wait_status(&mut self) -> ExitInfo {
        let info = match &mut self.watch {
            ExitWatch::Exited(info) => return *info,
            ExitWatch::Child(child) => match child.wait().await {
                Ok(status) => ExitInfo::from_status(status),
                Err(_) => ExitInfo::Unknown,
            },
            ExitWatch::Pidfd(fd) => match fd.readable().await {
                Ok(mut guard) => {
                    guard.retain_ready();
                    ExitInfo::Unknown
                }
                Err(_) => ExitInfo::Unknown,
            },
        };
        self.watch = ExitWatch::Exited(info);
        info
    }

    /// Send `signal` to the executor's process group (it leads its own group).
    pub fn signal(&self, signal: Signal) {
        if matches!(self.watch, ExitWatch::Exited(_)) {
            return;
        }
        if let Some(pid) = Pid::from_raw(self.pid as i32) {
            if is_same_process(self.pid, self.start_ticks) || self.start_ticks == 0 {
                let _ = rustix::process::kill_process_group(pid, signal);
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }

    /// The last `lines` non-empty lines this run wrote to its log (stderr and stdout).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, self.log_offset, lines)
    }
}

/// A process about to be spawned: its binary, log and limits.
struct Started<'a> {
    executor_path: &'a Path,
    log_path: &'a Path,
    log_offset: u64,
    confine: Confine<'a>,
}

impl Started<'_> {
    /// Spawn `cmd`, write `input` on its stdin and close it, and read its start time.
    async fn launch(
        self,
        mut cmd: tokio::process::Command,
        input: &[u8],
    ) -> Result<ExecutorProcess, SpawnError> {
        let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
            path: self.executor_path.to_path_buf(),
            source,
        })?;
        let pid = child.id().expect("a just-spawned child has a pid");
        // In its group, with its limits, before it reads a byte of its input.
        let (limiter, id, limits) = (
            self.confine.limiter.clone(),
            self.confine.id,
            self.confine.limits,
        );
        // Without limits there is nothing to do: no hop to the blocking pool between
        // the spawn and the input (a manager killed in between leaves a process that
        // reads no input).
        let Confinement { group, unenforced } = if limits.is_empty() {
            Confinement::default()
        } else {
            blocking(move || limiter.confine(&id.to_string(), pid, &limits)).await
        };
        if let Some(mut stdin) = child.stdin.take() {
            // If the process died at once, the write fails; its exit tells why.
            let _ = stdin.write_all(input).await;
            let _ = stdin.shutdown().await;
        }
        // Read where it is: a /proc read never waits on a disk, and a hop to the
        // blocking pool here would sit on every start's path.
        let start_ticks = start_ticks(pid).unwrap_or(0);
        Ok(ExecutorProcess {
            pid,
            start_ticks,
            log_path: self.log_path.to_path_buf(),
            log_offset: self.log_offset,
            watch: ExitWatch::Child(child),
            group,
            limits,
            unenforced,
            examined: Arc::default(),
        })
    }
}

/// Check the executor binary and open its log for appending (creating its
/// directory): the log twice (stdout and stderr) and the offset this run starts at.
fn open_log(executor_path: &Path, log_path: &Path) -> Result<(File, File, u64), SpawnError> {
    if !executor_path.is_file() {
        return Err(SpawnError::NotFound {
            path: executor_path.to_path_buf(),
        });
    }
    let log_err = |source| SpawnError::Log {
        path: log_path.to_path_buf(),
        source,
    };
    if let Some(dir) = log_path.parent() {
        fs::create_dir_all(dir).map_err(log_err)?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(log_err)?;
    let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log2 = log.try_clone().map_err(log_err)?;
    Ok((log, log2, log_offset))
}

/// The executor's command line, environment and pipes.
fn command(spec: &SpawnSpec<'_>, log: File, log2: File) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(spec.executor_path);
    cmd.arg("--strategy-id")
        .arg(spec.strategy_id.to_string())
        .arg("--name")
        .arg(spec.name)
        .arg("--strategy-type")
        .arg(spec.strategy_type)
        .arg("--config-file")
        .arg("-")
        .arg("--spawn-envelope")
        .arg("--control-socket")
        .arg(spec.control_socket)
        .arg("--metrics-interval")
        .arg(format!("{}ms", spec.metrics_interval.as_millis()))
        .arg("--node")
        .arg(spec.node)
        .args(spec.start_paused.then_some("--start-paused"));
    detach(&mut cmd, log, log2, spec.run_as);
    // After `detach` (which clears the environment): secrets stay out of argv, so
    // the Redis URL (it may hold a password) goes in the environment, the config on
    // stdin.
    cmd.env("REDIS_URL", spec.redis_url)
        .env("ENGINE_REDIS_PREFIX", spec.redis_prefix);
    cmd
}

/// What every process the manager starts has: the allow-list environment (none of
/// the manager's settings or secrets: no database URL, no HTTP token; see
/// [`engine_protocol::executor_env`]), stdin piped, output appended to its log, its
/// own process group (a dying manager or a terminal's Ctrl-C never reaches it),
/// never killed when its handle is dropped; with `run_as`, that user's uid and
/// primary group and no supplementary groups (the standard library's spawn drops
/// them when a uid is set).
fn detach(cmd: &mut tokio::process::Command, log: File, log2: File, run_as: Option<&RunAs>) {
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd.env_clear()
        .envs(engine_protocol::executor_env::inherited_as(run_as))
        .stdin(Stdio::piped())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .kill_on_drop(false);
}

/// The last `lines` non-empty lines of `path` after byte `offset` (at most 64 KiB read).
pub fn log_tail(path: &Path, offset: u64, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A file shorter than the offset was rotated (copied, then truncated) since the
    // run began: everything it holds now is this run's.
    let offset = if len < offset { 0 } else { offset };
    let from = offset.max(len.saturating_sub(64 * 1024));
    if file.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.take(64 * 1024).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let start = kept.len().saturating_sub(lines);
    strip_ansi_escapes::strip_str(kept[start..].join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_processes_by_their_control_socket() {
        let dir = std::env::temp_dir().join(format!("scan-{}", Uuid::new_v4()));
        let socket = dir.join("control.sock");
        let id = Uuid::new_v4();
        // `sh -c SCRIPT ARGS…` keeps ARGS in its own command line. The script is a
        // builtin that waits on stdin: a shell that forked (`sleep`) would show the
        // same command line in its child until that child exec'd, two matches.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read _")
            .stdin(std::process::Stdio::piped())
            .arg("--strategy-id")
            .arg(id.to_string())
            .arg("--control-socket")
            .arg(&socket)
            .spawn()
            .unwrap();
        // Until the child has exec'd, its /proc entry shows our own command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let found = scan_executors(&socket);
            if found.contains_key(&id) || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.get(&id).map(|v| v.len()), Some(1), "{found:?}");
        assert_eq!(found[&id][0].0, child.id());
        assert!(!scan_executors(&dir.join("other.sock")).contains_key(&id));
    }

    #[test]
    fn exits_are_described_with_signal_names() {
        assert_eq!(ExitInfo::Code(3).to_string(), "exit code 3");
        assert_eq!(
            ExitInfo::Signal(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            ExitInfo::Signal(6).to_string(),
            "killed by signal 6 (SIGABRT)"
        );
        assert_eq!(ExitInfo::Signal(99).to_string(), "killed by signal 99");
    }

    #[test]
    fn tail_reads_only_this_run_and_strips_colours() {
        let dir = std::env::temp_dir().join(format!("tail-{}", Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        fs::write(&path, "old line\n").unwrap();
        let offset = fs::metadata(&path).unwrap().len();
        fs::write(
            &path,
            "old line\n\u{1b}[31merror\u{1b}[0m: one\n\ntwo\nthree\n",
        )
        .unwrap();
        assert_eq!(log_tail(&path, offset, 2), "two | three");
        assert_eq!(log_tail(&path, offset, 10), "error: one | two | three");
        fs::remove_dir_all(dir).unwrap();
    }
}
