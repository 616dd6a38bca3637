//! The registry: every stage and check a definition may name, with their arguments, whether
//! they run here or in the server, and how to lint them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args, Strictness, check_args};
use crate::check::{Check, HttpCheck, MetricCheck, MetricSource, NoMetricSource, ShellCheck};
use crate::http::HttpStage;
use crate::log::LogStage;
use crate::promote::PromotePrimaryStage;
use crate::ramp::RampStage;
use crate::replication::ReplicationStage;
use crate::shell::ShellStage;
use crate::sticky::StickyDrainStage;
use crate::traffic::{Budgets, TrafficKit, TrafficShiftStage};
use crate::wait::{MAX_WAIT_MS, WaitStage};

/// The longest `expires` of an approval, in milliseconds (30 days).
pub const MAX_APPROVAL_EXPIRY_MS: u64 = 30 * 24 * 3_600_000;

/// Most names in an approval's `approvers`.
pub const MAX_APPROVERS: usize = 64;

/// Most states in a `state` stage's `wait_for` or a `state` check's `in`.
pub const MAX_STATE_LIST: usize = 64;

/// Where a stage or check is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    /// By this crate's implementation, through [`Registry::stage`] or [`Registry::check`].
    Local,
    /// By the server, because it waits on the store (an operator's approval, a state machine);
    /// the registry only knows its arguments, so definitions naming it can be linted.
    Server,
}

/// A stage that the server carries out; only its description lives here.
#[derive(Clone, Copy, Debug)]
pub struct ServerStage {
    /// The stage's name.
    pub name: &'static str,
    /// What it does, for documentation.
    pub description: &'static str,
    /// The arguments it accepts.
    pub args: &'static [ArgSpec],
    /// Checks arguments before a run.
    pub validate: fn(&Value) -> Result<(), ArgError>,
    /// Whether re-running it after a crash is safe, given its arguments.
    pub idempotent_for: fn(&Value) -> bool,
}

/// A check that the server carries out.
#[derive(Clone, Copy, Debug)]
pub struct ServerCheck {
    /// The check's name.
    pub name: &'static str,
    /// What it does, for documentation.
    pub description: &'static str,
    /// The arguments it accepts.
    pub args: &'static [ArgSpec],
    /// Checks arguments before a run.
    pub validate: fn(&Value) -> Result<(), ArgError>,
}

const APPROVAL_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "approvers",
        kind: ArgKind::StringList,
        required: false,
        description: "Who may approve (user or token names); anyone with the operator role when \
                       left out.",
    },
    ArgSpec {
        name: "not_starter",
        kind: ArgKind::Bool,
        required: false,
        description: "When true, whoever started the run may not approve it (false by default).",
    },
    ArgSpec {
        name: "expires",
        kind: ArgKind::Duration,
        required: false,
        description: "How long the request stays open before it expires and the task fails \
                      (1h by default, at most 30 days).",
    },
];

fn validate_approval(args: &Value) -> Result<(), ArgError> {
    let parsed = Args::checked(APPROVAL_ARGS, args)?;
    if let Some(approvers) = parsed.string_list("approvers")? {
        if approvers.is_empty() {
            return Err(ArgError::invalid(
                "approvers",
                "the list is empty, so nobody could approve; leave it out to allow any operator",
            ));
        }
        if approvers.len() > MAX_APPROVERS {
            return Err(ArgError::invalid(
                "approvers",
                format!("more than {MAX_APPROVERS} names"),
            ));
        }
        if approvers.iter().any(|name| name.trim().is_empty()) {
            return Err(ArgError::invalid("approvers", "a name is empty"));
        }
    }
    parsed.bool("not_starter")?;
    parsed.duration_ms("expires", MAX_APPROVAL_EXPIRY_MS)?;
    Ok(())
}

const STATE_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "machine",
        kind: ArgKind::String,
        required: true,
        description: "The id of the Levee state machine.",
    },
    ArgSpec {
        name: "advance",
        kind: ArgKind::String,
        required: false,
        description: "The state to move the machine to, as a PUT on its state would.",
    },
    ArgSpec {
        name: "event",
        kind: ArgKind::String,
        required: false,
        description: "An event to report to the machine (a counter or barrier step) instead of \
                      advancing it.",
    },
    ArgSpec {
        name: "wait_for",
        kind: ArgKind::StringList,
        required: false,
        description: "States to wait for; the stage succeeds once the machine is in one of them.",
    },
    ArgSpec {
        name: "timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "How long to wait for `wait_for` (at most a week); the task's timeout \
                      otherwise.",
    },
];

