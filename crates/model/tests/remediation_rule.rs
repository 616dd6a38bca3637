//! `kind: RemediationRule`: what loads (the example for the row-a fleet, the defaults) and
//! every rule that refuses bad input, each with the file, line and column it names.

use levee_model::remediation_rule::{
    DEFAULT_COOLDOWN_MS, DEFAULT_MAX_IN_REPAIR_HOSTS, DEFAULT_MAX_IN_REPAIR_PER_POOL_HOSTS,
    DEFAULT_SHORT_CIRCUIT_UNHEALTHY_HOSTS, DEFAULT_SHORT_CIRCUIT_WINDOW_MS,
};
use levee_model::{Amount, Definition, LoadContext, MatchOp, RemediationRuleDef, load_documents};

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

fn rules(file: &str, source: &str) -> Vec<RemediationRuleDef> {
    match load_documents(file, source, &context()) {
        Ok(definitions) => definitions
            .iter()
            .filter_map(Definition::as_remediation_rule)
            .cloned()
            .collect(),
        Err(diagnostics) => {
            let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            panic!("{file} did not load:\n{}", rendered.join("\n"));
        }
    }
}

/// The errors of a file that must not load, as `line:column code message`.
fn errors(source: &str) -> Vec<String> {
    match load_documents("rule.yaml", source, &context()) {
        Ok(definitions) => panic!("loaded: {definitions:#?}"),
        Err(diagnostics) => diagnostics
            .iter()
            .map(|d| format!("{}:{} {} {}", d.line, d.column, d.code, d.message))
            .collect(),
    }
}

/// Asserts that exactly one diagnostic has `code`, at `line:column`, holding every phrase.
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

const MINIMAL: &str = "kind: RemediationRule
name: disk
match:
  alertname: DiskFailing
runbook: host-repair
";

#[test]
fn a_minimal_rule_gets_the_documented_defaults() {
    let rule = &rules("rule.yaml", MINIMAL)[0];
    assert_eq!(rule.name, "disk");
    assert_eq!(rule.fleet, None);
    assert_eq!(rule.host_label, None);
    assert_eq!(rule.host_labels(), ["instance", "host"]);
    assert_eq!(rule.runbook.value, "host-repair");
    assert_eq!(
        (rule.runbook.origin.line, rule.runbook.origin.column),
        (5, 10)
    );
    assert_eq!(
        rule.max_in_repair_per_pool,
        Amount::Count(DEFAULT_MAX_IN_REPAIR_PER_POOL_HOSTS)
    );
    assert_eq!(
        rule.max_in_repair,
        Amount::Count(DEFAULT_MAX_IN_REPAIR_HOSTS)
    );
    assert_eq!(
        rule.short_circuit.max_unhealthy,
        Amount::Count(DEFAULT_SHORT_CIRCUIT_UNHEALTHY_HOSTS)
    );
    assert_eq!(
        rule.short_circuit.within_ms,
        DEFAULT_SHORT_CIRCUIT_WINDOW_MS
    );
    assert_eq!(rule.cooldown_ms, DEFAULT_COOLDOWN_MS);
    assert_eq!(rule.describe_matchers(), "{alertname=\"DiskFailing\"}");
    assert!(rule.matches(|l| (l == "alertname").then_some("DiskFailing")));
    assert!(!rule.matches(|l| (l == "alertname").then_some("DiskFailingSoon")));
    assert!(!rule.matches(|_| None));
}

