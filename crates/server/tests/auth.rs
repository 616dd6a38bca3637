//! Bearer tokens: anonymous admin while no token exists; 401 without a valid token once one
//! does; roles (viewer, operator, admin); scopes to one machine or a group; revocation; and the
//! audit log recording who did what, with what outcome, for accepted and refused reports.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Machines `vm-1` and `vm-2` of one definition, each built in two steps.
const VM_DEFINITION_YAML: &str = "\
kind: StateMachine
name: vm
instances: [vm-1, vm-2]
states:
  - name: installing
    on: { done: configuring }
  - name: configuring
    on: { done: serving }
  - name: serving
    final: true
";

async fn start_with_vms() -> TestServer {
    let server = common::start().await;
    server.apply("vm.yaml", VM_DEFINITION_YAML).await;
    server
}

/// Creates a token as `admin` (or anonymously while none exists) and returns its secret.
async fn create_token(
    server: &TestServer,
    admin: Option<&str>,
    name: &str,
    role: &str,
    scope: Option<&str>,
) -> String {
    let body = json!({ "name": name, "role": role, "scope": scope });
    let answer = server
        .send(Method::POST, "/api/v1/tokens", admin, Some(&body))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "create token {name}: {}",
        answer.body
    );
    let created = answer.json();
    assert_eq!(created["token"]["name"], name);
    let secret = created["secret"]
        .as_str()
        .expect("the secret is shown once")
        .to_string();
    assert!(
        secret.starts_with(levee_server::auth::TOKEN_PREFIX),
        "{secret}"
    );
    secret
}

async fn put_as(server: &TestServer, token: Option<&str>, path: &str) -> common::Answer {
    server.send(Method::PUT, path, token, None).await
}

async fn get_as(server: &TestServer, token: Option<&str>, path: &str) -> common::Answer {
    server.send(Method::GET, path, token, None).await
}

#[tokio::test]
async fn without_tokens_everyone_is_the_anonymous_admin() {
    let server = start_with_vms().await;
    let whoami = server.get("/api/v1/whoami").await.json();
    assert_eq!(whoami["name"], "anonymous", "{whoami}");
    assert_eq!(whoami["role"], "admin");
    assert_eq!(whoami["auth_required"], false);

    assert_eq!(
        server
            .put("/machines/vm-1/state?state=installing")
            .await
            .status,
        StatusCode::OK
    );
    let history = server.history("vm-1").await;
    assert_eq!(
        history.last().map(|e| e["actor"].clone()),
        Some(json!("anonymous"))
    );
    let audit = server.get("/api/v1/audit?target=vm-1").await.json();
    assert_eq!(audit[0]["actor"], "anonymous", "{audit}");
}

#[tokio::test]
async fn once_a_token_exists_requests_need_a_valid_one() {
    let server = start_with_vms().await;
    let admin = create_token(&server, None, "admin", "admin", None).await;

    for (method, path) in [
        (Method::GET, "/machines/vm-1/state?state=installing"),
        (Method::PUT, "/machines/vm-1/state?state=installing"),
        (Method::GET, "/api/v1/machines"),
        (Method::GET, "/api/v1/whoami"),
    ] {
        let answer = server.send(method.clone(), path, None, None).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        assert_eq!(
            answer.error_code(),
            "unauthorized",
            "{method} {path}: a JSON error"
        );

        let answer = server
            .send(method.clone(), path, Some("lvt_0000"), None)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with an unknown token"
        );
        assert_eq!(answer.error_code(), "unauthorized");
    }
    let not_bearer = server
        .client
        .get(server.url("/api/v1/whoami"))
        .header("authorization", format!("Basic {admin}"))
        .send()
        .await
        .expect("GET with a Basic header");
    assert_eq!(not_bearer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        server.machine_as(Some(&admin), "vm-1").await["state"],
        "installing",
        "nothing moved"
    );

    let whoami = get_as(&server, Some(&admin), "/api/v1/whoami").await.json();
    assert_eq!(whoami["name"], "admin", "{whoami}");
    assert_eq!(whoami["auth_required"], true);
    assert_eq!(
        put_as(
            &server,
            Some(&admin),
            "/machines/vm-1/state?state=installing"
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_viewer_can_read_but_not_report() {
    let server = start_with_vms().await;
    let admin = create_token(&server, None, "admin", "admin", None).await;
    let viewer = create_token(&server, Some(&admin), "dashboard", "viewer", None).await;

    let check = get_as(
        &server,
        Some(&viewer),
        "/machines/vm-1/state?state=installing",
    )
    .await;
    assert_eq!(check.status, StatusCode::OK, "{}", check.body);
    assert_eq!(
        get_as(&server, Some(&viewer), "/api/v1/machines")
            .await
            .status,
        StatusCode::OK
    );

    let report = put_as(
        &server,
        Some(&viewer),
        "/machines/vm-1/state?state=installing",
    )
    .await;
    assert_eq!(report.status, StatusCode::FORBIDDEN, "{}", report.body);
    assert_eq!(report.error_code(), "forbidden");
    let event = server
        .send(
            Method::POST,
            "/api/v1/machines/vm-1/events",
            Some(&viewer),
            Some(&json!({ "state": "installing" })),
        )
        .await;
    assert_eq!(event.status, StatusCode::FORBIDDEN);
    let token = server
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&viewer),
            Some(&json!({ "name": "x", "role": "admin" })),
        )
        .await;
    assert_eq!(
        token.status,
        StatusCode::FORBIDDEN,
        "a viewer cannot make itself an admin"
    );
    assert_eq!(
        server.machine_as(Some(&admin), "vm-1").await["state"],
        "installing"
    );
}

