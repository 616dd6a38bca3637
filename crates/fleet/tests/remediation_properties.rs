//! Alert storms over random fleets: whatever arrives, [`decide`] never lets a repair exceed
//! the rule's per-pool or overall limit, never start while a short circuit is tripped, never
//! repeat a host in repair or in its cooldown, and never take a pool below its floor (counting
//! every down, disabled and in-repair host and every overlapping maintenance).
//!
//! Each case builds a fleet with the crate's seeded generator and plays a storm of events
//! (firing and resolved alerts, alone or in one notification; repairs ending; hosts going down;
//! maintenances reserved), so a failure prints the seed that reproduces it.

use std::collections::{BTreeMap, BTreeSet};

use levee_fleet::remediation::InRepair;
use levee_fleet::synthetic::{self, Rng};
use levee_fleet::{
    Alert, AlertStatus, Decision, FleetIndex, PastRepair, RemediationState, Reservation,
    WebhookPayload, Window, decide, decide_payload,
};
use levee_model::remediation_rule::LabelMatcher;
use levee_model::runbook::{Located, Origin};
use levee_model::{Amount, MatchOp, RemediationRuleDef, ShortCircuit};
use proptest::prelude::*;

const MINUTE_MS: i64 = 60_000;
/// Events in one storm.
const EVENTS_PER_STORM: usize = 150;
/// Random storms run.
const STORM_CASES: u32 = 300;
/// Alert names the storms use; the rules match some of them.
const ALERT_NAMES: [&str; 4] = ["HostDown", "DiskFailing", "MemoryErrors", "Watchdog"];

fn origin() -> Origin {
    Origin {
        file: "random".to_string(),
        line: 1,
        column: 1,
    }
}

fn amount(rng: &mut Rng, max_count: u64) -> Amount {
    if rng.below(3) == 0 {
        Amount::Percent {
            basis_points: 500 + rng.below(4_500) as u32,
        }
    } else {
        Amount::Count(1 + rng.below(max_count))
    }
}

fn random_rule(rng: &mut Rng, number: usize) -> RemediationRuleDef {
    RemediationRuleDef {
        name: format!("rule{number}"),
        description: None,
        fleet: None,
        matchers: vec![LabelMatcher {
            label: "alertname".to_string(),
            op: MatchOp::Equal(ALERT_NAMES[number % 3].to_string()),
            origin: origin(),
        }],
        host_label: None,
        runbook: Located {
            value: "fix".to_string(),
            origin: origin(),
        },
        with: serde_json::Map::new(),
        max_in_repair_per_pool: amount(rng, 3),
        max_in_repair: amount(rng, 10),
        short_circuit: ShortCircuit {
            max_unhealthy: amount(rng, 20),
            within_ms: (1 + rng.below(20)) * MINUTE_MS as u64,
        },
        repair_ticket_webhook: None,
        cooldown_ms: rng.below(60) * MINUTE_MS as u64,
        origin: origin(),
    }
}

