//! Alert-driven repair end to end: a real Alertmanager (Debian's `prometheus-alertmanager`,
//! 0.25) fed with `amtool alert add` sends its webhooks to a real Levee server with the
//! example row and remediation rule; the right host goes into repair (its runbook runs, a
//! repair ticket is opened at a listener here), the per-pool limit refuses a second host, a
//! misspelt host is refused with a suggestion, and confirming the repair puts the host back.
//!
//! Without `prometheus-alertmanager` or `amtool` the test fails when `CI` is set (`.ci/run`
//! installs them) and says why it is skipped otherwise.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod common;

const ALERTMANAGER: &str = "prometheus-alertmanager";
const AMTOOL: &str = "amtool";
/// Longest the test waits for Alertmanager to be ready.
const ALERTMANAGER_READY_WAIT_MS: u64 = 30_000;
/// Longest the test waits for the webhooks it expects.
const WEBHOOK_WAIT_MS: u64 = 30_000;
/// Alertmanager's `group_wait` in the test's configuration, in milliseconds.
const GROUP_WAIT_MS: u64 = 200;
/// Alertmanager's `group_interval` in the test's configuration, in milliseconds.
const GROUP_INTERVAL_MS: u64 = 1_000;
/// Longest one `amtool` call may take.
const AMTOOL_TIMEOUT_MS: u64 = 10_000;

