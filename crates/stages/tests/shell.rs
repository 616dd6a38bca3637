//! The `shell` stage against real processes.

mod common;

use std::time::{Duration, Instant};

use common::{context, group_exists, group_gone_within};
use levee_stages::{
    Canceller, KILL_GRACE_MS, MAX_OUTPUT_BYTES, ShellStage, Stage, StageContext, StageOutcome,
};
use serde_json::json;

const GENEROUS: Duration = Duration::from_secs(60);

/// Reads the process-group id a test command printed as its first line (`echo $$`).
fn first_line_pgid(ctx: &StageContext) -> i32 {
    let text = ctx.output.snapshot().text;
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in output {text:?}"))
}

/// Waits until the command has printed its pid.
async fn pgid_when_printed(ctx: &StageContext) -> i32 {
    for _ in 0..250 {
        if ctx.output.snapshot().text.contains('\n') {
            return first_line_pgid(ctx);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the command never printed its pid");
}

#[tokio::test]
async fn a_command_succeeds_with_its_output() {
    let outcome = ShellStage
        .run(
            context(GENEROUS),
            &json!({ "command": ["sh", "-c", "echo out; echo err >&2"] }),
        )
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert!(
        output.captured.text.contains("out\n"),
        "{:?}",
        output.captured
    );
    assert!(
        output.captured.text.contains("err\n"),
        "{:?}",
        output.captured
    );
    assert_eq!(output.data["exit_code"], 0);
}

#[tokio::test]
async fn arguments_never_go_through_a_shell() {
    let hostile = "$(touch /tmp/levee-should-not-exist); echo $HOME `id` | cat";
    let outcome = ShellStage
        .run(context(GENEROUS), &json!({ "command": ["echo", hostile] }))
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(output.captured.text, format!("{hostile}\n"));
}

#[tokio::test]
async fn env_and_cwd_are_applied() {
    let directory = tempfile::tempdir().unwrap();
    let outcome = ShellStage
        .run(
            context(GENEROUS),
            &json!({
                "command": ["sh", "-c", "echo \"$GREETING\"; pwd"],
                "env": { "GREETING": "hello from levee" },
                "cwd": directory.path().to_str().unwrap(),
            }),
        )
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    let canonical = directory.path().canonicalize().unwrap();
    assert_eq!(
        output.captured.text,
        format!("hello from levee\n{}\n", canonical.display())
    );
}

#[tokio::test]
async fn a_nonzero_exit_fails_with_its_code_and_output_tail() {
    let outcome = ShellStage
        .run(
            context(GENEROUS),
            &json!({ "command": ["sh", "-c", "echo disk is full >&2; exit 3"] }),
        )
        .await;
    let StageOutcome::Failed {
        error,
        retryable,
        output,
    } = outcome
    else {
        panic!("expected failure, got {outcome:?}");
    };
    assert_eq!(output.data["exit_code"], 3);
    assert!(error.contains("exited with code 3"), "{error}");
    assert!(error.contains("disk is full"), "{error}");
    assert!(retryable);
}

#[tokio::test]
async fn a_missing_program_fails_for_good() {
    let outcome = ShellStage
        .run(
            context(GENEROUS),
            &json!({ "command": ["/nonexistent/levee-test-program"] }),
        )
        .await;
    let StageOutcome::Failed {
        error, retryable, ..
    } = outcome
    else {
        panic!("expected failure, got {outcome:?}");
    };
    assert!(error.contains("could not start"), "{error}");
    assert!(!retryable);
}

#[tokio::test]
async fn the_timeout_kills_the_whole_process_group() {
    let ctx = context(GENEROUS);
    let probe = ctx.clone();
    let started = Instant::now();
    let outcome = ShellStage
        .run(
            ctx,
            &json!({ "command": ["sh", "-c", "echo $$; sleep 100 & sleep 100"], "timeout": "1s" }),
        )
        .await;
    assert_eq!(outcome, StageOutcome::TimedOut);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(1_000 + KILL_GRACE_MS + 2_000),
        "{elapsed:?}"
    );
    let pgid = first_line_pgid(&probe);
    assert!(
        group_gone_within(pgid, Duration::from_secs(5)).await,
        "process group {pgid} survived the timeout"
    );
}

#[tokio::test]
async fn the_context_deadline_also_bounds_a_command() {
    let ctx = context(Duration::from_millis(300));
    let probe = ctx.clone();
    let outcome = ShellStage
        .run(
            ctx,
            &json!({ "command": ["sh", "-c", "echo $$; sleep 100"] }),
        )
        .await;
    assert_eq!(outcome, StageOutcome::TimedOut);
    let pgid = first_line_pgid(&probe);
    assert!(group_gone_within(pgid, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_process_ignoring_sigterm_gets_sigkill_after_the_grace() {
    let ctx = context(GENEROUS);
    let probe = ctx.clone();
    let started = Instant::now();
    let outcome = ShellStage
        .run(
            ctx,
            &json!({
                "command": ["sh", "-c", "trap '' TERM; echo $$; sleep 100 & sleep 100"],
                "timeout": "500ms",
            }),
        )
        .await;
    assert_eq!(outcome, StageOutcome::TimedOut);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500 + KILL_GRACE_MS),
        "SIGKILL came before the grace ended: {elapsed:?}"
    );
    let pgid = first_line_pgid(&probe);
    assert!(group_gone_within(pgid, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn cancellation_kills_the_whole_process_group() {
    let (canceller, token) = Canceller::new();
    let mut ctx = context(GENEROUS);
    ctx.cancel = token;
    let probe = ctx.clone();
    let run = tokio::spawn(async move {
        ShellStage
            .run(
                ctx,
                &json!({ "command": ["sh", "-c", "echo $$; sleep 100 & sleep 100"] }),
            )
            .await
    });
    let pgid = pgid_when_printed(&probe).await;
    assert!(group_exists(pgid));
    canceller.cancel();
    assert_eq!(run.await.unwrap(), StageOutcome::Cancelled);
    assert!(group_gone_within(pgid, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn background_leftovers_holding_the_output_are_killed() {
    let ctx = context(GENEROUS);
    let probe = ctx.clone();
    let outcome = ShellStage
        .run(
            ctx,
            &json!({ "command": ["sh", "-c", "echo $$; sleep 100 &"] }),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    let pgid = first_line_pgid(&probe);
    assert!(group_gone_within(pgid, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn long_output_keeps_the_tail_and_says_how_much_was_cut() {
    let total_bytes = 200_000;
    let outcome = ShellStage
        .run(
            context(GENEROUS),
            &json!({
                "command": ["sh", "-c", format!("head -c {total_bytes} /dev/zero | tr '\\0' a; echo; echo END; exit 1")],
            }),
        )
        .await;
    let StageOutcome::Failed { error, output, .. } = outcome else {
        panic!("expected failure, got {outcome:?}");
    };
    let written = total_bytes + "\nEND\n".len();
    assert_eq!(output.captured.text.len(), MAX_OUTPUT_BYTES);
    assert_eq!(
        output.captured.cut_bytes as usize,
        written - MAX_OUTPUT_BYTES
    );
    assert!(output.captured.text.ends_with("aaa\nEND\n"));
    assert!(
        error.contains(&format!(
            "[{} earlier bytes cut]",
            written - MAX_OUTPUT_BYTES
        )),
        "{}",
        &error[..200]
    );
}

/// A run's fencing token reaches the program as `LEVEE_FENCING_TOKEN`, replacing one the
/// task's `env` set.
#[tokio::test]
async fn the_fencing_token_is_in_the_environment() {
    let mut ctx = context(GENEROUS);
    ctx.fencing_token = Some(42);
    let outcome = ShellStage
        .run(
            ctx,
            &json!({
                "command": ["sh", "-c", "echo \"token=$LEVEE_FENCING_TOKEN\""],
                "env": { "LEVEE_FENCING_TOKEN": "1" },
            }),
        )
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(output.captured.text.trim(), "token=42");
}
