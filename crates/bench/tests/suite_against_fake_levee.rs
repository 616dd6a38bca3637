//! Runs `levee-bench suite` against a fake Levee server, black-box, as CI would run it against the
//! real one.
//!
//! This test binary is its own fake: started as `<this binary> serve --listen ADDR --database URL
//! --machine FILE`, which is how the suite starts Levee, it serves the endpoints the suite uses
//! with an in-memory map of counters; started any other way, it runs the tests below. The fake is
//! a stand-in for the part of Levee's interface the suite depends on, not a model of Levee.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// How long the fake serves at most, in seconds, in case the suite that started it dies without
/// killing it.
const FAKE_LIFETIME_S: u64 = 120;

/// Set to N, the fake acknowledges every Nth PUT without counting it: a server that loses updates.
const LOSE_EVERY_ENV: &str = "FAKE_LEVEE_LOSE_EVERY";

/// Set, the fake writes a message to stderr and exits at once: a server that cannot start.
const FAIL_AT_START_ENV: &str = "FAKE_LEVEE_FAIL_AT_START";

/// Set, the fake exits at the first PUT it is sent: a server that crashes under load.
const EXIT_AT_FIRST_PUT_ENV: &str = "FAKE_LEVEE_EXIT_AT_FIRST_PUT";

/// The fake's exit status when told to crash.
const CRASH_EXIT_STATUS: i32 = 4;

/// What the fake writes to stderr when told to fail at start.
const FAIL_AT_START_MESSAGE: &str = "fake levee: the database is locked";

/// The highest `count` Levee accepts for a counting transition.
const COUNT_MAX: u64 = 100_000;

/// The most machines one `POST /api/v1/machines` may create, as the suite is told.
const MACHINES_PER_REQUEST_MAX: usize = 1_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        return fake_levee::serve(&args[2..]);
    }
    let tests: [(&str, fn()); 6] = [
        ("suite_reports_every_section", suite_reports_every_section),
        (
            "suite_fails_loudly_on_lost_updates",
            suite_fails_loudly_on_lost_updates,
        ),
        (
            "suite_refuses_to_run_without_levee",
            suite_refuses_to_run_without_levee,
        ),
        (
            "suite_reports_a_levee_that_does_not_start",
            suite_reports_a_levee_that_does_not_start,
        ),
        (
            "suite_reports_a_levee_that_dies_under_load",
            suite_reports_a_levee_that_dies_under_load,
        ),
        (
            "bare_subcommand_prints_its_address_and_serves",
            bare_subcommand_prints_its_address_and_serves,
        ),
    ];
    let filter = args.iter().skip(1).find(|arg| !arg.starts_with('-'));
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if filter.is_some_and(|filter| !name.contains(filter.as_str())) {
            continue;
        }
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("\ntest result: {passed} passed; {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_levee-bench"))
}

fn this_binary() -> std::path::PathBuf {
    std::env::current_exe().expect("a test binary knows its own path")
}

/// The quickest suite run that still measures every case.
fn quick_suite(levee: &Path, json: &Path) -> Command {
    let mut command = bench();
    command
        .args([
            "suite",
            "--quick",
            "--duration-s",
            "0.2",
            "--warmup-s",
            "0.05",
        ])
        .args(["--memory-machines", "2500", "--levee"])
        .arg(levee)
        .arg("--json")
        .arg(json);
    command
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn suite_reports_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let output = quick_suite(&this_binary(), &json_path).output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "State checks",
        "c=64 close",
        "Durable transitions",
        "LOST UPDATES: 0",
        "Memory",
        "No problems",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} is missing from:\n{stdout}"
        );
    }

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let cases = report["state_checks"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        for server in ["bare", "levee"] {
            assert!(case[server]["answers"].as_u64().unwrap() > 0, "{case}");
            assert_eq!(case[server]["errors"], 0, "{case}");
        }
        assert!(case["levee_over_bare"].as_f64().unwrap() > 0.0);
        assert!(case["stateservice"]["requests_per_s"].as_f64().unwrap() > 1_000.0);
    }
    let transitions = report["durable_transitions"].as_array().unwrap();
    let concurrencies: Vec<u64> = transitions
        .iter()
        .map(|case| case["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(concurrencies, [1, 16, 64]);
    let lost_updates = &report["lost_updates"];
    assert_eq!(lost_updates["lost"], 0);
    assert!(lost_updates["acknowledged"].as_u64().unwrap() > 0);
    assert_eq!(lost_updates["counter_sum"], lost_updates["acknowledged"]);
    let memory = &report["memory"];
    assert_eq!(memory["machines_created"], 2500);
    assert_eq!(memory["state_checks"], 3);
    assert!(memory["after_checks_rss_kib"].as_u64().unwrap() > 0);
    assert_eq!(report["problems"], json!([]));
}

fn suite_fails_loudly_on_lost_updates() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let output = quick_suite(&this_binary(), &json_path)
        .env(LOSE_EVERY_ENV, "10")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "stdout:\n{stdout}");
    assert!(!stdout.contains("LOST UPDATES: 0 "), "{stdout}");
    assert!(stdout.contains("LOST UPDATES: "), "{stdout}");
    assert!(stderr.contains("problem"), "{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert!(report["lost_updates"]["lost"].as_u64().unwrap() > 0);
}

