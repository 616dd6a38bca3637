//! A real Alertmanager (Debian's `prometheus-alertmanager`, 0.25) fed with `amtool alert add`
//! sends its webhook to a small HTTP listener here; the payload it sends must parse, and the
//! decision must repair the right host of the example row with the example rule (and refuse
//! a misspelt host, suggesting the right one).
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
use levee_fleet::{
    Decision, FleetIndex, RefusalReason, RemediationState, decide_payload, parse_webhook,
};
use levee_model::{Definition, LoadContext, RemediationRuleDef, load_documents};
use tokio::sync::mpsc;

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

fn load(relative: &str) -> Vec<Definition> {
    let text = std::fs::read_to_string(repository_path(relative)).expect("read the example");
    let ctx = LoadContext::new(0, jiff::tz::TimeZone::UTC);
    load_documents(relative, &text, &ctx).unwrap_or_else(|diagnostics| {
        let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        panic!("{relative}: {}", rendered.join("\n"))
    })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_webhooks_parse_and_repair_the_right_host() {
    let test = "alertmanager_webhooks_parse_and_repair_the_right_host";
    if !tool_available(ALERTMANAGER, test) || !tool_available(AMTOOL, test) {
        return;
    }
    let fleet = load("examples/fleet/row.yaml")[0]
        .as_fleet()
        .cloned()
        .expect("a fleet");
    let index = FleetIndex::build(&fleet).expect("indexes");
    let rules: Vec<RemediationRuleDef> = load("examples/fleet/remediation.yaml")
        .iter()
        .filter_map(|d| d.as_remediation_rule().cloned())
        .collect();

    let (webhook_url, mut bodies) = start_receiver().await;
    let alertmanager = start_alertmanager(&webhook_url).await;
    amtool_add(
        &alertmanager,
        &[
            "alertname=HostDown",
            "severity=page",
            "instance=web-r1-1:9100",
            "job=node",
        ],
    );
    amtool_add(
        &alertmanager,
        &[
            "alertname=HostDown",
            "severity=page",
            "instance=web-r1-l:9100",
            "job=node",
        ],
    );

    // Alertmanager may send the two alerts in one notification or in two: decide every
    // notification in turn until both hosts have a decision.
    let mut state = RemediationState::default();
    let mut decided: Vec<(String, Decision)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WEBHOOK_WAIT_MS);
    while decided.len() < 2 {
        let body = tokio::time::timeout_at(deadline, bodies.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("no webhook with both alerts within {WEBHOOK_WAIT_MS} ms: {decided:#?}")
            })
            .expect("the receiver runs");
        let payload = parse_webhook(&body).unwrap_or_else(|e| {
            panic!(
                "Alertmanager's payload must parse: {e}\n{}",
                String::from_utf8_lossy(&body)
            )
        });
        assert_eq!(payload.version, "4");
        assert_eq!(payload.receiver.as_deref(), Some("levee"));
        assert!(payload.group_key.is_some(), "{payload:#?}");
        assert_eq!(payload.truncated_alerts, 0);
        assert_eq!(
            payload.group_labels.get("alertname").map(String::as_str),
            Some("HostDown")
        );
        for alert in &payload.alerts {
            assert!(
                alert.fingerprint.is_some(),
                "0.25 sends fingerprints: {alert:#?}"
            );
            assert_eq!(
                alert.annotations.get("summary").map(String::as_str),
                Some("added by the levee test")
            );
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let (decisions, after) = decide_payload(&index, &rules, &state, &payload, now_ms);
        state = after;
        for (alert, decision) in payload.alerts.iter().zip(decisions) {
            let instance = alert.label("instance").unwrap_or_default().to_string();
            if !decided.iter().any(|(seen, _)| *seen == instance) {
                decided.push((instance, decision));
            }
        }
    }
    decided.sort_by(|a, b| a.0.cmp(&b.0));
    let (instance, repaired) = &decided[0];
    assert_eq!(instance, "web-r1-1:9100");
    let Decision::Remediate(remediation) = repaired else {
        panic!("web-r1-1 must be repaired: {repaired:#?}");
    };
    assert_eq!(remediation.host, "web-r1-1");
    assert_eq!(remediation.rule, "row-a-host-down");
    assert_eq!(remediation.runbook, "host-repair");
    assert_eq!(remediation.params["service"], "web");
    let (instance, refused) = &decided[1];
    assert_eq!(instance, "web-r1-l:9100");
    let refusal = refused.refusal().expect("a refusal");
    assert_eq!(
        refusal.reason,
        RefusalReason::UnknownHost {
            host: "web-r1-l".to_string(),
            did_you_mean: Some("web-r1-1".to_string()),
        }
    );
    assert_eq!(state.in_repair.len(), 1);
}
