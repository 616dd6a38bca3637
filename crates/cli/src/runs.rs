//! `levee run` and `levee runs ...`: starting runbook runs, listing and showing them,
//! following them live, steering them with operator controls, and their journal, report and
//! task output; `levee pause` and `levee unpause`, the pause of every run.
//!
//! Exit codes follow the rest of the CLI: 0 success, 2 errors (usage, connection, an answer
//! the server refused for a reason other than the run's state). 1 means "no": a run that
//! ended failed or aborted (`run --wait`, `runs watch`), a control the run's state does not
//! allow (409), or parameters the runbook does not take (as `levee plan`).
//!
//! Text from the server that a task or an operator wrote (reasons, errors, task output) is
//! untrusted: it is escaped before it reaches a terminal, so it can never move the cursor,
//! retitle the window or hide text.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use levee_engine::runbook::{CheckPhase, JournalEntry, JournalKind, RunStatus, StallCause};
use levee_model::parse_duration_ms;
use levee_server::clock::rfc3339;
use levee_server::http::api::MAX_PAGE_LIMIT;
use levee_server::http::runs::EVENT_STREAM_KEEPALIVE_MS;
use levee_server::runs::MAX_REASON_BYTES;
use levee_server::runs::views::{RunView, TaskView};
use levee_store::{JournalRecord, RunSummary, TaskOutput};
use reqwest::header::HeaderName;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{ByteStream, Client, ClientError};
use crate::commands::{
    CliError, EXIT_NO, EXIT_OK, Outcome, Output, OutputArgs, ServerArgs, cell, eprint_line,
    human_ms, now_ms, param_failure, parse_param, parse_reply, plural, print_json, print_line,
    print_raw, table, unexpected,
};
use crate::sse::SseParser;
use crate::terminal::{self, LiveBlock, escape_line, escape_text, truncate};

/// How long `runs watch` waits before reconnecting a dropped event stream, unless the server
/// asked for another time with `retry:`; doubled after each attempt in a row that fails.
pub const RECONNECT_DELAY_MS: u64 = 1_000;
/// Longest wait between two reconnection attempts.
pub const MAX_RECONNECT_DELAY_MS: u64 = 30_000;
/// Reconnection attempts in a row that may fail (no connection, or one that delivered no
/// entry) before `runs watch` gives up with exit code 2.
pub const MAX_RECONNECT_ATTEMPTS: u32 = 10;
/// An event stream silent for this long is taken as dropped: three of the server's keep-alive
/// intervals.
pub const STREAM_IDLE_TIMEOUT_MS: u64 = 3 * EVENT_STREAM_KEEPALIVE_MS;
/// How often the live view is redrawn: elapsed times move even when nothing happens.
pub const LIVE_REDRAW_INTERVAL_MS: u64 = 250;
/// Least time between two reads of the run for the live view, however many entries arrive.
pub const LIVE_REFRESH_INTERVAL_MS: u64 = 500;
/// Tasks given a line each in the live view (running ones first, then stalled ones); the
/// rest are counted.
pub const MAX_LIVE_TASK_LINES: usize = 15;
/// Width of a progress bar in the live view, in characters, brackets excluded.
pub const PROGRESS_BAR_COLUMNS: usize = 20;
/// Fewest columns the REASON column of `runs show` is cut to, however narrow the terminal.
pub const MIN_REASON_COLUMNS: usize = 20;
/// Times less than this long ago are shown relative (`5m 12s ago`), older ones as dates.
pub const RELATIVE_TIME_WINDOW_MS: u64 = 24 * 3_600_000;
/// The placeholder for a reason in suggested commands.
const REASON_PLACEHOLDER: &str = "--reason \"...\"";

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Name of a runbook stored with `levee apply`.
    pub runbook: String,
    /// A parameter of the runbook, as `key=value`; repeat for several.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// A name that makes the start idempotent: starting again with the same name answers the
    /// run the first start created and starts nothing new.
    #[arg(long)]
    pub name: Option<String>,
    /// Tasks that may run at once (default: the runbook's `max_parallel`, else the server's).
    #[arg(long, value_name = "N")]
    pub max_parallel: Option<u32>,
    /// Create the run without starting it; start it with `levee runs start ID --reason ...`.
    #[arg(long, conflicts_with = "wait")]
    pub no_start: bool,
    /// Follow the run until it ends, as `levee runs watch` does: exit 0 only if it
    /// succeeded, 1 if it failed or was aborted. Ctrl-C stops following, not the run.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Lists runs, newest first.
    List(RunsListArgs),
    /// Shows a run: where it is, every task, and what waits for a human (with the commands
    /// that would resolve it).
    Show(RunIdArgs),
    /// Follows a run live until it ends: exits 0 if it succeeded, 1 if it failed or was
    /// aborted. When stdout is not a terminal, prints one line per journal entry instead.
    Watch(WatchArgs),
    /// Shows a run's journal: who did what, when and why.
    Journal(JournalArgs),
    /// Shows a run's report: critical path, makespan, sequential-equivalent time, speedup,
    /// slowest tasks and time spent waiting for approvals.
    Report(RunIdArgs),
    /// Prints what each attempt of a task printed (on a terminal with control characters
    /// escaped, never interpreted).
    Output(TaskOutputArgs),
    /// Starts a run created with `levee run --no-start`.
    Start(RunControlArgs),
    /// Pauses a run: running tasks finish, no new task starts.
    Pause(RunControlArgs),
    /// Resumes a paused run.
    Resume(RunControlArgs),
    /// Aborts a run: running tasks are cancelled and nothing else starts. Final.
    Abort(RunControlArgs),
    /// Skips a task: counts it as done without running it (a running attempt is cancelled).
    Skip(TaskControlArgs),
    /// Runs a failed or stalled task again, checks included.
    Retry(TaskControlArgs),
    /// Accepts the failed pre, post or health check of a stalled task and goes on without it.
    Override(TaskControlArgs),
    /// Lets a waiting task start without one of its weak (`after`) dependencies.
    OverrideDep(DepControlArgs),
    /// Approves an approval task that is waiting for one.
    Approve(TaskControlArgs),
    /// Changes a paced task's pace (a `ramp`'s step size and wait between steps), now if it
    /// is running, or for when it starts.
    Pace(PaceControlArgs),
}

