//! rlimits set on another process (`prlimit`, no `pre_exec`): `open_files` as
//! `RLIMIT_NOFILE` always, `memory_mb` as `RLIMIT_DATA` where no cgroup holds it.
//! Soft and hard limits both, so strategy code cannot raise them again. A limit that
//! is not set gives the process the manager's own.

use engine_protocol::limits::ResourceLimits;
use rustix::process::{getrlimit, prlimit, Pid, Resource, Rlimit};
use std::io;

/// Set the rlimits `limits` names (`memory_mb` and `open_files`) on `pid`.
pub(super) fn apply(pid: u32, limits: &ResourceLimits) -> io::Result<()> {
    let pid = Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    let memory = limits.memory_mb.map(|mb| mb.saturating_mul(1024 * 1024));
    for (resource, name, value) in [
        (Resource::Data, "RLIMIT_DATA", memory),
        (Resource::Nofile, "RLIMIT_NOFILE", limits.open_files),
    ] {
        let new = match value {
            Some(v) => Rlimit {
                current: Some(v),
                maximum: Some(v),
            },
            None => getrlimit(resource),
        };
        prlimit(Some(pid), resource, new)
            .map_err(|err| io::Error::other(format!("{name} on pid {pid:?}: {err}")))?;
    }
    Ok(())
}
