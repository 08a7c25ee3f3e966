//! Every read of Linux's `/proc` the engine makes, in one place: a process's start
//! time (so a reused pid is never mistaken for an executor), its CPU time and
//! memory, the command lines of the process table (to find executors), and the few
//! machine-wide figures the benchmark reports.
//!
//! The manager's health sampler reads CPU and memory of the supervised executors
//! through [`StatFile`]s it keeps open. Every function is blocking file I/O: async
//! callers on a hot path run it on the blocking pool.

use std::fs;
use std::path::Path;

/// The current boot's id (`/proc/sys/kernel/random/boot_id`), or `unknown-boot`.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-boot".to_string())
}

/// The kernel's host name (`/proc/sys/kernel/hostname`), if it is set.
pub fn hostname() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// What one read of `/proc/<pid>/stat` says about a live process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Start time in clock ticks since boot (field 22).
    pub start_ticks: u64,
    /// User plus system CPU time in clock ticks (fields 14 and 15).
    pub cpu_ticks: u64,
    /// Resident set size in pages (field 24).
    pub rss_pages: u64,
}

impl ProcStat {
    /// `/proc/<pid>/stat` of a live process (`None` if it is gone or a zombie).
    pub fn read(pid: u32) -> Option<ProcStat> {
        Self::parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parse the text of a `stat` file (`None` for a zombie or a truncated line).
    pub fn parse(stat: &str) -> Option<ProcStat> {
        // The command name (field 2) may hold spaces and parentheses: skip past the
        // last ')'. `fields[0]` is then field 3 (state), and field n is `fields[n - 3]`.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
            return None; // a zombie is not alive
        }
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(ProcStat {
            start_ticks: field(22)?,
            cpu_ticks: field(14)? + field(15)?,
            rss_pages: field(24)?,
        })
    }
}

/// `/proc/<pid>/stat`, opened once and read again from its start at each sample: one
/// `pread` per read, no path lookup. Once the process is reaped a read fails (the
/// kernel answers ESRCH), so a reused pid is never read through an old file.
#[derive(Debug)]
pub struct StatFile(fs::File);

impl StatFile {
    pub fn open(pid: u32) -> Option<StatFile> {
        fs::File::open(format!("/proc/{pid}/stat"))
            .ok()
            .map(StatFile)
    }

