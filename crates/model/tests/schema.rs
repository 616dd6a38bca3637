//! The JSON Schema in `schemas/` must match the serde types. Regenerate it with
//! `LEVEE_UPDATE_SCHEMAS=1 cargo test -p levee-model --test schema`.

use std::path::PathBuf;

use levee_model::schema::{
    STATE_MACHINE_SCHEMA_PATH, state_machine_schema, state_machine_schema_text,
};

fn repository_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

#[test]
fn state_machine_schema_file_is_up_to_date() {
    let path = repository_path(STATE_MACHINE_SCHEMA_PATH);
    let expected = state_machine_schema_text();
    if std::env::var("LEVEE_UPDATE_SCHEMAS").as_deref() == Ok("1") {
        let directory = path.parent().expect("the schema path has a directory");
        std::fs::create_dir_all(directory).expect("create the schemas directory");
        std::fs::write(&path, &expected).expect("write the schema");
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is out of date with the serde types; regenerate it with \
         `LEVEE_UPDATE_SCHEMAS=1 cargo test -p levee-model --test schema`",
        path.display()
    );
}

#[test]
fn schema_describes_the_native_format() {
    let schema = state_machine_schema();
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["kind"]["const"], "StateMachine");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .expect("required keys")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(required, ["kind", "name", "states"]);
    let state = &schema["definitions"]["State"];
    assert_eq!(state["additionalProperties"], false);
    assert!(state["properties"]["final"].is_object());
    // `on` values are a state name or a mapping; `in` is a name or a list.
    let transition = &schema["definitions"]["Transition"];
    assert_eq!(transition["anyOf"][0]["type"], "string");
    assert_eq!(transition["anyOf"][1]["additionalProperties"], false);
    let guard_in = &schema["definitions"]["Guard"]["properties"]["in"];
    assert!(guard_in["anyOf"][1]["type"] == "array", "{guard_in}");
}

fn check_file(relative: &str, expected: String) {
    let path = repository_path(relative);
    if std::env::var("LEVEE_UPDATE_SCHEMAS").as_deref() == Ok("1") {
        let directory = path.parent().expect("the schema path has a directory");
        std::fs::create_dir_all(directory).expect("create the schemas directory");
        std::fs::write(&path, &expected).expect("write the schema");
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is out of date with the serde types; regenerate it with \
         `LEVEE_UPDATE_SCHEMAS=1 cargo test -p levee-model --test schema`",
        path.display()
    );
}

#[test]
fn runbook_schema_file_is_up_to_date() {
    check_file(
        levee_model::schema::RUNBOOK_SCHEMA_PATH,
        levee_model::schema::runbook_schema_text(),
    );
}

#[test]
fn task_template_schema_file_is_up_to_date() {
    check_file(
        levee_model::schema::TASK_TEMPLATE_SCHEMA_PATH,
        levee_model::schema::task_template_schema_text(),
    );
}

#[test]
fn runbook_schema_describes_tasks_checks_and_includes() {
    let schema = levee_model::schema::runbook_schema();
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["kind"]["const"], "Runbook");
    let task = &schema["definitions"]["Task"];
    assert_eq!(task["additionalProperties"], false);
    for key in [
        "id", "stage", "template", "with", "needs", "after", "pre", "post", "health",
    ] {
        assert!(task["properties"][key].is_object(), "task key {key}");
    }
    assert_eq!(task["oneOf"][0]["required"][0], "stage");
    let retries = &schema["definitions"]["Retries"];
    assert_eq!(retries["anyOf"][0]["type"], "integer");
    let check = &schema["definitions"]["Check"];
    assert_eq!(check["oneOf"].as_array().map(Vec::len), Some(4));
    assert!(schema["definitions"]["Include"]["properties"]["runbook"].is_object());
    let purposes = &schema["definitions"]["Purpose"]["enum"];
    assert_eq!(
        purposes,
        &serde_json::json!(["drain", "restore", "maintenance", "other"])
    );
    let template = levee_model::schema::task_template_schema();
    assert_eq!(template["properties"]["kind"]["const"], "TaskTemplate");
    assert!(template["definitions"]["Step"]["properties"]["stage"].is_object());
}