/// Checks every promise a remediation makes, against a naive recount of `state` as it was
/// before the decision.
fn check_remediation(
    index: &FleetIndex,
    rules: &[RemediationRuleDef],
    state: &RemediationState,
    decision: &Decision,
    now_ms: i64,
    seed: u64,
) {
    let Decision::Remediate(remediation) = decision else {
        return;
    };
    let host = remediation.host.as_str();
    let rule = rules
        .iter()
        .find(|r| r.name == remediation.rule)
        .expect("the rule exists");
    let context = format!("seed {seed}, {host} by {} at {now_ms}", rule.name);
    let host_id = index.host(host).expect("a fleet host");
    assert!(
        !state.in_repair.iter().any(|r| r.host == host),
        "{context}: repaired twice"
    );
    assert!(
        !state.disabled.iter().any(|h| h == host),
        "{context}: disabled"
    );
    if let Some(ended) = state
        .past_repairs
        .iter()
        .filter(|r| r.host == host)
        .map(|r| r.ended_ms)
        .max()
    {
        assert!(
            now_ms >= ended + rule.cooldown_ms as i64,
            "{context}: within its cooldown"
        );
    }
    // Limits, after adding this host.
    let mut repairing: BTreeSet<&str> = state.in_repair.iter().map(|r| r.host.as_str()).collect();
    repairing.insert(host);
    let fleet_hosts = index.host_count() as u64;
    assert!(
        repairing.len() as u64 <= rule.max_in_repair.units_rounded_down(fleet_hosts),
        "{context}: overall limit {} exceeded with {repairing:?}",
        rule.max_in_repair
    );
    // Short circuits of every rule, counting this host now.
    for guard in rules {
        let within = guard.short_circuit.within_ms as i64;
        let mut unhealthy: BTreeSet<&str> = state
            .unhealthy
            .iter()
            .filter(|u| u.at_ms <= now_ms && now_ms - u.at_ms < within)
            .map(|u| u.host.as_str())
            .collect();
        unhealthy.insert(host);
        assert!(
            unhealthy.len() as u64
                <= guard
                    .short_circuit
                    .max_unhealthy
                    .units_rounded_down(fleet_hosts),
            "{context}: short circuit of {} tripped with {unhealthy:?}",
            guard.name
        );
    }
    // Per pool and floors, for every pool the host serves.
    let out: BTreeSet<&str> = state
        .down
        .iter()
        .chain(&state.disabled)
        .map(String::as_str)
        .chain(repairing.iter().copied())
        .chain(
            state
                .reservations
                .iter()
                .filter(|r| r.window.overlaps(remediation.reservation.window))
                .flat_map(|r| r.hosts.iter().map(String::as_str)),
        )
        .chain(index.marked_down().iter().map(|h| index.host_name(*h)))
        .collect();
    for membership in index.memberships(host_id).iter().filter(|m| !m.spare) {
        let pool = index.pool(membership.pool);
        let in_pool = pool
            .members
            .iter()
            .filter(|(m, _)| repairing.contains(index.host_name(*m)))
            .count() as u64;
        assert!(
            in_pool
                <= rule
                    .max_in_repair_per_pool
                    .units_rounded_down(pool.members.len() as u64),
            "{context}: per-pool limit of {} exceeded",
            pool.name
        );
        let left: u64 = pool
            .members
            .iter()
            .filter(|(m, _)| !out.contains(index.host_name(*m)))
            .map(|(_, w)| u64::from(*w))
            .sum();
        assert!(
            left >= pool.floor_units,
            "{context}: pool {} of {} left at {left}, below its floor {}",
            pool.name,
            index.service(pool.service).name,
            pool.floor_units
        );
    }
}

fn random_alert(rng: &mut Rng, index: &FleetIndex, now_ms: i64) -> Alert {
    let host = if rng.below(20) == 0 {
        "not-a-host".to_string()
    } else {
        index
            .host_name(rng.below(index.host_count() as u64) as u32)
            .to_string()
    };
    let name = ALERT_NAMES[rng.below(ALERT_NAMES.len() as u64) as usize];
    let instance = format!("{host}:9100");
    let mut alert = Alert::firing(&[("alertname", name), ("instance", &instance)], now_ms);
    if rng.below(5) == 0 {
        alert.status = AlertStatus::Resolved;
    }
    alert
}

