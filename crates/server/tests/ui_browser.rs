//! The web UI in a real browser: Debian's chromium, headless, driven through chromedriver by
//! fantoccini against a real server. Operators steer a run (override a failed health check,
//! approve, let a task go ahead of a weak dependency, change a paced ramp's pace) and watch
//! it finish live; a viewer sees no controls and the API refuses it; a run
//! page of 1,000 tasks is timed (render, and live updates while the API drives transitions).
//! The drain test pages chart a test's history; an operator runs one now, a viewer only reads.
//! A run executed by one server is followed live on the page of another on the same store.
//! Screenshots of the main pages go to `target/ui-screenshots/`.
//!
//! Without chromium or chromedriver the tests say why and pass, unless `CI` is set: CI installs
//! both (`.ci/run`), so there a missing browser is a failure.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Options, TestServer, start_with};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long chromedriver may take to accept connections, in milliseconds.
const DRIVER_START_MS: u64 = 20_000;
/// How long a test waits for something to appear on a page, in milliseconds.
const PAGE_WAIT_MS: u64 = 20_000;
/// The pause between two looks at a page, in milliseconds.
const PAGE_POLL_MS: u64 = 50;
/// Tasks of the large run.
const LARGE_RUN_TASKS: usize = 1_000;
/// Tasks per wave of the large run (each depends on the task one wave before).
const LARGE_RUN_WAVE_TASKS: usize = 250;
/// How long each task of the large run waits.
const LARGE_RUN_WAIT: &str = "1s";
/// The large run must move its tasks at least this fast for the live measurement to mean
/// something, in transitions per second.
const MIN_DRIVEN_TRANSITIONS_PER_S: f64 = 100.0;
/// Journal entries read per request.
const JOURNAL_PAGE_ROWS: u32 = 500;
/// A generous bound on the large run page's DOMContentLoaded, in milliseconds; the figure
/// itself is printed.
const RENDER_BOUND_MS: f64 = 5_000.0;
/// A generous bound on how long the page may lag behind the last transition, in milliseconds.
const LIVE_LAG_BOUND_MS: u64 = 30_000;
/// The browser window, in pixels.
const WINDOW_SIZE: &str = "1400,1000";

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Where screenshots go: `target/ui-screenshots/` of the cargo target folder in use.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("ui-screenshots")
}

/// A headless chromium behind a chromedriver this test started (killed when dropped).
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
}

