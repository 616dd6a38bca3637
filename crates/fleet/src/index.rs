//! [`FleetIndex`]: a checked [`FleetDef`] arranged for fast questions: which hosts a
//! selector names, which pools a host serves (or stands by for), each pool's weights and floor.

use std::collections::HashMap;
use std::fmt;

use levee_model::selector::{HostIndex, HostNumber, Selector, SelectorError};
use levee_model::{Amount, DomainLevel, FleetDef};
use serde::{Deserialize, Serialize};

/// A host's number: its position in the fleet's host list.
pub type HostId = HostNumber;

/// A pool's number: its position in the fleet, services in order, pools in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PoolId(pub u32);

/// A service's number: its position in the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceId(pub u32);

/// One pool, indexed.
#[derive(Clone, Debug)]
pub struct Pool {
    pub service: ServiceId,
    pub name: String,
    /// Members in fleet order, each with its weight in capacity units.
    pub members: Vec<(HostId, u32)>,
    /// Spares in fleet order.
    pub spares: Vec<HostId>,
    /// The sum of the members' weights.
    pub capacity_units: u64,
    pub floor: Amount,
    /// The floor in capacity units (a percentage rounded up).
    pub floor_units: u64,
}

/// One service, indexed.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub owner: Option<String>,
    /// Its pools: `PoolId(first_pool)..PoolId(first_pool + pool_count)`.
    pub first_pool: u32,
    pub pool_count: u32,
}

/// How a host belongs to a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    pub pool: PoolId,
    /// Capacity units the host gives the pool; 0 for a spare.
    pub weight: u32,
    pub spare: bool,
}

/// Why a stored fleet cannot be indexed. A fleet loaded through `levee_model` never fails;
/// this guards against stored records that were changed behind the loader's back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexError(pub String);

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IndexError {}

/// Why a maintenance scope does not resolve to hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeError {
    /// The selector does not parse (an empty selector is one of these: never "every host").
    Invalid(SelectorError),
    /// The selector parses but names no host; the sentence says why.
    MatchesNothing { selector: String, why: String },
    /// Hosts named that the fleet does not have.
    UnknownHosts(Vec<String>),
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::Invalid(error) => write!(f, "the selector is not valid ({error})"),
            ScopeError::MatchesNothing { selector, why } => {
                write!(f, "the selector `{selector}` matches no host: {why}")
            }
            ScopeError::UnknownHosts(names) => {
                write!(f, "not hosts of this fleet: {}", names.join(", "))
            }
        }
    }
}

impl std::error::Error for ScopeError {}

/// A fleet arranged for preflight: hosts by name, domain value and label (through
/// [`HostIndex`]), and pools by host. Derived from a [`FleetDef`]; rebuild it when the fleet
/// changes.
#[derive(Clone, Debug)]
pub struct FleetIndex {
    name: String,
    hosts: HostIndex,
    host_names: Vec<String>,
    /// Hosts the fleet marks `down: true`.
    down: Vec<HostId>,
    services: Vec<Service>,
    service_ids: HashMap<String, ServiceId>,
    pools: Vec<Pool>,
    /// Host `h` belongs to `memberships[membership_starts[h]..membership_starts[h + 1]]`.
    membership_starts: Vec<u32>,
    memberships: Vec<Membership>,
}

impl FleetIndex {
    /// Indexes `fleet`. Time and memory are linear in hosts plus pool memberships.
    pub fn build(fleet: &FleetDef) -> Result<FleetIndex, IndexError> {
        let hosts = HostIndex::new(&fleet.hosts);
        if hosts_have_duplicates(&hosts, fleet) {
            return Err(IndexError(format!(
                "the fleet `{}` lists a host twice; apply it again through the loader",
                fleet.name
            )));
        }
        let host_names: Vec<String> = fleet.hosts.iter().map(|h| h.name.clone()).collect();
        let down: Vec<HostId> = (0..fleet.hosts.len() as HostId)
            .filter(|h| fleet.hosts[*h as usize].down)
            .collect();
        let mut services = Vec::with_capacity(fleet.services.len());
        let mut service_ids = HashMap::with_capacity(fleet.services.len());
        let mut pools = Vec::new();
        let mut counts = vec![0u32; fleet.hosts.len() + 1];
        for (service_number, service) in fleet.services.iter().enumerate() {
            let service_id = ServiceId(service_number as u32);
            service_ids.insert(service.name.clone(), service_id);
            services.push(Service {
                name: service.name.clone(),
                owner: service.owner.clone(),
                first_pool: pools.len() as u32,
                pool_count: service.pools.len() as u32,
            });
            for pool in &service.pools {
                let lookup = |name: &String| {
                    hosts.host(name).ok_or_else(|| {
                        IndexError(format!(
                            "the pool `{}/{}` names `{name}`, which is not a host of the fleet \
                             `{}`",
                            service.name, pool.name, fleet.name
                        ))
                    })
                };
                let mut members = Vec::with_capacity(pool.members.len());
                for name in &pool.members {
                    let id = lookup(name)?;
                    members.push((id, pool.weight_of(name)));
                    counts[id as usize] += 1;
                }
                members.sort_unstable();
                let mut spares = Vec::with_capacity(pool.spare_hosts.len());
                for name in &pool.spare_hosts {
                    let id = lookup(name)?;
                    spares.push(id);
                    counts[id as usize] += 1;
                }
                spares.sort_unstable();
                let capacity_units: u64 = members.iter().map(|(_, w)| u64::from(*w)).sum();
                let floor = pool.capacity.floor.value;
                pools.push(Pool {
                    service: service_id,
                    name: pool.name.clone(),
                    members,
                    spares,
                    capacity_units,
                    floor,
                    floor_units: floor.units_rounded_up(capacity_units),
                });
            }
        }
        // Counts to starts (an exclusive prefix sum), then fill.
        let mut membership_starts = Vec::with_capacity(counts.len());
        let mut running = 0u32;
        for count in &counts {
            membership_starts.push(running);
            running += count;
        }
        let mut next = membership_starts.clone();
        let mut memberships = vec![
            Membership {
                pool: PoolId(0),
                weight: 0,
                spare: false,
            };
            running as usize
        ];
        for (number, pool) in pools.iter().enumerate() {
            let pool_id = PoolId(number as u32);
            for (host, weight) in &pool.members {
                let slot = &mut next[*host as usize];
                memberships[*slot as usize] = Membership {
                    pool: pool_id,
                    weight: *weight,
                    spare: false,
                };
                *slot += 1;
            }
            for host in &pool.spares {
                let slot = &mut next[*host as usize];
                memberships[*slot as usize] = Membership {
                    pool: pool_id,
                    weight: 0,
                    spare: true,
                };
                *slot += 1;
            }
        }
        Ok(FleetIndex {
            name: fleet.name.clone(),
            hosts,
            host_names,
            down,
            services,
            service_ids,
            pools,
            membership_starts,
            memberships,
        })
    }