#[tokio::test]
async fn a_token_scoped_to_one_machine_touches_only_that_machine() {
    let server = start_with_vms().await;
    let admin = create_token(&server, None, "admin", "admin", None).await;
    let vm1 = create_token(
        &server,
        Some(&admin),
        "vm-1-host",
        "operator",
        Some("machine:vm-1"),
    )
    .await;

    assert_eq!(
        put_as(&server, Some(&vm1), "/machines/vm-1/state?state=installing")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_as(
            &server,
            Some(&vm1),
            "/machines/vm-1/state?state=configuring"
        )
        .await
        .status,
        StatusCode::OK
    );

    let other = put_as(&server, Some(&vm1), "/machines/vm-2/state?state=installing").await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.body);
    assert_eq!(other.error_code(), "forbidden");
    assert_eq!(
        get_as(&server, Some(&vm1), "/machines/vm-2/state?state=installing")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_as(&server, Some(&vm1), "/api/v1/machines/vm-2")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        server.machine_as(Some(&admin), "vm-2").await["state"],
        "installing",
        "vm-2 did not move"
    );

    let listed = get_as(&server, Some(&vm1), "/api/v1/machines").await.json();
    let ids: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["vm-1"], "a scoped listing shows only its machine");

    let create = server
        .send(
            Method::POST,
            "/api/v1/machines",
            Some(&vm1),
            Some(&json!({ "machines": [{ "id": "vm-3", "definition": "vm" }] })),
        )
        .await;
    assert_eq!(
        create.status,
        StatusCode::FORBIDDEN,
        "a scoped token cannot create machines"
    );
}

/// Machines created before the scoped one, more than a default page of the listing holds.
const MACHINES_BEFORE_THE_SCOPED_ONE: usize = 150;

#[tokio::test]
async fn a_machine_scoped_listing_finds_its_machine_behind_a_page_of_others() {
    let server = common::start().await;
    server
        .apply("counter.yaml", common::COUNTER_DEFINITION_YAML)
        .await;
    let ids: Vec<String> = (0..MACHINES_BEFORE_THE_SCOPED_ONE)
        .map(|n| format!("a-{n:03}"))
        .collect();
    let mut specs: Vec<(&str, &str, Option<&str>)> = ids
        .iter()
        .map(|id| (id.as_str(), "counter", None))
        .collect();
    specs.push(("z-1", "counter", None));
    server.create_machines(&specs).await;
    let admin = create_token(&server, None, "admin", "admin", None).await;
    let z1 = create_token(
        &server,
        Some(&admin),
        "z-1-host",
        "operator",
        Some("machine:z-1"),
    )
    .await;

    // Page as a client would: until a page comes back empty.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _page in 0..10 {
        let path = match &after {
            None => "/api/v1/machines".to_string(),
            Some(last) => format!("/api/v1/machines?after={last}"),
        };
        let page = get_as(&server, Some(&z1), &path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let page = page.json().as_array().cloned().unwrap_or_default();
        let Some(last) = page.last() else { break };
        after = last["id"].as_str().map(str::to_string);
        seen.extend(
            page.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string)),
        );
    }
    assert_eq!(
        seen,
        ["z-1"],
        "the scoped token's listing, paged to its end"
    );
}

