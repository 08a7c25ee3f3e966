//! cgroup v1: the memory, cpu and pids controllers, each its own hierarchy (as on
//! this project's machines). A group is `engine/<id>` under the manager's own group
//! in each hierarchy.

use super::{
    child_groups, dir_age, holds_no_process, keyed_value, leaf, own_cgroup, remove_dir, write_file,
    CgroupDriver, CPU_PERIOD_US,
};
use engine_protocol::limits::ResourceLimits;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

#[derive(Debug, Clone)]
pub struct CgroupV1 {
    /// The parent of the engine's groups in each hierarchy (`…/engine`).
    memory: PathBuf,
    cpu: PathBuf,
    pids: PathBuf,
}

impl CgroupV1 {
    /// The v1 hierarchies mounted here, if memory, cpu and pids all are and the
    /// manager may make groups in them.
    pub fn detect_host() -> Result<CgroupV1, String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")
            .map_err(|err| format!("cannot read /proc/self/mounts: {err}"))?;
        let mut bases = Vec::new();
        for controller in CONTROLLERS {
            let mount = mounts
                .lines()
                .find_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.len() > 3
                        && fields[2] == "cgroup"
                        && fields[3].split(',').any(|o| o == controller))
                    .then(|| PathBuf::from(fields[1]))
                })
                .ok_or_else(|| format!("the {controller} controller is not mounted"))?;
            // Under the manager's own group where it is visible there (not so in a
            // container without a cgroup namespace), else at the mount's root.
            let own = own_cgroup(controller)
                .map(|own| mount.join(own))
                .filter(|dir| dir.is_dir())
                .unwrap_or(mount);
            bases.push(own.join("engine"));
        }
        let driver = CgroupV1 {
            memory: bases[0].clone(),
            cpu: bases[1].clone(),
            pids: bases[2].clone(),
        };
        driver.prepare()?;
        Ok(driver)
    }

    /// A driver over the three parent directories given (tests).
    pub fn at(memory: PathBuf, cpu: PathBuf, pids: PathBuf) -> CgroupV1 {
        CgroupV1 { memory, cpu, pids }
    }

    /// Make the `engine` parent groups.
    pub fn prepare(&self) -> Result<(), String> {
        for dir in self.dirs() {
            std::fs::create_dir_all(dir)
                .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        }
        Ok(())
    }

    fn dirs(&self) -> [&Path; 3] {
        [&self.memory, &self.cpu, &self.pids]
    }
}

impl CgroupDriver for CgroupV1 {
    fn describe(&self) -> String {
        format!(
            "cgroup v1 (memory, cpu, pids; groups under {}, {}, {})",
            self.memory.display(),
            self.cpu.display(),
            self.pids.display()
        )
    }

    fn create(&self, group: &str) -> io::Result<()> {
        for dir in self.dirs() {
            std::fs::create_dir_all(dir.join(leaf(group)))?;
        }
        Ok(())
    }

    fn apply(&self, group: &str, limits: &ResourceLimits) -> io::Result<()> {
        let memory = self.memory.join(leaf(group));
        let bytes = limits
            .memory_mb
            .map_or("-1".to_string(), |mb| (mb * 1024 * 1024).to_string());
        // memory.memsw (memory plus swap, where swap is accounted) is never below
        // memory.limit: lowered after it, raised before it.
        let memsw = memory.join("memory.memsw.limit_in_bytes").exists();
        match write_file(&memory, "memory.limit_in_bytes", &bytes) {
            Ok(()) if memsw => write_file(&memory, "memory.memsw.limit_in_bytes", &bytes)?,
            Ok(()) => {}
            Err(_) if memsw => {
                write_file(&memory, "memory.memsw.limit_in_bytes", &bytes)?;
                write_file(&memory, "memory.limit_in_bytes", &bytes)?;
            }
            Err(err) => return Err(err),
        }
        let cpu = self.cpu.join(leaf(group));
        write_file(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
        let quota = limits
            .cpu_percent
            .map_or("-1".to_string(), |p| (p * CPU_PERIOD_US / 100).to_string());
        write_file(&cpu, "cpu.cfs_quota_us", &quota)?;
        let pids = limits.pids.map_or("max".to_string(), |n| n.to_string());
        write_file(&self.pids.join(leaf(group)), "pids.max", &pids)
    }

    fn add_process(&self, group: &str, pid: u32) -> io::Result<()> {
        for dir in self.dirs() {
            write_file(&dir.join(leaf(group)), "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    fn oom_kills(&self, group: &str) -> u64 {
        keyed_value(
            &self.memory.join(leaf(group)),
            "memory.oom_control",
            "oom_kill",
        )
        .unwrap_or(0)
    }

    fn remove(&self, group: &str) -> io::Result<()> {
        for dir in self.dirs() {
            remove_dir(&dir.join(leaf(group)))?;
        }
        Ok(())
    }

    fn exists(&self, group: &str) -> bool {
        self.memory.join(leaf(group)).is_dir()
    }

    /// A group in any of the three hierarchies (one made in part counts).
    fn groups(&self) -> Vec<String> {
        let all: BTreeSet<String> = self.dirs().into_iter().flat_map(child_groups).collect();
        all.into_iter().collect()
    }

    /// Empty in every hierarchy where it exists.
    fn is_empty(&self, group: &str) -> bool {
        self.dirs()
            .into_iter()
            .map(|dir| dir.join(leaf(group)))
            .filter(|dir| dir.is_dir())
            .all(|dir| holds_no_process(&dir))
    }

    /// The youngest of its directories.
    fn age(&self, group: &str) -> Option<Duration> {
        self.dirs()
            .into_iter()
            .filter_map(|dir| dir_age(&dir.join(leaf(group))))
            .min()
    }
}
