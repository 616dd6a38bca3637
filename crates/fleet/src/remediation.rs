//! Alert-driven remediation (FBAR): from an Alertmanager alert, the remediation state and the
//! fleet, whether to repair a host now with which rule and runbook, or why not.
//!
//! [`decide`] is pure: the same fleet, rules, state, alert and `now_ms` always give the same
//! [`Decision`]. It checks, in this order, and the first check that fails is the answer:
//!
//! 1. a rule matches the alert's labels (rules of another fleet never do; the first rule in
//!    name order decides);
//! 2. the alert names a host (the rule's `host_label`, `:port` stripped) of the fleet;
//! 3. a resolved alert starts nothing: it says whether the host's repair may be confirmed;
//! 4. the host is not already in repair (Alertmanager repeats notifications), not disabled by
//!    an operator, not in a maintenance whose window holds now, and not in its cooldown;
//! 5. no rule's short circuit is tripped: more hosts unhealthy within its window than it
//!    allows (counting this one) stops all automatic remediation of the fleet, until enough of
//!    them age out of the window;
//! 6. the overall and per-pool limits on hosts in repair leave room for one more;
//! 7. capacity: the host's repair is a [`Reservation`] from now on with no end, admitted by
//!    [`admit`] against the stored maintenance reservations with every down, disabled and
//!    in-repair host out of service: remediation passes the same floors as maintenance.
//!
//! A batch of alerts ([`decide_payload`]) is decided one alert after the other, each against
//! the state the ones before it left ([`RemediationState::record`]), so one notification with
//! ten alerts of one pool never repairs more hosts than the limits allow. Like [`admit`], the
//! caller must decide and store under one lock (the store's writer), so two notifications
//! never decide against the same old state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use levee_model::{Amount, RemediationRuleDef, names, remediation_rule::strip_port};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alerts::{Alert, AlertStatus, WebhookPayload};
use crate::index::{FleetIndex, HostId};
use crate::preflight::{PreflightReport, Reservation, Window, admit};

/// The end of a repair's reservation: none. A host in repair is out of service until the
/// repair is confirmed and the caller releases the reservation.
pub const REPAIR_OPEN_END_MS: i64 = i64::MAX;
/// Fleets with more hosts than this get no "did you mean" for an unknown host: comparing the
/// name with every host costs too much during an alert storm.
pub const MAX_HOSTS_FOR_SUGGESTION: usize = 20_000;

/// A host in repair: taken out by a remediation that has not been confirmed yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InRepair {
    pub host: String,
    pub rule: String,
    pub since_ms: i64,
}

/// A repair that ended (confirmed or abandoned), for the cooldown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastRepair {
    pub host: String,
    pub rule: String,
    pub ended_ms: i64,
}

/// A host seen unhealthy (a firing alert that a rule matched) at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unhealthy {
    pub host: String,
    pub at_ms: i64,
}

/// What the caller loads from the store before deciding. Hosts are names, so the state
/// outlives a re-applied fleet; names the fleet no longer has count toward the overall limit
/// and the short circuit but toward no pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemediationState {
    /// Hosts in repair now.
    pub in_repair: Vec<InRepair>,
    /// Ended repairs; only each host's latest matters, and only within the longest cooldown.
    pub past_repairs: Vec<PastRepair>,
    /// Hosts seen unhealthy; only those within the longest short-circuit window matter.
    pub unhealthy: Vec<Unhealthy>,
    /// Hosts an operator disabled (or enabled by hand and wants left alone): never repaired
    /// automatically, and out of service for the capacity check.
    pub disabled: Vec<String>,
    /// Hosts known down: out of service for the capacity check, but repairable.
    pub down: Vec<String>,
    /// Every stored maintenance reservation (the same list `admit` checks maintenances
    /// against).
    pub reservations: Vec<Reservation>,
}

