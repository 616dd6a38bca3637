//! `traffic_shift` on a real HAProxy (Debian's 2.6) in front of two real HTTP backends: a
//! runbook drains one server in paced, committed steps, puts the weight back when HAProxy
//! "forgets" it mid-drain, drains its sessions and puts it in maintenance, so every request
//! then reaches the other server; a second runbook restores it.
//!
//! Without an `haproxy` binary the tests fail when `CI` is set (`.ci/run` installs it) and
//! say why they are skipped otherwise.

mod common;

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use levee_stages::{Haproxy, HaproxySocket, TrafficBackend};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Longest the test waits for HAProxy to start or a run to reach a state.
const WAIT_MS: u64 = 60_000;

fn haproxy_available(test: &str) -> bool {
    let found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
            panic!(
                "{test}: `haproxy` is not installed and CI must run this test; .ci/run installs it"
            );
        }
        eprintln!("SKIPPED {test}: `haproxy` is not installed (apt-get install haproxy)");
    }
    found
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An HTTP backend that answers its own name.
async fn start_backend(name: &'static str) -> u16 {
    let app = Router::new().route("/", get(move || async move { name }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

struct Balancer {
    child: Child,
    socket: String,
    front: String,
    _dir: tempfile::TempDir,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_haproxy() -> Balancer {
    let s1 = start_backend("s1").await;
    let s2 = start_backend("s2").await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock").display().to_string();
    let front = free_port();
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  stats socket {socket} level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind 127.0.0.1:{front}\n  default_backend web\n\
             backend web\n  balance roundrobin\n\
             \x20 server s1 127.0.0.1:{s1} weight 100\n  server s2 127.0.0.1:{s2} weight 100\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let balancer = Balancer {
        child,
        socket,
        front: format!("http://127.0.0.1:{front}/"),
        _dir: dir,
    };
    let api = Haproxy::new(HaproxySocket::parse(&balancer.socket).unwrap());
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while api.status("web/s1").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy never answered on its socket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    balancer
}

/// Who answers `requests` requests through the balancer, each on a new connection.
async fn answered_by(front: &str, requests: usize) -> Vec<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut names = Vec::new();
    for _ in 0..requests {
        let answer = client.get(front).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        names.push(answer.text().await.unwrap());
    }
    names
}

async fn run_of(server: &common::TestServer, id: &str) -> Value {
    let answer = server.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()
}

async fn wait_run(
    server: &common::TestServer,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let run = run_of(server, id).await;
        if done(&run) {
            return run;
        }
        assert!(Instant::now() < deadline, "never got to {what}: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_run(server: &common::TestServer, runbook: &str) -> String {
    let started = server
        .send(
            Method::POST,
            &format!("/api/v1/runbooks/{runbook}/runs"),
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    started.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_runbook_drains_a_real_haproxy_server_and_restores_it() {
    if !haproxy_available("a_runbook_drains_a_real_haproxy_server_and_restores_it") {
        return;
    }
    let balancer = start_haproxy().await;
    let api = Haproxy::new(HaproxySocket::parse(&balancer.socket).unwrap());
    let both = answered_by(&balancer.front, 10).await;
    assert!(
        both.contains(&"s1".to_string()) && both.contains(&"s2".to_string()),
        "{both:?}"
    );

    let server = common::start_with(common::Options {
        real_clock: true,
        ..common::Options::default()
    })
    .await;
    let yaml = format!(
        "\
kind: Runbook
name: drain-s1
tasks:
  - id: shift
    stage: traffic_shift
    with:
      haproxy: {socket}
      servers: [web/s1]
      to_weight: 0
      first_step: 10%
      step: 50%
      wait: 1h
      then_maint: true
      drain_timeout: 30s
---
kind: Runbook
name: restore-s1
tasks:
  - id: shift
    stage: traffic_shift
    with:
      haproxy: {socket}
      servers: [web/s1]
      from_weight: 0
      to_weight: 100
      step: 50%
      ready_first: true
",
        socket = balancer.socket
    );
    server.apply("haproxy.yaml", &yaml).await;
    let id = start_run(&server, "drain-s1").await;
    let first = wait_run(&server, &id, "the first step", |r| {
        r["tasks"][0]["step"] == 1
    })
    .await;
    assert_eq!(first["tasks"][0]["step_state"]["weight"], 90);
    assert_eq!(api.status("web/s1").await.unwrap().weight, 90);
    // HAProxy is reloaded and forgets the runtime change.
    api.set_weight("web/s1", 100).await.unwrap();
    let answer = server
        .send(
            Method::POST,
            &format!("/api/v1/runs/{id}/controls"),
            None,
            Some(&json!({ "control": "set_pace", "task": "shift", "pace": { "wait": "10ms" }, "reason": "go on" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_run(&server, &id, "the drain done", |r| {
        r["status"] == "succeeded"
    })
    .await;
    let status = api.status("web/s1").await.unwrap();
    assert_eq!(status.weight, 0);
    assert!(status.maintenance, "{status:?}");
    let output = server
        .get(&format!("/api/v1/runs/{id}/tasks/shift/output"))
        .await;
    assert!(
        output.body.contains("instead of the committed 90"),
        "{}",
        output.body
    );
    assert!(output.body.contains("in maintenance"), "{}", output.body);
    let after = answered_by(&balancer.front, 10).await;
    assert!(after.iter().all(|name| name == "s2"), "{after:?}");

    let id = start_run(&server, "restore-s1").await;
    wait_run(&server, &id, "the restore done", |r| {
        r["status"] == "succeeded"
    })
    .await;
    let status = api.status("web/s1").await.unwrap();
    assert_eq!(status.weight, 100);
    assert!(!status.maintenance && !status.draining, "{status:?}");
    let restored = answered_by(&balancer.front, 10).await;
    assert!(restored.contains(&"s1".to_string()), "{restored:?}");
}