#[derive(Args, Debug)]
pub struct RunsListArgs {
    /// Only runs with these statuses, comma-separated: pending, running, paused, succeeded,
    /// failed, aborted.
    #[arg(long, value_name = "STATUS,...")]
    pub status: Option<String>,
    /// Only runs of this runbook.
    #[arg(long)]
    pub runbook: Option<String>,
    /// Runs to show (1 to 1000; the server's default page otherwise).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RunIdArgs {
    /// Run id.
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Run id.
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct JournalArgs {
    /// Run id.
    pub id: String,
    /// Only entries after this sequence number (to page forward).
    #[arg(long, value_name = "SEQ")]
    pub after: Option<i64>,
    /// Entries to show (1 to 1000; the server's default page otherwise).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct TaskOutputArgs {
    /// Run id.
    pub id: String,
    /// Task id.
    pub task: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RunControlArgs {
    /// Run id.
    pub id: String,
    /// Why: kept in the run's journal and the audit log.
    #[arg(long, value_name = "TEXT", value_parser = parse_reason)]
    pub reason: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct TaskControlArgs {
    /// Run id.
    pub id: String,
    /// Task id.
    pub task: String,
    /// Why: kept in the run's journal and the audit log.
    #[arg(long, value_name = "TEXT", value_parser = parse_reason)]
    pub reason: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct PaceControlArgs {
    /// Run id.
    pub id: String,
    /// The paced task.
    pub task: String,
    /// How far each further step moves: a number, or a percentage of the whole span (`10%`).
    #[arg(long, value_name = "AMOUNT")]
    pub step: Option<String>,
    /// How long to wait after each step (`30s`, `2m`).
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
    /// Why: kept in the run's journal and the audit log.
    #[arg(long, value_name = "TEXT", value_parser = parse_reason)]
    pub reason: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct DepControlArgs {
    /// Run id.
    pub id: String,
    /// The waiting task.
    pub task: String,
    /// The weak dependency it should stop waiting for.
    pub dep: String,
    /// Why: kept in the run's journal and the audit log.
    #[arg(long, value_name = "TEXT", value_parser = parse_reason)]
    pub reason: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    /// Why every run is paused: kept in the audit log and shown by `levee pause --status`.
    #[arg(
        long,
        value_name = "TEXT",
        value_parser = parse_reason,
        required_unless_present = "status"
    )]
    pub reason: Option<String>,
    /// Change nothing: show whether runs are paused, since when, by whom and why.
    #[arg(long, conflicts_with = "reason")]
    pub status: bool,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct UnpauseArgs {
    /// Why the pause is lifted: kept in the audit log.
    #[arg(long, value_name = "TEXT", value_parser = parse_reason)]
    pub reason: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A reason as the server takes it: not blank, at most [`MAX_REASON_BYTES`].
fn parse_reason(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("give a reason: it goes into the run's journal and the audit log".to_string());
    }
    if text.len() > MAX_REASON_BYTES {
        return Err(format!(
            "the reason is {} bytes; keep it under {MAX_REASON_BYTES}",
            text.len()
        ));
    }
    Ok(text.to_string())
}

/// Runs one `levee runs` command.
pub async fn runs(command: RunsCommand) -> Outcome {
    match command {
        RunsCommand::List(args) => list(&args).await,
        RunsCommand::Show(args) => show(&args).await,
        RunsCommand::Watch(args) => watch(&args).await,
        RunsCommand::Journal(args) => journal(&args).await,
        RunsCommand::Report(args) => report(&args).await,
        RunsCommand::Output(args) => output(&args).await,
        RunsCommand::Start(args) => run_control(&args, "start").await,
        RunsCommand::Pause(args) => run_control(&args, "pause").await,
        RunsCommand::Resume(args) => run_control(&args, "resume").await,
        RunsCommand::Abort(args) => run_control(&args, "abort").await,
        RunsCommand::Skip(args) => task_control(&args, "skip").await,
        RunsCommand::Retry(args) => task_control(&args, "retry").await,
        RunsCommand::Override(args) => task_control(&args, "override_condition").await,
        RunsCommand::Approve(args) => task_control(&args, "approve").await,
        RunsCommand::OverrideDep(args) => {
            let control = Control {
                control: "override_weak_dep",
                id: &args.id,
                task: Some(&args.task),
                dep: Some(&args.dep),
                pace: None,
                reason: &args.reason,
            };
            control.send(&args.server, args.output.output).await
        }
        RunsCommand::Pace(args) => {
            let mut pace = serde_json::Map::new();
            if let Some(step) = &args.step {
                // A plain number is sent as one; anything else (`10%`) as written.
                let value = step
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| json!(step), Value::Number);
                pace.insert("step".to_string(), value);
            }
            if let Some(wait) = &args.wait {
                pace.insert("wait".to_string(), json!(wait));
            }
            if pace.is_empty() {
                return Err(anyhow::anyhow!(
                    "give --step, --wait or both: there is nothing to change"
                )
                .into());
            }
            let control = Control {
                control: "set_pace",
                id: &args.id,
                task: Some(&args.task),
                dep: None,
                pace: Some(Value::Object(pace)),
                reason: &args.reason,
            };
            control.send(&args.server, args.output.output).await
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading runs.

/// A run's status as the engine names it, if it is one this client knows.
fn status_of(view: &RunView) -> Option<RunStatus> {
    serde_json::from_value(Value::String(view.status.clone())).ok()
}

fn is_ended(view: &RunView) -> bool {
    status_of(view).is_some_and(RunStatus::is_ended)
}

/// The exit code of a run that ended: 0 if it succeeded, 1 otherwise.
fn exit_code(view: &RunView) -> u8 {
    if status_of(view) == Some(RunStatus::Succeeded) {
        EXIT_OK
    } else {
        EXIT_NO
    }
}

async fn get_run(client: &Client, id: &str) -> Result<(RunView, Value), CliError> {
    let value: Value = client.get(&["api", "v1", "runs", id], &[]).await?;
    let view = serde_json::from_value(value.clone())
        .map_err(|error| unexpected(client, "a run", error))?;
    Ok((view, value))
}

/// `1.5s`, `12s`, `1m 5s`: elapsed times in whole seconds once past one.
pub(crate) fn human_s(ms: u64) -> String {
    if ms < 1_000 {
        human_ms(ms)
    } else {
        human_ms(ms / 1_000 * 1_000)
    }
}

fn since(now_ms: i64, at_ms: i64) -> u64 {
    u64::try_from(now_ms.saturating_sub(at_ms)).unwrap_or(0)
}

/// `5m 12s ago` for recent times, else the UTC date and minute.
fn when(now_ms: i64, at_ms: i64) -> String {
    let ago = now_ms.saturating_sub(at_ms);
    match u64::try_from(ago) {
        Ok(ago) if ago < RELATIVE_TIME_WINDOW_MS => {
            let text = human_s(ago);
            let coarse: Vec<&str> = text.split(' ').take(2).collect();
            format!("{} ago", coarse.join(" "))
        }
        _ => jiff::Timestamp::from_millisecond(at_ms)
            .map(|t| t.strftime("%Y-%m-%d %H:%MZ").to_string())
            .unwrap_or_else(|_| at_ms.to_string()),
    }
}

/// How long a run has taken: to its end, or so far.
fn run_duration_ms(started: Option<i64>, finished: Option<i64>, now_ms: i64) -> Option<u64> {
    let started = started?;
    Some(since(finished.unwrap_or(now_ms), started))
}

/// How long a task has taken: first dispatch to its end, or so far.
fn task_duration_ms(task: &TaskView, now_ms: i64) -> Option<u64> {
    run_duration_ms(task.started_at_ms, task.finished_at_ms, now_ms)
}

/// `3/5 done`, with failed/stalled and running counts when there are any.
fn progress_text(view: &RunView) -> String {
    let counts = &view.counts;
    let mut parts = vec![format!(
        "{}/{} done",
        counts.succeeded + counts.skipped,
        counts.total
    )];
    if counts.running > 0 {
        parts.push(format!("{} running", counts.running));
    }
    if counts.retrying > 0 {
        parts.push(format!("{} retrying", counts.retrying));
    }
    if counts.failed > 0 {
        parts.push(format!("{} failed", counts.failed));
    }
    if counts.stalled > 0 {
        parts.push(format!("{} stalled", counts.stalled));
    }
    if counts.cancelled > 0 {
        parts.push(format!("{} cancelled", counts.cancelled));
    }
    parts.join(", ")
}

/// Why a task stalled, to follow "stalled".
fn stall_text(stall: Option<&str>) -> &'static str {
    match stall {
        Some("pre") => "on its pre-check",
        Some("post") => "on its post-check",
        Some("health") => "on its health check",
        Some("in_flight_at_restart") => "in flight when the server restarted",
        Some("timed_out") => "after timing out part way",
        _ => "waiting for an operator",
    }
}

/// A duration for a table: exact once over, in whole seconds while it goes on.
fn duration_text(ms: Option<u64>, over: bool) -> String {
    match ms {
        None => "-".to_string(),
        Some(ms) if over => human_ms(ms),
        Some(ms) => human_s(ms),
    }
}

fn is_awaiting_approval(task: &TaskView) -> bool {
    task.status == "running"
        && task.stage == levee_engine::runbook::APPROVAL_STAGE
        && task.in_flight == Some(true)
}

/// The REASON cell of a task: why it failed, stalled or waits.
fn task_reason(task: &TaskView, now_ms: i64) -> String {
    let reason = task.reason.as_deref().unwrap_or("");
    let text = match task.status.as_str() {
        "stalled" => format!("{}: {reason}", task.stall.as_deref().unwrap_or("stalled")),
        "retrying" => match task.retry_at_ms {
            Some(at) if at > now_ms => {
                format!("retry in {}: {reason}", human_s(since(at, now_ms)))
            }
            _ => format!("retry due: {reason}"),
        },
        _ if is_awaiting_approval(task) => "waiting for approval".to_string(),
        _ => reason.to_string(),
    };
    let mut text = text.trim().to_string();
    if !task.overridden_deps.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&format!(
            "not waiting for {}",
            task.overridden_deps.join(", ")
        ));
    }
    escape_line(&text)
}

/// What waits for a human, and the commands that would resolve it.
fn attention_lines(view: &RunView) -> Vec<String> {
    let id = &view.id;
    let mut lines = Vec::new();
    let status = status_of(view);
    if status.is_some_and(RunStatus::is_final) {
        return lines;
    }
    match status {
        Some(RunStatus::Pending) => {
            lines.push("  the run is not started".to_string());
            lines.push(format!("    levee runs start {id} {REASON_PLACEHOLDER}"));
        }
        Some(RunStatus::Paused) => {
            lines.push("  the run is paused: no new task starts".to_string());
            lines.push(format!("    levee runs resume {id} {REASON_PLACEHOLDER}"));
        }
        _ => {}
    }
    for task in &view.tasks {
        let t = &task.id;
        let control = |control: &str, what: &str| {
            (
                format!("levee runs {control} {id} {t} {REASON_PLACEHOLDER}"),
                what.to_string(),
            )
        };
        if is_awaiting_approval(task) {
            lines.push(format!("  {t} waits for approval"));
            push_commands(&mut lines, vec![control("approve", "")]);
            continue;
        }
        let reason = escape_line(task.reason.as_deref().unwrap_or("").trim());
        match task.status.as_str() {
            "stalled" => {
                let stall = task.stall.as_deref();
                lines.push(format!("  {t} stalled {}: {reason}", stall_text(stall)));
                let mut commands = vec![control("retry", "run it again, checks included")];
                if matches!(stall, Some("pre" | "post" | "health")) {
                    commands.push(control("override", "accept the failed check and go on"));
                } else {
                    lines.push(
                        "    (it may have done part of its work: check by hand first)".to_string(),
                    );
                }
                commands.push(control("skip", "count it done without running it"));
                push_commands(&mut lines, commands);
            }
            "failed" => {
                lines.push(format!("  {t} failed: {reason}"));
                push_commands(
                    &mut lines,
                    vec![
                        (
                            format!("levee runs output {id} {t}"),
                            "what it printed".to_string(),
                        ),
                        control("retry", "run it again"),
                        control("skip", "count it done without running it"),
                    ],
                );
            }
            "waiting" => {
                for dep in &task.after {
                    if task.overridden_deps.contains(dep) {
                        continue;
                    }
                    let Some(dep_task) = view.tasks.iter().find(|d| &d.id == dep) else {
                        continue;
                    };
                    if matches!(dep_task.status.as_str(), "failed" | "stalled") {
                        lines.push(format!("  {t} waits for {dep}, which {}", dep_task.status));
                        push_commands(
                            &mut lines,
                            vec![(
                                format!(
                                    "levee runs override-dep {id} {t} {dep} {REASON_PLACEHOLDER}"
                                ),
                                format!("start it without {dep}"),
                            )],
                        );
                    }
                }
            }
            _ => {}
        }
    }
    lines
}

/// Suggested commands, one a line, their comments aligned.
fn push_commands(lines: &mut Vec<String>, commands: Vec<(String, String)>) {
    let width = commands
        .iter()
        .map(|(command, _)| command.chars().count())
        .max()
        .unwrap_or(0);
    for (command, what) in commands {
        if what.is_empty() {
            lines.push(format!("    {command}"));
        } else {
            lines.push(format!("    {command:width$}  # {what}"));
        }
    }
}

/// `name=value, name=value` of a run's parameters.
fn params_text(params: &Value) -> String {
    match params {
        Value::Object(map) if !map.is_empty() => map
            .iter()
            .map(|(name, value)| match value {
                Value::String(text) => format!("{name}={text}"),
                other => format!("{name}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".to_string(),
    }
}

/// `runs show` as text. `columns` is the terminal's width (the REASON column is cut to fit),
/// or `None` for full reasons.
pub(crate) fn show_text(view: &RunView, now_ms: i64, columns: Option<usize>) -> String {
    let mut out = match &view.name {
        Some(name) => format!("Run {} ({name})\n", view.id),
        None => format!("Run {}\n", view.id),
    };
    let started = match (view.started_at_ms, &view.started_by) {
        (Some(at), Some(by)) => format!("{} by {by}", rfc3339(at)),
        (Some(at), None) => rfc3339(at),
        _ => "not yet".to_string(),
    };
    let fields = vec![
        vec![
            "runbook".to_string(),
            format!("{} v{}", view.runbook, view.runbook_version),
        ],
        vec![
            "params".to_string(),
            escape_line(&params_text(&view.params)),
        ],
        vec!["status".to_string(), view.status.clone()],
        vec![
            "created".to_string(),
            format!("{} by {}", rfc3339(view.created_at_ms), view.created_by),
        ],
        vec!["started".to_string(), started],
        vec![
            "duration".to_string(),
            duration_text(
                run_duration_ms(view.started_at_ms, view.finished_at_ms, now_ms),
                view.finished_at_ms.is_some(),
            ),
        ],
        vec![
            "outcome".to_string(),
            escape_line(&cell(view.outcome.as_deref())),
        ],
        vec!["progress".to_string(), progress_text(view)],
    ];
    let text = table(&["FIELD", "VALUE"], &fields);
    out.push_str(
        text.split_once('\n')
            .map_or(text.as_str(), |(_, rest)| rest),
    );
    out.push('\n');
    let mut rows: Vec<Vec<String>> = view
        .tasks
        .iter()
        .map(|task| {
            vec![
                task.id.clone(),
                task.stage.clone(),
                task.status.clone(),
                task.attempts.to_string(),
                duration_text(
                    task_duration_ms(task, now_ms),
                    task.finished_at_ms.is_some(),
                ),
                task_reason(task, now_ms),
            ]
        })
        .collect();
    let headers = ["TASK", "STAGE", "STATUS", "ATTEMPTS", "DURATION", "REASON"];
    if let Some(columns) = columns {
        let used: usize = (0..headers.len() - 1)
            .map(|i| {
                rows.iter()
                    .map(|row| row[i].chars().count())
                    .chain([headers[i].len()])
                    .max()
                    .unwrap_or(0)
                    + 2
            })
            .sum();
        let room = columns.saturating_sub(used).max(MIN_REASON_COLUMNS);
        for row in &mut rows {
            if let Some(reason) = row.last_mut() {
                *reason = truncate(reason, room);
            }
        }
    }
    for row in &mut rows {
        if let Some(reason) = row.last_mut()
            && reason.is_empty()
        {
            *reason = "-".to_string();
        }
    }
    out.push_str(&table(&headers, &rows));
    let attention = attention_lines(view);
    if !attention.is_empty() {
        out.push_str("\nNeeds attention\n");
        for line in attention {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

async fn show(args: &RunIdArgs) -> Outcome {
    let client = args.server.client()?;
    let (view, value) = get_run(&client, &args.id).await?;
    if args.output.output == Output::Json {
        print_json(&value);
        return Ok(EXIT_OK);
    }
    print_raw(&show_text(&view, now_ms(), terminal::stdout_columns()));
    Ok(EXIT_OK)
}

/// `runs list` as a table.
pub(crate) fn list_table(runs: &[RunSummary], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let mut progress = format!("{}/{}", run.tasks_done, run.tasks_total);
            if run.tasks_failed > 0 {
                progress.push_str(&format!(" ({} failed)", run.tasks_failed));
            }
            vec![
                run.id.clone(),
                run.runbook.clone(),
                run.status.name().to_string(),
                progress,
                run.started_at_ms
                    .map_or_else(|| "-".to_string(), |at| when(now_ms, at)),
                duration_text(
                    run_duration_ms(run.started_at_ms, run.finished_at_ms, now_ms),
                    run.finished_at_ms.is_some(),
                ),
                run.created_by.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "RUNBOOK", "STATUS", "PROGRESS", "STARTED", "DURATION", "BY",
        ],
        &rows,
    )
}

#[derive(Deserialize)]
struct RunsPage {
    runs: Vec<Value>,
}

async fn list(args: &RunsListArgs) -> Outcome {
    let client = args.server.client()?;
    let mut query = Vec::new();
    if let Some(status) = &args.status {
        query.push(("status", status.clone()));
    }
    if let Some(runbook) = &args.runbook {
        query.push(("runbook", runbook.clone()));
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    let page: RunsPage = client.get(&["api", "v1", "runs"], &query).await?;
    if args.output.output == Output::Json {
        print_json(&Value::Array(page.runs));
        return Ok(EXIT_OK);
    }
    let runs: Vec<RunSummary> = page
        .runs
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|error| unexpected(&client, "a run", error))?;
    if runs.is_empty() {
        eprint_line("no runs match; start one with `levee run RUNBOOK`");
        return Ok(EXIT_OK);
    }
    print_raw(&list_table(&runs, now_ms()));
    let limit = args
        .limit
        .unwrap_or(levee_server::http::api::DEFAULT_PAGE_LIMIT);
    if runs.len() >= limit as usize {
        eprint_line(format_args!(
            "showing the newest {}; pass --limit (up to {MAX_PAGE_LIMIT}) for more",
            plural(runs.len(), "run")
        ));
    }
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------------------
// The journal.

/// The name of an entry's kind, as the API writes it (`task_failed`).
fn kind_name(kind: &JournalKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.get("kind").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn phase_name(phase: CheckPhase) -> &'static str {
    match phase {
        CheckPhase::Pre => "pre",
        CheckPhase::Post => "post",
        CheckPhase::Health => "health",
    }
}

/// What an entry says beyond its kind, and the operator's reason, as one line.
fn entry_detail(entry: &JournalEntry) -> String {
    let detail = match &entry.kind {
        JournalKind::RunStarted
        | JournalKind::RunPaused
        | JournalKind::RunResumed
        | JournalKind::RunAborted
        | JournalKind::RunReopened
        | JournalKind::Recovered
        | JournalKind::TaskSkipped
        | JournalKind::TaskCancelled => String::new(),
        JournalKind::RunFinished { status } => status.name().to_string(),
        JournalKind::TaskDispatched { attempt, from_step } if *from_step > 0 => {
            format!("attempt {attempt}, from step {from_step}")
        }
        JournalKind::TaskDispatched { attempt, .. }
        | JournalKind::TaskStarted { attempt }
        | JournalKind::TaskSucceeded { attempt }
        | JournalKind::TaskTimedOut { attempt }
        | JournalKind::TaskRequeued { attempt }
        | JournalKind::Approved { attempt } => format!("attempt {attempt}"),
        JournalKind::StepCommitted { step, state } if !state.is_null() => {
            format!("step {step}: {state}")
        }
        JournalKind::StepCommitted { step, .. } => format!("step {step}"),
        JournalKind::PaceChanged { pace } => format!("pace {pace}"),
        JournalKind::TaskRetrying {
            attempt,
            not_before_ms,
            error,
        } => format!(
            "attempt {attempt}: {error}; retry at {}",
            rfc3339(*not_before_ms)
        ),
        JournalKind::TaskFailed { attempt, error } => format!("attempt {attempt}: {error}"),
        JournalKind::TaskStalled { cause, reason } => {
            let cause = match cause {
                StallCause::Check(phase) => format!("{} check failed", phase_name(*phase)),
                StallCause::InFlightAtRestart => "in flight at restart".to_string(),
                StallCause::TimedOut => "timed out".to_string(),
            };
            // The engine's reason for a failed check already names the phase.
            if reason.starts_with(&cause) {
                reason.clone()
            } else {
                format!("{cause}: {reason}")
            }
        }
        JournalKind::TaskRetried { from_step } if *from_step > 0 => {
            format!("from step {from_step}")
        }
        JournalKind::TaskRetried { .. } => String::new(),
        JournalKind::ConditionOverridden { phase } => format!("{} check", phase_name(*phase)),
        JournalKind::WeakDepOverridden { dep } => format!("no longer waits for {dep}"),
        JournalKind::TaskStuck {
            attempt,
            running_ms,
            threshold_ms,
        } => format!(
            "attempt {attempt} running for {}, past runs took under {}",
            human_s(*running_ms),
            human_s(*threshold_ms)
        ),
    };
    let text = match (&entry.reason, detail.is_empty()) {
        (Some(reason), true) => reason.clone(),
        (Some(reason), false) => format!("{detail} — {reason}"),
        (None, _) => detail,
    };
    escape_line(&text)
}

/// The columns of a journal entry: time, task, kind, actor, reason.
fn journal_cells(record: &JournalRecord) -> Vec<String> {
    let entry = &record.entry;
    vec![
        record.seq.to_string(),
        rfc3339(entry.at_ms),
        cell(entry.task.as_deref()),
        kind_name(&entry.kind),
        escape_line(&entry.actor),
        {
            let detail = entry_detail(entry);
            if detail.is_empty() {
                "-".to_string()
            } else {
                detail
            }
        },
    ]
}

/// One journal entry as one plain line (no seq: it is for people following a run).
pub(crate) fn journal_line(record: &JournalRecord) -> String {
    let cells = journal_cells(record);
    cells[1..].join("  ")
}

pub(crate) fn journal_table(records: &[JournalRecord]) -> String {
    let rows: Vec<Vec<String>> = records.iter().map(journal_cells).collect();
    table(&["SEQ", "AT", "TASK", "KIND", "ACTOR", "REASON"], &rows)
}

#[derive(Deserialize)]
struct JournalPage {
    entries: Vec<Value>,
}

/// The fields of a journal entry around its kind.
#[derive(Deserialize)]
struct EntryHead {
    seq: i64,
    version: i64,
    at_ms: i64,
    task: Option<String>,
    actor: String,
    reason: Option<String>,
}

/// A journal entry from its JSON.
///
/// Not only with `JournalRecord`'s own `Deserialize`: the entry's `reason` (an operator's)
/// and the `reason` of a `task_stalled` kind share one JSON object, so the server writes that
/// key twice. serde refuses the text (duplicate field) and, once a `Value` has kept the last
/// of the two, the kind misses its own. When that happens the kind is read on its own, and
/// the entry's `reason` is taken only for kinds without one (the engine journals stalls with
/// none).
fn parse_record(value: Value) -> Result<JournalRecord, serde_json::Error> {
    if let Ok(record) = serde_json::from_value(value.clone()) {
        return Ok(record);
    }
    let head: EntryHead = serde_json::from_value(value.clone())?;
    let kind: JournalKind = serde_json::from_value(value)?;
    let reason = match kind {
        JournalKind::TaskStalled { .. } => None,
        _ => head.reason,
    };
    Ok(JournalRecord {
        seq: head.seq,
        entry: JournalEntry {
            version: head.version,
            at_ms: head.at_ms,
            task: head.task,
            actor: head.actor,
            reason,
            kind,
        },
    })
}

fn journal_records(client: &Client, entries: Vec<Value>) -> Result<Vec<JournalRecord>, CliError> {
    entries
        .into_iter()
        .map(|e| parse_record(e).map_err(|error| unexpected(client, "a journal entry", error)))
        .collect()
}

async fn journal(args: &JournalArgs) -> Outcome {
    let client = args.server.client()?;
    let mut query = Vec::new();
    if let Some(after) = args.after {
        query.push(("after", after.to_string()));
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    let page: JournalPage = client
        .get(&["api", "v1", "runs", &args.id, "journal"], &query)
        .await?;
    if args.output.output == Output::Json {
        print_json(&Value::Array(page.entries));
        return Ok(EXIT_OK);
    }
    let records = journal_records(&client, page.entries)?;
    let Some(last) = records.last() else {
        eprint_line("no journal entries match");
        return Ok(EXIT_OK);
    };
    print_raw(&journal_table(&records));
    let limit = args
        .limit
        .unwrap_or(levee_server::http::api::DEFAULT_PAGE_LIMIT);
    if records.len() >= limit as usize {
        eprint_line(format_args!(
            "showing {}; pass --after {} for the next",
            if records.len() == 1 {
                "1 entry".to_string()
            } else {
                format!("{} entries", records.len())
            },
            last.seq
        ));
    }
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------------------
// The report.

/// `GET /api/v1/runs/{id}/report`: the engine's `RunReport` with the run's id, status and
/// task count.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ReportView {
    pub run: String,
    pub status: String,
    pub tasks: usize,
    pub critical_path: Vec<String>,
    pub critical_path_ms: u64,
    pub makespan_ms: u64,
    pub sequential_ms: u64,
    pub speedup: f64,
    pub slowest: Vec<SlowTask>,
    pub approval_wait_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct SlowTask {
    pub task: String,
    pub duration_ms: u64,
}

/// `runs report` as text; `durations` are the tasks' durations (the report names the
/// critical path's tasks but not how long each took).
pub(crate) fn report_text(report: &ReportView, durations: &HashMap<String, u64>) -> String {
    let mut out = format!(
        "Run {} ({}, {})\n\n",
        report.run,
        report.status,
        plural(report.tasks, "task")
    );
    if report.critical_path.is_empty() {
        out.push_str("Critical path: none yet (no task has finished)\n");
    } else {
        let chain: Vec<String> = report
            .critical_path
            .iter()
            .map(|task| match durations.get(task) {
                Some(ms) => format!("{task} ({})", human_ms(*ms)),
                None => task.clone(),
            })
            .collect();
        out.push_str(&format!("Critical path: {}\n", chain.join(" -> ")));
    }
    out.push_str(&format!(
        "Time on the critical path: {}\n",
        human_ms(report.critical_path_ms)
    ));
    out.push_str(&format!("Makespan: {}\n", human_ms(report.makespan_ms)));
    out.push_str(&format!(
        "Sequential-equivalent: {}\n",
        human_ms(report.sequential_ms)
    ));
    out.push_str(&format!("Speedup: {:.1}x\n", report.speedup));
    out.push_str(&format!(
        "Approval wait: {}\n",
        human_ms(report.approval_wait_ms)
    ));
    if !report.slowest.is_empty() {
        out.push_str("\nSlowest tasks\n");
        let rows: Vec<Vec<String>> = report
            .slowest
            .iter()
            .map(|slow| {
                vec![
                    slow.task.clone(),
                    human_ms(slow.duration_ms),
                    if report.critical_path.contains(&slow.task) {
                        "*".to_string()
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        out.push_str(&table(&["TASK", "DURATION", "CRITICAL"], &rows));
    }
    out
}

/// Prints a run's report, as `levee runs report` does.
pub(crate) async fn report_of(args: &RunIdArgs) -> Outcome {
    report(args).await
}

async fn report(args: &RunIdArgs) -> Outcome {
    let client = args.server.client()?;
    let value: Value = client
        .get(&["api", "v1", "runs", &args.id, "report"], &[])
        .await?;
    if args.output.output == Output::Json {
        print_json(&value);
        return Ok(EXIT_OK);
    }
    let report: ReportView =
        serde_json::from_value(value).map_err(|error| unexpected(&client, "a report", error))?;
    let (view, _) = get_run(&client, &args.id).await?;
    let durations: HashMap<String, u64> = view
        .tasks
        .iter()
        .filter(|t| t.finished_at_ms.is_some())
        .filter_map(|t| task_duration_ms(t, now_ms()).map(|ms| (t.id.clone(), ms)))
        .collect();
    print_raw(&report_text(&report, &durations));
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------------------
// Task output.

#[derive(Deserialize)]
struct OutputPage {
    outputs: Vec<Value>,
}

/// Each attempt's outcome and what it printed; with `escape`, control characters other than
/// newline and tab are shown escaped (for a terminal), else the text is as it was kept.
pub(crate) fn output_text(outputs: &[TaskOutput], escape: bool) -> String {
    let mut out = String::new();
    for output in outputs {
        let mut header = format!(
            "== attempt {}: {} at {}",
            output.attempt,
            escape_line(&output.outcome),
            rfc3339(output.at_ms)
        );
        if !output.data.is_null() && output.data.as_object().is_none_or(|o| !o.is_empty()) {
            header.push_str(&format!(" {}", escape_line(&output.data.to_string())));
        }
        out.push_str(&header);
        out.push('\n');
        if output.cut_bytes > 0 {
            out.push_str(&format!(
                "[{} bytes cut from the start]\n",
                output.cut_bytes
            ));
        }
        if output.text.is_empty() {
            out.push_str("(no output)\n");
            continue;
        }
        if escape {
            out.push_str(&escape_text(&output.text));
        } else {
            out.push_str(&output.text);
        }
        if !output.text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

async fn output(args: &TaskOutputArgs) -> Outcome {
    let client = args.server.client()?;
    let page: OutputPage = client
        .get(
            &["api", "v1", "runs", &args.id, "tasks", &args.task, "output"],
            &[],
        )
        .await?;
    if args.output.output == Output::Json {
        print_json(&Value::Array(page.outputs));
        return Ok(EXIT_OK);
    }
    let outputs: Vec<TaskOutput> = page
        .outputs
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|error| unexpected(&client, "a task output", error))?;
    if outputs.is_empty() {
        eprint_line(format_args!(
            "task `{}` of run {} has no recorded output (yet)",
            args.task, args.id
        ));
        return Ok(EXIT_OK);
    }
    print_raw(&output_text(&outputs, terminal::stdout_columns().is_some()));
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------------------
// Controls.

struct Control<'a> {
    /// The API's name of the control.
    control: &'static str,
    id: &'a str,
    task: Option<&'a str>,
    dep: Option<&'a str>,
    pace: Option<Value>,
    reason: &'a str,
}

async fn run_control(args: &RunControlArgs, control: &'static str) -> Outcome {
    Control {
        control,
        id: &args.id,
        task: None,
        dep: None,
        pace: None,
        reason: &args.reason,
    }
    .send(&args.server, args.output.output)
    .await
}

async fn task_control(args: &TaskControlArgs, control: &'static str) -> Outcome {
    Control {
        control,
        id: &args.id,
        task: Some(&args.task),
        dep: None,
        pace: None,
        reason: &args.reason,
    }
    .send(&args.server, args.output.output)
    .await
}

impl Control<'_> {
    async fn send(&self, server: &ServerArgs, output: Output) -> Outcome {
        let client = server.client()?;
        let mut body = json!({ "control": self.control, "reason": self.reason });
        if let Some(task) = self.task {
            body["task"] = json!(task);
        }
        if let Some(dep) = self.dep {
            body["dep"] = json!(dep);
        }
        if let Some(pace) = &self.pace {
            body["pace"] = pace.clone();
        }
        let reply = client
            .send(
                Method::POST,
                &["api", "v1", "runs", self.id, "controls"],
                &[],
                &[],
                Some(&body),
            )
            .await?;
        if reply.status == StatusCode::CONFLICT {
            let failure = client.failure(&reply);
            eprint_line(format_args!(
                "refused: {} ({})",
                escape_line(&failure.message),
                failure.code
            ));
            return Ok(EXIT_NO);
        }
        if !reply.status.is_success() {
            return Err(client.failure(&reply).into());
        }
        let value = parse_reply(&client, &reply)?;
        if output == Output::Json {
            print_json(&value);
            return Ok(EXIT_OK);
        }
        let view: RunView =
            serde_json::from_value(value).map_err(|error| unexpected(&client, "a run", error))?;
        print_line(self.describe(&view));
        Ok(EXIT_OK)
    }

    /// What changed, from the run as the server answered it.
    fn describe(&self, view: &RunView) -> String {
        let run = format!("run {} is {}", view.id, view.status);
        let Some(task_id) = self.task else {
            return match self.control {
                "start" => format!(
                    "started: {run}; follow it with `levee runs watch {}`",
                    view.id
                ),
                "pause" => format!("paused: {run}; running tasks finish, no new task starts"),
                "resume" => format!("resumed: {run}"),
                _ => run,
            };
        };
        let status = view
            .tasks
            .iter()
            .find(|t| t.id == task_id)
            .map_or("?", |t| t.status.as_str());
        match (self.control, self.dep) {
            ("override_weak_dep", Some(dep)) => {
                format!("task `{task_id}` no longer waits for `{dep}` and is {status}; {run}")
            }
            ("approve", _) => format!("approved task `{task_id}`, now {status}; {run}"),
            ("set_pace", _) => format!(
                "task `{task_id}` ({status}) now runs at pace {}; {run}",
                self.pace.as_ref().map(Value::to_string).unwrap_or_default()
            ),
            _ => format!("task `{task_id}` is now {status}; {run}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The global pause.

fn pause_text(value: &Value) -> String {
    let paused = value
        .get("paused")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(escape_line);
    let by = text("by");
    let reason = text("reason");
    let at = value.get("at_ms").and_then(Value::as_i64).map(rfc3339);
    let at = |word: &str| {
        at.as_ref()
            .map_or_else(String::new, |at| format!(" {word} {at}"))
    };
    match (paused, by, reason) {
        (true, Some(by), Some(reason)) => format!(
            "every run is paused{} by {by}: {reason}; lift it with `levee unpause \
             {REASON_PLACEHOLDER}`",
            at("since")
        ),
        (true, _, _) => {
            format!("every run is paused; lift it with `levee unpause {REASON_PLACEHOLDER}`")
        }
        (false, Some(by), Some(reason)) => {
            format!("runs are not paused (lifted{} by {by}: {reason})", at("at"))
        }
        (false, _, _) => "runs are not paused".to_string(),
    }
}

async fn put_pause(server: &ServerArgs, output: Output, paused: bool, reason: &str) -> Outcome {
    let client = server.client()?;
    let body = json!({ "paused": paused, "reason": reason });
    let reply = client
        .send(Method::PUT, &["api", "v1", "pause"], &[], &[], Some(&body))
        .await?;
    if !reply.status.is_success() {
        return Err(client.failure(&reply).into());
    }
    let value = parse_reply(&client, &reply)?;
    if output == Output::Json {
        print_json(&value);
    } else {
        print_line(pause_text(&value));
    }
    Ok(EXIT_OK)
}

/// `levee pause --reason TEXT`, or `levee pause --status`.
pub async fn pause(args: &PauseArgs) -> Outcome {
    match (&args.reason, args.status) {
        (Some(reason), false) => put_pause(&args.server, args.output.output, true, reason).await,
        _ => {
            let client = args.server.client()?;
            let value: Value = client.get(&["api", "v1", "pause"], &[]).await?;
            if args.output.output == Output::Json {
                print_json(&value);
            } else {
                print_line(pause_text(&value));
            }
            Ok(EXIT_OK)
        }
    }
}

pub async fn unpause(args: &UnpauseArgs) -> Outcome {
    put_pause(&args.server, args.output.output, false, &args.reason).await
}

// ---------------------------------------------------------------------------------------
// Starting a run.

/// `levee run RUNBOOK`.
pub async fn run(args: &RunArgs) -> Outcome {
    let client = args.server.client()?;
    let params: serde_json::Map<String, Value> = args
        .params
        .iter()
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect();
    let mut body = json!({ "params": params, "start": !args.no_start });
    if let Some(name) = &args.name {
        body["name"] = json!(name);
    }
    if let Some(max_parallel) = args.max_parallel {
        body["max_parallel"] = json!(max_parallel);
    }
    let reply = client
        .send(
            Method::POST,
            &["api", "v1", "runbooks", &args.runbook, "runs"],
            &[],
            &[],
            Some(&body),
        )
        .await?;
    if !reply.status.is_success() {
        return param_failure(client.failure(&reply));
    }
    let created = reply.status == StatusCode::CREATED;
    let value = parse_reply(&client, &reply)?;
    let view: RunView = serde_json::from_value(value.clone())
        .map_err(|error| unexpected(&client, "a run", error))?;
    let json_output = args.output.output == Output::Json;
    if json_output && !args.wait {
        print_json(&value);
        return Ok(EXIT_OK);
    }
    if !json_output {
        print_line(started_text(
            &view,
            created,
            args.name.as_deref(),
            args.wait,
        ));
    }
    if !args.wait {
        return Ok(EXIT_OK);
    }
    let display = if json_output {
        Display::Quiet
    } else {
        Display::for_stdout()
    };
    let end = follow(&client, view, display).await?;
    if json_output {
        print_json(&serde_json::to_value(&end).unwrap_or(Value::Null));
    }
    Ok(exit_code(&end))
}

fn started_text(view: &RunView, created: bool, name: Option<&str>, wait: bool) -> String {
    let id = &view.id;
    let what = format!("`{}` v{}", view.runbook, view.runbook_version);
    let first = match (created, status_of(view)) {
        (true, Some(RunStatus::Pending)) => {
            return format!(
                "created run {id} of {what}, not started; start it with `levee runs start {id} \
                 {REASON_PLACEHOLDER}`"
            );
        }
        (true, _) => format!("started run {id} of {what}"),
        (false, Some(RunStatus::Pending)) => {
            return format!(
                "run `{}` was already created as {id} of {what}, not started; nothing new was \
                 created; start it with `levee runs start {id} {REASON_PLACEHOLDER}`",
                name.unwrap_or(id)
            );
        }
        (false, _) => format!(
            "run `{}` already started as {id} of {what} ({}); nothing new was started",
            name.unwrap_or(id),
            view.status
        ),
    };
    if wait {
        format!("{first}; following it (Ctrl-C stops following, not the run)")
    } else {
        format!("{first}\nfollow it with `levee runs watch {id}`")
    }
}

// ---------------------------------------------------------------------------------------
// Following a run.

async fn watch(args: &WatchArgs) -> Outcome {
    let client = args.server.client()?;
    let (view, _) = get_run(&client, &args.id).await?;
    let end = follow(&client, view, Display::for_stdout()).await?;
    Ok(exit_code(&end))
}

/// How a followed run is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Display {
    /// A terminal this many columns wide: a summary and progress lines redrawn in place,
    /// notable entries printed above them.
    Live(usize),
    /// Not a terminal: one plain line per journal entry.
    Plain,
    /// Nothing until the end (`--output json`).
    Quiet,
}

impl Display {
    fn for_stdout() -> Display {
        terminal::stdout_columns().map_or(Display::Plain, Display::Live)
    }
}

/// A bar of [`PROGRESS_BAR_COLUMNS`] for `done` of `total`.
fn progress_bar(done: u64, total: u64) -> String {
    let width = PROGRESS_BAR_COLUMNS as u64;
    let filled = done
        .min(total)
        .saturating_mul(width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!(
        "[{}{}]",
        "#".repeat(filled as usize),
        ".".repeat((width - filled) as usize)
    )
}

/// One running (or stalled) task in the live view: a bar where its progress is known (a
/// `wait` of a known duration), else its step (paced stages) and the time it has taken.
pub(crate) fn task_progress_line(
    task: &TaskView,
    run_id: &str,
    name_width: usize,
    now_ms: i64,
) -> String {
    let elapsed = task.started_at_ms.map(|at| since(now_ms, at));
    let elapsed_text = elapsed.map_or_else(|| "-".to_string(), human_s);
    let state = if task.status == "stalled" {
        format!(
            "stalled {}: {}",
            stall_text(task.stall.as_deref()),
            escape_line(task.reason.as_deref().unwrap_or("").trim())
        )
    } else if is_awaiting_approval(task) {
        format!(
            "waiting for approval for {elapsed_text}: levee runs approve {run_id} {} \
             {REASON_PLACEHOLDER}",
            task.id
        )
    } else if task.in_flight == Some(false) {
        format!("starting (checks) {elapsed_text}")
    } else if let Some(total) = wait_duration_ms(task) {
        let done = elapsed.unwrap_or(0);
        format!(
            "{} {} / {}",
            progress_bar(done, total),
            human_s(done.min(total)),
            human_s(total)
        )
    } else if task.step > 0 {
        format!("step {}, {elapsed_text}", task.step)
    } else {
        elapsed_text
    };
    let attempt = if task.attempts > 1 {
        format!(" (attempt {})", task.attempts)
    } else {
        String::new()
    };
    format!("  {:name_width$}  {state}{attempt}", task.id)
}

/// The `duration` of a `wait` task: how long it will run, so its progress is known.
fn wait_duration_ms(task: &TaskView) -> Option<u64> {
    if task.stage != "wait" {
        return None;
    }
    let duration = task.with_args.get("duration")?.as_str()?;
    parse_duration_ms(duration).ok().filter(|&ms| ms > 0)
}

/// The live view: a summary line, then a line per running or stalled task.
pub(crate) fn live_lines(view: &RunView, now_ms: i64, note: Option<&str>) -> Vec<String> {
    let elapsed = run_duration_ms(view.started_at_ms, view.finished_at_ms, now_ms).map_or_else(
        || "not started".to_string(),
        |ms| format!("elapsed {}", human_s(ms)),
    );
    let mut summary = format!(
        "run {} {}: {}; {elapsed}",
        view.id,
        view.status,
        progress_text(view)
    );
    if let Some(note) = note {
        summary.push_str(&format!(" [{note}]"));
    }
    let mut lines = vec![summary];
    let shown: Vec<&TaskView> = view
        .tasks
        .iter()
        .filter(|t| t.status == "running")
        .chain(view.tasks.iter().filter(|t| t.status == "stalled"))
        .collect();
    let name_width = shown
        .iter()
        .take(MAX_LIVE_TASK_LINES)
        .map(|t| t.id.chars().count())
        .max()
        .unwrap_or(0);
    for task in shown.iter().take(MAX_LIVE_TASK_LINES) {
        lines.push(task_progress_line(task, &view.id, name_width, now_ms));
    }
    if shown.len() > MAX_LIVE_TASK_LINES {
        lines.push(format!(
            "  ... and {} more",
            shown.len() - MAX_LIVE_TASK_LINES
        ));
    }
    lines
}

/// What a followed run ended as: its status, duration and progress, its outcome, and every
/// failed or stalled task with its reason and what would resolve it.
pub(crate) fn final_summary(view: &RunView, now_ms: i64) -> String {
    let duration = run_duration_ms(view.started_at_ms, view.finished_at_ms, now_ms).map_or_else(
        String::new,
        |ms| {
            if status_of(view) == Some(RunStatus::Succeeded) {
                format!(" in {}", human_s(ms))
            } else {
                format!(" after {}", human_s(ms))
            }
        },
    );
    let mut out = format!(
        "run {} {}{duration}: {}\n",
        view.id,
        view.status,
        progress_text(view)
    );
    if let Some(outcome) = &view.outcome {
        out.push_str(&format!("outcome: {}\n", escape_line(outcome)));
    }
    let attention = attention_lines(view);
    if !attention.is_empty() {
        for line in attention {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Journal kinds worth a line of their own above the live view.
fn is_notable(kind: &JournalKind) -> bool {
    !matches!(
        kind,
        JournalKind::TaskDispatched { .. }
            | JournalKind::TaskStarted { .. }
            | JournalKind::StepCommitted { .. }
            | JournalKind::TaskSucceeded { .. }
            | JournalKind::RunFinished { .. }
            | JournalKind::TaskCancelled
    )
}

/// Why a stream stopped.
enum StreamEnd {
    /// The run ended; following is over.
    RunEnded,
    /// The connection dropped (or went silent); reconnect.
    Dropped(String),
}

/// Follows one run through its event stream.
struct Follower<'a> {
    client: &'a Client,
    display: Display,
    view: RunView,
    block: Option<LiveBlock>,
    /// The last journal entry received: resume after it.
    last_seq: i64,
    /// Entries arrived since the run was last read.
    view_stale: bool,
    view_read_at: Instant,
    /// Shown in the live summary line: the stream is reconnecting, and why.
    note: Option<String>,
}

/// Follows `view`'s run until it ends, showing it as `display` says, and answers the run as
/// it ended.
async fn follow(client: &Client, view: RunView, display: Display) -> Result<RunView, CliError> {
    let mut follower = Follower {
        client,
        display,
        block: match display {
            Display::Live(columns) => Some(LiveBlock::new(columns)),
            _ => None,
        },
        view,
        last_seq: 0,
        view_stale: false,
        view_read_at: Instant::now(),
        note: None,
    };
    if is_ended(&follower.view) {
        if display == Display::Plain {
            follower.drain_journal().await?;
        }
    } else {
        follower.stream().await?;
    }
    follower.finish();
    Ok(follower.view)
}

impl Follower<'_> {
    fn id(&self) -> String {
        self.view.id.clone()
    }

    /// Reads the event stream, reconnecting after the last entry received when it drops,
    /// until the run ends.
    async fn stream(&mut self) -> Result<(), CliError> {
        let id = self.id();
        let mut parser = SseParser::new();
        let mut failures: u32 = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(LIVE_REDRAW_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            // The id the stream last gave, as the standard says; entries already shown are
            // skipped by their `seq` should the server send them again.
            let resume = parser
                .last_event_id()
                .map(str::to_string)
                .or_else(|| (self.last_seq > 0).then(|| self.last_seq.to_string()));
            let headers: Vec<(HeaderName, String)> = resume
                .map(|id| (HeaderName::from_static("last-event-id"), id))
                .into_iter()
                .collect();
            let opened = self
                .client
                .open_stream(
                    &["api", "v1", "runs", &id, "events"],
                    &headers,
                    "text/event-stream",
                )
                .await;
            let why = match opened {
                Ok(mut stream) => {
                    self.note = None;
                    parser = parser.reconnected();
                    match self
                        .read(&mut stream, &mut parser, &mut tick, &mut failures)
                        .await?
                    {
                        StreamEnd::RunEnded => return Ok(()),
                        StreamEnd::Dropped(why) => why,
                    }
                }
                Err(ClientError::Api(failure)) if !failure.status.is_server_error() => {
                    return Err(failure.into());
                }
                Err(error @ ClientError::BadServer { .. }) => return Err(error.into()),
                Err(error) => error.to_string(),
            };
            failures += 1;
            if failures > MAX_RECONNECT_ATTEMPTS {
                self.clear_block();
                return Err(CliError(format!(
                    "lost the event stream of run {id} and could not get it back in \
                     {MAX_RECONNECT_ATTEMPTS} attempts ({why}); the run goes on without this \
                     client: `levee runs show {id}` shows where it is"
                )));
            }
            let base = parser.retry_ms().unwrap_or(RECONNECT_DELAY_MS);
            let delay = base
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_RECONNECT_DELAY_MS);
            let message = format!(
                "stream dropped ({why}); reconnecting in {}",
                human_ms(delay)
            );
            match self.display {
                Display::Plain => eprint_line(format_args!("levee: {message}")),
                Display::Live(_) => self.note = Some(message),
                Display::Quiet => {}
            }
            let until = tokio::time::Instant::now() + Duration::from_millis(delay);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    _ = tick.tick(), if self.block.is_some() => self.redraw().await,
                }
            }
        }
    }

    /// Reads one connection until it drops or the run ends, redrawing the live view on the
    /// way.
    async fn read(
        &mut self,
        stream: &mut ByteStream,
        parser: &mut SseParser,
        tick: &mut tokio::time::Interval,
        failures: &mut u32,
    ) -> Result<StreamEnd, CliError> {
        let idle = Duration::from_millis(STREAM_IDLE_TIMEOUT_MS);
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            tokio::select! {
                chunk = tokio::time::timeout_at(deadline, stream.chunk()) => {
                    let bytes = match chunk {
                        Err(_) => {
                            return Ok(StreamEnd::Dropped(format!(
                                "nothing received for {}",
                                human_ms(STREAM_IDLE_TIMEOUT_MS)
                            )));
                        }
                        Ok(Err(error)) => return Ok(StreamEnd::Dropped(error.to_string())),
                        Ok(Ok(None)) => {
                            return Ok(StreamEnd::Dropped("the server ended it".to_string()));
                        }
                        Ok(Ok(Some(bytes))) => bytes,
                    };
                    deadline = tokio::time::Instant::now() + idle;
                    let events = match parser.feed(&bytes) {
                        Ok(events) => events,
                        Err(error) => return Ok(StreamEnd::Dropped(error.to_string())),
                    };
                    for event in events {
                        if event.event != "journal" {
                            continue;
                        }
                        *failures = 0;
                        if self.entry(&event.data, event.id.as_deref()).await? {
                            return Ok(StreamEnd::RunEnded);
                        }
                    }
                }
                _ = tick.tick(), if self.block.is_some() => self.redraw().await,
            }
        }
    }

    /// Takes one journal event; answers whether the run has ended.
    async fn entry(&mut self, data: &str, id: Option<&str>) -> Result<bool, CliError> {
        let record = serde_json::from_str(data).and_then(parse_record);
        let seq = match &record {
            Ok(record) => Some(record.seq),
            Err(_) => id.and_then(|id| id.trim().parse().ok()),
        };
        if let Some(seq) = seq {
            if seq <= self.last_seq {
                return Ok(false); // Already shown before a reconnection.
            }
            self.last_seq = seq;
        }
        self.view_stale = true;
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                if self.display == Display::Plain {
                    print_line(format_args!(
                        "(journal entry {} not understood: {error})",
                        seq.map_or_else(|| "?".to_string(), |s| s.to_string())
                    ));
                }
                return Ok(false);
            }
        };
        self.show(&record);
        if matches!(record.entry.kind, JournalKind::RunFinished { .. }) {
            return self.ended().await;
        }
        Ok(false)
    }

    fn show(&mut self, record: &JournalRecord) {
        match self.display {
            Display::Plain => print_line(journal_line(record)),
            Display::Live(_) if is_notable(&record.entry.kind) => {
                let lines = live_lines(&self.view, now_ms(), self.note.as_deref());
                if let Some(block) = &mut self.block {
                    block.log(&journal_line(record), &lines);
                }
            }
            _ => {}
        }
    }

    /// After a `run_finished` entry: whether the run is still ended now (a failed run may
    /// have been reopened since, and a replayed journal holds every finish of its past). If
    /// it is, the rest of the journal is shown and following is over.
    async fn ended(&mut self) -> Result<bool, CliError> {
        let mut attempts = 0;
        let view = loop {
            match get_run(self.client, &self.id()).await {
                Ok((view, _)) => break view,
                Err(error) if attempts >= MAX_RECONNECT_ATTEMPTS => return Err(error),
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(RECONNECT_DELAY_MS)).await;
                }
            }
        };
        self.view = view;
        self.view_stale = false;
        self.view_read_at = Instant::now();
        if !is_ended(&self.view) {
            return Ok(false);
        }
        if self.display == Display::Plain {
            self.drain_journal().await?;
        }
        Ok(true)
    }

    /// Prints every journal entry after the last one shown, page by page.
    async fn drain_journal(&mut self) -> Result<(), CliError> {
        let id = self.id();
        loop {
            let query = [
                ("after", self.last_seq.to_string()),
                ("limit", MAX_PAGE_LIMIT.to_string()),
            ];
            let page: JournalPage = self
                .client
                .get(&["api", "v1", "runs", &id, "journal"], &query)
                .await?;
            let records = journal_records(self.client, page.entries)?;
            let full = records.len() >= MAX_PAGE_LIMIT as usize;
            let before = self.last_seq;
            for record in &records {
                if record.seq > self.last_seq {
                    self.last_seq = record.seq;
                    self.show(record);
                }
            }
            if !full || self.last_seq == before {
                return Ok(());
            }
        }
    }

    /// Reads the run again if entries arrived (at most every [`LIVE_REFRESH_INTERVAL_MS`])
    /// and redraws the live view.
    async fn redraw(&mut self) {
        if self.view_stale
            && self.view_read_at.elapsed() >= Duration::from_millis(LIVE_REFRESH_INTERVAL_MS)
        {
            self.view_read_at = Instant::now();
            match get_run(self.client, &self.id()).await {
                Ok((view, _)) => {
                    self.view = view;
                    self.view_stale = false;
                }
                Err(error) => self.note = Some(format!("cannot read the run: {}", error.0)),
            }
        }
        let lines = live_lines(&self.view, now_ms(), self.note.as_deref());
        if let Some(block) = &mut self.block {
            block.draw(&lines);
        }
    }

    fn clear_block(&mut self) {
        if let Some(block) = &mut self.block {
            block.clear();
        }
    }

    fn finish(&mut self) {
        self.clear_block();
        if self.display != Display::Quiet {
            print_raw(&final_summary(&self.view, now_ms()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-05-01T12:00:00Z.
    const T0: i64 = 1_714_564_800_000;

    fn task(id: &str, stage: &str, status: &str, fields: Value) -> Value {
        let mut task = json!({
            "id": id,
            "stage": stage,
            "status": status,
            "attempts": 1,
            "step": 0,
            "needs": [],
            "after": [],
            "started_at_ms": null,
            "finished_at_ms": null,
            "reason": null,
            "stall": null,
            "retry_at_ms": null,
            "in_flight": null,
            "overridden_deps": [],
            "with_args": {},
        });
        for (key, value) in fields.as_object().expect("an object") {
            task[key] = value.clone();
        }
        task
    }

    /// A failed evacuation: one task succeeded, one skipped, one failed, one stalled on its
    /// health check, one approval waiting, one waiting behind the failed weak dependency,
    /// one wait running, one retrying.
    fn run_view() -> RunView {
        let tasks = vec![
            task(
                "preflight",
                "shell",
                "succeeded",
                json!({ "started_at_ms": T0, "finished_at_ms": T0 + 1_250 }),
            ),
            task(
                "announce",
                "log",
                "skipped",
                json!({ "finished_at_ms": T0 + 2_000 }),
            ),
            task(
                "drain-db",
                "shell",
                "failed",
                json!({
                    "started_at_ms": T0 + 2_000,
                    "finished_at_ms": T0 + 14_000,
                    "attempts": 3,
                    "reason": "exit status 1: \u{1b}[31mconnection refused\u{1b}[0m\nretried",
                }),
            ),
            task(
                "drain-web",
                "wait",
                "stalled",
                json!({
                    "started_at_ms": T0 + 2_000,
                    "stall": "health",
                    "reason": "health check `error rate < 0.05` failed: the metric is 0.31, \
                               far above the threshold that this runbook declares for web",
                    "with_args": { "duration": "30s" },
                }),
            ),
            task(
                "sign-off",
                "approval",
                "running",
                json!({ "started_at_ms": T0 + 3_000, "in_flight": true }),
            ),
            task(
                "verify",
                "log",
                "waiting",
                json!({ "needs": ["sign-off"], "after": ["drain-db"] }),
            ),
            task(
                "settle",
                "wait",
                "running",
                json!({
                    "started_at_ms": T0 + 10_000,
                    "in_flight": true,
                    "with_args": { "duration": "40s" },
                }),
            ),
            task(
                "notify",
                "http",
                "retrying",
                json!({
                    "started_at_ms": T0 + 5_000,
                    "attempts": 2,
                    "retry_at_ms": T0 + 35_000,
                    "reason": "503 from hooks.example",
                }),
            ),
        ];
        serde_json::from_value(json!({
            "id": "20240501-120000-00c0de",
            "name": "evacuate-east",
            "runbook": "evacuate",
            "runbook_version": 3,
            "params": { "dc": "east", "settle": "40s" },
            "created_by": "alice",
            "status": "running",
            "version": 42,
            "max_parallel": 8,
            "created_at_ms": T0 - 500,
            "started_at_ms": T0,
            "started_by": "alice",
            "finished_at_ms": null,
            "outcome": null,
            "counts": {
                "total": 8, "waiting": 1, "ready": 0, "running": 2, "retrying": 1,
                "succeeded": 1, "skipped": 1, "failed": 1, "stalled": 1, "cancelled": 0,
            },
            "tasks": tasks,
        }))
        .expect("a run view")
    }

    /// Now: 30 s after the run started.
    const NOW: i64 = T0 + 30_000;

    fn snapshot(name: &str, text: &str) {
        insta::with_settings!({
            snapshot_path => "../tests/snapshots",
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!(name, text);
        });
    }

    #[test]
    fn show_renders_the_run_tasks_and_what_needs_a_human() {
        let view = run_view();
        snapshot("runs__show_table", &show_text(&view, NOW, None));
        // On a narrow terminal the reasons are cut, nothing else.
        let narrow = show_text(&view, NOW, Some(80));
        let line = narrow
            .lines()
            .find(|l| l.starts_with("drain-web"))
            .expect("drain-web");
        assert!(line.ends_with('…'), "{line}");
        assert_eq!(line.chars().count(), 80, "{line}");
        assert!(!narrow.contains('\u{1b}'), "escape sequences are escaped");
    }

    #[test]
    fn list_renders_progress_started_and_duration() {
        let runs: Vec<RunSummary> = serde_json::from_value(json!([
            {
                "id": "20240501-120000-00c0de", "name": null, "runbook": "evacuate",
                "runbook_version": 3, "created_by": "alice", "status": "running",
                "version": 42, "created_at_ms": T0, "started_at_ms": T0,
                "finished_at_ms": null, "outcome": null, "tasks_total": 8,
                "tasks_done": 2, "tasks_running": 2, "tasks_failed": 2,
            },
            {
                "id": "20240430-090000-0000aa", "name": "nightly", "runbook": "backup",
                "runbook_version": 1, "created_by": "cron", "status": "succeeded",
                "version": 9, "created_at_ms": T0 - 97_200_000,
                "started_at_ms": T0 - 97_200_000, "finished_at_ms": T0 - 97_200_000 + 65_500,
                "outcome": null, "tasks_total": 3, "tasks_done": 3, "tasks_running": 0,
                "tasks_failed": 0,
            },
            {
                "id": "20240501-120030-0000bb", "name": null, "runbook": "evacuate",
                "runbook_version": 3, "created_by": "bob", "status": "pending",
                "version": 1, "created_at_ms": NOW, "started_at_ms": null,
                "finished_at_ms": null, "outcome": null, "tasks_total": 8,
                "tasks_done": 0, "tasks_running": 0, "tasks_failed": 0,
            },
        ]))
        .expect("run summaries");
        snapshot("runs__list_table", &list_table(&runs, NOW));
    }

    fn report_view() -> ReportView {
        serde_json::from_value(json!({
            "run": "20240501-120000-00c0de",
            "status": "succeeded",
            "tasks": 6,
            "critical_path": ["preflight", "drain-db", "sign-off", "verify"],
            "critical_path_ms": 3_725_250,
            "makespan_ms": 3_726_000,
            "sequential_ms": 24_591_600,
            "speedup": 6.6,
            "slowest": [
                { "task": "sign-off", "duration_ms": 3_600_000 },
                { "task": "drain-web", "duration_ms": 125_000 },
                { "task": "drain-db", "duration_ms": 124_000 },
                { "task": "preflight", "duration_ms": 1_250 },
            ],
            "approval_wait_ms": 3_600_000,
        }))
        .expect("a report")
    }

    #[test]
    fn report_renders_the_critical_path_speedup_and_slowest_tasks() {
        let durations: HashMap<String, u64> = [
            ("preflight", 1_250),
            ("drain-db", 124_000),
            ("sign-off", 3_600_000),
            ("verify", 0),
        ]
        .into_iter()
        .map(|(task, ms)| (task.to_string(), ms))
        .collect();
        snapshot(
            "runs__report_text",
            &report_text(&report_view(), &durations),
        );
    }

    #[test]
    fn progress_lines_show_bars_steps_approvals_and_elapsed_time() {
        let view = run_view();
        let by_id = |id: &str| {
            view.tasks
                .iter()
                .find(|t| t.id == id)
                .expect("a task")
                .clone()
        };
        // A 40 s wait, 20 s in: half the bar.
        assert_eq!(
            task_progress_line(&by_id("settle"), &view.id, 8, NOW),
            "  settle    [##########..........] 20s / 40s"
        );
        assert_eq!(
            task_progress_line(&by_id("sign-off"), &view.id, 8, NOW),
            "  sign-off  waiting for approval for 27s: levee runs approve \
             20240501-120000-00c0de sign-off --reason \"...\""
        );
        let mut paced: TaskView = by_id("settle");
        paced.stage = "canary".to_string();
        paced.step = 4;
        paced.attempts = 2;
        assert_eq!(
            task_progress_line(&paced, &view.id, 6, NOW),
            "  settle  step 4, 20s (attempt 2)"
        );
        let mut starting = by_id("settle");
        starting.stage = "shell".to_string();
        starting.in_flight = Some(false);
        assert_eq!(
            task_progress_line(&starting, &view.id, 6, NOW),
            "  settle  starting (checks) 20s"
        );
        // A wait past its duration (the stage runs late) shows a full bar, not more.
        assert_eq!(
            task_progress_line(&by_id("settle"), &view.id, 6, NOW + 3_600_000),
            "  settle  [####################] 40s / 40s"
        );
        let lines = live_lines(&view, NOW, Some("reconnecting"));
        assert_eq!(
            lines[0],
            "run 20240501-120000-00c0de running: 2/8 done, 2 running, 1 retrying, 1 failed, \
             1 stalled; elapsed 30s [reconnecting]"
        );
        let names: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap_or(""))
            .collect();
        assert_eq!(names, ["sign-off", "settle", "drain-web"]);
    }

    #[test]
    fn the_final_summary_names_the_outcome_and_the_failed_tasks() {
        let mut view = run_view();
        view.status = "failed".to_string();
        view.finished_at_ms = Some(T0 + 14_000);
        view.outcome = Some("task `drain-db` failed".to_string());
        let summary = final_summary(&view, NOW);
        assert!(
            summary.starts_with(
                "run 20240501-120000-00c0de failed after 14s: 2/8 done, 2 running, 1 retrying, \
                 1 failed, 1 stalled\noutcome: task `drain-db` failed\n"
            ),
            "{summary}"
        );
        assert!(
            summary.contains("  drain-db failed: exit status 1: \\x1b[31m"),
            "{summary}"
        );
        assert!(
            summary.contains("levee runs retry 20240501-120000-00c0de drain-db --reason"),
            "{summary}"
        );
        view.status = "succeeded".to_string();
        assert_eq!(exit_code(&view), EXIT_OK);
        view.status = "aborted".to_string();
        assert_eq!(exit_code(&view), EXIT_NO);
        assert!(
            final_summary(&view, NOW).lines().count() == 2,
            "nothing to do after an abort"
        );
    }

    #[test]
    fn journal_lines_carry_time_task_kind_actor_and_reason() {
        let record =
            |seq: i64, task: Option<&str>, actor: &str, reason: Option<&str>, kind| JournalRecord {
                seq,
                entry: JournalEntry {
                    version: seq,
                    at_ms: T0 + seq * 1_000,
                    task: task.map(str::to_string),
                    actor: actor.to_string(),
                    reason: reason.map(str::to_string),
                    kind,
                },
            };
        let records = vec![
            record(
                0,
                None,
                "alice",
                Some("started with `evacuate`"),
                JournalKind::RunStarted,
            ),
            record(
                14,
                Some("drain-db"),
                "engine",
                None,
                JournalKind::TaskFailed {
                    attempt: 3,
                    error: "exit status 1\n\u{1b}[2J".to_string(),
                },
            ),
            record(
                15,
                Some("drain-web"),
                "engine",
                None,
                JournalKind::TaskStalled {
                    cause: StallCause::Check(CheckPhase::Health),
                    reason: "error rate 0.31".to_string(),
                },
            ),
            record(
                20,
                Some("verify"),
                "bob",
                Some("db is drained by hand"),
                JournalKind::WeakDepOverridden {
                    dep: "drain-db".to_string(),
                },
            ),
            record(
                30,
                None,
                "engine",
                None,
                JournalKind::RunFinished {
                    status: RunStatus::Failed,
                },
            ),
        ];
        // Every entry reads back as the server writes it, on the event stream (text) and in
        // journal pages (a `Value`), a stall's two `reason`s included.
        for record in &records {
            let text = serde_json::to_string(record).expect("serializes");
            let from_text = serde_json::from_str(&text).and_then(parse_record);
            assert_eq!(from_text.as_ref().ok(), Some(record), "{text}");
        }
        assert_eq!(
            journal_line(&records[1]),
            "2024-05-01T12:00:14Z  drain-db  task_failed  engine  attempt 3: exit status \
             1\\n\\x1b[2J"
        );
        assert_eq!(
            journal_line(&records[2]),
            "2024-05-01T12:00:15Z  drain-web  task_stalled  engine  health check failed: \
             error rate 0.31"
        );
        assert_eq!(
            journal_line(&records[3]),
            "2024-05-01T12:00:20Z  verify  weak_dep_overridden  bob  no longer waits for \
             drain-db — db is drained by hand"
        );
        let text = journal_table(&records);
        assert!(text.starts_with("SEQ  AT"), "{text}");
        assert!(
            text.contains("run_finished         engine  failed"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 6, "{text}");
    }

    #[test]
    fn task_output_is_raw_in_a_pipe_and_escaped_on_a_terminal() {
        let outputs: Vec<TaskOutput> = serde_json::from_value(json!([
            { "task": "probe", "attempt": 1, "at_ms": T0, "outcome": "failed",
              "text": "line one\n\u{1b}]0;title\u{7}\ttabbed", "cut_bytes": 0,
              "data": { "exit_code": 1 } },
            { "task": "probe", "attempt": 2, "at_ms": T0 + 1_000, "outcome": "succeeded",
              "text": "ok\n", "cut_bytes": 512, "data": null },
        ]))
        .expect("outputs");
        assert_eq!(
            output_text(&outputs, true),
            "== attempt 1: failed at 2024-05-01T12:00:00Z {\"exit_code\":1}\n\
             line one\n\\x1b]0;title\\x07\ttabbed\n\
             == attempt 2: succeeded at 2024-05-01T12:00:01Z\n\
             [512 bytes cut from the start]\nok\n"
        );
        assert!(output_text(&outputs, false).contains("\u{1b}]0;title\u{7}"));
    }

    #[test]
    fn relative_times_and_pause_texts() {
        assert_eq!(when(NOW, NOW - 312_000), "5m 12s ago");
        assert_eq!(when(NOW, NOW - 3_930_000), "1h 5m ago");
        assert_eq!(when(NOW, T0 - 97_200_000), "2024-04-30 09:00Z");
        assert_eq!(
            pause_text(
                &json!({ "paused": true, "by": "alice", "reason": "incident 4711",
                                "at_ms": T0 })
            ),
            "every run is paused since 2024-05-01T12:00:00Z by alice: incident 4711; lift it \
             with `levee unpause --reason \"...\"`"
        );
        assert_eq!(
            pause_text(&json!({ "paused": false })),
            "runs are not paused"
        );
        assert!(parse_reason("  ").is_err());
        assert!(parse_reason(&"x".repeat(MAX_REASON_BYTES + 1)).is_err());
    }
}
