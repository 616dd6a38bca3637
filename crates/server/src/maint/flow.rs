//! The maintenance flow, decided without I/O: given a stored maintenance, the fleet, the other
//! maintenances' reservations, the outcome of the runs it started and the time, what its next
//! state is, why, what would unblock it, and what to do once that is committed.
//!
//! ```text
//! scheduled ──► preflight ──► disabling ──► in_maintenance ──► enabling ──► done
//!     │  ▲          │   ▲         │                                │
//!     ▼  │          ▼   │         ▼                                ▼
//!   blocked      needs_human ◄────┘ (automation failed)        needs_human
//! (approval)        │
//!                   └──► cancelled / failed (the declared fallback at the deadline)
//! ```
//!
//! Disabling is Dapper's four steps: the preflight (again, right before anything changes),
//! pre-disable (in-scope spares become unavailable, so no replacement picks them),
//! host-level disable in steps, post-disable (failures within the policy's `max_failed_hosts`
//! are accepted; beyond it the service needs a person). Enabling mirrors it. A service a
//! person confirmed was handled by hand stays with them: Levee neither disables nor re-enables
//! it.
//!
//! Host-level disable goes step by step ([`next_step`]): a step takes at most each service's
//! `disable_concurrency` hosts, all of one failure domain when the maintenance asked for one
//! domain per step, and only as many as the server's removal rate limits leave
//! ([`RemovalLimits`]: hosts taken out per pool and overall within a sliding window, counted
//! over every maintenance). The next step starts once the step's runs have finished and the
//! maintenance's `step_interval` has passed; a step the limits hold back waits, saying until
//! when.

use std::collections::{BTreeMap, BTreeSet};

use levee_fleet::{
    FleetIndex, PolicySet, PreflightReport, Reservation, ServiceAction, Window, admit, plan_actions,
};
use levee_model::{DomainLevel, MaintenanceType, PolicyAction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Entries of a maintenance's own history kept in its record; older ones are dropped.
pub const MAX_HISTORY_ENTRIES: usize = 200;

/// The sliding window the removal rate limits count over, unless the server says otherwise.
pub const DEFAULT_REMOVAL_WINDOW_MS: u64 = 10 * 60 * 1_000;
/// Hosts automation may take out of one pool within the window, over every maintenance.
pub const DEFAULT_MAX_REMOVALS_PER_POOL: u64 = 50;
/// Hosts automation may take out within the window, over every maintenance and fleet.
pub const DEFAULT_MAX_REMOVALS_OVERALL: u64 = 500;
/// Longest `step_interval` a maintenance may ask for.
pub const MAX_STEP_INTERVAL_MS: u64 = 24 * 3_600 * 1_000;

/// The server's removal rate limits: rails every maintenance shares, whatever its scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalLimits {
    /// The sliding window removals are counted over.
    pub window_ms: u64,
    /// Most hosts taken out of one pool within the window (`None`: no limit).
    pub max_per_pool: Option<u64>,
    /// Most hosts taken out within the window, every fleet together (`None`: no limit).
    pub max_overall: Option<u64>,
}

impl Default for RemovalLimits {
    fn default() -> Self {
        RemovalLimits {
            window_ms: DEFAULT_REMOVAL_WINDOW_MS,
            max_per_pool: Some(DEFAULT_MAX_REMOVALS_PER_POOL),
            max_overall: Some(DEFAULT_MAX_REMOVALS_OVERALL),
        }
    }
}

impl RemovalLimits {
    fn describe_window(&self) -> String {
        crate::ui::layout::duration_text(self.window_ms)
    }
}

/// How a maintenance paces its own disable flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Take the scope one failure domain at a time (`rack`: one rack per step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_domain_per_step: Option<DomainLevel>,
    /// Least time from the start of one step to the start of the next.
    #[serde(default)]
    pub step_interval_ms: u64,
}

/// One step of the disable flow: when, which domain, which hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub number: u32,
    pub at_ms: i64,
    /// The failure domain of every host of the step, when the maintenance goes one domain
    /// per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub hosts: Vec<String>,
}

/// A host another maintenance's automation took out, for the removal rate limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub host: String,
    pub at_ms: i64,
    /// Of the fleet this maintenance is in (so it counts against its pools too).
    pub same_fleet: bool,
}

/// The flow's states.
pub const SCHEDULED: &str = "scheduled";
pub const BLOCKED: &str = "blocked";
pub const PREFLIGHT: &str = "preflight";
pub const NEEDS_HUMAN: &str = "needs_human";
pub const DISABLING: &str = "disabling";
pub const IN_MAINTENANCE: &str = "in_maintenance";
pub const ENABLING: &str = "enabling";
pub const DONE: &str = "done";
pub const FAILED: &str = "failed";
pub const CANCELLED: &str = "cancelled";

/// States after which nothing more happens.
pub fn is_final(state: &str) -> bool {
    matches!(state, DONE | FAILED | CANCELLED)
}

/// What happens to a maintenance whose preflight fails when it is scheduled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPreflightFailure {
    /// Refuse it (409): nothing is stored.
    #[default]
    Refuse,
    /// Store it waiting for people: the failing services must be confirmed by hand.
    NeedsHuman,
}

/// The declared fallback when a wait for people (an approval, a confirmation) reaches its
/// deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Give the hosts back (re-enable what automation disabled) and end as `cancelled`.
    #[default]
    Cancel,
    /// End as `failed`, leaving every host as it is for people to sort out.
    Fail,
}

/// Who did something, when, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub by: String,
    pub at_ms: i64,
    pub reason: String,
}

/// Where one affected service is in the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// Nothing done yet.
    Pending,
    /// Its action (a runbook run) is under way.
    Running,
    /// Automation took its hosts out (or, for `nothing`, left them as they are).
    Disabled,
    /// A person must confirm its hosts were handled by hand.
    NeedsHuman,
    /// A person confirmed its hosts were handled by hand.
    ByHand,
    /// The enable flow's action is under way.
    Enabling,
    /// Its hosts are back.
    Enabled,
}

