//! The suite: Levee's server measured side by side with the bare baseline in one run, and both
//! compared with StateService's figures.
//!
//! The suite runs four sections, each reported even when a later one fails:
//! 1. State checks: `GET /state?state=green_state` on Levee and any request on the bare server,
//!    at concurrency 1, 16 and 64, with keep-alive and with `Connection: close`. The two servers
//!    run at the same time and take turns case by case, so that a change in the machine's load
//!    during the run affects both alike.
//! 2. Durable transitions: counter machines, each advanced by its own client with
//!    `PUT /machines/c{concurrency}-m{i}/state?state=counting`, at concurrency 1, 16 and 64.
//! 3. Lost updates: the machines' counters, read through the JSON API, must add up to the PUTs
//!    that were acknowledged with 200.
//! 4. Memory: Levee's resident memory when idle, after creating many machines, and after a state
//!    check on every thousandth of them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper::Method;
use serde::Serialize;

use crate::bare::BareProcess;
use crate::levee::{self, LeveeProcess};
use crate::load::{self, ConnectionMode, LoadConfig, LoadResult};
use crate::procfs;
use crate::stateservice::{self, CONCURRENCIES};
use crate::target::{CONNECTION_INDEX_PLACEHOLDER, UrlTemplate};

/// The measured time per case, in seconds.
pub const DURATION_S_DEFAULT: f64 = 5.0;
/// The warm-up before each case, in seconds.
pub const WARMUP_S_DEFAULT: f64 = 1.0;
/// The measured time per case with `--quick`, in seconds.
pub const QUICK_DURATION_S: f64 = 1.0;
/// The warm-up before each case with `--quick`, in seconds.
pub const QUICK_WARMUP_S: f64 = 0.2;
/// Machines created for the memory figures.
pub const MEMORY_MACHINES_DEFAULT: usize = 100_000;
/// Machines created for the memory figures with `--quick`.
pub const QUICK_MEMORY_MACHINES: usize = 10_000;
/// One state check per this many machines after creating them for the memory figures.
const MEMORY_CHECK_EVERY_NTH_MACHINE: usize = 1_000;

/// The state Levee's StateService machine starts in, so a check of it answers 200.
const STATESERVICE_CURRENT_STATE: &str = "green_state";

/// What the memory machines' ids start with.
const MEMORY_MACHINE_ID_PREFIX: &str = "mem";

/// What to run.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// The `levee` binary; the suite refuses to run without one.
    pub levee_binary: Option<PathBuf>,
    /// The executable that serves the bare baseline with its `bare` subcommand: normally this
    /// benchmark's own binary.
    pub bare_executable: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub memory_machines: usize,
}

/// Everything the suite measured. Sections that could not be measured are `None`, and why is in
/// `problems`.
#[derive(Debug, Serialize)]
pub struct SuiteReport {
    pub levee_binary: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub goals: Goals,
    pub state_checks: Vec<StateCheckCase>,
    pub durable_transitions: Vec<TransitionCase>,
    pub lost_updates: Option<LostUpdateCheck>,
    pub memory: Option<MemoryFigures>,
    /// Everything that makes this run fail: errors, unexpected answers, lost updates.
    pub problems: Vec<String>,
}

/// The goals the figures are compared with, so the JSON says what was aimed at.
#[derive(Debug, Serialize)]
pub struct Goals {
    pub state_checks_fraction_of_bare_min: f64,
    pub state_checks_times_stateservice_min: f64,
    pub durable_transitions_per_s_min: f64,
    pub durable_transitions_concurrency: usize,
}

/// One state-check case on both servers.
#[derive(Debug, Serialize)]
pub struct StateCheckCase {
    pub concurrency: usize,
    pub connection: ConnectionMode,
    pub bare: LoadResult,
    pub levee: LoadResult,
    pub levee_over_bare: f64,
    pub stateservice: Option<stateservice::Figure>,
    pub levee_over_stateservice: Option<f64>,
    /// The bare server's rate over StateService's: the ceiling of `levee_over_stateservice` on
    /// this machine with this kind of connection.
    pub bare_over_stateservice: Option<f64>,
}

impl StateCheckCase {
    pub fn meets_bare_goal(&self) -> bool {
        self.levee_over_bare >= stateservice::GOAL_FRACTION_OF_BARE_MIN
    }

