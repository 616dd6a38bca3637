//! Properties over thousands of random fleets, floors and overlapping maintenance schedules:
//!
//! - admitting maintenances one after another through [`admit`] never leaves a pool below its
//!   floor at any instant (a pool already below it because of hosts that are down is never
//!   made worse by maintenance);
//! - the same holds when many clients schedule "at once": each checks against a stale
//!   snapshot, and the store re-runs the check against what is committed, in a random order;
//! - every preflight report agrees with a naive recount from the fleet definition.
//!
//! Fleets are built from the case's seed with the crate's deterministic generator, so a
//! failure prints the seed and sizes that reproduce it.

use std::collections::HashSet;

use levee_fleet::synthetic::Rng;
use levee_fleet::{FleetIndex, PreflightReport, Reservation, Window, admit};
use levee_model::fleet::check_and_resolve;
use levee_model::runbook::{Located, Origin};
use levee_model::{
    Amount, CapacityPolicy, DomainLevel, FleetDef, HostChoice, HostDef, PoolDef, ServiceDef,
};
use proptest::prelude::*;

const HOUR_MS: i64 = 3_600_000;
/// The schedule spans this many hours.
const SCHEDULE_HOURS: u64 = 24;
/// Longest maintenance, in hours.
const MAX_MAINTENANCE_HOURS: u64 = 6;
const SEQUENTIAL_CASES: u32 = 2_000;
const CONCURRENT_CASES: u32 = 1_000;

fn origin() -> Origin {
    Origin {
        file: "random".to_string(),
        line: 1,
        column: 1,
    }
}

fn located(value: String) -> Located<String> {
    Located {
        value,
        origin: origin(),
    }
}

/// A random fleet: hosts over a few racks (two racks per row), some down; services with one
/// or two pools of random members, weights, spares and floors that fit.
fn random_fleet(rng: &mut Rng, host_count: usize, service_count: usize) -> FleetDef {
    let racks = 1 + rng.below(6) as usize;
    let hosts: Vec<HostDef> = (0..host_count)
        .map(|number| {
            let rack = rng.below(racks as u64) as usize;
            let mut host = HostDef::named(&format!("h{number}"));
            host.domains
                .set(DomainLevel::Rack, Some(format!("r{rack}")));
            host.domains
                .set(DomainLevel::Row, Some(format!("row{}", rack / 2)));
            host.down = rng.below(20) == 0;
            host
        })
        .collect();
    let services = (0..service_count)
        .map(|service| {
            let pools = (0..1 + rng.below(2))
                .map(|pool| {
                    let mut members: Vec<usize> =
                        (0..host_count).filter(|_| rng.below(3) == 0).collect();
                    if members.is_empty() {
                        members.push(rng.below(host_count as u64) as usize);
                    }
                    let spares: Vec<usize> = (0..host_count)
                        .filter(|h| !members.contains(h) && rng.below(8) == 0)
                        .collect();
                    let mut weights: Vec<(Located<String>, u32)> = Vec::new();
                    for h in &members {
                        if rng.below(4) == 0 {
                            weights.push((located(format!("h{h}")), 2 + rng.below(3) as u32));
                        }
                    }
                    let total: u64 = members
                        .iter()
                        .map(|h| {
                            weights
                                .iter()
                                .find(|(name, _)| name.value == format!("h{h}"))
                                .map_or(1, |(_, w)| u64::from(*w))
                        })
                        .sum();
                    let floor = if rng.below(2) == 0 {
                        Amount::Count(rng.below(total + 1))
                    } else {
                        Amount::Percent {
                            basis_points: rng.below(10_001) as u32,
                        }
                    };
                    let list = |hosts: &[usize]| {
                        HostChoice::List(hosts.iter().map(|h| located(format!("h{h}"))).collect())
                    };
                    PoolDef {
                        name: format!("p{pool}"),
                        hosts: list(&members),
                        spares: (!spares.is_empty()).then(|| list(&spares)),
                        capacity: CapacityPolicy {
                            floor: Located {
                                value: floor,
                                origin: origin(),
                            },
                            weight: 1,
                            weights,
                        },
                        members: Vec::new(),
                        spare_hosts: Vec::new(),
                        origin: origin(),
                    }
                })
                .collect();
            ServiceDef {
                name: format!("s{service}"),
                owner: None,
                pools,
                dependencies: Vec::new(),
                origin: origin(),
            }
        })
        .collect();
    let mut fleet = FleetDef {
        name: "random".to_string(),
        description: None,
        hosts,
        services,
        origin: origin(),
    };
    let diagnostics = check_and_resolve(&mut fleet);
    assert!(
        !diagnostics.iter().any(|d| d.is_error()),
        "the generator made a bad fleet: {diagnostics:?}"
    );
    fleet
}