/// One affected service: its action, hosts, and progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceFlow {
    pub service: String,
    pub owner: Option<String>,
    pub action: PolicyAction,
    /// `drain_and_wait`, `runbook NAME`, ...
    pub action_name: String,
    /// Why it takes that action (its policy's rule, its default, no policy).
    pub decided_by: Value,
    /// Its pool members in the scope.
    pub hosts: Vec<String>,
    /// Its spares in the scope (unavailable during the maintenance).
    pub spares_in_scope: Vec<String>,
    pub allowed_failures: u64,
    /// Most of its hosts one step takes (its policy's `disable_concurrency`).
    #[serde(default = "default_disable_concurrency")]
    pub disable_concurrency: u32,
    /// Every pool of the service passed the last preflight.
    pub preflight_passed: bool,
    pub status: ServiceStatus,
    /// The hosts automation took out of service.
    #[serde(default)]
    pub disabled: Vec<String>,
    /// Spares put in service in place of hosts in the scope (`replace_with_spares`).
    #[serde(default)]
    pub replacements: BTreeMap<String, String>,
    /// The run doing its action now: its idempotent name.
    #[serde(default)]
    pub run_name: Option<String>,
    /// The hosts of the step its run is disabling now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<String>,
    /// Hosts whose host-level action failed.
    #[serde(default)]
    pub failed_hosts: Vec<String>,
    #[serde(default)]
    pub confirmed: Option<Signed>,
    /// Why it is where it is, in a sentence.
    #[serde(default)]
    pub note: String,
}

fn default_disable_concurrency() -> u32 {
    levee_model::maintenance_policy::DEFAULT_DISABLE_CONCURRENCY_HOSTS
}

impl ServiceFlow {
    fn needs_person(&self) -> bool {
        self.status == ServiceStatus::NeedsHuman
    }

    /// Whether automation takes its hosts out one by one (as opposed to riding the
    /// maintenance out or leaving it to people).
    fn removes_hosts(&self) -> bool {
        matches!(
            self.action,
            PolicyAction::DrainAndWait
                | PolicyAction::ReplaceWithSpares
                | PolicyAction::Runbook { .. }
        )
    }

    /// Its hosts automation has still to take out: neither taken yet nor put back by hand.
    fn remaining(&self, manually: &BTreeMap<String, Signed>) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| !self.disabled.contains(h) && !manually.contains_key(*h))
            .cloned()
            .collect()
    }
}

/// One line of a maintenance's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub state: String,
    pub why: String,
}

/// A maintenance's own facts, kept in its record's `details`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Details {
    pub description: Option<String>,
    pub duration_ms: u64,
    pub on_preflight_failure: OnPreflightFailure,
    /// Waits for people (approval, confirmations) end here, with `on_deadline`.
    pub human_deadline_ms: i64,
    pub on_deadline: Fallback,
    /// Why a second person must approve (empty: nobody needs to).
    pub approval_required: Vec<String>,
    pub approved: Option<Signed>,
    pub preflight: Option<PreflightReport>,
    pub preflight_at_ms: Option<i64>,
    pub services: Vec<ServiceFlow>,
    /// Spares in the scope, unavailable for replacements while the maintenance holds them.
    pub spares_unavailable: Vec<String>,
    /// Hosts an operator put back in service by hand: automation leaves them alone.
    pub manually_enabled: BTreeMap<String, Signed>,
    pub cancel_requested: Option<Signed>,
    pub finished_early: Option<Signed>,
    /// The state to return to once the people it waits for have answered.
    pub resume_to: Option<String>,
    /// How the disable flow is paced.
    #[serde(default)]
    pub rollout: Rollout,
    /// The disable flow's steps so far.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    pub history: Vec<HistoryEntry>,
}

impl Details {
    pub fn from_value(value: &Value) -> Result<Details, String> {
        serde_json::from_value(value.clone())
            .map_err(|error| format!("the maintenance's stored details do not parse: {error}"))
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("details always serialise")
    }

    /// Hosts this maintenance has out of service now (automation's disables, spares it made
    /// unavailable), without those an operator re-enabled by hand.
    pub fn hosts_out(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .services
            .iter()
            .flat_map(|s| s.disabled.iter().cloned())
            .chain(self.spares_unavailable.iter().cloned())
            .collect();
        out.retain(|host| !self.manually_enabled.contains_key(host));
        out
    }

    /// The hosts this maintenance's automation took out, with when: what the removal rate
    /// limits count.
    pub fn removals(&self) -> impl Iterator<Item = (&str, i64)> {
        self.steps
            .iter()
            .flat_map(|step| step.hosts.iter().map(move |h| (h.as_str(), step.at_ms)))
    }

    /// Whether automation changed anything that must be given back.
    pub fn changed_anything(&self) -> bool {
        !self.spares_unavailable.is_empty()
            || self.services.iter().any(|s| {
                !s.disabled.is_empty()
                    || !s.replacements.is_empty()
                    || matches!(
                        s.status,
                        ServiceStatus::Running | ServiceStatus::Disabled | ServiceStatus::Enabling
                    ) && s.run_name.is_some()
            })
    }
}

/// How a run the flow started is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Running,
    Succeeded,
    Failed(String),
}

/// Something to do once a transition is committed.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Start (idempotently, by `name`) a run of `runbook` with `params`.
    StartRun {
        service: String,
        runbook: String,
        name: String,
        params: BTreeMap<String, Value>,
    },
    /// Tell the owners (webhook).
    Notify {
        event: &'static str,
        message: String,
    },
}

/// A maintenance's next state.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub state: String,
    pub why: String,
    pub unblock: String,
    pub details: Details,
    pub effects: Vec<Effect>,
}

/// What the flow looks at besides the maintenance.
pub struct Facts<'a> {
    pub index: &'a FleetIndex,
    pub policies: &'a PolicySet,
    /// Every other maintenance still holding capacity.
    pub others: &'a [Reservation],
    /// Runbooks that declare a `phase` parameter (they are run again to enable).
    pub runbooks_with_phase: &'a BTreeSet<String>,
    /// The runs the flow started, by name.
    pub runs: &'a BTreeMap<String, RunOutcome>,
    /// The server's removal rate limits.
    pub limits: &'a RemovalLimits,
    /// What other maintenances' automation took out recently (within the limits' window).
    pub removals: &'a [Removal],
    pub now_ms: i64,
}

