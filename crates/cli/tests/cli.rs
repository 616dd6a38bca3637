//! Black-box tests of the `levee` binary: each test runs real `levee` processes, and those that
//! need a server start `levee serve` on a free loopback port with its own SQLite file in its
//! own temporary directory.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a server may take to answer `/healthz` after it is started.
const SERVER_START_TIMEOUT_MS: u64 = 15_000;
/// Pause between two `/healthz` attempts while a server starts.
const HEALTH_POLL_INTERVAL_MS: u64 = 25;
/// Socket timeout of one `/healthz` attempt.
const HEALTH_REQUEST_TIMEOUT_MS: u64 = 1_000;

const DEPLOY_YAML: &str = "\
kind: StateMachine
name: deploy
instances: [vm-1]
states:
  - name: installing
    on: { done: configured }
  - name: configured
    final: true
";

/// `tragets` is a typo on line 6, column 5.
const TYPO_YAML: &str = "\
kind: StateMachine
name: deploy
states:
  - name: installing
    on: { done: configured }
    tragets: x
  - name: configured
    final: true
";

/// The result of one `levee` run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}):\n{}", self.stdout))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A `levee` command with none of Levee's environment variables inherited.
fn levee_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_levee"));
    command
        .current_dir(dir)
        .env_remove("LEVEE_SERVER")
        .env_remove("LEVEE_TOKEN")
        .env_remove("LEVEE_LISTEN")
        .env_remove("LEVEE_DATABASE")
        .env("LEVEE_LOG", "warn");
    command
}

