//! How big a scope is (blast radius, for second-person approval), and how to take it one
//! failure domain at a time.

use std::collections::{BTreeMap, BTreeSet};

use levee_model::DomainLevel;
use serde::{Deserialize, Serialize};

use crate::index::{FleetIndex, HostId};

/// How much of the fleet a scope reaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlastRadius {
    pub hosts: usize,
    pub fleet_hosts: usize,
    /// `hosts / fleet_hosts` in hundredths of a percent, rounded up.
    pub fleet_basis_points: u32,
    /// The distinct values the scope touches at each level, widest level first.
    pub domains: Vec<(DomainLevel, Vec<String>)>,
    /// Services with a pool member or spare in the scope.
    pub services: usize,
    /// Pools with a member or spare in the scope.
    pub pools: usize,
}

/// Thresholds past which a scope needs a second person's approval. `None` is no threshold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlastRadiusLimit {
    pub max_hosts: Option<usize>,
    pub max_fleet_basis_points: Option<u32>,
    /// Most distinct values at a level (`rack`: 2 means at most two racks).
    #[serde(default)]
    pub max_domains: Vec<(DomainLevel, usize)>,
    pub max_services: Option<usize>,
}

impl BlastRadius {
    /// Every threshold of `limit` this radius passes, as a sentence each; empty when none is.
    pub fn exceeded(&self, limit: &BlastRadiusLimit) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(max) = limit.max_hosts
            && self.hosts > max
        {
            reasons.push(format!("{} hosts, more than {max}", self.hosts));
        }
        if let Some(max) = limit.max_fleet_basis_points
            && self.fleet_basis_points > max
        {
            reasons.push(format!(
                "{}.{:02}% of the fleet, more than {}.{:02}%",
                self.fleet_basis_points / 100,
                self.fleet_basis_points % 100,
                max / 100,
                max % 100
            ));
        }
        for (level, max) in &limit.max_domains {
            let touched = self
                .domains
                .iter()
                .find(|(l, _)| l == level)
                .map_or(0, |(_, values)| values.len());
            if touched > *max {
                reasons.push(format!("{touched} {level}s, more than {max}"));
            }
        }
        if let Some(max) = limit.max_services
            && self.services > max
        {
            reasons.push(format!("{} services, more than {max}", self.services));
        }
        reasons
    }
}

/// The blast radius of `scope`.
pub fn blast_radius(index: &FleetIndex, scope: &[HostId]) -> BlastRadius {
    let mut hosts: Vec<HostId> = scope.to_vec();
    hosts.sort_unstable();
    hosts.dedup();
    let mut domains: Vec<(DomainLevel, Vec<String>)> = Vec::new();
    for level in DomainLevel::ALL {
        let values: BTreeSet<&str> = hosts
            .iter()
            .filter_map(|host| index.domain_of(*host, level))
            .collect();
        if !values.is_empty() {
            domains.push((level, values.into_iter().map(str::to_string).collect()));
        }
    }
    let mut pools = BTreeSet::new();
    let mut services = BTreeSet::new();
    for &host in &hosts {
        for membership in index.memberships(host) {
            pools.insert(membership.pool);
            services.insert(index.pool(membership.pool).service);
        }
    }
    let fleet_hosts = index.host_count();
    let fleet_basis_points = if fleet_hosts == 0 {
        0
    } else {
        (hosts.len() as u64 * 10_000).div_ceil(fleet_hosts as u64) as u32
    };
    BlastRadius {
        hosts: hosts.len(),
        fleet_hosts,
        fleet_basis_points,
        domains,
        services: services.len(),
        pools: pools.len(),
    }
}

/// One step of a maintenance taken a failure domain at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The domain value of every host of the step; `None` for a host with no value at the
    /// level, which is a step of its own (its domain is unknown, so it shares it with no one).
    pub domain: Option<String>,
    /// Hosts in fleet order.
    pub hosts: Vec<HostId>,
}

/// Splits `scope` into steps of one `level` value each (one rack per step, say), in order of
/// the value's name; hosts without a value at `level` follow, one per step.
pub fn split_by_domain(index: &FleetIndex, scope: &[HostId], level: DomainLevel) -> Vec<Step> {
    let mut hosts: Vec<HostId> = scope.to_vec();
    hosts.sort_unstable();
    hosts.dedup();
    let mut by_value: BTreeMap<&str, Vec<HostId>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for host in hosts {
        match index.domain_of(host, level) {
            Some(value) => by_value.entry(value).or_default().push(host),
            None => unknown.push(host),
        }
    }
    let mut steps: Vec<Step> = by_value
        .into_iter()
        .map(|(value, hosts)| Step {
            domain: Some(value.to_string()),
            hosts,
        })
        .collect();
    steps.extend(unknown.into_iter().map(|host| Step {
        domain: None,
        hosts: vec![host],
    }));
    steps
}
