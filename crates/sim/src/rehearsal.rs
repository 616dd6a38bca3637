//! Rehearsals: the generated evacuation and restore of a simulated fleet, run by Levee's own
//! server and engine on a paused Tokio clock, so a two-hour evacuation takes seconds and the
//! same seed gives the same times.
//!
//! How virtual time works here:
//! - the runtime is a current-thread Tokio runtime started paused; whenever every task waits
//!   on a timer, Tokio moves its clock straight to the next timer (auto-advance);
//! - the server's [`Clock`] is [`VirtualClock`]: a start time plus Tokio's (virtual) time
//!   elapsed, so journal and task times are virtual too;
//! - the simulator follows Tokio's clock ([`SimHandle::on_tokio_clock`]);
//! - SQLite's commits are real I/O on sqlx's own threads, which Tokio cannot see: while one
//!   is pending, every task may be waiting, and auto-advance would run the timers ahead of
//!   the commit. [`VirtualTimeStore`] wraps the store and holds the clock for the whole of
//!   every call (a blocking-pool task that lives as long as the call; Tokio does not
//!   auto-advance while one runs). A commit therefore takes no virtual time, and the times a
//!   run records depend only on the runbook, the simulated fleet and the seed.
//!
//! The runs go through the server's HTTP router in process (`tower::ServiceExt::oneshot`):
//! the same handlers, checks and JSON as `levee run`, without sockets.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use levee_server::runs::views::RunView;
use levee_server::{App, AppOptions, Clock};
use levee_store::{DynStore, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{Sim, SimHandle, SimSpec, TrafficKind, deps};

/// The templates the generated runbooks are instances of (one per kind of traffic and
/// direction: `shift-out`, `sticky-out`, `replica-in`, ...); the file a reader opens is the
/// file that runs.
pub const DEMO_YAML: &str = include_str!("../../../examples/demo/evacuate.yaml");
/// The name [`DEMO_YAML`] is stored under.
pub const DEMO_FILE: &str = "examples/demo/evacuate.yaml";
/// The generated evacuation runbook.
pub const EVACUATE_RUNBOOK: &str = "evacuate-fleet";
/// The generated restore runbook.
pub const RESTORE_RUNBOOK: &str = "restore-fleet";
/// The error ratio each service's shift must stay under.
pub const ERROR_RATIO_LIMIT: f64 = 0.05;
/// How often a rehearsal reads its run to report progress, in virtual milliseconds.
pub const PROGRESS_POLL_VIRTUAL_MS: u64 = 10_000;
/// A run still going after this much virtual time is given up on, in milliseconds.
pub const MAX_RUN_VIRTUAL_MS: u64 = 24 * 60 * 60 * 1_000;
/// The run lease in a rehearsal, in virtual milliseconds: one replica alone renews it, so a
/// long lease only saves commits.
pub const REHEARSAL_LEASE_TTL_MS: u64 = 10 * 60 * 1_000;

/// How fast each service's traffic is moved.
#[derive(Clone, Debug, PartialEq)]
pub struct Pace {
    /// Watched time after each weight step (a duration: `500ms`, `1m`).
    pub wait: String,
    /// How long sticky sessions may take to end after a drain.
    pub drain_timeout: String,
    /// How long sticky sessions take to fall by about two thirds, in milliseconds.
    pub session_decay_ms: f64,
}

impl Pace {
    /// A production pace: a minute between steps, sessions that take minutes to end.
    pub fn production() -> Pace {
        Pace {
            wait: "1m".to_string(),
            drain_timeout: "30m".to_string(),
            session_decay_ms: 2.0 * 60_000.0,
        }
    }

    /// The live demo's pace: seconds, so it can be watched in real time.
    pub fn live() -> Pace {
        Pace {
            wait: "500ms".to_string(),
            drain_timeout: "2m".to_string(),
            session_decay_ms: crate::SESSION_DECAY_MS,
        }
    }
}

/// The generated fleet, its plan and its runbooks.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub spec: SimSpec,
    pub edges: Vec<deps::Edge>,
    pub plan: deps::DrainPlan,
    /// Both generated runbooks, one YAML stream.
    pub runbooks_yaml: String,
    /// The evacuation and the restore runbook to run, by name.
    pub runbooks: [String; 2],
    /// Runbook parameters: `dc`, `wait`, `drain_timeout`.
    pub params: BTreeMap<String, String>,
    /// Parameters only the evacuation gets, as a drain test passes `storm=true` only to its
    /// drain runbook.
    pub evacuate_params: BTreeMap<String, String>,
}

