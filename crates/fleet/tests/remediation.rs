//! Alert-driven remediation on the example row (`examples/fleet/row.yaml`) with the example
//! rule (`examples/fleet/remediation.yaml`): one test per outcome of [`decide`], each checking
//! the reason and that the explanation names what to look at.

use levee_fleet::remediation::{REPAIR_OPEN_END_MS, repair_id};
use levee_fleet::{
    Alert, AlertStatus, Decision, FleetIndex, InRepair, PastRepair, RefusalReason,
    RemediationState, Reservation, Unhealthy, Window, decide, decide_payload, parse_webhook,
};
use levee_model::{Definition, LoadContext, RemediationRuleDef, load_documents};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
/// 2025-01-01T00:00:00Z.
const NOW_MS: i64 = 1_735_689_600_000;

fn load(relative: &str) -> Vec<Definition> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    let text = std::fs::read_to_string(&path).expect("read the example");
    let ctx = LoadContext::new(0, jiff::tz::TimeZone::UTC);
    load_documents(relative, &text, &ctx).unwrap_or_else(|diagnostics| {
        let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        panic!("{relative}: {}", rendered.join("\n"))
    })
}

fn row() -> (FleetIndex, Vec<RemediationRuleDef>) {
    let fleet = load("examples/fleet/row.yaml")[0]
        .as_fleet()
        .cloned()
        .expect("a fleet");
    let index = FleetIndex::build(&fleet).expect("indexes");
    let rules: Vec<RemediationRuleDef> = load("examples/fleet/remediation.yaml")
        .iter()
        .filter_map(|d| d.as_remediation_rule().cloned())
        .collect();
    assert_eq!(rules.len(), 1);
    (index, rules)
}

fn host_down(instance: &str) -> Alert {
    Alert::firing(
        &[
            ("alertname", "HostDown"),
            ("severity", "page"),
            ("instance", instance),
            ("job", "node"),
        ],
        NOW_MS - MINUTE_MS,
    )
}

fn in_repair(host: &str, since_ms: i64) -> InRepair {
    InRepair {
        host: host.to_string(),
        rule: "row-a-host-down".to_string(),
        since_ms,
    }
}

fn refusal(decision: &Decision) -> (&RefusalReason, &str) {
    match decision {
        Decision::Refused(refusal) => (&refusal.reason, &refusal.explanation),
        other => panic!("expected a refusal, got {other:#?}"),
    }
}

#[test]
fn a_matching_alert_repairs_its_host_with_the_rule_s_runbook() {
    let (index, rules) = row();
    let decision = decide(
        &index,
        &rules,
        &RemediationState::default(),
        &host_down("web-r1-1:9100"),
        NOW_MS,
    );
    let Decision::Remediate(remediation) = &decision else {
        panic!("expected a remediation: {decision:#?}");
    };
    assert_eq!(remediation.host, "web-r1-1");
    assert_eq!(remediation.rule, "row-a-host-down");
    assert_eq!(remediation.runbook, "host-repair");
    assert_eq!(remediation.params["host"], "web-r1-1");
    assert_eq!(remediation.params["service"], "web");
    assert_eq!(remediation.params["alert"], "HostDown");
    assert_eq!(remediation.params["ticket_queue"], "dc1-hardware");
    assert_eq!(
        remediation.reservation,
        Reservation {
            maintenance_id: repair_id("web-r1-1", NOW_MS),
            hosts: vec!["web-r1-1".to_string()],
            window: Window {
                start_ms: NOW_MS,
                end_ms: REPAIR_OPEN_END_MS,
            },
        }
    );
    assert_eq!(
        remediation.repair_ticket_webhook.as_deref(),
        Some("http://tickets.example.invalid/api/repairs")
    );
    assert!(remediation.preflight.passed);
    assert!(
        decision
            .explanation()
            .contains("`web-r1-1` goes into repair"),
        "{decision}"
    );
    // The same inputs give the same answer.
    let again = decide(
        &index,
        &rules,
        &RemediationState::default(),
        &host_down("web-r1-1:9100"),
        NOW_MS,
    );
    assert_eq!(again, decision);
}

#[test]
fn an_alert_no_rule_matches_repairs_nothing() {
    let (index, rules) = row();
    let alert = Alert::firing(
        &[("alertname", "Watchdog"), ("instance", "web-r1-1:9100")],
        NOW_MS,
    );
    let decision = decide(&index, &rules, &RemediationState::default(), &alert, NOW_MS);
    let (reason, explanation) = refusal(&decision);
    assert_eq!(reason, &RefusalReason::NoMatchingRule);
    assert!(explanation.contains("`Watchdog`"), "{explanation}");
    // A rule for another fleet never matches.
    let mut other = rules.clone();
    other[0].fleet.as_mut().expect("a fleet").value = "row-b".to_string();
    let decision = decide(
        &index,
        &other,
        &RemediationState::default(),
        &host_down("web-r1-1:9100"),
        NOW_MS,
    );
    assert_eq!(refusal(&decision).0, &RefusalReason::NoMatchingRule);
}