fn storm(seed: u64) {
    let mut rng = Rng::new(seed);
    let host_count = 20 + rng.below(120) as usize;
    let service_count = 2 + rng.below(12) as usize;
    let pool_size = 3 + rng.below(15) as usize;
    let fleet = synthetic::fleet(seed, host_count, service_count, pool_size);
    let index = FleetIndex::build(&fleet).expect("indexes");
    let rules: Vec<RemediationRuleDef> = (0..1 + rng.below(3) as usize)
        .map(|n| random_rule(&mut rng, n))
        .collect();
    let mut state = RemediationState::default();
    let mut now_ms: i64 = 1_000 * MINUTE_MS;
    let mut maintenance = 0;
    for _ in 0..EVENTS_PER_STORM {
        now_ms += rng.below(3) as i64 * MINUTE_MS;
        match rng.below(10) {
            // A repair ends.
            0 if !state.in_repair.is_empty() => {
                let done: InRepair = state
                    .in_repair
                    .remove(rng.below(state.in_repair.len() as u64) as usize);
                state.reservations.retain(|r| {
                    !(r.hosts == [done.host.clone()] && r.window.start_ms == done.since_ms)
                });
                state.past_repairs.push(PastRepair {
                    host: done.host,
                    rule: done.rule,
                    ended_ms: now_ms,
                });
            }
            // A host goes down, or an operator disables one.
            1 => {
                let host = index
                    .host_name(rng.below(index.host_count() as u64) as u32)
                    .to_string();
                if rng.below(2) == 0 {
                    state.down.push(host);
                } else {
                    state.disabled.push(host);
                }
            }
            // A maintenance is reserved (not checked here: preflight's own properties cover
            // it), now or later.
            2 => {
                maintenance += 1;
                let start_ms = now_ms + rng.below(120) as i64 * MINUTE_MS - 30 * MINUTE_MS;
                state.reservations.push(Reservation {
                    maintenance_id: format!("m{maintenance}"),
                    hosts: vec![
                        index
                            .host_name(rng.below(index.host_count() as u64) as u32)
                            .to_string(),
                    ],
                    window: Window {
                        start_ms,
                        end_ms: start_ms + (1 + rng.below(120) as i64) * MINUTE_MS,
                    },
                });
            }
            // A notification of several alerts.
            3 | 4 => {
                let alerts: Vec<Alert> = (0..1 + rng.below(8))
                    .map(|_| random_alert(&mut rng, &index, now_ms))
                    .collect();
                let payload = WebhookPayload {
                    version: "4".to_string(),
                    group_key: None,
                    truncated_alerts: 0,
                    status: AlertStatus::Firing,
                    receiver: None,
                    group_labels: BTreeMap::new(),
                    common_labels: BTreeMap::new(),
                    common_annotations: BTreeMap::new(),
                    external_url: None,
                    alerts,
                };
                let (decisions, after) = decide_payload(&index, &rules, &state, &payload, now_ms);
                // Replay one by one to check each against the state it saw.
                let mut replay = state.clone();
                for (alert, decision) in payload.alerts.iter().zip(&decisions) {
                    assert_eq!(
                        &decide(&index, &rules, &replay, alert, now_ms),
                        decision,
                        "seed {seed}: a batch decides like one alert after the other"
                    );
                    check_remediation(&index, &rules, &replay, decision, now_ms, seed);
                    replay.record(decision, now_ms);
                }
                assert_eq!(replay, after, "seed {seed}");
                state = after;
            }
            // One alert.
            _ => {
                let alert = random_alert(&mut rng, &index, now_ms);
                let decision = decide(&index, &rules, &state, &alert, now_ms);
                check_remediation(&index, &rules, &state, &decision, now_ms, seed);
                state.record(&decision, now_ms);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(STORM_CASES))]

    #[test]
    fn storms_never_exceed_limits_short_circuits_or_floors(seed in any::<u64>()) {
        storm(seed);
    }
}

#[test]
fn a_fixed_storm_repairs_something_and_refuses_something() {
    // Guards the property above against vacuity: with these seeds storms do repair hosts.
    let mut repaired = 0;
    let mut refused = 0;
    for seed in 0..20 {
        let mut rng = Rng::new(seed);
        let fleet = synthetic::fleet(seed, 60, 6, 10);
        let index = FleetIndex::build(&fleet).expect("indexes");
        let rules = vec![random_rule(&mut rng, 0)];
        let mut state = RemediationState::default();
        for step in 0..50 {
            let now_ms = 1_000 * MINUTE_MS + step * MINUTE_MS;
            let mut alert = random_alert(&mut rng, &index, now_ms);
            alert
                .labels
                .insert("alertname".to_string(), "HostDown".to_string());
            alert.status = AlertStatus::Firing;
            let decision = decide(&index, &rules, &state, &alert, now_ms);
            match &decision {
                Decision::Remediate(_) => repaired += 1,
                Decision::Refused(_) => refused += 1,
                Decision::Resolved { .. } => {}
            }
            check_remediation(&index, &rules, &state, &decision, now_ms, seed);
            state.record(&decision, now_ms);
        }
    }
    assert!(
        repaired > 0 && refused > 0,
        "{repaired} repaired, {refused} refused"
    );
}