impl Scenario {
    /// A generated fleet of `services` services in `datacenters` (deterministic from
    /// `seed`) and the runbooks that evacuate and restore datacenter `dc` at `pace`.
    pub fn generated(
        services: usize,
        datacenters: &[&str],
        dc: &str,
        seed: u64,
        pace: &Pace,
    ) -> anyhow::Result<Scenario> {
        if !datacenters.contains(&dc) {
            anyhow::bail!(
                "the simulated fleet's datacenters are {}; `{dc}` is not one",
                datacenters.join(", ")
            );
        }
        let (mut spec, edges) = SimSpec::generated(services, datacenters, seed);
        spec.session_decay_ms = pace.session_decay_ms;
        let plan = deps::plan_drain(&edges, &[]).map_err(anyhow::Error::msg)?;
        let runbooks_yaml = generated_runbooks(&spec, &plan, None);
        let params = BTreeMap::from([
            ("dc".to_string(), dc.to_string()),
            ("wait".to_string(), pace.wait.clone()),
            ("drain_timeout".to_string(), pace.drain_timeout.clone()),
        ]);
        Ok(Scenario {
            spec,
            edges,
            plan,
            runbooks_yaml,
            runbooks: [EVACUATE_RUNBOOK.to_string(), RESTORE_RUNBOOK.to_string()],
            params,
            evacuate_params: BTreeMap::new(),
        })
    }

    /// The small hand-written fleet of `examples/demo/evacuate.yaml` (`east` and `west`; web,
    /// sessions, api, db, one of each kind) and its hand-written runbooks `evacuate-dc` and
    /// `restore-dc` for datacenter `dc`.
    pub fn hand_written(dc: &str, pace: &Pace) -> anyhow::Result<Scenario> {
        let mut spec = SimSpec::demo();
        if !spec.datacenters.iter().any(|d| d == dc) {
            anyhow::bail!(
                "the small fleet's datacenters are {}; `{dc}` is not one",
                spec.datacenters.join(", ")
            );
        }
        spec.session_decay_ms = pace.session_decay_ms;
        let edges: Vec<deps::Edge> = spec
            .services
            .iter()
            .flat_map(|s| {
                s.depends_on.iter().map(|d| deps::Edge {
                    parent: s.name.clone(),
                    child: d.clone(),
                    call_count: 1,
                })
            })
            .collect();
        let plan = deps::plan_drain(&edges, &[]).map_err(anyhow::Error::msg)?;
        Ok(Scenario {
            spec,
            edges,
            plan,
            runbooks_yaml: String::new(),
            runbooks: ["evacuate-dc".to_string(), "restore-dc".to_string()],
            params: BTreeMap::from([("dc".to_string(), dc.to_string())]),
            evacuate_params: BTreeMap::new(),
        })
    }

    /// Makes the evacuation a storm test's: its runbooks get the storm-only tasks and the
    /// evacuation `storm=true`, holding the datacenter cut off for `hold` (such as `30m`).
    /// Only for generated fleets; the hand-written `evacuate-dc` has its own.
    pub fn storm(&mut self, hold: &str) {
        if !self.runbooks_yaml.is_empty() {
            self.runbooks_yaml = generated_runbooks(&self.spec, &self.plan, Some(hold));
        }
        self.evacuate_params
            .insert("storm".to_string(), "true".to_string());
        self.evacuate_params
            .insert("storm_hold".to_string(), hold.to_string());
    }

    /// The definitions to apply: the templates and the generated runbooks.
    pub fn files(&self) -> Value {
        if self.runbooks_yaml.is_empty() {
            return json!({ "files": [{ "name": DEMO_FILE, "content": DEMO_YAML }] });
        }
        json!({ "files": [
            { "name": DEMO_FILE, "content": DEMO_YAML },
            { "name": "generated/fleet.yaml", "content": self.runbooks_yaml },
        ] })
    }

