//! One test per rule of the fleet core: scope resolution, capacity arithmetic, reservations,
//! policies, steps, and the JSON and CSV imports.

use levee_fleet::{
    BlastRadiusLimit, FleetIndex, PolicySet, Reservation, ScopeError, Window, admit, blast_radius,
    import_csv, import_csv_into, import_json, overlaps, preflight, split_by_domain,
};
use levee_model::{
    Amount, Definition, DomainLevel, FleetDef, LoadContext, MaintenancePolicyDef, load_documents,
};

const HOUR_MS: i64 = 3_600_000;
const WINDOW: Window = Window {
    start_ms: 10 * HOUR_MS,
    end_ms: 12 * HOUR_MS,
};

/// Two racks; `web` has five hosts (one of weight 3, so 7 units) with a floor of 60% (5
/// units), `db` two hosts and a floor of 1, and a spare.
const FLEET: &str = "kind: Fleet
name: small
hosts:
  - { name: w1, row: a, rack: r1, power: p1, labels: { role: web } }
  - { name: w2, row: a, rack: r1, power: p1, labels: { role: web } }
  - { name: w3, row: a, rack: r2, power: p1, labels: { role: web } }
  - { name: w4, row: a, rack: r2, power: p2, labels: { role: web } }
  - { name: w5, row: b, rack: r3, labels: { role: web } }
  - { name: d1, row: a, rack: r1, power: p2, labels: { role: db } }
  - { name: d2, row: b, rack: r3, labels: { role: db } }
  - { name: s1, labels: { role: spare } }
  - { name: x1, row: b, rack: r3, down: true }
services:
  - name: web
    pools:
      - name: main
        selector: label:role=web
        spares: [s1]
        capacity: { floor: 60%, weights: { w5: 3 } }
  - name: db
    pools:
      - name: main
        hosts: [d1, d2]
        capacity: { floor: 1 }
  - name: batch
    pools:
      - name: main
        hosts: [x1, d2]
        capacity: { floor: 1 }
";

fn context() -> LoadContext {
    LoadContext::new(0, jiff::tz::TimeZone::UTC)
}

fn small() -> (FleetDef, FleetIndex) {
    let fleet = load_documents("small.yaml", FLEET, &context()).expect("loads")[0]
        .as_fleet()
        .cloned()
        .expect("a fleet");
    let index = FleetIndex::build(&fleet).expect("indexes");
    (fleet, index)
}

fn ids(index: &FleetIndex, names: &[&str]) -> Vec<u32> {
    index.host_ids(names).expect("known hosts")
}

