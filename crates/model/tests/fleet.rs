//! `kind: Fleet` and `kind: MaintenancePolicy`: what loads, and every rule that refuses bad
//! input, each with the file, line and column it names.

use levee_model::{
    Amount, DecidedBy, Definition, DomainLevel, FleetDef, HostDef, LoadContext, LoadLimits,
    MaintenancePolicyDef, MaintenanceType, PolicyAction, load_documents,
    load_documents_with_limits, load_documents_with_warnings,
};

/// 2025-01-01T00:00:00Z.
const NOW_MS: i64 = 1_735_689_600_000;
const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;

fn context() -> LoadContext {
    LoadContext::new(NOW_MS, jiff::tz::TimeZone::UTC)
}

fn repository_file(relative: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn load_one(file: &str, source: &str) -> Definition {
    match load_documents(file, source, &context()) {
        Ok(mut definitions) => {
            assert_eq!(definitions.len(), 1, "{definitions:?}");
            definitions.remove(0)
        }
        Err(diagnostics) => {
            let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            panic!("{file} did not load:\n{}", rendered.join("\n"));
        }
    }
}

fn fleet(source: &str) -> FleetDef {
    load_one("fleet.yaml", source)
        .as_fleet()
        .cloned()
        .expect("a fleet")
}

/// The errors (and warnings) of a file that must not load, as `line:column code message`.
fn errors(source: &str) -> Vec<String> {
    match load_documents("fleet.yaml", source, &context()) {
        Ok(definitions) => panic!("loaded: {definitions:#?}"),
        Err(diagnostics) => diagnostics
            .iter()
            .map(|d| format!("{}:{} {} {}", d.line, d.column, d.code, d.message))
            .collect(),
    }
}

/// Asserts that exactly one diagnostic has `code`, at `line:column`, and that its message
/// holds every one of `phrases`.
fn assert_one(diagnostics: &[String], code: &str, at: &str, phrases: &[&str]) {
    let matching: Vec<&String> = diagnostics
        .iter()
        .filter(|d| d.split(' ').nth(1) == Some(code))
        .collect();
    assert_eq!(matching.len(), 1, "one `{code}` in {diagnostics:#?}");
    assert!(
        matching[0].starts_with(&format!("{at} ")),
        "`{code}` at {at}: {diagnostics:#?}"
    );
    for phrase in phrases {
        assert!(
            matching[0].contains(phrase),
            "{phrase:?} in {}",
            matching[0]
        );
    }
}

const HOSTS: &str = "kind: Fleet
name: f
hosts:
  - { name: w1, row: a, rack: r1, labels: { role: web } }
  - { name: w2, row: a, rack: r2, labels: { role: web } }
  - { name: d1, row: a, rack: r1, labels: { role: db } }
";

fn with_services(services: &str) -> String {
    format!("{HOSTS}services:\n{services}")
}

#[test]
fn the_example_row_loads_with_every_pool_resolved() {
    let row = fleet(&repository_file("examples/fleet/row.yaml"));
    assert_eq!(row.name, "row-a");
    assert_eq!(row.hosts.len(), 6 * 7 + 1);
    let members = |service: &str| {
        let service = row.service(service).expect("service");
        (
            service.pools[0].members.len(),
            service.pools[0].spare_hosts.clone(),
        )
    };
    assert_eq!(members("web"), (24, vec![]));
    assert_eq!(members("cache"), (12, vec!["cache-spare-r6".to_string()]));
    assert_eq!(members("mysql"), (6, vec![]));
    let web1 = &row.hosts[0];
    assert_eq!(web1.domains.get(DomainLevel::Power), Some("a-pdu1"));
    assert_eq!((web1.origin.line, web1.origin.column), (17, 13));
    let floor = &row.service("cache").expect("cache").pools[0].capacity.floor;
    assert_eq!(
        floor.value,
        Amount::Percent {
            basis_points: 7_500
        }
    );
}

#[test]
fn a_host_listed_twice_is_an_error_and_two_racks_are_named() {
    let diagnostics = errors(&format!(
        "{HOSTS}  - {{ name: w1, row: a, rack: r2 }}\n  - {{ name: d1, row: a, rack: r1 }}\n"
    ));
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert!(
        diagnostics[0].starts_with("7:13 duplicate-host The host `w1` is listed twice (first on line 4). A host is in one rack only; here it is in `r1` and `r2`."),
        "{diagnostics:#?}"
    );
    assert!(
        diagnostics[1].starts_with(
            "8:13 duplicate-host The host `d1` is listed twice (first on line 6). List"
        ),
        "{diagnostics:#?}"
    );
}

#[test]
fn a_rack_in_two_rows_is_an_error() {
    let diagnostics = errors(&format!("{HOSTS}  - {{ name: x1, row: b, rack: r1 }}\n"));
    assert_one(
        &diagnostics,
        "domain-conflict",
        "7:13",
        &[
            "rack `r1` is in row `b` for host `x1`",
            "row `a` for host `w1` (line 4)",
        ],
    );
}

#[test]
fn a_floor_above_the_pool_is_an_error() {
    let diagnostics = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        selector: label:role=web\n        capacity: { floor: 3 }\n",
    ));
    assert_one(
        &diagnostics,
        "floor-exceeds-pool",
        "12:28",
        &["pool `web/main` is 3 units", "only 2 (2 hosts)"],
    );
    let over_hundred = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        selector: label:role=web\n        capacity: { floor: 120% }\n",
    ));
    assert_one(&over_hundred, "invalid-floor", "12:28", &["more than 100%"]);
}

