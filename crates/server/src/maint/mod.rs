//! Maintenance in the server: planning (a dry run), scheduling (capacity reserved atomically
//! in the store), operator controls (approve, confirm, cancel, finish, re-enable a host), the
//! calendar per failure domain, whether a host is in service, and the background driver that
//! moves every maintenance through its flow ([`flow`]).
//!
//! Everything a maintenance knows is in its stored record; the flow's own facts (per-service
//! actions and confirmations, runs started, the last preflight, its history) are its
//! `details`. Any replica may move any maintenance: each change is compare-and-set on the
//! record's version, and side effects (runs, notifications) follow only the commit that
//! decided them; runs are started idempotently by name, so a second start finds the first.

pub mod driver;
pub mod flow;

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use levee_fleet::{
    BlastRadius, BlastRadiusLimit, FleetIndex, PolicySet, PreflightReport, Reservation, Window,
    blast_radius, preflight,
};
use levee_model::{DomainLevel, MaintenanceType, parse_duration_ms, parse_instant_ms};
use levee_store::{MaintenanceFilter, MaintenanceRecord, Scheduled};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::App;
use crate::auth::{Caller, Role};
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::machines::validate_id;

pub use flow::{
    Details, Fallback, OnPreflightFailure, RemovalLimits, Rollout, ServiceFlow, ServiceStatus,
    Signed,
};

/// The flow begins this long before the window: preflight again, then disable, so hosts are
/// out of service when the work starts.
pub const DISABLE_LEAD_MS: i64 = 10 * 60 * 1_000;
/// Longest maintenance window.
pub const MAX_MAINTENANCE_DURATION_MS: u64 = 30 * 24 * 3_600 * 1_000;
/// Furthest ahead a maintenance may start.
pub const MAX_SCHEDULE_AHEAD_MS: i64 = 400 * 24 * 3_600 * 1_000;
/// A start this far in the past is still accepted (clocks of clients differ a little); it is
/// taken as "now".
pub const START_IN_PAST_TOLERANCE_MS: i64 = 60 * 1_000;
/// Scopes past these need a second person's approval unless the server says otherwise.
pub const DEFAULT_APPROVAL_MAX_HOSTS: usize = 50;
pub const DEFAULT_APPROVAL_MAX_RACKS: usize = 2;
/// Longest reason an operator may give, in bytes.
pub const MAX_REASON_BYTES: usize = 1_000;
/// Times a control is re-decided when the driver changed the maintenance meanwhile.
pub const CONTROL_ATTEMPTS: u32 = 5;
/// The calendar's span unless asked otherwise, and its longest.
pub const CALENDAR_DEFAULT_DAYS: u32 = 14;
pub const CALENDAR_MAX_DAYS: u32 = 366;

/// The thresholds past which a scope needs a second person's approval by default.
pub fn default_approval_limit() -> BlastRadiusLimit {
    BlastRadiusLimit {
        max_hosts: Some(DEFAULT_APPROVAL_MAX_HOSTS),
        max_domains: vec![(DomainLevel::Rack, DEFAULT_APPROVAL_MAX_RACKS)],
        ..BlastRadiusLimit::default()
    }
}

/// A maintenance to plan or schedule.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// The fleet; may be left out when only one is stored.
    #[serde(default)]
    pub fleet: Option<String>,
    /// A selector (`rack=a-r1`, `rack in (a-r4, a-r5)`); an empty one is an error.
    pub scope: String,
    /// `network`, `power`, `reboot` or a custom type.
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339 (`2030-01-01T10:00:00Z`), `now`, or `+DURATION` from now (`+2h`).
    pub start: String,
    /// `2h`, `30m`.
    pub duration: String,
    /// Who does the work (a team); the caller when left out.
    #[serde(default)]
    pub owner: Option<String>,
    /// An id of your choosing; `m-...` when left out.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `refuse` (default): a failing preflight refuses it. `needs_human`: store it waiting for
    /// people to confirm the failing services by hand.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub on_preflight_failure: Option<OnPreflightFailure>,
    /// Until when people may answer (approve, confirm): RFC 3339 or `+DURATION` from now. The
    /// end of the window when left out.
    #[serde(default)]
    pub human_deadline: Option<String>,
    /// `cancel` (default) or `fail` when nobody answered by the deadline.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub on_deadline: Option<Fallback>,
    /// Take the scope one failure domain at a time: `rack`, `power`, `switch`, `row`, ...
    #[serde(default)]
    pub one_domain_per_step: Option<String>,
    /// Least time between the starts of two disable steps (`5m`); none when left out.
    #[serde(default)]
    pub step_interval: Option<String>,
}

