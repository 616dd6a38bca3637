//! The runbook engine-overhead benchmark: runbooks of no-op tasks run end to end on SQLite,
//! next to a raw SQLite commit loop measured in the same run, and the pure scheduler alone.
//!
//! Each case builds one runbook of `tasks` `log` tasks (the cheapest stage: it runs no process,
//! sleeps for nothing and touches no network; `wait` refuses a zero duration, so its cheapest
//! form sleeps at least 1 ms) in one of three shapes:
//! - **wide**: every task independent (one wave), with the default `max_parallel` and with
//!   [`WIDE_MAX_PARALLEL_HIGH`];
//! - **deep**: a chain, each task needing the one before;
//! - **random DAG**: each task needing 0 to [`RANDOM_DAG_MAX_NEEDS`] random earlier tasks, drawn
//!   from a fixed seed so every run measures the same graph.
//!
//! End to end means what the server does for `POST /api/v1/definitions` and
//! `POST /api/v1/runbooks/{name}/runs`, minus HTTP: a fresh [`SqliteStore`] on a temporary
//! file, [`App::open`] with the system clock, the runbook applied with [`App::apply_files`] as
//! an admin, then the time from [`App::start_run`] until the run's actor has retired (which it
//! does only after committing the run's end). The store is wrapped in a [`CountingStore`] that
//! forwards every call and counts the run commits, their size and the time the run's actor
//! waited for them. After the clock stops, the run is checked: it succeeded, and its journal
//! holds exactly one dispatch, one start and one success of every task, so a broken run can
//! never pass for a fast one.
//!
//! The baseline is a loop of single-row `INSERT` transactions on a SQLite file with the store's
//! durability settings, each committed (and so `fsync`ed) before the next begins: what one
//! durable commit costs on this disk. Tasks per raw commit is how many tasks one such commit
//! carries.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use levee_engine::runbook::{
    self as engine, Action, Context, Control, DEFAULT_MAX_PARALLEL_TASKS, Event, JournalKind,
    Operator, PlanTask, RunPlan, RunState, RunStatus, TaskStatus,
};
use levee_server::auth::{Caller, Role, Scope};
use levee_server::runs::StartRequest;
use levee_server::{ApiError, App, AppOptions, SystemClock};
use levee_store::{DynStore, SqliteStore, Store};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

use crate::procfs;

/// Tasks per runbook, as the issue asks.
pub const TASKS_DEFAULT: usize = 10_000;
/// The `max_parallel` of the second wide case: enough to keep far more tasks in flight than the
/// default [`DEFAULT_MAX_PARALLEL_TASKS`].
pub const WIDE_MAX_PARALLEL_HIGH: u32 = 1_000;
/// Most earlier tasks one task of the random DAG needs.
pub const RANDOM_DAG_MAX_NEEDS: u64 = 3;
/// The seed of the random DAG; fixed, so every run measures the same graph.
pub const RANDOM_DAG_SEED: u64 = 0x1e7e_e000_2024_0917;
/// Single-row transactions in each raw commit loop.
pub const BASELINE_COMMITS_DEFAULT: u64 = 2_000;
/// Longest one raw commit loop may take, in seconds, however many commits it was asked for.
pub const BASELINE_TIME_LIMIT_S: u64 = 30;
/// Longest one run may take before the case fails, in seconds.
pub const RUN_TIME_LIMIT_S_DEFAULT: u64 = 600;
/// How often the end of a run is looked for between change notices, in milliseconds. The look
/// is in memory (does the run still have an actor?), never a store query.
pub const END_POLL_INTERVAL_MS: u64 = 2;
/// The message every no-op task logs.
pub const TASK_MESSAGE: &str = "ok";
/// The goal of the issue, in tasks per second.
pub const GOAL_TASKS_PER_S_MIN: f64 = 2_000.0;
/// Conductor's published figure, in task executions per second.
pub const CONDUCTOR_TASK_EXECUTIONS_PER_S: f64 = 1_450.0;
/// Self-hosted Temporal's published figure, in state transitions per second.
pub const TEMPORAL_STATE_TRANSITIONS_PER_S: f64 = 1_000.0;
/// The epoch milliseconds the engine-alone runs see as "now": they never look at a clock.
const ENGINE_ALONE_NOW_MS: i64 = 1_900_000_000_000;
/// A new run's version (`RunState::new`); every committed decision adds one.
const INITIAL_RUN_VERSION: i64 = 1;
/// Bytes in a KiB.
const BYTES_PER_KIB: f64 = 1_024.0;
/// The name runbooks are applied and started as.
const BENCH_ACTOR: &str = "levee-bench";
/// What runbook names start with.
const RUNBOOK_NAME_PREFIX: &str = "bench-";

/// The shape of a case's DAG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// Independent tasks: one wave.
    Wide,
    /// A chain: each task needs the one before.
    Deep,
    /// Each task needs 0 to [`RANDOM_DAG_MAX_NEEDS`] random earlier tasks.
    RandomDag,
}

/// One runbook to measure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Case {
    /// `wide`, `wide-1000`, `deep`, `random-dag`.
    pub name: String,
    pub shape: Shape,
    /// The runbook's own `max_parallel` key; `None` leaves the default.
    pub max_parallel: Option<u32>,
}

