//! The bench binaries refuse arguments they do not know with their usage and exit code 2,
//! before starting anything: a typo must not cost a 15-minute run.

use std::process::Command;

fn refused(bin: &str, args: &[&str], usage: &str) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("running the bench binary");
    assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(usage), "{bin} {args:?} said: {stderr}");
}

#[test]
fn unknown_parts_and_missing_arguments_get_the_usage() {
    refused(
        env!("CARGO_BIN_EXE_scale"),
        &["fleet", "nonsense"],
        "usage: scale",
    );
    refused(
        env!("CARGO_BIN_EXE_throughput"),
        &["mysql"],
        "usage: throughput",
    );
    refused(
        env!("CARGO_BIN_EXE_webhook_baseline"),
        &["8080"],
        "usage: webhook_baseline",
    );
}
