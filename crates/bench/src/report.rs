//! Human-readable tables of what the load generator, the suite and the runbook benchmark measured.

use std::fmt::Write;

use crate::load::LoadResult;
use crate::runs::{self, RunsReport};
use crate::stateservice::{self, CONCURRENCIES};
use crate::suite::SuiteReport;

/// The table of one load run.
pub fn load_summary(result: &LoadResult, expected_statuses: &[u16]) -> String {
    let mut out = String::new();
    let expected = expected_statuses
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let by_code = result
        .statuses
        .iter()
        .map(|(code, count)| format!("{code}: {}", thousands(*count as f64)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "{} {}, concurrency {}, {}, {} s measured",
        result.method, result.url, result.concurrency, result.connection, result.duration_s
    );
    let _ = writeln!(out, "  requests/s  {}", thousands(result.requests_per_s));
    let _ = writeln!(
        out,
        "  latency     p50 {} ms, p99 {} ms, max {} ms",
        ms(result.latency_us_p50),
        ms(result.latency_us_p99),
        ms(result.latency_us_max)
    );
    let _ = writeln!(
        out,
        "  answers     {} (statuses counted as answers: {expected})",
        thousands(result.answers as f64)
    );
    let _ = writeln!(
        out,
        "  statuses    2xx {}, 4xx {}, 5xx {} ({by_code})",
        thousands(result.status_2xx as f64),
        thousands(result.status_4xx as f64),
        thousands(result.status_5xx as f64)
    );
    let _ = writeln!(out, "  unexpected  {}", thousands(result.unexpected as f64));
    let _ = writeln!(out, "  errors      {}", thousands(result.errors as f64));
    if let Some(first_error) = &result.first_error {
        let _ = writeln!(out, "  first error {first_error}");
    }
    if let Some(client_us) = result.client_cpu_us_per_response {
        let _ = writeln!(out, "  client CPU  {client_us:.1} µs per request");
    }
    if let Some(server_us) = result.server_cpu_us_per_response {
        let _ = writeln!(out, "  server CPU  {server_us:.1} µs per request");
    }
    out
}

/// The suite's tables: state checks, CPU per request, durable transitions, lost updates, memory
/// and the problems that make the run fail.
pub fn suite_tables(report: &SuiteReport) -> String {
    let mut out = String::new();
    write_state_checks(&mut out, report);
    write_cpu(&mut out, report);
    write_durable_transitions(&mut out, report);
    write_memory(&mut out, report);
    if report.problems.is_empty() {
        let _ = writeln!(out, "No problems: every request got an expected answer.");
    } else {
        let _ = writeln!(out, "PROBLEMS ({}):", report.problems.len());
        for problem in &report.problems {
            let _ = writeln!(out, "  - {problem}");
        }
    }
    out
}

fn write_state_checks(out: &mut String, report: &SuiteReport) {
    let _ = writeln!(
        out,
        "State checks: GET /state?state=green_state, {} s per case after a {} s warm-up",
        report.duration_s, report.warmup_s
    );
    if report.state_checks.is_empty() {
        let _ = writeln!(out, "  not measured\n");
        return;
    }
    let row = |cells: [&str; 10]| {
        format!(
            "{:<15} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>12} | {:>13} | {:>12}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9]
        )
    };
    out.push_str(&row([
        "",
        "",
        "bare",
        "",
        "",
        "Levee",
        "",
        "Levee/bare",
        "Levee/StateS.",
        "bare/StateS.",
    ]));
    out.push_str(&row([
        "case",
        "req/s",
        "p50 ms",
        "p99 ms",
        "req/s",
        "p50 ms",
        "p99 ms",
        &format!(
            "goal >= {:.0}%",
            stateservice::GOAL_FRACTION_OF_BARE_MIN * 100.0
        ),
        &format!("goal >= {:.0}x", stateservice::GOAL_TIMES_STATESERVICE_MIN),
        "(ceiling)",
    ]));
    for case in &report.state_checks {
        let versus_stateservice =
            match (case.levee_over_stateservice, case.meets_stateservice_goal()) {
                (Some(ratio), Some(met)) => format!("{ratio:.1}x {}", verdict(met)),
                _ => "-".to_owned(),
            };
        let bare_versus_stateservice = case
            .bare_over_stateservice
            .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.1}x"));
        out.push_str(&row([
            &format!("c={} {}", case.concurrency, case.connection),
            &thousands(case.bare.requests_per_s),
            &ms(case.bare.latency_us_p50),
            &ms(case.bare.latency_us_p99),
            &thousands(case.levee.requests_per_s),
            &ms(case.levee.latency_us_p50),
            &ms(case.levee.latency_us_p99),
            &format!(
                "{:.0}% {}",
                case.levee_over_bare * 100.0,
                verdict(case.meets_bare_goal())
            ),
            &versus_stateservice,
            &bare_versus_stateservice,
        ]));
    }
    let figures = stateservice::GET_FIGURES
        .iter()
        .map(|figure| thousands(figure.requests_per_s))
        .collect::<Vec<_>>()
        .join(" / ");
    let _ = writeln!(
        out,
        "StateService: {figures} req/s at concurrency {} (wrk; its server closes every \
         connection, so one figure serves both rows).\nbare/StateS. is the ceiling: what a server \
         that does nothing reaches on this machine with that kind of connection.\n",
        concurrency_list()
    );
}