    pub fn meets_stateservice_goal(&self) -> Option<bool> {
        self.levee_over_stateservice
            .map(|ratio| ratio >= stateservice::GOAL_TIMES_STATESERVICE_MIN)
    }
}

/// One durable-transition case.
#[derive(Debug, Serialize)]
pub struct TransitionCase {
    pub concurrency: usize,
    pub levee: LoadResult,
    pub stateservice: Option<stateservice::Figure>,
    pub levee_over_stateservice: Option<f64>,
}

impl TransitionCase {
    /// Whether this case meets the durable-transition goal; `None` at concurrencies the goal is
    /// not set for.
    pub fn meets_goal(&self) -> Option<bool> {
        (self.concurrency == stateservice::GOAL_DURABLE_TRANSITIONS_CONCURRENCY).then_some(
            self.levee.requests_per_s >= stateservice::GOAL_DURABLE_TRANSITIONS_PER_S_MIN,
        )
    }
}

/// The counters of the transition machines against the PUTs Levee acknowledged.
#[derive(Debug, Serialize)]
pub struct LostUpdateCheck {
    pub machines: usize,
    /// PUTs answered 200, warm-ups included.
    pub acknowledged: u64,
    /// PUTs whose answer was never read: Levee may or may not have applied them.
    pub outcome_unknown: u64,
    pub counter_sum: u64,
    /// Acknowledged PUTs missing from the counters.
    pub lost: u64,
    /// Counted PUTs that were neither acknowledged nor left without an answer.
    pub unaccounted: u64,
}

/// Levee's resident memory, in KiB.
#[derive(Debug, Serialize)]
pub struct MemoryFigures {
    /// Right after Levee started.
    pub idle_rss_kib: u64,
    /// After the state-check and transition loads, before the memory machines were created.
    pub before_create_rss_kib: Option<u64>,
    pub machines_created: Option<usize>,
    pub after_create_rss_kib: Option<u64>,
    pub state_checks: Option<usize>,
    pub after_checks_rss_kib: Option<u64>,
    /// Growth from before creating the machines to after checking them, per machine, in bytes.
    pub bytes_per_machine: Option<f64>,
}

/// Runs the suite. It fails at once only if Levee cannot be started; problems met later are
/// collected in the report, which the caller prints before failing.
pub async fn run(config: &SuiteConfig) -> Result<SuiteReport> {
    let Some(levee_binary) = &config.levee_binary else {
        bail!(
            "the suite needs Levee's binary: build it with `cargo build --release -p levee` and \
             pass `--levee target/release/levee`"
        );
    };
    let workdir = tempfile::Builder::new()
        .prefix("levee-bench-")
        .tempdir()
        .context("could not create a temporary directory for Levee's database")?;
    let levee = LeveeProcess::start(levee_binary, workdir.path()).await?;
    let idle_rss_kib =
        procfs::resident_memory_kib(levee.pid).context("could not read Levee's memory")?;

    let mut report = SuiteReport {
        levee_binary: levee_binary.display().to_string(),
        duration_s: config.duration.as_secs_f64(),
        warmup_s: config.warmup.as_secs_f64(),
        goals: Goals {
            state_checks_fraction_of_bare_min: stateservice::GOAL_FRACTION_OF_BARE_MIN,
            state_checks_times_stateservice_min: stateservice::GOAL_TIMES_STATESERVICE_MIN,
            durable_transitions_per_s_min: stateservice::GOAL_DURABLE_TRANSITIONS_PER_S_MIN,
            durable_transitions_concurrency: stateservice::GOAL_DURABLE_TRANSITIONS_CONCURRENCY,
        },
        state_checks: Vec::new(),
        durable_transitions: Vec::new(),
        lost_updates: None,
        memory: None,
        problems: Vec::new(),
    };

    if let Err(error) = measure_state_checks(config, &levee, &mut report).await {
        report.problems.push(format!("state checks: {error:#}"));
    }
    match measure_durable_transitions(config, &levee, &mut report).await {
        Ok(check) => {
            if check.lost > 0 {
                report.problems.push(format!(
                    "LOST UPDATES: {} of {} acknowledged PUTs are missing from the counters",
                    check.lost, check.acknowledged
                ));
            }
            if check.unaccounted > 0 {
                report.problems.push(format!(
                    "the counters hold {} more PUTs than were acknowledged or left unanswered",
                    check.unaccounted
                ));
            }
            report.lost_updates = Some(check);
        }
        Err(error) => report
            .problems
            .push(format!("durable transitions: {error:#}")),
    }
    let mut memory = MemoryFigures {
        idle_rss_kib,
        before_create_rss_kib: None,
        machines_created: None,
        after_create_rss_kib: None,
        state_checks: None,
        after_checks_rss_kib: None,
        bytes_per_machine: None,
    };
    if let Err(error) = measure_memory(config, &levee, &mut memory).await {
        report.problems.push(format!("memory: {error:#}"));
    }
    report.memory = Some(memory);

    if let Err(error) = levee.stop().await {
        report.problems.push(format!("{error:#}"));
    }
    Ok(report)
}

