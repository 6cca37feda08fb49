//! `leaky policy check|simulate` as an operator runs them.

use std::path::PathBuf;
use std::process::Command;

fn workspace_file(path: &str) -> PathBuf {
    let file =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("../..")
            .join(path);
    assert!(file.exists(), "{} is missing: build the components first with `cargo xtask guests`", file.display());
    file
}

fn leaky(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_leaky")).args(args).output().expect("leaky runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn check_prints_world_imports_exports_size_digest_and_compile_time() {
    let file = workspace_file("policies/token-bucket.wasm");
    let (ok, out, err) = leaky(&["policy", "check", file.to_str().expect("utf-8 path")]);
    assert!(ok, "{err}");
    for field in [
        "world:        leaky:policy/rate-limit-policy@0.1.0",
        "strategy:     token-bucket",
        "sha256:",
        "size:",
        "compile time:",
        "imports:",
        "exports:      leaky:policy/rate-limiter@0.1.0",
    ] {
        assert!(out.contains(field), "missing `{field}` in:\n{out}");
    }
}

#[test]
fn check_refuses_a_component_that_imports_wasi_and_says_which_import() {
    let file = workspace_file("guests/fixtures/wasm/forbidden-import.wasm");
    let (ok, _, err) = leaky(&["policy", "check", file.to_str().expect("utf-8 path")]);
    assert!(!ok);
    assert!(err.contains("imports `wasi:"), "{err}");
}

#[test]
fn simulate_replays_a_trace_and_summarises() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace.csv");
    std::fs::write(&trace, "time_ms,tokens\n0,80\n0,30\n999,30\n1000,30\n1000,101\n").expect("write trace");
    let file = workspace_file("policies/leaky-bucket.wasm");
    let (ok, out, err) = leaky(&[
        "policy",
        "simulate",
        file.to_str().expect("utf-8 path"),
        "--param",
        "capacity=100",
        "--param",
        "leak_rate_per_second=10",
        "--trace",
        trace.to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "time_ms,tokens,outcome,remaining,retry_after_ms");
    assert_eq!(lines[1], "0,80,allowed,20,0");
    assert_eq!(lines[2], "0,30,rate-limited,20,1000");
    assert_eq!(lines[3], "999,30,rate-limited,29,1");
    assert_eq!(lines[4], "1000,30,allowed,0,0");
    assert_eq!(lines[5], "1000,101,exceeds-capacity,0,0");
    assert!(out.contains("allowed: 2, refused: 3, tokens admitted: 110"), "{out}");
}

#[test]
fn simulate_reports_bad_parameters_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace.csv");
    std::fs::write(&trace, "0,1\n").expect("write trace");
    let file = workspace_file("policies/fixed-window.wasm");
    let (ok, _, err) = leaky(&[
        "policy",
        "simulate",
        file.to_str().expect("utf-8 path"),
        "--param",
        "capacity=10",
        "--param",
        "window_seconds=0",
        "--trace",
        trace.to_str().expect("utf-8 path"),
    ]);
    assert!(!ok);
    assert!(err.contains("`window_seconds`"), "{err}");
}
