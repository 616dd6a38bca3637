//! `/state` against the compatibility contract in `shared/design/stateservice-compat.md`: one
//! test per row of its "Requests and answers" table, run against StateService's README machine
//! (green_state → red_state → blue_state), then the behaviour around it the contract promises:
//! timers that move by themselves and survive restarts, a restarted server continuing from its
//! store, and the user's YAML file never being rewritten.

mod common;

use common::{README_MACHINE_FILE, README_MACHINE_ID, README_MACHINE_YAML, TestServer};
use reqwest::{Method, StatusCode};

/// A StateService machine whose first state needs two PUTs (`when.value` 2) before it moves.
const TWO_PUTS_MACHINE_YAML: &str = "\
current_state: green_state
states:
  - name: green_state
    func: increment
    current: { key: count, value: 0 }
    target:
      name: red_state
      when: { key: count, value: 2 }
  - name: red_state
";

/// When the time-based machine's `waiting_state` moves on, written as StateService writes it:
/// local time, no offset.
const TIME_MACHINE_CLOCK: &str = "2031-01-01T12:00:00";

/// A StateService machine whose first state moves to `done_state` at [`TIME_MACHINE_CLOCK`].
const TIME_MACHINE_YAML: &str = "\
current_state: waiting_state
states:
  - name: waiting_state
    func: time
    target:
      name: done_state
      when: { key: clock, value: '2031-01-01T12:00:00' }
  - name: done_state
";

/// Asserts an answer's status and its exact body.
fn assert_answer(answer: &common::Answer, status: StatusCode, body: &str, what: &str) {
    assert_eq!(
        answer.status, status,
        "{what}: status (body {:?})",
        answer.body
    );
    assert_eq!(answer.body, body, "{what}: body");
}

/// Moves the README machine from green_state to blue_state with two accepted PUTs.
async fn walk_to_blue(server: &TestServer) {
    assert_eq!(
        server.put("/state?state=green_state").await.status,
        StatusCode::OK
    );
    assert_eq!(
        server.put("/state?state=red_state").await.status,
        StatusCode::OK
    );
}

// ---- One test per row of the table ----

/// Row: `GET /state?state=S`, S current → 200, body `S`.
#[tokio::test]
async fn get_current_state_answers_200_with_its_name() {
    let server = common::start_readme().await;
    let answer = server.get("/state?state=green_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "GET the current state",
    );
}

/// Row: `GET /state?state=S`, S not current, unknown, empty, other case, or with spaces → 406,
/// empty body.
#[tokio::test]
async fn get_state_that_is_not_current_answers_406_with_empty_body() {
    let server = common::start_readme().await;
    let cases = [
        ("red_state", "a state that is not current"),
        ("blue_state", "the final state, not current yet"),
        ("purple_state", "an unknown state"),
        ("", "an empty name"),
        ("GREEN_STATE", "the current state in upper case"),
        ("Green_state", "the current state capitalised"),
        ("%20green_state", "the current state after a space"),
        ("green_state%20", "the current state before a space"),
        (
            "green+state",
            "the current state with a space for the underscore",
        ),
    ];
    for (state, what) in cases {
        let answer = server.get(&format!("/state?state={state}")).await;
        assert_answer(&answer, StatusCode::NOT_ACCEPTABLE, "", what);
    }
}

/// Row: `GET /state` without a `state` parameter (the name is case-sensitive) → 500, empty.
#[tokio::test]
async fn get_without_state_parameter_answers_500_with_empty_body() {
    let server = common::start_readme().await;
    for path in [
        "/state",
        "/state?",
        "/state?State=green_state",
        "/state?STATE=green_state",
        "/state?states=green_state",
    ] {
        let answer = server.get(path).await;
        assert_answer(&answer, StatusCode::INTERNAL_SERVER_ERROR, "", path);
    }
}

/// Row: repeated `state` parameters → the first value wins, for GET and for PUT.
#[tokio::test]
async fn repeated_state_parameters_first_value_wins() {
    let server = common::start_readme().await;
    let answer = server.get("/state?state=green_state&state=red_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "GET with the current state first",
    );
    let answer = server.get("/state?state=red_state&state=green_state").await;
    assert_answer(
        &answer,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "GET with the current state second",
    );

    let answer = server.put("/state?state=red_state&state=green_state").await;
    assert_answer(
        &answer,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "PUT with the current state second",
    );
    let answer = server.put("/state?state=green_state&state=red_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "PUT with the current state first",
    );
    let answer = server.get("/state?state=red_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "red_state",
        "the first PUT value was applied",
    );
}

