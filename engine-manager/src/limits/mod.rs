//! Resource limits (CONTRACT §6), enforced by the kernel: one control group per
//! executor (`engine/<strategy or run id>`), cgroup v2 where the manager may create
//! child groups and enable their controllers, cgroup v1 where the memory, cpu and pids
//! controllers are mounted, else rlimits. `open_files` is always an rlimit
//! (`RLIMIT_NOFILE`; no cgroup counts file descriptors).
//!
//! # Layout
//! - [`Limiter`]: the mechanism chosen at start-up ([`Limiter::detect`]), placing a
//!   new process in its group with its limits in force ([`Limiter::confine`]) before
//!   the executor reads its stdin — the executor creates its strategy only after that,
//!   so no strategy code runs unconfined (no `pre_exec`: the workspace forbids unsafe).
//! - [`LimitGroup`]: one executor's group: limits rewritten live, the OOM kill read
//!   at exit, removed after the exit.
//! - [`Limiter::remove_empty_groups`]: at start-up, the groups of executors that
//!   exited while no manager watched them (the manager was down), found empty, are
//!   removed; a group with a process in it (an executor to adopt) is kept.
//! - [`CgroupDriver`]: what a cgroup version does, implemented by `v1` and `v2`
//!   (the v2 code is tested against a directory laid out like cgroupfs).
//! - `rlimits`: `prlimit` on the process, the fallback and `open_files`.

mod rlimits;
mod v1;
mod v2;

pub use v1::CgroupV1;
pub use v2::CgroupV2;

use engine_protocol::limits::ResourceLimits;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The CFS period every cpu quota is written against (100 ms, the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// What a cgroup version does with one executor's group, named by a path relative to
/// the engine's own parent group (`engine/<id>`).
pub trait CgroupDriver: Send + Sync + fmt::Debug {
    /// How operators see it: `cgroup v1 (memory, cpu, pids under /sys/fs/cgroup/…)`.
    fn describe(&self) -> String;
    /// Make the group (an existing one is reused).
    fn create(&self, group: &str) -> io::Result<()>;
    /// Write `limits` into the group's files (absent limits become unlimited).
    fn apply(&self, group: &str, limits: &ResourceLimits) -> io::Result<()>;
    /// Move the whole process `pid` (every thread) into the group.
    fn add_process(&self, group: &str, pid: u32) -> io::Result<()>;
    /// How many processes of the group the kernel killed for memory.
    fn oom_kills(&self, group: &str) -> u64;
    /// Remove the group (it must be empty); gone already is fine.
    fn remove(&self, group: &str) -> io::Result<()>;
    /// Whether the group exists (an adopted executor's, made by an earlier manager).
    fn exists(&self, group: &str) -> bool;
    /// Every group under the engine's parent (`engine/<id>`), whoever made it.
    fn groups(&self) -> Vec<String>;
    /// Whether the group holds no process (`false` when that cannot be read).
    fn is_empty(&self, group: &str) -> bool;
    /// How long ago the group's directory was made or last changed (`None` when
    /// unknown).
    fn age(&self, group: &str) -> Option<Duration>;
}

/// How old an empty group must be for the start-up sweep to remove it: a group made
/// this instant by another manager on the host is empty until its process is added.
pub const EMPTY_GROUP_MIN_AGE: Duration = Duration::from_secs(5);

/// How limits are enforced on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MechanismChoice {
    /// The first that works: cgroup v2, cgroup v1, rlimits.
    Auto,
    CgroupV2,
    CgroupV1,
    /// rlimits only: memory (RLIMIT_DATA) and open files; cpu and pids unenforced.
    Rlimits,
}

/// The mechanism in use, chosen once at start-up.
#[derive(Debug, Clone)]
pub struct Limiter {
    driver: Option<Arc<dyn CgroupDriver>>,
    /// Why no cgroup version is used (for the start-up line and `doctor`).
    why_not_cgroups: Option<String>,
}

/// One executor's group, with the limits in force.
#[derive(Debug, Clone)]
pub struct LimitGroup {
    driver: Arc<dyn CgroupDriver>,
    name: String,
}

/// Where a new process stands after [`Limiter::confine`].
#[derive(Debug, Default)]
pub struct Confinement {
    pub group: Option<LimitGroup>,
    /// The limits that are not enforced, and why (recorded as an event, logged).
    pub unenforced: Option<String>,
}

