//! `levee demo`, as a new user runs it: one command that evacuates a datacenter of the
//! simulated fleet on a fresh SQLite file, live, and prints the report.

use std::process::Command;

#[test]
fn the_demo_evacuates_a_datacenter_and_reports_its_critical_path() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["demo", "--exit", "--listen", "127.0.0.1:0"])
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
    // Drained callers first: web before sessions and api, db last.
    let position = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{stdout}"))
    };
    assert!(position("web/shift  task_succeeded") < position("sessions/shift  task_dispatched"));
    assert!(position("api/shift  task_succeeded") < position("db/shift  task_dispatched"));
    for expected in [
        "succeeded in",
        "Critical path:",
        "Speedup:",
        "levee run restore-dc -p dc=east",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in:\n{stdout}");
    }
    assert!(dir.path().join("levee-demo.db").exists());
}