/// What scheduling would do, with nothing changed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MaintenancePlan {
    pub fleet: String,
    pub scope: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub start: String,
    pub end: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub hosts: Vec<String>,
    #[schema(value_type = Object)]
    pub blast_radius: BlastRadius,
    /// Why a second person must approve; empty when nobody needs to.
    pub approval_required: Vec<String>,
    /// Capacity before and after per pool, against the floors.
    #[schema(value_type = Object)]
    pub preflight: PreflightReport,
    /// The preflight in sentences.
    pub explanation: String,
    /// Each affected service's action, and its hosts.
    #[schema(value_type = Vec<Object>)]
    pub services: Vec<ServiceFlow>,
    /// How the disable flow is paced: one failure domain per step, the interval.
    #[schema(value_type = Object)]
    pub rollout: Rollout,
    /// The disable flow's steps, when no removal rate limit holds them back.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<flow::StepRecord>,
    /// The server's removal rate limits, which may hold steps back.
    #[schema(value_type = Object)]
    pub removal_limits: RemovalLimits,
    /// Maintenances overlapping in time that already hold some of these hosts.
    pub conflicts: Vec<String>,
    /// `schedule`, `needs_approval`, `needs_human` or `refuse`: what scheduling it now gives.
    pub outcome: String,
}

/// The hosts `record` has out of service now: a repair's host until it ends, a
/// maintenance's disabled hosts and unavailable spares.
pub fn hosts_out(record: &MaintenanceRecord) -> Result<BTreeSet<String>, ApiError> {
    if !record.reserves() {
        return Ok(BTreeSet::new());
    }
    if record.kind == crate::remediation::REPAIR_KIND {
        return Ok(record.hosts.iter().cloned().collect());
    }
    Ok(Details::from_value(&record.details)
        .map_err(ApiError::internal)?
        .hosts_out())
}

/// A stored maintenance.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MaintenanceView {
    pub id: String,
    pub fleet: String,
    pub scope: String,
    pub hosts: Vec<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub start: String,
    pub end: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub owner: String,
    /// `scheduled`, `blocked`, `preflight`, `needs_human`, `disabling`, `in_maintenance`,
    /// `enabling`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Why it is in its state.
    pub why: String,
    /// What would move it on; empty when nothing is needed.
    pub unblock: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: i64,
    /// Hosts it has out of service now.
    pub hosts_out: Vec<String>,
    /// The flow's facts: per-service progress, the last preflight, its history (a repair's:
    /// its rule, alert, run and ticket).
    #[schema(value_type = Object)]
    pub details: Value,
}

impl MaintenanceView {
    pub fn new(record: &MaintenanceRecord) -> Result<MaintenanceView, ApiError> {
        Ok(MaintenanceView {
            id: record.id.clone(),
            fleet: record.fleet.clone(),
            scope: record.selector.clone(),
            hosts: record.hosts.clone(),
            kind: record.kind.clone(),
            start: rfc3339(record.start_ms),
            end: rfc3339(record.end_ms),
            start_ms: record.start_ms,
            end_ms: record.end_ms,
            owner: record.owner.clone(),
            state: record.state.clone(),
            why: record.why.clone(),
            unblock: record.unblock.clone(),
            created_by: record.created_by.clone(),
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            version: record.version,
            hosts_out: hosts_out(record)?.into_iter().collect(),
            details: record.details.clone(),
        })
    }
}

/// An operator's control of a maintenance.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceControl {
    /// `approve` (a second person), `confirm` (a service's hosts were handled by hand),
    /// `cancel`, `finish` (the work ended early), `enable_host` (put one host back now);
    /// for a repair, `confirm_repair` (the host is fixed: back in service) or `cancel`.
    pub action: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    /// Why; required.
    pub reason: String,
}

/// Query of the listing.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceQuery {
    #[serde(default)]
    pub fleet: Option<String>,
    /// Only those still holding capacity (not done or cancelled).
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Query of the calendar.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarQuery {
    #[serde(default)]
    pub fleet: Option<String>,
    /// `rack` (default), `row`, `power`, `switch`, `datacenter`, `region`.
    #[serde(default)]
    pub by: Option<String>,
    /// RFC 3339; now when left out.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub days: Option<u32>,
}

/// Upcoming maintenance per failure domain.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CalendarView {
    pub fleet: String,
    pub by: String,
    pub from: String,
    pub to: String,
    pub domains: Vec<CalendarDomain>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CalendarDomain {
    pub domain: String,
    pub entries: Vec<CalendarEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CalendarEntry {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub start: String,
    pub end: String,
    pub state: String,
    pub owner: String,
    /// Hosts of this domain it holds.
    pub hosts: usize,
}

/// Whether a host is in service, and if not, which maintenances hold it out.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HostServingView {
    pub host: String,
    pub fleet: String,
    pub serving: bool,
    /// `maintenance ID (state): why` per maintenance holding it out.
    pub out_because: Vec<String>,
}