/// A random maintenance: a whole rack, or a random handful of hosts, at a random time.
fn random_request(rng: &mut Rng, fleet: &FleetDef, id: usize) -> Reservation {
    let hosts: Vec<String> = if rng.below(2) == 0 {
        let rack = fleet.hosts[rng.below(fleet.hosts.len() as u64) as usize]
            .domains
            .rack
            .clone();
        fleet
            .hosts
            .iter()
            .filter(|h| h.domains.rack == rack)
            .map(|h| h.name.clone())
            .collect()
    } else {
        let count = 1 + rng.below(4);
        (0..count)
            .map(|_| {
                fleet.hosts[rng.below(fleet.hosts.len() as u64) as usize]
                    .name
                    .clone()
            })
            .collect()
    };
    let start_ms = rng.below(SCHEDULE_HOURS) as i64 * HOUR_MS + rng.below(60) as i64 * 60_000;
    let length_ms = (1 + rng.below(MAX_MAINTENANCE_HOURS * 60)) as i64 * 60_000;
    Reservation {
        maintenance_id: format!("m{id}"),
        hosts,
        window: Window {
            start_ms,
            end_ms: start_ms + length_ms,
        },
    }
}

fn total_units(pool: &PoolDef) -> u64 {
    pool.members
        .iter()
        .map(|m| u64::from(pool.weight_of(m)))
        .sum()
}

/// Capacity left in `pool` with `out` hosts out of service.
fn left(pool: &PoolDef, out: &HashSet<&str>) -> u64 {
    pool.members
        .iter()
        .filter(|m| !out.contains(m.as_str()))
        .map(|m| u64::from(pool.weight_of(m)))
        .sum()
}

/// Checks every pool at every instant where the schedule changes (capacity is constant
/// between window starts, so the lowest point of each stretch is at a start).
fn assert_floors_hold(fleet: &FleetDef, down: &HashSet<&str>, accepted: &[Reservation]) {
    for instant in accepted.iter().map(|r| r.window.start_ms) {
        let active: Vec<&Reservation> = accepted
            .iter()
            .filter(|r| r.window.contains(instant))
            .collect();
        let mut out: HashSet<&str> = down.clone();
        for reservation in &active {
            out.extend(reservation.hosts.iter().map(String::as_str));
        }
        for service in &fleet.services {
            for pool in &service.pools {
                let floor = pool
                    .capacity
                    .floor
                    .value
                    .units_rounded_up(total_units(pool));
                if left(pool, down) >= floor {
                    assert!(
                        left(pool, &out) >= floor,
                        "{}/{} is at {} < floor {floor} at {instant} with {:?} active",
                        service.name,
                        pool.name,
                        left(pool, &out),
                        active.iter().map(|r| &r.maintenance_id).collect::<Vec<_>>()
                    );
                } else {
                    // Already below its floor: maintenance must not take any of its members.
                    assert_eq!(
                        left(pool, &out),
                        left(pool, down),
                        "{}/{} was below its floor and maintenance made it worse",
                        service.name,
                        pool.name
                    );
                }
            }
        }
    }
}

