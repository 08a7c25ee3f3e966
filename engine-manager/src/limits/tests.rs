//! The v2 driver against a directory laid out like cgroupfs (files made by the
//! test, as the kernel would have them), and the rlimits fallback on a real child.

use super::*;
use std::process::{Child, Command, Stdio};
use uuid::Uuid;

/// A scratch directory standing for a v2 group delegated to the manager.
struct FakeCgroupfs {
    own: PathBuf,
}

impl FakeCgroupfs {
    fn new(controllers: &str) -> FakeCgroupfs {
        let own = std::env::temp_dir().join(format!("fake-cgroupfs-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("cgroup.controllers"), controllers).unwrap();
        FakeCgroupfs { own }
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.own.join(path))
            .unwrap_or_else(|err| panic!("{path}: {err}"))
            .trim()
            .to_string()
    }
}

impl Drop for FakeCgroupfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.own);
    }
}

/// A child that waits on its stdin (as an executor does before its strategy).
fn waiting_child() -> Child {
    Command::new("sh")
        .arg("-c")
        .arg("read _")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

fn assert_mechanism(limiter: &Limiter, prefix: &str) {
    let said = limiter.describe();
    assert!(said.starts_with(prefix), "{said}");
}

fn proc_limit(pid: u32, name: &str) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in {limits}"))
        .to_string()
}