/// The maintenance as the flow sees it.
pub struct Current<'a> {
    pub id: &'a str,
    pub state: &'a str,
    pub kind: &'a str,
    pub hosts: &'a [String],
    pub window: Window,
    pub owner: &'a str,
    /// Why it is where it is now (a wait whose reason changed is worth a write).
    pub why: &'a str,
    pub details: &'a Details,
}

/// The services a scope affects with their actions, from the policies and the preflight.
pub fn service_flows(
    index: &FleetIndex,
    policies: &PolicySet,
    scope_names: &[String],
    kind: &MaintenanceType,
    duration_ms: u64,
    report: &PreflightReport,
) -> Result<Vec<ServiceFlow>, String> {
    let scope = index.host_ids(scope_names).map_err(|e| e.to_string())?;
    let actions: Vec<ServiceAction> = plan_actions(index, policies, &scope, kind, duration_ms);
    let mut hosts_of: BTreeMap<&str, (BTreeSet<String>, BTreeSet<String>, bool)> = BTreeMap::new();
    for pool in &report.pools {
        let entry = hosts_of
            .entry(pool.service.as_str())
            .or_insert_with(|| (BTreeSet::new(), BTreeSet::new(), true));
        entry.0.extend(pool.hosts_in_scope.iter().cloned());
        entry.1.extend(pool.spares_in_scope.iter().cloned());
        entry.2 &= pool.passed;
    }
    Ok(actions
        .into_iter()
        .map(|action| {
            let (hosts, spares, passed) = hosts_of
                .get(action.service.as_str())
                .cloned()
                .unwrap_or_else(|| (BTreeSet::new(), BTreeSet::new(), true));
            ServiceFlow {
                action_name: action.action.describe(),
                decided_by: serde_json::to_value(&action.reason).unwrap_or(Value::Null),
                service: action.service,
                owner: action.owner,
                action: action.action,
                hosts: hosts.into_iter().collect(),
                spares_in_scope: spares.into_iter().collect(),
                allowed_failures: action.allowed_failures,
                disable_concurrency: action.disable_concurrency.max(1),
                preflight_passed: passed,
                status: ServiceStatus::Pending,
                disabled: Vec::new(),
                replacements: BTreeMap::new(),
                run_name: None,
                in_flight: Vec::new(),
                failed_hosts: Vec::new(),
                confirmed: None,
                note: String::new(),
            }
        })
        .collect())
}

/// The preflight of `current` now, against every other reservation.
pub fn preflight_now(current: &Current<'_>, facts: &Facts<'_>) -> Result<PreflightReport, String> {
    let candidate = Reservation {
        maintenance_id: current.id.to_string(),
        hosts: current.hosts.to_vec(),
        window: current.window,
    };
    admit(facts.index, &candidate, facts.others, &[]).map_err(|e| e.to_string())
}

/// The run name of a service's action in a phase: unique per maintenance, so starting it
/// again (another pass, another replica) finds the same run.
pub fn run_name(maintenance: &str, service: &str, phase: &str) -> String {
    let name = format!("maint-{maintenance}-{service}-{phase}");
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect()
}

/// The next state of `current`, or `None` when it stays where it is. History entries it adds
/// are stamped with `facts.now_ms`.
pub fn advance(current: &Current<'_>, facts: &Facts<'_>) -> Result<Option<Transition>, String> {
    let mut transition = decide(current, facts)?;
    if let Some(transition) = &mut transition {
        for entry in &mut transition.details.history {
            if entry.at_ms == 0 {
                entry.at_ms = facts.now_ms;
            }
        }
    }
    Ok(transition)
}