impl Case {
    /// The parallelism the run gets.
    pub fn effective_max_parallel(&self) -> u32 {
        self.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL_TASKS)
    }
}

/// The four cases of the issue, in the order they are measured.
pub fn default_cases() -> Vec<Case> {
    vec![
        Case {
            name: "wide".to_string(),
            shape: Shape::Wide,
            max_parallel: None,
        },
        Case {
            name: format!("wide-{WIDE_MAX_PARALLEL_HIGH}"),
            shape: Shape::Wide,
            max_parallel: Some(WIDE_MAX_PARALLEL_HIGH),
        },
        Case {
            name: "deep".to_string(),
            shape: Shape::Deep,
            max_parallel: None,
        },
        Case {
            name: "random-dag".to_string(),
            shape: Shape::RandomDag,
            max_parallel: None,
        },
    ]
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunsConfig {
    pub tasks: usize,
    pub cases: Vec<Case>,
    pub baseline_commits: u64,
    /// Skip the end-to-end runs (engine alone and the baseline only).
    pub skip_end_to_end: bool,
    /// Longest one run may take before its case fails.
    pub run_time_limit: Duration,
}

impl Default for RunsConfig {
    fn default() -> Self {
        RunsConfig {
            tasks: TASKS_DEFAULT,
            cases: default_cases(),
            baseline_commits: BASELINE_COMMITS_DEFAULT,
            skip_end_to_end: false,
            run_time_limit: Duration::from_secs(RUN_TIME_LIMIT_S_DEFAULT),
        }
    }
}

/// Everything measured.
#[derive(Debug, Serialize)]
pub struct RunsReport {
    pub tasks_per_case: usize,
    pub goal_tasks_per_s_min: f64,
    pub conductor_task_executions_per_s: f64,
    pub temporal_state_transitions_per_s: f64,
    /// The raw commit loop before the cases and after them.
    pub baselines: Vec<Baseline>,
    /// The mean of `baselines`' rates, which the ratios divide by.
    pub baseline_commits_per_s: Option<f64>,
    pub cases: Vec<CaseResult>,
    /// Everything that makes this run fail: errors, runs that did not succeed, tasks that did not
    /// run exactly once.
    pub problems: Vec<String>,
}

/// One raw commit loop.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    /// `before` or `after` the cases.
    pub when: String,
    pub commits: u64,
    pub duration_s: f64,
    pub commits_per_s: f64,
    pub commit_us_mean: f64,
}

/// One case, end to end and engine alone.
#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub case: Case,
    pub tasks: usize,
    pub max_parallel: u32,
    /// Dependencies in the DAG.
    pub edges: usize,
    pub end_to_end: Option<EndToEnd>,
    pub engine_alone: Option<EngineAlone>,
}

/// A run through the server's code on SQLite.
#[derive(Debug, Serialize)]
pub struct EndToEnd {
    /// The run's final status (`succeeded` unless something is broken).
    pub status: String,
    /// `App::apply_files` of the runbook, not part of the measured time, in milliseconds.
    pub apply_ms: f64,
    /// `App::start_run` until it returned (run created with every task row, `start` committed,
    /// the run read back for its view), in milliseconds. Part of the measured time.
    pub start_call_ms: f64,
    /// Of which `Store::create_run`: the run row, its spec and every task row, in milliseconds.
    pub create_run_ms: f64,
    /// `Store::load_run` calls during the measured time (the start's answer, the actor's start)
    /// and the time they took, in milliseconds.
    pub load_runs: u64,
    pub load_run_ms: f64,
    /// From calling `App::start_run` to the run's actor retiring after the run's last commit, in
    /// seconds.
    pub duration_s: f64,
    pub tasks_per_s: f64,
    /// `tasks_per_s` over the raw commit loop's commits per second.
    pub tasks_per_raw_commit: Option<f64>,
    pub meets_goal: bool,
    /// The run's own record: `finished_at_ms - started_at_ms`, in milliseconds.
    pub recorded_run_ms: Option<i64>,
    /// Engine decisions committed: the run's final version less its first.
    pub decisions: i64,
    /// `Store::commit_run` calls: one per actor turn (and so one SQLite transaction each, since a
    /// run's commits never overlap and nothing else writes during a case).
    pub run_commits: u64,
    pub run_commits_per_s: f64,
    pub decisions_per_commit: f64,
    pub tasks_per_commit: f64,
    pub journal_entries: u64,
    pub task_rows_written: u64,
    pub outputs_written: u64,
    /// Time the run's actor spent waiting for `commit_run` (queue, transaction and `fsync`), in
    /// seconds: the actor waits for each commit before its next turn.
    pub commit_wait_s: f64,
    /// `commit_wait_s` over `duration_s`.
    pub commit_wait_fraction: f64,
    pub commit_wait_us_mean: f64,
    /// CPU time of this whole process (every thread) during the measured time, in seconds.
    pub cpu_s: f64,
    /// `cpu_s` per task, in microseconds.
    pub cpu_us_per_task: f64,
    /// `cpu_s` over `duration_s`: busy cores (this machine's count is in `cores`).
    pub cpu_cores_busy: f64,
    pub cores: usize,
    /// Bytes this process passed to `write` calls during the measured time (the WAL, mostly),
    /// from `/proc/self/io`.
    pub bytes_written: u64,
    pub write_syscalls: u64,
    pub kib_written_per_task: f64,
    pub kib_written_per_commit: f64,
    pub verification: Verification,
}

