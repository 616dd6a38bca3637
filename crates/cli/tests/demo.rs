//! `levee demo`, as a new user runs it: one command that evacuates a datacenter of a
//! generated 100-service simulated fleet and restores it, on a fresh SQLite file, live, and
//! prints the reports and the time per phase. Every shift is gated on the services' error
//! ratios, so a drain order that broke a service would stall the run and fail this test.

use std::process::Command;

#[test]
fn the_demo_evacuates_and_restores_a_datacenter_and_reports_each_phase() {
    let stdout = demo(&[]);
    // By default in virtual time, at a production pace: progress in virtual time, and a
    // schedule as short as the dependency graph allows.
    assert!(stdout.contains("Rehearsing in virtual time"), "{stdout}");
    assert!(
        stdout.contains("evacuate-fleet: web (stateless user-facing)"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("(makespan / bound: 1.0").count(),
        2,
        "{stdout}"
    );
}

#[test]
fn the_demo_in_real_time_runs_live_through_a_server() {
    let stdout = demo(&["--real-time"]);
    assert!(!stdout.contains("virtual time"), "{stdout}");
}

/// Runs `levee demo --exit` with `extra` arguments in a fresh directory, checks what every
/// demo prints, and returns its output.
fn demo(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["demo", "--exit", "--listen", "127.0.0.1:0"])
        .args(extra)
        .current_dir(dir.path())
        .env("LEVEE_LOG", "warn")
        .output()
        .expect("run levee demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "levee demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for expected in [
        "a simulated fleet of 100 services",
        "evacuate-fleet: levee run evacuate-fleet -p dc=east --wait",
        "restore-fleet: levee run restore-fleet -p dc=east --wait",
        "Critical path:",
        "Speedup:",
        "Time per phase",
        "evacuate-fleet: user-facing services",
        "restore-fleet: all services",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in:\n{stdout}");
    }
    assert_eq!(
        stdout.matches("succeeded in").count(),
        2,
        "both runs succeed:\n{stdout}"
    );
    assert_eq!(stdout.matches("100/100 done").count(), 2, "{stdout}");
    assert!(dir.path().join("levee-demo.db").exists());
    stdout.into_owned()
}
