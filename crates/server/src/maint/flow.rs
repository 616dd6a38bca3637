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
//! host-level disable (every automated service's action at once; a service's own runbook
//! runs as one run), post-disable (failures within the policy's `max_failed_hosts` are
//! accepted; beyond it the service needs a person). Enabling mirrors it. A service a person
//! confirmed was handled by hand stays with them: Levee neither disables nor re-enables it.

use std::collections::{BTreeMap, BTreeSet};

use levee_fleet::{
    FleetIndex, PolicySet, PreflightReport, Reservation, ServiceAction, Window, admit, plan_actions,
};
use levee_model::{MaintenanceType, PolicyAction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Entries of a maintenance's own history kept in its record; older ones are dropped.
pub const MAX_HISTORY_ENTRIES: usize = 200;

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
    /// Hosts whose host-level action failed.
    #[serde(default)]
    pub failed_hosts: Vec<String>,
    #[serde(default)]
    pub confirmed: Option<Signed>,
    /// Why it is where it is, in a sentence.
    #[serde(default)]
    pub note: String,
}

impl ServiceFlow {
    fn needs_person(&self) -> bool {
        self.status == ServiceStatus::NeedsHuman
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
                preflight_passed: passed,
                status: ServiceStatus::Pending,
                disabled: Vec::new(),
                replacements: BTreeMap::new(),
                run_name: None,
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
                let effects = start_disable(current, facts, &mut details);
                Ok(Some(to(
                    details,
                    DISABLING,
                    format!("preflight passed: {}", report.explain()),
                    "",
                    effects,
                )))
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
                return Ok(Some(start_enable_phase(
                    current,
                    facts,
                    details,
                    "cancelled: giving the hosts back",
                )));
            }
            let details = match follow_runs(current, facts, details, false) {
                PhasePass::Done(details) => details,
                PhasePass::Stop(stop) => return Ok(stop),
            };
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

/// Host-level disable: every automated service's action at once.
fn start_disable(current: &Current<'_>, facts: &Facts<'_>, details: &mut Details) -> Vec<Effect> {
    let mut effects = Vec::new();
    let manually = details.manually_enabled.clone();
    // Spares other services may use: outside the scope, not held, not down.
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for service in &mut details.services {
        if service.status != ServiceStatus::Pending {
            continue;
        }
        let hosts: Vec<String> = service
            .hosts
            .iter()
            .filter(|h| !manually.contains_key(*h))
            .cloned()
            .collect();
        match &service.action {
            PolicyAction::Nothing => {
                service.status = ServiceStatus::Disabled;
                service.note = "its policy rides the maintenance out: nothing to do".to_string();
            }
            PolicyAction::DrainAndWait => {
                service.disabled = hosts;
                service.status = ServiceStatus::Disabled;
                service.note = format!(
                    "{} hosts out of the load-balancer pool until the end",
                    service.disabled.len()
                );
            }
            PolicyAction::ReplaceWithSpares => {
                let free = free_spares(current, facts, &service.service, &taken);
                if free.len() < hosts.len() {
                    service.status = ServiceStatus::NeedsHuman;
                    service.failed_hosts = hosts[free.len()..].to_vec();
                    service.note = format!(
                        "only {} spares are free for {} hosts: replace the rest by hand",
                        free.len(),
                        hosts.len()
                    );
                    continue;
                }
                for (host, spare) in hosts.iter().zip(free) {
                    taken.insert(spare.clone());
                    service.replacements.insert(host.clone(), spare);
                }
                service.disabled = hosts;
                service.status = ServiceStatus::Disabled;
                service.note = format!(
                    "{} hosts replaced with spares ahead of the maintenance",
                    service.disabled.len()
                );
            }
            PolicyAction::Runbook { runbook, with } => {
                let name = run_name(current.id, &service.service, "disable");
                let params = runbook_params(
                    current,
                    &hosts,
                    with,
                    facts.runbooks_with_phase.contains(&runbook.value),
                    "disable",
                );
                service.run_name = Some(name.clone());
                service.status = ServiceStatus::Running;
                service.disabled = hosts;
                service.note = format!("running `{}` as run {name}", runbook.value);
                effects.push(Effect::StartRun {
                    service: service.service.clone(),
                    runbook: runbook.value.clone(),
                    name,
                    params,
                });
            }
            PolicyAction::Human => {
                service.status = ServiceStatus::NeedsHuman;
                service.note = "its policy leaves it to a person (no automation)".to_string();
            }
        }
    }
    effects
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
                    service.status = ServiceStatus::Disabled;
                    service.note = format!("run {name} took its hosts out");
                }
            }
            Some(RunOutcome::Failed(why)) => {
                // A runbook acts on all its hosts together: its failure is every host's.
                let failed = service.disabled.len() as u64;
                if !enabling && failed <= service.allowed_failures {
                    service.status = ServiceStatus::Disabled;
                    service.failed_hosts = service.disabled.clone();
                    service.note = format!(
                        "run {name} failed ({why}), within the {} failures its policy accepts",
                        service.allowed_failures
                    );
                } else {
                    service.status = ServiceStatus::NeedsHuman;
                    service.failed_hosts = service.disabled.clone();
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
            (PolicyAction::Runbook { runbook, with }, ServiceStatus::Disabled)
                if facts.runbooks_with_phase.contains(&runbook.value) =>
            {
                let name = run_name(current.id, &service.service, "enable");
                service.run_name = Some(name.clone());
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
