//! Levee's definitions: serde types for the YAML users write, loading with source locations,
//! validation, and the compiled forms the engine consumes.
//!
//! This crate does no I/O: callers hand it text and a [`LoadContext`] (the clock and the local
//! time zone), and get back either compiled definitions or [`Diagnostic`]s that name file, line
//! and column.
//!
//! - [`load_documents`] (and [`load_documents_with_warnings`]) reads a file of `---`-separated
//!   native definitions (`kind: StateMachine`, `kind: Runbook`, `kind: TaskTemplate`,
//!   `kind: Fleet`, `kind: MaintenancePolicy`, `kind: RemediationRule`, `kind: DrainTest`) and
//!   reports every problem it finds, each with a stable code such as `unknown-key` or
//!   `unknown-state`.
//! - [`link`] checks runbooks and templates against each other (across files) and against the
//!   stage library, and flattens each runbook into a [`ResolvedRunbook`]; [`bind_params`] and
//!   [`render`] give a run its parameter values.
//! - [`stateservice::load`] reads Facebook StateService's `current_state` / `states` file.
//! - [`schema::state_machine_schema`] (and [`schema::runbook_schema`],
//!   [`schema::task_template_schema`]) is the JSON Schema editors use to check files as they are
//!   written; it is generated from the same serde types that parse them.
//! - [`fleet`] holds the compiled fleet (hosts, failure domains, services, pools, floors) and
//!   the checks that need the whole fleet; [`selector`] is the selector grammar and the
//!   inverted [`HostIndex`] that resolves selectors; [`maintenance_policy`] is a service's
//!   decision matrix; [`remediation_rule`] is an alert-driven repair rule (label matchers,
//!   the host's label, the runbook, its limits); [`drain_test`] is a scheduled drain test
//!   (runbook, target, [`cron`] schedule in a time zone, pass criteria, restore). Capacity arithmetic and preflight live in the `levee-fleet` crate.
//! - [`parse_duration_ms`] and [`names`] are the shapes of durations and names, for other
//!   crates that accept them (URLs, CLI arguments).
//!
//! Loading runs in two steps (see `yaml.rs` and `de.rs`): the YAML parser builds a tree of
//! nodes that remember their line and column, then serde types are read from that tree by a
//! deserializer that records every error where it happened and carries on.

pub mod cron;
pub mod diagnostic;
pub mod drain_test;
pub mod fleet;
pub mod graph;
pub mod link;
pub mod load;
pub mod machine;
pub mod maintenance_policy;
pub mod names;
pub mod params;
pub mod remediation_rule;
pub mod runbook;
pub mod schema;
pub mod selector;
pub mod stateservice;
pub mod time;

mod de;
mod fleet_spec;
mod runbook_spec;
mod state_machine;
mod yaml;

pub use cron::{Cron, CronError};
pub use diagnostic::{Diagnostic, Severity};
pub use drain_test::{
    DRAIN_TEST_KIND, DrainSchedule, DrainTarget, DrainTestDef, PassCriteria, RunbookCall,
};
pub use fleet::{
    Amount, CapacityPolicy, DependencyDef, DependencyKind, DomainLevel, Domains, FLEET_KIND,
    FleetDef, HostChoice, HostDef, PoolDef, ServiceDef,
};
pub use link::{
    MAX_INCLUDE_DEPTH, MAX_TASKS_PER_RUNBOOK, ResolvedRunbook, ResolvedTask, StageArg,
    StageCatalog, link,
};
pub use load::{
    Definition, LoadContext, LoadLimits, Loaded, known_kinds, load_documents,
    load_documents_with_limits, load_documents_with_warnings,
};
pub use machine::{
    CompatCounter, DEFAULT_EVENT, DefFormat, EventTransition, Guard, MachineDef, StateDef, Timer,
};
pub use maintenance_policy::{
    DecidedBy, MAINTENANCE_POLICY_KIND, MaintenancePolicyDef, MaintenanceType, PolicyAction,
    PolicyRule,
};
pub use params::{BoundParams, ParamError, bind_params, render, render_text};
pub use remediation_rule::{
    LabelMatcher, MatchOp, Pattern, REMEDIATION_RULE_KIND, RemediationRuleDef, ShortCircuit,
};
pub use runbook::{
    Arguments, Check, CheckKind, IncludeDef, JsonCheck, Located, Origin, ParamDef, ParamType,
    Purpose, RetryPolicy, RunbookDef, StepDef, TaskAction, TaskDef, TemplateDef, Threshold,
};
pub use runbook_spec::{RUNBOOK_KIND, TASK_ID_PATTERN, TEMPLATE_KIND, is_valid_task_id};
pub use selector::{HostIndex, HostNumber, Selector, SelectorError};
pub use time::{parse_duration_ms, parse_instant_ms};
pub use yaml::{MAX_YAML_DEPTH, MAX_YAML_NODES};

/// Largest definition file accepted, in bytes. Bigger files are refused before parsing so a
/// mistaken `levee apply` of a log file cannot exhaust memory.
pub const MAX_DEFINITION_BYTES: usize = 1024 * 1024;
/// Most states one machine may declare.
pub const MAX_STATES: usize = 1_000;
/// Most instances one definition may declare inline.
pub const MAX_INLINE_INSTANCES: usize = 10_000;
/// Largest `count` of an event transition (a barrier across this many reporters).
pub const MAX_TRANSITION_COUNT: u32 = 100_000;