    /// Services per traffic kind: stateless, sticky, replicated, stateful.
    pub fn kinds(&self) -> [usize; 4] {
        self.spec.services.iter().fold([0_usize; 4], |mut n, s| {
            n[s.kind as usize] += 1;
            n
        })
    }

    /// The web tier: user-facing (entry point) services that are stateless.
    pub fn web(&self) -> Vec<String> {
        self.plan
            .entry_points
            .iter()
            .filter(|name| {
                self.spec
                    .services
                    .iter()
                    .any(|s| &s.name == *name && s.kind == TrafficKind::Stateless)
            })
            .cloned()
            .collect()
    }

    /// When each phase of a run ended, from the run's start (web tier, all user-facing
    /// services, all services), in milliseconds.
    pub fn phase_times(&self, runbook: &str, view: &RunView) -> Vec<(String, i64)> {
        let Some(started) = view.started_at_ms else {
            return Vec::new();
        };
        let finished = |services: &[String]| -> Option<i64> {
            if services.is_empty() {
                return None;
            }
            services
                .iter()
                .map(|service| {
                    let id = deps::task_id(service);
                    let prefix = format!("{id}/");
                    view.tasks
                        .iter()
                        .filter(|t| t.id == id || t.id.starts_with(&prefix))
                        .filter_map(|t| t.finished_at_ms)
                        .max()
                })
                .collect::<Option<Vec<i64>>>()?
                .into_iter()
                .max()
        };
        let mut phases = Vec::new();
        if let Some(at) = finished(&self.web()) {
            phases.push((
                format!("{runbook}: web (stateless user-facing)"),
                at - started,
            ));
        }
        if let Some(at) = finished(&self.plan.entry_points) {
            phases.push((format!("{runbook}: user-facing services"), at - started));
        }
        // Every service's own task, not the storm-only ones after them.
        let services_done = view
            .tasks
            .iter()
            .filter(|t| !t.id.starts_with("storm-"))
            .map(|t| t.finished_at_ms)
            .collect::<Option<Vec<i64>>>()
            .and_then(|done| done.into_iter().max());
        if let Some(at) = services_done {
            phases.push((format!("{runbook}: all services"), at - started));
        }
        let hold = view
            .tasks
            .iter()
            .find(|t| t.id == deps::STORM_HOLD_TASK && t.status == "succeeded");
        if let Some(at) = hold.and_then(|t| t.finished_at_ms) {
            phases.push((format!("{runbook}: storm, held cut off"), at - started));
        }
        phases
    }
}

/// The generated evacuation and restore runbooks of a fleet (one YAML stream): one task per
/// service, callers drained first and restored last, each an instance of the template for
/// its kind of traffic, gated on its error ratio, passing the pace on. With `storm_hold`
/// the evacuation also has storm-only tasks ([`deps::StormOptions`]): every stateful
/// service's replication into the datacenter stops, then the datacenter is held cut off for
/// `storm_hold` (the default of its parameter) while no service's errors rise.
pub fn generated_runbooks(
    spec: &SimSpec,
    plan: &deps::DrainPlan,
    storm_hold: Option<&str>,
) -> String {
    let live = Pace::live();
    let storm = storm_hold.map(|hold| deps::StormOptions {
        tasks: spec
            .services
            .iter()
            .filter(|s| s.kind == TrafficKind::Stateful)
            .map(|s| {
                (
                    s.name.clone(),
                    TrafficKind::Replicated
                        .template(deps::Direction::Evacuate)
                        .to_string(),
                )
            })
            .collect(),
        hold,
        health: ("max(levee_sim_error_ratio)", ERROR_RATIO_LIMIT),
    });
    let runbook = |name: &str, direction: deps::Direction| {
        let options = deps::RunbookOptions {
            health: Some(("levee_sim_error_ratio", ERROR_RATIO_LIMIT)),
            pass_params: vec![
                ("wait", live.wait.as_str()),
                ("drain_timeout", live.drain_timeout.as_str()),
            ],
            templates: spec.templates(direction),
            storm: storm.clone(),
        };
        let default = TrafficKind::Stateless.template(direction);
        deps::runbook_yaml_with(plan, name, default, direction, &options)
    };
    format!(
        "{}---\n{}",
        runbook(EVACUATE_RUNBOOK, deps::Direction::Evacuate),
        runbook(RESTORE_RUNBOOK, deps::Direction::Restore)
    )
}

