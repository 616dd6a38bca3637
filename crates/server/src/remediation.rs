//! Alert-driven repair (FBAR) in the server: Alertmanager's webhook receiver posts to
//! `POST /api/v1/alerts/alertmanager`; each alert is decided by
//! [`levee_fleet::remediation::decide`] against the stored `kind: RemediationRule`s, the fleet
//! and what is in repair now; a repair is stored as a maintenance of type `repair` for its
//! one host, through the same atomic capacity admission as any maintenance (the decision is
//! taken again inside the write transaction, against the repairs stored by then, so two
//! webhooks never both take the last headroom or the last repair slot). The maintenance
//! driver then runs the rule's host-level runbook, opens the repair ticket, and waits for a
//! person to confirm the repair (`levee maint confirm-repair ID`), which puts the host back.
//!
//! Repair states: `repairing` (its runbook runs) → `awaiting_repair` (ticket opened; the host
//! stays out until the repair is confirmed) → `done`; `needs_human` when the runbook failed
//! (a person confirms the repair, or cancels).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use levee_fleet::remediation::{
    Decision, InRepair, PastRepair, RemediationState, Unhealthy, decide, decide_payload,
};
use levee_fleet::{Alert, WebhookPayload};
use levee_model::{REMEDIATION_RULE_KIND, RemediationRuleDef};
use levee_store::{MaintenanceFilter, MaintenanceRecord, Scheduled};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::App;
use crate::auth::{Caller, Role};
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::maint::flow::{self, HistoryEntry};
use crate::maint::{Signed, reservations_of};

/// The maintenance type of a repair.
pub const REPAIR_KIND: &str = "repair";
/// A repair's states besides the maintenance ones it shares (`needs_human`, `done`,
/// `cancelled`).
pub const REPAIRING: &str = "repairing";
pub const AWAITING_REPAIR: &str = "awaiting_repair";
/// Where the hosts seen unhealthy are kept, per fleet (for the short circuit).
pub const UNHEALTHY_SETTING_PREFIX: &str = "remediation.unhealthy.";
/// How far back unhealthy sightings are kept: the longest short-circuit window a rule may
/// have.
pub const UNHEALTHY_KEPT_MS: i64 =
    levee_model::remediation_rule::MAX_SHORT_CIRCUIT_WINDOW_MS as i64;
/// Attempts to open a repair ticket (one per driver pass) before giving up on it.
pub const REPAIR_TICKET_ATTEMPTS: u32 = 5;
/// Time allowed for one POST to the ticket system.
pub const REPAIR_TICKET_TIMEOUT_MS: u64 = 5_000;

/// A repair's own facts, kept in its record's `details`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepairDetails {
    pub rule: String,
    pub alert: String,
    pub runbook: String,
    pub params: Map<String, Value>,
    pub run_name: String,
    pub ticket_webhook: Option<String>,
    #[serde(default)]
    pub ticket_opened: bool,
    #[serde(default)]
    pub ticket_attempts: u32,
    #[serde(default)]
    pub ticket_error: Option<String>,
    #[serde(default)]
    pub confirmed: Option<Signed>,
    pub explanation: String,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

impl RepairDetails {
    pub fn from_value(value: &Value) -> Result<RepairDetails, String> {
        serde_json::from_value(value.clone())
            .map_err(|error| format!("the repair's stored details do not parse: {error}"))
    }
}

/// What Levee did with one alert.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertOutcome {
    pub alert: Option<String>,
    pub host: Option<String>,
    /// `remediate`, `resolved` or `refused`.
    pub decision: String,
    /// The refusal's reason (`pool_limit`, `short_circuit`, `capacity`, ...).
    pub reason: Option<String>,
    /// The repair started (a maintenance id).
    pub repair: Option<String>,
    pub explanation: String,
}

/// The answer to a webhook: one outcome per alert, in order.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertsResponse {
    pub outcomes: Vec<AlertOutcome>,
}