#[test]
fn an_unknown_host_is_refused_with_a_suggestion() {
    let (index, rules) = row();
    let decision = decide(
        &index,
        &rules,
        &RemediationState::default(),
        &host_down("web-r1-l:9100"),
        NOW_MS,
    );
    let (reason, explanation) = refusal(&decision);
    assert_eq!(
        reason,
        &RefusalReason::UnknownHost {
            host: "web-r1-l".to_string(),
            did_you_mean: Some("web-r1-1".to_string()),
        }
    );
    assert!(
        explanation.contains("not a host of the fleet `row-a`. Did you mean `web-r1-1`?"),
        "{explanation}"
    );
}

#[test]
fn an_alert_without_the_host_label_is_refused_naming_the_label() {
    let (index, rules) = row();
    let alert = Alert::firing(
        &[
            ("alertname", "HostDown"),
            ("severity", "critical"),
            ("host", "web-r1-1"),
        ],
        NOW_MS,
    );
    let decision = decide(&index, &rules, &RemediationState::default(), &alert, NOW_MS);
    let (reason, explanation) = refusal(&decision);
    assert_eq!(
        reason,
        &RefusalReason::NoHostLabel {
            labels: vec!["instance".to_string()],
        }
    );
    assert!(explanation.contains("`host_label`"), "{explanation}");
    // Without `host_label`, `instance` is tried, then `host`.
    let mut default_label = rules.clone();
    default_label[0].host_label = None;
    let decision = decide(
        &index,
        &default_label,
        &RemediationState::default(),
        &alert,
        NOW_MS,
    );
    assert!(matches!(decision, Decision::Remediate(_)), "{decision:#?}");
}

#[test]
fn a_resolved_alert_starts_nothing_and_says_whether_the_repair_may_be_confirmed() {
    let (index, rules) = row();
    let mut alert = host_down("web-r1-1:9100");
    alert.status = AlertStatus::Resolved;
    let decision = decide(&index, &rules, &RemediationState::default(), &alert, NOW_MS);
    let Decision::Resolved {
        in_repair: None,
        explanation,
        ..
    } = &decision
    else {
        panic!("{decision:#?}");
    };
    assert!(explanation.contains("nothing changes"), "{explanation}");
    let state = RemediationState {
        in_repair: vec![in_repair("web-r1-1", NOW_MS - HOUR_MS)],
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &alert, NOW_MS);
    let Decision::Resolved {
        in_repair: Some(repair),
        explanation,
        host,
        ..
    } = &decision
    else {
        panic!("{decision:#?}");
    };
    assert_eq!(
        (host.as_str(), repair.since_ms),
        ("web-r1-1", NOW_MS - HOUR_MS)
    );
    assert!(explanation.contains("may be confirmed"), "{explanation}");
    assert_eq!(decision.unhealthy_host(), None);
}

#[test]
fn a_host_already_in_repair_is_not_repaired_twice() {
    let (index, rules) = row();
    let state = RemediationState {
        in_repair: vec![in_repair("web-r1-1", NOW_MS - HOUR_MS)],
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &host_down("web-r1-1:9100"), NOW_MS);
    let (reason, explanation) = refusal(&decision);
    assert_eq!(
        reason,
        &RefusalReason::AlreadyInRepair {
            rule: "row-a-host-down".to_string(),
            since_ms: NOW_MS - HOUR_MS,
        }
    );
    assert!(explanation.contains("already in repair"), "{explanation}");
}

#[test]
fn disabled_hosts_and_hosts_in_maintenance_are_left_alone() {
    let (index, rules) = row();
    let state = RemediationState {
        disabled: vec!["web-r1-1".to_string()],
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &host_down("web-r1-1:9100"), NOW_MS);
    assert_eq!(refusal(&decision).0, &RefusalReason::HostDisabled);
    let state = RemediationState {
        reservations: vec![Reservation {
            maintenance_id: "m-rack-a-r1".to_string(),
            hosts: vec!["web-r1-1".to_string(), "web-r1-2".to_string()],
            window: Window {
                start_ms: NOW_MS - HOUR_MS,
                end_ms: NOW_MS + HOUR_MS,
            },
        }],
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &host_down("web-r1-1:9100"), NOW_MS);
    let (reason, explanation) = refusal(&decision);
    assert_eq!(
        reason,
        &RefusalReason::InMaintenance {
            maintenance_id: "m-rack-a-r1".to_string(),
        }
    );
    assert!(
        explanation.contains("maintenance m-rack-a-r1"),
        "{explanation}"
    );
}

