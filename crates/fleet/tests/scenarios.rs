//! The seed's two scenarios on the example row (`examples/fleet/row.yaml` and
//! `policies.yaml`): one rack passes preflight for every service; three racks pass for web
//! and fail for cache and MySQL, and the answer says which pools, by how much, and which
//! hosts.

use levee_fleet::{
    BlastRadiusLimit, FleetIndex, PolicySet, Reason, Reservation, Window, admit, blast_radius,
    plan_actions, preflight, split_by_domain,
};
use levee_model::{
    DecidedBy, Definition, DomainLevel, FleetDef, LoadContext, MaintenancePolicyDef,
    MaintenanceType, PolicyAction, load_documents,
};

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: u64 = 60_000;
const WINDOW: Window = Window {
    start_ms: 100 * HOUR_MS,
    end_ms: 102 * HOUR_MS,
};

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

fn row() -> (FleetDef, FleetIndex, PolicySet) {
    let fleet = load("examples/fleet/row.yaml")[0]
        .as_fleet()
        .cloned()
        .expect("a fleet");
    let index = FleetIndex::build(&fleet).expect("indexes");
    let policies: Vec<MaintenancePolicyDef> = load("examples/fleet/policies.yaml")
        .iter()
        .filter_map(|d| d.as_maintenance_policy().cloned())
        .collect();
    let policies = PolicySet::new(&index, policies).expect("every policy names a service");
    (fleet, index, policies)
}