fn decide(current: &Current<'_>, facts: &Facts<'_>) -> Result<Option<Transition>, String> {
    let now = facts.now_ms;
    let mut details = current.details.clone();
    match current.state {
        SCHEDULED | BLOCKED | NEEDS_HUMAN | PREFLIGHT
            if details.cancel_requested.is_some() && !details.changed_anything() =>
        {
            let by = details.cancel_requested.clone().expect("checked");
            Ok(Some(to(
                details,
                CANCELLED,
                format!("cancelled by {}: {}", by.by, by.reason),
                "",
                vec![],
            )))
        }
        BLOCKED | NEEDS_HUMAN if now >= details.human_deadline_ms => {
            Ok(Some(fallback(current, facts, details, now)))
        }
        BLOCKED => {
            if details.approved.is_some() {
                let next = if now >= flow_start_ms(current) {
                    PREFLIGHT
                } else {
                    SCHEDULED
                };
                Ok(Some(to(details, next, "approved".to_string(), "", vec![])))
            } else {
                Ok(None)
            }
        }
        SCHEDULED => {
            if now >= flow_start_ms(current) {
                Ok(Some(to(
                    details,
                    PREFLIGHT,
                    "the flow started: checking capacity again before disabling".to_string(),
                    "",
                    vec![],
                )))
            } else {
                Ok(None)
            }
        }
        PREFLIGHT => {
            let report = preflight_now(current, facts)?;
            let kind = MaintenanceType::parse(current.kind)?;
            let mut services = service_flows(
                facts.index,
                facts.policies,
                current.hosts,
                &kind,
                details.duration_ms,
                &report,
            )?;
            // Confirmations given earlier (scheduled as needs-human) still stand.
            for service in &mut services {
                if let Some(before) = details
                    .services
                    .iter()
                    .find(|s| s.service == service.service)
                    && before.confirmed.is_some()
                {
                    service.confirmed = before.confirmed.clone();
                    service.status = ServiceStatus::ByHand;
                    service.note = before.note.clone();
                }
            }
            details.preflight = Some(report.clone());
            details.preflight_at_ms = Some(now);
            details.services = services;
            let needing = mark_needing_people(&mut details.services);
            if needing.is_empty() {
                details.spares_unavailable = details
                    .services
                    .iter()
                    .flat_map(|s| s.spares_in_scope.iter().cloned())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let passed = format!("preflight passed: {}", report.explain());
                Ok(Some(match next_step(current, facts, &mut details) {
                    StepChoice::Started { effects, why } => {
                        to(details, DISABLING, format!("{passed}; {why}"), "", effects)
                    }
                    StepChoice::Wait { why, unblock } => to(
                        details,
                        DISABLING,
                        format!("{passed}; {why}"),
                        &unblock,
                        vec![],
                    ),
                    // Nothing to take out: the next pass verifies and moves on.
                    StepChoice::Finished => to(details, DISABLING, passed, "", vec![]),
                }))
            } else {
                details.resume_to = Some(PREFLIGHT.to_string());
                Ok(Some(needs_human(
                    current,
                    details,
                    &needing,
                    if report.passed {
                        "services without automation".to_string()
                    } else {
                        report.explain()
                    },
                )))
            }
        }
        NEEDS_HUMAN => {
            if details.services.iter().any(ServiceFlow::needs_person) {
                return Ok(None);
            }
            let resume = details
                .resume_to
                .take()
                .unwrap_or_else(|| PREFLIGHT.to_string());
            if resume == PREFLIGHT && now < flow_start_ms(current) {
                return Ok(Some(to(
                    details,
                    SCHEDULED,
                    "every service that needed a person was confirmed; waiting for the start"
                        .to_string(),
                    "",
                    vec![],
                )));
            }
            let why = "every service that needed a person was confirmed".to_string();
            Ok(Some(to(details, &resume, why, "", vec![])))
        }
        DISABLING => {
            if details.cancel_requested.is_some() {
                // Steps under way finish first, so the enable flow gives back everything
                // they took.
                progress_runs(facts, &mut details, false);
                if details
                    .services
                    .iter()
                    .any(|s| s.status == ServiceStatus::Running)
                {
                    let why = "cancelled: waiting for the step under way to finish before \
                               giving the hosts back";
                    return Ok(
                        (details != *current.details || current_why_differs(current, why))
                            .then(|| stay(details, DISABLING, why.to_string(), String::new())),
                    );
                }
                for service in &mut details.services {
                    if service.status == ServiceStatus::NeedsHuman {
                        service.status = ServiceStatus::Disabled;
                    }
                }
                return Ok(Some(start_enable_phase(
                    current,
                    facts,
                    details,
                    "cancelled: giving the hosts back",
                )));
            }
            let mut details = match follow_runs(current, facts, details, false) {
                PhasePass::Done(details) => details,
                PhasePass::Stop(stop) => return Ok(stop),
            };
            match next_step(current, facts, &mut details) {
                StepChoice::Finished => {}
                StepChoice::Started { effects, why } => {
                    return Ok(Some(to(details, DISABLING, why, "", effects)));
                }
                StepChoice::Wait { why, unblock } => {
                    return Ok(
                        (details != *current.details || current_why_differs(current, &why))
                            .then(|| stay(details, DISABLING, why, unblock)),
                    );
                }
            }
            if details.services.iter().any(ServiceFlow::needs_person) {
                let needing: Vec<String> = details
                    .services
                    .iter()
                    .filter(|s| s.needs_person())
                    .map(|s| s.service.clone())
                    .collect();
                details.resume_to = Some(DISABLING.to_string());
                return Ok(Some(needs_human(
                    current,
                    details,
                    &needing,
                    "automation cannot take the rest".to_string(),
                )));
            }
            let out: usize = details.services.iter().map(|s| s.disabled.len()).sum();
            let by_hand = details
                .services
                .iter()
                .filter(|s| s.status == ServiceStatus::ByHand)
                .count();
            Ok(Some(to(
                details,
                IN_MAINTENANCE,
                format!(
                    "post-disable verified: {out} hosts out of service by automation, {by_hand} \
                     services handled by hand; enabling at the end of the window"
                ),
                "",
                vec![],
            )))
        }
        IN_MAINTENANCE => {
            if details.cancel_requested.is_some() {
                Ok(Some(start_enable_phase(
                    current,
                    facts,
                    details,
                    "cancelled: giving the hosts back",
                )))
            } else if details.finished_early.is_some() {
                Ok(Some(start_enable_phase(
                    current,
                    facts,
                    details,
                    "the work finished early: enabling",
                )))
            } else if now >= current.window.end_ms {
                Ok(Some(start_enable_phase(
                    current,
                    facts,
                    details,
                    "the window ended: enabling",
                )))
            } else {
                Ok(None)
            }
        }
        ENABLING => {
            let mut details = match follow_runs(current, facts, details, true) {
                PhasePass::Done(details) => details,
                PhasePass::Stop(stop) => return Ok(stop),
            };
            details.spares_unavailable.clear();
            let by_hand: Vec<String> = details
                .services
                .iter()
                .filter(|s| s.confirmed.is_some())
                .map(|s| s.service.clone())
                .collect();
            let mut why =
                "post-enable verified: every host automation took out is back".to_string();
            if !by_hand.is_empty() {
                why.push_str(&format!(
                    "; {} handled by hand, so re-enable by hand",
                    by_hand.join(", ")
                ));
            }
            let (state, event) = if let Some(by) = &details.cancel_requested {
                why = format!("cancelled by {}: {}; {why}", by.by, by.reason);
                (CANCELLED, "maintenance_cancelled")
            } else {
                (DONE, "maintenance_done")
            };
            let message = format!("maintenance {} {state}: {why}", current.id);
            Ok(Some(to(
                details,
                state,
                why,
                "",
                vec![Effect::Notify { event, message }],
            )))
        }
        _ => Ok(None),
    }
}

/// When the flow begins: [`super::DISABLE_LEAD_MS`] before the window.
pub fn flow_start_ms(current: &Current<'_>) -> i64 {
    current
        .window
        .start_ms
        .saturating_sub(super::DISABLE_LEAD_MS)
}

/// Marks the services that need a person: no automation (`human`), or a pool below its
/// floor, unless already confirmed. Returns their names.
fn mark_needing_people(services: &mut [ServiceFlow]) -> Vec<String> {
    let mut needing = Vec::new();
    for service in services.iter_mut() {
        if service.status == ServiceStatus::ByHand {
            continue;
        }
        let note = if !service.preflight_passed {
            Some("its pool would drop below its floor: automation may not take these hosts")
        } else if service.action == PolicyAction::Human {
            Some("its policy leaves it to a person (no automation)")
        } else {
            None
        };
        if let Some(note) = note {
            service.status = ServiceStatus::NeedsHuman;
            service.note = note.to_string();
            needing.push(service.service.clone());
        }
    }
    needing
}