#[test]
fn a_host_repaired_recently_waits_for_its_cooldown() {
    let (index, rules) = row();
    let ended_ms = NOW_MS - HOUR_MS;
    let state = RemediationState {
        past_repairs: vec![PastRepair {
            host: "web-r1-1".to_string(),
            rule: "row-a-host-down".to_string(),
            ended_ms,
        }],
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &host_down("web-r1-1:9100"), NOW_MS);
    let (reason, explanation) = refusal(&decision);
    assert_eq!(
        reason,
        &RefusalReason::Cooldown {
            ended_ms,
            until_ms: ended_ms + 6 * HOUR_MS,
        }
    );
    assert!(explanation.contains("waits 6h"), "{explanation}");
    // After the cooldown it is repaired again.
    let later = decide(
        &index,
        &rules,
        &state,
        &host_down("web-r1-1:9100"),
        ended_ms + 6 * HOUR_MS,
    );
    assert!(matches!(later, Decision::Remediate(_)), "{later:#?}");
}

#[test]
fn one_host_per_pool_is_in_repair_at_once() {
    let (index, rules) = row();
    let state = RemediationState {
        in_repair: vec![in_repair("web-r2-1", NOW_MS - HOUR_MS)],
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &host_down("web-r1-1:9100"), NOW_MS);
    let (reason, explanation) = refusal(&decision);
    assert_eq!(
        reason,
        &RefusalReason::PoolLimit {
            service: "web".to_string(),
            pool: "main".to_string(),
            in_repair: vec!["web-r2-1".to_string()],
            max_in_repair: 1,
        }
    );
    assert!(
        explanation.contains("1 of the 24 hosts of `web/main` are in repair (web-r2-1)"),
        "{explanation}"
    );
    // Another pool is free.
    let decision = decide(
        &index,
        &rules,
        &state,
        &host_down("cache-r1-1:9100"),
        NOW_MS,
    );
    assert!(matches!(decision, Decision::Remediate(_)), "{decision:#?}");
}

#[test]
fn at_most_three_hosts_of_the_row_are_in_repair() {
    let (index, rules) = row();
    let state = RemediationState {
        in_repair: vec![
            in_repair("web-r2-1", NOW_MS - HOUR_MS),
            in_repair("cache-r2-1", NOW_MS - HOUR_MS),
            in_repair("db-r2-1", NOW_MS - HOUR_MS),
        ],
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &host_down("web-r1-1:9100"), NOW_MS);
    let (reason, explanation) = refusal(&decision);
    assert_eq!(
        reason,
        &RefusalReason::OverallLimit {
            in_repair: 3,
            max_in_repair: 3,
        }
    );
    assert!(explanation.contains("at most 3 at once"), "{explanation}");
}

#[test]
fn too_many_unhealthy_hosts_at_once_trip_the_short_circuit_until_they_age_out() {
    let (index, rules) = row();
    let mut unhealthy = vec![Unhealthy {
        host: "web-r6-1".to_string(),
        at_ms: NOW_MS - 9 * MINUTE_MS,
    }];
    for host in [
        "web-r6-2",
        "web-r6-3",
        "web-r6-4",
        "cache-r6-1",
        "cache-r6-2",
    ] {
        unhealthy.push(Unhealthy {
            host: host.to_string(),
            at_ms: NOW_MS - 5 * MINUTE_MS,
        });
    }
    // Outside the ten-minute window: not counted.
    unhealthy.push(Unhealthy {
        host: "db-r6-1".to_string(),
        at_ms: NOW_MS - 11 * MINUTE_MS,
    });
    let state = RemediationState {
        unhealthy,
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &host_down("web-r1-1:9100"), NOW_MS);
    let (reason, explanation) = refusal(&decision);
    assert_eq!(
        reason,
        &RefusalReason::ShortCircuit {
            rule: "row-a-host-down".to_string(),
            unhealthy_hosts: 7,
            max_unhealthy_hosts: 6,
            within_ms: 10 * MINUTE_MS as u64,
            resets_at_ms: NOW_MS + MINUTE_MS,
        }
    );
    assert!(
        explanation.contains("stopped: 7 hosts were unhealthy within 10m"),
        "{explanation}"
    );
    assert!(
        explanation.contains("2025-01-01T00:01:00Z"),
        "{explanation}"
    );
    // Once the oldest left the window, six are unhealthy: allowed again.
    let decision = decide(
        &index,
        &rules,
        &state,
        &host_down("web-r1-1:9100"),
        NOW_MS + MINUTE_MS,
    );
    assert!(matches!(decision, Decision::Remediate(_)), "{decision:#?}");
    // A host alerting twice counts once.
    let mut repeated = state.clone();
    repeated.unhealthy.push(Unhealthy {
        host: "web-r1-1".to_string(),
        at_ms: NOW_MS - MINUTE_MS,
    });
    repeated.unhealthy[0].host = "web-r6-2".to_string();
    let decision = decide(
        &index,
        &rules,
        &repeated,
        &host_down("web-r1-1:9100"),
        NOW_MS,
    );
    assert!(matches!(decision, Decision::Remediate(_)), "{decision:#?}");
}