/// Recounts a report from the fleet definition: the touched pools and every number.
fn assert_report_is_exact(
    fleet: &FleetDef,
    down: &HashSet<&str>,
    candidate: &Reservation,
    existing: &[Reservation],
    report: &PreflightReport,
) {
    let scope: HashSet<&str> = candidate.hosts.iter().map(String::as_str).collect();
    let held: HashSet<&str> = existing
        .iter()
        .filter(|r| r.maintenance_id != candidate.maintenance_id && r.overlaps(candidate.window))
        .flat_map(|r| r.hosts.iter().map(String::as_str))
        .collect();
    let mut touched = 0;
    for service in &fleet.services {
        for pool in &service.pools {
            let touches = pool
                .members
                .iter()
                .chain(&pool.spare_hosts)
                .any(|h| scope.contains(h.as_str()));
            let check = report
                .pools
                .iter()
                .find(|c| c.service == service.name && c.pool == pool.name);
            assert_eq!(touches, check.is_some(), "{}/{}", service.name, pool.name);
            let Some(check) = check else { continue };
            touched += 1;
            let sum = |keep: &dyn Fn(&str) -> bool| -> u64 {
                pool.members
                    .iter()
                    .filter(|m| keep(m))
                    .map(|m| u64::from(pool.weight_of(m)))
                    .sum()
            };
            let removed = sum(&|m| scope.contains(m));
            let already_down = sum(&|m| !scope.contains(m) && down.contains(m));
            let held_units = sum(&|m| !scope.contains(m) && !down.contains(m) && held.contains(m));
            let floor = pool
                .capacity
                .floor
                .value
                .units_rounded_up(total_units(pool));
            let after = total_units(pool) - removed - already_down - held_units;
            assert_eq!(
                (
                    check.capacity_units,
                    check.removed_by_scope_units,
                    check.already_down_units,
                    check.held_by_overlapping_units,
                    check.after_units,
                    check.floor_units,
                    check.passed,
                    check.deficit_units
                ),
                (
                    total_units(pool),
                    removed,
                    already_down,
                    held_units,
                    after,
                    floor,
                    after >= floor,
                    floor.saturating_sub(after)
                ),
                "{}/{}",
                service.name,
                pool.name
            );
        }
    }
    assert_eq!(touched, report.pools.len());
    assert_eq!(report.passed, report.pools.iter().all(|p| p.passed));
}

fn down_hosts(rng: &mut Rng, fleet: &FleetDef) -> Vec<String> {
    fleet
        .hosts
        .iter()
        .filter(|_| rng.below(25) == 0)
        .map(|h| h.name.clone())
        .collect()
}

/// Everything out of service without maintenance: given down, and marked down in the fleet.
fn all_down<'a>(fleet: &'a FleetDef, down: &'a [String]) -> HashSet<&'a str> {
    down.iter()
        .map(String::as_str)
        .chain(
            fleet
                .hosts
                .iter()
                .filter(|h| h.down)
                .map(|h| h.name.as_str()),
        )
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: SEQUENTIAL_CASES, ..ProptestConfig::default() })]

    #[test]
    fn admitting_one_after_another_never_breaks_a_floor(
        seed in any::<u64>(),
        host_count in 2usize..40,
        service_count in 1usize..6,
        request_count in 1usize..25,
    ) {
        let mut rng = Rng::new(seed);
        let fleet = random_fleet(&mut rng, host_count, service_count);
        let index = FleetIndex::build(&fleet).expect("indexes");
        let down_names = down_hosts(&mut rng, &fleet);
        let down_ids = index.host_ids(&down_names).unwrap_or_default();
        let down = all_down(&fleet, &down_names);
        let mut accepted: Vec<Reservation> = Vec::new();
        for id in 0..request_count {
            let candidate = random_request(&mut rng, &fleet, id);
            let report = admit(&index, &candidate, &accepted, &down_ids).expect("known hosts");
            assert_report_is_exact(&fleet, &down, &candidate, &accepted, &report);
            if report.passed {
                accepted.push(candidate);
            }
        }
        assert_floors_hold(&fleet, &down, &accepted);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CONCURRENT_CASES, ..ProptestConfig::default() })]

    /// Clients prepare requests against snapshots taken at random earlier moments (so several
    /// pass against the same headroom), then submit in a random interleaving; the store
    /// re-runs admission against what is committed when each arrives.
    #[test]
    fn concurrent_scheduling_never_breaks_a_floor(
        seed in any::<u64>(),
        host_count in 2usize..40,
        service_count in 1usize..6,
        client_count in 2usize..8,
        requests_per_client in 1usize..6,
    ) {
        let mut rng = Rng::new(seed);
        let fleet = random_fleet(&mut rng, host_count, service_count);
        let index = FleetIndex::build(&fleet).expect("indexes");
        let down_names = down_hosts(&mut rng, &fleet);
        let down_ids = index.host_ids(&down_names).unwrap_or_default();
        let down = all_down(&fleet, &down_names);
        let mut queues: Vec<Vec<Reservation>> = (0..client_count)
            .map(|client| {
                (0..requests_per_client)
                    .map(|k| random_request(&mut rng, &fleet, client * requests_per_client + k))
                    .rev()
                    .collect()
            })
            .collect();
        let mut accepted: Vec<Reservation> = Vec::new();
        while queues.iter().any(|q| !q.is_empty()) {
            let nonempty: Vec<usize> = (0..queues.len()).filter(|c| !queues[*c].is_empty()).collect();
            let client = nonempty[rng.below(nonempty.len() as u64) as usize];
            let candidate = queues[client].pop().expect("nonempty");
            // The client's own check, against a stale snapshot: advisory only.
            let snapshot = rng.below(accepted.len() as u64 + 1) as usize;
            let advisory = admit(&index, &candidate, &accepted[..snapshot], &down_ids)
                .expect("known hosts");
            if !advisory.passed {
                continue;
            }
            // The store's check, in the transaction that would store it.
            let committed = admit(&index, &candidate, &accepted, &down_ids).expect("known hosts");
            if committed.passed {
                accepted.push(candidate);
            }
        }
        assert_floors_hold(&fleet, &down, &accepted);
    }
}