fn validate_state_list(argument: &str, states: Option<Vec<String>>) -> Result<(), ArgError> {
    if let Some(states) = states {
        if states.is_empty() {
            return Err(ArgError::invalid(argument, "the list of states is empty"));
        }
        if states.len() > MAX_STATE_LIST {
            return Err(ArgError::invalid(
                argument,
                format!("more than {MAX_STATE_LIST} states"),
            ));
        }
        if states.iter().any(|state| state.trim().is_empty()) {
            return Err(ArgError::invalid(argument, "a state name is empty"));
        }
    }
    Ok(())
}

fn validate_state_stage(args: &Value) -> Result<(), ArgError> {
    let parsed = Args::checked(STATE_ARGS, args)?;
    if parsed.required_string("machine")?.trim().is_empty() {
        return Err(ArgError::invalid("machine", "the machine id is empty"));
    }
    let advance = parsed.string("advance")?;
    let event = parsed.string("event")?;
    let wait_for = parsed.string_list("wait_for")?;
    if advance.is_some() && event.is_some() {
        return Err(ArgError::invalid(
            "event",
            "give either `advance` or `event`, not both",
        ));
    }
    if advance.is_none() && event.is_none() && wait_for.is_none() {
        return Err(ArgError::Missing {
            argument: "wait_for".to_string(),
            description: "a state stage needs `advance`, `event` or `wait_for`".to_string(),
        });
    }
    validate_state_list("wait_for", wait_for)?;
    parsed.duration_ms("timeout", MAX_WAIT_MS)?;
    Ok(())
}

/// Only waiting is safe to repeat; advancing or reporting an event twice may count twice.
fn state_stage_idempotent(args: &Value) -> bool {
    match args {
        Value::Object(map) => {
            !map.contains_key("advance")
                && !map.contains_key("event")
                && map.contains_key("wait_for")
        }
        _ => false,
    }
}

const STATE_CHECK_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "machine",
        kind: ArgKind::String,
        required: true,
        description: "The id of the Levee state machine.",
    },
    ArgSpec {
        name: "in",
        kind: ArgKind::StringList,
        required: true,
        description: "The check passes when the machine is in one of these states.",
    },
];

fn validate_state_check(args: &Value) -> Result<(), ArgError> {
    let parsed = Args::checked(STATE_CHECK_ARGS, args)?;
    if parsed.required_string("machine")?.trim().is_empty() {
        return Err(ArgError::invalid("machine", "the machine id is empty"));
    }
    validate_state_list("in", parsed.string_list("in")?)
}

/// The stages the server carries out.
pub const SERVER_STAGES: &[ServerStage] = &[
    ServerStage {
        name: "approval",
        description: "Waits until an operator approves the task (optionally one of `approvers`, \
                      and not whoever started the run); the request expires after `expires`.",
        args: APPROVAL_ARGS,
        validate: validate_approval,
        idempotent_for: |_| true,
    },
    ServerStage {
        name: "state",
        description: "Advances a Levee state machine or reports an event to it, and/or waits \
                      until it is in one of `wait_for`.",
        args: STATE_ARGS,
        validate: validate_state_stage,
        idempotent_for: state_stage_idempotent,
    },
];

/// The checks the server carries out.
pub const SERVER_CHECKS: &[ServerCheck] = &[ServerCheck {
    name: "state",
    description: "Passes when a Levee state machine is in one of the states listed in `in`.",
    args: STATE_CHECK_ARGS,
    validate: validate_state_check,
}];

/// Why a definition's use of a stage or check was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LintError {
    /// No stage by this name.
    #[error("unknown stage `{name}`; known stages are: {}", known.join(", "))]
    UnknownStage {
        /// The name as written.
        name: String,
        /// Every stage the registry knows.
        known: Vec<String>,
    },
    /// No check by this name.
    #[error("unknown check `{name}`; known checks are: {}", known.join(", "))]
    UnknownCheck {
        /// The name as written.
        name: String,
        /// Every check the registry knows.
        known: Vec<String>,
    },
    /// The arguments are wrong.
    #[error("{kind} `{name}`: {error}")]
    Args {
        /// `stage` or `check`.
        kind: &'static str,
        /// The stage or check.
        name: String,
        /// What is wrong, naming the argument.
        error: ArgError,
    },
}