/// Runs the six state-check cases on both servers, turn by turn.
async fn measure_state_checks(
    config: &SuiteConfig,
    levee: &LeveeProcess,
    report: &mut SuiteReport,
) -> Result<()> {
    let bare = BareProcess::start(&config.bare_executable).await?;
    let bare_url = UrlTemplate::parse(&format!(
        "http://{}/state?state={STATESERVICE_CURRENT_STATE}",
        bare.addr
    ))?;
    let levee_url = UrlTemplate::parse(&format!(
        "http://{}/state?state={STATESERVICE_CURRENT_STATE}",
        levee.addr
    ))?;
    for concurrency in CONCURRENCIES {
        for connection_mode in [ConnectionMode::KeepAlive, ConnectionMode::Close] {
            let case = |url: &UrlTemplate, pid: u32| LoadConfig {
                connection_mode,
                warmup: config.warmup,
                server_pid: Some(pid),
                // Only green_state's yes counts: a 406 here would mean Levee is not serving the
                // README machine it was given.
                expected_statuses: vec![200],
                ..LoadConfig::new(url.clone(), Method::GET, concurrency, config.duration)
            };
            let bare_result = load::run(&case(&bare_url, bare.pid)).await?;
            let levee_result = load::run(&case(&levee_url, levee.pid)).await?;
            for (server, result) in [("bare server", &bare_result), ("Levee", &levee_result)] {
                note_unclean(
                    &mut report.problems,
                    &format!("{server}, GET state checks"),
                    result,
                );
            }
            let figure = stateservice::figure_at(&stateservice::GET_FIGURES, concurrency);
            report.state_checks.push(StateCheckCase {
                concurrency,
                connection: connection_mode,
                levee_over_bare: ratio(levee_result.requests_per_s, bare_result.requests_per_s),
                levee_over_stateservice: figure
                    .map(|figure| ratio(levee_result.requests_per_s, figure.requests_per_s)),
                bare_over_stateservice: figure
                    .map(|figure| ratio(bare_result.requests_per_s, figure.requests_per_s)),
                stateservice: figure,
                bare: bare_result,
                levee: levee_result,
            });
        }
    }
    bare.stop().await
}