/// What the journal and the final state say about every task.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    pub tasks_succeeded: usize,
    /// Tasks with exactly one `task_dispatched`, one `task_started` and one `task_succeeded`
    /// journal entry, and one attempt.
    pub tasks_done_exactly_once: usize,
    pub journal_entries_read: usize,
    /// True when every task succeeded exactly once.
    pub ok: bool,
}

/// The pure scheduler over the same plan, with an in-memory state and no store.
#[derive(Debug, Serialize)]
pub struct EngineAlone {
    /// `engine::runbook::apply` calls: `start`, then a `task_started` and a `task_succeeded`
    /// per task, as the executor sends them.
    pub decisions: u64,
    pub duration_s: f64,
    pub tasks_per_s: f64,
    pub decisions_per_s: f64,
    pub us_per_decision: f64,
}

/// Runs the baseline, every case, and the baseline again.
pub async fn run(config: &RunsConfig) -> Result<RunsReport> {
    ensure!(config.tasks > 0, "a runbook needs at least one task");
    let workdir = tempfile::Builder::new()
        .prefix("levee-bench-runs-")
        .tempdir()
        .context("could not create a temporary directory for the databases")?;
    let mut report = RunsReport {
        tasks_per_case: config.tasks,
        goal_tasks_per_s_min: GOAL_TASKS_PER_S_MIN,
        conductor_task_executions_per_s: CONDUCTOR_TASK_EXECUTIONS_PER_S,
        temporal_state_transitions_per_s: TEMPORAL_STATE_TRANSITIONS_PER_S,
        baselines: Vec::new(),
        baseline_commits_per_s: None,
        cases: Vec::new(),
        problems: Vec::new(),
    };
    match raw_commit_loop(
        &workdir.path().join("baseline-before.db"),
        config.baseline_commits,
    )
    .await
    {
        Ok(figures) => report.baselines.push(Baseline {
            when: "before".to_string(),
            ..figures
        }),
        Err(error) => report.problems.push(format!("raw commit loop: {error:#}")),
    }
    for (index, case) in config.cases.iter().enumerate() {
        let deps = dag(case.shape, config.tasks);
        let mut result = CaseResult {
            case: case.clone(),
            tasks: config.tasks,
            max_parallel: case.effective_max_parallel(),
            edges: deps.iter().map(Vec::len).sum(),
            end_to_end: None,
            engine_alone: None,
        };
        match engine_alone(&deps, case.effective_max_parallel()) {
            Ok(figures) => result.engine_alone = Some(figures),
            Err(error) => report
                .problems
                .push(format!("{}, engine alone: {error:#}", case.name)),
        }
        if !config.skip_end_to_end {
            let dir = workdir.path().join(format!("case-{index}"));
            match end_to_end(&dir, case, &deps, config.run_time_limit).await {
                Ok(figures) => {
                    if !figures.verification.ok || figures.status != RunStatus::Succeeded.name() {
                        report.problems.push(format!(
                            "{}: the run ended {} with {} of {} tasks done exactly once",
                            case.name,
                            figures.status,
                            figures.verification.tasks_done_exactly_once,
                            config.tasks
                        ));
                    }
                    result.end_to_end = Some(figures);
                }
                Err(error) => report
                    .problems
                    .push(format!("{}, end to end: {error:#}", case.name)),
            }
        }
        report.cases.push(result);
    }
    match raw_commit_loop(
        &workdir.path().join("baseline-after.db"),
        config.baseline_commits,
    )
    .await
    {
        Ok(figures) => report.baselines.push(Baseline {
            when: "after".to_string(),
            ..figures
        }),
        Err(error) => report.problems.push(format!("raw commit loop: {error:#}")),
    }
    if !report.baselines.is_empty() {
        let sum: f64 = report.baselines.iter().map(|b| b.commits_per_s).sum();
        let mean = sum / report.baselines.len() as f64;
        report.baseline_commits_per_s = Some(mean);
        for case in &mut report.cases {
            if let Some(figures) = &mut case.end_to_end {
                figures.tasks_per_raw_commit = Some(figures.tasks_per_s / mean);
            }
        }
    }
    Ok(report)
}

/// A small, fixed pseudo-random generator (SplitMix64): the random DAG must be the same graph in
/// every run and with every version of every crate.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `bound` (which must not be 0); the bias is negligible for small bounds.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Each task's dependencies, by index; every dependency comes earlier.
pub fn dag(shape: Shape, tasks: usize) -> Vec<Vec<usize>> {
    match shape {
        Shape::Wide => vec![Vec::new(); tasks],
        Shape::Deep => (0..tasks)
            .map(|i| if i == 0 { Vec::new() } else { vec![i - 1] })
            .collect(),
        Shape::RandomDag => {
            let mut rng = SplitMix64(RANDOM_DAG_SEED);
            (0..tasks)
                .map(|i| {
                    let wanted = rng.below(RANDOM_DAG_MAX_NEEDS + 1) as usize;
                    let mut needs: Vec<usize> = Vec::with_capacity(wanted);
                    // Distinct earlier tasks; there are only `i` of them.
                    while needs.len() < wanted.min(i) {
                        let dep = rng.below(i as u64) as usize;
                        if !needs.contains(&dep) {
                            needs.push(dep);
                        }
                    }
                    needs.sort_unstable();
                    needs
                })
                .collect()
        }
    }
}