impl Limiter {
    /// Choose the mechanism: `choice`, or with `Auto` the first that works here.
    pub fn detect(choice: MechanismChoice) -> Limiter {
        let mut reasons = Vec::new();
        if matches!(choice, MechanismChoice::Auto | MechanismChoice::CgroupV2) {
            match CgroupV2::detect_host() {
                Ok(driver) => return Limiter::with_driver(Arc::new(driver)),
                Err(why) => reasons.push(format!("cgroup v2: {why}")),
            }
        }
        if matches!(choice, MechanismChoice::Auto | MechanismChoice::CgroupV1) {
            match CgroupV1::detect_host() {
                Ok(driver) => return Limiter::with_driver(Arc::new(driver)),
                Err(why) => reasons.push(format!("cgroup v1: {why}")),
            }
        }
        if reasons.is_empty() {
            reasons.push("--limits-mechanism rlimits".to_string());
        }
        Limiter {
            driver: None,
            why_not_cgroups: Some(reasons.join("; ")),
        }
    }

    pub fn with_driver(driver: Arc<dyn CgroupDriver>) -> Limiter {
        Limiter {
            driver: Some(driver),
            why_not_cgroups: None,
        }
    }

    /// The start-up line and `enginectl doctor`'s words.
    pub fn describe(&self) -> String {
        match (&self.driver, &self.why_not_cgroups) {
            (Some(driver), _) => format!("{}; open_files by rlimit", driver.describe()),
            (None, why) => format!(
                "rlimits (memory_mb as RLIMIT_DATA, open_files as RLIMIT_NOFILE; cpu_percent and pids unenforced): no usable cgroup ({})",
                why.as_deref().unwrap_or("none found")
            ),
        }
    }

