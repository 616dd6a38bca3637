//! Black-box tests of the `levee` binary: each test runs real `levee` processes, and those that
//! need a server start `levee serve` on a free loopback port with its own SQLite file in its
//! own temporary directory (one test uses a PostgreSQL database of its own instead).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use levee_engine::runbook::{
    CheckPhase, ENGINE_ACTOR, JournalEntry, JournalKind, RunStatus, StallCause,
};
use levee_store::JournalRecord;
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
        let database = format!("sqlite://{}", dir.join("levee.db").display());
        Server::start_on(dir, &database)
    }

    /// Starts a server on a free port with the store at `database`, logging to `dir`, and
    /// waits until it answers `/healthz`.
    fn start_on(dir: &Path, database: &str) -> Server {
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).expect("create the server log");
        let child = levee_command(dir)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database",
                database,
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

/// Where the tests' PostgreSQL server is, as the store tests take it.
const POSTGRES_URL_ENV: &str = "LEVEE_TEST_POSTGRES_URL";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A PostgreSQL database of one test, created and dropped with `psql` (what CI installs with
/// the server), so this crate needs no database client of its own.
struct PostgresDatabase {
    admin_url: String,
    name: String,
}

impl PostgresDatabase {
    fn psql(url: &str, sql: &str) -> Result<(), String> {
        let output = Command::new("psql")
            .args(["-w", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run psql: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }

    /// A new database, or `None` when there is no server to make it on, which fails the
    /// test if `CI` is set.
    fn create() -> Option<PostgresDatabase> {
        let admin_url =
            std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("levee_cli_test_{}_{nanos}", std::process::id());
        match PostgresDatabase::psql(&admin_url, &format!("CREATE DATABASE \"{name}\"")) {
            Ok(()) => Some(PostgresDatabase { admin_url, name }),
            Err(error) => {
                let help = format!(
                    "no PostgreSQL at {admin_url} ({error}); `bash .ci/run` installs and starts \
                     it, or set {POSTGRES_URL_ENV}"
                );
                assert!(std::env::var_os("CI").is_none(), "{help}");
                let _ = writeln!(std::io::stderr(), "SKIPPING a PostgreSQL test: {help}");
                None
            }
        }
    }

    /// The database's URL: the server's, with this database.
    fn url(&self) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let authority = base.find("://").map_or(0, |i| i + 3);
        let base = match base[authority..].find('/') {
            Some(slash) => &base[..authority + slash],
            None => base,
        };
        format!("{base}/{}{query}", self.name)
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(error) = PostgresDatabase::psql(&self.admin_url, &sql) {
            eprintln!("could not drop the test database {}: {error}", self.name);
        }
    }
}

/// `levee serve --database postgres://...`: state reported through one server is there for
/// the next one on the same database, and a token created offline in it is required by both.
#[test]
fn serve_keeps_its_state_in_postgres() {
    let Some(database) = PostgresDatabase::create() else {
        return;
    };
    let url = database.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let token = levee_in(
        dir.path(),
        &[],
        &[
            "token",
            "create",
            "admin",
            "--role",
            "admin",
            "--database",
            &url,
        ],
    );
    assert_eq!(token.code, 0, "{token:?}");
    let secret = token.stdout.trim().to_string();
    assert!(secret.starts_with("lvt_"), "{token:?}");

    let server = Server::start_on(dir.path(), &url);
    write_file(dir.path(), "deploy.yaml", DEPLOY_YAML);
    let run = server.levee(&["apply", "deploy.yaml"]);
    assert_ne!(
        run.code, 0,
        "tokens exist, so a request without one is refused: {run:?}"
    );
    let run = server.levee_as(&secret, &["apply", "deploy.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee_as(&secret, &["state", "advance", "vm-1", "installing"]);
    assert_eq!(run.code, 0, "{run:?}");
    drop(server);

    let server = Server::start_on(dir.path(), &url);
    let run = server.levee_as(&secret, &["state", "show", "vm-1", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let shown = run.json();
    assert_eq!(
        (shown["state"].as_str(), shown["version"].as_i64()),
        (Some("configured"), Some(2)),
        "{run:?}"
    );
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

/// A quick runbook: a log line, then a 10 ms wait and a process in parallel.
const QUICK_RUNBOOK_YAML: &str = "\
kind: Runbook
name: quick
params:
  pause: { type: duration, default: 10ms }
tasks:
  - id: hello
    stage: log
    with: { message: hello }
  - id: settle
    stage: wait
    needs: [hello]
    with: { duration: \"{{ params.pause }}\" }
  - id: probe
    stage: shell
    needs: [hello]
    with: { command: [echo, probed] }
";

/// A runbook whose first task always fails, so the second never runs.
const FRAGILE_RUNBOOK_YAML: &str = "\
kind: Runbook
name: fragile
tasks:
  - id: break
    stage: shell
    with: { command: [\"false\"] }
  - id: after
    stage: log
    needs: [break]
    with: { message: never }
";

/// A server with `quick` and `fragile` applied.
fn server_with_runbooks(dir: &Path) -> Server {
    let server = Server::start(dir);
    write_file(dir, "quick.yaml", QUICK_RUNBOOK_YAML);
    write_file(dir, "fragile.yaml", FRAGILE_RUNBOOK_YAML);
    let run = server.levee(&["apply", "quick.yaml", "fragile.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    server
}

/// The `id` of the run a JSON answer describes.
fn run_id(run: &Run) -> String {
    run.json()["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id: {run:?}"))
        .to_string()
}

#[test]
fn run_wait_succeeds_and_the_run_is_listed_shown_journaled_and_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server_with_runbooks(dir.path());

    let run = server.levee(&["run", "quick", "--wait"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("started run "), "{run:?}");
    // Not a terminal: one plain line per journal entry, then the summary.
    assert!(run.stdout.contains("  run_started  "), "{run:?}");
    assert!(run.stdout.contains("  probe  task_succeeded  "), "{run:?}");
    let last = run.stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains(" succeeded in ") && last.contains("3/3 done"),
        "{run:?}"
    );
    assert!(!run.stdout.contains('\u{1b}'), "no ANSI in a pipe: {run:?}");

    let run = server.levee(&["run", "quick", "--wait", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["status"], "succeeded", "{run:?}");
    let id = run_id(&run);

    // Idempotent by name: the second start answers the first run.
    let first = server.levee(&["run", "quick", "--name", "nightly", "--output", "json"]);
    assert_eq!(first.code, 0, "{first:?}");
    let named = run_id(&first);
    let again = server.levee(&["run", "quick", "--name", "nightly", "--output", "json"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(run_id(&again), named);
    let again = server.levee(&["run", "quick", "--name", "nightly"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again
            .stdout
            .contains(&format!("already started as {named}")),
        "{again:?}"
    );

    let run = server.levee(&["runs", "list"]);
    assert_eq!(run.code, 0, "{run:?}");
    let header: Vec<&str> = run
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "ID", "RUNBOOK", "STATUS", "PROGRESS", "STARTED", "DURATION", "BY"
        ]
    );
    for expected in [&id, &named] {
        assert!(
            run.stdout.contains(expected.as_str()),
            "{expected}: {run:?}"
        );
    }
    let run = server.levee(&[
        "runs",
        "list",
        "--status",
        "succeeded",
        "--runbook",
        "quick",
        "--output",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.json()
            .as_array()
            .expect("array")
            .iter()
            .any(|r| r["id"] == id.as_str() && r["tasks_done"] == 3),
        "{run:?}"
    );
    let run = server.levee(&["runs", "list", "--status", "sleeping"]);
    assert_eq!(run.code, 2, "{run:?}");

    let run = server.levee(&["runs", "journal", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("SEQ"), "{run:?}");
    for kind in [
        "run_started",
        "task_dispatched",
        "task_succeeded",
        "run_finished",
    ] {
        assert!(run.stdout.contains(kind), "{kind}: {run:?}");
    }
    let run = server.levee(&["runs", "journal", &id, "--output", "json"]);
    let kinds: Vec<String> = run
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_string())
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("run_started"),
        "{run:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("run_finished"),
        "{run:?}"
    );

    let run = server.levee(&["runs", "show", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["status", "succeeded"])),
        "{run:?}"
    );
    assert!(!run.stdout.contains("Needs attention"), "{run:?}");
    let run = server.levee(&["runs", "show", &id, "--output", "json"]);
    assert_eq!(run.json()["counts"]["succeeded"], 3, "{run:?}");

    let run = server.levee(&["runs", "report", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Critical path: hello ("), "{run:?}");
    for line in ["Makespan: ", "Sequential-equivalent: ", "Speedup: "] {
        assert!(run.stdout.contains(line), "{line}: {run:?}");
    }

    let run = server.levee(&["runs", "output", &id, "probe"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("== attempt 1: succeeded at "),
        "{run:?}"
    );
    assert!(run.stdout.contains("\nprobed\n"), "{run:?}");

    // Watching a run that has ended prints its journal and its end, and exits as it ended.
    let run = server.levee(&["runs", "watch", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("  run_finished  engine  succeeded"),
        "{run:?}"
    );

    let run = server.levee(&["runs", "show", "nope"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("404"), "{run:?}");
}

#[test]
fn run_wait_exits_1_and_names_the_failed_task_and_controls_answer_refusals() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server_with_runbooks(dir.path());

    let run = server.levee(&["run", "fragile", "--wait"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains(" failed after "), "{run:?}");
    assert!(run.stdout.contains("outcome: "), "{run:?}");
    assert!(run.stdout.contains("  break failed: "), "{run:?}");
    let id = run
        .stdout
        .split_whitespace()
        .nth(2)
        .expect("the run id after `started run`")
        .to_string();
    assert!(
        run.stdout
            .contains(&format!("levee runs retry {id} break --reason")),
        "{run:?}"
    );

    let run = server.levee(&["runs", "show", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Needs attention"), "{run:?}");
    let run = server.levee(&["runs", "watch", &id]);
    assert_eq!(run.code, 1, "a failed run watched exits 1: {run:?}");

    // Every control needs a reason, and a blank one is no reason.
    let run = server.levee(&["runs", "retry", &id, "break"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--reason"), "{run:?}");
    let run = server.levee(&["runs", "retry", &id, "break", "--reason", "  "]);
    assert_eq!(run.code, 2, "{run:?}");

    // A control the run's state does not allow is refused with the server's reason.
    let run = server.levee(&["runs", "resume", &id, "--reason", "go on"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("refused: "), "{run:?}");
    assert!(run.stderr.contains("(not_paused)"), "{run:?}");
    let run = server.levee(&["runs", "skip", &id, "nonesuch", "--reason", "x"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("404"), "{run:?}");

    let run = server.levee(&["runs", "retry", &id, "break", "--reason", "try once more"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("task `break` is now "), "{run:?}");
    let run = server.levee(&["runs", "skip", &id, "break", "--reason", "done by hand"]);
    // The retry may already have failed again (then the skip reopens the run) or be running
    // (then it is cancelled): either way the task is skipped and the run can end.
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("task `break` is now skipped"),
        "{run:?}"
    );
    let run = server.levee(&["runs", "watch", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee(&["runs", "journal", &id]);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("task_skipped") && l.contains("done by hand")),
        "{run:?}"
    );
    let run = server.levee(&["runs", "abort", &id, "--reason", "too late"]);
    assert_eq!(run.code, 1, "an ended run takes no controls: {run:?}");
}

#[test]
fn run_parameters_no_start_and_the_global_pause() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server_with_runbooks(dir.path());

    let run = server.levee(&["run", "quick", "-p", "pause=soon", "-p", "zone=a"]);
    assert_eq!(
        run.code, 1,
        "parameter errors exit 1, as with `levee plan`: {run:?}"
    );
    for code in ["invalid-param-value", "unknown-param"] {
        assert!(run.stderr.contains(code), "{code}: {run:?}");
    }
    let run = server.levee(&["run", "nonesuch"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = server.levee(&["run", "quick", "--no-start", "--wait"]);
    assert_eq!(run.code, 2, "{run:?}");

    let run = server.levee(&["run", "quick", "--no-start"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("not started"), "{run:?}");
    let id = run
        .stdout
        .split_whitespace()
        .nth(2)
        .expect("the run id after `created run`")
        .to_string();
    let run = server.levee(&["runs", "show", &id]);
    assert!(
        run.stdout
            .contains(&format!("levee runs start {id} --reason")),
        "{run:?}"
    );
    let run = server.levee(&["runs", "start", &id, "--reason", "window open"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee(&["runs", "watch", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee(&["runs", "start", &id, "--reason", "again"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("already_started"), "{run:?}");

    let run = server.levee(&["pause", "--status"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "runs are not paused\n");
    let run = server.levee(&["pause"]);
    assert_eq!(run.code, 2, "a pause needs a reason: {run:?}");
    let run = server.levee(&["pause", "--reason", "incident 4711"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("every run is paused since "),
        "{run:?}"
    );
    let run = server.levee(&["pause", "--status", "--output", "json"]);
    assert_eq!(run.json()["reason"], "incident 4711", "{run:?}");
    let run = server.levee(&["unpause", "--reason", "resolved"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("runs are not paused (lifted at "),
        "{run:?}"
    );
}

/// A run as `GET /api/v1/runs/{id}` answers it, for the fake server below.
fn fake_run_view(status: &str) -> String {
    let finished = if status == "running" {
        "null"
    } else {
        "1714564801000"
    };
    let task_status = if status == "running" {
        "running"
    } else {
        "succeeded"
    };
    format!(
        "{{\"id\":\"r1\",\"name\":null,\"runbook\":\"quick\",\"runbook_version\":1,\"params\":{{}},\
         \"created_by\":\"alice\",\"status\":\"{status}\",\"version\":5,\"max_parallel\":32,\
         \"created_at_ms\":1714564800000,\"started_at_ms\":1714564800000,\"started_by\":\"alice\",\
         \"finished_at_ms\":{finished},\"outcome\":null,\"counts\":{{\"total\":1,\"waiting\":0,\
         \"ready\":0,\"running\":0,\"retrying\":0,\"succeeded\":1,\"skipped\":0,\"failed\":0,\
         \"stalled\":0,\"cancelled\":0}},\"tasks\":[{{\"id\":\"probe\",\"stage\":\"shell\",\
         \"status\":\"{task_status}\",\"attempts\":1,\"step\":0,\"needs\":[],\"after\":[],\
         \"started_at_ms\":1714564800000,\"finished_at_ms\":{finished},\"reason\":null,\
         \"stall\":null,\"retry_at_ms\":null,\"in_flight\":null,\"overridden_deps\":[],\
         \"with_args\":{{}}}}]}}"
    )
}

/// One journal event of the fake stream, serialized as the server does (so the test follows
/// the engine's own field names).
fn fake_event(seq: i64, task: Option<&str>, kind: JournalKind) -> String {
    let record = JournalRecord {
        seq,
        entry: JournalEntry {
            version: seq,
            at_ms: 1_714_564_800_000 + seq,
            task: task.map(str::to_string),
            actor: ENGINE_ACTOR.to_string(),
            reason: None,
            kind,
        },
    };
    let data = serde_json::to_string(&record).expect("a journal record serializes");
    format!("event: journal\nid: {seq}\ndata: {data}\n\n")
}

/// Serves one HTTP request of the fake server: the run, its (empty) journal, and its event
/// stream, which the first time drops in the middle of an event.
fn fake_server_answer(
    mut stream: TcpStream,
    connections: &std::sync::atomic::AtomicUsize,
    resumed_from: &std::sync::Mutex<Vec<Option<String>>>,
    finished: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    let mut request = Vec::new();
    let mut byte = [0_u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => return,
        }
    }
    let request = String::from_utf8_lossy(&request).to_string();
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let header = |name: &str| {
        request.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    let json = |stream: &mut TcpStream, body: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
    };
    if path.starts_with("/api/v1/runs/r1/events") {
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        );
        let probe = Some("probe");
        let dispatched = JournalKind::TaskDispatched {
            attempt: 1,
            from_step: 0,
        };
        if connections.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = stream.write_all(b": keep-alive\n\nretry: 50\n\n");
            let _ = stream.write_all(fake_event(1, None, JournalKind::RunStarted).as_bytes());
            let _ = stream.write_all(fake_event(2, probe, dispatched).as_bytes());
            // Half an event, then the connection drops.
            let _ = stream.write_all(b"event: journal\nid: 3\ndata: {\"seq\":3,");
            return;
        }
        resumed_from
            .lock()
            .expect("lock")
            .push(header("last-event-id"));
        // The server sends entry 2 again; the client must not show it twice.
        for event in [
            fake_event(2, probe, dispatched),
            // A stall, whose `reason` shares the object with the entry's own.
            fake_event(
                3,
                probe,
                JournalKind::TaskStalled {
                    cause: StallCause::Check(CheckPhase::Post),
                    reason: "the post-check failed".to_string(),
                },
            ),
            fake_event(
                4,
                probe,
                JournalKind::ConditionOverridden {
                    phase: CheckPhase::Post,
                },
            ),
        ] {
            let _ = stream.write_all(event.as_bytes());
            let _ = stream.flush();
        }
        finished.store(true, Ordering::SeqCst);
        let finish = JournalKind::RunFinished {
            status: RunStatus::Succeeded,
        };
        let _ = stream.write_all(fake_event(5, None, finish).as_bytes());
        let _ = stream.flush();
        // A real stream stays open: the client must end on `run_finished` by itself.
        std::thread::sleep(Duration::from_millis(SERVER_START_TIMEOUT_MS));
    } else if path.starts_with("/api/v1/runs/r1/journal") {
        json(&mut stream, "{\"entries\":[]}");
    } else if path == "/api/v1/runs/r1" {
        let status = if finished.load(Ordering::SeqCst) {
            "succeeded"
        } else {
            "running"
        };
        json(&mut stream, &fake_run_view(status));
    } else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    }
}

/// `runs watch` against a fake server whose event stream drops mid-event: the client
/// reconnects with `Last-Event-ID`, shows every entry once, and ends on `run_finished`
/// although the stream stays open.
#[test]
fn watch_reconnects_after_a_dropped_stream_and_shows_each_entry_once() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let connections = Arc::new(AtomicUsize::new(0));
    let resumed_from = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(AtomicBool::new(false));
    {
        let (connections, resumed_from, finished) =
            (connections.clone(), resumed_from.clone(), finished.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (connections, resumed_from, finished) =
                    (connections.clone(), resumed_from.clone(), finished.clone());
                std::thread::spawn(move || {
                    fake_server_answer(stream, &connections, &resumed_from, &finished);
                });
            }
        });
    }
    let started = Instant::now();
    let run = levee_in(
        dir.path(),
        &[("LEVEE_SERVER", &url)],
        &["runs", "watch", "r1"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        started.elapsed() < Duration::from_millis(SERVER_START_TIMEOUT_MS),
        "watch did not end on run_finished: {run:?}"
    );
    assert_eq!(
        resumed_from.lock().expect("lock").as_slice(),
        [Some("2".to_string())],
        "{run:?}"
    );
    assert!(run.stderr.contains("stream dropped"), "{run:?}");
    let kinds: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|line| line.split("  ").nth(2))
        .collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "task_dispatched",
            "task_stalled",
            "condition_overridden",
            "run_finished"
        ],
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("post check failed: the post-check failed"),
        "{run:?}"
    );
    assert!(
        run.stdout.ends_with("run r1 succeeded in 1s: 1/1 done\n"),
        "{run:?}"
    );
}

/// Longest a `levee` command that follows a run may take in a test before it is killed.
const FOLLOW_TIMEOUT_MS: u64 = 30_000;
/// Longest a test waits for a run to reach a state.
const RUN_STATE_TIMEOUT_MS: u64 = 20_000;
/// Pause between two looks at a run while waiting for a state.
const RUN_POLL_INTERVAL_MS: u64 = 50;

/// Runs `levee ARGS` against `server`, killing it (and failing the test) if it takes longer
/// than [`FOLLOW_TIMEOUT_MS`]: for commands that follow a run until it ends.
fn levee_within(server: &Server, args: &[&str]) -> Run {
    let mut child = levee_command(&server.dir)
        .env("LEVEE_SERVER", &server.url)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the levee binary");
    let deadline = Instant::now() + Duration::from_millis(FOLLOW_TIMEOUT_MS);
    while child.try_wait().expect("poll levee").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(RUN_POLL_INTERVAL_MS));
    }
    let output = child.wait_with_output().expect("levee's output");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        Instant::now() <= deadline,
        "levee {args:?} did not end in {FOLLOW_TIMEOUT_MS} ms: {run:?}"
    );
    run
}

#[test]
fn a_stalled_task_shows_its_remedies_and_an_override_lets_the_run_finish() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path());
    let flag = dir.path().join("healthy");
    let yaml = format!(
        "\
kind: Runbook
name: gated
tasks:
  - id: shift
    stage: log
    with: {{ message: shifting }}
    health:
      - shell: {{ command: [test, -e, \"{}\"] }}
  - id: after
    stage: log
    needs: [shift]
    with: {{ message: after }}
",
        flag.display()
    );
    write_file(dir.path(), "gated.yaml", &yaml);
    let run = server.levee(&["apply", "gated.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = server.levee(&["run", "gated", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run_id(&run);
    let deadline = Instant::now() + Duration::from_millis(RUN_STATE_TIMEOUT_MS);
    loop {
        let run = server.levee(&["runs", "show", &id, "--output", "json"]);
        if run.json()["counts"]["stalled"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "shift never stalled: {run:?}");
        std::thread::sleep(Duration::from_millis(RUN_POLL_INTERVAL_MS));
    }

    let run = server.levee(&["runs", "show", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("  shift stalled on its health check: "),
        "{run:?}"
    );
    for control in ["retry", "override", "skip"] {
        assert!(
            run.stdout
                .contains(&format!("levee runs {control} {id} shift --reason")),
            "{control}: {run:?}"
        );
    }
    // The journal of a stalled run must stay readable (the stall's `reason` and the entry's
    // share a JSON object).
    let run = server.levee(&["runs", "journal", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("task_stalled") && l.contains("health check failed")),
        "{run:?}"
    );

    let run = server.levee(&[
        "runs",
        "override",
        &id,
        "shift",
        "--reason",
        "metric is noisy",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("task `shift` is now "), "{run:?}");
    let run = levee_within(&server, &["runs", "watch", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("condition_overridden") && l.contains("metric is noisy")),
        "{run:?}"
    );
}

#[test]
fn maint_plans_schedules_and_shows_with_exit_codes_a_script_can_use() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let server = Server::start(dir.path());
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fleet");
    let files: Vec<String> = ["row.yaml", "runbooks.yaml", "policies.yaml"]
        .iter()
        .map(|f| examples.join(f).display().to_string())
        .collect();
    let mut apply = vec!["apply"];
    apply.extend(files.iter().map(String::as_str));
    let run = server.levee(&apply);
    assert_eq!(run.code, 0, "{run:?}");

    // Scenario B's scope: the plan names the short pools and exits 1; nothing is stored.
    let scope_b = "rack in (a-r4, a-r5, a-r6)";
    let window = ["--type", "power", "--start", "+2h", "--duration", "2h"];
    let mut plan = vec!["maint", "plan", "--scope", scope_b];
    plan.extend(window);
    let run = server.levee(&plan);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("cache/main"), "{run:?}");
    assert!(run.stdout.contains("SHORT BY 3"), "{run:?}");
    assert!(run.stdout.contains("would be refused"), "{run:?}");
    let mut schedule = vec!["maint", "schedule", "--scope", scope_b];
    schedule.extend(window);
    let run = server.levee(&schedule);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("preflight_failed"), "{run:?}");
    assert!(run.stderr.contains("short by 1"), "{run:?}");

    // Two racks of web hosts, one rack per step: the plan lists each step's rack and hosts.
    let run = server.levee(&[
        "maint",
        "plan",
        "--scope",
        "rack in (a-r1, a-r2), label:role=web",
        "--type",
        "network",
        "--start",
        "+1h",
        "--duration",
        "1h",
        "--one-domain-per-step",
        "rack",
        "--step-interval",
        "5m",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("1. a-r1: web-r1-1, web-r1-2, web-r1-3, web-r1-4"),
        "{run:?}"
    );
    assert!(run.stdout.contains("2. a-r2: web-r2-1"), "{run:?}");
    assert!(run.stdout.contains("removal rate limits:"), "{run:?}");
    let run = server.levee(&[
        "maint",
        "plan",
        "--scope",
        "rack=a-r1",
        "--type",
        "network",
        "--duration",
        "1h",
        "--one-domain-per-step",
        "galaxy",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not a failure domain level"), "{run:?}");

    // Scenario A's scope is scheduled, listed, shown and on the calendar.
    let run = server.levee(&[
        "maint",
        "schedule",
        "--scope",
        "rack=a-r1",
        "--type",
        "network",
        "--start",
        "+1h",
        "--duration",
        "1h",
        "--id",
        "m-a",
        "--owner",
        "dc-ops",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("state: scheduled"), "{run:?}");
    let run = server.levee(&["maint", "list", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()[0]["id"], "m-a");
    let run = server.levee(&["maint", "calendar", "--by", "power", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["domains"][0]["domain"], "a-pdu1", "{run:?}");
    let run = server.levee(&["maint", "cancel", "m-a", "--reason", "moved to next week"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("state: cancelled"), "{run:?}");
    let run = server.levee(&["maint", "show", "m-zz"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no maintenance `m-zz`"), "{run:?}");
}