#[tokio::test]
async fn a_token_scoped_to_a_group_touches_only_that_group() {
    let server = common::start().await;
    server
        .apply("counter.yaml", common::COUNTER_DEFINITION_YAML)
        .await;
    server
        .create_machines(&[
            ("web-1", "counter", Some("web")),
            ("web-2", "counter", Some("web")),
            ("db-1", "counter", Some("db")),
        ])
        .await;
    let admin = create_token(&server, None, "admin", "admin", None).await;
    let web = create_token(
        &server,
        Some(&admin),
        "web-deployer",
        "operator",
        Some("group:web"),
    )
    .await;

    for id in ["web-1", "web-2"] {
        let answer = put_as(
            &server,
            Some(&web),
            &format!("/machines/{id}/state?state=counting"),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{id}: {}", answer.body);
    }
    let db = put_as(&server, Some(&web), "/machines/db-1/state?state=counting").await;
    assert_eq!(db.status, StatusCode::FORBIDDEN, "{}", db.body);
    assert_eq!(server.machine_as(Some(&admin), "db-1").await["counter"], 0);

    let listed = get_as(&server, Some(&web), "/api/v1/machines").await.json();
    let ids: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["web-1", "web-2"],
        "a group listing shows only the group"
    );
    // Asking for another group is refused or answered with nothing; never with machines
    // that are not in the group asked for.
    let forced = get_as(&server, Some(&web), "/api/v1/machines?group=db").await;
    if forced.status != StatusCode::FORBIDDEN {
        assert_eq!(forced.status, StatusCode::OK, "{}", forced.body);
        let listed = forced.json();
        let ids: Vec<&str> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert!(
            ids.is_empty(),
            "`?group=db` with a `group:web` token listed {ids:?}"
        );
    }
}

#[tokio::test]
async fn a_revoked_token_answers_401() {
    let server = start_with_vms().await;
    let admin = create_token(&server, None, "admin", "admin", None).await;
    let ci = create_token(&server, Some(&admin), "ci", "operator", None).await;
    assert_eq!(
        get_as(&server, Some(&ci), "/api/v1/whoami").await.status,
        StatusCode::OK
    );

    let revoke = server
        .send(Method::DELETE, "/api/v1/tokens/ci", Some(&admin), None)
        .await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT, "{}", revoke.body);
    let answer = put_as(&server, Some(&ci), "/machines/vm-1/state?state=installing").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    assert_eq!(
        get_as(&server, Some(&ci), "/api/v1/whoami").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_as(&server, Some(&admin), "/api/v1/whoami").await.status,
        StatusCode::OK,
        "others still work"
    );

    let again = server
        .send(Method::DELETE, "/api/v1/tokens/ci", Some(&admin), None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "revoking twice");
    let reuse = server
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&admin),
            Some(&json!({ "name": "ci", "role": "operator" })),
        )
        .await;
    assert_eq!(
        reuse.status,
        StatusCode::CONFLICT,
        "a revoked name is not reused: {}",
        reuse.body
    );

    let tokens = get_as(&server, Some(&admin), "/api/v1/tokens").await;
    assert_eq!(tokens.status, StatusCode::OK);
    assert!(!tokens.body.contains(&ci), "secrets are never listed");
    let ci_row = tokens
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == "ci")
        .cloned();
    assert!(
        ci_row.is_some_and(|t| t["revoked_at"].is_string()),
        "{}",
        tokens.body
    );
}

