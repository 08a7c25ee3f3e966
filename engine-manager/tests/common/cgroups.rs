//! The executors' resource-limit groups as the manager (the test process, in-process)
//! lays them out on cgroup v1: `engine/<strategy or run id>` under its own group.

use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Whether the cgroup v1 controllers are mounted and ours to use here; the tests that
/// need them say so and pass without them elsewhere.
pub fn cgroup_v1_here() -> bool {
    let here = ["memory", "cpu", "pids"]
        .iter()
        .all(|c| Path::new(&format!("/sys/fs/cgroup/{c}/cgroup.procs")).exists());
    if !here {
        eprintln!("no cgroup v1 controllers mounted: the cgroup v1 checks do not apply here");
    }
    here
}

/// The executor group of strategy `id` in a v1 hierarchy, as the manager (this
/// process) lays it out: `engine/<id>` under its own group.
pub fn v1_group(controller: &str, id: Uuid) -> PathBuf {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.trim_start_matches('/').to_string())
        })
        .unwrap_or_default();
    let mount = PathBuf::from("/sys/fs/cgroup").join(controller);
    let base = if mount.join(&own).is_dir() {
        mount.join(own)
    } else {
        mount
    };
    base.join("engine").join(id.to_string())
}