impl Browser {
    /// Starts one, or says why it cannot and returns `None` (a failure when `CI` is set).
    async fn start() -> Option<Browser> {
        let chromium = find_program("chromium");
        let driver = find_program("chromedriver");
        let (Some(chromium), Some(driver)) = (chromium.clone(), driver.clone()) else {
            let why = format!(
                "browser test skipped: chromium {} and chromedriver {} (install both with \
                 `apt-get install -y chromium chromium-driver`)",
                if chromium.is_some() {
                    "found"
                } else {
                    "missing"
                },
                if driver.is_some() { "found" } else { "missing" },
            );
            assert!(std::env::var_os("CI").is_none(), "{why}; CI must run it");
            eprintln!("{why}");
            return None;
        };
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("its address").port()
        };
        let child = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let deadline = Instant::now() + Duration::from_millis(DRIVER_START_MS);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver never listened on {port}"
            );
            tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_string(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={WINDOW_SIZE}")],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("open a chromium session");
        Some(Browser {
            client,
            _driver: child,
        })
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("take a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("save the screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Waits until the element `css` reads `expected`.
    async fn wait_text(&self, css: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
        loop {
            let now = self.text(css).await;
            if now.as_deref() == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never read {expected:?}; it reads {now:?}; status line: {:?}",
                self.text("#status").await
            );
            tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map(|found| found.len())
            .unwrap_or(0)
    }

    async fn fill(&self, css: &str, text: &str) {
        let element = self.client.find(Locator::Css(css)).await.expect(css);
        element.clear().await.expect("clear a field");
        element.send_keys(text).await.expect("type into a field");
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn sign_in(&self, server: &TestServer, token: &str) {
        self.client
            .goto(&server.url("/ui/login"))
            .await
            .expect("open the sign-in page");
        self.fill("#token", token).await;
        self.click("form button[type=submit]").await;
        let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
        while self.client.current_url().await.expect("url").path() != "/ui/" {
            assert!(Instant::now() < deadline, "sign-in never reached /ui/");
            tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
        }
    }

    async fn close(self) {
        self.client.close().await.expect("close the browser");
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

async fn start_run(server: &TestServer, token: Option<&str>, runbook: &str, body: Value) -> String {
    let answer = server
        .send(
            Method::POST,
            &format!("/api/v1/runbooks/{runbook}/runs"),
            token,
            Some(&body),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.json()["id"].as_str().unwrap().to_string()
}

/// A task that stalls on a failing health check (a flag file that is never created), an
/// approval after it, and a last task.
fn guarded_yaml(flag: &std::path::Path) -> String {
    format!(
        "\
kind: Runbook
name: guarded
tasks:
  - id: shift
    stage: log
    with: {{ message: shifting }}
    health:
      - shell: {{ command: [test, -e, \"{}\"] }}
  - id: confirm
    stage: approval
    needs: [shift]
  - id: done
    stage: log
    needs: [confirm]
    with: {{ message: done }}
",
        flag.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_steer_a_run_from_the_browser_and_viewers_only_watch() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = start_with(Options {
        real_clock: true,
        ..Options::default()
    })
    .await;
    let admin = create_token(&server, None, "admin", "admin").await;
    let operator = create_token(&server, Some(&admin), "alice", "operator").await;
    let viewer = create_token(&server, Some(&admin), "wall", "viewer").await;
    let flag = server.dir.path().join("healthy");
    let applied = server
        .apply_as(Some(&admin), "guarded.yaml", &guarded_yaml(&flag))
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);

    browser.client.goto(&server.url("/ui/")).await.unwrap();
    assert_eq!(
        browser.client.current_url().await.unwrap().path(),
        "/ui/login"
    );
    browser.screenshot("login").await;
    browser.sign_in(&server, &operator).await;

    let run = start_run(&server, Some(&admin), "guarded", json!({})).await;
    browser
        .client
        .goto(&server.url(&format!("/ui/runs/{run}")))
        .await
        .unwrap();
    browser.wait_text("#live", "live").await;
    let shift = "tr[data-task=shift] [data-field=status]";
    browser.wait_text(shift, "stalled").await;
    browser
        .wait_text(
            "tr[data-task=shift] [data-field=why]",
            "stalled: a health check does not hold; an operator may override, retry or skip it",
        )
        .await;
    browser.screenshot("run-stalled").await;

    // Override the failed check from the task's row, with a reason.
    browser.click("button[data-steer=shift]").await;
    let chosen = browser
        .client
        .execute(
            "return document.getElementById('task-control').value",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(chosen, json!("override_condition"));
    browser.fill("#task-reason", "health checked by hand").await;
    browser.click("#task-form button[type=submit]").await;
    browser.wait_text(shift, "succeeded").await;

    // Approve the approval task.
    let confirm = "tr[data-task=confirm] [data-field=status]";
    browser.wait_text(confirm, "running").await;
    browser.click("button[data-steer=confirm]").await;
    browser.fill("#task-reason", "change window open").await;
    browser.click("#task-form button[type=submit]").await;
    browser.wait_text("[data-run-status]", "succeeded").await;
    browser
        .wait_text("tr[data-task=done] [data-field=status]", "succeeded")
        .await;
    browser.screenshot("run-finished").await;

    // The server recorded who did what and why.
    let journal = server
        .send(
            Method::GET,
            &format!("/api/v1/runs/{run}/journal"),
            Some(&admin),
            None,
        )
        .await
        .json();
    let entries = journal["entries"].as_array().unwrap();
    let by_alice = |kind: &str, reason: &str| {
        entries
            .iter()
            .any(|e| e["kind"] == kind && e["actor"] == "alice" && e["reason"] == reason)
    };
    assert!(
        by_alice("condition_overridden", "health checked by hand"),
        "{journal}"
    );
    assert!(by_alice("approved", "change window open"), "{journal}");

    // A skip without typing the task id is stopped in the page, before any request.
    browser.fill("#task-id", "done").await;
    browser
        .client
        .execute(
            "document.getElementById('task-control').value = 'skip'",
            vec![],
        )
        .await
        .unwrap();
    browser.fill("#task-reason", "not needed").await;
    browser.click("#task-form button[type=submit]").await;
    let said = browser.text("#status").await.unwrap_or_default();
    assert!(said.contains("type \"done\""), "{said}");

    browser.client.goto(&server.url("/ui/")).await.unwrap();
    browser
        .wait_text(
            &format!("tr[data-run=\"{run}\"] [data-field=status]"),
            "succeeded",
        )
        .await;
    browser.screenshot("runs").await;
    browser
        .client
        .goto(&server.url(&format!("/ui/runs/{run}/report")))
        .await
        .unwrap();
    assert_eq!(
        browser.count("ol.path li").await,
        3,
        "the critical path is the chain"
    );
    browser.screenshot("report").await;
    browser.client.goto(&server.url("/ui/pause")).await.unwrap();
    assert_eq!(browser.count("#pause-form").await, 1);
    browser.screenshot("pause").await;

    // A viewer: the same pages, no controls, and the API refuses it anyway.
    browser.click("header form button[type=submit]").await;
    browser.sign_in(&server, &viewer).await;
    browser
        .client
        .goto(&server.url(&format!("/ui/runs/{run}")))
        .await
        .unwrap();
    browser.wait_text("[data-run-status]", "succeeded").await;
    assert_eq!(
        browser.count("form[data-api]").await,
        0,
        "a viewer sees controls"
    );
    assert_eq!(
        browser.count("[data-steer]").await,
        0,
        "a viewer sees steer buttons"
    );
    browser.screenshot("run-viewer").await;
    let status = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/runs/' + arguments[0] + '/controls', {
               method: 'POST', credentials: 'same-origin',
               headers: {'Content-Type': 'application/json', 'X-Levee-UI': '1'},
               body: JSON.stringify({control: 'pause', reason: 'a viewer tries'})
             }).then(r => done(r.status), e => done(String(e)));",
            vec![json!(run)],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    browser.client.goto(&server.url("/ui/pause")).await.unwrap();
    assert_eq!(browser.count("#pause-form").await, 0);
    browser.close().await;
}

/// `wait` tasks in waves: task `i` needs task `i - LARGE_RUN_WAVE_TASKS`, so each wave's
/// tasks start together and end together, a burst of transitions every [`LARGE_RUN_WAIT`].
fn large_yaml() -> String {
    let mut yaml = String::from("kind: Runbook\nname: large\ntasks:\n");
    for i in 0..LARGE_RUN_TASKS {
        yaml.push_str(&format!(
            "  - id: t{i:04}\n    stage: wait\n    with: {{ duration: {LARGE_RUN_WAIT} }}\n"
        ));
        if i >= LARGE_RUN_WAVE_TASKS {
            yaml.push_str(&format!("    needs: [t{:04}]\n", i - LARGE_RUN_WAVE_TASKS));
        }
    }
    yaml
}

/// The journal entries the page turns into a task's new state (`TASK_STATUS` in levee.js).
const TASK_TRANSITION_KINDS: &[&str] = &[
    "task_dispatched",
    "task_started",
    "task_requeued",
    "task_succeeded",
    "task_retrying",
    "task_failed",
    "task_stalled",
    "task_skipped",
    "task_cancelled",
    "task_retried",
    "condition_overridden",
];

/// The run's task transitions from its journal: how many, and the first and last one's time
/// (epoch milliseconds).
async fn journal_transitions(server: &TestServer, run: &str) -> (usize, i64, i64) {
    let (mut count, mut first, mut last, mut after) = (0, i64::MAX, i64::MIN, 0);
    loop {
        let page = server
            .get(&format!(
                "/api/v1/runs/{run}/journal?after={after}&limit={JOURNAL_PAGE_ROWS}"
            ))
            .await
            .json();
        let entries = page["entries"].as_array().unwrap().clone();
        for entry in &entries {
            after = entry["seq"].as_i64().unwrap();
            if TASK_TRANSITION_KINDS.contains(&entry["kind"].as_str().unwrap_or_default()) {
                let at = entry["at_ms"].as_i64().unwrap();
                count += 1;
                first = first.min(at);
                last = last.max(at);
            }
        }
        if entries.len() < JOURNAL_PAGE_ROWS as usize {
            return (count, first, last);
        }
    }
}

async fn page_number(browser: &Browser, script: &str) -> f64 {
    browser
        .client
        .execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
        .as_f64()
        .unwrap_or_else(|| panic!("{script} is not a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_thousand_tasks_renders_and_keeps_up_with_live_transitions() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = start_with(Options {
        real_clock: true,
        ..Options::default()
    })
    .await;
    server.apply("large.yaml", &large_yaml()).await;
    // Created, not started: the page is timed before anything moves.
    let run = start_run(
        &server,
        None,
        "large",
        json!({ "max_parallel": LARGE_RUN_TASKS, "start": false }),
    )
    .await;

    browser
        .client
        .goto(&server.url(&format!("/ui/runs/{run}")))
        .await
        .unwrap();
    browser.wait_text("#live", "live").await;
    let navigation = "performance.getEntriesByType('navigation')[0]";
    let dom_ms = page_number(
        &browser,
        &format!("return {navigation}.domContentLoadedEventEnd"),
    )
    .await;
    let load_ms = page_number(&browser, &format!("return {navigation}.loadEventEnd")).await;
    let bytes = page_number(&browser, &format!("return {navigation}.transferSize")).await;
    let paint_ms = page_number(
        &browser,
        "const p = performance.getEntriesByName('first-contentful-paint')[0]; \
         return p ? p.startTime : -1",
    )
    .await;
    println!(
        "UI figure: run page of {LARGE_RUN_TASKS} tasks: DOMContentLoaded {dom_ms:.0} ms, first \
         contentful paint {paint_ms:.0} ms, load {load_ms:.0} ms, {:.0} KiB",
        bytes / 1024.0
    );
    assert!(
        dom_ms < RENDER_BOUND_MS,
        "the page took {dom_ms} ms to load"
    );
    assert_eq!(browser.count("tr[data-task]").await, LARGE_RUN_TASKS);
    assert_eq!(browser.count("g[data-node]").await, LARGE_RUN_TASKS);
    browser.screenshot("run-1000-tasks").await;

    // Start it through the API; the engine then moves every task (running, then succeeded),
    // wave after wave, in bursts.
    let started = server
        .send(
            Method::POST,
            &format!("/api/v1/runs/{run}/controls"),
            None,
            Some(&json!({ "control": "start", "reason": "load test" })),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    let deadline = Instant::now() + Duration::from_millis(LIVE_LAG_BOUND_MS * 2);
    loop {
        let view = server.get(&format!("/api/v1/runs/{run}")).await.json();
        if view["status"] == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the large run never finished: {}",
            view["counts"]
        );
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
    }
    let (transitions, first_ms, last_ms) = journal_transitions(&server, &run).await;
    let run_s = ((last_ms - first_ms) as f64 / 1_000.0).max(f64::EPSILON);
    let driven_rate = transitions as f64 / run_s;

    browser
        .wait_text("[data-count=succeeded]", &LARGE_RUN_TASKS.to_string())
        .await;
    browser.wait_text("[data-run-status]", "succeeded").await;
    let applied = page_number(&browser, "return window.leveeLive.applied").await;
    let first_applied = page_number(&browser, "return window.leveeLive.firstAppliedAt").await;
    let last_applied = page_number(&browser, "return window.leveeLive.lastAppliedAt").await;
    let last_applied_epoch_ms = page_number(
        &browser,
        "return performance.timeOrigin + window.leveeLive.lastAppliedAt",
    )
    .await;
    let frames = page_number(&browser, "return window.leveeLive.frames").await;
    let page_s = ((last_applied - first_applied) / 1_000.0).max(f64::EPSILON);
    let lag_ms = last_applied_epoch_ms - last_ms as f64;
    println!(
        "UI figure: the run made {transitions} task transitions in {run_s:.2} s \
         ({driven_rate:.0}/s, in bursts of {LARGE_RUN_WAVE_TASKS}); the page applied \
         {applied:.0} of them from the event stream in {page_s:.2} s ({:.0}/s) in {frames:.0} \
         animation frames, the last {lag_ms:.0} ms after the run's last",
        applied / page_s
    );
    assert!(
        driven_rate >= MIN_DRIVEN_TRANSITIONS_PER_S,
        "the run made only {driven_rate:.0} transitions/s; the measurement needs \
         {MIN_DRIVEN_TRANSITIONS_PER_S}"
    );
    assert!(applied > 0.0, "the page applied nothing live");
    assert!(
        lag_ms < LIVE_LAG_BOUND_MS as f64,
        "the page fell {lag_ms} ms behind"
    );
    browser.screenshot("run-1000-tasks-finished").await;
    browser.close().await;
}

const ROW_YAML: &str = include_str!("../../../examples/fleet/row.yaml");
const POLICIES_YAML: &str = include_str!("../../../examples/fleet/policies.yaml");
const FLEET_RUNBOOKS_YAML: &str = include_str!("../../../examples/fleet/runbooks.yaml");

/// A state machine with two instances, for the state machine pages.
const VM_YAML: &str = "\
kind: StateMachine
name: vm
instances: [vm-1, vm-2]
states:
  - name: installing
    on: { done: configuring }
  - name: configuring
    on: { done: serving, fail: installing }
  - name: serving
    final: true
";

/// The guarded runbook with a typed parameter the UI's form fills in.
fn guarded_with_params_yaml(flag: &std::path::Path) -> String {
    guarded_yaml(flag)
        .replace(
            "name: guarded\n",
            "name: guarded\nparams:\n  note: { type: string, default: hello }\n",
        )
        .replace(
            "message: shifting",
            "message: \"shifting {{ params.note }}\"",
        )
}

/// Waits until the browser's address is a path starting with `prefix`, and returns it.
async fn wait_path(browser: &Browser, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    loop {
        let path = browser
            .client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_string();
        if path.starts_with(prefix) {
            return path;
        }
        assert!(
            Instant::now() < deadline,
            "never reached {prefix}; at {path}; status line: {:?}",
            browser.text("#status").await
        );
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_start_a_runbook_with_its_plan_steer_tasks_and_approve_maintenance() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = start_with(Options {
        real_clock: true,
        ..Options::default()
    })
    .await;
    let admin = create_token(&server, None, "admin", "admin").await;
    let alice = create_token(&server, Some(&admin), "alice", "operator").await;
    let bob = create_token(&server, Some(&admin), "bob", "operator").await;
    let viewer = create_token(&server, Some(&admin), "wall", "viewer").await;
    let flag = server.dir.path().join("healthy");
    for (file, yaml) in [
        ("guarded.yaml", guarded_with_params_yaml(&flag)),
        ("row.yaml", ROW_YAML.to_string()),
        ("runbooks.yaml", FLEET_RUNBOOKS_YAML.to_string()),
        ("policies.yaml", POLICIES_YAML.to_string()),
        ("vm.yaml", VM_YAML.to_string()),
    ] {
        let applied = server.apply_as(Some(&admin), file, &yaml).await;
        assert_eq!(applied.status, StatusCode::OK, "{file}: {}", applied.body);
    }
    // Three racks: past the blast-radius threshold, so a second person must approve.
    let scheduled = server
        .send(
            Method::POST,
            "/api/v1/maintenances",
            Some(&alice),
            Some(&json!({
                "scope": "rack in (a-r4, a-r5, a-r6)", "type": "power", "start": "+2h",
                "duration": "2h", "owner": "dc-ops", "id": "m-b",
                "on_preflight_failure": "needs_human",
            })),
        )
        .await;
    assert_eq!(scheduled.status, StatusCode::CREATED, "{}", scheduled.body);
    assert_eq!(scheduled.json()["state"], "blocked");

    // Start the runbook from the UI: parameters, then the plan, then the start.
    browser.sign_in(&server, &alice).await;
    browser
        .client
        .goto(&server.url("/ui/runbooks"))
        .await
        .unwrap();
    browser.screenshot("runbooks").await;
    browser.click("tr[data-runbook=guarded] a").await;
    wait_path(&browser, "/ui/runbooks/guarded").await;
    browser.fill("#p-note", "from <the> UI").await;
    browser.click("#show-plan").await;
    let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    while browser.count("#plan").await == 0 {
        assert!(Instant::now() < deadline, "the plan never showed");
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
    }
    assert_eq!(
        browser.count("#plan-critical li").await,
        3,
        "the critical path is the chain"
    );
    assert_eq!(browser.count("tr[data-plan-task]").await, 3);
    assert_eq!(browser.count("#start-form").await, 1);
    browser.screenshot("runbook-plan").await;
    browser.click("#start-run").await;
    let path = wait_path(&browser, "/ui/runs/").await;
    let run = path.trim_start_matches("/ui/runs/").to_string();
    let view = server
        .send(
            Method::GET,
            &format!("/api/v1/runs/{run}"),
            Some(&admin),
            None,
        )
        .await
        .json();
    assert_eq!(view["created_by"], "alice", "{view}");
    assert_eq!(view["params"]["note"], "from <the> UI", "{view}");

    // It stalls on its failing health check; the task page charts it and overrides it.
    browser.wait_text("#live", "live").await;
    browser
        .wait_text("tr[data-task=shift] [data-field=status]", "stalled")
        .await;
    browser.click("tr[data-task=shift] th a").await;
    wait_path(&browser, &format!("/ui/runs/{run}/tasks/shift")).await;
    browser.wait_text("#task-status", "stalled").await;
    assert!(
        browser.count("figure.health circle.bad").await >= 1,
        "no failed observation charted"
    );
    assert!(browser.count("tr[data-kind=task_stalled]").await >= 1);
    browser.screenshot("task-stalled").await;
    let chosen = browser
        .client
        .execute(
            "return document.getElementById('task-control').value",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(chosen, json!("override_condition"));
    browser
        .fill("#task-reason", "error rate checked on the dashboard")
        .await;
    browser.click("#task-form button[type=submit]").await;
    browser.wait_text("#task-status", "succeeded").await;
    assert!(browser.count("tr[data-kind=condition_overridden]").await >= 1);
    let output = browser
        .client
        .execute(
            "return Array.from(document.querySelectorAll('article.attempt pre'))\
             .map(p => p.textContent).join('\\n')",
            vec![],
        )
        .await
        .unwrap();
    let output = output.as_str().unwrap_or_default();
    // The output holds markup, shown as text: no element came of it.
    assert!(output.contains("shifting from <the> UI"), "{output}");
    assert_eq!(browser.count("article.attempt the").await, 0);
    browser.screenshot("task-succeeded").await;

    // The approval, from the run page; then the run finishes.
    browser
        .client
        .goto(&server.url(&format!("/ui/runs/{run}")))
        .await
        .unwrap();
    browser
        .wait_text("tr[data-task=confirm] [data-field=status]", "running")
        .await;
    browser.click("button[data-steer=confirm]").await;
    browser.fill("#task-reason", "window open").await;
    browser.click("#task-form button[type=submit]").await;
    browser.wait_text("[data-run-status]", "succeeded").await;

    // Maintenance: the calendar, then a second operator approves, typing its id.
    browser.click("header form button[type=submit]").await;
    browser.sign_in(&server, &bob).await;
    browser
        .client
        .goto(&server.url("/ui/maintenances?by=rack"))
        .await
        .unwrap();
    assert!(
        browser.count("#calendar a.cal").await >= 3,
        "three racks in the calendar"
    );
    browser.screenshot("maintenances").await;
    browser.click("tr[data-maintenance=m-b] a").await;
    wait_path(&browser, "/ui/maintenances/m-b").await;
    assert!(browser.count("table.capacity tr[data-pool]").await >= 1);
    browser.screenshot("maintenance-blocked").await;
    browser
        .client
        .execute(
            "document.getElementById('maint-action').value = 'approve'",
            vec![],
        )
        .await
        .unwrap();
    browser
        .fill("#maint-reason", "power work planned with the DC")
        .await;
    browser.click("#maint-form button[type=submit]").await;
    let said = browser.text("#status").await.unwrap_or_default();
    assert!(said.contains("type \"m-b\""), "{said}");
    browser.fill("#maint-confirm", "m-b").await;
    browser.click("#maint-form button[type=submit]").await;
    // The control is recorded at once; the driver then moves the maintenance on, which the
    // page shows when it is read again.
    let recorded = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    loop {
        let m = server
            .send(Method::GET, "/api/v1/maintenances/m-b", Some(&admin), None)
            .await
            .json();
        if m["details"]["approved"]["by"] == "bob" {
            break;
        }
        assert!(Instant::now() < recorded, "the approval never landed: {m}");
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
    }
    let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    loop {
        browser
            .client
            .goto(&server.url("/ui/maintenances/m-b"))
            .await
            .unwrap();
        let state = browser.text("#maint-state").await.unwrap_or_default();
        if !state.is_empty() && state != "blocked" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the approval never landed: {:?}",
            browser.text("#status").await
        );
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
    }
    let m = server
        .send(Method::GET, "/api/v1/maintenances/m-b", Some(&admin), None)
        .await
        .json();
    assert_eq!(m["details"]["approved"]["by"], "bob", "{m}");
    browser.screenshot("maintenance-approved").await;

    // The fleet and the state machines.
    browser.client.goto(&server.url("/ui/fleet")).await.unwrap();
    assert!(browser.count("table.pools tr[data-pool]").await >= 3);
    browser.screenshot("fleet").await;
    browser
        .client
        .goto(&server.url("/ui/machines"))
        .await
        .unwrap();
    assert_eq!(browser.count("tr[data-machine]").await, 2);
    browser.screenshot("machines").await;
    browser
        .client
        .goto(&server.url("/ui/definitions/vm"))
        .await
        .unwrap();
    assert_eq!(browser.count("g[data-state]").await, 3);
    browser.screenshot("definition").await;
    let moved = server
        .send(
            Method::POST,
            "/api/v1/machines/vm-1/events",
            Some(&admin),
            Some(&json!({ "state": "installing" })),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    browser
        .client
        .goto(&server.url("/ui/machines/vm-1"))
        .await
        .unwrap();
    browser.wait_text("#machine-state", "configuring").await;
    assert!(
        browser
            .count("g.node.st-running[data-state=configuring]")
            .await
            == 1
    );
    assert!(browser.count("table.history tr[data-kind]").await >= 2);
    browser.screenshot("machine").await;

    // A viewer sees the same pages without a single control.
    browser.click("header form button[type=submit]").await;
    browser.sign_in(&server, &viewer).await;
    for page in [
        "/ui/runbooks/guarded?plan=1".to_string(),
        format!("/ui/runs/{run}/tasks/shift"),
        "/ui/maintenances/m-b".to_string(),
        "/ui/fleet".to_string(),
    ] {
        browser.client.goto(&server.url(&page)).await.unwrap();
        assert_eq!(browser.count("h1").await, 1, "{page} did not render");
        assert_eq!(
            browser.count("form[data-api]").await,
            0,
            "a viewer sees controls on {page}"
        );
    }
    browser.close().await;
}

/// A task that waits an hour, one that comes `after` it (a weak dependency), and a paced
/// ramp that appends each step's value to `file` and waits an hour between steps.
fn steered_yaml(file: &std::path::Path) -> String {
    format!(
        "\
kind: Runbook
name: steered
tasks:
  - id: slow
    stage: wait
    with: {{ duration: 1h }}
  - id: follower
    stage: log
    after: [slow]
    with: {{ message: went ahead }}
  - id: shift
    stage: ramp
    with:
      command: [sh, -c, 'echo \"$1\" >> \"$2\"', sh, '{{value}}', \"{}\"]
      from: 100
      to: 0
      first_step: 5
      step: 20%
      wait: 1h
",
        file.display()
    )
}

/// The journal entries of `run` of `kind` by `actor` with `reason`.
async fn journaled(
    server: &TestServer,
    admin: &str,
    run: &str,
    kind: &str,
    actor: &str,
) -> Vec<Value> {
    let journal = server
        .send(
            Method::GET,
            &format!("/api/v1/runs/{run}/journal"),
            Some(admin),
            None,
        )
        .await
        .json();
    journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && e["actor"] == actor)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_override_a_weak_dependency_and_change_a_pace_from_the_task_page() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = start_with(Options {
        real_clock: true,
        ..Options::default()
    })
    .await;
    let admin = create_token(&server, None, "admin", "admin").await;
    let alice = create_token(&server, Some(&admin), "alice", "operator").await;
    let file = server.dir.path().join("weights");
    let applied = server
        .apply_as(Some(&admin), "steered.yaml", &steered_yaml(&file))
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
    let run = start_run(&server, Some(&admin), "steered", json!({})).await;
    browser.sign_in(&server, &alice).await;

    // The follower waits for `slow` (an hour); an operator lets it go ahead, with a reason.
    browser
        .client
        .goto(&server.url(&format!("/ui/runs/{run}/tasks/follower")))
        .await
        .unwrap();
    browser.wait_text("#task-status", "waiting").await;
    assert_eq!(browser.count("#task-dep option[value=slow]").await, 1);
    browser.screenshot("task-weak-dependency").await;
    browser
        .client
        .execute(
            "document.getElementById('task-control').value = 'override_weak_dep'",
            vec![],
        )
        .await
        .unwrap();
    browser
        .fill("#task-reason", "slow is only a warm-up; go ahead")
        .await;
    browser.click("#task-form button[type=submit]").await;
    browser.wait_text("#task-status", "succeeded").await;
    let overridden = journaled(&server, &admin, &run, "weak_dep_overridden", "alice").await;
    assert_eq!(overridden.len(), 1, "{overridden:?}");
    assert_eq!(overridden[0]["reason"], "slow is only a warm-up; go ahead");
    assert_eq!(
        browser.count("#task-dep").await,
        0,
        "an overridden weak dependency is no longer offered"
    );

    // The ramp took its first, small step and waits an hour; the operator speeds it up.
    browser
        .client
        .goto(&server.url(&format!("/ui/runs/{run}/tasks/shift")))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    while browser.count("ol.steps li").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the ramp's first step never showed"
        );
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
        browser.client.refresh().await.unwrap();
    }
    browser.wait_text("#task-status", "running").await;
    browser.screenshot("task-paced").await;
    browser
        .client
        .execute(
            "document.getElementById('task-control').value = 'set_pace'",
            vec![],
        )
        .await
        .unwrap();
    browser.fill("#task-step", "50%").await;
    browser.fill("#task-wait", "10ms").await;
    browser.fill("#task-reason", "error budget is fine").await;
    browser.click("#task-form button[type=submit]").await;
    browser.wait_text("#task-status", "succeeded").await;
    let weights = std::fs::read_to_string(&file).unwrap_or_default();
    assert_eq!(weights.lines().collect::<Vec<_>>(), ["95", "45", "0"]);
    let paced = journaled(&server, &admin, &run, "pace_changed", "alice").await;
    assert_eq!(paced.len(), 1, "{paced:?}");
    assert_eq!(paced[0]["reason"], "error budget is fine");
    browser.close().await;
}

/// A drain and a restore runbook (the drain waits a little, so durations differ from zero),
/// one that fails to restore, a scheduled drain test in Berlin's time and one that fails.
const DRAIN_TEST_YAML: &str = "\
kind: Runbook
name: drain-dc
params:
  dc: { required: true }
  storm: { type: bool, default: false }
tasks:
  - id: drain
    stage: wait
    with: { duration: 200ms }
  - id: confirm
    stage: log
    needs: [drain]
    with: { message: \"drained {{ params.dc }}\" }
---
kind: Runbook
name: restore-dc
params:
  dc: { required: true }
tasks:
  - id: restore
    stage: log
    with: { message: \"restoring {{ params.dc }}\" }
---
kind: Runbook
name: broken-restore
params:
  dc: { required: true }
tasks:
  - id: restore
    stage: shell
    with: { command: [\"false\"] }
---
kind: DrainTest
name: nightly
description: Drain east every night and bring it back.
runbook: drain-dc
target: east
schedule: { cron: \"0 3 * * *\", time_zone: Europe/Berlin }
restore: { runbook: restore-dc }
---
kind: DrainTest
name: fragile
runbook: drain-dc
target: { least_recently_tested: [east, west] }
restore: { runbook: broken-restore }
";

/// Starts `name` through the API and waits until that execution is over.
async fn run_drain_test_to_the_end(server: &TestServer, token: &str, name: &str) -> Value {
    let answer = server
        .send(
            Method::POST,
            &format!("/api/v1/drain-tests/{name}/run"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let id = answer.json()["id"].as_str().unwrap().to_string();
    wait_execution(server, token, &id).await
}

async fn wait_execution(server: &TestServer, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    loop {
        let execution = server
            .send(
                Method::GET,
                &format!("/api/v1/drain-test-executions/{id}"),
                Some(token),
                None,
            )
            .await
            .json();
        if matches!(execution["state"].as_str(), Some("passed" | "failed")) {
            return execution;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never finished: {execution}"
        );
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_test_pages_chart_the_history_and_only_operators_run_one_now() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = start_with(Options {
        real_clock: true,
        ..Options::default()
    })
    .await;
    let admin = create_token(&server, None, "admin", "admin").await;
    let alice = create_token(&server, Some(&admin), "alice", "operator").await;
    let viewer = create_token(&server, Some(&admin), "wall", "viewer").await;
    let applied = server
        .apply_as(Some(&admin), "drain-tests.yaml", DRAIN_TEST_YAML)
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
    let first = run_drain_test_to_the_end(&server, &admin, "nightly").await;
    assert_eq!(first["state"], "passed", "{first}");
    let failed = run_drain_test_to_the_end(&server, &admin, "fragile").await;
    assert_eq!(failed["state"], "failed", "{failed}");

    // The list: schedule in its zone, the next firing in it, the last results.
    browser.sign_in(&server, &alice).await;
    browser.click("header nav a[href='/ui/drain-tests']").await;
    wait_path(&browser, "/ui/drain-tests").await;
    assert_eq!(browser.count("tr[data-drain-test]").await, 2);
    let next = browser
        .text("tr[data-drain-test=nightly] [data-field=next]")
        .await
        .unwrap_or_default();
    assert!(
        next.contains(" 03:00 CE") && next.contains("UTC)"),
        "the next firing in Berlin's time, then UTC: {next}"
    );
    browser
        .wait_text("tr[data-drain-test=fragile] [data-field=last]", "failed")
        .await;
    browser.screenshot("drain-tests").await;

    // A failed execution says which criterion failed and links its runs.
    browser
        .client
        .goto(&server.url("/ui/drain-tests/fragile"))
        .await
        .unwrap();
    let failures = browser
        .text("tr[data-state=failed] [data-field=failures]")
        .await
        .unwrap_or_default();
    assert!(
        failures.starts_with("restore_completed: the restore run did not succeed"),
        "{failures}"
    );
    let restore_run = failed["restore_run"].as_str().unwrap();
    assert_eq!(
        browser
            .count(&format!(
                "td[data-phase=restore] a[href='/ui/runs/{restore_run}']"
            ))
            .await,
        1
    );
    browser
        .client
        .execute("document.getElementById('exec-h').scrollIntoView()", vec![])
        .await
        .unwrap();
    browser.screenshot("drain-test-failed").await;

    // The scheduled test: its trend charts, then "run now" (its name typed first).
    browser
        .client
        .goto(&server.url("/ui/drain-tests/nightly"))
        .await
        .unwrap();
    assert_eq!(browser.count("figure.trend").await, 3);
    assert_eq!(
        browser
            .count("figure[data-trend=duration] g.s-drain circle")
            .await,
        1
    );
    browser.click("#run-now").await;
    let said = browser.text("#status").await.unwrap_or_default();
    assert!(said.contains("type \"nightly\""), "{said}");
    browser.fill("#dt-confirm", "nightly").await;
    browser.click("#run-now").await;
    // The page shows the new execution and follows it until it is over.
    let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    while browser.count("tr[data-execution]").await < 2 {
        assert!(
            Instant::now() < deadline,
            "the new execution never showed: {:?}",
            browser.text("#status").await
        );
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
    }
    let newest = browser
        .client
        .find(Locator::Css("tr[data-execution]"))
        .await
        .unwrap()
        .attr("data-execution")
        .await
        .unwrap()
        .unwrap();
    let second = wait_execution(&server, &admin, &newest).await;
    assert_eq!(second["state"], "passed", "{second}");
    assert_eq!(second["trigger"], "manual");
    assert_eq!(second["created_by"], "alice", "{second}");
    let audit = server
        .send(
            Method::GET,
            "/api/v1/audit?actor=alice&limit=100",
            Some(&admin),
            None,
        )
        .await
        .json();
    let by_alice = audit["entries"]
        .as_array()
        .or(audit.as_array())
        .map(|entries| {
            entries
                .iter()
                .any(|e| e["action"] == "drain_test.run" && e["actor"] == "alice")
        });
    assert_eq!(by_alice, Some(true), "{audit}");
    let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    while browser
        .count("figure[data-trend=duration] g.s-drain circle")
        .await
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the chart never showed the second run"
        );
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
    }
    assert_eq!(
        browser
            .count("figure[data-trend=duration] g.s-drain polyline")
            .await,
        1
    );
    browser.wait_text("#dt-last", "passed").await;
    browser.screenshot("drain-test").await;
    browser.client.refresh().await.unwrap();
    let dom_ms = page_number(
        &browser,
        "return performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd",
    )
    .await;
    println!("UI figure: a drain test's page with 3 trend charts: DOMContentLoaded {dom_ms:.0} ms");
    assert!(
        dom_ms < RENDER_BOUND_MS,
        "the page took {dom_ms} ms to load"
    );

    // A viewer: the history and the charts, no control, and the API refuses it anyway.
    browser.click("header form button[type=submit]").await;
    browser.sign_in(&server, &viewer).await;
    browser
        .client
        .goto(&server.url("/ui/drain-tests/nightly"))
        .await
        .unwrap();
    assert_eq!(browser.count("figure.trend").await, 3);
    assert_eq!(
        browser.count("form[data-api]").await,
        0,
        "a viewer sees controls"
    );
    assert_eq!(browser.count("#run-now").await, 0);
    let status = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/drain-tests/nightly/run', {
               method: 'POST', credentials: 'same-origin', headers: {'X-Levee-UI': '1'}
             }).then(r => done(r.status), e => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403), "the API refuses a viewer");
    browser.screenshot("drain-test-viewer").await;
    browser.close().await;
}

/// Five tasks one after another, each waiting a little.
const CHAIN_YAML: &str = "\
kind: Runbook
name: chain
tasks:
  - id: a
    stage: wait
    with: { duration: 800ms }
  - id: b
    stage: wait
    needs: [a]
    with: { duration: 800ms }
  - id: c
    stage: wait
    needs: [b]
    with: { duration: 800ms }
  - id: d
    stage: wait
    needs: [c]
    with: { duration: 800ms }
  - id: e
    stage: log
    needs: [d]
    with: { message: done }
";

/// What `levee demo` needs to show its rehearsal live: a run executed by one server (the
/// rehearsal's) is followed live on the page of another server on the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_executed_by_another_server_on_the_same_store_is_live_on_this_one() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let executing = start_with(Options {
        real_clock: true,
        ..Options::default()
    })
    .await;
    let watching = start_with(Options {
        real_clock: true,
        dir: Some(executing.dir.clone()),
        ..Options::default()
    })
    .await;
    executing.apply("chain.yaml", CHAIN_YAML).await;
    let run = start_run(
        &executing,
        None,
        "chain",
        json!({ "start": false, "name": "watched" }),
    )
    .await;
    browser
        .client
        .goto(&watching.url(&format!("/ui/runs/{run}")))
        .await
        .unwrap();
    browser.wait_text("#live", "live").await;
    let started = executing
        .send(
            Method::POST,
            &format!("/api/v1/runs/{run}/controls"),
            None,
            Some(&json!({ "control": "start", "reason": "watch it elsewhere" })),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    // The page moves on while the run goes: it shows some of the tasks done before all.
    let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    let mut seen_done = std::collections::BTreeSet::new();
    loop {
        let done = browser.text("[data-run-done]").await.unwrap_or_default();
        seen_done.insert(done);
        if browser.text("[data-run-status]").await.as_deref() == Some("succeeded") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the run succeeded; it showed {seen_done:?} done"
        );
        tokio::time::sleep(Duration::from_millis(PAGE_POLL_MS)).await;
    }
    assert!(
        ["1", "2", "3", "4"].iter().any(|n| seen_done.contains(*n)),
        "the page jumped to the end instead of following the run: {seen_done:?}"
    );
    browser
        .wait_text("tr[data-task=e] [data-field=status]", "succeeded")
        .await;
    let applied = page_number(&browser, "return window.leveeLive.applied").await;
    assert!(
        applied >= 5.0,
        "the page applied {applied} transitions live"
    );
    let owner = watching.get(&format!("/api/v1/runs/{run}")).await.json();
    assert_eq!(owner["status"], "succeeded", "{owner}");
    browser.close().await;
}