/// Why a stage or check could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The name is taken (by a built-in or a server-side stage or check).
    #[error("a stage or check named `{0}` is already registered")]
    Duplicate(String),
}

/// Stages and checks by name.
#[derive(Clone)]
pub struct Registry {
    stages: BTreeMap<&'static str, Arc<dyn Stage>>,
    checks: BTreeMap<&'static str, Arc<dyn Check>>,
    /// Named traffic backends the traffic stages know besides HAProxy.
    traffic_backends: Vec<Arc<dyn crate::TrafficBackend>>,
    /// Where metric checks and the traffic stages' closed loops read metrics.
    metric_source: Arc<dyn MetricSource>,
    /// The network budgets every traffic stage of this registry shares.
    budgets: Arc<Budgets>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Registry")
            .field("stages", &self.stages.keys().collect::<Vec<_>>())
            .field("checks", &self.checks.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn contains_template(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains("{{"),
        Value::Array(items) => items.iter().any(contains_template),
        Value::Object(map) => map.values().any(contains_template),
        _ => false,
    }
}

impl Registry {
    /// The built-in stages and checks, with metric checks failing closed because no metric
    /// source is configured.
    pub fn builtin() -> Self {
        Self::with_metric_source(Arc::new(NoMetricSource))
    }

    /// The built-in stages and checks, with metric checks asking `source`.
    pub fn with_metric_source(source: Arc<dyn MetricSource>) -> Self {
        let mut registry = Registry {
            stages: BTreeMap::new(),
            checks: BTreeMap::new(),
            traffic_backends: Vec::new(),
            metric_source: source.clone(),
            budgets: Arc::new(Budgets::default()),
        };
        let stages: [Arc<dyn Stage>; 5] = [
            Arc::new(ShellStage),
            Arc::new(HttpStage),
            Arc::new(WaitStage),
            Arc::new(LogStage),
            Arc::new(RampStage),
        ];
        for stage in stages {
            registry.stages.insert(stage.name(), stage);
        }
        registry.install_traffic_stages();
        let checks: [Arc<dyn Check>; 3] = [
            Arc::new(HttpCheck),
            Arc::new(ShellCheck),
            Arc::new(MetricCheck::new(source)),
        ];
        for check in checks {
            registry.checks.insert(check.name(), check);
        }
        registry
    }

    /// Adds a stage (traffic shifts and other stages of later issues).
    pub fn register_stage(&mut self, stage: Arc<dyn Stage>) -> Result<(), RegistryError> {
        let name = stage.name();
        if self.stages.contains_key(name) || SERVER_STAGES.iter().any(|s| s.name == name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        self.stages.insert(name, stage);
        Ok(())
    }

    /// Lets the traffic stages' tasks name `backend` (`backend: sim`) besides HAProxy.
    pub fn add_traffic_backend(&mut self, backend: Arc<dyn crate::TrafficBackend>) {
        self.traffic_backends.push(backend);
        self.install_traffic_stages();
    }

    /// The backends, metric source and budgets the traffic stages share.
    pub fn traffic_kit(&self) -> TrafficKit {
        self.traffic_backends.iter().fold(
            TrafficKit::new(self.metric_source.clone(), self.budgets.clone()),
            |kit, backend| kit.with_backend(backend.clone()),
        )
    }

    /// (Re)builds the traffic stages with the current backends; the budgets carry over.
    fn install_traffic_stages(&mut self) {
        let kit = self.traffic_kit();
        let stages: [Arc<dyn Stage>; 4] = [
            Arc::new(TrafficShiftStage::new(kit.clone())),
            Arc::new(StickyDrainStage::new(kit.clone())),
            Arc::new(ReplicationStage::new(kit.clone())),
            Arc::new(PromotePrimaryStage::new(kit)),
        ];
        for stage in stages {
            self.stages.insert(stage.name(), stage);
        }
    }

    /// Adds a check.
    pub fn register_check(&mut self, check: Arc<dyn Check>) -> Result<(), RegistryError> {
        let name = check.name();
        if self.checks.contains_key(name) || SERVER_CHECKS.iter().any(|c| c.name == name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        self.checks.insert(name, check);
        Ok(())
    }

    /// The stage carried out here by this name (not the server's).
    pub fn stage(&self, name: &str) -> Option<Arc<dyn Stage>> {
        self.stages.get(name).cloned()
    }

    /// The check carried out here by this name (not the server's).
    pub fn check(&self, name: &str) -> Option<Arc<dyn Check>> {
        self.checks.get(name).cloned()
    }

    /// Whether the stage runs in paced steps an operator may re-pace while it runs.
    pub fn stage_paced(&self, name: &str) -> bool {
        self.stages.get(name).is_some_and(|stage| stage.paced())
    }

    /// Checks an operator's pace for a task of this stage; `Err` says what to fix.
    pub fn validate_pace(&self, name: &str, pace: &Value) -> Result<(), ArgError> {
        match self.stages.get(name) {
            Some(stage) if stage.paced() => stage.validate_pace(pace),
            _ => Err(ArgError::invalid(
                "pace",
                format!("stage `{name}` does not run in paced steps, so it has no pace to change"),
            )),
        }
    }

    /// The server-side stage by this name.
    pub fn server_stage(&self, name: &str) -> Option<&'static ServerStage> {
        SERVER_STAGES.iter().find(|stage| stage.name == name)
    }

    /// The server-side check by this name.
    pub fn server_check(&self, name: &str) -> Option<&'static ServerCheck> {
        SERVER_CHECKS.iter().find(|check| check.name == name)
    }