/// A fleet with its index and policies, loaded for one question.
pub(crate) struct FleetContext {
    pub name: String,
    pub index: FleetIndex,
    pub policies: PolicySet,
}

/// The request, checked and resolved.
struct Prepared {
    context: FleetContext,
    kind: MaintenanceType,
    hosts: Vec<String>,
    window: Window,
    duration_ms: u64,
    human_deadline_ms: i64,
    plan: MaintenancePlan,
}

fn reason_of(reason: &str) -> Result<String, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApiError::bad_request(
            "`reason` is required: say why, it goes to the audit log",
        ));
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::bad_request(format!(
            "`reason` is {} bytes; at most {MAX_REASON_BYTES}",
            reason.len()
        )));
    }
    Ok(reason.to_string())
}

/// `now`, `+2h` or an instant.
fn parse_when(what: &str, text: &str, now_ms: i64) -> Result<i64, ApiError> {
    let text = text.trim();
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some(after) = text.strip_prefix('+') {
        let ms = parse_duration_ms(after)
            .map_err(|e| ApiError::bad_request(format!("`{what}`: {e}")))?;
        return i64::try_from(ms)
            .ok()
            .and_then(|ms| now_ms.checked_add(ms))
            .ok_or_else(|| ApiError::bad_request(format!("`{what}` is too far ahead")));
    }
    parse_instant_ms(text, &jiff::tz::TimeZone::UTC).map_err(|e| {
        ApiError::bad_request(format!(
            "`{what}`: {e} Or write `now` or `+DURATION` (such as `+2h`)."
        ))
    })
}

/// Reservations of every other maintenance of `fleet` still holding capacity.
pub(crate) fn reservations_of(
    records: &[MaintenanceRecord],
    fleet: &str,
    except: Option<&str>,
) -> Vec<Reservation> {
    records
        .iter()
        .filter(|m| m.reserves() && m.fleet == fleet && Some(m.id.as_str()) != except)
        .map(|m| Reservation {
            maintenance_id: m.id.clone(),
            hosts: m.hosts.clone(),
            window: Window {
                start_ms: m.start_ms,
                end_ms: m.end_ms,
            },
        })
        .collect()
}

/// Maintenances overlapping `window` that hold one of `hosts`, as `ID (host, host)`.
fn same_host_conflicts(hosts: &[String], window: Window, others: &[Reservation]) -> Vec<String> {
    let wanted: BTreeSet<&str> = hosts.iter().map(String::as_str).collect();
    others
        .iter()
        .filter(|r| r.overlaps(window))
        .filter_map(|r| {
            let shared: Vec<&str> = r
                .hosts
                .iter()
                .map(String::as_str)
                .filter(|h| wanted.contains(h))
                .collect();
            (!shared.is_empty()).then(|| {
                let shown: Vec<&str> = shared.iter().take(5).copied().collect();
                format!(
                    "{} ({}{})",
                    r.maintenance_id,
                    shown.join(", "),
                    if shared.len() > shown.len() {
                        format!(" and {} more", shared.len() - shown.len())
                    } else {
                        String::new()
                    }
                )
            })
        })
        .collect()
}

/// The request's pacing of the disable flow, checked.
fn parse_rollout(request: &MaintenanceRequest) -> Result<Rollout, ApiError> {
    let one_domain_per_step = match request.one_domain_per_step.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(key) => Some(DomainLevel::from_key(key).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`one_domain_per_step`: `{key}` is not a failure domain level; use one of {}",
                DomainLevel::ALL
                    .iter()
                    .map(|l| l.key())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
    };
    let step_interval_ms = match request.step_interval.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(text) => {
            let ms = parse_duration_ms(text)
                .map_err(|e| ApiError::bad_request(format!("`step_interval`: {e}")))?;
            if ms > flow::MAX_STEP_INTERVAL_MS {
                return Err(ApiError::bad_request(format!(
                    "`step_interval` is at most {} hours",
                    flow::MAX_STEP_INTERVAL_MS / 3_600_000
                )));
            }
            ms
        }
    };
    Ok(Rollout {
        one_domain_per_step,
        step_interval_ms,
    })
}

fn new_maintenance_id(now_ms: i64) -> String {
    let date = jiff::Timestamp::from_millisecond(now_ms)
        .map(|t| t.strftime("%Y%m%d").to_string())
        .unwrap_or_else(|_| "0".to_string());
    let random: u32 = rand::random();
    format!("m-{date}-{random:08x}")
}