impl RemediationState {
    /// Adds what `decision` changes: its host seen unhealthy at `now_ms` (a firing alert a
    /// rule matched, whatever the outcome), and in repair since `now_ms` if it is remediated
    /// (its reservation too).
    pub fn record(&mut self, decision: &Decision, now_ms: i64) {
        if let Some(host) = decision.unhealthy_host() {
            self.unhealthy.push(Unhealthy {
                host: host.to_string(),
                at_ms: now_ms,
            });
        }
        if let Decision::Remediate(remediation) = decision {
            self.in_repair.push(InRepair {
                host: remediation.host.clone(),
                rule: remediation.rule.clone(),
                since_ms: now_ms,
            });
            self.reservations.push(remediation.reservation.clone());
        }
    }
}

/// Run this rule's runbook for this host now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remediation {
    pub host: String,
    pub rule: String,
    pub runbook: String,
    /// `host`, `service` (the services the host serves, comma-separated in fleet order),
    /// `alert` (the alert's name), and the rule's `with`.
    pub params: Map<String, Value>,
    /// The capacity the repair holds: store it with [`admit`] in the same transaction as the
    /// repair, and release it when the repair is confirmed.
    pub reservation: Reservation,
    pub repair_ticket_webhook: Option<String>,
    /// The capacity check that passed.
    pub preflight: PreflightReport,
    pub explanation: String,
}

/// Why an alert repairs nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum RefusalReason {
    /// No rule's matchers pass for the alert's labels.
    NoMatchingRule,
    /// The alert has none of the labels that name the host.
    NoHostLabel { labels: Vec<String> },
    /// The alert names a host the fleet does not have.
    UnknownHost {
        host: String,
        did_you_mean: Option<String>,
    },
    /// The host is in repair already (Alertmanager repeats its notifications).
    AlreadyInRepair { rule: String, since_ms: i64 },
    /// An operator disabled the host; automation leaves it alone.
    HostDisabled,
    /// A maintenance holds the host now; its alerts are expected.
    InMaintenance { maintenance_id: String },
    /// The host was repaired recently.
    Cooldown { ended_ms: i64, until_ms: i64 },
    /// Too many hosts unhealthy at once: automatic remediation of the fleet stops.
    ShortCircuit {
        rule: String,
        unhealthy_hosts: usize,
        max_unhealthy_hosts: u64,
        within_ms: u64,
        /// When, without new unhealthy hosts, few enough are left in the window.
        resets_at_ms: i64,
    },
    /// As many hosts as the rule allows over the fleet are in repair.
    OverallLimit {
        in_repair: usize,
        max_in_repair: u64,
    },
    /// As many hosts of a pool as the rule allows are in repair.
    PoolLimit {
        service: String,
        pool: String,
        in_repair: Vec<String>,
        max_in_repair: u64,
    },
    /// Taking the host out would leave a pool below its floor.
    Capacity { report: PreflightReport },
}

/// An alert that repairs nothing, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The rule that matched, if one did.
    pub rule: Option<String>,
    /// The fleet host the alert names, if it names one.
    pub host: Option<String>,
    #[serde(flatten)]
    pub reason: RefusalReason,
    pub explanation: String,
}

/// What to do about one alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Decision {
    Remediate(Box<Remediation>),
    /// A resolved alert: nothing starts. If the host is in repair, its repair may be
    /// confirmed (by the runbook's verification, or a person).
    Resolved {
        rule: String,
        host: String,
        in_repair: Option<InRepair>,
        explanation: String,
    },
    Refused(Box<Refusal>),
}

impl Decision {
    /// The sentence that explains the decision.
    pub fn explanation(&self) -> &str {
        match self {
            Decision::Remediate(r) => &r.explanation,
            Decision::Resolved { explanation, .. } => explanation,
            Decision::Refused(r) => &r.explanation,
        }
    }

    /// The fleet host the alert names, if a rule matched and the host is known.
    pub fn host(&self) -> Option<&str> {
        match self {
            Decision::Remediate(r) => Some(&r.host),
            Decision::Resolved { host, .. } => Some(host),
            Decision::Refused(r) => r.host.as_deref(),
        }
    }