#[tokio::test]
async fn tokens_and_revocations_survive_a_restart() {
    // Tokens are read at start-up: a restarted server still requires them, and still
    // refuses a revoked one.
    let server = start_with_vms().await;
    let admin = create_token(&server, None, "admin", "admin", None).await;
    let ci = create_token(&server, Some(&admin), "ci", "operator", None).await;
    server
        .send(Method::DELETE, "/api/v1/tokens/ci", Some(&admin), None)
        .await;
    let server = server.restart(common::START_MS + 1_000, None).await;
    assert_eq!(
        get_as(&server, None, "/api/v1/whoami").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_as(&server, Some(&ci), "/api/v1/whoami").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_as(&server, Some(&admin), "/api/v1/whoami").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_audit_log_records_accepted_and_refused_reports() {
    let server = start_with_vms().await;
    let admin = create_token(&server, None, "admin", "admin", None).await;
    let ci = create_token(&server, Some(&admin), "ci", "operator", None).await;

    assert_eq!(
        put_as(
            &server,
            Some(&ci),
            "/machines/vm-1/state?state=installing&reporter=host-1"
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        put_as(&server, Some(&ci), "/machines/vm-1/state?state=installing")
            .await
            .status,
        StatusCode::NOT_ACCEPTABLE,
        "a report of a state already left"
    );
    assert_eq!(
        put_as(&server, Some(&ci), "/machines/vm-1/state?state=nowhere")
            .await
            .status,
        StatusCode::NOT_FOUND,
        "a report of an unknown state"
    );

    let viewer_audit = create_token(&server, Some(&admin), "viewer", "viewer", None).await;
    assert_eq!(
        get_as(&server, Some(&viewer_audit), "/api/v1/audit")
            .await
            .status,
        StatusCode::FORBIDDEN,
        "the audit log is not for viewers"
    );

    let audit = get_as(&server, Some(&admin), "/api/v1/audit?target=vm-1").await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    let entries: Vec<Value> = audit.json().as_array().cloned().unwrap_or_default();
    let reports: Vec<(String, String, String, Value)> = entries
        .iter()
        .filter(|e| e["action"] == "machine.report")
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_string();
            (
                text("actor"),
                text("target"),
                text("outcome"),
                e["detail"]["state"].clone(),
            )
        })
        .collect();
    assert_eq!(
        reports,
        [
            (
                "ci".to_string(),
                "vm-1".to_string(),
                "ok".to_string(),
                json!("installing")
            ),
            (
                "ci".to_string(),
                "vm-1".to_string(),
                "not_current".to_string(),
                json!("installing")
            ),
            (
                "ci".to_string(),
                "vm-1".to_string(),
                "unknown_state".to_string(),
                json!("nowhere")
            ),
        ],
        "every report, accepted or refused, with who and what: {entries:?}"
    );
    let accepted = entries
        .iter()
        .find(|e| e["action"] == "machine.report")
        .expect("an entry");
    assert_eq!(accepted["detail"]["reporter"], "host-1", "{accepted}");
    assert!(
        accepted["detail"]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{accepted}"
    );

    let by_actor = get_as(&server, Some(&admin), "/api/v1/audit?actor=admin")
        .await
        .json();
    let actions: Vec<&str> = by_actor
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"token.create"),
        "token changes are audited too: {actions:?}"
    );
}

/// Slack on top of the server's token refresh interval before a test decides a token change
/// made by another process was never picked up, in milliseconds.
const TOKEN_REFRESH_SLACK_MS: u64 = 5_000;

/// Asks `whoami` with `token` (or none) until it answers `status`; fails the test after the server's
/// refresh interval and some slack.
async fn wait_for_whoami_status(server: &TestServer, token: Option<&str>, status: StatusCode) {
    let wait_ms = levee_server::timers::TOKEN_REFRESH_INTERVAL_MS + TOKEN_REFRESH_SLACK_MS;
    let polls = wait_ms / common::WAIT_POLL_INTERVAL_MS;
    let mut last = StatusCode::OK;
    for _ in 0..polls {
        last = get_as(server, token, "/api/v1/whoami").await.status;
        if last == status {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(
            common::WAIT_POLL_INTERVAL_MS,
        ))
        .await;
    }
    panic!("whoami still answered {last}, not {status}, after {wait_ms} ms");
}

/// What `levee token create --database` does: writes a token straight into the store, where
/// the running server only finds it by reading the store again. Returns the secret.
async fn create_token_in_store(server: &TestServer, name: &str, role: &str) -> String {
    let secret = levee_server::auth::new_secret();
    let record = levee_store::TokenRecord {
        name: name.to_string(),
        role: role.to_string(),
        scope: None,
        hash: levee_server::auth::hash_secret(&secret),
        created_at_ms: common::START_MS,
        created_by: "test".to_string(),
        revoked_at_ms: None,
    };
    server
        .app
        .store
        .create_token(record, None)
        .await
        .expect("write a token to the store");
    secret
}