fn decision_name(decision: &Decision) -> &'static str {
    match decision {
        Decision::Remediate(_) => "remediate",
        Decision::Resolved { .. } => "resolved",
        Decision::Refused(_) => "refused",
    }
}

fn reason_name(decision: &Decision) -> Option<String> {
    decision.refusal().map(|refusal| {
        serde_json::to_value(&refusal.reason)
            .ok()
            .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "refused".to_string())
    })
}

/// The remediation state of `fleet` from its stored maintenances and sightings.
fn state_of(
    records: &[MaintenanceRecord],
    fleet: &str,
    unhealthy: Vec<Unhealthy>,
) -> RemediationState {
    let mut state = RemediationState {
        unhealthy,
        reservations: reservations_of(records, fleet, None),
        ..RemediationState::default()
    };
    for record in records.iter().filter(|r| r.fleet == fleet) {
        if record.kind != REPAIR_KIND {
            // Hosts an operator put back by hand during a maintenance are left alone.
            if record.reserves()
                && let Ok(details) = flow::Details::from_value(&record.details)
            {
                state
                    .disabled
                    .extend(details.manually_enabled.keys().cloned());
            }
            continue;
        }
        let Some(host) = record.hosts.first() else {
            continue;
        };
        let rule = RepairDetails::from_value(&record.details)
            .map(|d| d.rule)
            .unwrap_or_default();
        if record.reserves() {
            state.in_repair.push(InRepair {
                host: host.clone(),
                rule,
                since_ms: record.created_at_ms,
            });
        } else {
            state.past_repairs.push(PastRepair {
                host: host.clone(),
                rule,
                ended_ms: record.updated_at_ms,
            });
        }
    }
    state
}

impl App {
    /// Every stored remediation rule.
    pub async fn stored_remediation_rules(&self) -> Result<Vec<RemediationRuleDef>, ApiError> {
        let mut rules = Vec::new();
        for record in self.store.definitions(Some(REMEDIATION_RULE_KIND)).await? {
            let rule: RemediationRuleDef = serde_json::from_value(record.compiled.clone())
                .map_err(|error| {
                    ApiError::internal(format!(
                        "the stored remediation rule `{}` does not parse: {error}",
                        record.name
                    ))
                })?;
            rules.push(rule);
        }
        Ok(rules)
    }

