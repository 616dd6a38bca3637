//! Aggregate preflight: over the whole scope at once, for every pool it touches, the capacity
//! left after removing every in-scope host, every host already down, and every host held by
//! another maintenance overlapping in time, against the pool's floor.
//!
//! Why this keeps every pool at or above its floor at every instant, when maintenances are
//! admitted one at a time (the store re-runs [`admit`] against every stored reservation inside
//! the write transaction that stores the new one): at any instant `t`, take the maintenances
//! active at `t`, and among them the one admitted last. Every other one was stored before it
//! and overlaps it (both contain `t`), so its preflight counted all of their hosts as held.
//! It passed, so each pool kept its floor with all of them out together. Counting every
//! overlapping reservation, even ones that do not overlap each other, is conservative; it is
//! never unsafe.

use serde::{Deserialize, Serialize};

use crate::index::{FleetIndex, HostId, PoolId, ScopeError};
use levee_model::Amount;

/// Most host names a report's [`PreflightReport::explain`] lists for one reason in one pool;
/// the report itself keeps them all.
pub const MAX_HOSTS_NAMED_PER_REASON: usize = 10;

/// A span of time, `[start_ms, end_ms)` in epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    /// Whether the two windows share an instant. Windows are half-open: one that ends at
    /// 10:00 and one that starts at 10:00 do not overlap.
    pub fn overlaps(self, other: Window) -> bool {
        overlaps(self, other)
    }

    /// Whether `instant_ms` is inside the window.
    pub fn contains(self, instant_ms: i64) -> bool {
        self.start_ms <= instant_ms && instant_ms < self.end_ms
    }
}

/// Whether two half-open windows share an instant.
pub fn overlaps(a: Window, b: Window) -> bool {
    a.start_ms < b.end_ms && b.start_ms < a.end_ms
}

/// Capacity a maintenance holds: its hosts, during its window. The store keeps one per
/// admitted maintenance; hosts are names so a reservation outlives a re-applied fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub maintenance_id: String,
    pub hosts: Vec<String>,
    pub window: Window,
}

impl Reservation {
    pub fn overlaps(&self, window: Window) -> bool {
        self.window.overlaps(window)
    }
}

/// Hosts of a pool held by one overlapping maintenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub maintenance_id: String,
    pub hosts: Vec<String>,
}

/// The check of one pool the scope touches. Units are capacity units (hosts, at weight 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCheck {
    pub service: String,
    pub pool: String,
    pub floor: Amount,
    pub floor_units: u64,
    /// Every member's weight: the capacity before anything is taken away.
    pub capacity_units: u64,
    pub removed_by_scope_units: u64,
    pub already_down_units: u64,
    pub held_by_overlapping_units: u64,
    /// `capacity - removed - down - held`; each host counted once, in that order.
    pub after_units: u64,
    pub passed: bool,
    /// How far below the floor `after` is; 0 when it passes.
    pub deficit_units: u64,
    /// Members in the scope: the hosts that cause a failure.
    pub hosts_in_scope: Vec<String>,
    pub hosts_down: Vec<String>,
    pub held: Vec<Held>,
    /// Spares in the scope: they become unavailable, so no swap may pick them.
    pub spares_in_scope: Vec<String>,
    /// Spares outside the scope, not down and not held: what a replacement may use.
    pub spares_available: usize,
}

/// The answer of a preflight: pass or fail, and every touched pool, failing pools first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    pub passed: bool,
    pub window: Window,
    pub scope_hosts: usize,
    /// Maintenances whose windows overlap this one, in the order given.
    pub overlapping: Vec<String>,
    /// Host names in overlapping reservations that the fleet no longer has (they hold no
    /// capacity of any pool).
    pub unknown_reserved_hosts: Vec<String>,
    pub pools: Vec<PoolCheck>,
}

impl PreflightReport {
    /// The pools below their floor.
    pub fn failing(&self) -> impl Iterator<Item = &PoolCheck> {
        self.pools.iter().filter(|pool| !pool.passed)
    }