#[tokio::test]
async fn tokens_written_to_the_store_by_another_process_take_effect_without_a_restart() {
    let server = start_with_vms().await;
    let admin = create_token_in_store(&server, "offline-admin", "admin").await;
    let ci = create_token_in_store(&server, "offline-ci", "operator").await;
    // While no token existed, everyone was the anonymous admin; once the server has read the
    // new tokens, a request without one is refused and each token is who it says.
    wait_for_whoami_status(&server, None, StatusCode::UNAUTHORIZED).await;
    let whoami = get_as(&server, Some(&admin), "/api/v1/whoami").await;
    assert_eq!(whoami.status, StatusCode::OK, "{}", whoami.body);
    assert_eq!(whoami.json()["name"], "offline-admin");
    assert_eq!(
        get_as(&server, Some(&ci), "/api/v1/whoami").await.json()["name"],
        "offline-ci"
    );

    let revoked = server
        .app
        .store
        .revoke_token("offline-ci", common::START_MS, None)
        .await;
    assert!(
        revoked.expect("revoke in the store"),
        "the token was active"
    );
    wait_for_whoami_status(&server, Some(&ci), StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        get_as(&server, Some(&admin), "/api/v1/whoami").await.status,
        StatusCode::OK
    );
}

/// Revoking the last active token must not open the server to everyone: a server that once
/// required tokens (perhaps listening on a network) keeps requiring them.
#[tokio::test]
async fn revoking_the_last_token_keeps_authentication_on() {
    let server = start_with_vms().await;
    let admin = create_token(&server, None, "admin", "admin", None).await;
    let revoke = server
        .send(Method::DELETE, "/api/v1/tokens/admin", Some(&admin), None)
        .await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT, "{}", revoke.body);

    let with_revoked = get_as(&server, Some(&admin), "/api/v1/whoami").await;
    assert_eq!(
        with_revoked.status,
        StatusCode::UNAUTHORIZED,
        "the revoked token: {}",
        with_revoked.body
    );
    let anonymous = put_as(&server, None, "/machines/vm-1/state?state=installing").await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "a report without a token: {}",
        anonymous.body
    );
    let stored = server
        .app
        .store
        .machine("vm-1")
        .await
        .expect("read the store")
        .expect("vm-1");
    assert_eq!(
        stored.state, "installing",
        "the report without a token changed nothing"
    );
}

/// A report refused for the caller's role or scope is a refused report too: the audit log is
/// where an operator looks for a token trying machines it may not touch.
#[tokio::test]
async fn reports_refused_for_role_or_scope_are_audited() {
    let server = start_with_vms().await;
    let admin = create_token(&server, None, "admin", "admin", None).await;
    let viewer = create_token(&server, Some(&admin), "dashboard", "viewer", None).await;
    let vm1 = create_token(
        &server,
        Some(&admin),
        "vm-1-host",
        "operator",
        Some("machine:vm-1"),
    )
    .await;

    let by_viewer = put_as(
        &server,
        Some(&viewer),
        "/machines/vm-1/state?state=installing",
    )
    .await;
    assert_eq!(by_viewer.status, StatusCode::FORBIDDEN);
    let out_of_scope = put_as(&server, Some(&vm1), "/machines/vm-2/state?state=installing").await;
    assert_eq!(out_of_scope.status, StatusCode::FORBIDDEN);

    let audit = get_as(&server, Some(&admin), "/api/v1/audit").await.json();
    let refused: Vec<(String, String, String)> = audit
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "machine.report")
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_string();
            (text("actor"), text("target"), text("outcome"))
        })
        .collect();
    assert_eq!(
        refused,
        [
            (
                "dashboard".to_string(),
                "vm-1".to_string(),
                "forbidden".to_string()
            ),
            (
                "vm-1-host".to_string(),
                "vm-2".to_string(),
                "forbidden".to_string()
            ),
        ],
        "refused reports in the audit log: {audit}"
    );
}

#[tokio::test]
async fn each_created_machine_has_its_own_audit_entry() {
    let server = common::start().await;
    server
        .apply("counter.yaml", common::COUNTER_DEFINITION_YAML)
        .await;
    server
        .create_machines(&[("m1", "counter", None), ("m2", "counter", Some("web"))])
        .await;
    let audit = server.get("/api/v1/audit?target=m2").await.json();
    let entries = audit.as_array().expect("a list");
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["action"], "machine.create");
    assert_eq!(entries[0]["outcome"], "ok");
    assert_eq!(entries[0]["detail"]["group"], "web");
}