#[test]
fn scenario_a_one_rack_passes_for_every_service() {
    let (_, index, policies) = row();
    let scope = index.resolve("rack=a-r1").expect("resolves");
    assert_eq!(scope.len(), 7);
    let report = preflight(&index, &scope, &[], &[], WINDOW);
    assert!(report.passed, "{}", report.explain());
    let summary: Vec<(&str, u64, u64, u64)> = report
        .pools
        .iter()
        .map(|p| {
            (
                p.service.as_str(),
                p.capacity_units,
                p.after_units,
                p.floor_units,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("web", 24, 20, 12),
            ("cache", 12, 10, 9),
            ("mysql", 6, 5, 4)
        ]
    );
    assert!(
        report
            .explain()
            .starts_with("Preflight passed: 7 hosts in scope, 3 pools")
    );

    let actions = plan_actions(
        &index,
        &policies,
        &scope,
        &MaintenanceType::Power,
        20 * MINUTE_MS,
    );
    let described: Vec<(&str, String, usize)> = actions
        .iter()
        .map(|a| (a.service.as_str(), a.action.describe(), a.hosts_in_scope))
        .collect();
    assert_eq!(
        described,
        [
            ("web", "drain_and_wait".to_string(), 4),
            ("cache", "runbook cache-reload-index".to_string(), 2),
            ("mysql", "drain_and_wait".to_string(), 1),
        ]
    );
    assert_eq!(actions[1].disable_concurrency, 4);
    assert_eq!(actions[1].allowed_failures, 1);
    assert!(matches!(
        &actions[1].reason,
        Reason::Policy { policy, by: DecidedBy::Rule { index: 1, .. } } if policy == "cache"
    ));
}

#[test]
fn scenario_b_three_racks_pass_for_web_and_fail_for_cache_and_mysql() {
    let (_, index, policies) = row();
    let scope = index
        .resolve("rack in (a-r4, a-r5, a-r6)")
        .expect("resolves");
    assert_eq!(scope.len(), 3 * 7 + 1);
    let report = preflight(&index, &scope, &[], &[], WINDOW);
    assert!(!report.passed);
    let failing: Vec<(&str, u64, Vec<String>)> = report
        .failing()
        .map(|p| {
            (
                p.service.as_str(),
                p.deficit_units,
                p.hosts_in_scope.clone(),
            )
        })
        .collect();
    assert_eq!(
        failing,
        [
            (
                "cache",
                3,
                [
                    "cache-r4-1",
                    "cache-r4-2",
                    "cache-r5-1",
                    "cache-r5-2",
                    "cache-r6-1",
                    "cache-r6-2"
                ]
                .map(String::from)
                .to_vec()
            ),
            (
                "mysql",
                1,
                ["db-r4-1", "db-r5-1", "db-r6-1"].map(String::from).to_vec()
            ),
        ]
    );
    let web = report
        .pools
        .iter()
        .find(|p| p.service == "web")
        .expect("web");
    assert!(web.passed);
    assert_eq!((web.after_units, web.floor_units), (12, 12));
    let cache = report
        .pools
        .iter()
        .find(|p| p.service == "cache")
        .expect("cache");
    assert_eq!(cache.spares_in_scope, ["cache-spare-r6"]);
    assert_eq!(cache.spares_available, 0);
    let explanation = report.explain();
    assert_eq!(
        explanation,
        "Preflight failed: 2 of 3 pools touched would drop below their floor.\n\
         - cache/main: 6 of 12 units left, floor 9 (75%): short by 3. In scope: cache-r4-1, \
         cache-r4-2, cache-r5-1, cache-r5-2, cache-r6-1, cache-r6-2.\n\
         - mysql/main: 3 of 6 units left, floor 4: short by 1. In scope: db-r4-1, db-r5-1, \
         db-r6-1."
    );

    // The plan still says what each service would do: the failed preflight is what sends the
    // maintenance to a human, not the policies.
    let actions = plan_actions(
        &index,
        &policies,
        &scope,
        &MaintenanceType::Network,
        6 * 60 * MINUTE_MS,
    );
    let described: Vec<String> = actions.iter().map(|a| a.action.describe()).collect();
    assert_eq!(
        described,
        ["drain_and_wait", "drain_and_wait", "replace_with_spares"]
    );
    assert_eq!(actions[1].spares_in_scope, 1);

    // Taken one rack at a time, each step passes on its own.
    let steps = split_by_domain(&index, &scope, DomainLevel::Rack);
    let racks: Vec<Option<&str>> = steps.iter().map(|s| s.domain.as_deref()).collect();
    assert_eq!(racks, [Some("a-r4"), Some("a-r5"), Some("a-r6")]);
    for step in &steps {
        assert!(preflight(&index, &step.hosts, &[], &[], WINDOW).passed);
    }

    let radius = blast_radius(&index, &scope);
    assert_eq!((radius.hosts, radius.services, radius.pools), (22, 3, 3));
    let limit = BlastRadiusLimit {
        max_domains: vec![(DomainLevel::Rack, 2)],
        ..BlastRadiusLimit::default()
    };
    assert_eq!(radius.exceeded(&limit), ["3 racks, more than 2"]);
}

#[test]
fn a_service_without_a_policy_needs_a_human() {
    let (_, index, _) = row();
    let only_web: Vec<MaintenancePolicyDef> = load("examples/fleet/policies.yaml")
        .iter()
        .filter_map(|d| d.as_maintenance_policy().cloned())
        .filter(|p| p.service.value == "web")
        .collect();
    let policies = PolicySet::new(&index, only_web).expect("valid");
    let scope = index.resolve("rack=a-r2").expect("resolves");
    let actions = plan_actions(
        &index,
        &policies,
        &scope,
        &MaintenanceType::Reboot,
        MINUTE_MS,
    );
    let humans: Vec<&str> = actions
        .iter()
        .filter(|a| a.action == PolicyAction::Human && a.reason == Reason::NoPolicy)
        .map(|a| a.service.as_str())
        .collect();
    assert_eq!(humans, ["cache", "mysql"]);
    assert_eq!(actions[1].owner.as_deref(), Some("cache-team"));
}

#[test]
fn two_clients_cannot_both_take_the_last_headroom() {
    let (_, index, _) = row();
    let names = |selector: &str| index.names_of(&index.resolve(selector).expect("resolves"));
    // Each takes one rack during overlapping windows: each alone leaves cache at 10 >= 9,
    // both together leave 8 < 9.
    let first = Reservation {
        maintenance_id: "rack-2".to_string(),
        hosts: names("rack=a-r2"),
        window: WINDOW,
    };
    let second = Reservation {
        maintenance_id: "rack-3".to_string(),
        hosts: names("rack=a-r3"),
        window: Window {
            start_ms: WINDOW.start_ms + HOUR_MS,
            end_ms: WINDOW.end_ms + HOUR_MS,
        },
    };
    // Both read the same committed state (no reservations) and both pass there...
    assert!(admit(&index, &first, &[], &[]).expect("valid").passed);
    assert!(admit(&index, &second, &[], &[]).expect("valid").passed);
    // ...but the store re-runs admission inside the transaction that stores each, so the
    // second, serialized after the first, sees it and is refused.
    let stored = vec![first.clone()];
    let refused = admit(&index, &second, &stored, &[]).expect("valid");
    assert!(!refused.passed);
    let cache = refused.failing().next().expect("a failing pool");
    assert_eq!((cache.service.as_str(), cache.deficit_units), ("cache", 1));
    assert_eq!(cache.held[0].maintenance_id, "rack-2");
    assert_eq!(cache.held[0].hosts, ["cache-r2-1", "cache-r2-2"]);
    assert!(
        refused
            .explain()
            .contains("Held by maintenance rack-2: cache-r2-1, cache-r2-2.")
    );
    // Re-running the first's own admission ignores its own reservation.
    assert!(admit(&index, &first, &stored, &[]).expect("valid").passed);
    // After the first window ends, the second may go.
    let later = Reservation {
        window: Window {
            start_ms: WINDOW.end_ms,
            end_ms: WINDOW.end_ms + HOUR_MS,
        },
        ..second
    };
    assert!(admit(&index, &later, &stored, &[]).expect("valid").passed);
}