    /// Every stage name, local and server-side, sorted.
    pub fn stage_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.stages.keys().copied().collect();
        names.extend(SERVER_STAGES.iter().map(|stage| stage.name));
        names.sort_unstable();
        names
    }

    /// Every check name, local and server-side, sorted.
    pub fn check_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.checks.keys().copied().collect();
        names.extend(SERVER_CHECKS.iter().map(|check| check.name));
        names.sort_unstable();
        names
    }

    /// Where the stage is carried out, or `None` when no stage has this name.
    pub fn stage_execution(&self, name: &str) -> Option<Execution> {
        if self.stages.contains_key(name) {
            Some(Execution::Local)
        } else {
            self.server_stage(name).map(|_| Execution::Server)
        }
    }

    /// The arguments a stage accepts, local or server-side.
    pub fn stage_args(&self, name: &str) -> Option<&'static [ArgSpec]> {
        match self.stages.get(name) {
            Some(stage) => Some(stage.args()),
            None => self.server_stage(name).map(|stage| stage.args),
        }
    }

    /// The arguments a check accepts, local or server-side.
    pub fn check_args(&self, name: &str) -> Option<&'static [ArgSpec]> {
        match self.checks.get(name) {
            Some(check) => Some(check.args()),
            None => self.server_check(name).map(|check| check.args),
        }
    }

    /// Whether re-running the stage with these arguments after a crash is safe.
    pub fn stage_idempotent_for(&self, name: &str, args: &Value) -> Option<bool> {
        match self.stages.get(name) {
            Some(stage) => Some(stage.idempotent_for(args)),
            None => self
                .server_stage(name)
                .map(|stage| (stage.idempotent_for)(args)),
        }
    }

    fn unknown_stage(&self, name: &str) -> LintError {
        LintError::UnknownStage {
            name: name.to_string(),
            known: self.stage_names().iter().map(|n| n.to_string()).collect(),
        }
    }

    fn unknown_check(&self, name: &str) -> LintError {
        LintError::UnknownCheck {
            name: name.to_string(),
            known: self.check_names().iter().map(|n| n.to_string()).collect(),
        }
    }

    /// Validates a stage's final arguments before a run (types, ranges, everything).
    pub fn validate_stage(&self, name: &str, args: &Value) -> Result<(), LintError> {
        let result = match self.stages.get(name) {
            Some(stage) => stage.validate(args),
            None => match self.server_stage(name) {
                Some(stage) => (stage.validate)(args),
                None => return Err(self.unknown_stage(name)),
            },
        };
        result.map_err(|error| LintError::Args {
            kind: "stage",
            name: name.to_string(),
            error,
        })
    }

    /// Validates a check's final arguments before a run.
    pub fn validate_check(&self, name: &str, args: &Value) -> Result<(), LintError> {
        let result = match self.checks.get(name) {
            Some(check) => check.validate(args),
            None => match self.server_check(name) {
                Some(check) => (check.validate)(args),
                None => return Err(self.unknown_check(name)),
            },
        };
        result.map_err(|error| LintError::Args {
            kind: "check",
            name: name.to_string(),
            error,
        })
    }

    /// Lints a stage's arguments as written in a definition: unknown or missing arguments and
    /// wrong types always; the stage's full validation too when no value is a template
    /// (`{{ params.x }}`), since templated values are only known when the run starts.
    pub fn lint_stage(&self, name: &str, args: &Value) -> Result<(), LintError> {
        let specs = self
            .stage_args(name)
            .ok_or_else(|| self.unknown_stage(name))?;
        if contains_template(args) {
            check_args(specs, args, Strictness::Lint).map_err(|error| LintError::Args {
                kind: "stage",
                name: name.to_string(),
                error,
            })
        } else {
            self.validate_stage(name, args)
        }
    }

    /// Lints a check's arguments as written in a definition, as [`Registry::lint_stage`] does.
    pub fn lint_check(&self, name: &str, args: &Value) -> Result<(), LintError> {
        let specs = self
            .check_args(name)
            .ok_or_else(|| self.unknown_check(name))?;
        if contains_template(args) {
            check_args(specs, args, Strictness::Lint).map_err(|error| LintError::Args {
                kind: "check",
                name: name.to_string(),
                error,
            })
        } else {
            self.validate_check(name, args)
        }
    }
}