    /// Decides every alert of an Alertmanager notification, and starts the repairs.
    pub async fn receive_alerts(
        &self,
        caller: &Caller,
        body: &[u8],
    ) -> Result<AlertsResponse, ApiError> {
        caller.require(Role::Operator)?;
        caller.require_unscoped()?;
        let payload: WebhookPayload = levee_fleet::parse_webhook(body).map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_alertmanager",
                format!(
                    "not an Alertmanager webhook (version 4): {error}; point Alertmanager's \
                     webhook_configs at this URL"
                ),
            )
            .with_details(json!({ "field": error.field }))
        })?;
        let rules = self.stored_remediation_rules().await?;
        let fleets = self.stored_fleets().await?;
        let now = self.now_ms();
        // Alerts go to the fleet that has their host; with one fleet, all go to it (so an
        // unknown host gets its "did you mean").
        let mut outcomes: Vec<Option<AlertOutcome>> = vec![None; payload.alerts.len()];
        for stored in &fleets {
            let name = stored.fleet.name.clone();
            let alerts: Vec<(usize, Alert)> = payload
                .alerts
                .iter()
                .enumerate()
                .filter(|(_, alert)| {
                    fleets.len() == 1
                        || rules.iter().any(|rule| {
                            rule.host_labels()
                                .iter()
                                .filter_map(|label| alert.label(label))
                                .any(|host| {
                                    let host = host.split(':').next().unwrap_or(host);
                                    stored.fleet.hosts.iter().any(|h| h.name == host)
                                })
                        })
                })
                .map(|(i, alert)| (i, alert.clone()))
                .collect();
            if alerts.is_empty() {
                continue;
            }
            let context = self.fleet_context(Some(&name)).await?;
            let records = self
                .store
                .maintenances(&MaintenanceFilter {
                    reserving_only: false,
                    fleet: Some(name.clone()),
                    limit: 0,
                })
                .await?;
            let key = format!("{UNHEALTHY_SETTING_PREFIX}{name}");
            let unhealthy: Vec<Unhealthy> = self
                .store
                .setting(&key)
                .await?
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            let state = state_of(&records, &name, unhealthy);
            let sub = WebhookPayload {
                alerts: alerts.iter().map(|(_, a)| a.clone()).collect(),
                ..payload.clone()
            };
            let (decisions, after) = decide_payload(&context.index, &rules, &state, &sub, now);
            for ((i, alert), decision) in alerts.iter().zip(decisions) {
                let mut outcome = AlertOutcome {
                    alert: alert.name().map(str::to_string),
                    host: decision.host().map(str::to_string),
                    decision: decision_name(&decision).to_string(),
                    reason: reason_name(&decision),
                    repair: None,
                    explanation: decision.explanation().to_string(),
                };
                if let Decision::Remediate(remediation) = &decision {
                    match self
                        .store_repair(caller, &context, &rules, alert, remediation, now)
                        .await
                    {
                        Ok(id) => outcome.repair = Some(id),
                        Err(error) => {
                            outcome.decision = "refused".to_string();
                            outcome.reason = Some(error.code.to_string());
                            outcome.explanation = error.message;
                        }
                    }
                }
                outcomes[*i] = Some(outcome);
            }
            let mut kept: Vec<Unhealthy> = after
                .unhealthy
                .into_iter()
                .filter(|u| u.at_ms >= now - UNHEALTHY_KEPT_MS)
                .collect();
            kept.sort_by_key(|u| u.at_ms);
            self.store.set_setting(&key, json!(kept), None).await?;
        }
        let outcomes = outcomes
            .into_iter()
            .zip(&payload.alerts)
            .map(|(outcome, alert)| {
                outcome.unwrap_or_else(|| AlertOutcome {
                    alert: alert.name().map(str::to_string),
                    host: None,
                    decision: "refused".to_string(),
                    reason: Some("unknown_host".to_string()),
                    repair: None,
                    explanation: "no stored fleet has the host this alert names".to_string(),
                })
            })
            .collect();
        self.maint_wake.notify_one();
        Ok(AlertsResponse { outcomes })
    }

    /// Stores a repair, re-deciding it inside the write transaction against the repairs and
    /// reservations stored by then.
    async fn store_repair(
        &self,
        caller: &Caller,
        context: &crate::maint::FleetContext,
        rules: &[RemediationRuleDef],
        alert: &Alert,
        remediation: &levee_fleet::remediation::Remediation,
        now: i64,
    ) -> Result<String, ApiError> {
        let id = remediation.reservation.maintenance_id.clone();
        let details = RepairDetails {
            rule: remediation.rule.clone(),
            alert: alert.name().unwrap_or_default().to_string(),
            runbook: remediation.runbook.clone(),
            params: remediation.params.clone(),
            run_name: format!("{id}-run"),
            ticket_webhook: remediation.repair_ticket_webhook.clone(),
            ticket_opened: false,
            ticket_attempts: 0,
            ticket_error: None,
            confirmed: None,
            explanation: remediation.explanation.clone(),
            history: vec![HistoryEntry {
                at_ms: now,
                state: REPAIRING.to_string(),
                why: remediation.explanation.clone(),
            }],
        };
        let record = MaintenanceRecord {
            id: id.clone(),
            fleet: context.name.clone(),
            selector: format!("host={}", remediation.host),
            hosts: vec![remediation.host.clone()],
            kind: REPAIR_KIND.to_string(),
            start_ms: remediation.reservation.window.start_ms,
            end_ms: remediation.reservation.window.end_ms,
            owner: format!("rule:{}", remediation.rule),
            state: REPAIRING.to_string(),
            why: format!(
                "alert {}: running `{}` for {}",
                details.alert, remediation.runbook, remediation.host
            ),
            unblock: String::new(),
            created_by: caller.name.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
            details: serde_json::to_value(&details).map_err(ApiError::internal)?,
        };
        let index = context.index.clone();
        let rules = rules.to_vec();
        let fleet = context.name.clone();
        let alert = alert.clone();
        let host = remediation.host.clone();
        let admit: levee_store::Admit = Box::new(move |stored: &[MaintenanceRecord]| {
            // The limits and the capacity, against what is stored now (sightings and past
            // repairs only move the short circuit and cooldowns, decided just before).
            let state = state_of(stored, &fleet, Vec::new());
            match decide(&index, &rules, &state, &alert, now) {
                Decision::Remediate(again) if again.host == host => Ok(()),
                other => Err(json!({
                    "code": reason_name(&other).unwrap_or_else(|| "changed".to_string()),
                    "message": other.explanation(),
                })),
            }
        });
        let audit = self.audit_entry(
            caller,
            "repair.start",
            &id,
            json!({ "host": remediation.host, "rule": remediation.rule }),
        );
        match self
            .store
            .schedule_maintenance(record, admit, Some(audit))
            .await
        {
            Ok(Scheduled::Stored(_)) => Ok(id),
            Ok(Scheduled::Refused(explanation)) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "refused",
                explanation
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("refused")
                    .to_string(),
            )),
            Err(error) => Err(error.into()),
        }
    }

    /// One driver pass over a repair: follow its run, open its ticket.
    pub(crate) async fn drive_repair(
        self: &std::sync::Arc<Self>,
        record: &MaintenanceRecord,
    ) -> Result<bool, ApiError> {
        let mut details = RepairDetails::from_value(&record.details).map_err(ApiError::internal)?;
        let mut next = record.clone();
        match record.state.as_str() {
            REPAIRING => {
                let params: BTreeMap<String, Value> = details.params.clone().into_iter().collect();
                let outcome = self
                    .start_maintenance_run(&record.id, &details.runbook, &details.run_name, params)
                    .await;
                match outcome {
                    flow::RunOutcome::Running => return Ok(false),
                    flow::RunOutcome::Succeeded => {
                        next.state = AWAITING_REPAIR.to_string();
                        next.why = format!(
                            "run {} finished; {} stays out of service until its repair is \
                             confirmed",
                            details.run_name, record.hosts[0]
                        );
                        next.unblock = format!(
                            "once the host is repaired: `levee maint confirm-repair {} \
                             --reason ...`",
                            record.id
                        );
                    }
                    flow::RunOutcome::Failed(why) => {
                        next.state = flow::NEEDS_HUMAN.to_string();
                        next.why = format!("the repair runbook failed: {why}");
                        next.unblock = format!(
                            "repair {} by hand, then `levee maint confirm-repair {} --reason \
                             ...`; or cancel to put it back as it is",
                            record.hosts[0], record.id
                        );
                    }
                }
            }
            AWAITING_REPAIR if !details.ticket_opened && details.ticket_webhook.is_some() => {
                if details.ticket_attempts >= REPAIR_TICKET_ATTEMPTS {
                    return Ok(false);
                }
                let url = details.ticket_webhook.clone().unwrap_or_default();
                details.ticket_attempts += 1;
                match open_ticket(&url, record, &details).await {
                    Ok(()) => {
                        details.ticket_opened = true;
                        details.ticket_error = None;
                    }
                    Err(error) => {
                        details.ticket_error = Some(format!(
                            "attempt {} of {REPAIR_TICKET_ATTEMPTS}: {error}",
                            details.ticket_attempts
                        ));
                        if details.ticket_attempts >= REPAIR_TICKET_ATTEMPTS {
                            next.why = format!(
                                "{}; the repair ticket could not be opened at {url} ({error}): \
                                 open it by hand",
                                record.why
                            );
                        }
                    }
                }
            }
            _ => return Ok(false),
        }
        if next.state != record.state {
            details.history.push(HistoryEntry {
                at_ms: self.now_ms(),
                state: next.state.clone(),
                why: next.why.clone(),
            });
        }
        next.details = serde_json::to_value(&details).map_err(ApiError::internal)?;
        next.version += 1;
        next.updated_at_ms = self.now_ms();
        match self.store.update_maintenance(next.clone(), None).await {
            Ok(()) => {
                if next.state == flow::NEEDS_HUMAN && record.state != flow::NEEDS_HUMAN {
                    self.notify_maintenance("repair_needs_human", &next, next.why.clone());
                }
                Ok(true)
            }
            Err(levee_store::Error::Conflict(_)) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

/// POSTs the repair ticket: host, rule, alert, the repair's id and why.
async fn open_ticket(
    url: &str,
    record: &MaintenanceRecord,
    details: &RepairDetails,
) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_millis(REPAIR_TICKET_TIMEOUT_MS))
        .build()
        .map_err(|e| e.to_string())?;
    let body = json!({
        "kind": "repair_ticket",
        "repair": record.id,
        "host": record.hosts.first(),
        "fleet": record.fleet,
        "rule": details.rule,
        "alert": details.alert,
        "opened_at": rfc3339(record.created_at_ms),
        "text": format!(
            "Levee repair {}: {} needs a hardware repair (alert {}, rule {})",
            record.id,
            record.hosts.first().map(String::as_str).unwrap_or("?"),
            details.alert,
            details.rule
        ),
    });
    let answer = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(format!("the ticket system answered {}", answer.status()))
    }
}

