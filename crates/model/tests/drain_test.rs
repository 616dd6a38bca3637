//! `kind: DrainTest`: what loads (the demo's example, the defaults) and every rule that
//! refuses bad input, each with the file, line and column it names.

use levee_model::{
    Definition, DrainTarget, DrainTestDef, LoadContext, PassCriteria, load_documents,
};

const NOW_MS: i64 = 1_735_689_600_000;
const MINUTE_MS: u64 = 60_000;

fn context() -> LoadContext {
    LoadContext::new(NOW_MS, jiff::tz::TimeZone::UTC)
}

fn repository_file(relative: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn tests(file: &str, source: &str) -> Vec<DrainTestDef> {
    match load_documents(file, source, &context()) {
        Ok(definitions) => definitions
            .iter()
            .filter_map(Definition::as_drain_test)
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
    match load_documents("test.yaml", source, &context()) {
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

const MINIMAL: &str = "kind: DrainTest
name: t
runbook: evacuate-dc
target: east
restore: { runbook: restore-dc }
";

#[test]
fn the_demo_example_loads() {
    let loaded = tests(
        "examples/demo/drain-test.yaml",
        &repository_file("examples/demo/drain-test.yaml"),
    );
    assert_eq!(loaded.len(), 2);
    let weekly = &loaded[0];
    assert_eq!(weekly.name, "weekly-evacuation");
    assert_eq!(
        weekly.target,
        DrainTarget::LeastRecentlyTested(vec!["east".into(), "west".into()])
    );
    let schedule = weekly.schedule.as_ref().expect("a schedule");
    assert_eq!(
        (schedule.cron.as_str(), schedule.time_zone.as_str()),
        ("0 3 * * tue", "Europe/Berlin")
    );
    assert_eq!(weekly.pass.max_duration_ms, Some(30 * MINUTE_MS));
    assert_eq!(weekly.restore.runbook.value, "restore-dc");
    let storm = &loaded[1];
    assert!(storm.storm);
    assert_eq!(
        serde_json::Value::Object(storm.drain_params("west")),
        serde_json::json!({ "dc": "west", "storm": true })
    );
}

#[test]
fn defaults_and_round_trip() {
    let test = &tests("t.yaml", MINIMAL)[0];
    assert_eq!(test.target_param, "dc");
    assert_eq!(test.pass, PassCriteria::default());
    assert!(test.pass.no_health_breach && test.pass.restore_completed);
    assert!(test.schedule.is_none());
    assert!(!test.storm);
    assert_eq!(
        serde_json::Value::Object(test.restore_params("east")),
        serde_json::json!({ "dc": "east" })
    );
    let json = serde_json::to_value(test).expect("serializes");
    let back: DrainTestDef = serde_json::from_value(json).expect("deserializes");
    assert_eq!(&back, test);
}

#[test]
fn least_recently_tested_picks_the_never_tested_then_the_oldest() {
    let target = DrainTarget::LeastRecentlyTested(vec!["a".into(), "b".into(), "c".into()]);
    // Never tested comes first, in the order listed.
    assert_eq!(
        target.pick(|dc| match dc {
            "a" => Some(10),
            _ => None,
        }),
        "b"
    );
    assert_eq!(
        target.pick(|dc| match dc {
            "a" => Some(30),
            "b" => Some(10),
            _ => Some(20),
        }),
        "b"
    );
    assert_eq!(target.pick(|_| None), "a");
}

#[test]
fn cron_errors_point_at_the_expression_and_name_the_field() {
    let diagnostics = errors(
        "kind: DrainTest
name: t
runbook: evacuate-dc
target: east
schedule:
  cron: 61 3 * * *
  time_zone: UTC
restore: { runbook: restore-dc }
",
    );
    assert_one(
        &diagnostics,
        "invalid-cron",
        "6:9",
        &["minute 61 is out of 0-59", "at character 1 of `61 3 * * *`"],
    );
    let diagnostics = errors(
        "kind: DrainTest
name: t
runbook: evacuate-dc
target: east
schedule: { cron: \"0 3 * * 1-9\", time_zone: Mars/Olympus }
restore: { runbook: restore-dc }
",
    );
    assert_one(
        &diagnostics,
        "invalid-cron",
        "5:19",
        &["day-of-week 9 is out of 0-7", "at character 11"],
    );
    assert_one(
        &diagnostics,
        "invalid-time-zone",
        "5:45",
        &["`Mars/Olympus` is not an IANA time zone name"],
    );
}

#[test]
fn missing_and_conflicting_keys_say_what_to_write() {
    let diagnostics = errors("kind: DrainTest\nname: t\nrunbook: evacuate-dc\n");
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert!(
        diagnostics[0].starts_with("1:1 missing-key") && diagnostics[0].contains("no `target`")
    );
    assert!(diagnostics[1].contains("no `restore`"), "{diagnostics:#?}");
    let diagnostics = errors(
        "kind: DrainTest
name: t
runbook: evacuate-dc
target: { datacenter: east, least_recently_tested: [east] }
restore: { runbook: restore-dc }
",
    );
    assert_one(&diagnostics, "conflicting-keys", "4:23", &["not both"]);
    let diagnostics = errors(
        "kind: DrainTest
name: t
runbook: evacuate-dc
target: { least_recently_tested: [east, west, east] }
restore: { runbook: restore-dc }
",
    );
    assert_one(&diagnostics, "duplicate-datacenter", "4:47", &["`east`"]);
}

#[test]
fn parameters_the_test_sets_itself_are_refused() {
    let diagnostics = errors(
        "kind: DrainTest
name: t
runbook: evacuate-dc
params: { dc: west, storm: true }
target: east
restore: { runbook: restore-dc }
",
    );
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert!(
        diagnostics[0].starts_with("4:11 reserved-param")
            && diagnostics[0].contains("set `target` instead")
    );
    assert!(
        diagnostics
            .iter()
            .any(|d| d.starts_with("4:21 reserved-param")
                && d.contains("write `storm: true` on the test")),
        "{diagnostics:#?}"
    );
}

#[test]
fn bad_pass_criteria_and_unknown_keys_are_refused() {
    let diagnostics = errors(
        "kind: DrainTest
name: t
runbook: evacuate-dc
target: east
pass: { max_duration: 0s, within: 1h }
restore: { runbook: restore-dc }
",
    );
    assert!(
        diagnostics
            .iter()
            .any(|d| d.starts_with("5:") && d.contains("within")),
        "{diagnostics:#?}"
    );
    let diagnostics = errors(
        "kind: DrainTest
name: t
runbook: evacuate-dc
target: east
pass: { max_duration: 8d }
restore: { runbook: restore-dc }
",
    );
    assert_one(&diagnostics, "invalid-duration", "5:23", &["at most 7d"]);
}