#[test]
fn the_example_rule_for_row_a_loads() {
    let loaded = rules(
        "examples/fleet/remediation.yaml",
        &repository_file("examples/fleet/remediation.yaml"),
    );
    assert_eq!(loaded.len(), 1);
    let rule = &loaded[0];
    assert_eq!(rule.name, "row-a-host-down");
    assert_eq!(rule.fleet.as_ref().map(|f| f.value.as_str()), Some("row-a"));
    assert_eq!(rule.host_label.as_deref(), Some("instance"));
    assert_eq!(rule.max_in_repair_per_pool, Amount::Count(1));
    assert_eq!(rule.max_in_repair, Amount::Count(3));
    assert_eq!(rule.short_circuit.max_unhealthy, Amount::Count(6));
    assert_eq!(rule.short_circuit.within_ms, 10 * MINUTE_MS);
    assert_eq!(rule.cooldown_ms, 6 * HOUR_MS);
    assert_eq!(
        rule.repair_ticket_webhook.as_deref(),
        Some("http://tickets.example.invalid/api/repairs")
    );
    assert_eq!(rule.with["ticket_queue"], "dc1-hardware");
    assert!(matches!(rule.matchers[2].op, MatchOp::NotEqual(ref v) if v == "staging"));
    let labels = |alertname: &'static str, severity: &'static str, env: &'static str| {
        move |label: &str| match label {
            "alertname" => Some(alertname),
            "severity" => Some(severity),
            "env" => Some(env),
            _ => None,
        }
    };
    assert!(rule.matches(labels("HostDown", "page", "prod")));
    assert!(rule.matches(labels("DiskFailing", "critical", "prod")));
    assert!(!rule.matches(labels("HostDown", "warning", "prod")));
    assert!(!rule.matches(labels("HostDown", "page", "staging")));
    assert!(!rule.matches(labels("HostDownSoon", "page", "prod")));
    // The compiled form round-trips through JSON, the form the server stores.
    let json = serde_json::to_value(rule).expect("serializes");
    let back: RemediationRuleDef = serde_json::from_value(json).expect("deserializes");
    assert_eq!(&back, rule);
}