/// A repair after an operator's control: `confirm_repair` (repaired: the host is back in
/// service) or `cancel` (the host is put back as it is).
pub(crate) fn apply_repair_control(
    record: &MaintenanceRecord,
    caller: &Caller,
    control: &crate::maint::MaintenanceControl,
    reason: &str,
    now: i64,
) -> Result<MaintenanceRecord, ApiError> {
    let mut details = RepairDetails::from_value(&record.details).map_err(ApiError::internal)?;
    if flow::is_final(&record.state) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_now",
            format!(
                "repair `{}` is {}: nothing more can change",
                record.id, record.state
            ),
        ));
    }
    let mut next = record.clone();
    let host = record.hosts.first().cloned().unwrap_or_default();
    match control.action.as_str() {
        "confirm_repair" => {
            if record.state == REPAIRING {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_now",
                    format!(
                        "repair `{}` is still running its runbook; confirm once it is done",
                        record.id
                    ),
                ));
            }
            details.confirmed = Some(Signed {
                by: caller.name.clone(),
                at_ms: now,
                reason: reason.to_string(),
            });
            next.state = flow::DONE.to_string();
            next.why = format!(
                "{} confirmed the repair of {host}: {reason}; back in service",
                caller.name
            );
        }
        "cancel" => {
            next.state = flow::CANCELLED.to_string();
            next.why = format!(
                "cancelled by {}: {reason}; {host} is back in service as it is",
                caller.name
            );
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "`{other}` does not apply to a repair; use confirm_repair or cancel"
            )));
        }
    }
    next.unblock = String::new();
    // A repair's reservation ends with it: its window closes now, so past repairs hold no
    // capacity and the cooldown counts from here.
    // (A window is never empty: it ends at least a millisecond after it starts.)
    next.end_ms = now.max(next.start_ms + 1);
    details.history.push(HistoryEntry {
        at_ms: now,
        state: next.state.clone(),
        why: next.why.clone(),
    });
    next.details = serde_json::to_value(&details).map_err(ApiError::internal)?;
    next.version += 1;
    next.updated_at_ms = now;
    Ok(next)
}