impl App {
    /// The fleet `name` (or the only one) with its index and the policies of its services.
    pub(crate) async fn fleet_context(&self, name: Option<&str>) -> Result<FleetContext, ApiError> {
        let stored = self.fleet(name).await?;
        let index = FleetIndex::build(&stored.fleet).map_err(ApiError::internal)?;
        let policies: Vec<_> = self
            .stored_policies()
            .await?
            .into_iter()
            .map(|p| p.policy)
            .filter(|p| index.service_id(&p.service.value).is_some())
            .collect();
        let policies = PolicySet::new(&index, policies).map_err(|diagnostics| {
            ApiError::internal(format!(
                "the stored maintenance policies do not fit the fleet: {}",
                diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        Ok(FleetContext {
            name: stored.fleet.name,
            index,
            policies,
        })
    }

    async fn prepare_maintenance(
        &self,
        request: &MaintenanceRequest,
    ) -> Result<Prepared, ApiError> {
        let now = self.now_ms();
        let context = self.fleet_context(request.fleet.as_deref()).await?;
        let kind = MaintenanceType::parse(request.kind.trim()).map_err(|e| {
            ApiError::bad_request(format!(
                "`type`: {e} Use network, power, reboot or a custom type name."
            ))
        })?;
        let scope = context.index.resolve(&request.scope).map_err(|error| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_scope",
                format!("`scope`: {error}"),
            )
        })?;
        let hosts = context.index.names_of(&scope);
        let mut start_ms = parse_when("start", &request.start, now)?;
        if start_ms < now - START_IN_PAST_TOLERANCE_MS {
            return Err(ApiError::bad_request(format!(
                "`start` ({}) is in the past (now is {}); a maintenance starts now or later",
                rfc3339(start_ms),
                rfc3339(now)
            )));
        }
        start_ms = start_ms.max(now);
        if start_ms > now + MAX_SCHEDULE_AHEAD_MS {
            return Err(ApiError::bad_request(format!(
                "`start` ({}) is more than {} days ahead",
                rfc3339(start_ms),
                MAX_SCHEDULE_AHEAD_MS / 86_400_000
            )));
        }
        let duration_ms = parse_duration_ms(request.duration.trim())
            .map_err(|e| ApiError::bad_request(format!("`duration`: {e}")))?;
        if duration_ms == 0 || duration_ms > MAX_MAINTENANCE_DURATION_MS {
            return Err(ApiError::bad_request(format!(
                "`duration` must be more than 0 and at most {} days",
                MAX_MAINTENANCE_DURATION_MS / 86_400_000
            )));
        }
        let window = Window {
            start_ms,
            end_ms: start_ms + duration_ms as i64,
        };
        let human_deadline_ms = match &request.human_deadline {
            Some(text) => {
                let deadline = parse_when("human_deadline", text, now)?;
                if deadline <= now {
                    return Err(ApiError::bad_request(
                        "`human_deadline` is not in the future",
                    ));
                }
                deadline
            }
            None => window.end_ms,
        };
        let stored = self
            .store
            .maintenances(&MaintenanceFilter {
                reserving_only: true,
                fleet: Some(context.name.clone()),
                limit: 0,
            })
            .await?;
        let others = reservations_of(&stored, &context.name, request.id.as_deref());
        let conflicts = same_host_conflicts(&hosts, window, &others);
        let report = preflight(&context.index, &scope, &[], &others, window);
        let services = flow::service_flows(
            &context.index,
            &context.policies,
            &hosts,
            &kind,
            duration_ms,
            &report,
        )
        .map_err(ApiError::internal)?;
        let rollout = parse_rollout(request)?;
        let steps = flow::planned_steps(
            &context.index,
            &context.policies,
            &hosts,
            window,
            &services,
            &rollout,
        );
        let radius = blast_radius(&context.index, &scope);
        let approval_required = radius.exceeded(&self.maint_approval);
        let mode = request.on_preflight_failure.unwrap_or_default();
        let outcome =
            if !conflicts.is_empty() || (!report.passed && mode == OnPreflightFailure::Refuse) {
                "refuse"
            } else if !approval_required.is_empty() {
                "needs_approval"
            } else if !report.passed {
                "needs_human"
            } else {
                "schedule"
            };
        let plan = MaintenancePlan {
            fleet: context.name.clone(),
            scope: request.scope.trim().to_string(),
            kind: kind.to_string(),
            start: rfc3339(window.start_ms),
            end: rfc3339(window.end_ms),
            start_ms: window.start_ms,
            end_ms: window.end_ms,
            hosts: hosts.clone(),
            blast_radius: radius,
            approval_required,
            explanation: report.explain(),
            preflight: report,
            services,
            rollout,
            steps,
            removal_limits: self.removal_limits.clone(),
            conflicts,
            outcome: outcome.to_string(),
        };
        Ok(Prepared {
            context,
            kind,
            hosts,
            window,
            duration_ms,
            human_deadline_ms,
            plan,
        })
    }

    /// A dry run: resolved hosts, capacity before and after per pool, each service's action,
    /// whether it needs approval, and what scheduling would give. Nothing changes.
    pub async fn plan_maintenance(
        &self,
        caller: &Caller,
        request: &MaintenanceRequest,
    ) -> Result<MaintenancePlan, ApiError> {
        caller.require(Role::Viewer)?;
        Ok(self.prepare_maintenance(request).await?.plan)
    }

    /// Schedules a maintenance: refused (409, explained) when it shares hosts with an
    /// overlapping one, or when its preflight fails (unless asked to wait for people);
    /// otherwise stored with its capacity reserved, decided inside the store's write
    /// transaction against every other reservation.
    pub async fn schedule_maintenance(
        &self,
        caller: &Caller,
        request: &MaintenanceRequest,
    ) -> Result<MaintenanceView, ApiError> {
        caller.require(Role::Operator)?;
        caller.require_unscoped()?;
        if let Some(id) = &request.id {
            validate_id("maintenance id", id)?;
        }
        if let Some(owner) = &request.owner {
            validate_id("owner", owner)?;
        }
        let prepared = self.prepare_maintenance(request).await?;
        let plan = &prepared.plan;
        if !plan.conflicts.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "overlapping_maintenance",
                format!(
                    "these hosts are already in maintenance during that window: {}; pick \
                     another window or scope, or cancel those first",
                    plan.conflicts.join("; ")
                ),
            )
            .with_details(json!({ "conflicts": plan.conflicts })));
        }
        let mode = request.on_preflight_failure.unwrap_or_default();
        if !plan.preflight.passed && mode == OnPreflightFailure::Refuse {
            return Err(preflight_refusal(&plan.preflight));
        }
        let now = self.now_ms();
        let id = request
            .id
            .clone()
            .unwrap_or_else(|| new_maintenance_id(now));
        let mut details = Details {
            description: request.description.clone(),
            duration_ms: prepared.duration_ms,
            on_preflight_failure: mode,
            human_deadline_ms: prepared.human_deadline_ms,
            on_deadline: request.on_deadline.unwrap_or_default(),
            approval_required: plan.approval_required.clone(),
            approved: None,
            preflight: Some(plan.preflight.clone()),
            preflight_at_ms: Some(now),
            services: plan.services.clone(),
            spares_unavailable: Vec::new(),
            manually_enabled: BTreeMap::new(),
            cancel_requested: None,
            finished_early: None,
            resume_to: None,
            rollout: plan.rollout.clone(),
            steps: Vec::new(),
            history: Vec::new(),
        };
        let flow_start = prepared.window.start_ms - DISABLE_LEAD_MS;
        let (state, why, unblock) = if !plan.approval_required.is_empty() {
            (
                flow::BLOCKED,
                format!(
                    "waiting for a second person's approval: the scope has {}",
                    plan.approval_required.join(", ")
                ),
                format!(
                    "someone other than {} approves (`levee maint approve {id} --reason ...`)",
                    caller.name
                ),
            )
        } else if !plan.preflight.passed {
            let needing: Vec<String> = details
                .services
                .iter_mut()
                .filter(|s| !s.preflight_passed)
                .map(|s| {
                    s.status = ServiceStatus::NeedsHuman;
                    s.note = "its pool would drop below its floor: automation may not take \
                              these hosts"
                        .to_string();
                    s.service.clone()
                })
                .collect();
            details.resume_to = Some(flow::PREFLIGHT.to_string());
            (
                flow::NEEDS_HUMAN,
                format!(
                    "waiting for a person to handle {}: {}",
                    needing.join(", "),
                    plan.preflight.explain()
                ),
                format!(
                    "once their hosts are handled by hand, confirm each service (`levee maint \
                     confirm {id} --service SERVICE --reason ...`), or cancel"
                ),
            )
        } else {
            (
                flow::SCHEDULED,
                format!(
                    "preflight passed; the flow starts at {} ({} min before the window)",
                    rfc3339(flow_start.max(now)),
                    DISABLE_LEAD_MS / 60_000
                ),
                String::new(),
            )
        };
        details.history.push(flow::HistoryEntry {
            at_ms: now,
            state: state.to_string(),
            why: why.clone(),
        });
        let record = MaintenanceRecord {
            id: id.clone(),
            fleet: prepared.context.name.clone(),
            selector: plan.scope.clone(),
            hosts: prepared.hosts.clone(),
            kind: prepared.kind.to_string(),
            start_ms: prepared.window.start_ms,
            end_ms: prepared.window.end_ms,
            owner: request.owner.clone().unwrap_or_else(|| caller.name.clone()),
            state: state.to_string(),
            why,
            unblock,
            created_by: caller.name.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
            details: details.to_value(),
        };
        // Decided again inside the write transaction, against every reservation stored by
        // then: the plan above may be stale by the time the writer gets to it.
        let index = prepared.context.index;
        let fleet = prepared.context.name.clone();
        let candidate = Reservation {
            maintenance_id: id.clone(),
            hosts: prepared.hosts.clone(),
            window: prepared.window,
        };
        let passed_before = plan.preflight.passed;
        let admit: levee_store::Admit = Box::new(move |stored: &[MaintenanceRecord]| {
            let others = reservations_of(stored, &fleet, Some(&candidate.maintenance_id));
            let conflicts = same_host_conflicts(&candidate.hosts, candidate.window, &others);
            if !conflicts.is_empty() {
                return Err(json!({
                    "code": "overlapping_maintenance",
                    "message": format!(
                        "these hosts were just put in maintenance during that window: {}",
                        conflicts.join("; ")
                    ),
                    "conflicts": conflicts,
                }));
            }
            let report = levee_fleet::admit(&index, &candidate, &others, &[])
                .map_err(|e| json!({ "code": "invalid_scope", "message": e.to_string() }))?;
            if report.passed || (!passed_before && mode == OnPreflightFailure::NeedsHuman) {
                Ok(())
            } else {
                Err(json!({
                    "code": "preflight_failed",
                    "message": report.explain(),
                    "preflight": report,
                }))
            }
        });
        let audit = self.audit_entry(
            caller,
            "maintenance.schedule",
            &id,
            json!({
                "fleet": record.fleet, "scope": record.selector, "type": record.kind,
                "start": rfc3339(record.start_ms), "end": rfc3339(record.end_ms),
                "hosts": record.hosts.len(), "state": record.state,
            }),
        );
        match self
            .store
            .schedule_maintenance(record, admit, Some(audit))
            .await
        {
            Ok(Scheduled::Stored(stored)) => {
                if stored.state == flow::NEEDS_HUMAN || stored.state == flow::BLOCKED {
                    self.notify_maintenance(
                        if stored.state == flow::BLOCKED {
                            "maintenance_needs_approval"
                        } else {
                            "maintenance_needs_human"
                        },
                        &stored,
                        format!(
                            "maintenance {} ({} of {}): {}. {}",
                            stored.id, stored.kind, stored.selector, stored.why, stored.unblock
                        ),
                    );
                }
                MaintenanceView::new(&stored)
            }
            Ok(Scheduled::Refused(explanation)) => {
                let code = match explanation.get("code").and_then(Value::as_str) {
                    Some("overlapping_maintenance") => "overlapping_maintenance",
                    Some("invalid_scope") => "invalid_scope",
                    _ => "preflight_failed",
                };
                let message = explanation
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("refused")
                    .to_string();
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    code,
                    format!("{message} (decided against the maintenances stored at that moment)"),
                )
                .with_details(explanation))
            }
            Err(levee_store::Error::Conflict(_)) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "exists",
                format!("a maintenance `{id}` already exists; pick another id"),
            )),
            Err(error) => Err(error.into()),
        }
    }

    /// Maintenances by start time.
    pub async fn maintenance_views(
        &self,
        caller: &Caller,
        query: &MaintenanceQuery,
    ) -> Result<Vec<MaintenanceView>, ApiError> {
        caller.require(Role::Viewer)?;
        let limit = crate::http::api::page_limit(query.limit)?;
        let records = self
            .store
            .maintenances(&MaintenanceFilter {
                reserving_only: query.active.unwrap_or(false),
                fleet: query.fleet.clone(),
                limit,
            })
            .await?;
        records.iter().map(MaintenanceView::new).collect()
    }

    pub async fn maintenance_view(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<MaintenanceView, ApiError> {
        caller.require(Role::Viewer)?;
        let record = self
            .store
            .maintenance(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no maintenance `{id}`")))?;
        MaintenanceView::new(&record)
    }

    /// Applies an operator's control, audited with who and why; re-decided against the
    /// latest record when the driver changed it meanwhile.
    pub async fn control_maintenance(
        &self,
        caller: &Caller,
        id: &str,
        control: &MaintenanceControl,
    ) -> Result<MaintenanceView, ApiError> {
        caller.require(Role::Operator)?;
        caller.require_unscoped()?;
        let reason = reason_of(&control.reason)?;
        for _ in 0..CONTROL_ATTEMPTS {
            let record = self
                .store
                .maintenance(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no maintenance `{id}`")))?;
            let now = self.now_ms();
            let next = if record.kind == crate::remediation::REPAIR_KIND {
                crate::remediation::apply_repair_control(&record, caller, control, &reason, now)?
            } else {
                apply_control(&record, caller, control, &reason, now)?
            };
            let audit = self.audit_entry(
                caller,
                &format!("maintenance.{}", control.action),
                id,
                json!({
                    "reason": reason, "service": control.service, "host": control.host,
                    "state": next.state,
                }),
            );
            match self
                .store
                .update_maintenance(next.clone(), Some(audit))
                .await
            {
                Ok(()) => {
                    self.maint_wake.notify_one();
                    return MaintenanceView::new(&next);
                }
                Err(levee_store::Error::Conflict(_)) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the maintenance kept changing while this control was decided; retry",
        ))
    }

    /// Upcoming maintenance per failure domain.
    pub async fn maintenance_calendar(
        &self,
        caller: &Caller,
        query: &CalendarQuery,
    ) -> Result<CalendarView, ApiError> {
        caller.require(Role::Viewer)?;
        let context = self.fleet_context(query.fleet.as_deref()).await?;
        let by = query.by.as_deref().unwrap_or("rack");
        let level = DomainLevel::ALL
            .into_iter()
            .find(|level| level.key() == by)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`by`: `{by}` is not a failure domain; use region, datacenter, row, rack, \
                 power or switch"
                ))
            })?;
        let now = self.now_ms();
        let from = match &query.from {
            Some(text) => parse_when("from", text, now)?,
            None => now,
        };
        let days = query.days.unwrap_or(CALENDAR_DEFAULT_DAYS);
        if days == 0 || days > CALENDAR_MAX_DAYS {
            return Err(ApiError::bad_request(format!(
                "`days` must be between 1 and {CALENDAR_MAX_DAYS}"
            )));
        }
        let to = from + i64::from(days) * 86_400_000;
        let window = Window {
            start_ms: from,
            end_ms: to,
        };
        let records = self
            .store
            .maintenances(&MaintenanceFilter {
                reserving_only: false,
                fleet: Some(context.name.clone()),
                limit: 0,
            })
            .await?;
        let mut domains: BTreeMap<String, Vec<CalendarEntry>> = BTreeMap::new();
        for record in &records {
            let span = Window {
                start_ms: record.start_ms,
                end_ms: record.end_ms,
            };
            if !span.overlaps(window)
                || record.state == flow::CANCELLED
                || record.kind == crate::remediation::REPAIR_KIND
            {
                continue;
            }
            let mut per_domain: BTreeMap<String, usize> = BTreeMap::new();
            for host in &record.hosts {
                let domain = context
                    .index
                    .host(host)
                    .and_then(|h| context.index.domain_of(h, level))
                    .unwrap_or("-")
                    .to_string();
                *per_domain.entry(domain).or_default() += 1;
            }
            for (domain, hosts) in per_domain {
                domains.entry(domain).or_default().push(CalendarEntry {
                    id: record.id.clone(),
                    kind: record.kind.clone(),
                    start: rfc3339(record.start_ms),
                    end: rfc3339(record.end_ms),
                    state: record.state.clone(),
                    owner: record.owner.clone(),
                    hosts,
                });
            }
        }
        Ok(CalendarView {
            fleet: context.name,
            by: by.to_string(),
            from: rfc3339(from),
            to: rfc3339(to),
            domains: domains
                .into_iter()
                .map(|(domain, entries)| CalendarDomain { domain, entries })
                .collect(),
        })
    }

    /// Whether `host` is in service: a load balancer's health check may ask this.
    pub async fn host_serving(
        &self,
        caller: &Caller,
        host: &str,
    ) -> Result<HostServingView, ApiError> {
        caller.require(Role::Viewer)?;
        let fleets = self.stored_fleets().await?;
        let fleet = fleets
            .iter()
            .find(|f| f.fleet.hosts.iter().any(|h| h.name == host))
            .ok_or_else(|| ApiError::not_found(format!("no fleet has a host `{host}`")))?;
        let records = self
            .store
            .maintenances(&MaintenanceFilter {
                reserving_only: true,
                fleet: Some(fleet.fleet.name.clone()),
                limit: 0,
            })
            .await?;
        let mut out_because = Vec::new();
        if fleet.fleet.hosts.iter().any(|h| h.name == host && h.down) {
            out_because.push(format!("the fleet `{}` marks it down", fleet.fleet.name));
        }
        for record in &records {
            if hosts_out(record).is_ok_and(|out| out.contains(host)) {
                out_because.push(format!(
                    "maintenance {} ({}): {}",
                    record.id, record.state, record.kind
                ));
            }
        }
        Ok(HostServingView {
            host: host.to_string(),
            fleet: fleet.fleet.name.clone(),
            serving: out_because.is_empty(),
            out_because,
        })
    }

    /// Sends a maintenance notification to the configured webhooks.
    pub(crate) fn notify_maintenance(
        &self,
        event: &'static str,
        record: &MaintenanceRecord,
        message: String,
    ) {
        let owners: BTreeSet<String> = Details::from_value(&record.details)
            .map(|d| d.services.into_iter().filter_map(|s| s.owner).collect())
            .unwrap_or_default();
        self.runs.notifier.notify_event(
            event,
            &json!({
                "kind": event,
                "maintenance": record.id,
                "fleet": record.fleet,
                "scope": record.selector,
                "type": record.kind,
                "owner": record.owner,
                "service_owners": owners,
                "state": record.state,
                "why": record.why,
                "unblock": record.unblock,
                "at_ms": self.now_ms(),
                "text": format!("Levee {message}"),
            }),
        );
    }
}

