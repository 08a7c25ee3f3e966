//! The custom-executor example works as the README says: it lists its own strategy
//! beside the built-ins and validates its config.

use std::io::Write;
use std::process::{Command, Stdio};

fn example_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("examples").join("custom_executor");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --all-targets` first",
        path.display()
    );
    path
}

fn validate(config: &str) -> std::process::Output {
    let mut child = Command::new(example_path())
        .args([
            "--validate",
            "--strategy-type",
            "momentum",
            "--config-file",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn lists_its_own_strategy_beside_the_builtins() {
    let out = Command::new(example_path()).arg("--list").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["momentum", "heartbeat", "sma_crossover", "mean_reversion"] {
        assert!(text.contains(name), "{name} missing from: {text}");
    }
}

#[test]
fn validates_its_config() {
    let ok = validate(r#"{"token": "BTC-USD", "lookback": 5}"#);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = validate(r#"{"token": "BTC-USD", "lookbak": 5}"#);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lookbak"));
}