fn tool_available(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
            panic!(
                "{test}: `{tool}` is not installed and CI must run this test; .ci/run installs \
                 it (apt-get install prometheus-alertmanager)"
            );
        }
        eprintln!(
            "SKIPPED {test}: `{tool}` is not installed (apt-get install prometheus-alertmanager)"
        );
    }
    found
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn repository_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// Alertmanager, killed when dropped.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_alertmanager(webhook_url: &str) -> Alertmanager {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: levee\n  group_by: [alertname]\n  group_wait: {GROUP_WAIT_MS}ms\n  \
             group_interval: {GROUP_INTERVAL_MS}ms\n  repeat_interval: 1h\n\
             receivers:\n  - name: levee\n    webhook_configs:\n      - url: '{webhook_url}'\n        \
             send_resolved: true\n"
        ),
    )
    .expect("write the configuration");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("a log file");
    let child = Command::new(ALERTMANAGER)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // No cluster: a single Alertmanager binds no gossip port.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start alertmanager");
    let alertmanager = Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_millis(ALERTMANAGER_READY_WAIT_MS);
    loop {
        let ready = client
            .get(format!("{}/-/ready", alertmanager.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return alertmanager;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(alertmanager._dir.path().join("alertmanager.log"))
                .unwrap_or_default();
            panic!(
                "Alertmanager did not become ready within {ALERTMANAGER_READY_WAIT_MS} ms:\n{log}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A listener that forwards every POSTed body to the returned channel.
async fn start_receiver() -> (String, mpsc::UnboundedReceiver<Bytes>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/alerts",
        post(move |body: Bytes| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let port = listener.local_addr().expect("an address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}/alerts"), receiver)
}

fn amtool_add(alertmanager: &Alertmanager, labels: &[&str]) {
    let mut child = Command::new(AMTOOL)
        .arg("alert")
        .arg("add")
        .arg(format!("--alertmanager.url={}", alertmanager.url))
        .arg("--annotation=summary=added by the levee test")
        .args(labels)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run amtool");
    let deadline = Instant::now() + Duration::from_millis(AMTOOL_TIMEOUT_MS);
    loop {
        if let Some(status) = child.try_wait().expect("wait for amtool") {
            let output = child.wait_with_output().expect("amtool's output");
            assert!(
                status.success(),
                "amtool alert add {labels:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("amtool alert add {labels:?} took more than {AMTOOL_TIMEOUT_MS} ms");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn apply(server: &common::TestServer, files: &[(&str, String)]) {
    let files: Vec<Value> = files
        .iter()
        .map(|(name, content)| json!({ "name": name, "content": content }))
        .collect();
    let answer = server
        .send(
            Method::POST,
            "/api/v1/definitions",
            None,
            Some(&json!({ "files": files })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

async fn repairs(server: &common::TestServer) -> Vec<Value> {
    let list = server.get("/api/v1/maintenances").await.json();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "repair")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_alerts_repair_one_host_per_pool_and_a_confirmed_repair_puts_it_back() {
    let test = "alertmanager_alerts_repair_one_host_per_pool_and_a_confirmed_repair_puts_it_back";
    if !tool_available(ALERTMANAGER, test) || !tool_available(AMTOOL, test) {
        return;
    }
    let server = common::start().await;
    let (ticket_url, mut tickets) = start_receiver().await;
    let read = |path: &str| std::fs::read_to_string(repository_path(path)).expect("an example");
    let rule = read("examples/fleet/remediation.yaml")
        .replace("http://tickets.example.invalid/api/repairs", &ticket_url);
    apply(
        &server,
        &[
            ("row.yaml", read("examples/fleet/row.yaml")),
            ("remediation.yaml", rule),
        ],
    )
    .await;

    let alertmanager = start_alertmanager(&server.url("/api/v1/alerts/alertmanager")).await;
    for instance in ["web-r1-1:9100", "web-r2-1:9100", "web-r1-l:9100"] {
        amtool_add(
            &alertmanager,
            &[
                "alertname=HostDown",
                "severity=page",
                &format!("instance={instance}"),
                "job=node",
            ],
        );
    }

    // web-r1-1 goes into repair: its runbook runs, its ticket is opened.
    let ticket =
        match tokio::time::timeout(Duration::from_millis(WEBHOOK_WAIT_MS), tickets.recv()).await {
            Ok(ticket) => ticket.expect("the receiver runs"),
            Err(_) => panic!(
                "no repair ticket within {WEBHOOK_WAIT_MS} ms; repairs: {:#?}",
                repairs(&server).await
            ),
        };
    let ticket: Value = serde_json::from_slice(&ticket).expect("a JSON ticket");
    assert_eq!(ticket["host"], "web-r1-1", "{ticket}");
    assert_eq!(ticket["rule"], "row-a-host-down");
    assert_eq!(ticket["alert"], "HostDown");
    let found = repairs(&server).await;
    assert_eq!(found.len(), 1, "one host per pool: {found:#?}");
    let repair = &found[0];
    assert_eq!(repair["hosts"], json!(["web-r1-1"]));
    assert_eq!(repair["state"], "awaiting_repair", "{repair:#}");
    let id = repair["id"].as_str().unwrap().to_string();
    let serving = server.get("/api/v1/hosts/web-r1-1/serving").await;
    assert_eq!(
        serving.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        serving.body
    );
    // The second web host was refused by the per-pool limit, the misspelt one by name: the
    // audit of the webhook answers is in the server's decisions, asked again here.
    let payload = json!({
        "version": "4", "status": "firing", "receiver": "levee", "groupLabels": {},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [
            { "status": "firing", "labels": { "alertname": "HostDown", "severity": "page",
              "instance": "web-r2-1:9100" }, "annotations": {},
              "startsAt": "2030-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z" },
            { "status": "firing", "labels": { "alertname": "HostDown", "severity": "page",
              "instance": "web-r1-l:9100" }, "annotations": {},
              "startsAt": "2030-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z" }
        ]
    });
    let answer = server
        .send(
            Method::POST,
            "/api/v1/alerts/alertmanager",
            None,
            Some(&payload),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let outcomes = answer.json()["outcomes"].clone();
    assert_eq!(outcomes[0]["decision"], "refused", "{outcomes:#}");
    assert_eq!(outcomes[0]["reason"], "pool_limit", "{outcomes:#}");
    assert_eq!(outcomes[1]["reason"], "unknown_host", "{outcomes:#}");
    assert!(
        outcomes[1]["explanation"]
            .as_str()
            .unwrap()
            .contains("web-r1-1"),
        "did you mean: {outcomes:#}"
    );

    // A payload that is not Alertmanager's is refused, naming the field.
    let answer = server
        .send(
            Method::POST,
            "/api/v1/alerts/alertmanager",
            None,
            Some(&json!({ "hello": "world" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "not_alertmanager");

    // The datacenter team repaired it: confirm, and it is back.
    let answer = server
        .send(
            Method::POST,
            &format!("/api/v1/maintenances/{id}/controls"),
            None,
            Some(&json!({ "action": "confirm_repair", "reason": "disk replaced" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["state"], "done");
    let serving = server.get("/api/v1/hosts/web-r1-1/serving").await;
    assert_eq!(serving.status, StatusCode::OK, "{}", serving.body);
    drop(alertmanager);
}