#[test]
fn weights_count_toward_capacity() {
    let loaded = fleet(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        selector: label:role=web\n        capacity: { floor: 3, weights: { w2: 2 } }\n",
    ));
    let pool = &loaded.services[0].pools[0];
    assert_eq!((pool.weight_of("w1"), pool.weight_of("w2")), (1, 2));
    let not_member = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        selector: label:role=web\n        capacity: { floor: 1, weights: { d1: 2 } }\n",
    ));
    assert_one(
        &not_member,
        "weight-not-member",
        "12:42",
        &["`d1`", "not a member"],
    );
    let zero = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        selector: label:role=web\n        capacity: { floor: 1, weights: { w1: 0 } }\n",
    ));
    assert_one(&zero, "invalid-weight", "12:46", &["between 1 and"]);
}

#[test]
fn a_selector_matching_nothing_is_an_error_with_a_suggestion() {
    let diagnostics = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        selector: rack=r3\n        capacity: { floor: 1 }\n",
    ));
    assert_one(
        &diagnostics,
        "selector-matches-nothing",
        "11:19",
        &[
            "`rack=r3` of the pool `web/main` matches no host",
            "Did you mean `r1`?",
        ],
    );
}

#[test]
fn an_empty_selector_is_an_error_never_all() {
    for selector in ["\"\"", "\"  \""] {
        let diagnostics = errors(&with_services(&format!(
            "  - name: web\n    pools:\n      - name: main\n        selector: {selector}\n        capacity: {{ floor: 1 }}\n"
        )));
        assert_one(
            &diagnostics,
            "empty-selector",
            "11:19",
            &["never \"every host\""],
        );
    }
    let empty_list = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        hosts: []\n        capacity: { floor: 1 }\n",
    ));
    assert_one(
        &empty_list,
        "empty-pool",
        "11:16",
        &["never \"every host\""],
    );
}

#[test]
fn a_malformed_selector_is_an_error_naming_the_character() {
    let diagnostics = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        selector: \"rack=r1 row=a\"\n        capacity: { floor: 1 }\n",
    ));
    assert_one(
        &diagnostics,
        "invalid-selector",
        "11:19",
        &["(at character 9): Expected `,` between terms"],
    );
}

#[test]
fn a_pool_host_that_does_not_exist_is_an_error() {
    let diagnostics = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        hosts: [w1, w3, w1]\n        capacity: { floor: 1 }\n",
    ));
    assert_one(
        &diagnostics,
        "unknown-host",
        "11:21",
        &["lists `w3`, which is not a host", "Did you mean `w1`?"],
    );
    assert_one(&diagnostics, "duplicate-host", "11:25", &["listed twice"]);
}