fn needs_human(
    current: &Current<'_>,
    details: Details,
    services: &[String],
    cause: String,
) -> Transition {
    let owners: BTreeSet<String> = details
        .services
        .iter()
        .filter(|s| services.contains(&s.service))
        .filter_map(|s| s.owner.clone())
        .collect();
    let why = format!(
        "waiting for a person to handle {}: {cause}",
        services.join(", ")
    );
    let unblock = format!(
        "once their hosts are handled by hand, confirm each service (`levee maint confirm {} \
         --service SERVICE --reason ...`), or cancel; by {} the fallback is to {}",
        current.id,
        crate::clock::rfc3339(details.human_deadline_ms),
        match details.on_deadline {
            Fallback::Cancel => "cancel",
            Fallback::Fail => "fail",
        }
    );
    let message = format!(
        "maintenance {} ({} of {}) needs a person: {why}. Owners: {}. {unblock}",
        current.id,
        current.kind,
        current.owner,
        if owners.is_empty() {
            "none recorded".to_string()
        } else {
            owners.into_iter().collect::<Vec<_>>().join(", ")
        }
    );
    to(
        details,
        NEEDS_HUMAN,
        why,
        &unblock,
        vec![Effect::Notify {
            event: "maintenance_needs_human",
            message,
        }],
    )
}

fn fallback(
    current: &Current<'_>,
    facts: &Facts<'_>,
    mut details: Details,
    now: i64,
) -> Transition {
    let waited_for = if current.state == BLOCKED {
        "an approval"
    } else {
        "a person"
    };
    match details.on_deadline {
        Fallback::Fail => {
            let why = format!(
                "nobody answered before the deadline ({}) while it waited for {waited_for}; \
                 the declared fallback is to fail, leaving every host as it is",
                crate::clock::rfc3339(details.human_deadline_ms)
            );
            let message = format!("maintenance {} failed: {why}", current.id);
            to(
                details,
                FAILED,
                why,
                "",
                vec![Effect::Notify {
                    event: "maintenance_failed",
                    message,
                }],
            )
        }
        Fallback::Cancel => {
            details.cancel_requested = Some(Signed {
                by: "levee".to_string(),
                at_ms: now,
                reason: format!(
                    "nobody answered before the deadline while it waited for {waited_for}; the \
                     declared fallback is to cancel"
                ),
            });
            if details.changed_anything() {
                details.resume_to = None;
                // Give back what automation took: enabling, then cancelled.
                for service in &mut details.services {
                    if service.status == ServiceStatus::NeedsHuman {
                        service.status = ServiceStatus::Disabled;
                    }
                }
                start_enable_phase(
                    current,
                    facts,
                    details,
                    "the deadline passed: giving the hosts back, then cancelling",
                )
            } else {
                let why = details
                    .cancel_requested
                    .as_ref()
                    .map(|s| s.reason.clone())
                    .unwrap_or_default();
                let message = format!("maintenance {} cancelled: {why}", current.id);
                to(
                    details,
                    CANCELLED,
                    why,
                    "",
                    vec![Effect::Notify {
                        event: "maintenance_cancelled",
                        message,
                    }],
                )
            }
        }
    }
}

/// What the next step of the disable flow is.
enum StepChoice {
    /// Every host automation takes out is out (or in a step under way).
    Finished,
    /// A step started.
    Started { effects: Vec<Effect>, why: String },
    /// Hosts remain, but the step interval or the removal rate limits hold the next step.
    Wait { why: String, unblock: String },
}

/// The removal budget left now: the rate limits minus what was taken out within the window.
struct Budget<'a> {
    index: &'a FleetIndex,
    limits: &'a RemovalLimits,
    overall_used: u64,
    pool_used: BTreeMap<levee_fleet::PoolId, u64>,
    /// When each counted removal leaves the window, earliest first.
    leaves_window_ms: Vec<i64>,
}

