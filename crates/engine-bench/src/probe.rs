//! What `/proc` says about a process: resident and proportional memory, CPU time,
//! whether it is still the process that was started, and which processes carry a
//! given argument (to find an engine's executors in the process table). The reading
//! itself is [`engine_protocol::procfs`], shared with the manager.

use engine_protocol::procfs;

/// A process as first seen: its pid and start time, so a reused pid is never
/// mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcId {
    /// The live process `pid` (`None` if it does not exist or is a zombie).
    pub fn of(pid: u32) -> Option<ProcId> {
        procfs::start_ticks(pid).map(|start_ticks| ProcId { pid, start_ticks })
    }

    /// Still running (not exited, not a zombie, not a new process on the same pid).
    pub fn alive(&self) -> bool {
        procfs::start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// Send `signal` to `pid` (errors such as "no such process" are ignored).
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive() {
        let id = ProcId::of(std::process::id()).expect("our /proc entry");
        assert!(id.alive());
        let reused = ProcId {
            start_ticks: id.start_ticks + 1,
            ..id
        };
        assert!(!reused.alive());
    }
}