/// The longest chain of the run's dependency graph with each task's recorded duration: no
/// schedule of these tasks with these durations can end sooner (the critical-path lower
/// bound), in milliseconds.
pub fn critical_path_bound_ms(view: &RunView) -> u64 {
    let index: HashMap<&str, usize> = view
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let duration = |i: usize| -> u64 {
        let task = &view.tasks[i];
        match (task.started_at_ms, task.finished_at_ms) {
            (Some(s), Some(f)) => u64::try_from(f - s).unwrap_or(0),
            _ => 0,
        }
    };
    // Tasks are listed in plan order, dependencies first.
    let mut longest = vec![0_u64; view.tasks.len()];
    for (i, task) in view.tasks.iter().enumerate() {
        let before = task
            .needs
            .iter()
            .chain(&task.after)
            .filter_map(|d| index.get(d.as_str()).map(|&j| longest[j]))
            .max()
            .unwrap_or(0);
        longest[i] = before + duration(i);
    }
    longest.into_iter().max().unwrap_or(0)
}

/// Where a rehearsal stands, reported as it goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub runbook: String,
    /// Virtual time since the run started, in milliseconds.
    pub virtual_ms: u64,
    pub done: u32,
    pub running: u32,
    pub stalled: u32,
    pub total: u32,
}

/// One finished run of a rehearsal.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub runbook: String,
    pub view: RunView,
    /// `GET /api/v1/runs/{id}/report`.
    pub report: Value,
    /// The virtual time at which the rehearsal read the run's end, in epoch milliseconds.
    pub read_at_ms: i64,
}

impl RunResult {
    pub fn succeeded(&self) -> bool {
        self.view.status == "succeeded"
    }

    pub fn makespan_ms(&self) -> u64 {
        self.report["makespan_ms"].as_u64().unwrap_or(0)
    }
}

/// What a rehearsal did.
#[derive(Clone, Debug)]
pub struct Rehearsal {
    pub runs: Vec<RunResult>,
    /// Wall-clock time the whole rehearsal took, in milliseconds.
    pub wall_ms: u64,
}

