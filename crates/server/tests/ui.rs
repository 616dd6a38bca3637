//! The web UI over HTTP, without a browser: pages, escaping, the Content-Security-Policy, the
//! sign-in cookie and its CSRF header, and what a viewer is shown and allowed. The browser
//! tests (`ui_browser.rs`) drive the same pages in chromium.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, start};
use levee_server::auth::{UI_COOKIE, UI_REQUEST_HEADER};
use levee_server::ui::CONTENT_SECURITY_POLICY;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long a test waits for a run to reach a state, in milliseconds.
const RUN_WAIT_MS: u64 = 10_000;

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(common::REQUEST_TIMEOUT_MS))
        .build()
        .expect("build an HTTP client")
}

/// A runbook whose first task stalls on a health check whose command (and so the stall
/// reason) holds markup.
fn hostile_yaml() -> &'static str {
    "\
kind: Runbook
name: hostile
tasks:
  - id: shift
    stage: log
    with: { message: shifting }
    health:
      - shell: { command: [test, -e, \"<img src=x onerror=alert(1)>\"] }
  - id: after
    stage: log
    needs: [shift]
    with: { message: after }
"
}

async fn start_run(server: &TestServer, token: Option<&str>, runbook: &str) -> String {
    let answer = server
        .send(
            Method::POST,
            &format!("/api/v1/runbooks/{runbook}/runs"),
            token,
            Some(&json!({})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.json()["id"].as_str().unwrap().to_string()
}

async fn wait_for_task(
    server: &TestServer,
    token: Option<&str>,
    run: &str,
    task: &str,
    status: &str,
) {
    let deadline = Instant::now() + Duration::from_millis(RUN_WAIT_MS);
    loop {
        let answer = server
            .send(Method::GET, &format!("/api/v1/runs/{run}"), token, None)
            .await;
        let view: Value = answer.json();
        let now = view["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == task)
            .map(|t| t["status"].clone());
        if now == Some(json!(status)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {task} never got {status}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_token(server: &TestServer, admin: Option<&str>, name: &str, role: &str) -> String {
    let body = json!({ "name": name, "role": role });
    let answer = server
        .send(Method::POST, "/api/v1/tokens", admin, Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()["secret"].as_str().unwrap().to_string()
}

async fn get_page(server: &TestServer, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = no_redirects().get(server.url(path));
    if let Some(secret) = cookie {
        request = request.header("cookie", format!("{UI_COOKIE}={secret}"));
    }
    request.send().await.expect("GET a page")
}

#[tokio::test]
async fn pages_escape_task_output_and_carry_a_strict_policy() {
    let server = start().await;
    server.apply("hostile.yaml", hostile_yaml()).await;
    let run = start_run(&server, None, "hostile").await;
    wait_for_task(&server, None, &run, "shift", "stalled").await;

    for path in [
        "/ui/".to_string(),
        format!("/ui/runs/{run}"),
        format!("/ui/runs/{run}/parts"),
        format!("/ui/runs/{run}/report"),
        format!("/ui/runs/{run}/tasks/shift"),
        "/ui/pause".to_string(),
        "/ui/runbooks".to_string(),
        "/ui/runbooks/hostile?plan=1".to_string(),
        "/ui/fleet".to_string(),
        "/ui/maintenances".to_string(),
        "/ui/machines".to_string(),
        "/ui/drain-tests".to_string(),
    ] {
        let page = get_page(&server, &path, None).await;
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        assert_eq!(
            page.headers()["content-security-policy"],
            CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        let html = page.text().await.unwrap();
        assert!(!html.contains("<img"), "{path} lets markup through: {html}");
        assert!(!html.contains("<script>"), "{path} has an inline script");
        assert!(!html.contains("style="), "{path} has an inline style");
    }
    let page = get_page(&server, &format!("/ui/runs/{run}"), None).await;
    let html = page.text().await.unwrap();
    assert!(
        html.contains("&#60;img src=x onerror=alert(1)&#62;") || html.contains("&lt;img src=x"),
        "{html}"
    );
    // The stalled task says why it waits, and its dependent names it.
    assert!(html.contains("a health check does not hold"), "{html}");
    assert!(html.contains("waits for shift (stalled)"), "{html}");
    // Without tokens the caller is the anonymous admin and gets the controls.
    assert!(html.contains("data-api=\"control\""));
    assert!(html.contains("anonymous (admin)"));
    assert!(html.contains(&format!("data-run=\"{run}\"")));

    let script = get_page(&server, "/ui/static/levee.js", None).await;
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let style = get_page(&server, "/ui/static/levee.css", None).await;
    assert!(
        style.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    let root = get_page(&server, "/ui", None).await;
    assert_eq!(root.headers()["location"], "/ui/");
    // No sign-in without tokens.
    let login = get_page(&server, "/ui/login", None).await;
    assert_eq!(login.headers()["location"], "/ui/");
    let missing = get_page(&server, "/ui/runs/no-such-run", None).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_that_needs_the_ui_header_to_change_things() {
    let server = start().await;
    let admin = create_token(&server, None, "admin", "admin").await;
    let operator = create_token(&server, Some(&admin), "alice", "operator").await;
    let viewer = create_token(&server, Some(&admin), "wall", "viewer").await;
    server
        .apply_as(Some(&admin), "hostile.yaml", hostile_yaml())
        .await;
    let run = start_run(&server, Some(&admin), "hostile").await;
    wait_for_task(&server, Some(&admin), &run, "shift", "stalled").await;

    // Signed out: pages send the browser to the sign-in form.
    let page = get_page(&server, "/ui/", None).await;
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()["location"], "/ui/login");
    let form = get_page(&server, "/ui/login", None).await;
    assert_eq!(form.status(), StatusCode::OK);
    assert!(form.text().await.unwrap().contains("name=\"token\""));

    let client = no_redirects();
    let login = |token: String, origin: Option<String>| {
        let mut request = client
            .post(server.url("/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let refused = login("lvt_unknown".to_string(), None).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get("set-cookie").is_none());
    let cross_site = login(operator.clone(), Some("http://evil.example".to_string()))
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let signed_in = login(operator.clone(), Some(server.base.clone()))
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.starts_with(&format!("{UI_COOKIE}={operator};")),
        "{cookie}"
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }

    // The operator's cookie shows the controls; the viewer's shows none.
    let html = get_page(&server, &format!("/ui/runs/{run}"), Some(&operator))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("data-api=\"control\""), "{html}");
    assert!(html.contains("alice (operator)"));
    let html = get_page(&server, &format!("/ui/runs/{run}"), Some(&viewer))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("wall (viewer)"));
    assert!(!html.contains("data-api"), "a viewer sees controls: {html}");
    assert!(!html.contains("data-steer"), "a viewer sees steer buttons");
    let html = get_page(&server, "/ui/pause", Some(&viewer))
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains("data-api"), "a viewer sees the pause form");

    // The API takes the cookie; a change needs the UI's header too, and the role still counts.
    let control = |secret: &str, with_header: bool| {
        let mut request = client
            .post(server.url(&format!("/api/v1/runs/{run}/controls")))
            .header("cookie", format!("{UI_COOKIE}={secret}"))
            .json(&json!({ "control": "override_condition", "task": "shift", "reason": "checked by hand" }));
        if with_header {
            request = request.header(UI_REQUEST_HEADER, "1");
        }
        request.send()
    };
    let forged = control(&operator, false).await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.text().await.unwrap().contains(UI_REQUEST_HEADER));
    let by_viewer = control(&viewer, true).await.unwrap();
    assert_eq!(by_viewer.status(), StatusCode::FORBIDDEN);
    assert!(by_viewer.text().await.unwrap().contains("viewer"));
    let read = client
        .get(server.url(&format!("/api/v1/runs/{run}")))
        .header("cookie", format!("{UI_COOKIE}={viewer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK, "a read needs no header");
    let accepted = control(&operator, true).await.unwrap();
    assert_eq!(
        accepted.status(),
        StatusCode::OK,
        "{:?}",
        accepted.text().await
    );
    wait_for_task(&server, Some(&admin), &run, "after", "succeeded").await;

    // Signing out clears the cookie.
    let out = client
        .post(server.url("/ui/logout"))
        .header("cookie", format!("{UI_COOKIE}={operator}"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

/// A runbook with typed parameters, for the start page.
const TYPED_YAML: &str = "\
kind: Runbook
name: typed
params:
  count: { type: int, required: true }
  mode: { type: enum, values: [fast, careful], default: careful }
tasks:
  - id: one
    stage: log
    with: { message: \"{{ params.count }} {{ params.mode }}\" }
";

#[tokio::test]
async fn the_start_page_shows_the_plan_only_for_valid_parameters_and_only_operators_may_start() {
    let server = start().await;
    let admin = create_token(&server, None, "admin", "admin").await;
    let viewer = create_token(&server, Some(&admin), "wall", "viewer").await;
    let operator = create_token(&server, Some(&admin), "alice", "operator").await;
    let applied = server
        .apply_as(Some(&admin), "typed.yaml", TYPED_YAML)
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);

    // The form offers each parameter by its type: the enum's values, the default chosen.
    let page = get_page(&server, "/ui/runbooks/typed", Some(&operator)).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("name=\"p.count\""), "{html}");
    assert!(
        html.contains("<option value=\"careful\" selected>"),
        "{html}"
    );
    assert!(
        !html.contains("id=\"plan\""),
        "a plan before asking: {html}"
    );

    // A value of the wrong type: the parameter error, escaped, and no way to start.
    let page = get_page(
        &server,
        "/ui/runbooks/typed?plan=1&p.count=%3Cb%3Ethree",
        Some(&operator),
    )
    .await;
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"plan-problem\""), "{html}");
    assert!(html.contains("count"), "{html}");
    assert!(!html.contains("<b>three"), "markup let through: {html}");
    assert!(!html.contains("id=\"start-form\""), "{html}");

    // Valid values: the plan, and for an operator the start form with the bound values.
    let page = get_page(
        &server,
        "/ui/runbooks/typed?plan=1&p.count=3&p.mode=fast",
        Some(&operator),
    )
    .await;
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"plan\""), "{html}");
    assert!(html.contains("data-plan-task=\"one\""), "{html}");
    assert!(html.contains("id=\"start-form\""), "{html}");
    assert!(
        html.contains(
            "data-params=\"{&#34;count&#34;:&#34;3&#34;,&#34;mode&#34;:&#34;fast&#34;}\""
        ) || html.contains("&quot;count&quot;:&quot;3&quot;"),
        "{html}"
    );
    // One task, purpose `other`: no name to type.
    assert!(!html.contains("id=\"start-confirm\""), "{html}");

    // A viewer sees the plan but not the start form, and the API refuses it anyway.
    let page = get_page(
        &server,
        "/ui/runbooks/typed?plan=1&p.count=3",
        Some(&viewer),
    )
    .await;
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"plan\""), "{html}");
    assert!(!html.contains("id=\"start-form\""), "{html}");
    let refused = server
        .send(
            Method::POST,
            "/api/v1/runbooks/typed/runs",
            Some(&viewer),
            Some(&json!({ "params": { "count": "3" } })),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
}

/// A runbook whose task is a template's two steps, so their ids hold a `/`.
const TEMPLATED_YAML: &str = "\
kind: TaskTemplate
name: move
steps:
  - id: announce
    stage: log
    with: { message: moving }
  - id: verify
    stage: log
    with: { message: moved }
---
kind: Runbook
name: templated
tasks:
  - id: web
    template: move
";

#[tokio::test]
async fn a_task_page_opens_for_a_template_step_whose_id_holds_a_slash() {
    let server = start().await;
    server.apply("templated.yaml", TEMPLATED_YAML).await;
    let run = start_run(&server, None, "templated").await;
    wait_for_task(&server, None, &run, "web/verify", "succeeded").await;
    let page = get_page(&server, &format!("/ui/runs/{run}"), None).await;
    let html = page.text().await.unwrap();
    let link = format!("href=\"/ui/runs/{run}/tasks/web/announce\"");
    assert!(
        html.contains(&link),
        "the run page links the step as it is: {html}"
    );
    let page = get_page(&server, &format!("/ui/runs/{run}/tasks/web/announce"), None).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("data-task=\"web/announce\""), "{html}");
    // A step that does not exist is still a 404.
    let missing = get_page(&server, &format!("/ui/runs/{run}/tasks/web/nothing"), None).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