fn reservation(id: &str, hosts: &[&str], window: Window) -> Reservation {
    Reservation {
        maintenance_id: id.to_string(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        window,
    }
}

#[test]
fn scopes_never_mean_every_host() {
    let (_, index) = small();
    assert!(matches!(index.resolve(""), Err(ScopeError::Invalid(_))));
    assert!(matches!(index.resolve(" "), Err(ScopeError::Invalid(_))));
    match index.resolve("rack=r9") {
        Err(ScopeError::MatchesNothing { why, .. }) => {
            assert_eq!(why, "No host has `rack` `r9`. Did you mean `r1`?")
        }
        other => panic!("{other:?}"),
    }
    let none: [&str; 0] = [];
    assert!(matches!(
        index.host_ids(&none),
        Err(ScopeError::MatchesNothing { .. })
    ));
    assert_eq!(
        index.host_ids(&["w1", "nope"]),
        Err(ScopeError::UnknownHosts(vec!["nope".to_string()]))
    );
    assert_eq!(
        index.names_of(&index.resolve("row=a, power!=p2").expect("resolves")),
        ["w1", "w2", "w3"]
    );
}

#[test]
fn capacity_counts_weights_and_rounds_percentage_floors_up() {
    let (_, index) = small();
    let report = preflight(&index, &ids(&index, &["w1"]), &[], &[], WINDOW);
    let web = &report.pools[0];
    assert_eq!(
        (
            web.service.as_str(),
            web.capacity_units,
            web.floor,
            web.floor_units
        ),
        (
            "web",
            7,
            Amount::Percent {
                basis_points: 6_000
            },
            5
        )
    );
    assert_eq!((web.removed_by_scope_units, web.after_units), (1, 6));
    assert!(report.passed);
    // w5 weighs 3: removing it alone leaves 4 < 5.
    let heavy = preflight(&index, &ids(&index, &["w5"]), &[], &[], WINDOW);
    assert!(!heavy.passed);
    assert_eq!(heavy.pools[0].deficit_units, 1);
    assert_eq!(heavy.pools[0].hosts_in_scope, ["w5"]);
}

#[test]
fn each_host_counts_once_scope_then_down_then_held() {
    let (_, index) = small();
    let scope = ids(&index, &["w1"]);
    let down = ids(&index, &["w1", "w2"]);
    let held = [reservation("m1", &["w2", "w3", "gone"], WINDOW)];
    let report = preflight(&index, &scope, &down, &held, WINDOW);
    let web = report
        .pools
        .iter()
        .find(|p| p.service == "web")
        .expect("web");
    assert_eq!(
        (
            web.removed_by_scope_units,
            web.already_down_units,
            web.held_by_overlapping_units,
            web.after_units
        ),
        (1, 1, 1, 4)
    );
    assert_eq!(web.hosts_down, ["w2"]);
    assert_eq!(web.held[0].hosts, ["w3"]);
    assert_eq!(report.unknown_reserved_hosts, ["gone"]);
    assert_eq!(report.overlapping, ["m1"]);
    assert!(!report.passed);
}

#[test]
fn hosts_marked_down_in_the_fleet_are_already_down() {
    let (_, index) = small();
    let report = preflight(&index, &ids(&index, &["d2"]), &[], &[], WINDOW);
    let batch = report
        .pools
        .iter()
        .find(|p| p.service == "batch")
        .expect("batch");
    assert_eq!((batch.already_down_units, batch.after_units), (1, 0));
    assert_eq!(batch.hosts_down, ["x1"]);
    assert!(!batch.passed);
    let db = report.pools.iter().find(|p| p.service == "db").expect("db");
    assert!(db.passed);
    // Failing pools come first.
    assert_eq!(report.pools[0].service, "batch");
}

#[test]
fn only_reservations_overlapping_in_time_hold_capacity() {
    let (_, index) = small();
    let before = Window {
        start_ms: 8 * HOUR_MS,
        end_ms: 10 * HOUR_MS,
    };
    let after = Window {
        start_ms: 12 * HOUR_MS,
        end_ms: 13 * HOUR_MS,
    };
    let during = Window {
        start_ms: 11 * HOUR_MS,
        end_ms: 11 * HOUR_MS + 1,
    };
    assert!(!overlaps(before, WINDOW) && !overlaps(WINDOW, after));
    assert!(overlaps(during, WINDOW) && WINDOW.overlaps(during));
    assert!(WINDOW.contains(WINDOW.start_ms) && !WINDOW.contains(WINDOW.end_ms));
    let scope = ids(&index, &["w1", "w2"]);
    let touching = [
        reservation("before", &["w3"], before),
        reservation("after", &["w4"], after),
    ];
    assert!(preflight(&index, &scope, &[], &touching, WINDOW).passed);
    let inside = [reservation("during", &["w3"], during)];
    let report = preflight(&index, &scope, &[], &inside, WINDOW);
    assert!(!report.passed);
    assert!(report.explain().contains("Held by maintenance during: w3."));
}

#[test]
fn spares_in_scope_are_listed_and_never_count_toward_the_floor() {
    let (_, index) = small();
    let report = preflight(&index, &ids(&index, &["s1"]), &[], &[], WINDOW);
    let web = &report.pools[0];
    assert_eq!(web.spares_in_scope, ["s1"]);
    assert_eq!((web.removed_by_scope_units, web.after_units), (0, 7));
    let elsewhere = preflight(&index, &ids(&index, &["w1"]), &[], &[], WINDOW);
    assert_eq!(elsewhere.pools[0].spares_available, 1);
    let reserved = [reservation("m", &["s1"], WINDOW)];
    let held_spare = preflight(&index, &ids(&index, &["w1"]), &[], &reserved, WINDOW);
    assert_eq!(held_spare.pools[0].spares_available, 0);
}

#[test]
fn admission_refuses_unknown_and_empty_scopes() {
    let (_, index) = small();
    let unknown = reservation("m", &["w1", "nope"], WINDOW);
    assert_eq!(
        admit(&index, &unknown, &[], &[]),
        Err(ScopeError::UnknownHosts(vec!["nope".to_string()]))
    );
    let empty = reservation("m", &[], WINDOW);
    assert!(admit(&index, &empty, &[], &[]).is_err());
}

#[test]
fn policies_must_name_services_of_the_fleet_once() {
    let (_, index) = small();
    let source = "kind: MaintenancePolicy\nname: a\nservice: web\nrules: [{ type: any, action: nothing }]\n---\nkind: MaintenancePolicy\nname: b\nservice: web\nrules: [{ type: any, action: nothing }]\n---\nkind: MaintenancePolicy\nname: c\nservice: wbe\nrules: [{ type: any, action: nothing }]\n";
    let policies: Vec<MaintenancePolicyDef> = load_documents("p.yaml", source, &context())
        .expect("loads")
        .iter()
        .filter_map(Definition::as_maintenance_policy)
        .cloned()
        .collect();
    let diagnostics = PolicySet::new(&index, policies).expect_err("two problems");
    let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(rendered.len(), 2, "{rendered:#?}");
    assert!(
        rendered[0].starts_with("p.yaml:8:10: error[duplicate-policy]"),
        "{rendered:#?}"
    );
    assert!(
        rendered[1].starts_with("p.yaml:13:10: error[unknown-service]"),
        "{rendered:#?}"
    );
    assert!(rendered[1].contains("Did you mean `web`?"));
}

#[test]
fn steps_take_one_failure_domain_at_a_time() {
    let (_, index) = small();
    let scope = index.resolve("label:role in (web, db)").expect("resolves");
    let by_power = split_by_domain(&index, &scope, DomainLevel::Power);
    let shown: Vec<(Option<&str>, Vec<String>)> = by_power
        .iter()
        .map(|s| (s.domain.as_deref(), index.names_of(&s.hosts)))
        .collect();
    assert_eq!(
        shown,
        [
            (Some("p1"), vec!["w1".into(), "w2".into(), "w3".into()]),
            (Some("p2"), vec!["w4".into(), "d1".into()]),
            (None, vec!["w5".into()]),
            (None, vec!["d2".into()]),
        ]
    );
    let radius = blast_radius(&index, &scope);
    assert_eq!(radius.hosts, 7);
    assert_eq!(radius.fleet_basis_points, 7_778);
    let limit = BlastRadiusLimit {
        max_hosts: Some(5),
        max_fleet_basis_points: Some(5_000),
        max_domains: vec![(DomainLevel::Row, 1)],
        max_services: Some(2),
    };
    assert_eq!(
        radius.exceeded(&limit),
        [
            "7 hosts, more than 5",
            "77.78% of the fleet, more than 50.00%",
            "2 rows, more than 1",
            "3 services, more than 2",
        ]
    );
    assert!(radius.exceeded(&BlastRadiusLimit::default()).is_empty());
}

#[test]
fn json_imports_are_checked_like_yaml() {
    let json = r#"{"kind": "Fleet", "name": "j",
 "hosts": [{"name": "a", "rack": "r1"}, {"name": "b", "rack": "r1"}],
 "services": [{"name": "s", "pools": [{"name": "p", "hosts": ["a", "c"], "capacity": {"floor": "50%"}}]}]}"#;
    let diagnostics = import_json("fleet.json", json).expect_err("c is unknown");
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(
        (
            diagnostics[0].code.as_str(),
            diagnostics[0].line,
            diagnostics[0].column
        ),
        ("unknown-host", 3, 68)
    );
    let fixed = json.replace("\"c\"", "\"b\"");
    let fleet = import_json("fleet.json", &fixed).expect("loads");
    assert_eq!(fleet.services[0].pools[0].members, ["a", "b"]);
    let policy = "{\"kind\": \"MaintenancePolicy\", \"name\": \"p\", \"service\": \"s\", \"rules\": [{\"type\": \"any\", \"action\": \"nothing\"}]}";
    let not_fleet = import_json("p.json", policy).expect_err("not a fleet");
    assert_eq!(not_fleet[0].code, "not-a-fleet");
}