/// Runs `scenario`'s evacuation and then (if it succeeded) its restore, on a new
/// current-thread Tokio runtime with a paused clock, storing everything in the SQLite file
/// `database`. Blocks the calling thread; call it from a plain thread or `spawn_blocking`.
/// The virtual clock starts at `start_ms` (epoch milliseconds).
pub fn rehearse_blocking(
    scenario: &Scenario,
    database: PathBuf,
    start_ms: i64,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> anyhow::Result<Rehearsal> {
    let wall = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .context("cannot start a runtime for the rehearsal")?;
    let runs = runtime.block_on(rehearse(scenario, database, start_ms, progress))?;
    Ok(Rehearsal {
        runs,
        wall_ms: wall.elapsed().as_millis() as u64,
    })
}

/// [`rehearse_blocking`]'s body; it must run on a current-thread runtime whose clock is
/// paused (else it runs in real time, correctly but slowly).
pub async fn rehearse(
    scenario: &Scenario,
    database: PathBuf,
    start_ms: i64,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> anyhow::Result<Vec<RunResult>> {
    let opened = {
        let _hold = ClockHold::new();
        levee_store::SqliteStore::open(&database).await
    };
    let store: DynStore = Arc::new(VirtualTimeStore {
        inner: Arc::new(opened.with_context(|| format!("cannot open {}", database.display()))?),
    });
    let sim =
        SimHandle::on_tokio_clock(Sim::new(scenario.spec.clone()).map_err(anyhow::Error::msg)?);
    let options = AppOptions {
        metric_source: Some(Arc::new(sim.clone())),
        traffic_backends: vec![Arc::new(sim.clone())],
        lease_ttl_ms: Some(REHEARSAL_LEASE_TTL_MS),
        ..AppOptions::default()
    };
    let clock = Arc::new(VirtualClock::starting_at(start_ms));
    let app = App::open(store.clone(), clock, options).await?;
    app.set_ready(true);
    let router = levee_server::app(app.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let replica = tokio::spawn(levee_server::replica::run(app.clone(), async {
        let _ = stopped.await;
    }));
    let client = Client { router };
    let result = async {
        client
            .call("POST", "/api/v1/definitions", Some(scenario.files()))
            .await
            .context("storing the generated runbooks")?;
        let mut results = Vec::new();
        for (i, runbook) in scenario.runbooks.iter().enumerate() {
            let mut params = scenario.params.clone();
            if i == 0 {
                params.extend(scenario.evacuate_params.clone());
            }
            let result = run_one(&client, &app, runbook, &params, progress).await?;
            let ok = result.succeeded();
            results.push(result);
            if !ok {
                break;
            }
        }
        anyhow::Ok(results)
    }
    .await;
    let _ = stop.send(());
    let _ = replica.await;
    app.drain_runs(tokio::time::Instant::now()).await;
    {
        let _hold = ClockHold::new();
        store.close().await;
    }
    result
}

async fn run_one(
    client: &Client,
    app: &App,
    runbook: &str,
    params: &BTreeMap<String, String>,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> anyhow::Result<RunResult> {
    let started = client
        .call(
            "POST",
            &format!("/api/v1/runbooks/{runbook}/runs"),
            Some(json!({ "params": params })),
        )
        .await
        .with_context(|| format!("starting {runbook}"))?;
    let id = started["id"]
        .as_str()
        .context("the started run has no id")?
        .to_string();
    let began = tokio::time::Instant::now();
    let mut last: Option<Progress> = None;
    loop {
        let value = client
            .call("GET", &format!("/api/v1/runs/{id}"), None)
            .await?;
        let view: RunView = serde_json::from_value(value).context("reading the run")?;
        let counts = &view.counts;
        let now = Progress {
            runbook: runbook.to_string(),
            virtual_ms: began.elapsed().as_millis() as u64,
            done: counts.succeeded + counts.skipped,
            running: counts.running + counts.retrying,
            stalled: counts.stalled + counts.failed,
            total: counts.total,
        };
        let ended = matches!(view.status.as_str(), "succeeded" | "failed" | "aborted");
        // A stalled run with nothing left running waits for an operator: in a rehearsal
        // nobody comes, so that is its end.
        let stuck = now.stalled > 0 && now.running == 0 && counts.ready == 0;
        let changed = last
            .as_ref()
            .is_none_or(|l| (l.done, l.running, l.stalled) != (now.done, now.running, now.stalled));
        if changed || ended || stuck {
            progress(&now);
        }
        if ended || stuck || now.virtual_ms >= MAX_RUN_VIRTUAL_MS {
            let report = client
                .call("GET", &format!("/api/v1/runs/{id}/report"), None)
                .await?;
            return Ok(RunResult {
                runbook: runbook.to_string(),
                view,
                report,
                read_at_ms: app.now_ms(),
            });
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(PROGRESS_POLL_VIRTUAL_MS)).await;
    }
}

/// The server's router, called in process.
struct Client {
    router: axum::Router,
}

impl Client {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(match &body {
                Some(body) => Body::from(serde_json::to_vec(body)?),
                None => Body::empty(),
            })?;
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 0))));
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|never| anyhow::anyhow!("{never:?}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!(
                "{method} {path}: {status}: {}",
                value["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned())
            );
        }
        Ok(value)
    }
}

/// The server's clock in a rehearsal: a start time plus Tokio's time since; on a paused
/// runtime, virtual time.
#[derive(Debug)]
pub struct VirtualClock {
    start_ms: i64,
    origin: tokio::time::Instant,
}

