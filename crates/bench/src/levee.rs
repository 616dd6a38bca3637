//! Levee's server as the suite sees it: a process started from a `levee` binary, reached over
//! loopback through its public endpoints only (`/healthz`, `/state`, `/machines/{id}/state` and the
//! JSON API under `/api/v1/`).

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::client;

/// How long Levee may take from being started to answering `GET /healthz` with 200, in seconds.
pub const START_TIMEOUT_S: u64 = 30;

/// The pause between two health checks while Levee starts, in milliseconds.
const HEALTH_POLL_INTERVAL_MS: u64 = 50;

/// How long one API call may take, in seconds. Creating a thousand machines is one call.
const API_TIMEOUT_S: u64 = 60;

/// The most machines the JSON API accepts in one `POST /api/v1/machines`.
pub const MACHINES_PER_REQUEST_MAX: usize = 1_000;

/// Lines of Levee's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 30;

/// StateService's README machine, in its own file format: green_state, red_state and blue_state,
/// each counting state moving on at its first accepted PUT; blue_state is final.
pub const STATESERVICE_MACHINE_YAML: &str = "\
current_state: green_state
states:
  - name: green_state
    func: increment
    current: { key: count, value: 0 }
    target:
      name: red_state
      when: { key: count, value: 1 }
  - name: red_state
    func: increment
    current: { key: count, value: 0 }
    target:
      name: blue_state
      when: { key: count, value: 1 }
  - name: blue_state
";

/// The name of the definition every benchmark machine is an instance of.
pub const COUNTER_DEFINITION_NAME: &str = "bench-counter";

/// The state a benchmark machine counts in.
pub const COUNTING_STATE: &str = "counting";

/// How many PUTs of `counting` a benchmark machine counts before it moves to its final state:
/// the most Levee's validation accepts for a counting transition. The suite sends fewer than this
/// to any one machine, so every PUT it sends is counted in `counting`.
pub const COUNTER_TARGET_REPORTS: u64 = 100_000;

/// A machine that counts accepted PUTs of `counting` and stays there for
/// [`COUNTER_TARGET_REPORTS`] of them.
pub fn counter_definition_yaml() -> String {
    format!(
        "\
kind: StateMachine
name: {COUNTER_DEFINITION_NAME}
states:
  - name: {COUNTING_STATE}
    on: {{ done: {{ to: finished, count: {COUNTER_TARGET_REPORTS} }} }}
  - name: finished
    final: true
"
    )
}

/// A running Levee server; it is killed when this is dropped.
pub struct LeveeProcess {
    child: Child,
    log_path: PathBuf,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl LeveeProcess {
    /// Starts `binary serve` on a free loopback port, with a fresh SQLite database and
    /// StateService's README machine in `workdir`, and waits until `/healthz` answers 200.
    /// Levee's output goes to `workdir/levee.log`, whose end is shown if it fails to start.
    pub async fn start(binary: &Path, workdir: &Path) -> Result<Self> {
        ensure!(
            binary.is_file(),
            "there is no Levee binary at {}; build one with `cargo build --release -p levee` and \
             pass `--levee target/release/levee`",
            binary.display()
        );
        // Levee runs in `workdir`, where a relative path would name another file.
        let binary = &binary
            .canonicalize()
            .with_context(|| format!("could not resolve {}", binary.display()))?;
        let machine_path = workdir.join("states.yaml");
        fs::write(&machine_path, STATESERVICE_MACHINE_YAML)
            .with_context(|| format!("could not write {}", machine_path.display()))?;
        let database_url = format!("sqlite://{}", workdir.join("bench.db").display());
        let log_path = workdir.join("levee.log");
        let log = File::create(&log_path)
            .with_context(|| format!("could not create {}", log_path.display()))?;
        let addr = free_loopback_port()?;
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--database")
            .arg(&database_url)
            .arg("--machine")
            .arg(&machine_path)
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start Levee from {}", binary.display()))?;
        let pid = child.id().context("Levee exited at once")?;
        if let Err(error) = wait_until_healthy(&mut child, addr).await {
            let _ = child.kill().await;
            return Err(error.context(format!(
                "Levee ({} serve --listen {addr} --database {database_url} --machine {}) did not \
                 start; the end of its log {}:\n{}",
                binary.display(),
                machine_path.display(),
                log_path.display(),
                log_tail(&log_path)
            )));
        }
        Ok(Self {
            child,
            log_path,
            addr,
            pid,
        })
    }

    /// Stops the server and waits for it to exit. It is an error if it had already exited: then
    /// it died during the run, and the end of its log says why.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "Levee exited during the run with {status}; the end of its log {}:\n{}",
                self.log_path.display(),
                log_tail(&self.log_path)
            );
        }
        self.child.kill().await.context("could not stop Levee")
    }

    /// Stores the benchmark's counter machine definition through `POST /api/v1/definitions`.
    pub async fn create_counter_definition(&self) -> Result<()> {
        let body =
            json!({ "files": [{ "name": "bench.yaml", "content": counter_definition_yaml() }] });
        self.api_call(Method::POST, "/api/v1/definitions", Some(&body))
            .await
            .context("could not store the benchmark's machine definition")?;
        Ok(())
    }

    /// Creates a counter machine for each id through `POST /api/v1/machines`, at most
    /// [`MACHINES_PER_REQUEST_MAX`] per request.
    pub async fn create_counter_machines(&self, ids: &[String]) -> Result<()> {
        for batch in ids.chunks(MACHINES_PER_REQUEST_MAX) {
            let machines: Vec<Value> = batch
                .iter()
                .map(|id| json!({ "id": id, "definition": COUNTER_DEFINITION_NAME }))
                .collect();
            self.api_call(
                Method::POST,
                "/api/v1/machines",
                Some(&json!({ "machines": machines })),
            )
            .await
            .with_context(|| {
                format!(
                    "could not create machines {} to {}",
                    batch[0],
                    batch[batch.len() - 1]
                )
            })?;
        }
        Ok(())
    }

    /// The counter of machine `id`, from `GET /api/v1/machines/{id}`.
    pub async fn machine_counter(&self, id: &str) -> Result<u64> {
        let path = format!("/api/v1/machines/{id}");
        let machine = self.api_call(Method::GET, &path, None).await?;
        find_counter(&machine)
            .with_context(|| format!("GET {path} answered {machine}, with no counter"))
    }

    /// Sends one state check, `GET /machines/{id}/state?state=STATE`, and returns its status.
    pub async fn check_machine_state(&self, id: &str, state: &str) -> Result<StatusCode> {
        let path = format!("/machines/{id}/state?state={state}");
        let answer = client::request(
            self.addr,
            Method::GET,
            &path,
            None,
            Duration::from_secs(API_TIMEOUT_S),
        )
        .await?;
        Ok(answer.status)
    }

    /// Calls the JSON API and returns the answer's JSON (`null` for an empty body); any status
    /// other than 2xx is an error that shows the answer.
    async fn api_call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let answer = client::request(
            self.addr,
            method.clone(),
            path,
            body,
            Duration::from_secs(API_TIMEOUT_S),
        )
        .await?;
        if !answer.status.is_success() {
            bail!(
                "{method} {path} answered {}: {}",
                answer.status,
                answer.body_text()
            );
        }
        if answer.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&answer.body).with_context(|| {
            format!(
                "{method} {path} answered {}, which is not JSON",
                answer.body_text()
            )
        })
    }
}

