//! Fleets and maintenance policies in the server: applying them (checked against each other,
//! the stored runbooks and the stored ones they do not replace) and showing a fleet's capacity.
//!
//! A `kind: Fleet` is stored as its compiled, checked `FleetDef`; a `kind: MaintenancePolicy`
//! as its `MaintenancePolicyDef`. Both are read back and indexed when a question needs them,
//! so the store stays the only truth.

use std::collections::{BTreeMap, BTreeSet};

use levee_fleet::{FleetIndex, PolicySet};
use levee_model::{
    Definition, Diagnostic, DomainLevel, FLEET_KIND, FleetDef, MAINTENANCE_POLICY_KIND,
    MaintenancePolicyDef, PolicyAction,
};
use levee_store::{DefinitionRecord, NewDefinition};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::App;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::machines::invalid_definitions;
use crate::runbooks::KIND_RUNBOOK;

/// The stored kind of fleets.
pub const KIND_FLEET: &str = FLEET_KIND;
/// The stored kind of maintenance policies.
pub const KIND_MAINTENANCE_POLICY: &str = MAINTENANCE_POLICY_KIND;

/// A stored fleet, parsed.
pub struct StoredFleet {
    pub record: DefinitionRecord,
    pub fleet: FleetDef,
}

/// A stored maintenance policy, parsed.
pub struct StoredPolicy {
    pub record: DefinitionRecord,
    pub policy: MaintenancePolicyDef,
}

/// A fleet's capacity at a glance (`GET /api/v1/fleet`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FleetView {
    pub name: String,
    pub version: i64,
    pub hosts: usize,
    /// Hosts the fleet marks `down: true`.
    pub hosts_down: usize,
    pub services: usize,
    pub datacenters: Vec<DatacenterView>,
    pub pools: Vec<PoolView>,
}

/// Hosts of one datacenter (`-` for hosts without one).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DatacenterView {
    pub name: String,
    pub hosts: usize,
    pub hosts_down: usize,
    pub racks: usize,
}

/// One pool: its size, floor and headroom, in capacity units.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub service: String,
    pub pool: String,
    /// Members (hosts serving in the pool).
    pub size: usize,
    pub spares: usize,
    pub capacity_units: u64,
    /// The floor as written: `9` or `75%`.
    pub floor: String,
    pub floor_units: u64,
    /// Units of members marked down.
    pub down_units: u64,
    /// Units that may be taken out before the pool reaches its floor; negative if the pool is
    /// already below it.
    pub headroom_units: i64,
    /// Members per datacenter.
    pub by_datacenter: BTreeMap<String, usize>,
}

fn parse_compiled<T: serde::de::DeserializeOwned>(
    record: &DefinitionRecord,
) -> Result<T, ApiError> {
    serde_json::from_value(record.compiled.clone()).map_err(|error| {
        ApiError::internal(format!(
            "the stored {} `{}` v{} does not parse: {error}",
            record.kind, record.name, record.version
        ))
    })
}

/// The fleet view of one fleet.
pub fn fleet_view(record_version: i64, fleet: &FleetDef) -> Result<FleetView, ApiError> {
    let index = FleetIndex::build(fleet).map_err(ApiError::internal)?;
    let mut datacenters: BTreeMap<String, (usize, usize, BTreeSet<String>)> = BTreeMap::new();
    for host in &fleet.hosts {
        let dc = host
            .domains
            .get(DomainLevel::Datacenter)
            .unwrap_or("-")
            .to_string();
        let entry = datacenters.entry(dc).or_default();
        entry.0 += 1;
        if host.down {
            entry.1 += 1;
        }
        if let Some(rack) = host.domains.get(DomainLevel::Rack) {
            entry.2.insert(rack.to_string());
        }
    }
    let down: BTreeSet<u32> = index.marked_down().iter().copied().collect();
    let pools = index
        .pools()
        .iter()
        .map(|pool| {
            let down_units: u64 = pool
                .members
                .iter()
                .filter(|(host, _)| down.contains(host))
                .map(|(_, weight)| u64::from(*weight))
                .sum();
            let mut by_datacenter = BTreeMap::new();
            for (host, _) in &pool.members {
                let dc = index
                    .domain_of(*host, DomainLevel::Datacenter)
                    .unwrap_or("-");
                *by_datacenter.entry(dc.to_string()).or_insert(0) += 1;
            }
            let capacity = i64::try_from(pool.capacity_units).unwrap_or(i64::MAX);
            let floor = i64::try_from(pool.floor_units).unwrap_or(i64::MAX);
            let down_units_signed = i64::try_from(down_units).unwrap_or(i64::MAX);
            PoolView {
                service: index.service(pool.service).name.clone(),
                pool: pool.name.clone(),
                size: pool.members.len(),
                spares: pool.spares.len(),
                capacity_units: pool.capacity_units,
                floor: pool.floor.to_string(),
                floor_units: pool.floor_units,
                down_units,
                headroom_units: capacity - down_units_signed - floor,
                by_datacenter,
            }
        })
        .collect();
    Ok(FleetView {
        name: fleet.name.clone(),
        version: record_version,
        hosts: fleet.hosts.len(),
        hosts_down: down.len(),
        services: fleet.services.len(),
        datacenters: datacenters
            .into_iter()
            .map(|(name, (hosts, hosts_down, racks))| DatacenterView {
                name,
                hosts,
                hosts_down,
                racks: racks.len(),
            })
            .collect(),
        pools,
    })
}