    /// What the file says now (`None`: gone, a zombie, unreadable).
    pub fn read(&self) -> Option<ProcStat> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 1024];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        ProcStat::parse(std::str::from_utf8(&buf[..n]).ok()?)
    }
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`);
/// `None` for a process that is gone or a zombie.
pub fn start_ticks(pid: u32) -> Option<u64> {
    ProcStat::read(pid).map(|s| s.start_ticks)
}

/// Whether `pid` is alive and is the process that started at `ticks`.
pub fn is_same_process(pid: u32, ticks: u64) -> bool {
    start_ticks(pid) == Some(ticks)
}

/// CPU time used so far by the whole process (every thread, also those that have
/// exited: `utime + stime` of `/proc/<pid>/stat`), in nanoseconds. The kernel counts
/// it in clock ticks (10 ms), so measure over windows of seconds.
///
/// (`/proc/<pid>/schedstat` is finer but covers the main thread only, which in a
/// multi-threaded tokio runtime is nearly idle.)
pub fn cpu_ns(pid: u32) -> Option<u64> {
    // USER_HZ is 100 on every Linux architecture the engine runs on.
    ProcStat::read(pid).map(|s| s.cpu_ticks * 10_000_000)
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

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, field)
}

/// The ids of a process as `/proc/<pid>/status` gives them: real uid, real gid
/// and the supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The uid, gid and supplementary groups of `pid`.
pub fn ids(pid: u32) -> Option<ProcIds> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let numbers = |field: &str| -> Option<Vec<u32>> {
        let line = text.lines().find_map(|l| l.strip_prefix(field))?;
        line.split_whitespace().map(|n| n.parse().ok()).collect()
    };
    Some(ProcIds {
        uid: *numbers("Uid:")?.first()?,
        gid: *numbers("Gid:")?.first()?,
        groups: numbers("Groups:")?,
    })
}

/// Whether this process holds CAP_SETUID and CAP_SETGID (`CapEff` of
/// `/proc/self/status`): it may start processes as another user.
pub fn may_set_ids() -> bool {
    const CAP_SETGID: u64 = 1 << 6;
    const CAP_SETUID: u64 = 1 << 7;
    let Ok(text) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (CAP_SETGID | CAP_SETUID) == CAP_SETGID | CAP_SETUID)
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

/// The value of a `Name:   123 kB` line.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// A process's command line as the kernel keeps it (arguments separated by NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(Vec<u8>);

impl CommandLine {
    /// The arguments, the program first.
    pub fn args(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == 0)
    }

    /// Whether `arg` is one of the arguments.
    pub fn has_arg(&self, arg: &[u8]) -> bool {
        self.args().any(|a| a == arg)
    }

    /// The argument right after `flag` (`--flag value`).
    pub fn value_of(&self, flag: &[u8]) -> Option<&[u8]> {
        let mut args = self.args();
        args.by_ref().find(|a| *a == flag)?;
        args.next()
    }
}

/// Every process of the table with its command line (processes that vanish while
/// the table is read are left out).
pub fn command_lines() -> impl Iterator<Item = (u32, CommandLine)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            Some((pid, CommandLine(cmdline)))
        })
}

/// Pids of the processes whose command line has `arg` as one of its arguments.
pub fn pids_with_arg(arg: &Path) -> Vec<u32> {
    let want = arg.as_os_str().as_encoded_bytes();
    command_lines()
        .filter(|(_, cmdline)| cmdline.has_arg(want))
        .map(|(pid, _)| pid)
        .collect()
}

/// The machine's load average over 1, 5 and 15 minutes.
pub fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<f64>().ok());
    Some([parts.next()??, parts.next()??, parts.next()??])
}

/// Total CPU time of the whole machine so far (all cores, every state but idle and
/// iowait), in nanoseconds, from `/proc/stat`.
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
    fn stat_fields_survive_a_hostile_command_name() {
        // Fields 14/15 (utime/stime) = 700/50, 22 (starttime) = 123456, 24 (rss) = 2048.
        let line = "4242 (we ird) (name) S 1 4242 4242 0 -1 4194560 100 0 0 0 700 50 0 0 20 0 1 0 123456 9000000 2048 18446744073709551615";
        assert_eq!(
            ProcStat::parse(line),
            Some(ProcStat {
                start_ticks: 123456,
                cpu_ticks: 750,
                rss_pages: 2048
            })
        );
        let zombie = line.replace(") S ", ") Z ");
        assert_eq!(ProcStat::parse(&zombie), None);
        assert_eq!(ProcStat::parse("4242 (truncated) S 1 2"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        let stat = ProcStat::read(me).expect("our own /proc entry");
        assert!(stat.rss_pages > 0, "{stat:?}");
        assert_eq!(Some(stat.start_ticks), start_ticks(me));
        assert!(is_same_process(me, stat.start_ticks));
        assert!(!is_same_process(me, stat.start_ticks + 1));
        assert!(rss_kib(me).unwrap() > 0);
        assert!(hwm_kib(me).unwrap() >= rss_kib(me).unwrap() / 2);
        assert!(cpu_ns(me).is_some());
        assert!(threads_cpu_ns(me).is_some());
        assert!(!boot_id().is_empty());
    }

    #[test]
    fn kib_fields_match_whole_names() {
        assert_eq!(
            kib_field("Name:\tx\nVmRSS:\t  5120 kB\n", "VmRSS"),
            Some(5120)
        );
        assert_eq!(kib_field("VmRSSX: 1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn command_lines_are_split_at_nul() {
        let cmdline = CommandLine(b"exe\0--control-socket\0/s.sock\0--flag\0".to_vec());
        assert_eq!(cmdline.value_of(b"--control-socket"), Some(&b"/s.sock"[..]));
        assert_eq!(cmdline.value_of(b"--flag"), Some(&b""[..]));
        assert_eq!(cmdline.value_of(b"--missing"), None);
        assert!(cmdline.has_arg(b"/s.sock"));
        assert!(!cmdline.has_arg(b"/s"));
        let me = std::process::id();
        assert!(command_lines().any(|(pid, _)| pid == me));
    }
}