#[test]
fn a_spare_that_is_also_a_member_is_an_error() {
    let diagnostics = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        selector: label:role=web\n        spares: [d1, w2]\n        capacity: { floor: 1 }\n",
    ));
    assert_one(&diagnostics, "spare-in-pool", "12:22", &["`w2` is both"]);
}

#[test]
fn dependencies_name_services_of_the_fleet_without_bootstrap_cycles() {
    let pool = "    pools: [{ name: main, selector: label:role=web, capacity: { floor: 1 } }]\n";
    let diagnostics = errors(&with_services(&format!(
        "  - name: web\n{pool}    dependencies:\n      - {{ service: cahce, kind: rpc }}\n      - {{ service: web, kind: rpc }}\n  - name: cache\n{pool}"
    )));
    assert_one(
        &diagnostics,
        "unknown-service",
        "11:20",
        &["depends on `cahce`", "Did you mean `cache`?"],
    );
    assert_one(&diagnostics, "self-dependency", "12:20", &[]);
    let cycle = errors(&with_services(&format!(
        "  - name: a\n{pool}    dependencies: [{{ service: b, kind: bootstrap }}]\n  - name: b\n{pool}    dependencies: [{{ service: a, kind: bootstrap }}, {{ service: a, kind: rpc }}]\n"
    )));
    assert_one(&cycle, "dependency-cycle", "8:11", &["`a -> b -> a`"]);
    let rpc_cycle = with_services(&format!(
        "  - name: a\n{pool}    dependencies: [{{ service: b, kind: rpc }}]\n  - name: b\n{pool}    dependencies: [{{ service: a, kind: state }}]\n"
    ));
    assert_eq!(fleet(&rpc_cycle).services.len(), 2);
}

#[test]
fn a_pool_already_below_its_floor_is_a_warning() {
    let source = "kind: Fleet\nname: f\nhosts:\n  - { name: w1, labels: { role: web } }\n  - { name: w2, labels: { role: web }, down: true }\nservices:\n  - name: web\n    pools: [{ name: main, selector: label:role=web, capacity: { floor: 2 } }]\n";
    let loaded = load_documents_with_warnings("fleet.yaml", source, &context()).expect("loads");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(loaded.warnings[0].code, "pool-below-floor");
    assert_eq!(
        (loaded.warnings[0].line, loaded.warnings[0].column),
        (8, 72)
    );
}

#[test]
fn structural_errors_are_located_and_do_not_hide_each_other() {
    let diagnostics = errors(
        "kind: Fleet\nname: Bad_Name\nhosts:\n  - { name: w1, rak: r1 }\n  - { name: w2, down: maybe }\nservices:\n  - name: web\n    pools:\n      - name: main\n        capacity: { floor: 1 }\n",
    );
    assert_one(
        &diagnostics,
        "invalid-name",
        "2:7",
        &["not a valid fleet name"],
    );
    assert_one(
        &diagnostics,
        "unknown-key",
        "4:17",
        &["Did you mean `rack`?"],
    );
    assert_one(&diagnostics, "wrong-type", "5:23", &["`true` or `false`"]);
}

#[test]
fn a_pool_without_hosts_or_with_both_forms_is_an_error() {
    let diagnostics = errors(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        capacity: { floor: 1 }\n      - name: other\n        selector: rack=r1\n        hosts: [w1]\n        capacity: { floor: 1 }\n",
    ));
    assert_one(
        &diagnostics,
        "missing-key",
        "10:9",
        &["This pool has no hosts"],
    );
    assert_one(&diagnostics, "conflicting-keys", "13:19", &["not both"]);
}

