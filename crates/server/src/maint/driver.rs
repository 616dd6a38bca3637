//! The maintenance driver: every [`MAINT_DRIVER_INTERVAL_MS`] (or at once when a control
//! wakes it) it moves each maintenance that still holds capacity through its flow. Every
//! replica runs one; each change is compare-and-set on the maintenance's version, so only one
//! replica's decision lands, and only that replica acts on it (runs, notifications). Runs are
//! started idempotently by name: a replica that died between the commit and the start leaves
//! it to the next pass, which starts it (or finds it started) while gathering the facts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use levee_store::{MaintenanceFilter, MaintenanceRecord};
use serde_json::json;

use super::flow::{self, Current, Details, Effect, Facts, RunOutcome, ServiceStatus};
use super::{FleetContext, reservations_of};
use crate::App;
use crate::auth::{Caller, Role, Scope};
use crate::error::ApiError;
use crate::runbooks::KIND_RUNBOOK;
use crate::runs::StartRequest;

/// How often the driver looks at every active maintenance.
pub const MAINT_DRIVER_INTERVAL_MS: u64 = 500;

/// Runs until `shutdown` resolves. A failed pass is logged and retried on the next: a store
/// that is down delays maintenance, it never loses it (it is rows, not threads).
pub async fn run(app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(Duration::from_millis(MAINT_DRIVER_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = interval.tick() => {}
            _ = app.maint_wake.notified() => {}
        }
        if let Err(error) = app.drive_maintenances().await {
            tracing::warn!(%error, "moving maintenances failed; retrying");
        }
    }
}

/// What the automation of maintenances other than `record` took out within the last
/// `window_ms`: what the removal rate limits count besides `record`'s own steps.
fn recent_removals(
    all: &[MaintenanceRecord],
    record: &MaintenanceRecord,
    window_ms: u64,
    now_ms: i64,
) -> Vec<flow::Removal> {
    let since = now_ms - window_ms as i64;
    let mut removals = Vec::new();
    for other in all {
        if other.id == record.id || other.kind == crate::remediation::REPAIR_KIND {
            continue;
        }
        let Ok(details) = Details::from_value(&other.details) else {
            continue;
        };
        removals.extend(details.removals().filter(|(_, at_ms)| *at_ms > since).map(
            |(host, at_ms)| flow::Removal {
                host: host.to_string(),
                at_ms,
                same_fleet: other.fleet == record.fleet,
            },
        ));
    }
    removals
}

/// The caller a maintenance's runs are started as: an operator named after it.
fn maintenance_caller(id: &str) -> Caller {
    Caller {
        name: format!("maintenance:{id}"),
        role: Role::Operator,
        scope: Scope::All,
        remote: None,
    }
}