const CSV_HEADER: &str = "name,region,datacenter,row,rack,power,switch,labels\n";

#[test]
fn csv_imports_hosts_with_domains_and_labels() {
    let text = format!(
        "{CSV_HEADER}w1,eu,dc1,a,r1,p1,t1,role=web;tier=front\n\n\"w2\",eu,dc1,a,r1,,,\"role=web\"\nd1,eu,dc1,a,r2,p1,t2,\n"
    );
    let hosts = import_csv("hosts.csv", &text).expect("imports");
    assert_eq!(hosts.len(), 3);
    assert_eq!(hosts[0].labels["tier"], "front");
    assert_eq!(hosts[1].domains.power, None);
    assert_eq!(hosts[1].labels["role"], "web");
    assert_eq!((hosts[2].origin.line, hosts[2].origin.column), (5, 1));
    assert!(hosts[2].labels.is_empty());
}

#[test]
fn csv_errors_name_the_line_and_column() {
    let error = |text: &str| -> Vec<String> {
        import_csv("hosts.csv", text)
            .expect_err("refused")
            .iter()
            .map(|d| format!("{}:{} {}", d.line, d.column, d.code))
            .collect()
    };
    assert_eq!(
        error("name,region,dc,row,rack,power,switch,labels\n"),
        ["1:13 csv-header"]
    );
    assert_eq!(error(""), ["0:0 empty-file"]);
    assert_eq!(
        error(&format!(
            "{CSV_HEADER}w1,eu,dc1,a,r1,p1,t1\nw2,eu,dc1,a,r1,p1,t1,role=web,x\nw3,eu,dc1,a,r1,p1,t1,role\n\"w4,eu\n-w5,eu,dc1,a,r1,p1,t1,\nw6,eu,dc1,a,r 1,p1,t1,\nw7,eu,dc1,a,r1,p1,t1,a=b;c=d;a=e\n"
        )),
        [
            "2:21 csv-columns",
            "3:31 csv-columns",
            "4:22 invalid-label",
            "5:1 csv-syntax",
            "6:1 invalid-name",
            "7:13 invalid-name",
            "8:30 invalid-label",
        ]
    );
    let duplicates = import_csv(
        "hosts.csv",
        &format!("{CSV_HEADER}w1,eu,dc1,a,r1,,,\nw1,eu,dc1,a,r2,,,\nw2,eu,dc1,b,r1,,,\n"),
    )
    .expect_err("refused");
    let shown: Vec<String> = duplicates
        .iter()
        .map(|d| format!("{}:{} {} {}", d.line, d.column, d.code, d.message))
        .collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(shown[0].starts_with("3:1 duplicate-host The host `w1` is listed twice (first on line 2). A host is in one rack only; here it is in `r1` and `r2`."), "{shown:#?}");
    assert!(
        shown[1].starts_with("4:1 domain-conflict The rack `r1` is in row `b`"),
        "{shown:#?}"
    );
}

