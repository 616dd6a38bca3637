//! Maintenance over HTTP: the two scenarios of the Aggregate Maintenance Handlers post on the
//! six-rack row of `examples/fleet/row.yaml`, bad input, and concurrent schedules.
//!
//! The server runs on a manual clock: the tests move time to the flow's start and the
//! window's end, and wait for the background driver to move the maintenance.

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ROW_YAML: &str = include_str!("../../../examples/fleet/row.yaml");
const POLICIES_YAML: &str = include_str!("../../../examples/fleet/policies.yaml");
const RUNBOOKS_YAML: &str = include_str!("../../../examples/fleet/runbooks.yaml");

const MINUTE_MS: i64 = 60_000;

async fn start_with_row() -> common::TestServer {
    let server = common::start().await;
    apply(
        &server,
        &[
            ("row.yaml", ROW_YAML),
            ("policies.yaml", POLICIES_YAML),
            ("runbooks.yaml", RUNBOOKS_YAML),
        ],
    )
    .await;
    server
}

async fn apply(server: &common::TestServer, files: &[(&str, &str)]) {
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

async fn create_token(
    server: &common::TestServer,
    admin: Option<&str>,
    name: &str,
    role: &str,
) -> String {
    let answer = server
        .send(
            Method::POST,
            "/api/v1/tokens",
            admin,
            Some(&json!({ "name": name, "role": role })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()["secret"]
        .as_str()
        .expect("a secret")
        .to_string()
}

async fn maintenance(server: &common::TestServer, token: Option<&str>, id: &str) -> Value {
    let answer = server
        .send(
            Method::GET,
            &format!("/api/v1/maintenances/{id}"),
            token,
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()
}

/// Waits for the driver to bring maintenance `id` to `state`.
async fn wait_for_state(
    server: &common::TestServer,
    token: Option<&str>,
    id: &str,
    state: &str,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(common::WAIT_TIMEOUT_MS);
    loop {
        let view = maintenance(server, token, id).await;
        if view["state"] == state {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "maintenance {id} never reached {state}; it is {}: {}",
            view["state"],
            serde_json::to_string_pretty(&view).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(common::WAIT_POLL_INTERVAL_MS)).await;
    }
}

async fn control(
    server: &common::TestServer,
    token: Option<&str>,
    id: &str,
    body: Value,
) -> common::Answer {
    server
        .send(
            Method::POST,
            &format!("/api/v1/maintenances/{id}/controls"),
            token,
            Some(&body),
        )
        .await
}

async fn serving(server: &common::TestServer, token: Option<&str>, host: &str) -> StatusCode {
    server
        .send(
            Method::GET,
            &format!("/api/v1/hosts/{host}/serving"),
            token,
            None,
        )
        .await
        .status
}

fn service<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["details"]["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {view}"))
}

#[tokio::test]
async fn scenario_a_one_rack_passes_preflight_for_every_service_and_runs_to_done() {
    let server = start_with_row().await;
    let request = json!({
        "scope": "rack=a-r1", "type": "network", "start": "+15m", "duration": "1h",
        "owner": "dc-ops", "id": "m-a",
    });
    let plan = server
        .send(
            Method::POST,
            "/api/v1/maintenances/plan",
            None,
            Some(&request),
        )
        .await;
    assert_eq!(plan.status, StatusCode::OK, "{}", plan.body);
    let plan = plan.json();
    assert_eq!(plan["outcome"], "schedule", "{plan}");
    assert_eq!(plan["hosts"].as_array().unwrap().len(), 7);
    assert_eq!(plan["preflight"]["passed"], true);
    let actions: Vec<(String, String)> = plan["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_string(),
                s["action_name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("web".to_string(), "drain_and_wait".to_string()),
            ("cache".to_string(), "drain_and_wait".to_string()),
            ("mysql".to_string(), "drain_and_wait".to_string()),
        ]
    );
    // The plan changed nothing.
    let listed = server.get("/api/v1/maintenances").await.json();
    assert_eq!(listed, json!([]));

    let answer = server
        .send(Method::POST, "/api/v1/maintenances", None, Some(&request))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let view = answer.json();
    assert_eq!(view["state"], "scheduled", "{view}");
    assert_eq!(serving(&server, None, "web-r1-1").await, StatusCode::OK);

    // Ten minutes before the window the flow starts: preflight, disable, in maintenance.
    server.clock.advance_ms(6 * MINUTE_MS);
    let view = wait_for_state(&server, None, "m-a", "in_maintenance").await;
    assert_eq!(view["hosts_out"].as_array().unwrap().len(), 7, "{view}");
    for name in ["web", "cache", "mysql"] {
        assert_eq!(service(&view, name)["status"], "disabled", "{view}");
    }
    assert_eq!(
        serving(&server, None, "web-r1-1").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(serving(&server, None, "web-r2-1").await, StatusCode::OK);
    let mut history: Vec<&str> = view["details"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    // Each disable step is an entry of its own.
    history.dedup();
    assert_eq!(
        history,
        ["scheduled", "preflight", "disabling", "in_maintenance"]
    );
    let stepped: usize = view["details"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["hosts"].as_array().unwrap().len())
        .sum();
    assert_eq!(stepped, 7, "every host is taken out in some step: {view}");

    // An operator puts one host back by hand: it stays in service.
    let answer = control(
        &server,
        None,
        "m-a",
        json!({ "action": "enable_host", "host": "web-r1-2", "reason": "needed for a canary" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(serving(&server, None, "web-r1-2").await, StatusCode::OK);
    assert_eq!(
        serving(&server, None, "web-r1-1").await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // The window ends: enable, done.
    server.clock.advance_ms(70 * MINUTE_MS);
    let view = wait_for_state(&server, None, "m-a", "done").await;
    assert_eq!(view["hosts_out"], json!([]), "{view}");
    assert_eq!(serving(&server, None, "web-r1-1").await, StatusCode::OK);
    let audit = server.get("/api/v1/audit?target=m-a").await;
    assert!(
        audit.body.contains("maintenance.enable_host"),
        "{}",
        audit.body
    );
}

#[tokio::test]
async fn scenario_b_three_racks_needs_approval_then_people_for_cache_and_mysql_and_finishes() {
    let server = start_with_row().await;
    let admin = create_token(&server, None, "admin", "admin").await;
    let alice = create_token(&server, Some(&admin), "alice", "operator").await;
    let bob = create_token(&server, Some(&admin), "bob", "operator").await;
    let viewer = create_token(&server, Some(&admin), "val", "viewer").await;
    let request = json!({
        "scope": "rack in (a-r4, a-r5, a-r6)", "type": "power", "start": "+2h",
        "duration": "2h", "owner": "dc-ops", "id": "m-b",
    });

    // Refused by default: the preflight fails for cache and mysql, explained.
    let answer = server
        .send(
            Method::POST,
            "/api/v1/maintenances",
            Some(&alice),
            Some(&request),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    let error = answer.json();
    assert_eq!(error["error"]["code"], "preflight_failed");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cache/main: 6 of 12 units left"),
        "{message}"
    );
    assert!(
        message.contains("mysql/main: 3 of 6 units left"),
        "{message}"
    );
    assert!(!message.contains("web/main"), "{message}");

    // Scheduled for people to handle: three racks also need a second person.
    let mut request = request;
    request["on_preflight_failure"] = json!("needs_human");
    let answer = server
        .send(
            Method::POST,
            "/api/v1/maintenances",
            Some(&alice),
            Some(&request),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let view = answer.json();
    assert_eq!(view["state"], "blocked", "{view}");
    assert!(view["why"].as_str().unwrap().contains("3 racks"), "{view}");

    // Not by the one who scheduled it; not by a viewer.
    let approve = json!({ "action": "approve", "reason": "rack power work, planned" });
    let answer = control(&server, Some(&alice), "m-b", approve.clone()).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    let answer = control(&server, Some(&viewer), "m-b", approve.clone()).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    let answer = control(&server, Some(&bob), "m-b", approve).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_for_state(&server, Some(&bob), "m-b", "scheduled").await;

    // The flow starts: web passes, cache and mysql wait for people.
    server.clock.advance_ms(115 * MINUTE_MS);
    let view = wait_for_state(&server, Some(&bob), "m-b", "needs_human").await;
    assert_eq!(service(&view, "web")["preflight_passed"], true);
    assert_eq!(service(&view, "cache")["status"], "needs_human", "{view}");
    assert_eq!(service(&view, "mysql")["status"], "needs_human", "{view}");
    assert!(
        view["unblock"]
            .as_str()
            .unwrap()
            .contains("levee maint confirm m-b"),
        "{view}"
    );
    assert_eq!(view["hosts_out"], json!([]), "nothing disabled yet: {view}");

    // People handle cache and mysql by hand and confirm; automation does web.
    for name in ["cache", "mysql"] {
        let answer = control(
            &server,
            Some(&alice),
            "m-b",
            json!({ "action": "confirm", "service": name, "reason": "moved by hand" }),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let view = wait_for_state(&server, Some(&bob), "m-b", "in_maintenance").await;
    assert_eq!(service(&view, "web")["status"], "disabled", "{view}");
    assert_eq!(service(&view, "cache")["status"], "by_hand", "{view}");
    // Twelve web servers, and the cache spare in a-r6, unavailable so no swap picks it.
    assert_eq!(view["hosts_out"].as_array().unwrap().len(), 13, "{view}");
    assert_eq!(
        view["details"]["spares_unavailable"],
        json!(["cache-spare-r6"])
    );
    assert_eq!(
        serving(&server, Some(&viewer), "web-r5-1").await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    server.clock.advance_ms(125 * MINUTE_MS);
    let view = wait_for_state(&server, Some(&bob), "m-b", "done").await;
    assert!(
        view["why"]
            .as_str()
            .unwrap()
            .contains("cache, mysql handled by hand"),
        "{view}"
    );
    assert_eq!(
        serving(&server, Some(&viewer), "web-r5-1").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_maintenance_requests_get_a_clear_error_and_store_nothing() {
    let server = start_with_row().await;
    let base = json!({ "scope": "rack=a-r1", "type": "network", "start": "+1h", "duration": "1h" });
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({ "scope": "" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "scope",
        ),
        (
            json!({ "scope": "rack=a-r9" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "matches no host",
        ),
        (
            json!({ "start": "2020-01-01T00:00:00Z" }),
            StatusCode::BAD_REQUEST,
            "in the past",
        ),
        (
            json!({ "start": "tomorrow" }),
            StatusCode::BAD_REQUEST,
            "`start`",
        ),
        (
            json!({ "duration": "0s" }),
            StatusCode::BAD_REQUEST,
            "`duration`",
        ),
        (json!({ "type": "any" }), StatusCode::BAD_REQUEST, "`type`"),
        (
            json!({ "fleet": "row-z" }),
            StatusCode::NOT_FOUND,
            "no fleet `row-z`",
        ),
        (
            json!({ "color": "blue" }),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ];
    for (change, status, needle) in cases {
        let mut body = base.clone();
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let answer = server
            .send(Method::POST, "/api/v1/maintenances", None, Some(&body))
            .await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        let error = answer.json();
        assert!(
            error["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {error}"
        );
    }
    assert_eq!(server.get("/api/v1/maintenances").await.json(), json!([]));

    // Overlapping maintenance on the same hosts is refused, naming the other one.
    let mut first = base.clone();
    first["id"] = json!("m-1");
    let answer = server
        .send(Method::POST, "/api/v1/maintenances", None, Some(&first))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let mut second = base.clone();
    second["scope"] = json!("host=web-r1-1");
    second["start"] = json!("+90m");
    let answer = server
        .send(Method::POST, "/api/v1/maintenances", None, Some(&second))
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "overlapping_maintenance");
    assert!(answer.body.contains("m-1 (web-r1-1)"), "{}", answer.body);
    let answer = control(
        &server,
        None,
        "m-1",
        json!({ "action": "approve", "reason": "" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    let answer = control(
        &server,
        None,
        "m-1",
        json!({ "action": "launch", "reason": "x" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    let listed = server.get("/api/v1/maintenances").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Cancelled before anything changed: at once, and its capacity is free again.
    let answer = control(
        &server,
        None,
        "m-1",
        json!({ "action": "cancel", "reason": "moved" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["state"], "cancelled");
    let answer = server
        .send(Method::POST, "/api/v1/maintenances", None, Some(&second))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

#[tokio::test]
async fn concurrent_schedules_never_take_more_than_the_headroom() {
    let server = start_with_row().await;
    // mysql/main: 6 hosts, floor 4: two single-rack maintenances overlapping in time fit,
    // a third does not. Six clients ask at once, one rack each.
    let mut asks = Vec::new();
    for rack in 1..=6 {
        let body = json!({
            "scope": format!("rack=a-r{rack}, label:role=mysql"), "type": "reboot",
            "start": "+1h", "duration": "20m", "id": format!("m-r{rack}"),
        });
        let client = server.client.clone();
        let url = server.url("/api/v1/maintenances");
        asks.push(tokio::spawn(async move {
            client.post(url).json(&body).send().await.unwrap().status()
        }));
    }
    let mut accepted = 0;
    let mut refused = 0;
    for ask in asks {
        match ask.await.unwrap() {
            StatusCode::CREATED => accepted += 1,
            StatusCode::CONFLICT => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((accepted, refused), (2, 4));
    let calendar = server
        .get("/api/v1/maintenances/calendar?by=rack&days=1")
        .await;
    assert_eq!(calendar.status, StatusCode::OK, "{}", calendar.body);
    let calendar = calendar.json();
    let entries: usize = calendar["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["entries"].as_array().unwrap().len())
        .sum();
    assert_eq!(entries, 2, "{calendar}");
}

/// Policies under which the cache's own runbook fails, and mysql rides a power cut out.
const FAILING_POLICIES_YAML: &str = "\
kind: MaintenancePolicy
name: web
service: web
rules:
  - type: any
    action: drain_and_wait
---
kind: MaintenancePolicy
name: cache
service: cache
max_failed_hosts: 0
rules:
  - type: power
    action:
      runbook: cache-drain-broken
---
kind: MaintenancePolicy
name: mysql
service: mysql
rules:
  - type: any
    action: nothing
---
kind: Runbook
name: cache-drain-broken
params:
  hosts: { required: true }
  maintenance: { required: true }
tasks:
  - id: drain
    stage: shell
    with: { command: [sh, -c, \"echo cannot reach the load balancer; exit 3\"] }
";

/// Collects the JSON bodies POSTed to it.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = received.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/hook"), received)
}

async fn wait_for_webhook(received: &std::sync::Mutex<Vec<Value>>, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(common::WAIT_TIMEOUT_MS);
    loop {
        if let Some(body) = received
            .lock()
            .unwrap()
            .iter()
            .find(|b| b["kind"] == kind)
            .cloned()
        {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} webhook; got {:?}",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(common::WAIT_POLL_INTERVAL_MS)).await;
    }
}

#[tokio::test]
async fn failed_automation_calls_the_owner_and_the_deadline_falls_back_to_cancel() {
    let (url, received) = webhook_receiver().await;
    let server = common::start_with(common::Options {
        webhooks: levee_server::webhooks::WebhookConfig {
            urls: vec![url],
            ..Default::default()
        },
        ..common::Options::default()
    })
    .await;
    apply(
        &server,
        &[
            ("row.yaml", ROW_YAML),
            ("policies.yaml", FAILING_POLICIES_YAML),
        ],
    )
    .await;
    let request = json!({
        "scope": "rack=a-r1", "type": "power", "start": "+15m", "duration": "20m",
        "id": "m-f", "human_deadline": "+30m", "on_deadline": "cancel",
    });
    let answer = server
        .send(Method::POST, "/api/v1/maintenances", None, Some(&request))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);

    // The flow starts; the cache's runbook fails; the cache needs a person.
    server.clock.advance_ms(6 * MINUTE_MS);
    let view = wait_for_state(&server, None, "m-f", "needs_human").await;
    let cache = service(&view, "cache");
    assert_eq!(cache["status"], "needs_human", "{view}");
    assert_eq!(cache["run_name"], "maint-m-f-cache-disable-1");
    assert!(
        cache["note"].as_str().unwrap().contains("failed"),
        "{cache}"
    );
    assert_eq!(service(&view, "web")["status"], "disabled", "{view}");
    assert_eq!(service(&view, "mysql")["status"], "disabled", "{view}");
    let runs = server.get("/api/v1/runs").await.json();
    assert!(
        runs.to_string().contains("maint-m-f-cache-disable-1"),
        "the policy's runbook ran: {runs}"
    );
    let notice = wait_for_webhook(&received, "maintenance_needs_human").await;
    assert_eq!(notice["maintenance"], "m-f");
    assert!(
        notice["service_owners"]
            .as_array()
            .unwrap()
            .contains(&json!("cache-team")),
        "{notice}"
    );
    assert!(
        notice["text"].as_str().unwrap().contains("cache"),
        "{notice}"
    );

    // Nobody confirms by the deadline: the declared fallback gives the hosts back and
    // cancels.
    server.clock.advance_ms(30 * MINUTE_MS);
    let view = wait_for_state(&server, None, "m-f", "cancelled").await;
    assert_eq!(view["hosts_out"], json!([]), "{view}");
    assert!(view["why"].as_str().unwrap().contains("deadline"), "{view}");
    assert_eq!(serving(&server, None, "web-r1-1").await, StatusCode::OK);
    wait_for_webhook(&received, "maintenance_cancelled").await;
    // Its capacity is free again: the same rack can be scheduled.
    let mut again = request.clone();
    again["id"] = json!("m-g");
    again["start"] = json!("+5m");
    again["human_deadline"] = json!("+20m");
    let answer = server
        .send(Method::POST, "/api/v1/maintenances", None, Some(&again))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

/// The rails of the disable flow: one rack per step, and the server's removal rate limit per
/// pool, which holds a step back (saying until when) and lets it go once the window moves on.
#[tokio::test]
async fn disabling_goes_one_rack_per_step_within_the_removal_rate_limits() {
    let server = common::start_with(common::Options {
        removal_limits: Some(levee_server::maint::RemovalLimits {
            window_ms: 10 * MINUTE_MS as u64,
            max_per_pool: Some(4),
            max_overall: None,
        }),
        ..common::Options::default()
    })
    .await;
    apply(
        &server,
        &[
            ("row.yaml", ROW_YAML),
            ("policies.yaml", POLICIES_YAML),
            ("runbooks.yaml", RUNBOOKS_YAML),
        ],
    )
    .await;
    let rack_of = |host: &str| host.split('-').nth(1).unwrap().to_string();

    // Bad pacing is refused before anything is stored.
    for (field, value, says) in [
        (
            "one_domain_per_step",
            "galaxy",
            "not a failure domain level",
        ),
        ("step_interval", "soon", "step_interval"),
        ("step_interval", "3d", "at most 24 hours"),
    ] {
        let mut request = json!({
            "scope": "rack in (a-r1, a-r2), label:role=web", "type": "network", "start": "+15m",
            "duration": "1h",
        });
        request[field] = json!(value);
        let answer = server
            .send(Method::POST, "/api/v1/maintenances", None, Some(&request))
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert!(answer.body.contains(says), "{field}: {}", answer.body);
    }
    assert_eq!(server.get("/api/v1/maintenances").await.json(), json!([]));

    let request = json!({
        "scope": "rack in (a-r1, a-r2), label:role=web", "type": "network", "start": "+15m", "duration": "1h",
        "id": "m-r", "one_domain_per_step": "rack",
    });
    let plan = server
        .send(
            Method::POST,
            "/api/v1/maintenances/plan",
            None,
            Some(&request),
        )
        .await;
    assert_eq!(plan.status, StatusCode::OK, "{}", plan.body);
    let plan = plan.json();
    assert_eq!(plan["outcome"], "schedule", "{plan}");
    assert_eq!(plan["rollout"]["one_domain_per_step"], "rack", "{plan}");
    assert_eq!(plan["removal_limits"]["max_per_pool"], 4, "{plan}");
    let planned = plan["steps"].as_array().unwrap();
    let planned_hosts: usize = planned
        .iter()
        .map(|s| s["hosts"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        planned_hosts,
        plan["hosts"].as_array().unwrap().len(),
        "{plan}"
    );
    for step in planned {
        let racks: std::collections::BTreeSet<String> = step["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| rack_of(h.as_str().unwrap()))
            .collect();
        assert_eq!(racks.len(), 1, "one rack per planned step: {step}");
        assert_eq!(
            step["domain"],
            json!(format!("a-{}", racks.first().unwrap()))
        );
    }

    let answer = server
        .send(Method::POST, "/api/v1/maintenances", None, Some(&request))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    server.clock.advance_ms(6 * MINUTE_MS);

    // Rack a-r1's web hosts use up the web pool's removals for ten minutes: rack a-r2
    // waits, and says why and until when.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(common::WAIT_TIMEOUT_MS);
    let view = loop {
        let view = maintenance(&server, None, "m-r").await;
        if view["state"] == "disabling"
            && view["why"].as_str().unwrap().contains("removal rate limit")
        {
            break view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never held back by the removal rate limit: {view}"
        );
        tokio::time::sleep(Duration::from_millis(common::WAIT_POLL_INTERVAL_MS)).await;
    };
    assert!(view["why"].as_str().unwrap().contains("web"), "{view}");
    assert!(
        view["unblock"].as_str().unwrap().contains("window"),
        "{view}"
    );
    let steps = view["details"]["steps"].as_array().unwrap().clone();
    assert!(!steps.is_empty(), "{view}");
    for step in &steps {
        assert_eq!(step["domain"], "a-r1", "only rack a-r1 so far: {view}");
    }
    assert_eq!(
        serving(&server, None, "web-r1-1").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(serving(&server, None, "web-r2-1").await, StatusCode::OK);

    // The window moves on: rack a-r2 goes, and the maintenance holds.
    server.clock.advance_ms(11 * MINUTE_MS);
    let view = wait_for_state(&server, None, "m-r", "in_maintenance").await;
    let steps = view["details"]["steps"].as_array().unwrap();
    let domains: Vec<&str> = steps
        .iter()
        .map(|s| s["domain"].as_str().unwrap())
        .collect();
    let mut sorted = domains.clone();
    sorted.sort();
    assert_eq!(domains, sorted, "racks one after the other: {view}");
    assert_eq!(*domains.last().unwrap(), "a-r2", "{view}");
    let first_r2 = steps.iter().find(|s| s["domain"] == "a-r2").unwrap();
    let last_r1 = steps.iter().rfind(|s| s["domain"] == "a-r1").unwrap();
    assert!(
        first_r2["at_ms"].as_i64().unwrap() - last_r1["at_ms"].as_i64().unwrap()
            >= 10 * MINUTE_MS - 60_000,
        "rack a-r2 waited for the window: {view}"
    );
    assert_eq!(
        serving(&server, None, "web-r2-1").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
