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

/// A storm test: after the evacuation every stateful service's replication into the
/// datacenter stops and the datacenter is held cut off while every service stays healthy;
/// then the restore starts replication again and brings everything back.
#[test]
fn the_demo_as_a_storm_test_stops_replication_and_holds_the_datacenter_cut_off() {
    let stdout = demo(&["--storm", "--storm-hold", "20m"]);
    assert!(
        stdout.contains("levee run evacuate-fleet -p dc=east -p storm=true -p storm_hold=20m"),
        "{stdout}"
    );
    assert!(
        stdout.contains("evacuate-fleet: storm, held cut off"),
        "{stdout}"
    );
    // The restore's 100 tasks, and more in the evacuation: the storm's, all done.
    assert_eq!(stdout.matches("100/100 done").count(), 1, "{stdout}");
    let evacuation = stdout
        .lines()
        .find(|line| line.starts_with("run ") && !line.contains("100/100 done"))
        .unwrap_or_else(|| panic!("no summary of the evacuation in:\n{stdout}"));
    let done = evacuation.rsplit(": ").next().unwrap();
    let (finished, total) = done.trim_end_matches(" done").split_once('/').unwrap();
    let total: u32 = total.parse().unwrap();
    assert!(total > 100 && finished == total.to_string(), "{evacuation}");
    // A hold that is not a duration is refused before anything runs.
    let refused = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["demo", "--exit", "--storm", "--storm-hold", "banana"])
        .output()
        .expect("run levee demo");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("`banana` is not a duration"), "{stderr}");
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
        "evacuate-fleet: levee run evacuate-fleet -p dc=east",
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
    // The evacuation has a storm's own tasks too; the restore moves the 100 services.
    if !extra.contains(&"--storm") {
        assert_eq!(stdout.matches("100/100 done").count(), 2, "{stdout}");
    }
    assert!(dir.path().join("levee-demo.db").exists());
    stdout.into_owned()
}

/// The complaint: "the demo said to look at the UI only once everything had finished".
/// Without `--exit` the server is up, and its address printed, before the rehearsal starts,
/// and the API there lists the evacuation while it is running.
#[test]
fn without_exit_the_demo_serves_its_runs_while_they_run() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// How long the whole demo may take here before the test gives up.
    const DEMO_DEADLINE_S: u64 = 600;

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("LEVEE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run levee demo");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let get = |base: &str, path: &str| -> String {
        let address = base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect to the demo");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let deadline = Instant::now() + Duration::from_secs(DEMO_DEADLINE_S);
    let mut printed = Vec::new();
    let mut base = None;
    let mut seen_running = false;
    let mut finished = false;
    while Instant::now() < deadline && !finished {
        while let Ok(line) = lines.try_recv() {
            if let Some(url) = line.trim().strip_prefix("UI:")
                && base.is_none()
            {
                assert!(
                    !printed.iter().any(|l: &String| l.contains("Rehearsing")),
                    "the address comes before the rehearsal:\n{}",
                    printed.join("\n")
                );
                base = Some(url.trim().trim_end_matches("/ui/").to_string());
            }
            finished |= line.contains("Levee is serving the rehearsed runs");
            printed.push(line);
        }
        if let (Some(base), false) = (&base, seen_running) {
            let response = get(base, "/api/v1/runs?status=running");
            assert!(response.starts_with("HTTP/1.0 200"), "{response}");
            seen_running = response.contains("\"runbook\":\"evacuate-fleet\"");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let printed = printed.join("\n");
    let served_after = base
        .as_deref()
        .filter(|_| finished)
        .map(|base| get(base, "/api/v1/runs?status=succeeded"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(finished, "the demo did not finish:\n{printed}");
    assert!(
        seen_running,
        "the API never listed the evacuation while it ran:\n{printed}"
    );
    // After the rehearsal the same server serves on, with both runs finished.
    let served_after = served_after.unwrap();
    for runbook in ["evacuate-fleet", "restore-fleet"] {
        assert!(
            served_after.contains(&format!("\"runbook\":\"{runbook}\"")),
            "{served_after}"
        );
    }
}