#[test]
fn with_hosts_checks_the_pools_again_and_points_at_them() {
    let loaded = fleet(&with_services(
        "  - name: web\n    pools:\n      - name: main\n        selector: label:role=web\n        capacity: { floor: 2 }\n",
    ));
    let mut new_host = HostDef::named("w9");
    new_host
        .labels
        .insert("role".to_string(), "web".to_string());
    new_host.origin.file = "hosts.csv".to_string();
    new_host.origin.line = 2;
    let mut old = HostDef::named("w1");
    old.labels.insert("role".to_string(), "web".to_string());
    let resolved = loaded
        .with_hosts(vec![old.clone(), new_host])
        .expect("two web hosts still fit the floor of 2");
    assert_eq!(resolved.services[0].pools[0].members, ["w1", "w9"]);
    let diagnostics = loaded
        .with_hosts(vec![old])
        .expect_err("one host is below 2");
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(
        (
            diagnostics[0].file.as_str(),
            diagnostics[0].line,
            diagnostics[0].code.as_str()
        ),
        ("fleet.yaml", 12, "floor-exceeds-pool")
    );
}

#[test]
fn a_fleet_loads_from_json_with_lines_and_columns() {
    let json = r#"{
  "kind": "Fleet",
  "name": "f",
  "hosts": [
    { "name": "w1", "rack": "r1", "labels": { "role": "web" } },
    { "name": "w1", "rack": "r2" }
  ],
  "services": []
}"#;
    let diagnostics =
        load_documents_with_limits("fleet.json", json, &context(), LoadLimits::DEFINITION)
            .expect_err("w1 is listed twice");
    assert_eq!(diagnostics[0].code, "duplicate-host");
    assert_eq!((diagnostics[0].line, diagnostics[0].column), (6, 15));
}

fn policy(source: &str) -> MaintenancePolicyDef {
    load_one("policy.yaml", source)
        .as_maintenance_policy()
        .cloned()
        .expect("a policy")
}

#[test]
fn the_example_policies_decide_as_the_seed_says() {
    let source = repository_file("examples/fleet/policies.yaml");
    let policies: Vec<MaintenancePolicyDef> = load_documents("policies.yaml", &source, &context())
        .expect("loads")
        .iter()
        .filter_map(|d| d.as_maintenance_policy().cloned())
        .collect();
    assert_eq!(policies.len(), 3);
    let decide = |service: &str, kind: MaintenanceType, duration_ms: u64| {
        let policy = policies
            .iter()
            .find(|p| p.service.value == service)
            .expect("policy");
        policy.decide(&kind, duration_ms).0.describe()
    };
    use MaintenanceType::{Network, Power, Reboot};
    assert_eq!(decide("web", Power, 10 * HOUR_MS), "drain_and_wait");
    assert_eq!(
        decide("web", MaintenanceType::Custom("bios".into()), 1),
        "drain_and_wait"
    );
    assert_eq!(decide("cache", Network, 10 * HOUR_MS), "drain_and_wait");
    assert_eq!(
        decide("cache", Power, 30 * MINUTE_MS),
        "runbook cache-reload-index"
    );
    assert_eq!(
        decide("cache", Power, 31 * MINUTE_MS),
        "replace_with_spares"
    );
    assert_eq!(decide("cache", Reboot, MINUTE_MS), "replace_with_spares");
    assert_eq!(
        decide("cache", MaintenanceType::Custom("bios".into()), 1),
        "human"
    );
    assert_eq!(decide("mysql", Power, 20 * MINUTE_MS), "drain_and_wait");
    assert_eq!(decide("mysql", Power, 2 * HOUR_MS), "human");
    assert_eq!(decide("mysql", Network, HOUR_MS), "drain_and_wait");
    assert_eq!(decide("mysql", Network, 4 * HOUR_MS), "replace_with_spares");
    let cache = policies.iter().find(|p| p.name == "cache").expect("cache");
    assert_eq!(cache.max_failed_hosts, Amount::Count(1));
    assert_eq!(cache.disable_concurrency, 4);
    match &cache.rules[1].action {
        PolicyAction::Runbook { runbook, with } => {
            assert_eq!(runbook.value, "cache-reload-index");
            assert_eq!(with["warm_from"], "peers");
        }
        other => panic!("{other:?}"),
    }
    let web = policies.iter().find(|p| p.name == "web").expect("web");
    assert_eq!(web.allowed_failures(24), 2);
    assert_eq!(web.allowed_failures(5), 0);
}

