//! `ops/demo.sh`'s own functions, run by bash in a scratch directory: it keeps every
//! earlier log when it starts a program again (a `restart-check` starts two managers
//! within seconds), and its "what next" block shows `enginectl` and the SQL
//! functions with the demo's own names and ids, nothing the user must look up.

use std::path::Path;
use std::process::Command;

fn demo_script() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/demo.sh");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The text of the shell function `name` (from `name() {` to its closing `}`).
fn function(script: &str, name: &str) -> String {
    let start = script
        .find(&format!("\n{name}() {{\n"))
        .unwrap_or_else(|| panic!("ops/demo.sh has no function {name}"));
    let end = script[start..].find("\n}\n").expect("the function's end") + start + 3;
    script[start..end].to_string()
}

fn bash(script: &str, dir: &Path) -> String {
    let output = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bash failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("demo-script-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_earlier_log_is_kept() {
    let dir = scratch();
    let script = format!(
        "say() {{ :; }}\n{}\n\
         for run in 1 2 3; do\n\
           start_background prog prog.pid prog.log sh -c \"echo run $run\"\n\
           wait\n\
         done\n",
        function(&demo_script(), "start_background")
    );
    bash(&script, &dir);
    let mut logs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("prog.log"))
        .collect();
    logs.sort();
    assert_eq!(logs.len(), 3, "three runs, three logs: {logs:?}");
    let mut contents: Vec<String> = logs
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n)).unwrap())
        .collect();
    contents.sort();
    assert_eq!(contents, ["run 1\n", "run 2\n", "run 3\n"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("prog.log")).unwrap(),
        "run 3\n",
        "the live log is the newest run's"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn what_next_shows_enginectl_and_the_sql_functions() {
    let dir = scratch();
    let script = format!(
        "ROOT=/repo; BIN_DIR=/repo/target/release; STATE_DIR=/repo/engine-state\n\
         REDIS_URL=redis://127.0.0.1:6379; REDIS_PREFIX=; MANAGER_LOG=m.log; SIM_LOG=s.log\n\
         db_value() {{ echo 0b7e2a8c-1111-4222-8333-444455556666; }}\n\
         shown_database_url() {{ echo postgres://db; }}\n{}\nprint_next_steps\n",
        function(&demo_script(), "print_next_steps")
    );
    let text = bash(&script, &dir);
    for wanted in [
        "target/release/enginectl list",
        "target/release/enginectl stop demo-sma-btc",
        "target/release/enginectl history demo-sma-btc",
        "SELECT strategy_command('demo-sma-btc', 'stop');",
        "SELECT engine_command(",
        "strategy:state:0b7e2a8c-1111-4222-8333-444455556666",
    ] {
        assert!(text.contains(wanted), "{wanted:?} missing from:\n{text}");
    }
    assert!(!text.contains("<strategy id>"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