fn write_cpu(out: &mut String, report: &SuiteReport) {
    if report.state_checks.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "CPU time per request, µs (client: this benchmark; server: the process measured)"
    );
    let _ = writeln!(
        out,
        "{:<15} | {:>8} {:>8} | {:>8} {:>8}",
        "", "bare", "", "Levee", ""
    );
    let _ = writeln!(
        out,
        "{:<15} | {:>8} {:>8} | {:>8} {:>8}",
        "case", "client", "server", "client", "server"
    );
    for case in &report.state_checks {
        let _ = writeln!(
            out,
            "{:<15} | {:>8} {:>8} | {:>8} {:>8}",
            format!("c={} {}", case.concurrency, case.connection),
            micros(case.bare.client_cpu_us_per_response),
            micros(case.bare.server_cpu_us_per_response),
            micros(case.levee.client_cpu_us_per_response),
            micros(case.levee.server_cpu_us_per_response)
        );
    }
    let _ = writeln!(out);
}

fn write_durable_transitions(out: &mut String, report: &SuiteReport) {
    let _ = writeln!(
        out,
        "Durable transitions: PUT /machines/c{{concurrency}}-m{{i}}/state?state=counting \
         (200 = committed), each client on its own machine, keep-alive"
    );
    if report.durable_transitions.is_empty() {
        let _ = writeln!(out, "  not measured\n");
        return;
    }
    let _ = writeln!(
        out,
        "{:<6} | {:>9} {:>9} {:>9} | {:>9} | {:>13} | {:>9}",
        "case", "PUT/s", "p50 ms", "p99 ms", "StateS. /s", "Levee/StateS.", "server CPU"
    );
    for case in &report.durable_transitions {
        let _ = writeln!(
            out,
            "{:<6} | {:>9} {:>9} {:>9} | {:>10} | {:>13} | {:>7} µs",
            format!("c={}", case.concurrency),
            thousands(case.levee.requests_per_s),
            ms(case.levee.latency_us_p50),
            ms(case.levee.latency_us_p99),
            case.stateservice
                .map_or_else(|| "-".to_owned(), |figure| thousands(figure.requests_per_s)),
            case.levee_over_stateservice
                .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.0}x")),
            micros(case.levee.server_cpu_us_per_response)
        );
    }
    if let Some(case) = report
        .durable_transitions
        .iter()
        .find(|case| case.meets_goal().is_some())
    {
        let _ = writeln!(
            out,
            "Goal: >= {}/s at concurrency {}: {} /s, {}",
            thousands(stateservice::GOAL_DURABLE_TRANSITIONS_PER_S_MIN),
            case.concurrency,
            thousands(case.levee.requests_per_s),
            verdict(case.meets_goal() == Some(true))
        );
    }
    match &report.lost_updates {
        Some(check) => {
            let _ = writeln!(
                out,
                "LOST UPDATES: {} ({} PUTs acknowledged with 200, warm-ups included; the {} \
                 machines' counters sum to {}; {} PUTs went unanswered)\n",
                thousands(check.lost as f64),
                thousands(check.acknowledged as f64),
                check.machines,
                thousands(check.counter_sum as f64),
                thousands(check.outcome_unknown as f64)
            );
        }
        None => {
            let _ = writeln!(out, "LOST UPDATES: not checked\n");
        }
    }
}