fn suite_refuses_to_run_without_levee() {
    let output = bench().args(["suite", "--quick"]).output().unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("--levee target/release/levee"), "{stderr}");
}

fn suite_reports_a_levee_that_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");

    let missing = dir.path().join("no-such-levee");
    let output = quick_suite(&missing, &json_path).output().unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("there is no Levee binary at"), "{stderr}");

    let output = quick_suite(&this_binary(), &json_path)
        .env(FAIL_AT_START_ENV, "1")
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("before answering GET /healthz"), "{stderr}");
    assert!(
        stderr.contains(FAIL_AT_START_MESSAGE),
        "the log's end should be shown:\n{stderr}"
    );
    assert!(
        !json_path.exists(),
        "no report is written for a run that never started"
    );
}

fn suite_reports_a_levee_that_dies_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let output = quick_suite(&this_binary(), &json_path)
        .env(EXIT_AT_FIRST_PUT_ENV, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("PROBLEMS"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "Levee exited during the run with exit status: {CRASH_EXIT_STATUS}"
        )),
        "{stdout}"
    );
    assert!(stderr.contains("problem"), "{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(
        report["state_checks"].as_array().unwrap().len(),
        6,
        "what was measured before is kept"
    );
}

fn bare_subcommand_prints_its_address_and_serves() {
    use std::io::{BufRead, BufReader};
    let mut child = bench()
        .args(["bare", "--listen", "127.0.0.1:0", "--exit-on-stdin-eof"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let addr: SocketAddr = first_line.trim().parse().unwrap();
    let output = bench()
        .args([
            "load",
            "--duration-s",
            "0.2",
            "--warmup-s",
            "0",
            "--concurrency",
            "2",
            "--url",
        ])
        .arg(format!("http://{addr}/state?state=green_state"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("requests/s") && stdout.contains("errors      0"),
        "{stdout}"
    );
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the bare server should exit when its stdin closes"
    );
}

/// The fake Levee server.
mod fake_levee {
    use super::*;

    struct State {
        definitions: Mutex<Vec<String>>,
        counters: Mutex<HashMap<String, u64>>,
        puts_accepted: AtomicU64,
        lose_every: Option<u64>,
    }

    pub fn serve(args: &[String]) -> ExitCode {
        if std::env::var_os(FAIL_AT_START_ENV).is_some() {
            eprintln!("{FAIL_AT_START_MESSAGE}");
            return ExitCode::from(3);
        }
        let option = |name: &str| {
            args.iter()
                .position(|arg| arg == name)
                .and_then(|index| args.get(index + 1))
                .unwrap_or_else(|| panic!("the fake needs {name}"))
        };
        let listen: SocketAddr = option("--listen").parse().unwrap();
        assert!(option("--database").starts_with("sqlite:///"));
        let machine = std::fs::read_to_string(option("--machine")).unwrap();
        assert!(
            machine.starts_with("current_state: green_state\n"),
            "{machine}"
        );
        let state = Arc::new(State {
            definitions: Mutex::new(Vec::new()),
            counters: Mutex::new(HashMap::new()),
            puts_accepted: AtomicU64::new(0),
            lose_every: std::env::var(LOSE_EVERY_ENV)
                .ok()
                .map(|n| n.parse().unwrap()),
        });
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
            let lifetime = tokio::time::sleep(Duration::from_secs(FAKE_LIFETIME_S));
            tokio::pin!(lifetime);
            loop {
                let (stream, _) = tokio::select! {
                    () = &mut lifetime => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(Arc::clone(&state), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ExitCode::SUCCESS
    }

    async fn answer(
        state: Arc<State>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query_state = request.uri().query().and_then(|query| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("state="))
                .map(str::to_owned)
        });
        let body = request
            .into_body()
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (status, body) = match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => (StatusCode::OK, "ok".to_owned()),
            (&Method::GET, ["state"]) => match query_state.as_deref() {
                Some("green_state") => (StatusCode::OK, "green_state".to_owned()),
                Some(_) => (StatusCode::NOT_ACCEPTABLE, String::new()),
                None => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
            },
            (&Method::POST, ["api", "v1", "definitions"]) => {
                let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                let content = request["files"][0]["content"].as_str().unwrap_or_default();
                let count: Option<u64> = content
                    .split_once("count: ")
                    .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|digits| digits.parse().ok());
                if content.contains("name: bench-counter")
                    && request["files"][0]["name"] == "bench.yaml"
                    && count.is_some_and(|count| count <= COUNT_MAX)
                {
                    state
                        .definitions
                        .lock()
                        .unwrap()
                        .push("bench-counter".to_owned());
                    (StatusCode::CREATED, "{}".to_owned())
                } else {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("unexpected definitions {request}"),
                    )
                }
            }
            (&Method::POST, ["api", "v1", "machines"]) => create_machines(&state, &body),
            (&Method::GET, ["api", "v1", "machines", id]) => {
                match state.counters.lock().unwrap().get(*id) {
                    Some(counter) => {
                        let machine = json!({ "id": id, "definition": "bench-counter", "state": "counting", "counter": counter });
                        (StatusCode::OK, machine.to_string())
                    }
                    None => (StatusCode::NOT_FOUND, String::new()),
                }
            }
            (_, ["machines", id, "state"]) if query_state.as_deref() == Some("counting") => {
                let mut counters = state.counters.lock().unwrap();
                match (counters.get_mut(*id), &method) {
                    (None, _) => (StatusCode::NOT_FOUND, String::new()),
                    (Some(_), &Method::GET) => (StatusCode::OK, "counting".to_owned()),
                    (Some(_), &Method::PUT)
                        if std::env::var_os(EXIT_AT_FIRST_PUT_ENV).is_some() =>
                    {
                        std::process::exit(CRASH_EXIT_STATUS)
                    }
                    (Some(counter), &Method::PUT) => {
                        let accepted = state.puts_accepted.fetch_add(1, Ordering::Relaxed) + 1;
                        if state.lose_every.is_none_or(|n| !accepted.is_multiple_of(n)) {
                            *counter += 1;
                        }
                        (StatusCode::OK, "counting".to_owned())
                    }
                    (Some(_), _) => (StatusCode::METHOD_NOT_ALLOWED, String::new()),
                }
            }
            _ => (StatusCode::NOT_FOUND, String::new()),
        };
        Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    }

    fn create_machines(state: &State, body: &[u8]) -> (StatusCode, String) {
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let Some(machines) = request["machines"].as_array() else {
            return (StatusCode::BAD_REQUEST, "no machines".to_owned());
        };
        if machines.len() > MACHINES_PER_REQUEST_MAX {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too many machines".to_owned(),
            );
        }
        let known = state.definitions.lock().unwrap().clone();
        let mut counters = state.counters.lock().unwrap();
        for machine in machines {
            let (Some(id), Some(definition)) =
                (machine["id"].as_str(), machine["definition"].as_str())
            else {
                return (StatusCode::BAD_REQUEST, format!("bad machine {machine}"));
            };
            if !known.iter().any(|name| name == definition) {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("unknown definition {definition}"),
                );
            }
            if counters.insert(id.to_owned(), 0).is_some() {
                return (StatusCode::CONFLICT, format!("machine {id} exists"));
            }
        }
        (
            StatusCode::CREATED,
            json!({ "created": machines.len() }).to_string(),
        )
    }
}