#[test]
fn the_property_checker_catches_a_schedule_that_breaks_a_floor() {
    // The checker must be able to fail: two overlapping maintenances of both hosts of a pool
    // with a floor of 1, accepted without admission, break it.
    let mut rng = Rng::new(7);
    let mut fleet = random_fleet(&mut rng, 2, 1);
    for host in &mut fleet.hosts {
        host.down = false;
    }
    let pool = &mut fleet.services[0].pools[0];
    pool.hosts = HostChoice::List(vec![located("h0".into()), located("h1".into())]);
    pool.spares = None;
    pool.capacity.weights.clear();
    pool.capacity.floor.value = Amount::Count(1);
    assert!(!check_and_resolve(&mut fleet).iter().any(|d| d.is_error()));
    let window = Window {
        start_ms: 0,
        end_ms: HOUR_MS,
    };
    let schedule = [
        Reservation {
            maintenance_id: "a".into(),
            hosts: vec!["h0".into()],
            window,
        },
        Reservation {
            maintenance_id: "b".into(),
            hosts: vec!["h1".into()],
            window,
        },
    ];
    let index = FleetIndex::build(&fleet).expect("indexes");
    assert!(
        !admit(&index, &schedule[1], &schedule[..1], &[])
            .expect("known")
            .passed
    );
    let broken = std::panic::catch_unwind(|| {
        assert_floors_hold(&fleet, &HashSet::new(), &schedule);
    });
    assert!(broken.is_err(), "the checker accepted a broken schedule");
}

#[test]
fn random_schedules_exercise_acceptance_refusal_and_the_race() {
    // The properties above would pass vacuously if admission refused everything, or if
    // stale snapshots never let two clients pass against the same headroom.
    const SEEDS: u64 = 300;
    let (mut accepted_total, mut refused_total, mut races_caught) = (0, 0, 0);
    for seed in 0..SEEDS {
        let mut rng = Rng::new(seed);
        let fleet = random_fleet(&mut rng, 30, 4);
        let index = FleetIndex::build(&fleet).expect("indexes");
        let mut accepted: Vec<Reservation> = Vec::new();
        for id in 0..12 {
            let candidate = random_request(&mut rng, &fleet, id);
            let advisory = admit(&index, &candidate, &[], &[]).expect("known hosts");
            let committed = admit(&index, &candidate, &accepted, &[]).expect("known hosts");
            if committed.passed {
                accepted_total += 1;
                accepted.push(candidate);
            } else {
                refused_total += 1;
                if advisory.passed {
                    races_caught += 1;
                }
            }
        }
    }
    assert!(accepted_total > 100, "accepted {accepted_total}");
    assert!(refused_total > 100, "refused {refused_total}");
    assert!(races_caught > 50, "races caught {races_caught}");
}