impl<'a> Budget<'a> {
    fn new(facts: &Facts<'a>, details: &Details) -> Budget<'a> {
        let since = facts.now_ms - facts.limits.window_ms as i64;
        let mut budget = Budget {
            index: facts.index,
            limits: facts.limits,
            overall_used: 0,
            pool_used: BTreeMap::new(),
            leaves_window_ms: Vec::new(),
        };
        let others = facts
            .removals
            .iter()
            .map(|r| (r.host.as_str(), r.at_ms, r.same_fleet));
        let own = details.removals().map(|(host, at)| (host, at, true));
        for (host, at_ms, same_fleet) in others.chain(own) {
            if at_ms <= since {
                continue;
            }
            budget
                .leaves_window_ms
                .push(at_ms + facts.limits.window_ms as i64);
            budget.charge(host, same_fleet);
        }
        budget.leaves_window_ms.sort_unstable();
        budget
    }

    /// The pools `host` serves in (not those it is a spare of: taking a spare out removes no
    /// capacity).
    fn pools_of(&self, host: &str) -> Vec<levee_fleet::PoolId> {
        self.index
            .host(host)
            .map(|id| {
                self.index
                    .memberships(id)
                    .iter()
                    .filter(|m| !m.spare)
                    .map(|m| m.pool)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn charge(&mut self, host: &str, same_fleet: bool) {
        self.overall_used += 1;
        if same_fleet {
            for pool in self.pools_of(host) {
                *self.pool_used.entry(pool).or_default() += 1;
            }
        }
    }

    /// Why taking `host` out now would pass a limit, or `None` when it fits.
    fn refusal(&self, host: &str) -> Option<String> {
        let window = self.limits.describe_window();
        if let Some(max) = self.limits.max_overall
            && self.overall_used >= max
        {
            return Some(format!(
                "{} hosts were taken out in the last {window} over every maintenance, the \
                 server's limit (--max-removals {max})",
                self.overall_used
            ));
        }
        if let Some(max) = self.limits.max_per_pool {
            for pool in self.pools_of(host) {
                let used = self.pool_used.get(&pool).copied().unwrap_or(0);
                if used >= max {
                    let pool = self.index.pool(pool);
                    return Some(format!(
                        "pool {}/{} had {used} hosts taken out in the last {window}, the \
                         server's limit per pool (--max-removals-per-pool {max})",
                        self.index.service(pool.service).name,
                        pool.name
                    ));
                }
            }
        }
        None
    }

    /// When the next counted removal leaves the window (and so frees some budget).
    fn frees_at_ms(&self) -> Option<i64> {
        self.leaves_window_ms.first().copied()
    }
}

/// The next step of the disable flow, applied to `details` when one starts: at most each
/// service's `disable_concurrency` hosts, one failure domain when the rollout says so, within
/// the removal rate limits, not before the step interval has passed since the last step.
fn next_step(current: &Current<'_>, facts: &Facts<'_>, details: &mut Details) -> StepChoice {
    let now = facts.now_ms;
    let manually = details.manually_enabled.clone();
    // Services without host-level work settle at once.
    for service in &mut details.services {
        if service.status != ServiceStatus::Pending {
            continue;
        }
        match service.action {
            PolicyAction::Nothing => {
                service.status = ServiceStatus::Disabled;
                service.note = "its policy rides the maintenance out: nothing to do".to_string();
            }
            PolicyAction::Human => {
                service.status = ServiceStatus::NeedsHuman;
                service.note = "its policy leaves it to a person (no automation)".to_string();
            }
            _ if service.remaining(&manually).is_empty() => {
                service.status = ServiceStatus::Disabled;
                service.note = format!(
                    "{} hosts out of service, {} put back by hand",
                    service.disabled.len(),
                    service
                        .hosts
                        .iter()
                        .filter(|h| manually.contains_key(*h))
                        .count()
                );
            }
            _ => {}
        }
    }
    let mut remaining: Vec<(usize, Vec<String>)> = details
        .services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.status == ServiceStatus::Pending && s.removes_hosts())
        .map(|(i, s)| (i, s.remaining(&manually)))
        .filter(|(_, hosts)| !hosts.is_empty())
        .collect();
    if remaining.is_empty() {
        return StepChoice::Finished;
    }
    let number = details.steps.len() as u32 + 1;
    if let Some(last) = details.steps.last() {
        let next_at = last.at_ms + details.rollout.step_interval_ms as i64;
        if now < next_at {
            return StepChoice::Wait {
                why: format!(
                    "step {} done; step {number} starts at {} (one step every {})",
                    last.number,
                    crate::clock::rfc3339(next_at),
                    crate::ui::layout::duration_text(details.rollout.step_interval_ms)
                ),
                unblock: String::new(),
            };
        }
    }
    // One failure domain per step: the first domain (by name) with hosts left; a host with
    // no value at the level is a step of its own.
    let index = facts.index;
    let level = details.rollout.one_domain_per_step;
    let domain_of = |host: &str| -> Option<String> {
        let level = level?;
        index
            .host(host)
            .and_then(|id| index.domain_of(id, level))
            .map(str::to_string)
    };
    let mut domain = None;
    if level.is_some() {
        let first = remaining
            .iter()
            .flat_map(|(_, hosts)| hosts.iter())
            .map(|h| (domain_of(h).is_none(), domain_of(h), h.clone()))
            .min()
            .expect("remaining is not empty");
        for (_, hosts) in &mut remaining {
            hosts.retain(|h| match &first.1 {
                Some(value) => domain_of(h).as_ref() == Some(value),
                None => *h == first.2,
            });
        }
        domain = first.1;
    }
    let mut budget = Budget::new(facts, details);
    let mut chosen: Vec<(usize, Vec<String>)> = Vec::new();
    let mut held_back: Option<String> = None;
    for (service, hosts) in &remaining {
        let cap = details.services[*service].disable_concurrency.max(1) as usize;
        let mut take = Vec::new();
        for host in hosts {
            if take.len() >= cap {
                break;
            }
            match budget.refusal(host) {
                None => {
                    budget.charge(host, true);
                    take.push(host.clone());
                }
                Some(why) => {
                    held_back.get_or_insert(why);
                }
            }
        }
        if !take.is_empty() {
            chosen.push((*service, take));
        }
    }
    if chosen.is_empty() {
        let why = held_back.unwrap_or_else(|| "no host may be taken out now".to_string());
        let left: usize = remaining.iter().map(|(_, h)| h.len()).sum();
        let when = budget
            .frees_at_ms()
            .map(|at| format!("at {}", crate::clock::rfc3339(at)))
            .unwrap_or_else(|| "once earlier removals leave the window".to_string());
        return StepChoice::Wait {
            why: format!("removal rate limit: {why}; {left} hosts wait for step {number}"),
            unblock: format!(
                "the step starts by itself {when}, when earlier removals leave the window; or \
                 raise the server's limits"
            ),
        };
    }
    let mut effects = Vec::new();
    let mut taken_spares: BTreeSet<String> = details
        .services
        .iter()
        .flat_map(|s| s.replacements.values().cloned())
        .collect();
    let mut step_hosts = Vec::new();
    let mut parts = Vec::new();
    for (i, hosts) in chosen {
        let service = &mut details.services[i];
        let before = service.disabled.len();
        if let Some(effect) = take_out(current, facts, service, hosts, number, &mut taken_spares) {
            effects.push(effect);
        }
        let taken = &service.disabled[before..];
        if !taken.is_empty() {
            parts.push(format!("{} of {}", taken.len(), service.service));
            step_hosts.extend(taken.iter().cloned());
        }
        if service.status == ServiceStatus::Pending && service.remaining(&manually).is_empty() {
            service.status = ServiceStatus::Disabled;
        }
    }
    step_hosts.sort();
    if step_hosts.is_empty() {
        // Nothing could be taken (no spares to replace with): people are needed, which the
        // next pass says.
        return StepChoice::Started {
            effects,
            why: "automation cannot take the next hosts out".to_string(),
        };
    }
    let mut why = format!("step {number}: taking out {}", parts.join(", "));
    if let Some(value) = &domain {
        why.push_str(&format!(
            " ({} {value})",
            level.expect("a domain has a level")
        ));
    }
    details.steps.push(StepRecord {
        number,
        at_ms: now,
        domain,
        hosts: step_hosts,
    });
    StepChoice::Started { effects, why }
}

/// The steps the disable flow would take for `services` with nothing else in the way (no
/// rate limit reached, every run succeeding, no interval): what a plan shows.
pub fn planned_steps(
    index: &FleetIndex,
    policies: &PolicySet,
    hosts: &[String],
    window: Window,
    services: &[ServiceFlow],
    rollout: &Rollout,
) -> Vec<StepRecord> {
    let mut details = Details {
        description: None,
        duration_ms: (window.end_ms - window.start_ms).max(0) as u64,
        on_preflight_failure: OnPreflightFailure::Refuse,
        human_deadline_ms: window.end_ms,
        on_deadline: Fallback::Cancel,
        approval_required: Vec::new(),
        approved: None,
        preflight: None,
        preflight_at_ms: None,
        services: services.to_vec(),
        spares_unavailable: Vec::new(),
        manually_enabled: BTreeMap::new(),
        cancel_requested: None,
        finished_early: None,
        resume_to: None,
        rollout: Rollout {
            one_domain_per_step: rollout.one_domain_per_step,
            step_interval_ms: 0,
        },
        steps: Vec::new(),
        history: Vec::new(),
    };
    let unlimited = RemovalLimits {
        window_ms: 1,
        max_per_pool: None,
        max_overall: None,
    };
    let runs = BTreeMap::new();
    let phases = BTreeSet::new();
    let template = details.clone();
    let facts = Facts {
        index,
        policies,
        others: &[],
        runbooks_with_phase: &phases,
        runs: &runs,
        limits: &unlimited,
        removals: &[],
        now_ms: window.start_ms,
    };
    let current = Current {
        id: "plan",
        state: DISABLING,
        kind: "plan",
        hosts,
        window,
        owner: "",
        why: "",
        details: &template,
    };
    // Each step takes at least one host, so this ends; the bound guards against a bug.
    for _ in 0..=hosts.len() {
        match next_step(&current, &facts, &mut details) {
            StepChoice::Started { .. } => {
                for service in &mut details.services {
                    if service.status == ServiceStatus::Running {
                        service.in_flight.clear();
                        service.status = if service.remaining(&BTreeMap::new()).is_empty() {
                            ServiceStatus::Disabled
                        } else {
                            ServiceStatus::Pending
                        };
                    }
                }
            }
            StepChoice::Finished | StepChoice::Wait { .. } => break,
        }
    }
    details.steps
}

/// Host-level disable of `hosts` of `service` in step `number`: its policy's action.
fn take_out(
    current: &Current<'_>,
    facts: &Facts<'_>,
    service: &mut ServiceFlow,
    hosts: Vec<String>,
    number: u32,
    taken_spares: &mut BTreeSet<String>,
) -> Option<Effect> {
    match &service.action {
        PolicyAction::DrainAndWait => {
            service.disabled.extend(hosts);
            service.note = format!(
                "{} hosts out of the load-balancer pool until the end",
                service.disabled.len()
            );
            None
        }
        PolicyAction::ReplaceWithSpares => {
            let free = free_spares(current, facts, &service.service, taken_spares);
            if free.len() < hosts.len() {
                service.status = ServiceStatus::NeedsHuman;
                service.failed_hosts = hosts[free.len()..].to_vec();
                service.note = format!(
                    "only {} spares are free for {} hosts: replace the rest by hand",
                    free.len(),
                    hosts.len()
                );
                return None;
            }
            for (host, spare) in hosts.iter().zip(free) {
                taken_spares.insert(spare.clone());
                service.replacements.insert(host.clone(), spare);
            }
            service.disabled.extend(hosts);
            service.note = format!(
                "{} hosts replaced with spares ahead of the maintenance",
                service.disabled.len()
            );
            None
        }
        PolicyAction::Runbook { runbook, with } => {
            let name = run_name(current.id, &service.service, &format!("disable-{number}"));
            let params = runbook_params(
                current,
                &hosts,
                with,
                facts.runbooks_with_phase.contains(&runbook.value),
                "disable",
            );
            service.run_name = Some(name.clone());
            service.status = ServiceStatus::Running;
            service.disabled.extend(hosts.iter().cloned());
            service.in_flight = hosts;
            service.note = format!("running `{}` as run {name}", runbook.value);
            Some(Effect::StartRun {
                service: service.service.clone(),
                runbook: runbook.value.clone(),
                name,
                params,
            })
        }
        PolicyAction::Nothing | PolicyAction::Human => None,
    }
}

/// A policy runbook's parameters: its `with:` arguments, then `hosts` (comma-separated),
/// `maintenance`, and `phase` (`disable` or `enable`) when the runbook declares it.
pub(crate) fn runbook_params(
    current: &Current<'_>,
    hosts: &[String],
    with: &serde_json::Map<String, Value>,
    has_phase: bool,
    phase: &str,
) -> BTreeMap<String, Value> {
    let mut params: BTreeMap<String, Value> = with.clone().into_iter().collect();
    params.insert("hosts".to_string(), Value::String(hosts.join(",")));
    params.insert(
        "maintenance".to_string(),
        Value::String(current.id.to_string()),
    );
    if has_phase {
        params.insert("phase".to_string(), Value::String(phase.to_string()));
    }
    params
}

/// Spares of `service`'s pools outside the scope, neither down nor held by another
/// maintenance, nor already picked in this pass.
fn free_spares(
    current: &Current<'_>,
    facts: &Facts<'_>,
    service: &str,
    taken: &BTreeSet<String>,
) -> Vec<String> {
    let index = facts.index;
    let Some(id) = index.service_id(service) else {
        return Vec::new();
    };
    let scope: BTreeSet<&str> = current.hosts.iter().map(String::as_str).collect();
    let held: BTreeSet<&str> = facts
        .others
        .iter()
        .filter(|r| r.overlaps(current.window))
        .flat_map(|r| r.hosts.iter().map(String::as_str))
        .collect();
    let down: BTreeSet<&str> = index
        .marked_down()
        .iter()
        .map(|h| index.host_name(*h))
        .collect();
    let mut free = Vec::new();
    for pool in index.pools().iter().filter(|p| p.service == id) {
        for &spare in &pool.spares {
            let name = index.host_name(spare);
            if !scope.contains(name)
                && !held.contains(name)
                && !down.contains(name)
                && !taken.contains(name)
                && !free.iter().any(|f: &String| f == name)
            {
                free.push(name.to_string());
            }
        }
    }
    free
}

/// Where one pass of a phase's host-level actions leaves the flow.
enum PhasePass {
    /// Every action is done: the phase may end.
    Done(Details),
    /// The flow stops here: people are needed, or runs are still going (`None` when this
    /// pass changed nothing).
    Stop(Option<Transition>),
}

/// One pass of a phase's host-level actions: follows their runs, then says whether the phase
/// may end.
fn follow_runs(
    current: &Current<'_>,
    facts: &Facts<'_>,
    mut details: Details,
    enabling: bool,
) -> PhasePass {
    progress_runs(facts, &mut details, enabling);
    let (state, waiting, cause, why) = if enabling {
        (
            ENABLING,
            ServiceStatus::Enabling,
            "automation failed to enable",
            "waiting for the services' runbooks to enable",
        )
    } else {
        (
            DISABLING,
            ServiceStatus::Running,
            "automation failed",
            "waiting for the services' runbooks",
        )
    };
    let needing: Vec<String> = details
        .services
        .iter()
        .filter(|s| s.needs_person())
        .map(|s| s.service.clone())
        .collect();
    if !needing.is_empty() {
        details.resume_to = Some(state.to_string());
        return PhasePass::Stop(Some(needs_human(
            current,
            details,
            &needing,
            cause.to_string(),
        )));
    }
    if details.services.iter().any(|s| s.status == waiting) {
        return PhasePass::Stop((details != *current.details).then(|| Transition {
            state: state.to_string(),
            why: why.to_string(),
            unblock: String::new(),
            details,
            effects: vec![],
        }));
    }
    PhasePass::Done(details)
}

/// Follows the runs of services in `Running` (disable) or `Enabling` (enable).
fn progress_runs(facts: &Facts<'_>, details: &mut Details, enabling: bool) {
    let waiting = if enabling {
        ServiceStatus::Enabling
    } else {
        ServiceStatus::Running
    };
    let manually = details.manually_enabled.clone();
    for service in &mut details.services {
        if service.status != waiting {
            continue;
        }
        let Some(name) = service.run_name.clone() else {
            continue;
        };
        match facts.runs.get(&name) {
            // Not seen yet, or still going: the driver (re)starts it idempotently while
            // gathering the facts, so there is nothing to do here.
            None | Some(RunOutcome::Running) => {}
            Some(RunOutcome::Succeeded) => {
                if enabling {
                    service.status = ServiceStatus::Enabled;
                    service.disabled.clear();
                    service.note = format!("run {name} enabled its hosts");
                } else {
                    service.in_flight.clear();
                    service.status = if service.remaining(&manually).is_empty() {
                        ServiceStatus::Disabled
                    } else {
                        ServiceStatus::Pending
                    };
                    service.note = format!(
                        "run {name} took its hosts out ({} of {} so far)",
                        service.disabled.len(),
                        service.hosts.len()
                    );
                }
            }
            Some(RunOutcome::Failed(why)) => {
                // A runbook acts on all its hosts together: its failure is every host's
                // (the step's when disabling, all of them when enabling).
                if enabling {
                    service.failed_hosts = service.disabled.clone();
                } else {
                    let step = std::mem::take(&mut service.in_flight);
                    for host in step {
                        if !service.failed_hosts.contains(&host) {
                            service.failed_hosts.push(host);
                        }
                    }
                }
                let failed = service.failed_hosts.len() as u64;
                if !enabling && failed <= service.allowed_failures {
                    service.status = if service.remaining(&manually).is_empty() {
                        ServiceStatus::Disabled
                    } else {
                        ServiceStatus::Pending
                    };
                    service.note = format!(
                        "run {name} failed ({why}), within the {} failures its policy accepts",
                        service.allowed_failures
                    );
                } else {
                    service.status = ServiceStatus::NeedsHuman;
                    service.note = format!(
                        "run {name} failed ({why}): confirm the hosts were {} by hand",
                        if enabling { "enabled" } else { "disabled" }
                    );
                }
            }
        }
    }
}

/// Enabling: pre-enable (nothing to reserve), host-level enable (each service's action in
/// reverse), post-enable when every service is back.
fn start_enable_phase(
    current: &Current<'_>,
    facts: &Facts<'_>,
    mut details: Details,
    why: &str,
) -> Transition {
    let mut effects = Vec::new();
    for service in &mut details.services {
        match (&service.action, service.status) {
            (_, ServiceStatus::ByHand) => {}
            (
                PolicyAction::Runbook { runbook, with },
                ServiceStatus::Disabled | ServiceStatus::Pending,
            ) if facts.runbooks_with_phase.contains(&runbook.value)
                && !service.disabled.is_empty() =>
            {
                let name = run_name(current.id, &service.service, "enable");
                service.run_name = Some(name.clone());
                service.in_flight.clear();
                service.status = ServiceStatus::Enabling;
                service.note = format!("running `{}` as run {name} to enable", runbook.value);
                effects.push(Effect::StartRun {
                    service: service.service.clone(),
                    runbook: runbook.value.clone(),
                    name,
                    params: runbook_params(current, &service.disabled, with, true, "enable"),
                });
            }
            (_, ServiceStatus::Running) => {
                // A disable still under way when cancelled: let it be, then give back.
                service.status = ServiceStatus::Enabled;
                service.disabled.clear();
                service.note = "cancelled while its runbook ran: hosts given back".to_string();
            }
            _ => {
                service.status = ServiceStatus::Enabled;
                service.disabled.clear();
                service.replacements.clear();
                service.note = "hosts back in service".to_string();
            }
        }
    }
    Transition {
        state: ENABLING.to_string(),
        why: why.to_string(),
        unblock: String::new(),
        details,
        effects,
    }
}

/// A transition within `state` (progress, or a new reason to wait): no history entry.
fn stay(details: Details, state: &str, why: String, unblock: String) -> Transition {
    Transition {
        state: state.to_string(),
        why,
        unblock,
        details,
        effects: vec![],
    }
}

fn current_why_differs(current: &Current<'_>, why: &str) -> bool {
    current.why != why
}

fn to(
    mut details: Details,
    state: &str,
    why: String,
    unblock: &str,
    effects: Vec<Effect>,
) -> Transition {
    details.history.push(HistoryEntry {
        at_ms: 0,
        state: state.to_string(),
        why: why.clone(),
    });
    if details.history.len() > MAX_HISTORY_ENTRIES {
        let excess = details.history.len() - MAX_HISTORY_ENTRIES;
        details.history.drain(..excess);
    }
    Transition {
        state: state.to_string(),
        why,
        unblock: unblock.to_string(),
        details,
        effects,
    }
}