#[test]
fn percentages_and_regex_negation_load() {
    let rule = &rules(
        "rule.yaml",
        "kind: RemediationRule
name: r
match:
  alertname: { regex: \"Host.*\" }
  team: { not_regex: \"db|storage\" }
  job: { equals: node }
host_label: host
runbook: fix
max_in_repair_per_pool: 10%
max_in_repair: 2.5%
short_circuit: { max_unhealthy: 5% }
",
    )[0];
    assert_eq!(rule.host_labels(), ["host"]);
    assert_eq!(
        rule.max_in_repair_per_pool,
        Amount::Percent {
            basis_points: 1_000
        }
    );
    assert_eq!(rule.max_in_repair, Amount::Percent { basis_points: 250 });
    assert_eq!(
        rule.short_circuit.within_ms,
        DEFAULT_SHORT_CIRCUIT_WINDOW_MS
    );
    assert_eq!(
        rule.describe_matchers(),
        "{alertname=~\"Host.*\", team!~\"db|storage\", job=\"node\"}"
    );
    let labels = |team: &'static str| {
        move |label: &str| match label {
            "alertname" => Some("HostDown"),
            "job" => Some("node"),
            "team" => Some(team),
            _ => None,
        }
    };
    assert!(rule.matches(labels("web")));
    assert!(!rule.matches(labels("db")));
    // A missing label matches as the empty string, as in Alertmanager.
    assert!(rule.matches(|label| match label {
        "alertname" => Some("HostDown"),
        "job" => Some("node"),
        _ => None,
    }));
}

#[test]
fn a_bad_regex_is_located() {
    let diagnostics = errors(
        "kind: RemediationRule
name: r
match:
  alertname: { regex: \"Host(Down\" }
runbook: fix
",
    );
    assert_one(
        &diagnostics,
        "invalid-regex",
        "4:23",
        &[
            "`Host(Down` is not a valid regular expression (RE2 syntax, as in Alertmanager): \
             unclosed group",
        ],
    );
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let diagnostics = errors(&format!("{MINIMAL}cooldwon: 1h\n"));
    assert_one(
        &diagnostics,
        "unknown-key",
        "6:1",
        &["Unknown key `cooldwon`", "Did you mean `cooldown`?"],
    );
    let diagnostics = errors(
        "kind: RemediationRule
name: r
match:
  alertname: { regx: X }
runbook: fix
",
    );
    assert_one(
        &diagnostics,
        "unknown-key",
        "4:16",
        &["Unknown key `regx`", "Did you mean `regex`?"],
    );
}

#[test]
fn zero_limits_are_errors() {
    let diagnostics = errors(&format!(
        "{MINIMAL}max_in_repair_per_pool: 0\nmax_in_repair: 0%\nshort_circuit: {{ max_unhealthy: 0, within: 0s }}\ncooldown: 0m\n"
    ));
    assert!(
        diagnostics[0].starts_with(
            "6:25 zero-limit `max_in_repair_per_pool` is 0: nothing could ever be repaired."
        ),
        "{diagnostics:#?}"
    );
    let zero_limits: Vec<&String> = diagnostics
        .iter()
        .filter(|d| d.contains("zero-limit"))
        .collect();
    assert_eq!(zero_limits.len(), 3, "{diagnostics:#?}");
    assert!(zero_limits[1].starts_with("7:16 "), "{diagnostics:#?}");
    assert!(zero_limits[2].starts_with("8:33 "), "{diagnostics:#?}");
    let zero_durations: Vec<&String> = diagnostics
        .iter()
        .filter(|d| d.contains("zero-duration"))
        .collect();
    assert_eq!(zero_durations.len(), 2, "{diagnostics:#?}");
    assert!(zero_durations[0].starts_with("8:44 "), "{diagnostics:#?}");
    assert!(zero_durations[1].starts_with("9:11 "), "{diagnostics:#?}");
}

#[test]
fn a_rule_must_name_the_alert() {
    let diagnostics = errors(
        "kind: RemediationRule
name: r
match:
  severity: critical
  alertname: { not: Watchdog }
runbook: fix
",
    );
    assert_one(
        &diagnostics,
        "missing-alertname",
        "4:3",
        &["`match` must name the alert", "never takes every alert"],
    );
    let diagnostics = errors("kind: RemediationRule\nname: r\n");
    let missing: Vec<&String> = diagnostics
        .iter()
        .filter(|d| d.contains("missing-key"))
        .collect();
    assert_eq!(missing.len(), 2, "{diagnostics:#?}");
    assert!(
        diagnostics.iter().any(|d| d.contains("no `match`")),
        "{diagnostics:#?}"
    );
    assert!(
        diagnostics.iter().any(|d| d.contains("no `runbook`")),
        "{diagnostics:#?}"
    );
}

#[test]
fn matchers_labels_params_and_urls_are_checked() {
    let diagnostics = errors(
        "kind: RemediationRule
name: r
match:
  alertname: HostDown
  bad-label: x
  job: { equals: node, not: other }
host_label: 9lives
runbook: Fix_It
with:
  host: other
repair_ticket_webhook: ftp://tickets
cooldown: 90d
",
    );
    let labels: Vec<&String> = diagnostics
        .iter()
        .filter(|d| d.contains(" invalid-label "))
        .collect();
    assert_eq!(labels.len(), 2, "{diagnostics:#?}");
    assert!(labels[0].starts_with("5:3 invalid-label `bad-label` is not a label name"));
    assert!(labels[1].starts_with("7:13 invalid-label `9lives`"));
    assert_one(
        &diagnostics,
        "conflicting-keys",
        "6:29",
        &["more than one comparison", "`not`"],
    );
    assert_one(
        &diagnostics,
        "invalid-name",
        "8:10",
        &["`Fix_It` is not a valid runbook name"],
    );
    assert_one(
        &diagnostics,
        "reserved-param",
        "10:3",
        &["`host` is set by Levee", "`host`, `service` or `alert`"],
    );
    assert_one(
        &diagnostics,
        "invalid-url",
        "11:24",
        &["`ftp://tickets` is not a webhook URL"],
    );
    assert_one(
        &diagnostics,
        "duration-too-long",
        "12:11",
        &["`cooldown` is `90d`; at most 30d"],
    );
}

#[test]
fn the_kind_is_listed_among_the_known_kinds() {
    let diagnostics = errors("kind: RemediationRul\nname: r\n");
    assert!(
        diagnostics[0].contains("Did you mean `RemediationRule`?"),
        "{diagnostics:#?}"
    );
    assert!(levee_model::known_kinds().any(|k| k == "RemediationRule"));
}