#[test]
fn remediation_passes_the_same_capacity_check_as_maintenance() {
    let (index, rules) = row();
    // mysql/main: 6 replicas, floor 4. Two are down: repairing a third would leave 3.
    let state = RemediationState {
        down: vec!["db-r2-1".to_string(), "db-r3-1".to_string()],
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &host_down("db-r1-1:9104"), NOW_MS);
    let (reason, explanation) = refusal(&decision);
    let RefusalReason::Capacity { report } = reason else {
        panic!("{decision:#?}");
    };
    let failing: Vec<(&str, u64)> = report
        .failing()
        .map(|p| (p.service.as_str(), p.deficit_units))
        .collect();
    assert_eq!(failing, [("mysql", 1)]);
    assert!(
        explanation.contains("mysql/main: 3 of 6 units left"),
        "{explanation}"
    );
    // A maintenance reservation that overlaps the repair holds capacity too.
    let state = RemediationState {
        down: vec!["db-r2-1".to_string()],
        reservations: vec![Reservation {
            maintenance_id: "m-tomorrow".to_string(),
            hosts: vec!["db-r3-1".to_string()],
            window: Window {
                start_ms: NOW_MS + 24 * HOUR_MS,
                end_ms: NOW_MS + 26 * HOUR_MS,
            },
        }],
        ..RemediationState::default()
    };
    let decision = decide(&index, &rules, &state, &host_down("db-r1-1:9104"), NOW_MS);
    let (reason, explanation) = refusal(&decision);
    assert!(
        matches!(reason, RefusalReason::Capacity { .. }),
        "{decision:#?}"
    );
    assert!(
        explanation.contains("Held by maintenance m-tomorrow: db-r3-1"),
        "{explanation}"
    );
}

#[test]
fn a_storm_in_one_notification_is_decided_alert_by_alert() {
    let (index, rules) = row();
    let alerts: Vec<serde_json::Value> = ["web-r1-1", "web-r2-1", "cache-r3-1", "web-r1-1"]
        .iter()
        .map(|host| {
            serde_json::json!({
                "status": "firing",
                "labels": { "alertname": "HostDown", "severity": "page", "instance": format!("{host}:9100") },
                "annotations": {},
                "startsAt": "2025-01-01T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": format!("f-{host}")
            })
        })
        .collect();
    let body = serde_json::json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"HostDown\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "levee",
        "groupLabels": { "alertname": "HostDown" },
        "commonLabels": { "alertname": "HostDown", "severity": "page" },
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts
    });
    let payload = parse_webhook(body.to_string().as_bytes()).expect("parses");
    let (decisions, after) = decide_payload(
        &index,
        &rules,
        &RemediationState::default(),
        &payload,
        NOW_MS,
    );
    let summary: Vec<(Option<&str>, &str)> = decisions
        .iter()
        .map(|d| {
            (
                d.host(),
                match d {
                    Decision::Remediate(_) => "remediate",
                    Decision::Refused(r) => match r.reason {
                        RefusalReason::PoolLimit { .. } => "pool-limit",
                        RefusalReason::AlreadyInRepair { .. } => "already",
                        _ => "other",
                    },
                    Decision::Resolved { .. } => "resolved",
                },
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("web-r1-1"), "remediate"),
            (Some("web-r2-1"), "pool-limit"),
            (Some("cache-r3-1"), "remediate"),
            (Some("web-r1-1"), "already"),
        ]
    );
    let repairing: Vec<&str> = after.in_repair.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(repairing, ["web-r1-1", "cache-r3-1"]);
    assert_eq!(after.reservations.len(), 2);
    assert_eq!(after.unhealthy.len(), 4);
}