fn task_id(index: usize) -> String {
    format!("t{index}")
}

/// The runbook as a user would write it: one flow-style line per task, to stay well under the
/// 1 MiB a definition file may hold.
pub fn runbook_yaml(name: &str, deps: &[Vec<usize>], max_parallel: Option<u32>) -> String {
    let mut yaml = format!(
        "kind: Runbook\nname: {name}\ndescription: {} no-op tasks for levee-bench.\n",
        deps.len()
    );
    if let Some(max_parallel) = max_parallel {
        yaml.push_str(&format!("max_parallel: {max_parallel}\n"));
    }
    yaml.push_str("tasks:\n");
    for (index, needs) in deps.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{ id: {}, stage: log, with: {{ message: {TASK_MESSAGE} }}",
            task_id(index)
        ));
        if !needs.is_empty() {
            let names: Vec<String> = needs.iter().map(|&d| task_id(d)).collect();
            yaml.push_str(&format!(", needs: [{}]", names.join(", ")));
        }
        yaml.push_str(" }\n");
    }
    yaml
}

/// The engine's plan of the same DAG, as the server builds it for `log` tasks (idempotent, no
/// retries, no timeout, no checks).
fn engine_plan(deps: &[Vec<usize>]) -> Result<RunPlan> {
    let tasks = deps
        .iter()
        .enumerate()
        .map(|(index, needs)| {
            let names: Vec<String> = needs.iter().map(|&d| task_id(d)).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            PlanTask::new(task_id(index), "log")
                .needs(&names)
                .idempotent(true)
        })
        .collect();
    RunPlan::new(tasks).map_err(|error| anyhow!("invalid plan: {error}"))
}

/// Drives the pure scheduler through the run as the executor would: `start`, then for every
/// `StartTask`, `task_started` and `task_succeeded`, one decision at a time, each committed to
/// the in-memory state before the next.
pub fn engine_alone(deps: &[Vec<usize>], max_parallel: u32) -> Result<EngineAlone> {
    let plan = engine_plan(deps)?;
    let ctx = Context {
        now_ms: ENGINE_ALONE_NOW_MS,
        global_pause: false,
    };
    let mut state = RunState::new(&plan, max_parallel, ENGINE_ALONE_NOW_MS)
        .map_err(|error| anyhow!("{error}"))?;
    let mut queue = VecDeque::from([Event::Control {
        by: Operator {
            actor: BENCH_ACTOR.to_string(),
            reason: "benchmark".to_string(),
        },
        control: Control::Start,
    }]);
    // Every decision is at most one per queued event, and each task queues two.
    let decisions_max = 2 * deps.len() as u64 + 1;
    let mut decisions = 0_u64;
    let started = Instant::now();
    while let Some(event) = queue.pop_front() {
        ensure!(
            decisions < decisions_max,
            "the engine took more than {decisions_max} decisions"
        );
        let decision = engine::apply(&plan, &state, &event, ctx)
            .map_err(|refusal| anyhow!("the engine refused {event:?}: {refusal}"))?;
        decisions += 1;
        state.commit(&decision.change);
        for action in decision.actions {
            if let Action::StartTask { task, attempt, .. } = action {
                queue.push_back(Event::TaskStarted {
                    task: task.clone(),
                    attempt,
                });
                queue.push_back(Event::TaskSucceeded { task, attempt });
            }
        }
    }
    let duration_s = started.elapsed().as_secs_f64();
    ensure!(
        state.run.status == RunStatus::Succeeded,
        "the run ended {}, not succeeded",
        state.run.status
    );
    let once = state
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Succeeded && t.attempts == 1)
        .count();
    ensure!(
        once == deps.len(),
        "{once} of {} tasks succeeded at their first attempt",
        deps.len()
    );
    Ok(EngineAlone {
        decisions,
        duration_s,
        tasks_per_s: deps.len() as f64 / duration_s,
        decisions_per_s: decisions as f64 / duration_s,
        us_per_decision: duration_s * 1e6 / decisions as f64,
    })
}

/// The store's durability settings (`crates/store/src/sqlite.rs`, `writer_options`), for the
/// raw commit loop.
fn baseline_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .locking_mode(SqliteLockingMode::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_millis(levee_store::sqlite::BUSY_TIMEOUT_MS))
        .pragma("fullfsync", "ON")
}

/// `commits` single-row `INSERT` transactions, one after another, on a fresh file.
pub async fn raw_commit_loop(path: &Path, commits: u64) -> Result<Baseline> {
    ensure!(commits > 0, "the raw commit loop needs at least one commit");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("could not create {}", parent.display()))?;
    }
    let mut conn = baseline_options(path)
        .connect()
        .await
        .with_context(|| format!("could not open {}", path.display()))?;
    sqlx::query(
        "CREATE TABLE commits (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, note TEXT NOT NULL)",
    )
    .execute(&mut conn)
    .await?;
    let limit = Duration::from_secs(BASELINE_TIME_LIMIT_S);
    let started = Instant::now();
    let mut done = 0;
    while done < commits && started.elapsed() < limit {
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO commits (at_ms, note) VALUES (?, ?)")
            .bind(i64::try_from(done).unwrap_or(i64::MAX))
            .bind(TASK_MESSAGE)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        done += 1;
    }
    let duration_s = started.elapsed().as_secs_f64();
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM commits")
        .fetch_one(&mut conn)
        .await?;
    ensure!(
        u64::try_from(rows).ok() == Some(done),
        "the raw commit loop committed {done} rows but the table holds {rows}"
    );
    conn.close().await?;
    Ok(Baseline {
        when: String::new(),
        commits: done,
        duration_s,
        commits_per_s: done as f64 / duration_s,
        commit_us_mean: duration_s * 1e6 / done as f64,
    })
}

