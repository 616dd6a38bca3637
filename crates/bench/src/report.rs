//! Human-readable tables of what the load generator and the suite measured.

use std::fmt::Write;

use crate::load::LoadResult;
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
