//! The executors of one engine as the process table (`/proc`) shows them: found by
//! the control socket named on their command line, grouped by strategy, killed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// One executor process found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorSeen {
    pub pid: u32,
    /// Its start time (clock ticks since boot): with the pid, its identity.
    pub start_ticks: u64,
    pub strategy_id: Uuid,
}

/// The live (not zombie) `strategy-executor` processes whose command line names
/// `control_socket`, i.e. the executors of one engine.
pub fn executors_in_proc(control_socket: &Path) -> Vec<ExecutorSeen> {
    let socket = control_socket.to_string_lossy();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_executor = args
            .first()
            .map(|a| a.ends_with(b"strategy-executor"))
            .unwrap_or(false);
        if !is_executor {
            continue;
        }
        let value_of = |flag: &[u8]| {
            args.iter()
                .position(|a| *a == flag)
                .and_then(|i| args.get(i + 1))
                .map(|v| String::from_utf8_lossy(v).to_string())
        };
        if value_of(b"--control-socket").as_deref() != Some(&*socket) {
            continue;
        }
        let Some(strategy_id) = value_of(b"--strategy-id").and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A zombie has exited; it only waits for its parent to reap it.
        let Some(start_ticks) = engine_protocol::procfs::start_ticks(pid) else {
            continue;
        };
        found.push(ExecutorSeen {
            pid,
            start_ticks,
            strategy_id,
        });
    }
    found
}

/// The executors of one engine that are alive together at one instant, by strategy.
///
/// A scan of `/proc` is not atomic: an executor read early may exit, and its
/// successor start, before the scan reaches the successor. So every executor of a
/// strategy with more than one is checked again after the scan (same pid, same start
/// time): those still alive then were all alive at the moment the re-check began.
pub fn executors_alive_together(control_socket: &Path) -> HashMap<Uuid, Vec<u32>> {
    let seen = executors_in_proc(control_socket);
    let mut map: HashMap<Uuid, Vec<&ExecutorSeen>> = HashMap::new();
    for e in &seen {
        map.entry(e.strategy_id).or_default().push(e);
    }
    map.into_iter()
        .map(|(id, group)| {
            let mut pids: Vec<u32> = if group.len() > 1 {
                group
                    .iter()
                    .filter(|e| engine_protocol::procfs::is_same_process(e.pid, e.start_ticks))
                    .map(|e| e.pid)
                    .collect()
            } else {
                group.iter().map(|e| e.pid).collect()
            };
            pids.sort_unstable();
            (id, pids)
        })
        .collect()
}

/// [`executors_in_proc`] grouped by strategy.
pub fn executors_by_strategy(control_socket: &Path) -> HashMap<Uuid, Vec<u32>> {
    let mut map: HashMap<Uuid, Vec<u32>> = HashMap::new();
    for e in executors_in_proc(control_socket) {
        map.entry(e.strategy_id).or_default().push(e.pid);
    }
    for pids in map.values_mut() {
        pids.sort_unstable();
    }
    map
}

/// SIGKILL every executor of the engine whose control socket is `control_socket`.
pub fn kill_all_executors(control_socket: &Path) {
    for e in executors_in_proc(control_socket) {
        sigkill(e.pid);
    }
}

pub fn sigkill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// A stand-in run process (the executor's `--run-id` mode, for a manager whose
/// `--executor-path` is this script): it says `started`, sleeps the config's
/// `sleep_s`, and ends with a result naming it.
pub const SLEEPING_RUN: &str = r#"#!/usr/bin/python3
import json, os, sys, time
inp = json.load(sys.stdin)
out = open(inp['outbox_path'], 'a')
def emit(**kw):
    out.write(json.dumps(kw) + '\n'); out.flush()
emit(type='started', pid=os.getpid(), total_items=len(inp['symbols']))
time.sleep(inp['config'].get('sleep_s', 0))
emit(type='result', result={'slept': inp['config'].get('sleep_s', 0)})
"#;

/// Write an executable script (a stand-in executor) named `name` into `dir`; its
/// path.
pub fn write_executable(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The variables of process `pid` as `/proc/<pid>/environ` holds them: what the
/// process itself (a strategy's code) can read of its environment.
pub fn environ(pid: u32) -> Vec<(String, String)> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/environ: {e}"));
    bytes
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (name, value) = text.split_once('=').unwrap_or((&text, ""));
            (name.to_string(), value.to_string())
        })
        .collect()
}