#[async_trait::async_trait]
impl crate::context::CheckRunner for Registry {
    async fn evaluate(
        &self,
        cancel: &crate::context::CancelToken,
        check: &str,
        args: &Value,
    ) -> crate::CheckOutcome {
        match self.checks.get(check) {
            Some(implementation) => implementation.evaluate(cancel, args).await,
            None => crate::CheckOutcome {
                ok: false,
                observed: String::new(),
                reason: format!("the stage library cannot evaluate a `{check}` check here"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_name_is_known_once() {
        let registry = Registry::builtin();
        assert_eq!(
            registry.stage_names(),
            vec![
                "approval",
                "http",
                "log",
                "promote_primary",
                "ramp",
                "replication",
                "shell",
                "state",
                "sticky_drain",
                "traffic_shift",
                "wait"
            ]
        );
        assert_eq!(
            registry.check_names(),
            vec!["http", "metric", "shell", "state"]
        );
        assert_eq!(
            registry.stage_execution("approval"),
            Some(Execution::Server)
        );
        assert_eq!(registry.stage_execution("shell"), Some(Execution::Local));
        assert!(registry.stage("approval").is_none());
        let mut registry = registry;
        assert_eq!(
            registry.register_stage(Arc::new(ShellStage)),
            Err(RegistryError::Duplicate("shell".to_string()))
        );
    }

    #[test]
    fn server_side_stages_are_linted() {
        let registry = Registry::builtin();
        assert!(
            registry
                .lint_stage(
                    "approval",
                    &json!({ "approvers": ["ana"], "not_starter": true, "expires": "1h" })
                )
                .is_ok()
        );
        let error = registry
            .lint_stage("approval", &json!({ "expires": "soon" }))
            .unwrap_err();
        assert!(
            matches!(error, LintError::Args { ref error, .. } if error.argument() == Some("expires"))
        );
        let error = registry
            .lint_stage("state", &json!({ "machine": "db1" }))
            .unwrap_err();
        assert!(error.to_string().contains("wait_for"), "{error}");
        assert!(
            registry
                .lint_stage("state", &json!({ "machine": "db1", "advance": "ready" }))
                .is_ok()
        );
        assert_eq!(
            registry.stage_idempotent_for("state", &json!({ "machine": "m", "wait_for": ["up"] })),
            Some(true)
        );
        assert_eq!(
            registry.stage_idempotent_for("state", &json!({ "machine": "m", "advance": "up" })),
            Some(false)
        );
        assert!(
            registry
                .lint_check("state", &json!({ "machine": "m", "in": ["up"] }))
                .is_ok()
        );
    }

    #[test]
    fn templates_are_linted_leniently_and_unknown_names_listed() {
        let registry = Registry::builtin();
        assert!(
            registry
                .lint_stage("wait", &json!({ "duration": "{{ params.pause }}" }))
                .is_ok()
        );
        assert!(
            registry
                .validate_stage("wait", &json!({ "duration": "{{ params.pause }}" }))
                .is_err()
        );
        let error = registry.lint_stage("teleport", &json!({})).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("known stages are: approval, http"),
            "{error}"
        );
    }
}
