//! `levee drain-test list|show|run|history`: drain tests, their executions and reports.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Client;
use crate::commands::{
    EXIT_NO, EXIT_OK, Outcome, Output, OutputArgs, ServerArgs, eprint_line, print_json, print_line,
    print_raw, table,
};

#[derive(Subcommand, Debug)]
pub enum DrainTestCommand {
    /// Lists drain tests: runbook, target, schedule, next firing and last outcome.
    List(ListArgs),
    /// Shows one drain test: its definition, history and trends per phase.
    Show(NameArgs),
    /// Starts a drain test now; with `--wait`, waits for its outcome (exit 0 only if it
    /// passed).
    Run(RunArgs),
    /// Lists a drain test's executions, newest first, or shows one execution's report.
    History(HistoryArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// The drain test's name.
    pub name: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The drain test's name.
    pub name: String,
    /// Wait for the outcome.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The drain test's name.
    pub name: String,
    /// Show this execution's whole report instead of the list.
    #[arg(long)]
    pub execution: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// How often `run --wait` asks for the outcome, in milliseconds.
const WAIT_POLL_INTERVAL_MS: u64 = 500;

pub async fn drain_test(command: DrainTestCommand) -> Outcome {
    match command {
        DrainTestCommand::List(args) => list(&args).await,
        DrainTestCommand::Show(args) => show(&args).await,
        DrainTestCommand::Run(args) => run(&args).await,
        DrainTestCommand::History(args) => history(&args).await,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn time(ms: &Value) -> String {
    ms.as_i64()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(
            || "-".to_string(),
            |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        )
}

fn target(value: &Value) -> String {
    if let Some(dc) = value.get("datacenter") {
        return text(dc);
    }
    let list: Vec<String> = value["least_recently_tested"]
        .as_array()
        .map(|dcs| dcs.iter().map(text).collect())
        .unwrap_or_default();
    format!("least recently tested of {}", list.join(", "))
}

async fn list(args: &ListArgs) -> Outcome {
    let client = args.server.client()?;
    let tests: Vec<Value> = client.get(&["api", "v1", "drain-tests"], &[]).await?;
    if args.output.output == Output::Json {
        print_json(&Value::Array(tests));
        return Ok(EXIT_OK);
    }
    if tests.is_empty() {
        eprint_line("no drain test is stored: apply a `kind: DrainTest` file with `levee apply`");
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = tests
        .iter()
        .map(|t| {
            vec![
                text(&t["name"]),
                text(&t["runbook"]),
                target(&t["target"]),
                match (&t["cron"], &t["time_zone"]) {
                    (Value::String(cron), Value::String(tz)) => format!("{cron} ({tz})"),
                    _ => "on demand".to_string(),
                },
                time(&t["next_run_ms"]),
                text(&t["last_state"]),
            ]
        })
        .collect();
    print_raw(&table(
        &["NAME", "RUNBOOK", "TARGET", "SCHEDULE", "NEXT", "LAST"],
        &rows,
    ));
    Ok(EXIT_OK)
}

fn print_history(history: &[Value]) {
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|e| {
            let phase = |name: &str| {
                e["report"][name]["duration_ms"].as_i64().map_or_else(
                    || "-".to_string(),
                    |ms| format!("{:.1}s", ms as f64 / 1000.0),
                )
            };
            vec![
                text(&e["id"]),
                text(&e["target"]),
                text(&e["state"]),
                phase("drain"),
                phase("restore"),
                text(&e["reason"]),
            ]
        })
        .collect();
    print_raw(&table(
        &["EXECUTION", "TARGET", "STATE", "DRAIN", "RESTORE", "WHY"],
        &rows,
    ));
}

async fn show(args: &NameArgs) -> Outcome {
    let client = args.server.client()?;
    let test: Value = client
        .get(&["api", "v1", "drain-tests", &args.name], &[])
        .await?;
    if args.output.output == Output::Json {
        print_json(&test);
        return Ok(EXIT_OK);
    }
    print_line(format_args!(
        "drain test {}: {} on {}, restored by {}{}",
        text(&test["name"]),
        text(&test["runbook"]),
        target(&test["target"]),
        text(&test["restore_runbook"]),
        if test["storm"] == true {
            " (storm)"
        } else {
            ""
        }
    ));
    match &test["cron"] {
        Value::String(cron) => print_line(format_args!(
            "schedule: {cron} ({}), next {}",
            text(&test["time_zone"]),
            time(&test["next_run_ms"])
        )),
        _ => print_line("schedule: on demand"),
    }
    print_line(format_args!("pass: {}", test["pass"]));
    let history = test["history"].as_array().cloned().unwrap_or_default();
    if history.is_empty() {
        print_line("no executions yet");
    } else {
        print_history(&history);
    }
    Ok(EXIT_OK)
}

async fn run(args: &RunArgs) -> Outcome {
    let client = args.server.client()?;
    let mut execution: Value = client
        .post(&["api", "v1", "drain-tests", &args.name, "run"], &json!({}))
        .await?;
    let id = text(&execution["id"]);
    if args.wait {
        while !matches!(
            execution["state"].as_str(),
            Some("passed" | "failed" | "skipped")
        ) {
            tokio::time::sleep(std::time::Duration::from_millis(WAIT_POLL_INTERVAL_MS)).await;
            execution = client
                .get(&["api", "v1", "drain-test-executions", &id], &[])
                .await?;
        }
    }
    if args.output.output == Output::Json {
        print_json(&execution);
    } else {
        print_line(format_args!(
            "{id}: {} on {}{}",
            text(&execution["state"]),
            text(&execution["target"]),
            match execution["reason"].as_str() {
                Some(reason) if !reason.is_empty() => format!(" ({reason})"),
                _ => String::new(),
            }
        ));
    }
    if args.wait && execution["state"] != "passed" {
        return Ok(EXIT_NO);
    }
    Ok(EXIT_OK)
}

async fn history(args: &HistoryArgs) -> Outcome {
    let client: Client = args.server.client()?;
    if let Some(id) = &args.execution {
        let execution: Value = client
            .get(&["api", "v1", "drain-test-executions", id], &[])
            .await?;
        print_json(&execution);
        return Ok(EXIT_OK);
    }
    let history: Vec<Value> = client
        .get(&["api", "v1", "drain-tests", &args.name, "executions"], &[])
        .await?;
    if args.output.output == Output::Json {
        print_json(&Value::Array(history));
    } else if history.is_empty() {
        print_line("no executions yet");
    } else {
        print_history(&history);
    }
    Ok(EXIT_OK)
}