fn preflight_refusal(report: &PreflightReport) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "preflight_failed",
        format!(
            "{} Nothing was scheduled; shrink the scope, move the window, or schedule with \
             `on_preflight_failure: needs_human` (`levee maint schedule \
             --needs-human-on-failure`) to have people handle the failing services.",
            report.explain()
        ),
    )
    .with_details(json!({ "preflight": report }))
}

/// The record after `control`, or why it does not apply.
fn apply_control(
    record: &MaintenanceRecord,
    caller: &Caller,
    control: &MaintenanceControl,
    reason: &str,
    now: i64,
) -> Result<MaintenanceRecord, ApiError> {
    let mut details = Details::from_value(&record.details).map_err(ApiError::internal)?;
    let signed = Signed {
        by: caller.name.clone(),
        at_ms: now,
        reason: reason.to_string(),
    };
    let conflict = |message: String| ApiError::new(StatusCode::CONFLICT, "not_now", message);
    if flow::is_final(&record.state) {
        return Err(conflict(format!(
            "maintenance `{}` is {}: nothing more can change",
            record.id, record.state
        )));
    }
    let mut next = record.clone();
    match control.action.as_str() {
        "approve" => {
            if record.state != flow::BLOCKED || details.approved.is_some() {
                return Err(conflict(format!(
                    "maintenance `{}` is {} and waits for no approval",
                    record.id, record.state
                )));
            }
            if caller.name == record.created_by {
                let hint = if caller.name == crate::auth::ANONYMOUS {
                    " (without tokens everyone is `anonymous`: create a token per person with \
                     `levee token create` so someone else can approve)"
                } else {
                    ""
                };
                return Err(ApiError::forbidden(format!(
                    "{} scheduled this maintenance; a second person must approve it{hint}",
                    caller.name
                )));
            }
            details.approved = Some(signed);
        }
        "confirm" => {
            let service = control.service.as_deref().ok_or_else(|| {
                ApiError::bad_request("`service` is required: which service was handled by hand")
            })?;
            let known: Vec<String> = details.services.iter().map(|s| s.service.clone()).collect();
            let flow = details
                .services
                .iter_mut()
                .find(|s| s.service == service)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`{service}` is not affected by this maintenance; affected: {}",
                        known.join(", ")
                    ))
                })?;
            if !matches!(
                flow.status,
                ServiceStatus::NeedsHuman | ServiceStatus::Pending
            ) {
                return Err(conflict(format!(
                    "service `{service}` is {:?}, not waiting for a person",
                    flow.status
                )));
            }
            flow.status = ServiceStatus::ByHand;
            flow.note = format!(
                "{} confirmed its hosts were handled by hand: {reason}",
                caller.name
            );
            flow.confirmed = Some(signed);
        }
        "cancel" => {
            if details.cancel_requested.is_some() {
                return Err(conflict(format!(
                    "maintenance `{}` is already being cancelled",
                    record.id
                )));
            }
            details.cancel_requested = Some(signed);
            if !details.changed_anything()
                && matches!(
                    record.state.as_str(),
                    flow::SCHEDULED | flow::BLOCKED | flow::NEEDS_HUMAN | flow::PREFLIGHT
                )
            {
                next.state = flow::CANCELLED.to_string();
                next.why = format!("cancelled by {}: {reason}", caller.name);
                next.unblock = String::new();
                details.history.push(flow::HistoryEntry {
                    at_ms: now,
                    state: next.state.clone(),
                    why: next.why.clone(),
                });
            }
        }
        "finish" => {
            if record.state != flow::IN_MAINTENANCE {
                return Err(conflict(format!(
                    "maintenance `{}` is {}; only one in maintenance can finish early",
                    record.id, record.state
                )));
            }
            details.finished_early = Some(signed);
        }
        "enable_host" => {
            let host = control.host.as_deref().ok_or_else(|| {
                ApiError::bad_request("`host` is required: which host to put back in service")
            })?;
            if !details.hosts_out().contains(host) {
                return Err(conflict(format!(
                    "host `{host}` is not out of service by maintenance `{}`",
                    record.id
                )));
            }
            details.manually_enabled.insert(host.to_string(), signed);
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown action `{other}`; use approve, confirm, cancel, finish or enable_host"
            )));
        }
    }
    next.details = details.to_value();
    next.version += 1;
    next.updated_at_ms = now;
    Ok(next)
}