/// Row: extra parameters → ignored.
#[tokio::test]
async fn extra_parameters_are_ignored() {
    let server = common::start_readme().await;
    let answer = server
        .get("/state?host=vm-17&state=green_state&debug=1&State=red_state")
        .await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "GET with extra parameters",
    );
    let answer = server.get("/state?host=vm-17&state=red_state&x").await;
    assert_answer(
        &answer,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "GET not current, with extra parameters",
    );
    let answer = server
        .put("/state?reporter=vm-17&state=green_state&event=fail")
        .await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "PUT with extra parameters",
    );
    let answer = server.get("/state?state=red_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "red_state",
        "the PUT counted as a plain PUT",
    );
}

/// Row: `HEAD` → as GET, without a body.
#[tokio::test]
async fn head_answers_as_get_without_body() {
    let server = common::start_readme().await;
    let answer = server
        .send(Method::HEAD, "/state?state=green_state", None, None)
        .await;
    assert_answer(&answer, StatusCode::OK, "", "HEAD of the current state");
    let answer = server
        .send(Method::HEAD, "/state?state=red_state", None, None)
        .await;
    assert_answer(
        &answer,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "HEAD of another state",
    );
    let answer = server.send(Method::HEAD, "/state", None, None).await;
    assert_answer(
        &answer,
        StatusCode::INTERNAL_SERVER_ERROR,
        "",
        "HEAD without `state`",
    );

    // On the wire, too: a HEAD answer carries no body even when the connection closes after it.
    let raw = common::raw_request(
        server.addr,
        "HEAD /state?state=green_state HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::raw_status(&raw), 200, "raw HEAD: {raw:?}");
    assert_eq!(common::raw_body(&raw), "", "raw HEAD sends no body");
}

/// Row: `OPTIONS /state?...` → as GET, with a body.
#[tokio::test]
async fn options_answers_as_get_with_body() {
    let server = common::start_readme().await;
    let answer = server
        .send(Method::OPTIONS, "/state?state=green_state", None, None)
        .await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "OPTIONS of the current state",
    );
    let answer = server
        .send(Method::OPTIONS, "/state?state=red_state", None, None)
        .await;
    assert_answer(
        &answer,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "OPTIONS of another state",
    );
    let answer = server.send(Method::OPTIONS, "/state", None, None).await;
    assert_answer(
        &answer,
        StatusCode::INTERNAL_SERVER_ERROR,
        "",
        "OPTIONS without `state`",
    );
}

/// Row: `PUT /state?state=S`, S current, not final, `func: increment` → 200, body `S` (the state
/// that was PUT, not the new one).
#[tokio::test]
async fn put_current_state_answers_200_with_the_state_that_was_put() {
    let server = common::start_readme().await;
    let answer = server.put("/state?state=green_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "PUT of the current state",
    );
    let answer = server.get("/state?state=red_state").await;
    assert_answer(&answer, StatusCode::OK, "red_state", "the machine moved on");
    let answer = server.get("/state?state=green_state").await;
    assert_answer(
        &answer,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "the old state is no longer current",
    );
}

/// Row: `PUT /state?state=S`, S not current → 406 in Levee (StateService's documentation; its
/// code answered 500), empty body, and nothing changes.
#[tokio::test]
async fn put_state_that_is_not_current_answers_406_and_changes_nothing() {
    let server = common::start_readme().await;
    let answer = server.put("/state?state=red_state").await;
    assert_answer(
        &answer,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "PUT of a state that is not current",
    );
    let answer = server.put("/state?state=blue_state").await;
    assert_answer(
        &answer,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "PUT of the final state, not current yet",
    );
    let answer = server.get("/state?state=green_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "the machine did not move",
    );
    assert_eq!(
        server.machine(README_MACHINE_ID).await["counter"],
        0,
        "nothing was counted"
    );
}

