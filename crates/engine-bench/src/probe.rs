//! What `/proc` says about a process: resident and proportional memory, CPU time,
//! whether it is still the process that was started, and which processes carry a
//! given argument (to find an engine's executors in the process table).

use std::fs;
use std::path::Path;

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
        start_ticks(pid).map(|start_ticks| ProcId { pid, start_ticks })
    }

    /// Still running (not exited, not a zombie, not a new process on the same pid).
    pub fn alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`);
/// `None` for a process that is gone or a zombie.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …), in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, field)
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// Resident set size (what `ps` and the contract's `memory_mb` report), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// The highest resident set size the process ever had, in KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// Proportional set size: resident memory with shared pages divided among their
/// sharers (what N executors really cost together is the sum of their PSS), in KiB.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&text, "Pss")
}

/// CPU time used so far by the whole process (every thread, also those that have
/// exited: `utime + stime` of `/proc/<pid>/stat`), in nanoseconds. The kernel counts
/// it in clock ticks (10 ms), so measure over windows of seconds.
///
/// (`/proc/<pid>/schedstat` is finer but covers the main thread only, which in a
/// multi-threaded tokio runtime is nearly idle.)
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture the engine runs on.
    Some((utime + stime) * 10_000_000)
}

/// CPU time used so far by the live threads of `pid` (the sum of
/// `/proc/<pid>/task/*/schedstat`), in nanoseconds: precise, but without the time
/// of threads that have exited. For mostly idle single-threaded processes (an
/// executor uses microseconds per second, which [`cpu_ns`] rounds to nothing).
pub fn threads_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        if let Some(ns) = fs::read_to_string(path)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Some(total)
}

/// Pids of the processes whose command line has `arg` as one of its arguments.
pub fn pids_with_arg(arg: &Path) -> Vec<u32> {
    let want = arg.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == want))
                .unwrap_or(false)
        })
        .collect()
}

/// Send `signal` to `pid` (errors such as "no such process" are ignored).
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The machine's load average over 1, 5 and 15 minutes.
pub fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<f64>().ok());
    Some([parts.next()??, parts.next()??, parts.next()??])
}

/// Total CPU time of the whole machine so far (all cores, every state but idle and
/// iowait), in nanoseconds, from `/proc/stat`; and the number of cores it covers.
pub fn machine_busy_ns() -> Option<u64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = values
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| *v)
        .sum();
    Some(busy * 10_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        let id = ProcId::of(me).expect("our /proc entry");
        assert!(id.alive());
        assert!(rss_kib(me).unwrap() > 0);
        assert!(hwm_kib(me).unwrap() >= rss_kib(me).unwrap() / 2);
        assert!(cpu_ns(me).is_some());
        assert!(threads_cpu_ns(me).is_some());
        assert_eq!(
            kib_field("Name:\tx\nVmRSS:\t  5120 kB\n", "VmRSS"),
            Some(5120)
        );
        assert_eq!(kib_field("VmRSSX: 1 kB\n", "VmRSS"), None);
    }
}