fn api(what: &str, error: ApiError) -> anyhow::Error {
    if error.details.is_null() {
        anyhow!("{what}: {error}")
    } else {
        anyhow!("{what}: {error} {}", error.details)
    }
}

/// Applies the case's runbook to a fresh store and runs it, timing from `start_run` to the end.
pub async fn end_to_end(
    dir: &Path,
    case: &Case,
    deps: &[Vec<usize>],
    limit: Duration,
) -> Result<EndToEnd> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let sqlite = SqliteStore::open(&dir.join("levee.db"))
        .await
        .map_err(|error| anyhow!("could not open the store: {error}"))?;
    let counting = Arc::new(CountingStore::new(Arc::new(sqlite)));
    let store: DynStore = counting.clone();
    let app = App::open(store.clone(), Arc::new(SystemClock), AppOptions::default())
        .await
        .context("App::open")?;
    let result = measure(&app, &counting, case, deps, limit).await;
    store.close().await;
    result
}

async fn measure(
    app: &Arc<App>,
    counting: &CountingStore,
    case: &Case,
    deps: &[Vec<usize>],
    limit: Duration,
) -> Result<EndToEnd> {
    let caller = Caller {
        name: BENCH_ACTOR.to_string(),
        role: Role::Admin,
        scope: Scope::All,
        remote: None,
    };
    let name = format!("{RUNBOOK_NAME_PREFIX}{}", case.name);
    let yaml = runbook_yaml(&name, deps, case.max_parallel);
    let applying = Instant::now();
    // Applied and started on a runtime worker, as the server's handlers run, so both get the
    // stack (and the scheduling) a request would.
    let task_app = app.clone();
    let task_caller = caller.clone();
    let files = vec![(format!("{name}.yaml"), yaml)];
    tokio::spawn(async move { task_app.apply_files(&task_caller, files).await })
        .await
        .context("apply_files panicked")?
        .map_err(|e| api("apply the runbook", e))?;
    let apply_ms = applying.elapsed().as_secs_f64() * 1e3;

    let mut notices = app.runs.subscribe();
    let before = counting.snapshot();
    let cpu_before = procfs::own_cpu_time_us()?;
    let (written_before, writes_before) = procfs::own_write_syscalls()?;
    let started = Instant::now();
    let task_app = app.clone();
    let (view, _) = tokio::spawn(async move {
        task_app
            .start_run(
                &caller,
                &name,
                // As the API deserializes an empty body: `start` defaults to true there, while
                // `StartRequest::default()` leaves it false.
                StartRequest {
                    start: true,
                    ..StartRequest::default()
                },
            )
            .await
    })
    .await
    .context("start_run panicked")?
    .map_err(|e| api("start the run", e))?;
    let start_call_ms = started.elapsed().as_secs_f64() * 1e3;
    // The run's actor retires only after committing the run's end, so "no actor" is "ended".
    while app.runs.active() > 0 {
        if started.elapsed() > limit {
            bail!(
                "the run did not end within {} s (a run that stalls keeps its actor)",
                limit.as_secs_f64()
            );
        }
        tokio::select! {
            _ = notices.recv() => {}
            () = tokio::time::sleep(Duration::from_millis(END_POLL_INTERVAL_MS)) => {}
        }
    }
    let duration_s = started.elapsed().as_secs_f64();
    let cpu_s = procfs::own_cpu_time_us()?.saturating_sub(cpu_before) as f64 / 1e6;
    let (written_after, writes_after) = procfs::own_write_syscalls()?;
    let bytes_written = written_after.saturating_sub(written_before);
    let after = counting.snapshot();

    let stored = app
        .store
        .load_run(&view.id)
        .await
        .map_err(|error| anyhow!("load the run: {error}"))?
        .ok_or_else(|| anyhow!("the run {} is not in the store", view.id))?;
    let verification = verify(app.store.as_ref(), &view.id, &stored.state, deps.len()).await?;
    let tasks = deps.len() as f64;
    let run_commits = after.commits - before.commits;
    let commit_wait_s = (after.commit_wait_ns - before.commit_wait_ns) as f64 / 1e9;
    let ms = |ns: u64| ns as f64 / 1e6;
    let decisions = stored.state.run.version - INITIAL_RUN_VERSION;
    let tasks_per_s = tasks / duration_s;
    let per_commit = |value: f64| {
        if run_commits == 0 {
            0.0
        } else {
            value / run_commits as f64
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Ok(EndToEnd {
        status: stored.state.run.status.name().to_string(),
        apply_ms,
        start_call_ms,
        create_run_ms: ms(after.create_run_ns - before.create_run_ns),
        load_runs: after.load_runs - before.load_runs,
        load_run_ms: ms(after.load_run_ns - before.load_run_ns),
        duration_s,
        tasks_per_s,
        tasks_per_raw_commit: None,
        meets_goal: tasks_per_s >= GOAL_TASKS_PER_S_MIN,
        recorded_run_ms: stored
            .state
            .run
            .finished_at_ms
            .zip(stored.state.run.started_at_ms)
            .map(|(finished, started)| finished - started),
        decisions,
        run_commits,
        run_commits_per_s: run_commits as f64 / duration_s,
        decisions_per_commit: per_commit(decisions as f64),
        tasks_per_commit: per_commit(tasks),
        journal_entries: after.journal_entries - before.journal_entries,
        task_rows_written: after.task_rows - before.task_rows,
        outputs_written: after.outputs - before.outputs,
        commit_wait_s,
        commit_wait_fraction: commit_wait_s / duration_s,
        commit_wait_us_mean: per_commit(commit_wait_s * 1e6),
        cpu_s,
        cpu_us_per_task: cpu_s * 1e6 / tasks,
        cpu_cores_busy: cpu_s / duration_s,
        cores,
        bytes_written,
        write_syscalls: writes_after.saturating_sub(writes_before),
        kib_written_per_task: bytes_written as f64 / BYTES_PER_KIB / tasks,
        kib_written_per_commit: per_commit(bytes_written as f64 / BYTES_PER_KIB),
        verification,
    })
}

/// Reads the run's whole journal and checks that every task was dispatched, started and
/// succeeded exactly once, and that its final record agrees.
async fn verify(
    store: &dyn Store,
    run_id: &str,
    state: &RunState,
    tasks: usize,
) -> Result<Verification> {
    // dispatched, started, succeeded
    let mut seen: HashMap<String, [u32; 3]> = HashMap::with_capacity(tasks);
    let mut after_seq = 0;
    let mut read = 0;
    // Three entries per task and a few for the run; a journal longer than twice that is broken.
    let entries_max = 6 * tasks + 100;
    loop {
        let page = store
            .run_journal(run_id, after_seq, levee_store::MAX_PAGE_ROWS)
            .await
            .map_err(|error| anyhow!("read the journal: {error}"))?;
        let Some(last) = page.last() else {
            break;
        };
        after_seq = last.seq;
        read += page.len();
        ensure!(
            read <= entries_max,
            "the journal holds more than {entries_max} entries"
        );
        for record in &page {
            let slot = match record.entry.kind {
                JournalKind::TaskDispatched { .. } => 0,
                JournalKind::TaskStarted { .. } => 1,
                JournalKind::TaskSucceeded { .. } => 2,
                _ => continue,
            };
            if let Some(task) = &record.entry.task {
                seen.entry(task.clone()).or_default()[slot] += 1;
            }
        }
    }
    let tasks_succeeded = state
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Succeeded)
        .count();
    let tasks_done_exactly_once = state
        .tasks
        .iter()
        .filter(|t| {
            t.status == TaskStatus::Succeeded
                && t.attempts == 1
                && seen.get(&t.id) == Some(&[1, 1, 1])
        })
        .count();
    Ok(Verification {
        tasks_succeeded,
        tasks_done_exactly_once,
        journal_entries_read: read,
        ok: state.tasks.len() == tasks
            && tasks_done_exactly_once == tasks
            && seen.len() == tasks
            && state.run.status == RunStatus::Succeeded,
    })
}

fn elapsed_ns(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Counters of a [`CountingStore`] at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    commits: u64,
    commit_wait_ns: u64,
    create_run_ns: u64,
    load_runs: u64,
    load_run_ns: u64,
    journal_entries: u64,
    task_rows: u64,
    outputs: u64,
}

/// A [`Store`] that forwards every call to another and counts the run commits: how many, how
/// much they carried, and how long their callers waited. Counting costs a few atomic adds per
/// commit.
pub struct CountingStore {
    inner: DynStore,
    commits: AtomicU64,
    commit_wait_ns: AtomicU64,
    create_run_ns: AtomicU64,
    load_runs: AtomicU64,
    load_run_ns: AtomicU64,
    journal_entries: AtomicU64,
    task_rows: AtomicU64,
    outputs: AtomicU64,
}

impl CountingStore {
    pub fn new(inner: DynStore) -> CountingStore {
        CountingStore {
            inner,
            commits: AtomicU64::new(0),
            commit_wait_ns: AtomicU64::new(0),
            create_run_ns: AtomicU64::new(0),
            load_runs: AtomicU64::new(0),
            load_run_ns: AtomicU64::new(0),
            journal_entries: AtomicU64::new(0),
            task_rows: AtomicU64::new(0),
            outputs: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> Counts {
        Counts {
            commits: self.commits.load(Ordering::Relaxed),
            commit_wait_ns: self.commit_wait_ns.load(Ordering::Relaxed),
            create_run_ns: self.create_run_ns.load(Ordering::Relaxed),
            load_runs: self.load_runs.load(Ordering::Relaxed),
            load_run_ns: self.load_run_ns.load(Ordering::Relaxed),
            journal_entries: self.journal_entries.load(Ordering::Relaxed),
            task_rows: self.task_rows.load(Ordering::Relaxed),
            outputs: self.outputs.load(Ordering::Relaxed),
        }
    }
}

#[async_trait::async_trait]
impl Store for CountingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> levee_store::Result<()> {
        self.inner.ping().await
    }

    async fn apply(
        &self,
        definitions: Vec<levee_store::NewDefinition>,
        machines: Vec<levee_engine::Change>,
        audits: Vec<levee_store::AuditEntry>,
    ) -> levee_store::Result<levee_store::Applied> {
        self.inner.apply(definitions, machines, audits).await
    }

    async fn definition(
        &self,
        kind: &str,
        name: &str,
    ) -> levee_store::Result<Option<levee_store::DefinitionRecord>> {
        self.inner.definition(kind, name).await
    }

    async fn definitions(
        &self,
        kind: Option<&str>,
    ) -> levee_store::Result<Vec<levee_store::DefinitionRecord>> {
        self.inner.definitions(kind).await
    }

    async fn machine(&self, id: &str) -> levee_store::Result<Option<levee_engine::MachineRecord>> {
        self.inner.machine(id).await
    }

    async fn machines(
        &self,
        filter: &levee_store::MachineFilter,
    ) -> levee_store::Result<Vec<levee_engine::MachineRecord>> {
        self.inner.machines(filter).await
    }

    async fn run(
        &self,
        ops: Vec<levee_store::MachineOp>,
    ) -> levee_store::Result<Vec<levee_store::OpOutcome>> {
        self.inner.run(ops).await
    }

    async fn history(
        &self,
        machine: &str,
        after_seq: i64,
        limit: u32,
    ) -> levee_store::Result<Vec<levee_engine::HistoryEntry>> {
        self.inner.history(machine, after_seq, limit).await
    }

    async fn due_timers(&self, now_ms: i64, limit: u32) -> levee_store::Result<Vec<String>> {
        self.inner.due_timers(now_ms, limit).await
    }

    async fn audit(&self, entry: levee_store::AuditEntry) -> levee_store::Result<()> {
        self.inner.audit(entry).await
    }

    async fn audit_log(
        &self,
        filter: &levee_store::AuditFilter,
    ) -> levee_store::Result<Vec<levee_store::AuditRecord>> {
        self.inner.audit_log(filter).await
    }

    async fn create_token(
        &self,
        token: levee_store::TokenRecord,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<()> {
        self.inner.create_token(token, audit).await
    }

    async fn token_by_hash(
        &self,
        hash: &str,
    ) -> levee_store::Result<Option<levee_store::TokenRecord>> {
        self.inner.token_by_hash(hash).await
    }

    async fn tokens(&self) -> levee_store::Result<Vec<levee_store::TokenRecord>> {
        self.inner.tokens().await
    }

    async fn revoke_token(
        &self,
        name: &str,
        at_ms: i64,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<bool> {
        self.inner.revoke_token(name, at_ms, audit).await
    }

    async fn create_run(
        &self,
        run: levee_store::NewRun,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<levee_store::CreatedRun> {
        let started = Instant::now();
        let result = self.inner.create_run(run, audit).await;
        self.create_run_ns
            .fetch_add(elapsed_ns(started), Ordering::Relaxed);
        result
    }

    async fn load_run(&self, id: &str) -> levee_store::Result<Option<levee_store::StoredRun>> {
        let started = Instant::now();
        let result = self.inner.load_run(id).await;
        self.load_runs.fetch_add(1, Ordering::Relaxed);
        self.load_run_ns
            .fetch_add(elapsed_ns(started), Ordering::Relaxed);
        result
    }

    async fn runs(
        &self,
        filter: &levee_store::RunFilter,
    ) -> levee_store::Result<Vec<levee_store::RunSummary>> {
        self.inner.runs(filter).await
    }

    async fn commit_run(&self, commit: levee_store::RunCommit) -> levee_store::Result<()> {
        let journal = commit.change.journal.len() as u64;
        let tasks = commit.change.tasks.len() as u64;
        let outputs = commit.outputs.len() as u64;
        let started = Instant::now();
        let result = self.inner.commit_run(commit).await;
        let waited = elapsed_ns(started);
        if result.is_ok() {
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.journal_entries.fetch_add(journal, Ordering::Relaxed);
            self.task_rows.fetch_add(tasks, Ordering::Relaxed);
            self.outputs.fetch_add(outputs, Ordering::Relaxed);
        }
        self.commit_wait_ns.fetch_add(waited, Ordering::Relaxed);
        result
    }

    async fn run_journal(
        &self,
        run_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> levee_store::Result<Vec<levee_store::JournalRecord>> {
        self.inner.run_journal(run_id, after_seq, limit).await
    }

    async fn task_outputs(
        &self,
        run_id: &str,
        task: &str,
    ) -> levee_store::Result<Vec<levee_store::TaskOutput>> {
        self.inner.task_outputs(run_id, task).await
    }

    async fn task_durations(
        &self,
        runbook: &str,
        per_task: u32,
    ) -> levee_store::Result<Vec<levee_store::TaskDuration>> {
        self.inner.task_durations(runbook, per_task).await
    }

    async fn setting(&self, key: &str) -> levee_store::Result<Option<serde_json::Value>> {
        self.inner.setting(key).await
    }

    async fn set_setting(
        &self,
        key: &str,
        value: serde_json::Value,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<()> {
        self.inner.set_setting(key, value, audit).await
    }

    async fn claim_runs(
        &self,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
        limit: u32,
    ) -> levee_store::Result<Vec<levee_store::Lease>> {
        self.inner.claim_runs(owner, now_ms, ttl_ms, limit).await
    }

    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> levee_store::Result<Option<levee_store::Lease>> {
        self.inner.claim_run(run_id, owner, now_ms, ttl_ms).await
    }

    async fn renew_leases(
        &self,
        owner: &str,
        leases: &[levee_store::Lease],
        now_ms: i64,
        ttl_ms: i64,
    ) -> levee_store::Result<Vec<levee_store::Lease>> {
        self.inner.renew_leases(owner, leases, now_ms, ttl_ms).await
    }

    async fn release_leases(
        &self,
        owner: &str,
        leases: &[levee_store::Lease],
    ) -> levee_store::Result<u64> {
        self.inner.release_leases(owner, leases).await
    }

    async fn run_owner(&self, run_id: &str) -> levee_store::Result<Option<levee_store::RunOwner>> {
        self.inner.run_owner(run_id).await
    }

    async fn heartbeat(
        &self,
        id: &str,
        address: &str,
        started_at_ms: i64,
        now_ms: i64,
    ) -> levee_store::Result<()> {
        self.inner
            .heartbeat(id, address, started_at_ms, now_ms)
            .await
    }

    async fn replicas(
        &self,
        seen_since_ms: i64,
    ) -> levee_store::Result<Vec<levee_store::ReplicaRecord>> {
        self.inner.replicas(seen_since_ms).await
    }

    async fn schedule_maintenance(
        &self,
        maintenance: levee_store::MaintenanceRecord,
        admit: levee_store::Admit,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<levee_store::Scheduled> {
        self.inner
            .schedule_maintenance(maintenance, admit, audit)
            .await
    }

    async fn update_maintenance(
        &self,
        maintenance: levee_store::MaintenanceRecord,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<()> {
        self.inner.update_maintenance(maintenance, audit).await
    }

    async fn maintenance(
        &self,
        id: &str,
    ) -> levee_store::Result<Option<levee_store::MaintenanceRecord>> {
        self.inner.maintenance(id).await
    }

    async fn maintenances(
        &self,
        filter: &levee_store::MaintenanceFilter,
    ) -> levee_store::Result<Vec<levee_store::MaintenanceRecord>> {
        self.inner.maintenances(filter).await
    }

    async fn claim_drain_test_slot(
        &self,
        execution: &levee_store::DrainTestExecution,
    ) -> levee_store::Result<bool> {
        self.inner.claim_drain_test_slot(execution).await
    }

    async fn update_drain_test_execution(
        &self,
        execution: &levee_store::DrainTestExecution,
    ) -> levee_store::Result<()> {
        self.inner.update_drain_test_execution(execution).await
    }

    async fn drain_test_execution(
        &self,
        id: &str,
    ) -> levee_store::Result<Option<levee_store::DrainTestExecution>> {
        self.inner.drain_test_execution(id).await
    }

    async fn drain_test_executions(
        &self,
        filter: &levee_store::DrainTestFilter,
    ) -> levee_store::Result<Vec<levee_store::DrainTestExecution>> {
        self.inner.drain_test_executions(filter).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    fn notices(&self) -> tokio::sync::broadcast::Receiver<levee_store::Notice> {
        self.inner.notices()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_the_edges_they_promise() {
        let tasks = 500;
        assert!(dag(Shape::Wide, tasks).iter().all(Vec::is_empty));
        let deep = dag(Shape::Deep, tasks);
        assert!(deep[0].is_empty());
        assert!(deep.iter().enumerate().skip(1).all(|(i, d)| d == &[i - 1]));
        let random = dag(Shape::RandomDag, tasks);
        assert_eq!(random, dag(Shape::RandomDag, tasks), "the seed is fixed");
        for (i, needs) in random.iter().enumerate() {
            assert!(needs.len() as u64 <= RANDOM_DAG_MAX_NEEDS);
            assert!(needs.iter().all(|&d| d < i), "task {i} needs a later task");
            let mut distinct = needs.clone();
            distinct.dedup();
            assert_eq!(&distinct, needs);
        }
        let counts: Vec<usize> = (0..=RANDOM_DAG_MAX_NEEDS as usize)
            .map(|k| random.iter().filter(|n| n.len() == k).count())
            .collect();
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn the_yaml_stays_under_the_definition_size_limit() {
        const MAX_DEFINITION_BYTES: usize = 1024 * 1024;
        let yaml = runbook_yaml(
            "bench-random-dag",
            &dag(Shape::RandomDag, TASKS_DEFAULT),
            Some(WIDE_MAX_PARALLEL_HIGH),
        );
        assert!(yaml.len() < MAX_DEFINITION_BYTES, "{} bytes", yaml.len());
        assert!(yaml.contains("  - { id: t2, stage: log, with: { message: ok }"));
    }

    #[test]
    fn the_engine_alone_runs_every_shape_to_the_end() {
        for case in default_cases() {
            let figures = engine_alone(&dag(case.shape, 300), case.effective_max_parallel())
                .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
            assert_eq!(figures.decisions, 2 * 300 + 1, "{}", case.name);
        }
    }
}