fn write_memory(out: &mut String, report: &SuiteReport) {
    let Some(memory) = &report.memory else {
        return;
    };
    let _ = writeln!(out, "Memory: Levee's resident set (VmRSS)");
    let count = |n: Option<usize>| n.map_or_else(|| "-".to_owned(), |n| thousands(n as f64));
    let lines = [
        ("idle after start".to_owned(), Some(memory.idle_rss_kib)),
        (
            "after the loads above".to_owned(),
            memory.before_create_rss_kib,
        ),
        (
            format!("after creating {} machines", count(memory.machines_created)),
            memory.after_create_rss_kib,
        ),
        (
            format!("after {} state checks", count(memory.state_checks)),
            memory.after_checks_rss_kib,
        ),
    ];
    for (label, value_kib) in lines {
        let _ = writeln!(out, "  {label:<36} {:>10}", mib(value_kib));
    }
    if let Some(bytes) = memory.bytes_per_machine {
        let _ = writeln!(
            out,
            "  {:<36} {:>10}",
            "growth per machine",
            format!("{bytes:.0} bytes")
        );
    }
    let _ = writeln!(out);
}

/// The runbook benchmark's tables: throughput against the raw commit loop and the goal, then
/// where the time went.
pub fn runs_tables(report: &RunsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Runbook engine overhead: {} no-op `log` tasks per run, end to end on SQLite (WAL, \
         synchronous=FULL), timed from App::start_run to the run's end",
        thousands(report.tasks_per_case as f64)
    );
    for baseline in &report.baselines {
        let _ = writeln!(
            out,
            "Raw SQLite commit loop ({}): {} single-row INSERT transactions in {:.3} s = {} \
             commits/s ({:.0} µs per commit)",
            baseline.when,
            thousands(baseline.commits as f64),
            baseline.duration_s,
            thousands(baseline.commits_per_s),
            baseline.commit_us_mean
        );
    }
    let _ = writeln!(out);
    const WIDTHS: [usize; 10] = [12, 8, 6, 8, 10, 13, 11, 10, 10, 10];
    let row = |cells: [&str; 10]| table_row(&WIDTHS, &cells);
    out.push_str(&row([
        "",
        "max",
        "",
        "run",
        "end to end",
        &format!("goal >= {}", thousands(report.goal_tasks_per_s_min)),
        "tasks per",
        "start call",
        "engine",
        "every task",
    ]));
    out.push_str(&row([
        "case",
        "parallel",
        "edges",
        "s",
        "tasks/s",
        "tasks/s",
        "raw commit",
        "ms",
        "tasks/s",
        "once",
    ]));
    for case in &report.cases {
        let engine = case
            .engine_alone
            .as_ref()
            .map_or_else(|| "-".to_owned(), |e| thousands(e.tasks_per_s));
        let (run_s, rate, goal, per_commit, start_ms, once) = match &case.end_to_end {
            Some(e) => (
                format!("{:.3}", e.duration_s),
                thousands(e.tasks_per_s),
                verdict(e.meets_goal).to_owned(),
                e.tasks_per_raw_commit
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
                format!("{:.0}", e.start_call_ms),
                if e.verification.ok {
                    "yes".to_owned()
                } else {
                    format!("NO ({})", e.verification.tasks_done_exactly_once)
                },
            ),
            None => (
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ),
        };
        out.push_str(&row([
            &case.case.name,
            &case.max_parallel.to_string(),
            &thousands(case.edges as f64),
            &run_s,
            &rate,
            &goal,
            &per_commit,
            &start_ms,
            &engine,
            &once,
        ]));
    }
    let _ = writeln!(
        out,
        "Published: Conductor {} task executions/s; self-hosted Temporal about {} state \
         transitions/s.\n\
         tasks per raw commit = end-to-end tasks/s over the raw loop's commits/s (mean of the \
         loops above). engine = runbook::apply alone, in memory, no store, no executor.\n",
        thousands(report.conductor_task_executions_per_s),
        thousands(report.temporal_state_transitions_per_s)
    );
    write_runs_breakdown(&mut out, report);
    if report.problems.is_empty() {
        let _ = writeln!(
            out,
            "No problems: every run succeeded with every task done exactly once."
        );
    } else {
        let _ = writeln!(out, "PROBLEMS ({}):", report.problems.len());
        for problem in &report.problems {
            let _ = writeln!(out, "  - {problem}");
        }
    }
    out
}