    /// Put the just-spawned process `pid` (which has not read its stdin yet) in the
    /// group `engine/<id>` with `limits` in force. Never fails: what cannot be
    /// enforced is said in [`Confinement::unenforced`].
    pub fn confine(&self, id: &str, pid: u32, limits: &ResourceLimits) -> Confinement {
        if limits.is_empty() {
            // Nothing to hold: no group (one is made if limits are set live).
            return Confinement::default();
        }
        let mut unenforced = Vec::new();
        let mut confinement = Confinement::default();
        let cgroup_held = match &self.driver {
            Some(driver) => match LimitGroup::place(driver.clone(), id, pid, limits) {
                Ok(group) => {
                    confinement.group = Some(group);
                    true
                }
                Err(err) => {
                    unenforced.push(format!("cgroup: {err}"));
                    false
                }
            },
            None => false,
        };
        let rlimited = ResourceLimits {
            memory_mb: limits.memory_mb.filter(|_| !cgroup_held),
            open_files: limits.open_files,
            ..ResourceLimits::default()
        };
        if let Err(err) = rlimits::apply(pid, &rlimited) {
            unenforced.push(format!("rlimits: {err}"));
        }
        if !cgroup_held {
            let missing: Vec<&str> = [
                limits.cpu_percent.map(|_| "cpu_percent"),
                limits.pids.map(|_| "pids"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !missing.is_empty() {
                unenforced.push(format!(
                    "{} not enforced: no usable cgroup ({})",
                    missing.join(" and "),
                    self.why_not_cgroups
                        .as_deref()
                        .unwrap_or("the group could not be made")
                ));
            }
        }
        if !unenforced.is_empty() {
            confinement.unenforced = Some(format!("limits ({limits}): {}", unenforced.join("; ")));
        }
        confinement
    }

    /// Remove every group that holds no process and is at least `min_age` old: the
    /// groups of executors that exited while no manager watched them (their
    /// supervisor removes a group after an exit it sees). Run at start-up, before
    /// any executor is started; a group with a process in it (an executor to adopt)
    /// stays. The groups removed, by name; those that could not be, logged.
    pub fn remove_empty_groups(&self, min_age: Duration) -> Vec<String> {
        let Some(driver) = &self.driver else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for group in driver.groups() {
            let old_enough = driver.age(&group).is_some_and(|age| age >= min_age);
            if !old_enough || !driver.is_empty(&group) {
                continue;
            }
            match driver.remove(&group) {
                Ok(()) => removed.push(group),
                Err(err) => {
                    tracing::warn!(%group, error = %err, "could not remove an empty limits group")
                }
            }
        }
        removed
    }

    /// The group of an adopted executor, if an earlier manager made one.
    pub fn existing(&self, id: &str) -> Option<LimitGroup> {
        let driver = self.driver.clone()?;
        let name = group_name(id);
        driver.exists(&name).then_some(LimitGroup { driver, name })
    }

    /// Apply `limits` to a running process live: its group's files (a process with
    /// no group is given one) and its rlimits.
    pub fn update(
        &self,
        group: &mut Option<LimitGroup>,
        id: &str,
        pid: u32,
        limits: &ResourceLimits,
    ) -> Result<Option<String>, io::Error> {
        if let Some(g) = group {
            g.driver.apply(&g.name, limits)?;
            rlimits::apply(
                pid,
                &ResourceLimits {
                    open_files: limits.open_files,
                    ..ResourceLimits::default()
                },
            )?;
            return Ok(None);
        }
        let confinement = self.confine(id, pid, limits);
        *group = confinement.group;
        Ok(confinement.unenforced)
    }
}

/// Limits as a row stores them (the schema checked them): should one not read, it
/// is logged and the process starts without limits rather than not at all.
pub fn stored(value: &serde_json::Value) -> ResourceLimits {
    ResourceLimits::from_value(value).unwrap_or_else(|err| {
        tracing::warn!(error = %err, "stored limits cannot be read; starting without them");
        ResourceLimits::default()
    })
}

fn group_name(id: &str) -> String {
    format!("engine/{id}")
}

/// `engine/<id>` → `<id>`: a driver's base is the `engine` group (one per hierarchy).
fn leaf(group: &str) -> &str {
    group.strip_prefix("engine/").unwrap_or(group)
}

impl LimitGroup {
    fn place(
        driver: Arc<dyn CgroupDriver>,
        id: &str,
        pid: u32,
        limits: &ResourceLimits,
    ) -> io::Result<LimitGroup> {
        let name = group_name(id);
        driver.create(&name)?;
        let group = LimitGroup { driver, name };
        let placed = group
            .driver
            .apply(&group.name, limits)
            .and_then(|()| group.driver.add_process(&group.name, pid));
        match placed {
            Ok(()) => Ok(group),
            Err(err) => {
                // Not left behind empty (the process is in no group of ours).
                group.remove();
                Err(err)
            }
        }
    }

    /// Whether the kernel killed a process of the group for memory.
    pub fn oom_killed(&self) -> bool {
        self.driver.oom_kills(&self.name) > 0
    }

    /// Remove the group after its process exited (logged if it cannot be).
    pub fn remove(&self) {
        if let Err(err) = self.driver.remove(&self.name) {
            tracing::warn!(group = %self.name, error = %err, "could not remove the limits group");
        }
    }
}

/// Write `value` to `dir/file`.
fn write_file(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value)
        .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))
}

/// The value of `key` in a flat keyed file (`memory.events`, `memory.oom_control`).
fn keyed_value(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The child directories of `dir` as `engine/<name>` (none when it cannot be read).
fn child_groups(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .map(|name| group_name(&name))
        .collect()
}

/// Whether `dir/cgroup.procs` lists no process (`false` when it cannot be read).
fn holds_no_process(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|text| text.trim().is_empty())
}

/// How long ago `dir` was modified (made, for a cgroup directory).
fn dir_age(dir: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(dir).ok()?.modified().ok()?;
    Some(modified.elapsed().unwrap_or(Duration::ZERO))
}

/// Remove a group directory. An empty cgroup goes with its files (rmdir); a plain
/// directory holding files (the tests' fake cgroupfs: ENOTEMPTY, which cgroupfs never
/// says) is removed with them.
fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) if err.raw_os_error() == Some(rustix::io::Errno::NOTEMPTY.raw_os_error()) => {
            std::fs::remove_dir_all(dir)
        }
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("{}: {err}", dir.display()),
        )),
    }
}

/// The manager's own group in a hierarchy (`/proc/self/cgroup`): `hierarchy` is the
/// controller list of a v1 line (`memory`) or empty for the v2 line (`0::/path`).
fn own_cgroup(hierarchy: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if hierarchy.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == hierarchy)
        };
        matches.then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

#[cfg(test)]
mod tests;
