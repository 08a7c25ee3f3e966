//! cgroup v2: one unified hierarchy. The manager's groups are `engine/<id>` under its
//! own group, which needs the memory, cpu and pids controllers enabled in the own
//! group's and in `engine`'s `cgroup.subtree_control`. A group with processes in it
//! cannot pass controllers down (the no-internal-process rule): the manager then
//! moves itself into a leaf `manager` beside `engine`, as systemd's delegation
//! documentation asks of a delegated service.

use super::{
    child_groups, dir_age, holds_no_process, keyed_value, leaf, own_cgroup, remove_dir, write_file,
    CgroupDriver, CPU_PERIOD_US,
};
use engine_protocol::limits::ResourceLimits;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

#[derive(Debug, Clone)]
pub struct CgroupV2 {
    /// The `engine` group, parent of every executor's group.
    engine: PathBuf,
}

impl CgroupV2 {
    /// The v2 hierarchy mounted here, if the manager may make child groups with the
    /// memory, cpu and pids controllers under its own group.
    pub fn detect_host() -> Result<CgroupV2, String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")
            .map_err(|err| format!("cannot read /proc/self/mounts: {err}"))?;
        let mount = mounts
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() > 2 && fields[2] == "cgroup2").then(|| PathBuf::from(fields[1]))
            })
            .ok_or("no cgroup2 file system is mounted")?;
        let own = own_cgroup("")
            .map(|own| mount.join(own))
            .filter(|dir| dir.is_dir())
            .unwrap_or(mount);
        CgroupV2::prepare(&own, std::process::id())
    }

    /// Set up `engine` under the group `own` (the manager, `pid`, is in it): check its
    /// controllers, enable them for its children (moving the manager into
    /// `own/manager` if `own` holds processes), make `engine` and enable them there.
    pub fn prepare(own: &Path, pid: u32) -> Result<CgroupV2, String> {
        let available = std::fs::read_to_string(own.join("cgroup.controllers"))
            .map_err(|err| format!("cannot read {}/cgroup.controllers: {err}", own.display()))?;
        let missing: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !available.split_whitespace().any(|a| a == *c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{} not available to {} (cgroup.controllers: \"{}\"); delegate them to the manager (systemd: Delegate=yes)",
                missing.join(", "),
                own.display(),
                available.trim()
            ));
        }
        let enable = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
        if write_file(own, "cgroup.subtree_control", &enable).is_err() {
            let leaf = own.join("manager");
            std::fs::create_dir_all(&leaf)
                .and_then(|()| write_file(&leaf, "cgroup.procs", &pid.to_string()))
                .and_then(|()| write_file(own, "cgroup.subtree_control", &enable))
                .map_err(|err| {
                    format!(
                        "cannot enable {} in {}/cgroup.subtree_control, even with the manager moved to {}: {err}",
                        CONTROLLERS.join(", "),
                        own.display(),
                        leaf.display()
                    )
                })?;
        }
        let engine = own.join("engine");
        std::fs::create_dir_all(&engine)
            .and_then(|()| write_file(&engine, "cgroup.subtree_control", &enable))
            .map_err(|err| format!("cannot set up {}: {err}", engine.display()))?;
        Ok(CgroupV2 { engine })
    }

    /// The group's directory (tests read its files).
    pub fn group_dir(&self, group: &str) -> PathBuf {
        self.engine.join(leaf(group))
    }
}

impl CgroupDriver for CgroupV2 {
    fn describe(&self) -> String {
        format!(
            "cgroup v2 (memory, cpu, pids; groups under {})",
            self.engine.display()
        )
    }

    fn create(&self, group: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.group_dir(group))
    }

    fn apply(&self, group: &str, limits: &ResourceLimits) -> io::Result<()> {
        let dir = self.group_dir(group);
        let memory = limits
            .memory_mb
            .map_or("max".to_string(), |mb| (mb * 1024 * 1024).to_string());
        write_file(&dir, "memory.max", &memory)?;
        // Killed at the limit, not swapped out past it.
        if dir.join("memory.swap.max").exists() {
            let swap = if limits.memory_mb.is_some() {
                "0"
            } else {
                "max"
            };
            write_file(&dir, "memory.swap.max", swap)?;
        }
        let quota = limits
            .cpu_percent
            .map_or("max".to_string(), |p| (p * CPU_PERIOD_US / 100).to_string());
        write_file(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
        let pids = limits.pids.map_or("max".to_string(), |n| n.to_string());
        write_file(&dir, "pids.max", &pids)
    }

    fn add_process(&self, group: &str, pid: u32) -> io::Result<()> {
        write_file(&self.group_dir(group), "cgroup.procs", &pid.to_string())
    }

    fn oom_kills(&self, group: &str) -> u64 {
        keyed_value(&self.group_dir(group), "memory.events", "oom_kill").unwrap_or(0)
    }

    fn remove(&self, group: &str) -> io::Result<()> {
        remove_dir(&self.group_dir(group))
    }

    fn exists(&self, group: &str) -> bool {
        self.group_dir(group).is_dir()
    }

    fn groups(&self) -> Vec<String> {
        child_groups(&self.engine)
    }

    fn is_empty(&self, group: &str) -> bool {
        holds_no_process(&self.group_dir(group))
    }

    fn age(&self, group: &str) -> Option<Duration> {
        dir_age(&self.group_dir(group))
    }
}