/// Finds the machine's counter: a top-level `counter` field, or else the only numeric `counter`
/// field nested anywhere in the document (the API may group a machine's figures). Two nested
/// counters are ambiguous and give none.
fn find_counter(machine: &Value) -> Option<u64> {
    if let Some(counter) = machine.get("counter").and_then(Value::as_u64) {
        return Some(counter);
    }
    fn collect(value: &Value, found: &mut Vec<u64>) {
        match value {
            Value::Object(fields) => {
                for (key, field) in fields {
                    match field.as_u64() {
                        Some(counter) if key == "counter" => found.push(counter),
                        _ => collect(field, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    collect(machine, &mut found);
    match found.as_slice() {
        [counter] => Some(*counter),
        _ => None,
    }
}

/// A loopback address with a port that was free a moment ago: bound, read and released, so that
/// Levee can bind it. Another process could take it in between, which makes Levee fail to start
/// with a clear error rather than measure the wrong server.
fn free_loopback_port() -> Result<SocketAddr> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("could not find a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// Polls `GET /healthz` until it answers 200, the process exits, or [`START_TIMEOUT_S`] passes.
async fn wait_until_healthy(child: &mut Child, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(START_TIMEOUT_S);
    let mut last_problem = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("Levee exited with {status} before answering GET /healthz");
        }
        let attempt_timeout = Duration::from_millis(1_000).min(deadline - Instant::now());
        match client::request(addr, Method::GET, "/healthz", None, attempt_timeout).await {
            Ok(answer) if answer.status == StatusCode::OK => return Ok(()),
            Ok(answer) => last_problem = format!("GET /healthz answered {}", answer.status),
            Err(error) => last_problem = format!("{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(HEALTH_POLL_INTERVAL_MS)).await;
    }
    bail!("Levee did not answer GET /healthz with 200 within {START_TIMEOUT_S} s ({last_problem})")
}

fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(log) if log.trim().is_empty() => "(the log is empty)".to_owned(),
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(could not read the log: {error})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_definition_is_the_documented_yaml() {
        assert_eq!(
            counter_definition_yaml(),
            "kind: StateMachine\nname: bench-counter\nstates:\n  - name: counting\n    \
             on: { done: { to: finished, count: 100000 } }\n  - name: finished\n    final: true\n"
        );
    }

    #[test]
    fn finds_a_top_level_or_a_single_nested_counter() {
        assert_eq!(find_counter(&json!({ "id": "m0", "counter": 7 })), Some(7));
        assert_eq!(
            find_counter(&json!({ "id": "m0", "state": { "name": "counting", "counter": 3 } })),
            Some(3)
        );
        assert_eq!(
            find_counter(&json!({ "a": { "counter": 1 }, "b": { "counter": 2 } })),
            None
        );
        assert_eq!(find_counter(&json!({ "id": "m0" })), None);
    }
}