impl VirtualClock {
    /// Must be called inside the runtime whose clock it reads.
    pub fn starting_at(start_ms: i64) -> VirtualClock {
        VirtualClock {
            start_ms,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + self.origin.elapsed().as_millis() as i64
    }
}

/// Keeps a paused Tokio clock from auto-advancing while it lives: it holds a task on the
/// blocking pool, which Tokio counts as work in progress. Dropping it ends the task.
pub struct ClockHold {
    _release: std::sync::mpsc::Sender<()>,
}

impl ClockHold {
    /// Must be called inside a Tokio runtime.
    pub fn new() -> ClockHold {
        let (release, released) = std::sync::mpsc::channel::<()>();
        drop(tokio::task::spawn_blocking(move || {
            // Returns when the sender is dropped.
            let _ = released.recv();
        }));
        ClockHold { _release: release }
    }
}

impl Default for ClockHold {
    fn default() -> Self {
        ClockHold::new()
    }
}

/// A store whose every call holds the virtual clock ([`ClockHold`]) until it returns, so
/// commits and reads take no virtual time.
pub struct VirtualTimeStore {
    pub inner: DynStore,
}

macro_rules! held {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {{
        let _hold = ClockHold::new();
        $self.inner.$method($($arg),*).await
    }};
}

#[async_trait]
impl Store for VirtualTimeStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> levee_store::Result<()> {
        held!(self.ping())
    }

    async fn apply(
        &self,
        definitions: Vec<levee_store::NewDefinition>,
        machines: Vec<levee_engine::Change>,
        audits: Vec<levee_store::AuditEntry>,
    ) -> levee_store::Result<levee_store::Applied> {
        held!(self.apply(definitions, machines, audits))
    }

    async fn definition(
        &self,
        kind: &str,
        name: &str,
    ) -> levee_store::Result<Option<levee_store::DefinitionRecord>> {
        held!(self.definition(kind, name))
    }

    async fn definitions(
        &self,
        kind: Option<&str>,
    ) -> levee_store::Result<Vec<levee_store::DefinitionRecord>> {
        held!(self.definitions(kind))
    }

    async fn machine(&self, id: &str) -> levee_store::Result<Option<levee_engine::MachineRecord>> {
        held!(self.machine(id))
    }

    async fn machines(
        &self,
        filter: &levee_store::MachineFilter,
    ) -> levee_store::Result<Vec<levee_engine::MachineRecord>> {
        held!(self.machines(filter))
    }

    async fn run(
        &self,
        ops: Vec<levee_store::MachineOp>,
    ) -> levee_store::Result<Vec<levee_store::OpOutcome>> {
        held!(self.run(ops))
    }

    async fn history(
        &self,
        machine: &str,
        after_seq: i64,
        limit: u32,
    ) -> levee_store::Result<Vec<levee_engine::HistoryEntry>> {
        held!(self.history(machine, after_seq, limit))
    }

    async fn due_timers(&self, now_ms: i64, limit: u32) -> levee_store::Result<Vec<String>> {
        held!(self.due_timers(now_ms, limit))
    }

    async fn audit(&self, entry: levee_store::AuditEntry) -> levee_store::Result<()> {
        held!(self.audit(entry))
    }

    async fn audit_log(
        &self,
        filter: &levee_store::AuditFilter,
    ) -> levee_store::Result<Vec<levee_store::AuditRecord>> {
        held!(self.audit_log(filter))
    }

