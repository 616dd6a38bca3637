//! JSON Schema for definitions, generated from the serde types that parse them, so editors
//! check what the loader checks (key names, types, shapes, name patterns) as you type.
//!
//! The schemas are kept in the repository at `schemas/state-machine.schema.json`,
//! `schemas/runbook.schema.json`, `schemas/task-template.schema.json`,
//! `schemas/fleet.schema.json`, `schemas/maintenance-policy.schema.json` and
//! `schemas/remediation-rule.schema.json`; a test fails
//! when it is out of date, and `LEVEE_UPDATE_SCHEMAS=1 cargo test -p levee-model` rewrites it.
//! With the YAML language server (VS Code's YAML extension, Neovim, Helix, ...), point a file
//! at it with a comment on its first line:
//!
//! ```yaml
//! # yaml-language-server: $schema=../schemas/state-machine.schema.json
//! kind: StateMachine
//! name: three-tier-db
//! states:
//!   - name: installing
//!     on: { done: serving }
//!   - name: serving
//!     final: true
//! ```
//!
//! The schema cannot express everything the loader checks: that transition targets name
//! states of the same machine, that names are unique, that durations are longer than zero and
//! times in the future. `levee validate FILE` checks all of it.

use schemars::generate::SchemaSettings;

use crate::drain_test::DrainTestSpec;
use crate::fleet_spec::FleetSpec;
use crate::maintenance_policy::MaintenancePolicySpec;
use crate::remediation_rule::RemediationRuleSpec;
use crate::runbook_spec::{RunbookSpec, TemplateSpec};
use crate::state_machine::StateMachineSpec;

/// Where the state machine schema lives, relative to the repository root.
pub const STATE_MACHINE_SCHEMA_PATH: &str = "schemas/state-machine.schema.json";

/// The JSON Schema (draft 7, which every YAML language server supports) of a
/// `kind: StateMachine` document.
pub fn state_machine_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft07().for_deserialize().into_generator();
    generator
        .into_root_schema_for::<StateMachineSpec>()
        .to_value()
}

/// Where the runbook schema lives, relative to the repository root.
pub const RUNBOOK_SCHEMA_PATH: &str = "schemas/runbook.schema.json";
/// Where the task template schema lives, relative to the repository root.
pub const TASK_TEMPLATE_SCHEMA_PATH: &str = "schemas/task-template.schema.json";

/// The JSON Schema of a `kind: Runbook` document. It cannot check what needs other
/// documents (stages and their arguments, templates, included runbooks, cycles): `levee
/// validate` with every file does.
pub fn runbook_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft07().for_deserialize().into_generator();
    generator.into_root_schema_for::<RunbookSpec>().to_value()
}

/// The JSON Schema of a `kind: TaskTemplate` document.
pub fn task_template_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft07().for_deserialize().into_generator();
    generator.into_root_schema_for::<TemplateSpec>().to_value()
}

/// [`runbook_schema`] as written to [`RUNBOOK_SCHEMA_PATH`].
pub fn runbook_schema_text() -> String {
    pretty(&runbook_schema())
}

/// [`task_template_schema`] as written to [`TASK_TEMPLATE_SCHEMA_PATH`].
pub fn task_template_schema_text() -> String {
    pretty(&task_template_schema())
}

/// The schema as written to [`STATE_MACHINE_SCHEMA_PATH`]: pretty-printed, with a final newline.
pub fn state_machine_schema_text() -> String {
    pretty(&state_machine_schema())
}

/// Where the fleet schema lives, relative to the repository root.
pub const FLEET_SCHEMA_PATH: &str = "schemas/fleet.schema.json";
/// Where the maintenance policy schema lives, relative to the repository root.
pub const MAINTENANCE_POLICY_SCHEMA_PATH: &str = "schemas/maintenance-policy.schema.json";

/// The JSON Schema of a `kind: Fleet` document. It cannot check what needs the whole fleet
/// (unique hosts, selectors that match, floors that fit): `levee validate` does.
pub fn fleet_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft07().for_deserialize().into_generator();
    generator.into_root_schema_for::<FleetSpec>().to_value()
}

/// The JSON Schema of a `kind: MaintenancePolicy` document.
pub fn maintenance_policy_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft07().for_deserialize().into_generator();
    generator
        .into_root_schema_for::<MaintenancePolicySpec>()
        .to_value()
}

/// [`fleet_schema`] as written to [`FLEET_SCHEMA_PATH`].
pub fn fleet_schema_text() -> String {
    pretty(&fleet_schema())
}

/// [`maintenance_policy_schema`] as written to [`MAINTENANCE_POLICY_SCHEMA_PATH`].
pub fn maintenance_policy_schema_text() -> String {
    pretty(&maintenance_policy_schema())
}

/// Where the remediation rule schema lives, relative to the repository root.
pub const REMEDIATION_RULE_SCHEMA_PATH: &str = "schemas/remediation-rule.schema.json";

/// The JSON Schema of a `kind: RemediationRule` document. It cannot check what needs other
/// documents (the runbook, the fleet) nor that regular expressions compile: `levee validate`
/// does.
pub fn remediation_rule_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft07().for_deserialize().into_generator();
    generator
        .into_root_schema_for::<RemediationRuleSpec>()
        .to_value()
}

/// [`remediation_rule_schema`] as written to [`REMEDIATION_RULE_SCHEMA_PATH`].
pub fn remediation_rule_schema_text() -> String {
    pretty(&remediation_rule_schema())
}

/// Where the drain test schema lives, relative to the repository root.
pub const DRAIN_TEST_SCHEMA_PATH: &str = "schemas/drain-test.schema.json";

/// The JSON Schema of a `kind: DrainTest` document. It cannot check that the cron expression
/// and the time zone are valid nor that the runbooks take the test's parameters:
/// `levee validate` and `levee apply` do.
pub fn drain_test_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft07().for_deserialize().into_generator();
    generator.into_root_schema_for::<DrainTestSpec>().to_value()
}

/// [`drain_test_schema`] as written to [`DRAIN_TEST_SCHEMA_PATH`].
pub fn drain_test_schema_text() -> String {
    pretty(&drain_test_schema())
}

fn pretty(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema)
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"));
    text.push('\n');
    text
}
