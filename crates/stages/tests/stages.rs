//! The `wait` and `log` stages, and argument validation across the built-ins.

mod common;

use std::time::{Duration, Instant};

use common::context;
use levee_stages::{
    ArgError, Canceller, HttpStage, LintError, LogStage, Registry, ShellStage, Stage, StageOutcome,
    WaitStage,
};
use serde_json::json;

#[tokio::test]
async fn wait_waits_its_duration() {
    let started = Instant::now();
    let outcome = WaitStage
        .run(
            context(Duration::from_secs(30)),
            &json!({ "duration": "150ms" }),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn wait_stops_when_cancelled() {
    let (canceller, token) = Canceller::new();
    let mut ctx = context(Duration::from_secs(600));
    ctx.cancel = token;
    let started = Instant::now();
    let run = tokio::spawn(async move { WaitStage.run(ctx, &json!({ "duration": "10m" })).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    canceller.cancel();
    assert_eq!(run.await.unwrap(), StageOutcome::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn wait_longer_than_the_deadline_times_out_at_the_deadline() {
    let started = Instant::now();
    let outcome = WaitStage
        .run(
            context(Duration::from_millis(100)),
            &json!({ "duration": "1h" }),
        )
        .await;
    assert_eq!(outcome, StageOutcome::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn log_records_its_message() {
    let ctx = context(Duration::from_secs(5));
    let sink = ctx.output.clone();
    let outcome = LogStage
        .run(ctx, &json!({ "message": "web drained from dc1" }))
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(output.captured.text, "web drained from dc1");
    assert_eq!(output.data["message"], "web drained from dc1");
    assert_eq!(sink.snapshot().text, "web drained from dc1");
    assert!(LogStage.idempotent());
}

#[test]
fn shell_without_command_names_the_argument() {
    let error = ShellStage
        .validate(&json!({ "timeout": "5s" }))
        .unwrap_err();
    assert!(matches!(error, ArgError::Missing { ref argument, .. } if argument == "command"));
    assert!(
        error.to_string().contains("`command` is required"),
        "{error}"
    );
}

#[test]
fn shell_command_must_be_a_list() {
    let error = ShellStage
        .validate(&json!({ "command": "rm -rf /tmp/x" }))
        .unwrap_err();
    assert!(matches!(error, ArgError::WrongType { ref argument, .. } if argument == "command"));
    assert!(
        error.to_string().contains("must be a list of strings"),
        "{error}"
    );
    let error = ShellStage
        .validate(&json!({ "command": ["ls", 3] }))
        .unwrap_err();
    assert_eq!(error.argument(), Some("command"));
    let error = ShellStage.validate(&json!({ "command": [] })).unwrap_err();
    assert_eq!(error.argument(), Some("command"));
}

#[test]
fn unknown_arguments_list_the_known_ones() {
    let error = ShellStage
        .validate(&json!({ "command": ["true"], "shell": true }))
        .unwrap_err();
    assert_eq!(error.argument(), Some("shell"));
    assert_eq!(
        error.to_string(),
        "unknown argument `shell`; known arguments are: command, env, cwd, timeout"
    );
}

#[test]
fn durations_and_ranges_are_checked() {
    for (args, argument) in [
        (json!({ "command": ["true"], "timeout": "0s" }), "timeout"),
        (json!({ "command": ["true"], "timeout": "2d" }), "timeout"),
        (json!({ "command": ["true"], "timeout": 30 }), "timeout"),
        (json!({ "command": ["true"], "env": { "A=B": "x" } }), "env"),
        (json!({ "command": ["true"], "env": { "N": 1 } }), "env.N"),
    ] {
        let error = ShellStage.validate(&args).unwrap_err();
        assert_eq!(error.argument(), Some(argument), "{args}: {error}");
    }
    let error = WaitStage.validate(&json!({})).unwrap_err();
    assert_eq!(error.argument(), Some("duration"));
    let error = WaitStage
        .validate(&json!({ "duration": "5 sec" }))
        .unwrap_err();
    assert_eq!(error.argument(), Some("duration"));
    assert!(WaitStage.validate(&json!({ "duration": "1h30m" })).is_ok());
    assert!(WaitStage.validate(&json!({ "duration": "500ms" })).is_ok());
}

#[test]
fn http_arguments_are_checked() {
    for (args, argument) in [
        (json!({}), "url"),
        (json!({ "url": "not a url" }), "url"),
        (json!({ "url": "https://example.invalid/" }), "url"),
        (json!({ "url": "ftp://example.invalid/" }), "url"),
        (
            json!({ "url": "http://127.0.0.1/", "method": "BREW" }),
            "method",
        ),
        (
            json!({ "url": "http://127.0.0.1/", "expect_status": [99] }),
            "expect_status",
        ),
        (
            json!({ "url": "http://127.0.0.1/", "expect_status": [] }),
            "expect_status",
        ),
        (
            json!({ "url": "http://127.0.0.1/", "headers": { "bad name": "x" } }),
            "headers",
        ),
        (
            json!({ "url": "http://127.0.0.1/", "timeout": "1h" }),
            "timeout",
        ),
    ] {
        let error = HttpStage.validate(&args).unwrap_err();
        assert_eq!(error.argument(), Some(argument), "{args}: {error}");
    }
}

#[tokio::test]
async fn running_with_invalid_arguments_fails_without_retry() {
    let outcome = ShellStage
        .run(context(Duration::from_secs(5)), &json!({ "command": "ls" }))
        .await;
    assert!(
        matches!(outcome, StageOutcome::Failed { retryable: false, ref error, .. } if error.contains("`command`")),
        "{outcome:?}"
    );
}

#[test]
fn the_registry_lints_definitions() {
    let registry = Registry::builtin();
    assert!(
        registry
            .lint_stage("shell", &json!({ "command": ["drain", "{{ params.dc }}"] }))
            .is_ok()
    );
    let error = registry
        .lint_stage("shell", &json!({ "command": ["true"], "retries": 3 }))
        .unwrap_err();
    assert!(
        matches!(error, LintError::Args { ref error, .. } if error.argument() == Some("retries")),
        "{error}"
    );
    assert!(
        registry
            .lint_check("metric", &json!({ "query": "up", "below": 1 }))
            .is_ok()
    );
    assert!(registry.lint_check("nope", &json!({})).is_err());
    assert_eq!(
        registry.stage_idempotent_for("http", &json!({ "method": "POST", "url": "http://a/" })),
        Some(false)
    );
    assert_eq!(
        registry.stage_idempotent_for("shell", &json!({})),
        Some(false)
    );
    assert_eq!(
        registry.stage_idempotent_for("wait", &json!({})),
        Some(true)
    );
}