    async fn create_token(
        &self,
        token: levee_store::TokenRecord,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<()> {
        held!(self.create_token(token, audit))
    }

    async fn token_by_hash(
        &self,
        hash: &str,
    ) -> levee_store::Result<Option<levee_store::TokenRecord>> {
        held!(self.token_by_hash(hash))
    }

    async fn tokens(&self) -> levee_store::Result<Vec<levee_store::TokenRecord>> {
        held!(self.tokens())
    }

    async fn revoke_token(
        &self,
        name: &str,
        at_ms: i64,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<bool> {
        held!(self.revoke_token(name, at_ms, audit))
    }

    async fn create_run(
        &self,
        run: levee_store::NewRun,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<levee_store::CreatedRun> {
        held!(self.create_run(run, audit))
    }

    async fn load_run(&self, id: &str) -> levee_store::Result<Option<levee_store::StoredRun>> {
        held!(self.load_run(id))
    }

    async fn runs(
        &self,
        filter: &levee_store::RunFilter,
    ) -> levee_store::Result<Vec<levee_store::RunSummary>> {
        held!(self.runs(filter))
    }

    async fn commit_run(&self, commit: levee_store::RunCommit) -> levee_store::Result<()> {
        held!(self.commit_run(commit))
    }

    async fn claim_runs(
        &self,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
        limit: u32,
    ) -> levee_store::Result<Vec<levee_store::Lease>> {
        held!(self.claim_runs(owner, now_ms, ttl_ms, limit))
    }

    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> levee_store::Result<Option<levee_store::Lease>> {
        held!(self.claim_run(run_id, owner, now_ms, ttl_ms))
    }

    async fn renew_leases(
        &self,
        owner: &str,
        leases: &[levee_store::Lease],
        now_ms: i64,
        ttl_ms: i64,
    ) -> levee_store::Result<Vec<levee_store::Lease>> {
        held!(self.renew_leases(owner, leases, now_ms, ttl_ms))
    }

    async fn release_leases(
        &self,
        owner: &str,
        leases: &[levee_store::Lease],
    ) -> levee_store::Result<u64> {
        held!(self.release_leases(owner, leases))
    }

    async fn run_owner(&self, run_id: &str) -> levee_store::Result<Option<levee_store::RunOwner>> {
        held!(self.run_owner(run_id))
    }

    async fn heartbeat(
        &self,
        id: &str,
        address: &str,
        started_at_ms: i64,
        now_ms: i64,
    ) -> levee_store::Result<()> {
        held!(self.heartbeat(id, address, started_at_ms, now_ms))
    }

    async fn replicas(
        &self,
        seen_since_ms: i64,
    ) -> levee_store::Result<Vec<levee_store::ReplicaRecord>> {
        held!(self.replicas(seen_since_ms))
    }

    async fn run_journal(
        &self,
        run_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> levee_store::Result<Vec<levee_store::JournalRecord>> {
        held!(self.run_journal(run_id, after_seq, limit))
    }

    async fn task_outputs(
        &self,
        run_id: &str,
        task: &str,
    ) -> levee_store::Result<Vec<levee_store::TaskOutput>> {
        held!(self.task_outputs(run_id, task))
    }

    async fn task_durations(
        &self,
        runbook: &str,
        per_task: u32,
    ) -> levee_store::Result<Vec<levee_store::TaskDuration>> {
        held!(self.task_durations(runbook, per_task))
    }

    async fn setting(&self, key: &str) -> levee_store::Result<Option<Value>> {
        held!(self.setting(key))
    }

    async fn set_setting(
        &self,
        key: &str,
        value: Value,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<()> {
        held!(self.set_setting(key, value, audit))
    }

    async fn schedule_maintenance(
        &self,
        maintenance: levee_store::MaintenanceRecord,
        admit: levee_store::Admit,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<levee_store::Scheduled> {
        held!(self.schedule_maintenance(maintenance, admit, audit))
    }

    async fn update_maintenance(
        &self,
        maintenance: levee_store::MaintenanceRecord,
        audit: Option<levee_store::AuditEntry>,
    ) -> levee_store::Result<()> {
        held!(self.update_maintenance(maintenance, audit))
    }

    async fn maintenance(
        &self,
        id: &str,
    ) -> levee_store::Result<Option<levee_store::MaintenanceRecord>> {
        held!(self.maintenance(id))
    }

    async fn maintenances(
        &self,
        filter: &levee_store::MaintenanceFilter,
    ) -> levee_store::Result<Vec<levee_store::MaintenanceRecord>> {
        held!(self.maintenances(filter))
    }

    async fn claim_drain_test_slot(
        &self,
        execution: &levee_store::DrainTestExecution,
    ) -> levee_store::Result<bool> {
        held!(self.claim_drain_test_slot(execution))
    }

    async fn update_drain_test_execution(
        &self,
        execution: &levee_store::DrainTestExecution,
    ) -> levee_store::Result<()> {
        held!(self.update_drain_test_execution(execution))
    }

    async fn drain_test_execution(
        &self,
        id: &str,
    ) -> levee_store::Result<Option<levee_store::DrainTestExecution>> {
        held!(self.drain_test_execution(id))
    }

    async fn drain_test_executions(
        &self,
        filter: &levee_store::DrainTestFilter,
    ) -> levee_store::Result<Vec<levee_store::DrainTestExecution>> {
        held!(self.drain_test_executions(filter))
    }

    async fn close(&self) {
        held!(self.close())
    }

    fn notices(&self) -> tokio::sync::broadcast::Receiver<levee_store::Notice> {
        self.inner.notices()
    }
}