    /// The host a firing alert showed unhealthy: a known host a rule matched, remediated or
    /// not.
    pub fn unhealthy_host(&self) -> Option<&str> {
        match self {
            Decision::Remediate(r) => Some(&r.host),
            Decision::Resolved { .. } => None,
            Decision::Refused(r) => r.host.as_deref(),
        }
    }

    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Decision::Refused(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.explanation())
    }
}

/// The id of the reservation a repair of `host` started at `now_ms` holds.
pub fn repair_id(host: &str, now_ms: i64) -> String {
    format!("repair-{host}-{now_ms}")
}

fn refuse(
    rule: Option<&RemediationRuleDef>,
    host: Option<&str>,
    reason: RefusalReason,
    explanation: String,
) -> Decision {
    Decision::Refused(Box::new(Refusal {
        rule: rule.map(|r| r.name.clone()),
        host: host.map(str::to_string),
        reason,
        explanation,
    }))
}

fn applies_to(rule: &RemediationRuleDef, index: &FleetIndex) -> bool {
    rule.fleet.as_ref().is_none_or(|f| f.value == index.name())
}

/// The rules that apply to `index`'s fleet, in name order.
fn fleet_rules<'a>(
    index: &FleetIndex,
    rules: &'a [RemediationRuleDef],
) -> Vec<&'a RemediationRuleDef> {
    let mut applicable: Vec<&RemediationRuleDef> =
        rules.iter().filter(|r| applies_to(r, index)).collect();
    applicable.sort_by(|a, b| a.name.cmp(&b.name));
    applicable
}