    /// The answer in sentences, one line per failing pool (and a summary line), naming pools,
    /// deficits and the hosts that cause them.
    pub fn explain(&self) -> String {
        let failing: Vec<&PoolCheck> = self.failing().collect();
        let mut text = if failing.is_empty() {
            format!(
                "Preflight passed: {} hosts in scope, {} pools touched, every pool at or above \
                 its floor.",
                self.scope_hosts,
                self.pools.len()
            )
        } else {
            format!(
                "Preflight failed: {} of {} pools touched would drop below their floor.",
                failing.len(),
                self.pools.len()
            )
        };
        for pool in failing {
            let floor = match pool.floor {
                Amount::Count(_) => pool.floor_units.to_string(),
                Amount::Percent { .. } => format!("{} ({})", pool.floor_units, pool.floor),
            };
            text.push_str(&format!(
                "\n- {}/{}: {} of {} units left, floor {floor}: short by {}. In scope: {}.",
                pool.service,
                pool.pool,
                pool.after_units,
                pool.capacity_units,
                pool.deficit_units,
                named(&pool.hosts_in_scope)
            ));
            if !pool.hosts_down.is_empty() {
                text.push_str(&format!(" Already down: {}.", named(&pool.hosts_down)));
            }
            for held in &pool.held {
                text.push_str(&format!(
                    " Held by maintenance {}: {}.",
                    held.maintenance_id,
                    named(&held.hosts)
                ));
            }
        }
        text
    }
}

/// `a, b, c and 7 more`.
fn named(hosts: &[String]) -> String {
    if hosts.is_empty() {
        return "none".to_string();
    }
    let shown = hosts.len().min(MAX_HOSTS_NAMED_PER_REASON);
    let mut text = hosts[..shown].join(", ");
    if hosts.len() > shown {
        text.push_str(&format!(" and {} more", hosts.len() - shown));
    }
    text
}

const AVAILABLE: u32 = 0;
const IN_SCOPE: u32 = 1;
const DOWN: u32 = 2;
/// `HELD + k`: held by the k-th overlapping reservation.
const HELD: u32 = 3;

/// Checks removing `scope` during `window`, with `already_down` out of service (the fleet's
/// `down: true` hosts are added) and every reservation overlapping `window` holding its hosts.
/// Callers re-running the preflight of a maintenance already reserved leave its own
/// reservation out (see [`admit`]).
pub fn preflight(
    index: &FleetIndex,
    scope: &[HostId],
    already_down: &[HostId],
    reservations: &[Reservation],
    window: Window,
) -> PreflightReport {
    let overlapping: Vec<&Reservation> = reservations
        .iter()
        .filter(|reservation| reservation.overlaps(window))
        .collect();
    check(index, scope, already_down, overlapping, window)
}

fn check(
    index: &FleetIndex,
    scope: &[HostId],
    already_down: &[HostId],
    overlapping: Vec<&Reservation>,
    window: Window,
) -> PreflightReport {
    let mut status = vec![AVAILABLE; index.host_count()];
    let mut pool_seen = vec![false; index.pools().len()];
    let mut touched: Vec<PoolId> = Vec::new();
    let mut scope_hosts = 0;
    for &host in scope {
        if status[host as usize] == IN_SCOPE {
            continue;
        }
        status[host as usize] = IN_SCOPE;
        scope_hosts += 1;
        for membership in index.memberships(host) {
            let seen = &mut pool_seen[membership.pool.0 as usize];
            if !*seen {
                *seen = true;
                touched.push(membership.pool);
            }
        }
    }
    touched.sort_unstable();
    for &host in already_down.iter().chain(index.marked_down()) {
        if status[host as usize] == AVAILABLE {
            status[host as usize] = DOWN;
        }
    }
    let mut unknown_reserved_hosts = Vec::new();
    for (k, reservation) in overlapping.iter().enumerate() {
        for name in &reservation.hosts {
            match index.host(name) {
                Some(host) => {
                    if status[host as usize] == AVAILABLE {
                        status[host as usize] = HELD + k as u32;
                    }
                }
                None => unknown_reserved_hosts.push(name.clone()),
            }
        }
    }
    let mut pools: Vec<PoolCheck> = touched
        .iter()
        .map(|id| check_pool(index, *id, &status, &overlapping))
        .collect();
    // Failing pools first, each group in fleet order (the sort is stable).
    pools.sort_by_key(|pool| pool.passed);
    PreflightReport {
        passed: pools.iter().all(|pool| pool.passed),
        window,
        scope_hosts,
        overlapping: overlapping
            .iter()
            .map(|r| r.maintenance_id.clone())
            .collect(),
        unknown_reserved_hosts,
        pools,
    }
}