/// Creates the counter machines, runs the three PUT cases and checks the counters.
///
/// Each case has machines of its own, one per client, and each client sends fewer PUTs than a
/// machine counts before it leaves `counting` ([`levee::COUNTER_TARGET_REPORTS`]), so every PUT
/// meets a machine that accepts it.
async fn measure_durable_transitions(
    config: &SuiteConfig,
    levee: &LeveeProcess,
    report: &mut SuiteReport,
) -> Result<LostUpdateCheck> {
    levee.create_counter_definition().await?;
    let ids: Vec<String> = CONCURRENCIES
        .iter()
        .flat_map(|&concurrency| {
            (0..concurrency).map(move |index| transition_machine_id(concurrency, index))
        })
        .collect();
    levee.create_counter_machines(&ids).await?;
    let mut acknowledged = 0;
    let mut outcome_unknown = 0;
    for concurrency in CONCURRENCIES {
        let url = UrlTemplate::parse(&format!(
            "http://{}/machines/{}/state?state={}",
            levee.addr,
            transition_machine_id_template(concurrency),
            levee::COUNTING_STATE
        ))?;
        let requests_per_connection_max = levee::COUNTER_TARGET_REPORTS - 1;
        let case = LoadConfig {
            warmup: config.warmup,
            server_pid: Some(levee.pid),
            expected_statuses: vec![200],
            requests_per_connection_max,
            ..LoadConfig::new(url, Method::PUT, concurrency, config.duration)
        };
        let result = load::run(&case).await?;
        note_unclean(&mut report.problems, "Levee, durable transitions", &result);
        if result.clients_out_of_budget > 0 {
            report.problems.push(format!(
                "durable transitions at concurrency {concurrency}: {} client(s) sent the \
                 {requests_per_connection_max} PUTs their machine can count before the measured \
                 time ended, so the rate is understated; measure for less time",
                result.clients_out_of_budget
            ));
        }
        acknowledged += result.total_with_status(200);
        outcome_unknown += result.outcome_unknown_total;
        let figure = stateservice::figure_at(&stateservice::PUT_FIGURES, concurrency);
        report.durable_transitions.push(TransitionCase {
            concurrency,
            levee_over_stateservice: figure
                .map(|figure| ratio(result.requests_per_s, figure.requests_per_s)),
            stateservice: figure,
            levee: result,
        });
    }
    let mut counter_sum = 0;
    for id in &ids {
        counter_sum += levee
            .machine_counter(id)
            .await
            .with_context(|| format!("could not read machine {id}'s counter"))?;
    }
    Ok(LostUpdateCheck {
        machines: ids.len(),
        acknowledged,
        outcome_unknown,
        counter_sum,
        lost: acknowledged.saturating_sub(counter_sum),
        unaccounted: counter_sum.saturating_sub(acknowledged + outcome_unknown),
    })
}

/// Creates the memory machines, checks every thousandth, and reads Levee's memory after each step.
async fn measure_memory(
    config: &SuiteConfig,
    levee: &LeveeProcess,
    memory: &mut MemoryFigures,
) -> Result<()> {
    let before_create_rss_kib = procfs::resident_memory_kib(levee.pid)?;
    memory.before_create_rss_kib = Some(before_create_rss_kib);
    let ids: Vec<String> = (0..config.memory_machines)
        .map(|n| format!("{MEMORY_MACHINE_ID_PREFIX}{n}"))
        .collect();
    levee.create_counter_machines(&ids).await?;
    memory.machines_created = Some(ids.len());
    memory.after_create_rss_kib = Some(procfs::resident_memory_kib(levee.pid)?);
    let checked: Vec<&String> = ids.iter().step_by(MEMORY_CHECK_EVERY_NTH_MACHINE).collect();
    for id in &checked {
        let status = levee.check_machine_state(id, levee::COUNTING_STATE).await?;
        if status != 200 {
            bail!(
                "GET /machines/{id}/state?state={} answered {status}, not 200",
                levee::COUNTING_STATE
            );
        }
    }
    memory.state_checks = Some(checked.len());
    let after_checks_rss_kib = procfs::resident_memory_kib(levee.pid)?;
    memory.after_checks_rss_kib = Some(after_checks_rss_kib);
    if !ids.is_empty() {
        let growth_bytes = after_checks_rss_kib.saturating_sub(before_create_rss_kib) * 1024;
        memory.bytes_per_machine = Some(growth_bytes as f64 / ids.len() as f64);
    }
    Ok(())
}

/// The machine that client `index` of the concurrency-`concurrency` case drives, such as
/// `c16-m3`.
fn transition_machine_id(concurrency: usize, index: usize) -> String {
    format!("c{concurrency}-m{index}")
}

/// [`transition_machine_id`] with the connection index left as a placeholder.
fn transition_machine_id_template(concurrency: usize) -> String {
    format!("c{concurrency}-m{CONNECTION_INDEX_PLACEHOLDER}")
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

/// Records a case that had errors, unexpected statuses or no answers at all as a problem.
fn note_unclean(problems: &mut Vec<String>, what: &str, result: &LoadResult) {
    if result.is_clean() {
        return;
    }
    let statuses = result
        .statuses
        .iter()
        .map(|(code, count)| format!("{count} x {code}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut problem = format!(
        "{what} at concurrency {} ({}): {} answers, {} unexpected statuses, {} errors",
        result.concurrency, result.connection, result.answers, result.unexpected, result.errors
    );
    if !statuses.is_empty() {
        problem.push_str(&format!("; statuses: {statuses}"));
    }
    if let Some(first_error) = &result.first_error {
        problem.push_str(&format!("; first error: {first_error}"));
    }
    problems.push(problem);
}