/// `at_ms` as `2025-01-01T10:00:00Z` for explanations.
fn instant(at_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(at_ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{at_ms} ms"))
}

fn duration(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    if ms == 0 {
        return "0s".to_string();
    }
    let mut left = ms;
    let mut text = String::new();
    for (unit_ms, unit) in UNITS {
        if left >= unit_ms {
            text.push_str(&format!("{}{unit}", left / unit_ms));
            left %= unit_ms;
        }
    }
    if left > 0 {
        text.push_str(&format!("{left}ms"));
    }
    text
}

fn limit_text(amount: Amount, units: u64, of: &str) -> String {
    match amount {
        Amount::Count(_) => units.to_string(),
        Amount::Percent { .. } => format!("{units} ({amount} of {of}, rounded down)"),
    }
}

/// Decides what to do about `alert` in the fleet of `index`, under `rules` (rules of other
/// fleets are left out), given `state`, at `now_ms`. See the module's documentation for the
/// order of the checks.
pub fn decide(
    index: &FleetIndex,
    rules: &[RemediationRuleDef],
    state: &RemediationState,
    alert: &Alert,
    now_ms: i64,
) -> Decision {
    let applicable = fleet_rules(index, rules);
    let Some(rule) = applicable
        .iter()
        .copied()
        .find(|rule| rule.matches(|label| alert.label(label)))
    else {
        return refuse(
            None,
            None,
            RefusalReason::NoMatchingRule,
            format!(
                "No remediation rule of the fleet `{}` matches the alert `{}` ({}); nothing \
                 is repaired.",
                index.name(),
                alert.name().unwrap_or("(no alertname)"),
                labels_text(alert)
            ),
        );
    };
    // 2. The host.
    let labels = rule.host_labels();
    let Some((label, value)) = labels
        .iter()
        .find_map(|label| alert.label(label).map(|value| (*label, value)))
    else {
        return refuse(
            Some(rule),
            None,
            RefusalReason::NoHostLabel {
                labels: labels.iter().map(|l| l.to_string()).collect(),
            },
            format!(
                "The rule `{}` matches the alert `{}`, but the alert has no {} label to name \
                 the host; set the rule's `host_label` to the label that does.",
                rule.name,
                alert.name().unwrap_or("(no alertname)"),
                names::list_of(labels.iter().copied())
            ),
        );
    };
    let name = strip_port(value);
    let Some(host_id) = index.host(name) else {
        let suggestion = (index.host_count() <= MAX_HOSTS_FOR_SUGGESTION)
            .then(|| {
                names::closest(
                    name,
                    (0..index.host_count() as HostId).map(|h| index.host_name(h)),
                )
            })
            .flatten()
            .map(str::to_string);
        return refuse(
            Some(rule),
            None,
            RefusalReason::UnknownHost {
                host: name.to_string(),
                did_you_mean: suggestion.clone(),
            },
            format!(
                "The alert `{}` names the host `{name}` (label `{label}` = `{value}`), which is \
                 not a host of the fleet `{}`.{}",
                alert.name().unwrap_or("(no alertname)"),
                index.name(),
                suggestion
                    .map(|s| format!(" Did you mean `{s}`?"))
                    .unwrap_or_default()
            ),
        );
    };
    let host = index.host_name(host_id).to_string();
    let in_repair = state.in_repair.iter().find(|r| r.host == host);
    // 3. Resolved alerts start nothing.
    if alert.status == AlertStatus::Resolved {
        let explanation = match in_repair {
            Some(repair) => format!(
                "The alert `{}` for `{host}` resolved; the host is in repair (rule `{}`, since \
                 {}), so its repair may be confirmed.",
                alert.name().unwrap_or("(no alertname)"),
                repair.rule,
                instant(repair.since_ms)
            ),
            None => format!(
                "The alert `{}` for `{host}` resolved; the host is not in repair, so nothing \
                 changes.",
                alert.name().unwrap_or("(no alertname)")
            ),
        };
        return Decision::Resolved {
            rule: rule.name.clone(),
            host,
            in_repair: in_repair.cloned(),
            explanation,
        };
    }
    // 4. The host itself.
    if let Some(repair) = in_repair {
        return refuse(
            Some(rule),
            Some(&host),
            RefusalReason::AlreadyInRepair {
                rule: repair.rule.clone(),
                since_ms: repair.since_ms,
            },
            format!(
                "`{host}` is already in repair (rule `{}`, since {}); the alert is a repeat.",
                repair.rule,
                instant(repair.since_ms)
            ),
        );
    }
    if state.disabled.contains(&host) {
        return refuse(
            Some(rule),
            Some(&host),
            RefusalReason::HostDisabled,
            format!(
                "`{host}` was disabled by an operator; automatic remediation leaves it alone \
                 until it is enabled again."
            ),
        );
    }
    if let Some(maintenance) = state
        .reservations
        .iter()
        .filter(|r| r.window.contains(now_ms) && r.hosts.contains(&host))
        .min_by(|a, b| a.maintenance_id.cmp(&b.maintenance_id))
    {
        return refuse(
            Some(rule),
            Some(&host),
            RefusalReason::InMaintenance {
                maintenance_id: maintenance.maintenance_id.clone(),
            },
            format!(
                "`{host}` is in maintenance {} until {}; its alerts are expected and start no \
                 repair.",
                maintenance.maintenance_id,
                instant(maintenance.window.end_ms)
            ),
        );
    }
    if let Some(ended_ms) = state
        .past_repairs
        .iter()
        .filter(|r| r.host == host)
        .map(|r| r.ended_ms)
        .max()
    {
        let until_ms = ended_ms.saturating_add(rule.cooldown_ms as i64);
        if now_ms < until_ms {
            return refuse(
                Some(rule),
                Some(&host),
                RefusalReason::Cooldown { ended_ms, until_ms },
                format!(
                    "`{host}` was repaired until {}; the rule `{}` waits {} before repairing it \
                     again, until {}. A host that breaks again this soon needs a person.",
                    instant(ended_ms),
                    rule.name,
                    duration(rule.cooldown_ms),
                    instant(until_ms)
                ),
            );
        }
    }
    // 5. The short circuits of every rule of the fleet.
    for guard in &applicable {
        if let Some(refusal) = short_circuit(index, guard, rule, state, &host, now_ms) {
            return refusal;
        }
    }
    // 6. Limits on hosts in repair.
    let repairing: BTreeSet<&str> = state.in_repair.iter().map(|r| r.host.as_str()).collect();
    let fleet_hosts = index.host_count() as u64;
    let max_in_repair = rule.max_in_repair.units_rounded_down(fleet_hosts);
    if repairing.len() as u64 + 1 > max_in_repair {
        return refuse(
            Some(rule),
            Some(&host),
            RefusalReason::OverallLimit {
                in_repair: repairing.len(),
                max_in_repair,
            },
            format!(
                "{} hosts are in repair; the rule `{}` allows at most {} at once ({}), so \
                 `{host}` waits.",
                repairing.len(),
                rule.name,
                limit_text(rule.max_in_repair, max_in_repair, "the fleet's hosts"),
                named(repairing.iter().copied())
            ),
        );
    }
    for membership in index.memberships(host_id).iter().filter(|m| !m.spare) {
        let pool = index.pool(membership.pool);
        let members = pool.members.len() as u64;
        let max = rule.max_in_repair_per_pool.units_rounded_down(members);
        let in_pool: Vec<String> = pool
            .members
            .iter()
            .map(|(member, _)| index.host_name(*member))
            .filter(|member| repairing.contains(member))
            .map(str::to_string)
            .collect();
        if in_pool.len() as u64 + 1 > max {
            let service = index.service(pool.service).name.clone();
            let explanation = format!(
                "{} of the {members} hosts of `{service}/{}` are in repair ({}); the rule `{}` \
                 allows at most {} per pool, so `{host}` waits.",
                in_pool.len(),
                pool.name,
                named(in_pool.iter().map(String::as_str)),
                rule.name,
                limit_text(rule.max_in_repair_per_pool, max, "the pool's members"),
            );
            return refuse(
                Some(rule),
                Some(&host),
                RefusalReason::PoolLimit {
                    service,
                    pool: pool.name.clone(),
                    in_repair: in_pool,
                    max_in_repair: max,
                },
                explanation,
            );
        }
    }
    // 7. Capacity, as for maintenance.
    let out_of_service = host_ids(
        index,
        state
            .down
            .iter()
            .chain(&state.disabled)
            .chain(state.in_repair.iter().map(|r| &r.host)),
    );
    let reservation = Reservation {
        maintenance_id: repair_id(&host, now_ms),
        hosts: vec![host.clone()],
        window: Window {
            start_ms: now_ms,
            end_ms: REPAIR_OPEN_END_MS,
        },
    };
    let report = match admit(index, &reservation, &state.reservations, &out_of_service) {
        Ok(report) => report,
        // Not reached: the host was found in the index above. Refuse rather than panic.
        Err(error) => {
            return refuse(
                Some(rule),
                Some(&host),
                RefusalReason::UnknownHost {
                    host: host.clone(),
                    did_you_mean: None,
                },
                format!("The capacity check could not place `{host}`: {error}."),
            );
        }
    };
    if !report.passed {
        let explanation = format!(
            "Repairing `{host}` would take it out of service until the repair is confirmed, \
             and the capacity check refuses that. {}",
            report.explain()
        );
        return refuse(
            Some(rule),
            Some(&host),
            RefusalReason::Capacity { report },
            explanation,
        );
    }
    let services = host_services(index, host_id);
    let mut params = Map::new();
    params.insert("host".to_string(), Value::from(host.clone()));
    params.insert("service".to_string(), Value::from(services.join(",")));
    params.insert(
        "alert".to_string(),
        Value::from(alert.name().unwrap_or_default()),
    );
    for (key, value) in &rule.with {
        params.insert(key.clone(), value.clone());
    }
    let explanation = format!(
        "The alert `{}` matches the rule `{}` {}: `{host}` goes into repair with the runbook \
         `{}`. {}",
        alert.name().unwrap_or("(no alertname)"),
        rule.name,
        rule.describe_matchers(),
        rule.runbook.value,
        report.explain()
    );
    Decision::Remediate(Box::new(Remediation {
        host,
        rule: rule.name.clone(),
        runbook: rule.runbook.value.clone(),
        params,
        reservation,
        repair_ticket_webhook: rule.repair_ticket_webhook.clone(),
        preflight: report,
        explanation,
    }))
}

/// Decides every alert of `payload` in order, each against the state the decisions before it
/// left. Returns the decisions and the state to store (new unhealthy hosts, new repairs and
/// their reservations added to `state`).
pub fn decide_payload(
    index: &FleetIndex,
    rules: &[RemediationRuleDef],
    state: &RemediationState,
    payload: &WebhookPayload,
    now_ms: i64,
) -> (Vec<Decision>, RemediationState) {
    let mut state = state.clone();
    let decisions = payload
        .alerts
        .iter()
        .map(|alert| {
            let decision = decide(index, rules, &state, alert, now_ms);
            state.record(&decision, now_ms);
            decision
        })
        .collect();
    (decisions, state)
}

/// The refusal if `guard`'s short circuit is tripped with `host` unhealthy at `now_ms`.
fn short_circuit(
    index: &FleetIndex,
    guard: &RemediationRuleDef,
    rule: &RemediationRuleDef,
    state: &RemediationState,
    host: &str,
    now_ms: i64,
) -> Option<Decision> {
    let within_ms = guard.short_circuit.within_ms as i64;
    // Each host's latest time within `(now - within, now]`.
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    for seen in &state.unhealthy {
        if seen.at_ms <= now_ms && now_ms - seen.at_ms < within_ms {
            let entry = latest.entry(seen.host.as_str()).or_insert(seen.at_ms);
            *entry = (*entry).max(seen.at_ms);
        }
    }
    latest.insert(host, now_ms);
    let max = guard
        .short_circuit
        .max_unhealthy
        .units_rounded_down(index.host_count() as u64);
    let count = latest.len();
    if count as u64 <= max {
        return None;
    }
    // Without new unhealthy hosts, the oldest `count - max` must leave the window.
    let mut times: Vec<i64> = latest.values().copied().collect();
    times.sort_unstable();
    let must_leave = count - max as usize;
    let resets_at_ms = times[must_leave - 1].saturating_add(within_ms);
    let explanation = format!(
        "Automatic remediation of the fleet `{}` is stopped: {count} hosts were unhealthy \
         within {}, more than the {} the rule `{}` allows. This looks like an outage, not a \
         broken host: a person must look. Without new unhealthy hosts it resets at {}. \
         Unhealthy: {}.",
        index.name(),
        duration(guard.short_circuit.within_ms),
        limit_text(guard.short_circuit.max_unhealthy, max, "the fleet's hosts"),
        guard.name,
        instant(resets_at_ms),
        named(latest.keys().copied())
    );
    Some(refuse(
        Some(rule),
        Some(host),
        RefusalReason::ShortCircuit {
            rule: guard.name.clone(),
            unhealthy_hosts: count,
            max_unhealthy_hosts: max,
            within_ms: guard.short_circuit.within_ms,
            resets_at_ms,
        },
        explanation,
    ))
}

/// The ids of the named hosts the fleet has, sorted, without repeats.
fn host_ids<'a>(index: &FleetIndex, names: impl Iterator<Item = &'a String>) -> Vec<HostId> {
    let mut ids: Vec<HostId> = names.filter_map(|name| index.host(name)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The services `host` is a pool member of, in fleet order (a spare serves none yet).
fn host_services(index: &FleetIndex, host: HostId) -> Vec<String> {
    let mut services: Vec<_> = index
        .memberships(host)
        .iter()
        .filter(|m| !m.spare)
        .map(|m| index.pool(m.pool).service)
        .collect();
    services.sort_unstable();
    services.dedup();
    services
        .into_iter()
        .map(|s| index.service(s).name.clone())
        .collect()
}

fn labels_text(alert: &Alert) -> String {
    let parts: Vec<String> = alert
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// `a, b, c and 7 more`, or `none`.
fn named<'a>(hosts: impl Iterator<Item = &'a str>) -> String {
    let hosts: Vec<&str> = hosts.collect();
    if hosts.is_empty() {
        return "none".to_string();
    }
    let shown = hosts
        .len()
        .min(crate::preflight::MAX_HOSTS_NAMED_PER_REASON);
    let mut text = hosts[..shown].join(", ");
    if hosts.len() > shown {
        text.push_str(&format!(" and {} more", hosts.len() - shown));
    }
    text
}