/// Row: `PUT /state` with a missing or empty parameter, an unknown state, the final state, or a
/// time-based state → 500, empty body.
#[tokio::test]
async fn put_refusals_stateservice_answered_500_for_still_answer_500() {
    let server = common::start_readme().await;
    for (path, what) in [
        ("/state", "PUT without `state`"),
        ("/state?", "PUT with an empty query"),
        ("/state?state=", "PUT with an empty `state`"),
        (
            "/state?State=green_state",
            "PUT with `State` in the wrong case",
        ),
        ("/state?state=purple_state", "PUT of an unknown state"),
    ] {
        let answer = server.put(path).await;
        assert_answer(&answer, StatusCode::INTERNAL_SERVER_ERROR, "", what);
    }
    let answer = server.get("/state?state=green_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "refused PUTs changed nothing",
    );

    walk_to_blue(&server).await;
    let answer = server.put("/state?state=blue_state").await;
    assert_answer(
        &answer,
        StatusCode::INTERNAL_SERVER_ERROR,
        "",
        "PUT of the final state",
    );

    let due_ms = common::local_time_ms(TIME_MACHINE_CLOCK);
    let timed = common::start_with(common::Options {
        clock_ms: Some(due_ms - 60_000),
        machine_file: Some(("timed.yaml".to_string(), TIME_MACHINE_YAML.to_string())),
        ..Default::default()
    })
    .await;
    let answer = timed.put("/state?state=waiting_state").await;
    assert_answer(
        &answer,
        StatusCode::INTERNAL_SERVER_ERROR,
        "",
        "PUT of a time-based state",
    );
    let answer = timed.get("/state?state=waiting_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "waiting_state",
        "the time-based state is still current",
    );
}

/// Row: `PUT` on a counting state whose target is not reached yet → 200, body `S`, and the
/// machine stays in S until the count is reached.
#[tokio::test]
async fn put_below_the_target_count_answers_200_and_stays() {
    let server = common::start_with(common::Options {
        machine_file: Some(("two.yaml".to_string(), TWO_PUTS_MACHINE_YAML.to_string())),
        ..Default::default()
    })
    .await;
    let answer = server.put("/state?state=green_state").await;
    assert_answer(&answer, StatusCode::OK, "green_state", "first of two PUTs");
    let answer = server.get("/state?state=green_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "the state stays after one PUT",
    );
    assert_eq!(
        server.machine("two").await["counter"],
        1,
        "one PUT was counted"
    );

    let answer = server.put("/state?state=green_state").await;
    assert_answer(&answer, StatusCode::OK, "green_state", "second of two PUTs");
    let answer = server.get("/state?state=red_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "red_state",
        "the state moves at the target count",
    );
}

/// Row: `DELETE` or `PATCH /state` → 405.
#[tokio::test]
async fn delete_and_patch_answer_405() {
    let server = common::start_readme().await;
    for method in [Method::DELETE, Method::PATCH] {
        for path in ["/state?state=green_state", "/state"] {
            let answer = server.send(method.clone(), path, None, None).await;
            assert_eq!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
        }
    }
    let answer = server.get("/state?state=green_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "green_state",
        "DELETE and PATCH changed nothing",
    );
}

/// Row: other paths, and `/state/` with a trailing slash → 404.
#[tokio::test]
async fn other_paths_and_trailing_slash_answer_404() {
    let server = common::start_readme().await;
    for path in [
        "/state/?state=green_state",
        "/state/",
        "/State?state=green_state",
        "/states?state=green_state",
        "/state/green_state",
        "/?state=green_state",
        "/stateservice/state?state=green_state",
    ] {
        assert_eq!(
            server.get(path).await.status,
            StatusCode::NOT_FOUND,
            "GET {path}"
        );
    }
    assert_eq!(
        server.put("/state/?state=green_state").await.status,
        StatusCode::NOT_FOUND,
        "PUT /state/"
    );
    let answer = server.get("/state?state=green_state").await;
    assert_answer(&answer, StatusCode::OK, "green_state", "nothing moved");
}

/// The final state still answers 200 to GET (and to HEAD and OPTIONS).
#[tokio::test]
async fn final_state_still_answers_200_to_get() {
    let server = common::start_readme().await;
    walk_to_blue(&server).await;
    let answer = server.get("/state?state=blue_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "blue_state",
        "GET of the final state",
    );
    let answer = server
        .send(Method::HEAD, "/state?state=blue_state", None, None)
        .await;
    assert_answer(&answer, StatusCode::OK, "", "HEAD of the final state");
    let answer = server
        .send(Method::OPTIONS, "/state?state=blue_state", None, None)
        .await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "blue_state",
        "OPTIONS of the final state",
    );
    let answer = server.get("/state?state=red_state").await;
    assert_answer(
        &answer,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "GET of the state before",
    );
}