impl App {
    /// One pass over every maintenance still holding capacity. Returns how many changed.
    pub async fn drive_maintenances(self: &Arc<Self>) -> Result<usize, ApiError> {
        let records = self
            .store
            .maintenances(&MaintenanceFilter {
                reserving_only: true,
                fleet: None,
                limit: 0,
            })
            .await?;
        if records.is_empty() {
            return Ok(0);
        }
        let with_phase = self.runbooks_with_phase().await?;
        let mut contexts: BTreeMap<String, FleetContext> = BTreeMap::new();
        let mut changed = 0;
        for record in &records {
            if flow::is_final(&record.state) {
                continue;
            }
            if record.kind == crate::remediation::REPAIR_KIND {
                match self.drive_repair(record).await {
                    Ok(true) => changed += 1,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(repair = %record.id, error = %error.message,
                            "moving a repair failed; retrying on the next pass");
                    }
                }
                continue;
            }
            if !contexts.contains_key(&record.fleet) {
                match self.fleet_context(Some(&record.fleet)).await {
                    Ok(context) => {
                        contexts.insert(record.fleet.clone(), context);
                    }
                    Err(error) => {
                        tracing::warn!(maintenance = %record.id, %error.message,
                            "its fleet cannot be loaded; leaving it for now");
                        continue;
                    }
                }
            }
            let context = &contexts[&record.fleet];
            match self.drive_one(record, &records, context, &with_phase).await {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(maintenance = %record.id, error = %error.message,
                        "moving a maintenance failed; retrying on the next pass");
                }
            }
        }
        Ok(changed)
    }

    async fn drive_one(
        self: &Arc<Self>,
        record: &MaintenanceRecord,
        all: &[MaintenanceRecord],
        context: &FleetContext,
        with_phase: &BTreeSet<String>,
    ) -> Result<bool, ApiError> {
        let details = Details::from_value(&record.details).map_err(ApiError::internal)?;
        let others = reservations_of(all, &record.fleet, Some(&record.id));
        let current = Current {
            id: &record.id,
            state: &record.state,
            kind: &record.kind,
            hosts: &record.hosts,
            window: levee_fleet::Window {
                start_ms: record.start_ms,
                end_ms: record.end_ms,
            },
            owner: &record.owner,
            why: &record.why,
            details: &details,
        };
        // The runs under way: (re)started idempotently, which also says how they are doing.
        let mut runs = BTreeMap::new();
        for service in &details.services {
            let phase = match service.status {
                ServiceStatus::Running => "disable",
                ServiceStatus::Enabling => "enable",
                _ => continue,
            };
            let (Some(name), levee_model::PolicyAction::Runbook { runbook, with }) =
                (&service.run_name, &service.action)
            else {
                continue;
            };
            // A disable step's run acts on the step's hosts; an enable run on every host
            // automation took out.
            let hosts = if phase == "disable" && !service.in_flight.is_empty() {
                &service.in_flight
            } else {
                &service.disabled
            };
            let params = flow::runbook_params(
                &current,
                hosts,
                with,
                with_phase.contains(&runbook.value),
                phase,
            );
            let outcome = self
                .start_maintenance_run(&record.id, &runbook.value, name, params)
                .await;
            runs.insert(name.clone(), outcome);
        }
        let now_ms = self.now_ms();
        let removals = recent_removals(all, record, self.removal_limits.window_ms, now_ms);
        let facts = Facts {
            index: &context.index,
            policies: &context.policies,
            others: &others,
            runbooks_with_phase: with_phase,
            runs: &runs,
            limits: &self.removal_limits,
            removals: &removals,
            now_ms,
        };
        let Some(transition) = flow::advance(&current, &facts).map_err(ApiError::internal)? else {
            return Ok(false);
        };
        let mut next = record.clone();
        let state_changed = transition.state != record.state;
        next.state = transition.state.clone();
        next.why = transition.why.clone();
        next.unblock = transition.unblock.clone();
        next.details = transition.details.to_value();
        next.version += 1;
        next.updated_at_ms = facts.now_ms;
        let audit = state_changed.then(|| levee_store::AuditEntry {
            at_ms: facts.now_ms,
            actor: "levee".to_string(),
            action: "maintenance.transition".to_string(),
            target: record.id.clone(),
            outcome: String::new(),
            detail: json!({ "from": record.state, "to": next.state, "why": next.why }),
        });
        match self.store.update_maintenance(next.clone(), audit).await {
            Ok(()) => {}
            // Another replica (or a control) moved it first: its decision stands.
            Err(levee_store::Error::Conflict(_)) => return Ok(false),
            Err(error) => return Err(error.into()),
        }
        if state_changed {
            tracing::info!(maintenance = %record.id, from = %record.state, to = %next.state,
                why = %next.why, "maintenance moved");
        }
        for effect in transition.effects {
            match effect {
                Effect::StartRun {
                    runbook,
                    name,
                    params,
                    ..
                } => {
                    let _ = self
                        .start_maintenance_run(&record.id, &runbook, &name, params)
                        .await;
                }
                Effect::Notify { event, message } => {
                    self.notify_maintenance(event, &next, message);
                }
            }
        }
        Ok(true)
    }

    /// Starts (or finds, by its name) a run a maintenance needs, and says how it is doing.
    pub(crate) async fn start_maintenance_run(
        self: &Arc<Self>,
        maintenance: &str,
        runbook: &str,
        name: &str,
        params: BTreeMap<String, serde_json::Value>,
    ) -> RunOutcome {
        let caller = maintenance_caller(maintenance);
        let request = StartRequest {
            params,
            name: Some(name.to_string()),
            max_parallel: None,
            start: true,
        };
        match self.start_run(&caller, runbook, request).await {
            Ok((view, _)) => match view.status.as_str() {
                "succeeded" => RunOutcome::Succeeded,
                "failed" | "aborted" => RunOutcome::Failed(
                    view.outcome
                        .unwrap_or_else(|| format!("the run {} {}", view.id, view.status)),
                ),
                _ => RunOutcome::Running,
            },
            // It cannot start at all (its runbook was removed, its parameters no longer
            // bind): automation has failed, people must take over.
            Err(error) if error.status.is_client_error() => {
                RunOutcome::Failed(format!("the run cannot start: {}", error.message))
            }
            Err(error) => {
                tracing::warn!(maintenance, runbook, error = %error.message,
                    "starting a maintenance run failed; retrying on the next pass");
                RunOutcome::Running
            }
        }
    }

    /// Stored runbooks that declare a `phase` parameter: a policy action running one is
    /// run again with `phase=enable` to bring the hosts back.
    async fn runbooks_with_phase(&self) -> Result<BTreeSet<String>, ApiError> {
        let mut names = BTreeSet::new();
        for record in self.store.definitions(Some(KIND_RUNBOOK)).await? {
            let has_phase = record
                .compiled
                .get("params")
                .and_then(|params| params.as_array())
                .is_some_and(|params| {
                    params
                        .iter()
                        .any(|param| param.get("name").and_then(|n| n.as_str()) == Some("phase"))
                });
            if has_phase {
                names.insert(record.name);
            }
        }
        Ok(names)
    }
}
