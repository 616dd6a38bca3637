//! The examples under `examples/`, run for real against the real `levee` binary: the
//! StateService `curl -K` files with real curl, `levee validate` on every example definition,
//! the three-tier Ansible playbook with real `ansible-playbook`, and `kill -9` during load.
//!
//! curl and ansible-playbook come from outside Cargo (`.ci/run` installs them). Without them a
//! test says so on stderr and returns, except under CI (the `CI` variable is set), where a
//! missing tool fails the test: CI never skips silently.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test, built by Cargo for this test.
const LEVEE: &str = env!("CARGO_BIN_EXE_levee");

/// How long the server may take to answer `GET /healthz` after it was started, in milliseconds.
const START_TIMEOUT_MS: u64 = 30_000;

/// The pause between two health checks while the server starts, in milliseconds.
const HEALTH_POLL_INTERVAL_MS: u64 = 50;

/// How long one HTTP request of these tests may take, in milliseconds.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// How long one run of curl, `levee validate` or `levee apply` may take, in milliseconds.
const COMMAND_TIMEOUT_MS: u64 = 60_000;

/// How long the Ansible playbook may take, in milliseconds: it waits for a 5 s soak timer,
/// and Ansible itself starts slowly.
const PLAYBOOK_TIMEOUT_MS: u64 = 300_000;

/// The address the example files name; the tests rewrite it to their server's port.
const EXAMPLE_ADDRESS: &str = "127.0.0.1:7400";

/// Concurrent reporters in the `kill -9` test.
const KILL_TEST_REPORTERS: usize = 16;

/// How long the reporters run before the server is killed, in milliseconds.
const KILL_TEST_LOAD_MS: u64 = 1_500;

/// Times the server is killed and restarted on the same database.
const KILL_TEST_ROUNDS: usize = 3;

/// Most reports one reporter sends in one round, whatever the duration: a bound on the loop.
const MAX_REPORTS_PER_REPORTER: u64 = 1_000_000;

/// Lines of the server's log shown when it misbehaves.
const LOG_TAIL_LINES: usize = 40;

/// A counter machine for the `kill -9` test: it counts every report of `counting`.
const COUNTER_DEFINITION_YAML: &str = "\
kind: StateMachine
name: counter
instances: [counter-1]
states:
  - name: counting
    on: { done: { to: finished, count: 100000 } }
  - name: finished
    final: true
";

/// Every machine of the three-tier example, with the final state the playbook must leave it in.
const THREE_TIER_FINAL_STATES: &[(&str, &str)] = &[
    ("db", "serving"),
    ("replicas", "serving"),
    ("app-1", "serving"),
    ("app-2", "serving"),
    ("app-3", "serving"),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn examples_dir() -> PathBuf {
    repo_root().join("examples")
}

/// Whether an outside tool can be run. Without it: under CI, the test fails; elsewhere, it
/// prints why it is skipped and the caller returns.
fn tool_available(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
        panic!("{test}: `{tool}` is not on PATH, and CI must run this test; .ci/run installs it");
    }
    eprintln!("SKIPPED {test}: `{tool}` is not on PATH (CI installs it; see .ci/run)");
    false
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Runs a command to its end, killing it after `timeout_ms`.
fn run(command: &mut Command, timeout_ms: u64) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    // Reading the pipes on other threads keeps a chatty command from blocking on a full pipe.
    let stdout = child.stdout.take().map(read_in_background);
    let stderr = child.stderr.take().map(read_in_background);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{description} did not finish within {timeout_ms} ms");
        }
        std::thread::sleep(Duration::from_millis(HEALTH_POLL_INTERVAL_MS));
    };
    let collect = |reader: Option<std::thread::JoinHandle<Vec<u8>>>| {
        reader
            .map(|r| r.join().expect("read the output"))
            .unwrap_or_default()
    };
    Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