#[test]
fn paused_automation_and_unmatched_maintenance_go_to_a_human() {
    let paused = policy(
        "kind: MaintenancePolicy\nname: p\nservice: web\nautomation: false\nrules:\n  - { type: any, action: nothing }\n",
    );
    let (action, by) = paused.decide(&MaintenanceType::Network, 1);
    assert_eq!(
        (action, by),
        (&PolicyAction::Human, DecidedBy::AutomationOff)
    );
    let defaulted = policy(
        "kind: MaintenancePolicy\nname: p\nservice: web\nrules:\n  - { type: network, action: nothing }\ndefault: drain_and_wait\n",
    );
    let (action, by) = defaulted.decide(&MaintenanceType::Power, 1);
    assert_eq!(
        (action, by),
        (&PolicyAction::DrainAndWait, DecidedBy::Default)
    );
    let (_, by) = defaulted.decide(&MaintenanceType::Network, 1);
    assert!(matches!(by, DecidedBy::Rule { index: 0, .. }), "{by:?}");
}

fn policy_errors(rules: &str) -> Vec<String> {
    let source = format!("kind: MaintenancePolicy\nname: p\nservice: web\n{rules}");
    match load_documents("policy.yaml", &source, &context()) {
        Ok(definitions) => panic!("loaded: {definitions:#?}"),
        Err(diagnostics) => diagnostics
            .iter()
            .map(|d| format!("{}:{} {} {}", d.line, d.column, d.code, d.message))
            .collect(),
    }
}

#[test]
fn policy_mistakes_are_located() {
    let diagnostics = policy_errors(
        "max_failed_hosts: lots\ndisable_concurrency: 0\nrules:\n  - { type: network, over: 4h, up_to: 30m, action: drain_and_wait }\n  - { type: [any, power], action: nothing }\n  - { type: Power!, action: nothing }\n  - { type: reboot, action: { builtin: nothing, with: { a: 1 } } }\n  - { type: reboot, action: reboot_it }\n  - { type: reboot, up_to: 1y, action: { runbook: Fix } }\n",
    );
    for expected in [
        "4:19 invalid-value `lots` is not a count or a percentage",
        "5:22 invalid-value `disable_concurrency` is 0",
        "7:28 empty-duration-range No maintenance lasts more than `4h` and at most `30m`",
        "8:14 invalid-value `any` matches every type",
        "9:13 invalid-value `Power!` is not a maintenance type",
        "10:55 unexpected-key `with` gives a runbook its parameters",
        "11:29 invalid-value `reboot_it` is not one of",
        "12:28 invalid-duration `y` in `1y` is not a unit of time",
        "12:51 invalid-name `Fix` is not a valid runbook name",
    ] {
        assert!(
            diagnostics.iter().any(|d| d.starts_with(expected)),
            "{expected:?} in {diagnostics:#?}"
        );
    }
    assert_eq!(diagnostics.len(), 9, "{diagnostics:#?}");
    let no_rules = policy_errors("rules: []\n");
    assert_one(&no_rules, "no-rules", "4:8", &["automation: false"]);
}

#[test]
fn a_rule_hidden_by_an_earlier_one_is_a_warning() {
    let source = "kind: MaintenancePolicy\nname: p\nservice: web\nrules:\n  - { type: network, up_to: 4h, action: drain_and_wait }\n  - { type: network, over: 1h, up_to: 2h, action: nothing }\n  - { type: [network, power], up_to: 1h, action: nothing }\n";
    let loaded = load_documents_with_warnings("policy.yaml", source, &context()).expect("loads");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(loaded.warnings[0].code, "unreachable-rule");
    assert_eq!(loaded.warnings[0].line, 6);
    assert!(loaded.warnings[0].message.contains("line 5"));
}