    /// The fleet's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn host_count(&self) -> usize {
        self.host_names.len()
    }

    pub fn host_name(&self, host: HostId) -> &str {
        &self.host_names[host as usize]
    }

    pub fn host(&self, name: &str) -> Option<HostId> {
        self.hosts.host(name)
    }

    /// The host-level index (domains and labels).
    pub fn hosts(&self) -> &HostIndex {
        &self.hosts
    }

    /// The value of `host` at `level`, if known.
    pub fn domain_of(&self, host: HostId, level: DomainLevel) -> Option<&str> {
        self.hosts.domain_of(host, level)
    }

    /// Hosts the fleet marks `down: true`, in fleet order.
    pub fn marked_down(&self) -> &[HostId] {
        &self.down
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, id: ServiceId) -> &Service {
        &self.services[id.0 as usize]
    }

    pub fn service_id(&self, name: &str) -> Option<ServiceId> {
        self.service_ids.get(name).copied()
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    pub fn pool(&self, id: PoolId) -> &Pool {
        &self.pools[id.0 as usize]
    }

    /// The pools `host` serves or stands by for.
    pub fn memberships(&self, host: HostId) -> &[Membership] {
        let start = self.membership_starts[host as usize] as usize;
        let end = self.membership_starts[host as usize + 1] as usize;
        &self.memberships[start..end]
    }

    /// The hosts a selector names, in fleet order. An empty selector, a malformed one, or one
    /// that matches no host is an error, never "every host".
    pub fn resolve(&self, selector: &str) -> Result<Vec<HostId>, ScopeError> {
        let parsed = Selector::parse(selector).map_err(ScopeError::Invalid)?;
        self.resolve_selector(&parsed)
    }

    /// Like [`FleetIndex::resolve`], for a parsed selector.
    pub fn resolve_selector(&self, selector: &Selector) -> Result<Vec<HostId>, ScopeError> {
        let hosts = self.hosts.resolve(selector);
        if hosts.is_empty() {
            return Err(ScopeError::MatchesNothing {
                selector: selector.to_string(),
                why: self.hosts.explain_no_match(selector),
            });
        }
        Ok(hosts)
    }

    /// The hosts named, sorted and without repeats; every unknown name is reported.
    pub fn host_ids<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<HostId>, ScopeError> {
        let mut ids = Vec::with_capacity(names.len());
        let mut unknown = Vec::new();
        for name in names {
            match self.hosts.host(name.as_ref()) {
                Some(id) => ids.push(id),
                None => unknown.push(name.as_ref().to_string()),
            }
        }
        if !unknown.is_empty() {
            return Err(ScopeError::UnknownHosts(unknown));
        }
        if ids.is_empty() {
            return Err(ScopeError::MatchesNothing {
                selector: String::new(),
                why: "no host was named; an empty scope is an error, never \"every host\""
                    .to_string(),
            });
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The names of `hosts`.
    pub fn names_of(&self, hosts: &[HostId]) -> Vec<String> {
        hosts
            .iter()
            .map(|h| self.host_name(*h).to_string())
            .collect()
    }
}

fn hosts_have_duplicates(hosts: &HostIndex, fleet: &FleetDef) -> bool {
    fleet
        .hosts
        .iter()
        .enumerate()
        .any(|(number, host)| hosts.host(&host.name) != Some(number as HostId))
}