#[test]
fn fleet_schema_file_is_up_to_date() {
    check_file(
        levee_model::schema::FLEET_SCHEMA_PATH,
        levee_model::schema::fleet_schema_text(),
    );
}

#[test]
fn maintenance_policy_schema_file_is_up_to_date() {
    check_file(
        levee_model::schema::MAINTENANCE_POLICY_SCHEMA_PATH,
        levee_model::schema::maintenance_policy_schema_text(),
    );
}

#[test]
fn remediation_rule_schema_file_is_up_to_date() {
    check_file(
        levee_model::schema::REMEDIATION_RULE_SCHEMA_PATH,
        levee_model::schema::remediation_rule_schema_text(),
    );
}

#[test]
fn remediation_rule_schema_describes_matchers_and_limits() {
    let rule = levee_model::schema::remediation_rule_schema();
    assert_eq!(rule["additionalProperties"], false);
    assert_eq!(rule["properties"]["kind"]["const"], "RemediationRule");
    for key in [
        "match",
        "host_label",
        "runbook",
        "with",
        "fleet",
        "max_in_repair_per_pool",
        "max_in_repair",
        "short_circuit",
        "repair_ticket_webhook",
        "cooldown",
    ] {
        assert!(rule["properties"][key].is_object(), "rule key {key}");
    }
    let matcher = &rule["definitions"]["Matcher"];
    assert!(
        matcher["anyOf"][1]["properties"]["regex"].is_object(),
        "{matcher}"
    );
    assert!(rule["definitions"]["ShortCircuit"]["properties"]["within"].is_object());
}

#[test]
fn fleet_and_policy_schemas_describe_hosts_pools_and_rules() {
    let fleet = levee_model::schema::fleet_schema();
    assert_eq!(fleet["additionalProperties"], false);
    assert_eq!(fleet["properties"]["kind"]["const"], "Fleet");
    let host = &fleet["definitions"]["Host"];
    assert_eq!(host["additionalProperties"], false);
    for key in [
        "name",
        "region",
        "datacenter",
        "row",
        "rack",
        "power",
        "switch",
        "labels",
        "down",
    ] {
        assert!(host["properties"][key].is_object(), "host key {key}");
    }
    let pool = &fleet["definitions"]["Pool"];
    assert_eq!(pool["oneOf"][0]["required"][0], "selector");
    assert_eq!(pool["oneOf"][1]["required"][0], "hosts");
    assert!(fleet["definitions"]["Capacity"]["properties"]["floor"].is_object());
    assert_eq!(
        fleet["definitions"]["DependencyKind"]["enum"],
        serde_json::json!(["bootstrap", "rpc", "state"])
    );
    let policy = levee_model::schema::maintenance_policy_schema();
    assert_eq!(policy["properties"]["kind"]["const"], "MaintenancePolicy");
    let action = &policy["definitions"]["Action"];
    assert_eq!(action["anyOf"][0]["enum"][0], "drain_and_wait");
    assert!(policy["definitions"]["Rule"]["properties"]["up_to"].is_object());
}

#[test]
fn drain_test_schema_file_is_up_to_date() {
    check_file(
        levee_model::schema::DRAIN_TEST_SCHEMA_PATH,
        levee_model::schema::drain_test_schema_text(),
    );
}

#[test]
fn drain_test_schema_describes_target_schedule_and_pass() {
    let test = levee_model::schema::drain_test_schema();
    assert_eq!(test["additionalProperties"], false);
    assert_eq!(test["properties"]["kind"]["const"], "DrainTest");
    for key in [
        "runbook",
        "params",
        "target_param",
        "target",
        "schedule",
        "pass",
        "restore",
        "storm",
    ] {
        assert!(test["properties"][key].is_object(), "drain test key {key}");
    }
    let required: Vec<&str> = test["required"]
        .as_array()
        .expect("required keys")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(required, ["kind", "name", "runbook", "target", "restore"]);
    // A target is a datacenter's name, or the long form.
    let target = &test["definitions"]["Target"];
    assert_eq!(target["anyOf"][0]["type"], "string", "{target}");
    assert!(target["anyOf"][1]["properties"]["least_recently_tested"].is_object());
    let schedule = &test["definitions"]["Schedule"];
    assert_eq!(schedule["additionalProperties"], false);
    assert!(schedule["properties"]["time_zone"].is_object());
}