#[test]
fn csv_hosts_replace_a_fleets_hosts_and_pools_resolve_again() {
    let (fleet, _) = small();
    let text = format!(
        "{CSV_HEADER}w1,,,a,r1,,,role=web\nw2,,,a,r1,,,role=web\nd1,,,a,r2,,,role=db\nd2,,,a,r2,,,role=db\ns1,,,,,,,\nx1,,,,,,,\n"
    );
    let diagnostics = import_csv_into(&fleet, "hosts.csv", &text).expect_err("w5 is gone");
    let codes: Vec<(&str, u64, &str)> = diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.file.as_str(), d.line, d.code.as_str()))
        .collect();
    assert_eq!(codes, [("small.yaml", 19, "weight-not-member")]);
    let with_w5 = format!("{text}w5,,,b,r3,,,role=web\n");
    let replaced = import_csv_into(&fleet, "hosts.csv", &with_w5).expect("fits");
    assert_eq!(
        replaced.service("web").expect("web").pools[0].members,
        ["w1", "w2", "w5"]
    );
    let index = FleetIndex::build(&replaced).expect("indexes");
    assert_eq!(index.host_count(), 7);
}

#[test]
fn synthetic_fleets_are_deterministic_valid_and_indexed_both_ways() {
    use levee_fleet::synthetic;
    let made = synthetic::fleet(42, 3_000, 200, 12);
    assert_eq!(made, synthetic::fleet(42, 3_000, 200, 12));
    assert_ne!(made, synthetic::fleet(43, 3_000, 200, 12));
    let mut checked = made.clone();
    let diagnostics = levee_model::fleet::check_and_resolve(&mut checked);
    assert!(diagnostics.iter().all(|d| !d.is_error()), "{diagnostics:?}");
    assert_eq!(
        checked, made,
        "the generator resolves pools as the loader does"
    );
    let index = FleetIndex::build(&made).expect("indexes");
    // Every pool member lists the pool among its memberships, and nothing else is listed.
    let mut memberships = 0;
    for (number, pool) in index.pools().iter().enumerate() {
        for (host, weight) in &pool.members {
            assert!(
                index
                    .memberships(*host)
                    .iter()
                    .any(|m| m.pool.0 as usize == number && !m.spare && m.weight == *weight)
            );
        }
        for host in &pool.spares {
            assert!(
                index
                    .memberships(*host)
                    .iter()
                    .any(|m| m.pool.0 as usize == number && m.spare)
            );
        }
        memberships += pool.members.len() + pool.spares.len();
    }
    let listed: usize = (0..index.host_count() as u32)
        .map(|h| index.memberships(h).len())
        .sum();
    assert_eq!(listed, memberships);
    let row = index
        .resolve(&format!("row={}", synthetic::row_name(1)))
        .expect("resolves");
    assert_eq!(
        row.len(),
        synthetic::HOSTS_PER_RACK * synthetic::RACKS_PER_ROW
    );
}