fn error_at(origin: &levee_model::Origin, code: &str, message: String) -> Diagnostic {
    Diagnostic::error(&origin.file, origin.line, origin.column, code, message)
}

impl App {
    /// Every stored fleet, by name.
    pub async fn stored_fleets(&self) -> Result<Vec<StoredFleet>, ApiError> {
        let mut fleets = Vec::new();
        for record in self.store.definitions(Some(KIND_FLEET)).await? {
            let fleet = parse_compiled(&record)?;
            fleets.push(StoredFleet { record, fleet });
        }
        Ok(fleets)
    }

    /// Every stored maintenance policy, by name.
    pub async fn stored_policies(&self) -> Result<Vec<StoredPolicy>, ApiError> {
        let mut policies = Vec::new();
        for record in self
            .store
            .definitions(Some(KIND_MAINTENANCE_POLICY))
            .await?
        {
            let policy = parse_compiled(&record)?;
            policies.push(StoredPolicy { record, policy });
        }
        Ok(policies)
    }

    /// The stored fleet named `name`, or the only one when `name` is `None`.
    pub async fn fleet(&self, name: Option<&str>) -> Result<StoredFleet, ApiError> {
        let mut fleets = self.stored_fleets().await?;
        match name {
            Some(name) => {
                let known: Vec<String> = fleets.iter().map(|f| f.fleet.name.clone()).collect();
                fleets
                    .into_iter()
                    .find(|f| f.fleet.name == name)
                    .ok_or_else(|| {
                        ApiError::not_found(format!(
                            "no fleet `{name}`; stored fleets: {}",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ))
                    })
            }
            None => match fleets.len() {
                0 => Err(ApiError::not_found(
                    "no fleet is stored; apply a `kind: Fleet` file first (`levee apply`)",
                )),
                1 => Ok(fleets.remove(0)),
                _ => Err(ApiError::bad_request(format!(
                    "{} fleets are stored ({}); name one with `fleet`",
                    fleets.len(),
                    fleets
                        .iter()
                        .map(|f| f.fleet.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            },
        }
    }

    /// Every stored fleet's capacity (`GET /api/v1/fleet`).
    pub async fn fleet_views(&self, caller: &Caller) -> Result<Vec<FleetView>, ApiError> {
        caller.require(Role::Viewer)?;
        self.stored_fleets()
            .await?
            .iter()
            .map(|s| fleet_view(s.record.version, &s.fleet))
            .collect()
    }

    /// Checks fleets and policies about to be applied against each other, the stored ones
    /// they do not replace and the runbooks (stored, or in `runbooks_applied`), and returns
    /// them ready to store. A policy for a service no fleet has, two policies for one
    /// service, or a `runbook:` action naming no runbook is refused; so is a fleet that drops
    /// a service a stored policy is for (naming that policy).
    pub(crate) async fn prepare_fleet_defs(
        &self,
        caller: &Caller,
        applied: Vec<(Definition, String)>,
        runbooks_applied: &BTreeSet<String>,
    ) -> Result<Vec<NewDefinition>, ApiError> {
        if applied.is_empty() {
            return Ok(Vec::new());
        }
        let mut fleets: BTreeMap<String, (FleetDef, Option<i64>)> = BTreeMap::new();
        for stored in self.stored_fleets().await? {
            fleets.insert(
                stored.fleet.name.clone(),
                (stored.fleet, Some(stored.record.version)),
            );
        }
        for (definition, _) in &applied {
            if let Definition::Fleet(fleet) = definition {
                self.check_reservations_fit(fleet).await?;
            }
        }
        let mut policies: BTreeMap<String, (MaintenancePolicyDef, Option<i64>)> = BTreeMap::new();
        for stored in self.stored_policies().await? {
            policies.insert(
                stored.policy.name.clone(),
                (stored.policy, Some(stored.record.version)),
            );
        }
        for (definition, _) in &applied {
            match definition {
                Definition::Fleet(fleet) => {
                    fleets.insert(fleet.name.clone(), (fleet.clone(), None));
                }
                Definition::MaintenancePolicy(policy) => {
                    policies.insert(policy.name.clone(), (policy.clone(), None));
                }
                _ => {}
            }
        }
        let stored_runbooks: BTreeSet<String> = self
            .store
            .definitions(Some(KIND_RUNBOOK))
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        let mut diagnostics = Vec::new();
        let mut broken = BTreeSet::new();
        // Policies grouped by the fleet that has their service.
        let mut by_fleet: BTreeMap<String, Vec<MaintenancePolicyDef>> = BTreeMap::new();
        for (policy, stored_version) in policies.values() {
            let service = &policy.service.value;
            let owner = fleets
                .values()
                .find(|(fleet, _)| fleet.service(service).is_some());
            let Some((fleet, _)) = owner else {
                let mut message = format!(
                    "The policy `{}` is for the service `{service}`, which no fleet has{}.",
                    policy.name,
                    if fleets.is_empty() {
                        " (no fleet is stored or applied)".to_string()
                    } else {
                        format!(
                            " (fleets: {})",
                            fleets.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                );
                if let Some(version) = stored_version {
                    message = format!(
                        "in the stored MaintenancePolicy `{}` (v{version}), which these files \
                         would break: {message}",
                        policy.name
                    );
                    broken.insert(format!("MaintenancePolicy `{}`", policy.name));
                }
                diagnostics.push(error_at(&policy.service.origin, "unknown-service", message));
                continue;
            };
            by_fleet
                .entry(fleet.name.clone())
                .or_default()
                .push(policy.clone());
            if stored_version.is_none() {
                for action in policy
                    .rules
                    .iter()
                    .map(|rule| &rule.action)
                    .chain([&policy.default_action])
                {
                    if let PolicyAction::Runbook { runbook, .. } = action
                        && !stored_runbooks.contains(&runbook.value)
                        && !runbooks_applied.contains(&runbook.value)
                    {
                        diagnostics.push(error_at(
                            &runbook.origin,
                            "unknown-runbook",
                            format!(
                                "The policy `{}` runs the runbook `{}`, which is not stored; \
                                 apply it first or in the same request.{}",
                                policy.name,
                                runbook.value,
                                levee_model::names::did_you_mean(
                                    &runbook.value,
                                    stored_runbooks
                                        .iter()
                                        .chain(runbooks_applied.iter())
                                        .map(String::as_str)
                                )
                            ),
                        ));
                    }
                }
            }
        }
        for (definition, _) in &applied {
            let Definition::RemediationRule(rule) = definition else {
                continue;
            };
            let runbook = &rule.runbook;
            if !stored_runbooks.contains(&runbook.value)
                && !runbooks_applied.contains(&runbook.value)
            {
                diagnostics.push(error_at(
                    &runbook.origin,
                    "unknown-runbook",
                    format!(
                        "The remediation rule `{}` runs the runbook `{}`, which is not stored; \
                         apply it first or in the same request.{}",
                        rule.name,
                        runbook.value,
                        levee_model::names::did_you_mean(
                            &runbook.value,
                            stored_runbooks
                                .iter()
                                .chain(runbooks_applied.iter())
                                .map(String::as_str)
                        )
                    ),
                ));
            }
            if let Some(fleet) = &rule.fleet
                && !fleets.contains_key(&fleet.value)
            {
                diagnostics.push(error_at(
                    &fleet.origin,
                    "unknown-fleet",
                    format!(
                        "The remediation rule `{}` is for the fleet `{}`, which is not stored \
                         or applied.{}",
                        rule.name,
                        fleet.value,
                        levee_model::names::did_you_mean(
                            &fleet.value,
                            fleets.keys().map(String::as_str)
                        )
                    ),
                ));
            }
            if let Some(url) = &rule.repair_ticket_webhook
                && !url.starts_with("http://")
            {
                diagnostics.push(error_at(
                    &rule.origin,
                    "unsupported-url",
                    format!(
                        "The remediation rule `{}` opens repair tickets at `{url}`; this build \
                         speaks plain `http://` only (put a TLS-terminating proxy in front of \
                         the ticket system).",
                        rule.name
                    ),
                ));
            }
        }
        for (definition, _) in &applied {
            let Definition::DrainTest(test) = definition else {
                continue;
            };
            for (what, runbook) in [
                ("drains with", &test.drain.runbook),
                ("restores with", &test.restore.runbook),
            ] {
                if !stored_runbooks.contains(&runbook.value)
                    && !runbooks_applied.contains(&runbook.value)
                {
                    diagnostics.push(error_at(
                        &runbook.origin,
                        "unknown-runbook",
                        format!(
                            "The drain test `{}` {what} the runbook `{}`, which is not \
                             stored; apply it first or in the same request.{}",
                            test.name,
                            runbook.value,
                            levee_model::names::did_you_mean(
                                &runbook.value,
                                stored_runbooks
                                    .iter()
                                    .chain(runbooks_applied.iter())
                                    .map(String::as_str)
                            )
                        ),
                    ));
                }
            }
        }
        for (fleet_name, fleet_policies) in by_fleet {
            let (fleet, _) = &fleets[&fleet_name];
            let index = FleetIndex::build(fleet).map_err(ApiError::internal)?;
            if let Err(errors) = PolicySet::new(&index, fleet_policies) {
                diagnostics.extend(errors);
            }
        }
        if !diagnostics.is_empty() {
            let mut error = invalid_definitions(diagnostics);
            if !broken.is_empty() {
                let names: Vec<String> = broken.into_iter().collect();
                error.message = format!(
                    "these files would break the stored {}; change them or apply fixed \
                     versions of those definitions in the same request. {}",
                    names.join(", "),
                    error.message
                );
                if let Some(details) = error.details.as_object_mut() {
                    details.insert("broken".to_string(), json!(names));
                }
            }
            return Err(error);
        }
        let now = self.now_ms();
        let mut new_defs = Vec::with_capacity(applied.len());
        for (definition, source) in applied {
            let compiled = definition.compiled_json().map_err(ApiError::internal)?;
            new_defs.push(NewDefinition {
                kind: definition.kind().to_string(),
                name: definition.name().to_string(),
                digest: hex::encode(Sha256::digest(compiled.to_string().as_bytes())),
                compiled,
                source,
                created_at_ms: now,
                created_by: caller.name.clone(),
            });
        }
        Ok(new_defs)
    }

    /// A fleet applied again must still have every host its reserving maintenances hold:
    /// otherwise their capacity would silently stop counting. Refused naming them.
    async fn check_reservations_fit(&self, fleet: &FleetDef) -> Result<(), ApiError> {
        let reserving = self
            .store
            .maintenances(&levee_store::MaintenanceFilter {
                reserving_only: true,
                fleet: Some(fleet.name.clone()),
                limit: 0,
            })
            .await?;
        let hosts: BTreeSet<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
        let mut broken = Vec::new();
        for maintenance in &reserving {
            let missing: Vec<&str> = maintenance
                .hosts
                .iter()
                .map(String::as_str)
                .filter(|host| !hosts.contains(host))
                .collect();
            if !missing.is_empty() {
                broken.push(format!(
                    "maintenance `{}` ({}) holds {}",
                    maintenance.id,
                    maintenance.state,
                    missing.join(", ")
                ));
            }
        }
        if broken.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "breaks_reservations",
            format!(
                "the fleet `{}` would no longer have hosts that active maintenances reserve: \
                 {}; cancel or finish those maintenances first, or keep the hosts",
                fleet.name,
                broken.join("; ")
            ),
        )
        .with_details(
            json!({ "maintenances": reserving.iter().map(|m| &m.id).collect::<Vec<_>>() }),
        ))
    }
}