fn read_in_background(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A `Command` for the levee binary, untouched by the caller's Levee settings.
fn levee_command() -> Command {
    let mut command = Command::new(LEVEE);
    for variable in [
        "LEVEE_SERVER",
        "LEVEE_TOKEN",
        "LEVEE_DATABASE",
        "LEVEE_LISTEN",
    ] {
        command.env_remove(variable);
    }
    command.env("LEVEE_LOG", "warn");
    command
}

/// `levee serve` in a child process on a free loopback port; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `levee serve` with the database `database` (a file path) and optionally a machine
    /// file, and waits until `/healthz` answers 200.
    async fn start(work_dir: &Path, database: &Path, machine: Option<&Path>) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("an address");
        let log = work_dir.join(format!("levee-{}.log", addr.port()));
        let log_file = fs::File::create(&log).expect("create the server log");
        let mut command = levee_command();
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--database")
            .arg(format!("sqlite://{}", database.display()));
        if let Some(machine) = machine {
            command.arg("--machine").arg(machine);
        }
        let child = command
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start levee serve");
        let mut server = Server { child, addr, log };
        server.wait_until_healthy().await;
        server
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    async fn wait_until_healthy(&mut self) {
        let client = client();
        let url = format!("{}/healthz", self.base());
        let polls = START_TIMEOUT_MS / HEALTH_POLL_INTERVAL_MS;
        for _ in 0..polls {
            if let Some(status) = self.child.try_wait().expect("check the server process") {
                panic!(
                    "levee serve exited with {status} while starting; its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(answer) = client.get(&url).send().await
                && answer.status() == reqwest::StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(HEALTH_POLL_INTERVAL_MS)).await;
        }
        panic!(
            "levee serve did not answer /healthz within {START_TIMEOUT_MS} ms; its log:\n{}",
            self.log_tail()
        );
    }

    /// Sends SIGKILL and reaps the process: what `kill -9` does.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GETs a JSON document from the API, failing the test on anything but 200.
    async fn api(&self, path: &str) -> Value {
        let answer = client()
            .get(format!("{}{path}", self.base()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}; server log:\n{}", self.log_tail()));
        let status = answer.status();
        let body = answer.text().await.expect("read the body");
        assert_eq!(status, reqwest::StatusCode::OK, "GET {path}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build()
        .expect("build an HTTP client")
}

/// Copies a `curl -K` file of the StateService example into `dir`, pointed at `addr`.
fn curl_config_for(name: &str, dir: &Path, addr: SocketAddr) -> PathBuf {
    let text = fs::read_to_string(examples_dir().join("stateservice").join(name))
        .expect("read the curl file");
    assert!(
        text.contains(EXAMPLE_ADDRESS),
        "{name} names {EXAMPLE_ADDRESS}"
    );
    let path = dir.join(name);
    fs::write(&path, text.replace(EXAMPLE_ADDRESS, &addr.to_string()))
        .expect("write the curl file");
    path
}

fn curl(config: &Path) -> Output {
    run(
        Command::new("curl").arg("-K").arg(config),
        COMMAND_TIMEOUT_MS,
    )
}

/// curl's exit code for an HTTP answer of 400 or more under `--fail`.
const CURL_EXIT_HTTP_ERROR: i32 = 22;

#[tokio::test]
async fn stateservice_curl_files_work_with_real_curl() {
    if !tool_available("curl", "stateservice_curl_files_work_with_real_curl") {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary folder");
    let machine_file = examples_dir().join("stateservice").join("states.yaml");
    let machine_bytes = fs::read(&machine_file).expect("read states.yaml");
    let server = Server::start(dir.path(), &dir.path().join("x.db"), Some(&machine_file)).await;
    let can = curl_config_for("canChangeMachine.curl", dir.path(), server.addr);
    let did = curl_config_for("didChangeMachine.curl", dir.path(), server.addr);

    let output = curl(&can);
    assert_eq!(
        output.status.code(),
        Some(0),
        "can (green_state is current): {}",
        describe(&output)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "green_state",
        "the body names the state"
    );

    let output = curl(&did);
    assert_eq!(
        output.status.code(),
        Some(0),
        "did (report green_state done): {}",
        describe(&output)
    );

    let output = curl(&can);
    assert_eq!(
        output.status.code(),
        Some(CURL_EXIT_HTTP_ERROR),
        "can again (the machine moved on to red_state, so 406): {}",
        describe(&output)
    );
    let output = curl(&did);
    assert_eq!(
        output.status.code(),
        Some(CURL_EXIT_HTTP_ERROR),
        "did again: {}",
        describe(&output)
    );

    let red = client()
        .get(format!("{}/state?state=red_state", server.base()))
        .send()
        .await
        .expect("GET red_state");
    assert_eq!(
        red.status(),
        reqwest::StatusCode::OK,
        "the machine is in red_state"
    );
    assert_eq!(
        fs::read(&machine_file).expect("read states.yaml"),
        machine_bytes,
        "states.yaml was not rewritten"
    );
}

/// Every `*.yaml` under `dir`, recursively (the Ansible files are `*.yml` and are not
/// definitions).
fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "yaml") {
            found.push(path);
        }
    }
}

#[test]
fn every_example_definition_validates() {
    let mut files = Vec::new();
    yaml_files(&examples_dir(), &mut files);
    for expected in ["stateservice/states.yaml", "three-tier/three-tier.yaml"] {
        assert!(
            files.iter().any(|f| f.ends_with(expected)),
            "{expected} is among {files:?}"
        );
    }
    let output = run(
        levee_command().arg("validate").args(&files),
        COMMAND_TIMEOUT_MS,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "levee validate {files:?}: {}",
        describe(&output)
    );

    // The same command does fail on a broken file, so the exit 0 above means something.
    let dir = tempfile::tempdir().expect("temporary folder");
    let broken = dir.path().join("broken.yaml");
    fs::write(
        &broken,
        "kind: StateMachine\nname: broken\nstates:\n  - name: a\n    tragets: b\n",
    )
    .expect("write");
    let output = run(
        levee_command().arg("validate").arg(&broken),
        COMMAND_TIMEOUT_MS,
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "levee validate of a broken file: {}",
        describe(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("broken.yaml:5:5"),
        "{}",
        describe(&output)
    );
}

#[tokio::test]
async fn the_three_tier_playbook_drives_every_machine_to_its_final_state() {
    if !tool_available(
        "ansible-playbook",
        "the_three_tier_playbook_drives_every_machine_to_its_final_state",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary folder");
    let server = Server::start(dir.path(), &dir.path().join("x.db"), None).await;
    let three_tier = examples_dir().join("three-tier");

    let output = run(
        levee_command()
            .arg("apply")
            .arg(three_tier.join("three-tier.yaml"))
            .arg("--server")
            .arg(server.base()),
        COMMAND_TIMEOUT_MS,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "levee apply: {}",
        describe(&output)
    );
    for (id, _) in THREE_TIER_FINAL_STATES {
        let machine = server.api(&format!("/api/v1/machines/{id}")).await;
        assert_ne!(
            machine["state"], "serving",
            "{id} starts before its final state"
        );
    }

    let ansible_home = dir.path().join("ansible");
    let output = run(
        Command::new("ansible-playbook")
            .arg("-i")
            .arg(three_tier.join("ansible").join("inventory.ini"))
            .arg(three_tier.join("ansible").join("playbook.yml"))
            .env("LEVEE_SERVER", server.base())
            .env_remove("LEVEE_TOKEN")
            .env("ANSIBLE_HOME", &ansible_home)
            .env("ANSIBLE_LOCAL_TEMP", ansible_home.join("tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            // Ansible refuses to run under a locale that is not UTF-8.
            .env("LC_ALL", "C.UTF-8")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("no_proxy", "127.0.0.1")
            .env("NO_PROXY", "127.0.0.1"),
        PLAYBOOK_TIMEOUT_MS,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "ansible-playbook: {}\nserver log:\n{}",
        describe(&output),
        server.log_tail()
    );

    for (id, state) in THREE_TIER_FINAL_STATES {
        let machine = server.api(&format!("/api/v1/machines/{id}")).await;
        assert_eq!(
            machine["state"], *state,
            "{id} after the playbook: {machine}"
        );
    }
    let history = server.api("/api/v1/machines/replicas/history").await;
    let mut reporters: Vec<String> = history
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["from"] == "installing")
        .filter_map(|entry| entry["reporter"].as_str().map(str::to_string))
        .collect();
    reporters.sort();
    assert_eq!(
        reporters,
        ["replica-1", "replica-2", "replica-3"],
        "each replica reported once: {history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_load_loses_no_acknowledged_report() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = dir.path().join("x.db");
    let definition = dir.path().join("counter.yaml");
    fs::write(&definition, COUNTER_DEFINITION_YAML).expect("write the definition");
    let mut server = Server::start(dir.path(), &database, None).await;
    let output = run(
        levee_command()
            .arg("apply")
            .arg(&definition)
            .arg("--server")
            .arg(server.base()),
        COMMAND_TIMEOUT_MS,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "levee apply: {}",
        describe(&output)
    );

    let mut acknowledged = 0u64;
    let mut attempted = 0u64;
    for round in 1..=KILL_TEST_ROUNDS {
        let acknowledged_now = Arc::new(AtomicU64::new(0));
        let attempted_now = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{}/machines/counter-1/state?state=counting", server.base());
        let reporters: Vec<_> = (0..KILL_TEST_REPORTERS)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                let (acknowledged_now, attempted_now) =
                    (acknowledged_now.clone(), attempted_now.clone());
                tokio::spawn(async move {
                    let client = client();
                    for _ in 0..MAX_REPORTS_PER_REPORTER {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        attempted_now.fetch_add(1, Ordering::SeqCst);
                        match client.put(&url).send().await {
                            Ok(answer) if answer.status() == reqwest::StatusCode::OK => {
                                acknowledged_now.fetch_add(1, Ordering::SeqCst);
                            }
                            // Refused connections once the server is gone: not acknowledged.
                            _ => {
                                tokio::time::sleep(Duration::from_millis(HEALTH_POLL_INTERVAL_MS))
                                    .await
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(KILL_TEST_LOAD_MS)).await;
        server.kill();
        stop.store(true, Ordering::SeqCst);
        for reporter in reporters {
            reporter.await.expect("a reporter panicked");
        }
        acknowledged += acknowledged_now.load(Ordering::SeqCst);
        attempted += attempted_now.load(Ordering::SeqCst);
        assert!(
            acknowledged_now.load(Ordering::SeqCst) > 0,
            "round {round}: no report was acknowledged"
        );

        server = Server::start(dir.path(), &database, None).await;
        let ready = client()
            .get(format!("{}/readyz", server.base()))
            .send()
            .await
            .expect("GET /readyz");
        assert_eq!(
            ready.status(),
            reqwest::StatusCode::OK,
            "round {round}: ready after the restart"
        );
        let counter = server.api("/api/v1/machines/counter-1").await["counter"]
            .as_u64()
            .expect("a counter");
        assert!(
            counter >= acknowledged,
            "round {round}: the counter is {counter} but {acknowledged} reports were acknowledged"
        );
        assert!(
            counter <= attempted,
            "round {round}: the counter is {counter} but only {attempted} reports were sent"
        );
        eprintln!(
            "round {round}: {acknowledged} reports acknowledged, {attempted} sent, counter {counter} after kill -9"
        );
    }
}