fn check_pool(
    index: &FleetIndex,
    id: PoolId,
    status: &[u32],
    overlapping: &[&Reservation],
) -> PoolCheck {
    let pool = index.pool(id);
    let mut removed = 0u64;
    let mut down = 0u64;
    let mut held_units = 0u64;
    let mut hosts_in_scope = Vec::new();
    let mut hosts_down = Vec::new();
    let mut held: Vec<Held> = Vec::new();
    for &(host, weight) in &pool.members {
        let weight = u64::from(weight);
        match status[host as usize] {
            AVAILABLE => {}
            IN_SCOPE => {
                removed += weight;
                hosts_in_scope.push(index.host_name(host).to_string());
            }
            DOWN => {
                down += weight;
                hosts_down.push(index.host_name(host).to_string());
            }
            by => {
                held_units += weight;
                let maintenance_id = &overlapping[(by - HELD) as usize].maintenance_id;
                let name = index.host_name(host).to_string();
                match held
                    .iter_mut()
                    .find(|h| &h.maintenance_id == maintenance_id)
                {
                    Some(entry) => entry.hosts.push(name),
                    None => held.push(Held {
                        maintenance_id: maintenance_id.clone(),
                        hosts: vec![name],
                    }),
                }
            }
        }
    }
    let mut spares_in_scope = Vec::new();
    let mut spares_available = 0;
    for &spare in &pool.spares {
        match status[spare as usize] {
            AVAILABLE => spares_available += 1,
            IN_SCOPE => spares_in_scope.push(index.host_name(spare).to_string()),
            _ => {}
        }
    }
    let after = pool.capacity_units - removed - down - held_units;
    let service = index.service(pool.service);
    PoolCheck {
        service: service.name.clone(),
        pool: pool.name.clone(),
        floor: pool.floor,
        floor_units: pool.floor_units,
        capacity_units: pool.capacity_units,
        removed_by_scope_units: removed,
        already_down_units: down,
        held_by_overlapping_units: held_units,
        after_units: after,
        passed: after >= pool.floor_units,
        deficit_units: pool.floor_units.saturating_sub(after),
        hosts_in_scope,
        hosts_down,
        held,
        spares_in_scope,
        spares_available,
    }
}

/// Whether `candidate` may be stored next to `existing`: the preflight of its hosts during its
/// window against every other reservation (its own earlier reservation, same maintenance id,
/// left out). The store runs this inside the write transaction that stores the candidate, so
/// two maintenances can never both pass against the same headroom. A candidate naming no
/// host, or a host the fleet does not have, is an error.
pub fn admit(
    index: &FleetIndex,
    candidate: &Reservation,
    existing: &[Reservation],
    already_down: &[HostId],
) -> Result<PreflightReport, ScopeError> {
    let scope = index.host_ids(&candidate.hosts)?;
    let others: Vec<&Reservation> = existing
        .iter()
        .filter(|r| r.maintenance_id != candidate.maintenance_id && r.overlaps(candidate.window))
        .collect();
    Ok(check(index, &scope, already_down, others, candidate.window))
}