fn write_runs_breakdown(out: &mut String, report: &RunsReport) {
    if report.cases.iter().all(|case| case.end_to_end.is_none()) {
        return;
    }
    let _ = writeln!(
        out,
        "Where the time went (store commits = Store::commit_run calls, one SQLite transaction \
         each; commit wait = time the run's actor waited for them)"
    );
    const WIDTHS: [usize; 12] = [12, 9, 8, 9, 9, 8, 8, 6, 8, 8, 6, 8];
    let row = |cells: [&str; 12]| table_row(&WIDTHS, &cells);
    out.push_str(&row([
        "",
        "",
        "store",
        "commits",
        "decisions",
        "tasks",
        "commit",
        "wait",
        "CPU",
        "CPU",
        "cores",
        "written",
    ]));
    out.push_str(&row([
        "case",
        "decisions",
        "commits",
        "/s",
        "/commit",
        "/commit",
        "wait µs",
        "% run",
        "s",
        "µs/task",
        "busy",
        "KiB/task",
    ]));
    for case in &report.cases {
        let Some(e) = &case.end_to_end else {
            continue;
        };
        out.push_str(&row([
            &case.case.name,
            &thousands(e.decisions as f64),
            &thousands(e.run_commits as f64),
            &thousands(e.run_commits_per_s),
            &format!("{:.2}", e.decisions_per_commit),
            &format!("{:.2}", e.tasks_per_commit),
            &format!("{:.0}", e.commit_wait_us_mean),
            &format!("{:.0}%", e.commit_wait_fraction * 100.0),
            &format!("{:.2}", e.cpu_s),
            &format!("{:.0}", e.cpu_us_per_task),
            &format!("{:.2}/{}", e.cpu_cores_busy, e.cores),
            &format!("{:.1}", e.kib_written_per_task),
        ]));
    }
    let engine: Vec<String> = report
        .cases
        .iter()
        .filter_map(|case| {
            case.engine_alone
                .as_ref()
                .map(|e| format!("{} {:.1} µs/decision", case.case.name, e.us_per_decision))
        })
        .collect();
    if !engine.is_empty() {
        let _ = writeln!(out, "Engine alone: {}.", engine.join(", "));
    }
    let starts: Vec<String> = report
        .cases
        .iter()
        .filter_map(|case| {
            case.end_to_end.as_ref().map(|e| {
                format!(
                    "{} {:.0} ms (create_run {:.0} ms, {} load_run {:.0} ms)",
                    case.case.name, e.start_call_ms, e.create_run_ms, e.load_runs, e.load_run_ms
                )
            })
        })
        .collect();
    if !starts.is_empty() {
        let _ = writeln!(
            out,
            "Start call and reads of the whole run: {}.",
            starts.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "Tasks run the `log` stage with message `{}`; the journal has a dispatch, a start and a \
         success per task.\n",
        runs::TASK_MESSAGE
    );
}

/// One line of a table: the first cell left-aligned, the others right-aligned, each padded to its
/// width and separated by ` | `.
fn table_row(widths: &[usize], cells: &[&str]) -> String {
    let mut line = String::new();
    for (index, (cell, &width)) in cells.iter().zip(widths).enumerate() {
        if index == 0 {
            let _ = write!(line, "{cell:<width$}");
        } else {
            let _ = write!(line, " | {cell:>width$}");
        }
    }
    line.push('\n');
    line
}

fn verdict(met: bool) -> &'static str {
    if met { "ok" } else { "MISS" }
}

fn concurrency_list() -> String {
    CONCURRENCIES
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A count with thousands separators: 12,345.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// Microseconds shown as milliseconds, with more decimals for short times.
fn ms(latency_us: u64) -> String {
    let milliseconds = latency_us as f64 / 1_000.0;
    match milliseconds {
        m if m < 10.0 => format!("{m:.3}"),
        m if m < 100.0 => format!("{m:.2}"),
        m => format!("{m:.1}"),
    }
}

fn micros(value_us: Option<f64>) -> String {
    value_us.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"))
}

fn mib(value_kib: Option<u64>) -> String {
    value_kib.map_or_else(
        || "-".to_owned(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_counts_and_latencies() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_009.0), "1,009");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(ms(31), "0.031");
        assert_eq!(ms(28_600), "28.60");
        assert_eq!(ms(671_000), "671.0");
    }
}
