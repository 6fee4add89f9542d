//! Plumbing shared by the tests that run in the nested test host
//! (`resources/testhost/run`): resources/ scripts, one test-host boot per
//! test, and the `=== case NAME begin` / `=== case NAME end exit=N` markers
//! the test scripts print around each case.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a resources/ script and returns its last stdout line.
pub fn script_output(script: &str, args: &[&str]) -> String {
    let out = Command::new(repo_root().join(script))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(out.status.success(), "{script} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Boots the test host once with `payload` at /x, runs `script` there and
/// returns its cases. The QEMU test host occasionally freezes as a whole,
/// always seen as a nested VM starts (~2 in 126 launches): `attempts` boots
/// are allowed, and a boot is called frozen after `stall_secs` of console
/// silence (every case streams its output). Panics, with the console
/// printed, when the script fails or every attempt froze.
pub fn run_in_testhost(
    payload: &Path,
    script: &str,
    attempts: u32,
    stall_secs: u32,
) -> BTreeMap<String, (String, i32)> {
    let script_path = payload
        .join("..")
        .join(format!("nested-script-{}.sh", std::process::id()));
    std::fs::write(&script_path, script).unwrap();
    let out = Command::new(repo_root().join("resources/testhost/run"))
        .env("TESTHOST_ATTEMPTS", attempts.to_string())
        .env("TESTHOST_STALL", stall_secs.to_string())
        .arg(payload)
        .arg(&script_path)
        .output()
        .expect("resources/testhost/run starts");
    let _ = std::fs::remove_file(&script_path);
    let console = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{console}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(
        out.status.code(),
        Some(125),
        "the QEMU test host froze or its outer kernel panicked in every attempt (infrastructure)"
    );
    assert!(
        out.status.success(),
        "test host script failed: {:?}",
        out.status
    );
    parse_cases(&console)
}

/// Splits the console into case name -> (output, exit status).
pub fn parse_cases(console: &str) -> BTreeMap<String, (String, i32)> {
    let mut cases = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line
            .strip_prefix("=== case ")
            .and_then(|l| l.strip_suffix(" begin"))
        {
            current = Some((name.to_string(), String::new()));
        } else if let Some(rest) = line.strip_prefix("=== case ") {
            if let Some((name, exit)) = rest.split_once(" end exit=") {
                if let Some((cur, out)) = current.take() {
                    assert_eq!(cur, name);
                    cases.insert(cur, (out, exit.trim().parse().unwrap_or(-1)));
                }
            }
        } else if let Some((_, out)) = current.as_mut() {
            out.push_str(line);
            out.push('\n');
        }
    }
    cases
}
