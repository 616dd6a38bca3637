//! Which action each service affected by a maintenance takes, from its `MaintenancePolicy`.
//! A service without a policy gets `human`: no automation is assumed.

use std::collections::HashMap;

use levee_model::{
    DecidedBy, Diagnostic, MaintenancePolicyDef, MaintenanceType, PolicyAction, names,
};
use serde::{Deserialize, Serialize};

use crate::index::{FleetIndex, HostId, ServiceId};

/// The maintenance policies of one fleet, at most one per service, each naming a service of
/// the fleet.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    by_service: HashMap<String, MaintenancePolicyDef>,
}

impl PolicySet {
    /// Checks `policies` against the fleet: a policy for a service the fleet does not have,
    /// or a second policy for one service, is an error located at the policy's `service`.
    pub fn new(
        index: &FleetIndex,
        policies: Vec<MaintenancePolicyDef>,
    ) -> Result<PolicySet, Vec<Diagnostic>> {
        let mut by_service: HashMap<String, MaintenancePolicyDef> = HashMap::new();
        let mut diagnostics = Vec::new();
        for policy in policies {
            let service = &policy.service;
            let at = &service.origin;
            if index.service_id(&service.value).is_none() {
                diagnostics.push(Diagnostic::error(
                    &at.file,
                    at.line,
                    at.column,
                    "unknown-service",
                    format!(
                        "The policy `{}` is for `{}`, which is not a service of the fleet \
                         `{}`.{}",
                        policy.name,
                        service.value,
                        index.name(),
                        names::did_you_mean(
                            &service.value,
                            index.services().iter().map(|s| s.name.as_str())
                        )
                    ),
                ));
                continue;
            }
            if let Some(first) = by_service.get(&service.value) {
                diagnostics.push(Diagnostic::error(
                    &at.file,
                    at.line,
                    at.column,
                    "duplicate-policy",
                    format!(
                        "The service `{}` already has the policy `{}` ({}); a service has one \
                         maintenance policy.",
                        service.value, first.name, first.origin
                    ),
                ));
                continue;
            }
            by_service.insert(service.value.clone(), policy);
        }
        if diagnostics.is_empty() {
            Ok(PolicySet { by_service })
        } else {
            Err(diagnostics)
        }
    }

    pub fn policy_for(&self, service: &str) -> Option<&MaintenancePolicyDef> {
        self.by_service.get(service)
    }
}

/// Why a service takes its action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "why")]
pub enum Reason {
    /// The policy decided (by a rule, its default, or because its automation is off).
    Policy { policy: String, by: DecidedBy },
    /// The service has no maintenance policy, so a human handles it.
    NoPolicy,
}

/// What one affected service does about a maintenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAction {
    pub service: String,
    pub owner: Option<String>,
    pub action: PolicyAction,
    pub reason: Reason,
    /// The service's pool members in the scope.
    pub hosts_in_scope: usize,
    /// The service's spares in the scope.
    pub spares_in_scope: usize,
    /// Most of its hosts disabled at the same time (1 without a policy).
    pub disable_concurrency: u32,
    /// Failed host-level disables post-disable accepts before calling a human.
    pub allowed_failures: u64,
}

/// Each service with a pool member or spare in `scope`, in fleet order, with the action its
/// policy gives a maintenance of `kind` lasting `duration_ms`.
pub fn plan_actions(
    index: &FleetIndex,
    policies: &PolicySet,
    scope: &[HostId],
    kind: &MaintenanceType,
    duration_ms: u64,
) -> Vec<ServiceAction> {
    // Per service: (members in scope, spares in scope), counting each host once per service.
    let mut counts: HashMap<ServiceId, (usize, usize)> = HashMap::new();
    let mut scope: Vec<HostId> = scope.to_vec();
    scope.sort_unstable();
    scope.dedup();
    let mut services_of_host: Vec<(ServiceId, bool)> = Vec::new();
    for &host in &scope {
        services_of_host.clear();
        for membership in index.memberships(host) {
            let service = index.pool(membership.pool).service;
            services_of_host.push((service, membership.spare));
        }
        // A member of one pool that is a spare of another counts as a member.
        services_of_host.sort_unstable();
        services_of_host.dedup_by_key(|(service, _)| *service);
        for (service, spare) in &services_of_host {
            let entry = counts.entry(*service).or_default();
            if *spare {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
    }
    let mut affected: Vec<(ServiceId, (usize, usize))> = counts.into_iter().collect();
    affected.sort_unstable_by_key(|(service, _)| *service);
    affected
        .into_iter()
        .map(|(id, (members, spares))| {
            let service = index.service(id);
            match policies.policy_for(&service.name) {
                Some(policy) => {
                    let (action, by) = policy.decide(kind, duration_ms);
                    ServiceAction {
                        service: service.name.clone(),
                        owner: service.owner.clone(),
                        action: action.clone(),
                        reason: Reason::Policy {
                            policy: policy.name.clone(),
                            by,
                        },
                        hosts_in_scope: members,
                        spares_in_scope: spares,
                        disable_concurrency: policy.disable_concurrency,
                        allowed_failures: policy.allowed_failures(members as u64),
                    }
                }
                None => ServiceAction {
                    service: service.name.clone(),
                    owner: service.owner.clone(),
                    action: PolicyAction::Human,
                    reason: Reason::NoPolicy,
                    hosts_in_scope: members,
                    spares_in_scope: spares,
                    disable_concurrency: 1,
                    allowed_failures: 0,
                },
            }
        })
        .collect()
}