/// A PUT body is ignored: only the query string counts.
#[tokio::test]
async fn put_body_is_ignored() {
    let server = common::start_readme().await;
    let client = &server.client;
    let answer = client
        .put(server.url("/state?state=green_state"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("state=red_state")
        .send()
        .await
        .expect("PUT with a form body");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.expect("body"), "green_state");

    let answer = client
        .put(server.url("/state"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("state=red_state")
        .send()
        .await
        .expect("PUT with only a form body");
    assert_eq!(
        answer.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "a body does not stand in for the query"
    );

    let answer = client
        .put(server.url("/state?state=red_state"))
        .header("content-type", "application/json")
        .body("{ not even json")
        .send()
        .await
        .expect("PUT with a broken JSON body");
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "a broken body is ignored too"
    );
    assert_eq!(answer.text().await.expect("body"), "red_state");

    let answer = server.get("/state?state=blue_state").await;
    assert_answer(
        &answer,
        StatusCode::OK,
        "blue_state",
        "both PUTs counted by their query",
    );
}

// ---- Behaviour around the table ----

/// The README machine walks green_state → red_state → blue_state, each answer as StateService
/// gave it, and the history shows both moves.
#[tokio::test]
async fn walks_the_whole_readme_machine() {
    let server = common::start_readme().await;
    let steps = [("green_state", "red_state"), ("red_state", "blue_state")];
    for (from, to) in steps {
        assert_answer(
            &server.get(&format!("/state?state={from}")).await,
            StatusCode::OK,
            from,
            "before",
        );
        assert_answer(
            &server.get(&format!("/state?state={to}")).await,
            StatusCode::NOT_ACCEPTABLE,
            "",
            "not yet",
        );
        assert_answer(
            &server.put(&format!("/state?state={from}")).await,
            StatusCode::OK,
            from,
            "PUT",
        );
        assert_answer(
            &server.get(&format!("/state?state={from}")).await,
            StatusCode::NOT_ACCEPTABLE,
            "",
            "left",
        );
        assert_answer(
            &server.get(&format!("/state?state={to}")).await,
            StatusCode::OK,
            to,
            "arrived",
        );
    }
    let moves: Vec<(String, String)> = server
        .history(README_MACHINE_ID)
        .await
        .iter()
        .filter(|entry| entry["kind"] == "transition")
        .map(|entry| {
            (
                entry["from"].as_str().unwrap_or_default().to_string(),
                entry["to"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = steps
        .iter()
        .map(|(from, to)| (from.to_string(), to.to_string()))
        .collect();
    assert_eq!(moves, expected, "the history records both moves in order");
}

/// A `func: time` state moves by itself when its time comes (the timer worker commits it), and
/// the move survives a restart on the same store.
#[tokio::test]
async fn time_state_moves_by_itself_and_the_move_survives_a_restart() {
    let due_ms = common::local_time_ms(TIME_MACHINE_CLOCK);
    let file = ("timed.yaml", TIME_MACHINE_YAML);
    let server = common::start_with(common::Options {
        clock_ms: Some(due_ms - 60_000),
        machine_file: Some((file.0.to_string(), file.1.to_string())),
        ..Default::default()
    })
    .await;
    assert_answer(
        &server.get("/state?state=waiting_state").await,
        StatusCode::OK,
        "waiting_state",
        "before its time",
    );
    assert_answer(
        &server.get("/state?state=done_state").await,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "not yet",
    );

    server.clock.set_ms(due_ms - 1);
    assert_answer(
        &server.get("/state?state=waiting_state").await,
        StatusCode::OK,
        "waiting_state",
        "1 ms before",
    );

    server.clock.set_ms(due_ms + 1_000);
    server.wait_for_stored_state("timed", "done_state").await;
    assert_answer(
        &server.get("/state?state=done_state").await,
        StatusCode::OK,
        "done_state",
        "after its time",
    );
    assert_answer(
        &server.get("/state?state=waiting_state").await,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "left",
    );
    let timers = |history: &[serde_json::Value]| -> Vec<i64> {
        history
            .iter()
            .filter(|e| e["kind"] == "timer")
            .map(|e| e["at_ms"].as_i64().unwrap_or(-1))
            .collect()
    };
    assert_eq!(
        timers(&server.history("timed").await),
        vec![due_ms],
        "one timer move, at its due time"
    );

    let server = server.restart(due_ms + 5_000, Some(file)).await;
    assert_answer(
        &server.get("/state?state=done_state").await,
        StatusCode::OK,
        "done_state",
        "after a restart",
    );
    assert_answer(
        &server.get("/state?state=waiting_state").await,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "after a restart",
    );
    assert_eq!(server.stored_state("timed").await, "done_state");
    assert_eq!(
        timers(&server.history("timed").await),
        vec![due_ms],
        "the restart fired nothing again"
    );
}

/// Restarted on the same store, the machine continues from its stored state; the file's
/// `current_state` is only where a new machine starts.
#[tokio::test]
async fn restart_continues_from_the_stored_state_not_the_files_current_state() {
    let server = common::start_readme().await;
    assert_eq!(
        server.put("/state?state=green_state").await.status,
        StatusCode::OK
    );
    let server = server
        .restart(
            common::START_MS + 60_000,
            Some((README_MACHINE_FILE, README_MACHINE_YAML)),
        )
        .await;
    assert_answer(
        &server.get("/state?state=red_state").await,
        StatusCode::OK,
        "red_state",
        "stored state",
    );
    assert_answer(
        &server.get("/state?state=green_state").await,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "file's start",
    );
    assert_answer(
        &server.put("/state?state=red_state").await,
        StatusCode::OK,
        "red_state",
        "carries on",
    );

    // A machine saved in its final state starts again (StateService's could not).
    let server = server
        .restart(
            common::START_MS + 120_000,
            Some((README_MACHINE_FILE, README_MACHINE_YAML)),
        )
        .await;
    assert_answer(
        &server.get("/state?state=blue_state").await,
        StatusCode::OK,
        "blue_state",
        "final, restarted",
    );
}

/// Levee reads the machine file and keeps state in its store: the file's bytes are the same
/// after every kind of PUT.
#[tokio::test]
async fn the_machine_file_is_never_rewritten() {
    let dir = std::sync::Arc::new(tempfile::TempDir::new().expect("temporary folder"));
    let path = dir.path().join(README_MACHINE_FILE);
    std::fs::write(&path, README_MACHINE_YAML).expect("write the machine file");
    let modified_before = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let file_name = path.display().to_string();
    let content = String::from_utf8(common::read_bytes(&path)).expect("UTF-8");
    let server = common::start_with(common::Options {
        machine_file: Some((file_name, content)),
        dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    for path_and_query in [
        "/state?state=green_state",
        "/state?state=green_state",
        "/state?state=purple_state",
        "/state",
        "/state?state=red_state",
        "/state?state=blue_state",
    ] {
        server.put(path_and_query).await;
    }
    assert_answer(
        &server.get("/state?state=blue_state").await,
        StatusCode::OK,
        "blue_state",
        "walked",
    );
    drop(server.stop().await);
    assert_eq!(
        common::read_bytes(&path),
        README_MACHINE_YAML.as_bytes(),
        "the file's bytes"
    );
    let modified_after = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(
        modified_before, modified_after,
        "the file was not written to"
    );
}

/// StateService's README has a timer in the year 3000, which crashed its timer thread silently.
/// Levee keeps such a timer armed, answers for the machine, and keeps firing other timers.
#[tokio::test]
async fn a_timer_in_the_year_3000_is_kept_and_breaks_no_other_timer() {
    let far_future_yaml = TIME_MACHINE_YAML.replace(TIME_MACHINE_CLOCK, "3000-01-01T00:00:00");
    let server = common::start_with(common::Options {
        machine_file: Some(("timed.yaml".to_string(), far_future_yaml)),
        ..Default::default()
    })
    .await;
    assert_answer(
        &server.get("/state?state=waiting_state").await,
        StatusCode::OK,
        "waiting_state",
        "waiting",
    );
    let machine = server.machine("timed").await;
    assert!(
        machine["timer_due_at"]
            .as_str()
            .is_some_and(|due| due.starts_with("3000-01-01") || due.starts_with("2999-12-31")),
        "the timer is armed for the year 3000: {machine}"
    );

    let soak = "\
kind: StateMachine
name: soak
instances: [soak-1]
states:
  - name: soaking
    timer: { after: 2s, to: done }
  - name: done
    final: true
";
    server.apply("soak.yaml", soak).await;
    server.clock.advance_ms(2_000);
    server.wait_for_stored_state("soak-1", "done").await;
    assert_answer(
        &server.get("/state?state=waiting_state").await,
        StatusCode::OK,
        "waiting_state",
        "still waiting",
    );
}