#[test]
fn v2_enables_the_controllers_and_writes_each_limit() {
    let fs = FakeCgroupfs::new("cpuset cpu io memory hugetlb pids rdma misc\n");
    let driver = Arc::new(CgroupV2::prepare(&fs.own, 4242).unwrap());
    assert_eq!(fs.read("cgroup.subtree_control"), "+memory +cpu +pids");
    assert_eq!(
        fs.read("engine/cgroup.subtree_control"),
        "+memory +cpu +pids"
    );
    let limiter = Limiter::with_driver(driver.clone());
    assert_mechanism(&limiter, "cgroup v2");

    let mut child = waiting_child();
    let limits = ResourceLimits {
        memory_mb: Some(64),
        cpu_percent: Some(20),
        pids: Some(32),
        open_files: Some(100),
    };
    let confinement = limiter.confine("s1", child.id(), &limits);
    assert_eq!(confinement.unenforced, None);
    assert_eq!(fs.read("engine/s1/memory.max"), "67108864");
    assert_eq!(fs.read("engine/s1/cpu.max"), "20000 100000");
    assert_eq!(fs.read("engine/s1/pids.max"), "32");
    assert_eq!(fs.read("engine/s1/cgroup.procs"), child.id().to_string());
    // open_files is an rlimit on the process itself, soft and hard.
    let nofile = proc_limit(child.id(), "Max open files");
    assert!(
        nofile.contains(" 100 ") && nofile.matches("100").count() == 2,
        "{nofile}"
    );

    // Live: limits rewritten, a removed one back to unlimited.
    let mut group = confinement.group;
    let fewer = ResourceLimits {
        memory_mb: Some(128),
        cpu_percent: None,
        ..limits
    };
    let note = limiter
        .update(&mut group, "s1", child.id(), &fewer)
        .unwrap();
    assert_eq!(note, None);
    assert_eq!(fs.read("engine/s1/memory.max"), "134217728");
    assert_eq!(fs.read("engine/s1/cpu.max"), "max 100000");

    // The kernel's count of OOM kills says how the process ended.
    let group = group.unwrap();
    assert!(!group.oom_killed());
    std::fs::write(
        fs.own.join("engine/s1/memory.events"),
        "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    .unwrap();
    assert!(group.oom_killed());

    child.kill().unwrap();
    child.wait().unwrap();
    group.remove();
    assert!(!fs.own.join("engine/s1").exists());
    assert!(limiter.existing("s1").is_none());
}

#[test]
fn v2_without_the_controllers_says_which_are_missing() {
    let fs = FakeCgroupfs::new("cpuset io\n");
    let err = CgroupV2::prepare(&fs.own, 4242).unwrap_err();
    assert!(err.contains("memory, cpu, pids not available"), "{err}");
    assert!(err.contains("Delegate=yes"), "{err}");
}

#[test]
fn v1_groups_hold_the_limits_in_each_hierarchy() {
    let base = std::env::temp_dir().join(format!("fake-cgroup-v1-{}", Uuid::new_v4()));
    let [memory, cpu, pids] = ["memory", "cpu", "pids"].map(|c| base.join(c).join("engine"));
    let driver = CgroupV1::at(memory.clone(), cpu.clone(), pids.clone());
    driver.prepare().unwrap();
    driver.create("engine/r1").unwrap();
    let limits = ResourceLimits {
        memory_mb: Some(64),
        cpu_percent: Some(150),
        pids: None,
        open_files: None,
    };
    driver.apply("engine/r1", &limits).unwrap();
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join("r1").join(file)).unwrap();
    assert_eq!(read(&memory, "memory.limit_in_bytes"), "67108864");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "150000");
    assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&pids, "pids.max"), "max");
    std::fs::write(
        memory.join("r1/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();
    assert_eq!(driver.oom_kills("engine/r1"), 2);
    driver.remove("engine/r1").unwrap();
    assert!(!driver.exists("engine/r1"));
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn rlimits_alone_hold_memory_and_files_and_say_what_they_cannot() {
    let limiter = Limiter::detect(MechanismChoice::Rlimits);
    assert_mechanism(&limiter, "rlimits");
    let mut child = waiting_child();
    let limits = ResourceLimits {
        memory_mb: Some(64),
        cpu_percent: Some(20),
        pids: Some(64),
        open_files: None,
    };
    let confinement = limiter.confine("s2", child.id(), &limits);
    assert!(confinement.group.is_none());
    let note = confinement.unenforced.expect("cpu and pids are unenforced");
    assert!(
        note.contains("cpu_percent and pids not enforced: no usable cgroup"),
        "{note}"
    );
    let data = proc_limit(child.id(), "Max data size");
    assert!(data.matches("67108864").count() == 2, "{data}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Without limits there is nothing to say.
    let mut child = waiting_child();
    let confinement = limiter.confine("s3", child.id(), &ResourceLimits::default());
    assert_eq!(confinement.unenforced, None);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The start-up sweep on a fake v2 cgroupfs: a group whose process exited while no
/// manager watched (its `cgroup.procs` empty, as the kernel leaves it) is removed;
/// one with a process (an executor to adopt), one just made, and a directory that
/// is not a group are kept.
#[test]
fn v2_empty_groups_left_by_unwatched_exits_are_removed_at_start() {
    let fs = FakeCgroupfs::new("cpu memory pids\n");
    let driver = Arc::new(CgroupV2::prepare(&fs.own, 4242).unwrap());
    let limiter = Limiter::with_driver(driver);
    let limits = ResourceLimits {
        memory_mb: Some(64),
        ..ResourceLimits::default()
    };
    let mut live = waiting_child();
    let mut dead = waiting_child();
    assert!(limiter.confine("live", live.id(), &limits).group.is_some());
    assert!(limiter.confine("dead", dead.id(), &limits).group.is_some());
    dead.kill().unwrap();
    dead.wait().unwrap();
    // The kernel empties the group of an exited process.
    std::fs::write(fs.own.join("engine/dead/cgroup.procs"), "").unwrap();
    std::fs::create_dir_all(fs.own.join("engine/not-a-group")).unwrap();

    // Just made: not yet (another manager may be about to add its process).
    assert!(limiter.remove_empty_groups(EMPTY_GROUP_MIN_AGE).is_empty());
    assert!(fs.own.join("engine/dead").exists());

    let removed = limiter.remove_empty_groups(Duration::ZERO);
    assert_eq!(removed, ["engine/dead"]);
    assert!(!fs.own.join("engine/dead").exists());
    assert!(
        limiter.existing("live").is_some(),
        "a group with a process stays"
    );
    assert!(fs.own.join("engine/not-a-group").exists());
    live.kill().unwrap();
    live.wait().unwrap();
}

/// The same on the real cgroup v1 hierarchies of this host (memory, cpu and pids
/// mounted under /sys/fs/cgroup, writable as root), in a parent group of the test's
/// own: the kernel empties the group of an exited process, the sweep removes it from
/// all three hierarchies and keeps the group of a live one.
#[test]
fn v1_empty_groups_left_by_unwatched_exits_are_removed_at_start() {
    let mounted = ["memory", "cpu", "pids"]
        .iter()
        .all(|c| Path::new(&format!("/sys/fs/cgroup/{c}/cgroup.procs")).exists());
    if !mounted {
        eprintln!("no cgroup v1 controllers mounted: the cgroup v1 check does not apply here");
        return;
    }
    let parent = format!("engine-sweep-test-{}", Uuid::new_v4());
    let [memory, cpu, pids] =
        ["memory", "cpu", "pids"].map(|c| PathBuf::from("/sys/fs/cgroup").join(c).join(&parent));
    let engine = |dir: &Path| dir.join("engine");
    let driver = CgroupV1::at(engine(&memory), engine(&cpu), engine(&pids));
    driver.prepare().unwrap();
    let limiter = Limiter::with_driver(Arc::new(driver));
    let limits = ResourceLimits {
        memory_mb: Some(64),
        pids: Some(16),
        ..ResourceLimits::default()
    };
    let mut live = waiting_child();
    let mut dead = waiting_child();
    assert!(limiter.confine("live", live.id(), &limits).group.is_some());
    assert!(limiter.confine("dead", dead.id(), &limits).group.is_some());
    let procs = |dir: &Path, group: &str| {
        std::fs::read_to_string(engine(dir).join(group).join("cgroup.procs")).unwrap()
    };
    assert_eq!(procs(&pids, "dead").trim(), dead.id().to_string());
    dead.kill().unwrap();
    dead.wait().unwrap();
    assert_eq!(procs(&memory, "dead").trim(), "", "the kernel emptied it");

    assert!(limiter.remove_empty_groups(EMPTY_GROUP_MIN_AGE).is_empty());
    let removed = limiter.remove_empty_groups(Duration::ZERO);
    assert_eq!(removed, ["engine/dead"]);
    for dir in [&memory, &cpu, &pids] {
        assert!(!engine(dir).join("dead").exists(), "{}", dir.display());
        assert!(engine(dir).join("live").exists(), "{}", dir.display());
    }

    live.kill().unwrap();
    live.wait().unwrap();
    assert_eq!(limiter.remove_empty_groups(Duration::ZERO), ["engine/live"]);
    for dir in [&memory, &cpu, &pids] {
        std::fs::remove_dir(engine(dir)).unwrap();
        std::fs::remove_dir(dir).unwrap();
    }
}