/// Runs `levee ARGS` in `dir` with extra environment variables, and waits for it.
fn levee_in(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = levee_command(dir);
    command.args(args).stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run the levee binary");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Whether `GET /healthz` answers 200 on `port`.
fn healthy(port: u16) -> bool {
    let timeout = Duration::from_millis(HEALTH_REQUEST_TIMEOUT_MS);
    let Ok(mut stream) = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), timeout)
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// A running `levee serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Server {
    /// Starts a server on a free port with the store `levee.db` in `dir`, and waits until it
    /// answers `/healthz`.
    fn start(dir: &Path) -> Server {
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).expect("create the server log");
        let database = format!("sqlite://{}", dir.join("levee.db").display());
        let child = levee_command(dir)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database",
                &database,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start levee serve");
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_millis(SERVER_START_TIMEOUT_MS);
        loop {
            if healthy(port) {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "levee serve exited with {status} before answering:\n{}",
                    server.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "levee serve did not answer /healthz in {SERVER_START_TIMEOUT_MS} ms:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(HEALTH_POLL_INTERVAL_MS));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs `levee ARGS` against this server, without a token.
    fn levee(&self, args: &[&str]) -> Run {
        levee_in(&self.dir, &[("LEVEE_SERVER", &self.url)], args)
    }

    /// Runs `levee ARGS` against this server with `LEVEE_TOKEN` set.
    fn levee_as(&self, token: &str, args: &[&str]) -> Run {
        levee_in(
            &self.dir,
            &[("LEVEE_SERVER", &self.url), ("LEVEE_TOKEN", token)],
            args,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with `deploy` applied (which creates `vm-1`).
fn server_with_deploy(dir: &Path) -> Server {
    let server = Server::start(dir);
    write_file(dir, "deploy.yaml", DEPLOY_YAML);
    let run = server.levee(&["apply", "deploy.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    server
}

#[test]
fn validate_accepts_a_good_file_and_points_at_a_typo() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "deploy.yaml", DEPLOY_YAML);
    write_file(dir.path(), "typo.yaml", TYPO_YAML);

    let run = levee_in(dir.path(), &[], &["validate", "deploy.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "ok  deploy.yaml: StateMachine deploy (2 states, 1 instance)\n"
    );

    let run = levee_in(dir.path(), &[], &["validate", "deploy.yaml", "typo.yaml"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("typo.yaml:6:5: error[unknown-key]"),
        "{run:?}"
    );
    assert!(run.stderr.contains("tragets"), "{run:?}");

    let run = levee_in(dir.path(), &[], &["validate", "missing.yaml", "typo.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("error: cannot read missing.yaml"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("typo.yaml:6:5"),
        "a later file is still checked: {run:?}"
    );
}

#[test]
fn schema_prints_the_state_machine_json_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = levee_in(dir.path(), &[], &["schema"]);
    assert_eq!(run.code, 0, "{run:?}");
    let schema = run.json();
    assert!(schema.get("$schema").is_some(), "{run:?}");
    assert!(run.stdout.contains("\"states\""), "{run:?}");
}

#[test]
fn client_commands_name_an_unreachable_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("http://127.0.0.1:{}", free_port());
    let run = levee_in(
        dir.path(),
        &[("LEVEE_SERVER", &url)],
        &["state", "check", "vm-1", "installing"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .starts_with("error: cannot reach the Levee server at "),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&url) && run.stderr.contains("levee serve"),
        "{run:?}"
    );
    assert!(run.stdout.is_empty(), "{run:?}");

    let run = levee_in(dir.path(), &[], &["state", "list", "--server", &url]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--server"), "{run:?}");
}

#[test]
fn apply_create_list_and_show() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path());
    write_file(dir.path(), "deploy.yaml", DEPLOY_YAML);
    write_file(dir.path(), "typo.yaml", TYPO_YAML);

    let run = server.levee(&["apply", "deploy.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "StateMachine/deploy v1 (created)\ncreated 1 machine: vm-1\n"
    );
    let run = server.levee(&["apply", "deploy.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "StateMachine/deploy v1 (unchanged)\n");

    let run = server.levee(&["apply", "typo.yaml"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("typo.yaml:6:5: error[unknown-key]"),
        "{run:?}"
    );
    let run = server.levee(&["apply", "deploy.yaml", "missing.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("cannot read missing.yaml"), "{run:?}");

    let run = server.levee(&[
        "state",
        "create",
        "vm-2",
        "vm-3",
        "vm-1",
        "--definition",
        "deploy",
        "--group",
        "web",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("created 2 machines of `deploy`: vm-2, vm-3"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("vm-1"),
        "the existing id is reported: {run:?}"
    );
    let run = server.levee(&["state", "create", "vm-4", "--definition", "nope"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("levee apply"), "{run:?}");

    let run = server.levee(&["state", "list"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{run:?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "DEFINITION", "STATE", "COUNTER", "VERSION", "UPDATED"]
    );
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &first[..5],
        ["vm-1", "deploy", "installing", "0", "1"],
        "{run:?}"
    );

    let run = server.levee(&["state", "list", "--all", "--limit", "1", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let ids: Vec<String> = run
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids, ["vm-1", "vm-2", "vm-3"]);
    let run = server.levee(&["state", "list", "--limit", "2"]);
    assert_eq!(run.stdout.lines().count(), 3, "{run:?}");
    assert!(run.stderr.contains("--all"), "{run:?}");
    let run = server.levee(&["state", "list", "--group", "web", "--output", "json"]);
    assert_eq!(run.json().as_array().map(Vec::len), Some(2), "{run:?}");

    let run = server.levee(&["state", "show", "vm-2"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["group", "web"])),
        "{run:?}"
    );
    let run = server.levee(&["state", "show", "vm-2", "--output", "json"]);
    let machine = run.json();
    assert_eq!(machine["state"], "installing");
    assert_eq!(machine["group"], "web");
    let run = server.levee(&["state", "show", "vm-9"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.contains("404"),
        "{run:?}"
    );
}

#[test]
fn check_and_advance_answer_with_exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server_with_deploy(dir.path());

    let run = server.levee(&["state", "check", "vm-1", "installing"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "", ""),
        "{run:?}"
    );
    let run = server.levee(&["state", "check", "--verbose", "vm-1", "installing"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "yes\n"), "{run:?}");

    let run = server.levee(&["state", "check", "vm-1", "configured"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(
        run.stderr.contains("installing"),
        "the reason names the current state: {run:?}"
    );
    let run = server.levee(&["state", "check", "--quiet", "vm-1", "configured"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (1, "", ""),
        "{run:?}"
    );

    let run = server.levee(&["state", "check", "vm-9", "installing"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.contains("vm-9"),
        "{run:?}"
    );
    let run = server.levee(&["state", "check", "vm-1", "nowhere"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("nowhere"), "{run:?}");
    let run = server.levee(&["state", "check", "vm-1"]);
    assert_eq!(run.code, 2, "missing arguments are usage errors: {run:?}");

    let run = server.levee(&[
        "state",
        "advance",
        "vm-1",
        "installing",
        "--if-version",
        "7",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("409"), "{run:?}");
    let run = server.levee(&[
        "state",
        "advance",
        "vm-1",
        "installing",
        "--if-version",
        "1",
        "--reporter",
        "host-a",
    ]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let run = server.levee(&["state", "advance", "vm-1", "installing"]);
    assert_eq!(run.code, 1, "a step already taken is a no: {run:?}");
    assert!(run.stderr.contains("configured"), "{run:?}");
    let run = server.levee(&["state", "advance", "vm-1", "configured"]);
    assert_eq!(run.code, 2, "a final state takes no reports: {run:?}");
    assert!(run.stderr.contains("final"), "{run:?}");

    let run = server.levee(&["state", "check", "vm-1", "configured"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee(&["state", "show", "vm-1", "--output", "json"]);
    assert_eq!(run.json()["version"], 2, "{run:?}");
}

#[test]
fn history_exports_and_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server_with_deploy(dir.path());
    let run = server.levee(&["state", "advance", "vm-1", "installing"]);
    assert_eq!(run.code, 0, "{run:?}");

    let run = server.levee(&["state", "history", "vm-1", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let history = run.json();
    let kinds: Vec<&str> = history
        .as_array()
        .expect("array")
        .iter()
        .map(|h| h["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["created", "transition"], "{run:?}");
    assert_eq!(history[1]["from"], "installing");
    assert_eq!(history[1]["to"], "configured");

    let run = server.levee(&["state", "history", "vm-1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("SEQ"), "{run:?}");
    assert_eq!(run.stdout.lines().count(), 3, "{run:?}");

    let run = server.levee(&["state", "history", "vm-1", "--format", "shell"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("#!/bin/sh\n"), "{run:?}");
    assert!(run.stdout.contains("installing"), "{run:?}");

    let run = server.levee(&["state", "replay", "vm-1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("vm-1 is back in `installing`"),
        "{run:?}"
    );
    let run = server.levee(&["state", "check", "vm-1", "installing"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee(&["state", "show", "vm-1", "--output", "json"]);
    assert_eq!(run.json()["replay"]["total"], 1, "{run:?}");
    let run = server.levee(&["state", "advance", "vm-1", "installing"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee(&["state", "check", "vm-1", "configured"]);
    assert_eq!(run.code, 0, "{run:?}");

    let run = server.levee(&["state", "history", "vm-9"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn tokens_guard_the_api_and_the_audit_log_names_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}", dir.path().join("levee.db").display());
    let run = levee_in(
        dir.path(),
        &[],
        &[
            "token",
            "create",
            "root",
            "--role",
            "admin",
            "--database",
            &database,
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let admin = run.stdout.trim().to_string();
    assert!(
        admin.starts_with("lvt_") && !admin.contains(char::is_whitespace),
        "{run:?}"
    );
    assert!(run.stderr.contains("shown only once"), "{run:?}");
    let run = levee_in(
        dir.path(),
        &[],
        &[
            "token",
            "create",
            "root",
            "--role",
            "admin",
            "--database",
            &database,
        ],
    );
    assert_eq!(run.code, 2, "a taken name is refused: {run:?}");
    let run = levee_in(
        dir.path(),
        &[],
        &[
            "token",
            "create",
            "x",
            "--role",
            "admin",
            "--scope",
            "vm-1",
            "--database",
            &database,
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("machine:ID"), "{run:?}");

    let server = Server::start(dir.path());
    write_file(dir.path(), "deploy.yaml", DEPLOY_YAML);
    let run = server.levee(&["apply", "deploy.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("401") && run.stderr.contains("--token"),
        "{run:?}"
    );
    let run = server.levee(&["state", "check", "vm-1", "installing"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = server.levee_as("lvt_wrong", &["state", "list"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("401"), "{run:?}");

    let run = server.levee_as(&admin, &["apply", "deploy.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee(&["state", "list", "--token", &admin]);
    assert_eq!(run.code, 0, "--token works like LEVEE_TOKEN: {run:?}");

    let run = server.levee_as(
        &admin,
        &[
            "token",
            "create",
            "watcher",
            "--role",
            "viewer",
            "--scope",
            "machine:vm-1",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let viewer = run.stdout.trim().to_string();
    let run = server.levee_as(&viewer, &["state", "check", "vm-1", "installing"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee_as(&viewer, &["state", "advance", "vm-1", "installing"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("403") && run.stderr.contains("viewer"),
        "{run:?}"
    );
    let run = server.levee_as(&admin, &["state", "advance", "vm-1", "installing"]);
    assert_eq!(run.code, 0, "{run:?}");

    let run = server.levee_as(&admin, &["token", "list", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let names: Vec<String> = run
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["root", "watcher"], "{run:?}");
    let run = server.levee_as(&admin, &["token", "revoke", "watcher"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee_as(&viewer, &["state", "check", "vm-1", "configured"]);
    assert_eq!(run.code, 2, "a revoked token is refused: {run:?}");
    let run = server.levee_as(&admin, &["token", "revoke", "watcher"]);
    assert_eq!(run.code, 2, "{run:?}");

    let run = server.levee_as(&admin, &["audit", "--target", "vm-1", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let entries = run.json();
    let advance = entries
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["action"] == "machine.report" && e["outcome"] == "ok")
        .unwrap_or_else(|| panic!("no successful report in the audit log: {run:?}"));
    assert_eq!(advance["actor"], "root", "{run:?}");
    let run = server.levee_as(&admin, &["audit", "--actor", "root"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("machine.report") && l.contains("vm-1")),
        "{run:?}"
    );
    let run = levee_in(
        dir.path(),
        &[],
        &["audit", "--server", &server.url, "--token", &viewer],
    );
    assert_eq!(run.code, 2, "{run:?}");
}

/// A template of two chained steps (a log line bounded to 2 s, then a 1 s wait) and a runbook
/// whose predicted durations are all known, so the plan's numbers are exact.
const PLAN_YAML: &str = "\
kind: TaskTemplate
name: announce
params:
  what: { required: true }
steps:
  - id: note
    stage: log
    timeout: 2s
    with: { message: \"starting {{ params.what }}\" }
  - id: settle
    stage: wait
    with: { duration: 1s }
---
kind: Runbook
name: evacuate
params:
  dc: { required: true }
  settle: { type: duration, default: 20s }
tasks:
  - id: announce
    template: announce
    with: { what: \"evacuation of {{ params.dc }}\" }
  - id: drain-web
    stage: wait
    needs: [announce]
    with: { duration: 30s }
  - id: drain-db
    stage: wait
    needs: [announce]
    with: { duration: \"{{ params.settle }}\" }
  - id: drain-cache
    stage: log
    needs: [announce]
    with: { message: \"cache of {{ params.dc }} drained\" }
  - id: verify
    stage: log
    needs: [drain-web, drain-db, drain-cache]
    with: { message: done }
";

#[test]
fn plan_shows_waves_the_critical_path_and_the_speedup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path());
    write_file(dir.path(), "evacuate.yaml", PLAN_YAML);
    let run = server.levee(&["apply", "evacuate.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "TaskTemplate/announce v1 (created)\nRunbook/evacuate v1 (created)\n"
    );

    let run = server.levee(&["plan", "evacuate", "-p", "dc=east", "-p", "settle=45s"]);
    assert_eq!(run.code, 0, "{run:?}");
    insta::assert_snapshot!("plan_table", run.stdout);

    let run = server.levee(&["plan", "evacuate", "-p", "dc=east", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let plan = run.json();
    assert_eq!(plan["critical_path"]["length_ms"], 43_000);
    assert_eq!(plan["critical_path"]["sequential_ms"], 73_000);

    let run = server.levee(&["plan", "evacuate", "-p", "settle=soon", "-p", "zone=a"]);
    assert_eq!(run.code, 1, "{run:?}");
    for code in ["missing-param", "invalid-param-value", "unknown-param"] {
        assert!(run.stderr.contains(code), "{code}: {run:?}");
    }

    let run = server.levee(&["plan", "nonesuch"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("no runbook named `nonesuch`"),
        "{run:?}"
    );
}
