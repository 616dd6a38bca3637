//! `kind: Runbook` and `kind: TaskTemplate`: the YAML users write, and its compilation into
//! [`RunbookDef`] and [`TemplateDef`].
//!
//! As in `state_machine.rs`, the `*Spec` types parse the format (through [`crate::de`]) and
//! describe it (through schemars, for [`crate::schema`]). Compiling checks what one document
//! can say about itself: names, unique ids, parameter declarations and defaults, checks,
//! durations, retries, and that every `{{ params.NAME }}` placeholder names a declared
//! parameter. What needs other documents is left to [`crate::link`].

use std::borrow::Cow;
use std::collections::HashMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;

use crate::de::{Field, Json, OneOrMany, OrderedMap, Reader, Recover, Spanned, field};
use crate::graph::find_cycles;
use crate::names::{self, DEFINITION_NAME_PATTERN, DEFINITION_NAME_RULE};
use crate::params::{PARAM_NAME_PATTERN, PARAM_NAME_RULE, is_valid_param_name, placeholder_names};
use crate::runbook::{
    Arguments, Check, CheckKind, IncludeDef, JsonCheck, Located, MAX_CHECKS_PER_LIST,
    MAX_PARALLEL_TASKS, MAX_PARAMS, MAX_RETRIES, MAX_TEMPLATE_STEPS, MAX_WRITTEN_TASKS, Origin,
    ParamDef, ParamType, Purpose, RetryPolicy, RunbookDef, StepDef, TaskAction, TaskDef,
    TemplateDef, Threshold,
};
use crate::time::parse_duration_ms;
use crate::yaml::{Loc, Node, abbreviate};

/// The `kind` of a runbook.
pub const RUNBOOK_KIND: &str = "Runbook";
/// The `kind` of a task template.
pub const TEMPLATE_KIND: &str = "TaskTemplate";

/// The shape of a task, step or include id. No `/`: it separates an include's id from the ids
/// of its tasks (`web/shift`).
pub const TASK_ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$";
/// The rule behind [`TASK_ID_PATTERN`], for messages.
pub const TASK_ID_RULE: &str =
    "use 1 to 63 letters, digits, `.`, `_` or `-`, starting with a letter or a digit";
/// The shape of a stage name (`traffic_shift`).
pub const STAGE_NAME_PATTERN: &str = "^[a-z][a-z0-9_]{0,62}$";

/// Whether `id` follows [`TASK_ID_PATTERN`].
pub fn is_valid_task_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && id.len() <= 63
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_valid_reference(reference: &str) -> bool {
    reference.split('/').all(is_valid_task_id)
}

macro_rules! text_schema {
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

text_schema!(
    /// A definition's name.
    RunbookName,
    json_schema!({
        "type": "string",
        "pattern": DEFINITION_NAME_PATTERN,
        "description": "A definition name: 1 to 63 lowercase letters, digits, `.`, `_` or `-`, \
                        starting with a letter or a digit."
    })
);
text_schema!(
    /// A task id.
    TaskId,
    json_schema!({
        "type": "string",
        "pattern": TASK_ID_PATTERN,
        "description": "A task id, unique in its runbook: 1 to 63 letters, digits, `.`, `_` or \
                        `-`. Included tasks are named `INCLUDE/TASK`."
    })
);
text_schema!(
    /// A dependency.
    TaskReference,
    json_schema!({
        "type": "string",
        "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,62})*$",
        "description": "A task id of this runbook; an include's or template task's id (all of \
                        its tasks); or `INCLUDE/TASK` for one task of an included runbook."
    })
);
text_schema!(
    /// A stage name.
    StageName,
    json_schema!({
        "type": "string",
        "pattern": STAGE_NAME_PATTERN,
        "description": "A stage of the stage library: `shell`, `wait`, `http`, `log`, `ramp`, \
                        `approval`, `state`, and the traffic stages, one per kind of traffic: \
                        `traffic_shift` (stateless, optionally a closed loop on a health \
                        metric), `sticky_drain`, `replication`, `promote_primary` (stateful). \
                        `levee validate` checks each stage's arguments.",
        "examples": [
            "shell", "wait", "http", "approval", "traffic_shift", "sticky_drain",
            "replication", "promote_primary"
        ]
    })
);
text_schema!(
    /// A parameter name.
    ParamName,
    json_schema!({
        "type": "string",
        "pattern": PARAM_NAME_PATTERN,
        "description": "A parameter name, used in placeholders as `{{ params.NAME }}`."
    })
);
text_schema!(
    /// A duration.
    Duration,
    json_schema!({
        "type": "string",
        "pattern": "^(?=[0-9])([0-9]+d)?([0-9]+h)?([0-9]+m(?!s))?([0-9]+s)?([0-9]+ms)?$",
        "description": "A duration such as `30s`, `10m` or `1h30m`.",
        "examples": ["30s", "10m", "1h30m"]
    })
);
text_schema!(
    /// Arguments.
    ArgumentMap,
    json_schema!({
        "type": "object",
        "description": "Arguments: any mapping. Strings may hold `{{ params.NAME }}` \
                        placeholders; a string that is exactly one placeholder takes the \
                        parameter's type."
    })
);

/// The schema of `kind:` in a runbook.
pub(crate) struct RunbookKindSchema;

impl JsonSchema for RunbookKindSchema {
    fn schema_name() -> Cow<'static, str> {
        "RunbookKind".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({ "const": RUNBOOK_KIND, "description": "The kind of definition: `Runbook`." })
    }
}

/// The schema of `kind:` in a task template.
pub(crate) struct TemplateKindSchema;

impl JsonSchema for TemplateKindSchema {
    fn schema_name() -> Cow<'static, str> {
        "TaskTemplateKind".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "const": TEMPLATE_KIND,
            "description": "The kind of definition: `TaskTemplate`."
        })
    }
}

type Args = Field<Spanned<OrderedMap<Spanned<String>, Spanned<Json>>>>;
type References = Field<Spanned<OneOrMany<Spanned<String>>>>;
type Checks = Field<Spanned<Vec<Recover<CheckSpec>>>>;
type Params = Field<Spanned<OrderedMap<Spanned<String>, Recover<ParamSpec>>>>;

/// A runbook (`kind: Runbook`): tasks with dependencies, run in dependency order with as much
/// parallelism as `max_parallel` allows, each gated by its `pre`, `post` and `health` checks.
/// Runbooks compose: `include` runs other runbooks as parts of this one (a datacenter
/// evacuation made of service runbooks).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Levee Runbook")]
pub(crate) struct RunbookSpec {
    /// The kind of definition: `Runbook`.
    #[schemars(with = "RunbookKindSchema")]
    #[allow(dead_code, reason = "read by the loader's dispatch on `kind`")]
    pub kind: Spanned<String>,
    /// The runbook's name, unique among runbooks.
    #[schemars(with = "RunbookName")]
    pub name: Field<Spanned<String>>,
    /// What the runbook does, in a sentence or two.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
    /// What the runbook is for: `drain`, `restore`, `maintenance` or `other` (the default).
    /// A `drain` runbook must name its `recovery`.
    #[serde(default)]
    #[schemars(with = "Option<PurposeSpec>")]
    pub purpose: Field<Spanned<PurposeSpec>>,
    /// Parameters given when a run starts (`-p NAME=VALUE`), by name.
    #[serde(default)]
    #[schemars(with = "Option<OrderedMap<ParamName, ParamSpec>>")]
    pub params: Params,
    /// The name of the runbook that undoes this one (restores what a drain moved away).
    #[serde(default)]
    #[schemars(with = "Option<RunbookName>")]
    pub recovery: Field<Spanned<String>>,
    /// Most tasks running at the same time. Unlimited when absent.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1, max = MAX_PARALLEL_TASKS))]
    pub max_parallel: Field<Spanned<i64>>,
    /// The tasks. Their order does not matter: `needs` and `after` decide it.
    #[serde(default)]
    #[schemars(with = "Option<Vec<TaskSpec>>", length(max = MAX_WRITTEN_TASKS))]
    pub tasks: Field<Spanned<Vec<Spanned<Recover<TaskSpec>>>>>,
    /// Other runbooks run as part of this one. Their tasks are named `ID/TASK`; tasks of this
    /// runbook may depend on a whole include (`needs: [web]`) or one of its tasks
    /// (`needs: [web/shift]`).
    #[serde(default)]
    #[schemars(with = "Option<Vec<IncludeSpec>>")]
    pub include: Field<Spanned<Vec<Spanned<Recover<IncludeSpec>>>>>,
}

/// What a runbook is for.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Purpose")]
pub(crate) enum PurposeSpec {
    Drain,
    Restore,
    Maintenance,
    Other,
}

/// A parameter: its type, whether it must be given, its default. `dc: { required: true }` is
/// a required string.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Param")]
pub(crate) struct ParamSpec {
    /// The type values are checked against when a run starts. Defaults to `string`, or to
    /// `enum` when `values` is given.
    #[serde(default, rename = "type")]
    #[schemars(with = "Option<ParamTypeSpec>")]
    pub ty: Field<Spanned<ParamTypeSpec>>,
    /// The allowed values of an `enum` parameter.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub values: Field<Spanned<Vec<Spanned<String>>>>,
    /// `true` if a run cannot start without it. A parameter with a `default` is never missing.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub required: Field<Spanned<bool>>,
    /// The value used when the run does not give one; checked against `type`.
    #[serde(default)]
    #[schemars(with = "Option<Json>")]
    pub default: Option<Spanned<Json>>,
    /// What the parameter means, shown when it is missing.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
}

/// A parameter's type.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "ParamType")]
pub(crate) enum ParamTypeSpec {
    String,
    Int,
    Bool,
    Duration,
    Percent,
    Enum,
}

/// One task: a `stage` of the stage library, or a `template` expanded into its steps.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "Task",
    extend("oneOf" = [{ "required": ["stage"] }, { "required": ["template"] }])
)]
pub(crate) struct TaskSpec {
    /// The task's id, unique in this runbook.
    #[schemars(with = "TaskId")]
    pub id: Field<Spanned<String>>,
    /// What the task does, in a sentence.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
    /// The stage that runs the task, such as `shell`, `wait` or `traffic_shift`.
    #[serde(default)]
    #[schemars(with = "Option<StageName>")]
    pub stage: Field<Spanned<String>>,
    /// The task template that runs the task, by name; its steps become `ID/STEP`.
    #[serde(default)]
    #[schemars(with = "Option<RunbookName>")]
    pub template: Field<Spanned<String>>,
    /// The stage's arguments, or the template's parameters.
    #[serde(default, rename = "with")]
    #[schemars(with = "Option<ArgumentMap>")]
    pub with: Args,
    /// Strong dependencies: the task starts only after all of these succeeded.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany<TaskReference>>")]
    pub needs: References,
    /// Weak dependencies: the task waits for these too, but an operator may override the wait
    /// (start the task although one of them failed or is slow).
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany<TaskReference>>")]
    pub after: References,
    /// Checks that must hold before the task starts.
    #[serde(default)]
    #[schemars(with = "Option<Vec<CheckSpec>>", length(max = MAX_CHECKS_PER_LIST))]
    pub pre: Checks,
    /// Checks that must hold after the task ends for it to succeed.
    #[serde(default)]
    #[schemars(with = "Option<Vec<CheckSpec>>", length(max = MAX_CHECKS_PER_LIST))]
    pub post: Checks,
    /// Checks that must keep holding while the task runs; a failure stalls it.
    #[serde(default)]
    #[schemars(with = "Option<Vec<CheckSpec>>", length(max = MAX_CHECKS_PER_LIST))]
    pub health: Checks,
    /// Longest the task may run, such as `30m`. For a template task, the default of its steps.
    #[serde(default)]
    #[schemars(with = "Option<Duration>")]
    pub timeout: Field<Spanned<String>>,
    /// Retries after a failure: a count, or `{ max: 3, backoff: 5s, max_backoff: 1m }`.
    #[serde(default)]
    #[schemars(with = "Option<RetriesSpec>")]
    pub retries: Field<Spanned<RetriesSpec>>,
    /// Run the task only when this is `true` once the run's parameters are filled in, such as
    /// `"{{ params.storm }}"`. When it is `false` the task is skipped as the run starts and its
    /// dependents go on without it; any other value refuses the run.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Field<Spanned<String>>,
}

/// Retries: a count (`3`), or a mapping with the backoff.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename = "$levee::shorthand::max::retries", deny_unknown_fields)]
#[schemars(rename = "Retries", transform = retries_shorthand)]
pub(crate) struct RetriesSpec {
    /// Retries after the first attempt.
    #[schemars(with = "u32", range(max = MAX_RETRIES))]
    pub max: Spanned<i64>,
    /// Wait before the first retry (default `5s`); doubles after each retry.
    #[serde(default)]
    #[schemars(with = "Option<Duration>")]
    pub backoff: Option<Spanned<String>>,
    /// Longest wait between retries (default `5m`).
    #[serde(default)]
    #[schemars(with = "Option<Duration>")]
    pub max_backoff: Option<Spanned<String>>,
}

fn retries_shorthand(schema: &mut Schema) {
    let description = schema.remove("description");
    let long_form = std::mem::replace(schema, json_schema!({}));
    let mut combined = json_schema!({
        "anyOf": [
            {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_RETRIES,
                "description": "The number of retries: shorthand for `{ max: N }`."
            },
            long_form
        ]
    });
    if let Some(description) = description {
        combined.insert("description".to_string(), description);
    }
    *schema = combined;
}

/// A condition: exactly one of `http`, `shell`, `state` and `metric`, and an optional `name`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "Check",
    extend("oneOf" = [
        { "required": ["http"] }, { "required": ["shell"] },
        { "required": ["state"] }, { "required": ["metric"] }
    ])
)]
pub(crate) struct CheckSpec {
    /// A name for messages and the run's events.
    #[serde(default)]
    pub name: Option<String>,
    /// Holds when a GET of the URL answers the expected status (and JSON field).
    #[serde(default)]
    pub http: Option<Spanned<HttpCheckSpec>>,
    /// Holds when the command exits 0.
    #[serde(default)]
    pub shell: Option<Spanned<ShellCheckSpec>>,
    /// Holds while a Levee state machine is in one of the given states.
    #[serde(default)]
    pub state: Option<Spanned<StateCheckSpec>>,
    /// Holds while a metric query's value is `below` (or `above`) a threshold.
    #[serde(default)]
    pub metric: Option<Spanned<MetricCheckSpec>>,
}

/// An HTTP check.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HttpCheck")]
pub(crate) struct HttpCheckSpec {
    /// The URL to GET.
    pub url: Spanned<String>,
    /// The status that counts as healthy (default 200).
    #[serde(default)]
    #[schemars(with = "Option<u16>", range(min = 100, max = 599))]
    pub status: Option<Spanned<i64>>,
    /// A field of the JSON body that must have a value.
    #[serde(default)]
    pub json: Option<JsonCheckSpec>,
}

/// A JSON field check.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "JsonCheck")]
pub(crate) struct JsonCheckSpec {
    /// Dot-separated keys (`status.ready`); list items by number (`items.0.name`).
    pub path: Spanned<String>,
    /// The value the field must equal.
    pub equals: Json,
}

/// A shell check.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ShellCheck")]
pub(crate) struct ShellCheckSpec {
    /// The program and its arguments (run without a shell).
    #[schemars(length(min = 1))]
    pub command: Spanned<Vec<Spanned<String>>>,
}

/// A state machine check.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "StateCheck")]
pub(crate) struct StateCheckSpec {
    /// The machine's id.
    pub machine: Spanned<String>,
    /// The state, or list of states, the machine must be in.
    #[serde(rename = "in")]
    pub in_states: Spanned<OneOrMany<Spanned<String>>>,
}

/// A metric threshold check.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "MetricCheck",
    extend("oneOf" = [{ "required": ["below"] }, { "required": ["above"] }])
)]
pub(crate) struct MetricCheckSpec {
    /// The query, such as `max(web_error_ratio)`.
    pub query: Spanned<String>,
    /// Holds while the value is below this.
    #[serde(default)]
    pub below: Option<Spanned<f64>>,
    /// Holds while the value is above this.
    #[serde(default)]
    pub above: Option<Spanned<f64>>,
}

/// Another runbook run as part of this one.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Include")]
pub(crate) struct IncludeSpec {
    /// The include's id: its tasks are named `ID/TASK`. Unique among this runbook's tasks.
    #[schemars(with = "TaskId")]
    pub id: Field<Spanned<String>>,
    /// The name of the included runbook.
    #[schemars(with = "RunbookName")]
    pub runbook: Field<Spanned<String>>,
    /// Values for the included runbook's parameters; may use this runbook's placeholders.
    #[serde(default, rename = "with")]
    #[schemars(with = "Option<ArgumentMap>")]
    pub with: Args,
    /// Strong dependencies of the included runbook's first tasks.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany<TaskReference>>")]
    pub needs: References,
    /// Weak dependencies of the included runbook's first tasks.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany<TaskReference>>")]
    pub after: References,
}

/// A task template (`kind: TaskTemplate`): a named, parameterised task made of stage steps,
/// so teams reuse a mechanism (a traffic shift, a job update) and keep their own policy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Levee TaskTemplate")]
pub(crate) struct TemplateSpec {
    /// The kind of definition: `TaskTemplate`.
    #[schemars(with = "TemplateKindSchema")]
    #[allow(dead_code, reason = "read by the loader's dispatch on `kind`")]
    pub kind: Spanned<String>,
    /// The template's name, unique among templates.
    #[schemars(with = "RunbookName")]
    pub name: Field<Spanned<String>>,
    /// What the template does.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
    /// Parameters, given by a task's `with`.
    #[serde(default)]
    #[schemars(with = "Option<OrderedMap<ParamName, ParamSpec>>")]
    pub params: Params,
    /// The steps. Each needs the previous one unless it says otherwise.
    #[schemars(with = "Vec<StepSpec>", length(min = 1, max = MAX_TEMPLATE_STEPS))]
    pub steps: Field<Spanned<Vec<Spanned<Recover<StepSpec>>>>>,
}

/// One step of a template.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Step")]
pub(crate) struct StepSpec {
    /// The step's id, unique in the template.
    #[schemars(with = "TaskId")]
    pub id: Field<Spanned<String>>,
    /// The stage that runs the step.
    #[schemars(with = "StageName")]
    pub stage: Field<Spanned<String>>,
    /// The stage's arguments; may use the template's placeholders.
    #[serde(default, rename = "with")]
    #[schemars(with = "Option<ArgumentMap>")]
    pub with: Args,
    /// Steps of this template that must finish first. Default: the previous step; `[]` for
    /// none.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany<TaskId>>")]
    pub needs: References,
    /// Longest the step may run.
    #[serde(default)]
    #[schemars(with = "Option<Duration>")]
    pub timeout: Field<Spanned<String>>,
    /// Retries after a failure.
    #[serde(default)]
    #[schemars(with = "Option<RetriesSpec>")]
    pub retries: Field<Spanned<RetriesSpec>>,
}

/// Compiles one `kind: Runbook` document; `None` if it has errors (recorded in `reader`).
pub(crate) fn compile_runbook(root: &Node, reader: &Reader) -> Option<RunbookDef> {
    let errors_before = reader.error_count();
    let spec: RunbookSpec = reader.read(root)?;
    let c = Compiler { reader };
    let name = c.name(root, &spec.name, RUNBOOK_KIND);
    let (params, declared) = c.params(&spec.params);
    let purpose = match field(&spec.purpose) {
        Some(purpose) => Located {
            value: match purpose.value {
                PurposeSpec::Drain => Purpose::Drain,
                PurposeSpec::Restore => Purpose::Restore,
                PurposeSpec::Maintenance => Purpose::Maintenance,
                PurposeSpec::Other => Purpose::Other,
            },
            origin: c.origin(purpose.loc),
        },
        None => Located {
            value: Purpose::Other,
            origin: c.origin(root.loc),
        },
    };
    let recovery = field(&spec.recovery).map(|recovery| {
        c.check_definition_name(recovery, "runbook");
        c.located(recovery)
    });
    let max_parallel = field(&spec.max_parallel).and_then(|max| match u32::try_from(max.value) {
        Ok(value) if (1..=MAX_PARALLEL_TASKS).contains(&value) => Some(value),
        _ => {
            reader.error(
                max.loc,
                "invalid-max-parallel",
                format!(
                    "`max_parallel` is {}; it must be between 1 and {MAX_PARALLEL_TASKS}, or \
                         absent for no limit.",
                    max.value
                ),
            );
            None
        }
    });
    let task_specs: &[Spanned<Recover<TaskSpec>>] =
        field(&spec.tasks).map_or(&[], |tasks| &tasks.value);
    let include_specs: &[Spanned<Recover<IncludeSpec>>] =
        field(&spec.include).map_or(&[], |include| &include.value);
    if spec.tasks.is_none() && spec.include.is_none() {
        reader.error(
            root.loc,
            "missing-key",
            "This Runbook has no `tasks` and no `include`; add `tasks: [{ id: ..., stage: ... }]`.",
        );
    } else if task_specs.is_empty()
        && include_specs.is_empty()
        && matches!(spec.tasks, Some(Recover(Some(_))) | None)
        && matches!(spec.include, Some(Recover(Some(_))) | None)
    {
        reader.error(
            root.loc,
            "no-tasks",
            "This Runbook has no tasks; add at least one task or include.",
        );
    }
    if task_specs.len() + include_specs.len() > MAX_WRITTEN_TASKS {
        reader.error(
            root.loc,
            "too-many-tasks",
            format!(
                "This Runbook lists {} tasks and includes; at most {MAX_WRITTEN_TASKS} are \
                 allowed. Split it into runbooks joined by `include`.",
                task_specs.len() + include_specs.len()
            ),
        );
    }
    let mut ids: HashMap<String, Loc> = HashMap::new();
    let mut tasks = Vec::new();
    for task in task_specs {
        let Some(spec) = &task.value.0 else { continue };
        if let Some(task) = c.task(task.loc, spec, &declared, &mut ids) {
            tasks.push(task);
        }
    }
    let mut includes = Vec::new();
    for include in include_specs {
        let Some(spec) = &include.value.0 else {
            continue;
        };
        if let Some(include) = c.include(include.loc, spec, &declared, &mut ids) {
            includes.push(include);
        }
    }
    let name = name?;
    if reader.error_count() > errors_before {
        return None;
    }
    let origin = field(&spec.name).map_or(c.origin(root.loc), |name| c.origin(name.loc));
    Some(RunbookDef {
        name,
        description: field(&spec.description).cloned(),
        purpose,
        params,
        recovery,
        max_parallel,
        tasks,
        includes,
        origin,
    })
}

/// Compiles one `kind: TaskTemplate` document; `None` if it has errors.
pub(crate) fn compile_template(root: &Node, reader: &Reader) -> Option<TemplateDef> {
    let errors_before = reader.error_count();
    let spec: TemplateSpec = reader.read(root)?;
    let c = Compiler { reader };
    let name = c.name(root, &spec.name, TEMPLATE_KIND);
    let (params, declared) = c.params(&spec.params);
    if spec.steps.is_none() {
        reader.error(
            root.loc,
            "missing-key",
            "This TaskTemplate has no `steps`; add a list such as \
             `steps: [{ id: run, stage: shell, with: { command: [...] } }]`.",
        );
    }
    let step_specs: &[Spanned<Recover<StepSpec>>] =
        field(&spec.steps).map_or(&[], |steps| &steps.value);
    if let Some(steps) = field(&spec.steps) {
        if steps.value.is_empty() {
            reader.error(
                steps.loc,
                "no-tasks",
                "`steps` is empty; a template needs at least one step.",
            );
        }
        if steps.value.len() > MAX_TEMPLATE_STEPS {
            reader.error(
                steps.loc,
                "too-many-tasks",
                format!(
                    "This template has {} steps; at most {MAX_TEMPLATE_STEPS} are allowed.",
                    steps.value.len()
                ),
            );
        }
    }
    let mut ids: HashMap<String, Loc> = HashMap::new();
    let mut steps: Vec<StepDef> = Vec::new();
    let mut previous: Option<String> = None;
    for step in step_specs {
        let Some(spec) = &step.value.0 else {
            previous = None;
            continue;
        };
        let id = c.id(step.loc, &spec.id, "step", &mut ids);
        let stage = field(&spec.stage).map(|stage| {
            c.check_stage_name(stage);
            c.located(stage)
        });
        if spec.stage.is_none() {
            reader.error(
                step.loc,
                "missing-key",
                "This step has no `stage`; add one, such as `stage: shell`.",
            );
        }
        let with = c.arguments(&spec.with, &declared, TEMPLATE_KIND);
        let needs = match &spec.needs {
            None => previous
                .iter()
                .map(|previous| Located {
                    value: previous.clone(),
                    origin: c.origin(step.loc),
                })
                .collect(),
            Some(_) => c.references(&spec.needs, false),
        };
        let timeout_ms = c.timeout(&spec.timeout);
        let retries = c.retries(&spec.retries);
        previous = id.clone();
        if let (Some(id), Some(stage)) = (id, stage) {
            let origin = field(&spec.id).map_or(c.origin(step.loc), |id| c.origin(id.loc));
            steps.push(StepDef {
                id,
                stage,
                with,
                needs,
                timeout_ms,
                retries,
                origin,
            });
        }
    }
    let step_ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (index, step) in steps.iter().enumerate() {
        for need in &step.needs {
            match step_ids.iter().position(|id| *id == need.value) {
                Some(target) => edges[index].push(target),
                None if ids.contains_key(&need.value) => {}
                None => reader.error(
                    loc_of(&need.origin),
                    "unknown-task",
                    format!(
                        "The step `{}` needs `{}`, which is not a step of this template.{} The \
                         steps are {}.",
                        step.id,
                        abbreviate(&need.value),
                        names::did_you_mean(&need.value, step_ids.iter().copied()),
                        names::list_of(step_ids.iter().copied())
                    ),
                ),
            }
        }
    }
    for cycle in find_cycles(&edges) {
        let first = &steps[cycle[0]];
        reader.error(
            loc_of(&first.origin),
            "dependency-cycle",
            cycle_message(cycle.iter().map(|&i| steps[i].id.as_str()), "steps"),
        );
    }
    let name = name?;
    if reader.error_count() > errors_before {
        return None;
    }
    let origin = field(&spec.name).map_or(c.origin(root.loc), |name| c.origin(name.loc));
    Some(TemplateDef {
        name,
        description: field(&spec.description).cloned(),
        params,
        steps,
        origin,
    })
}

/// "These steps depend on each other in a cycle ...: `a -> b -> a` ...".
pub(crate) fn cycle_message<'a>(ids: impl Iterator<Item = &'a str>, what: &str) -> String {
    let ids: Vec<&str> = ids.collect();
    let mut path = ids.join(" -> ");
    if let Some(first) = ids.first() {
        path.push_str(" -> ");
        path.push_str(first);
    }
    format!(
        "These {what} depend on each other in a cycle, so none of them could ever start: \
         `{path}` (each needs the next, through `needs` or `after`). Remove one of these \
         dependencies."
    )
}

fn loc_of(origin: &Origin) -> Loc {
    Loc {
        line: origin.line,
        column: origin.column,
    }
}

struct Compiler<'a> {
    reader: &'a Reader<'a>,
}

impl Compiler<'_> {
    fn origin(&self, loc: Loc) -> Origin {
        Origin {
            file: self.reader.file.to_string(),
            line: loc.line,
            column: loc.column,
        }
    }

    fn located(&self, value: &Spanned<String>) -> Located<String> {
        Located {
            value: value.value.clone(),
            origin: self.origin(value.loc),
        }
    }

    fn name(&self, root: &Node, name: &Field<Spanned<String>>, kind: &str) -> Option<String> {
        if name.is_none() {
            self.reader.error(
                root.loc,
                "missing-key",
                format!("This {kind} has no `name`; add `name: ...` ({DEFINITION_NAME_RULE})."),
            );
        }
        let name = field(name)?;
        self.check_definition_name(name, "definition");
        Some(name.value.clone())
    }

    fn check_definition_name(&self, name: &Spanned<String>, what: &str) {
        if !names::is_valid_definition_name(&name.value) {
            self.reader.error(
                name.loc,
                "invalid-name",
                format!(
                    "`{}` is not a valid {what} name: {DEFINITION_NAME_RULE}.",
                    abbreviate(&name.value)
                ),
            );
        }
    }

    fn check_stage_name(&self, stage: &Spanned<String>) {
        let valid = stage.value.len() <= 63
            && stage.value.starts_with(|c: char| c.is_ascii_lowercase())
            && stage
                .value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            self.reader.error(
                stage.loc,
                "invalid-name",
                format!(
                    "`{}` is not a valid stage name: use 1 to 63 lowercase letters, digits or \
                     `_`, starting with a letter.",
                    abbreviate(&stage.value)
                ),
            );
        }
    }

    /// A task, step or include id: present, well-formed and unique in the document.
    fn id(
        &self,
        loc: Loc,
        id: &Field<Spanned<String>>,
        what: &str,
        ids: &mut HashMap<String, Loc>,
    ) -> Option<String> {
        if id.is_none() {
            self.reader.error(
                loc,
                "missing-key",
                format!("This {what} has no `id`; add `id: ...` ({TASK_ID_RULE})."),
            );
        }
        let id = field(id)?;
        if !is_valid_task_id(&id.value) {
            self.reader.error(
                id.loc,
                "invalid-name",
                format!(
                    "`{}` is not a valid {what} id: {TASK_ID_RULE}.{}",
                    abbreviate(&id.value),
                    if id.value.contains('/') {
                        " `/` is reserved for the tasks of includes and templates (`web/shift`)."
                    } else {
                        ""
                    }
                ),
            );
            return None;
        }
        if let Some(first) = ids.get(&id.value) {
            self.reader.error(
                id.loc,
                "duplicate-task",
                format!(
                    "The id `{}` is already used on line {}; task, include and step ids must be \
                     unique. Rename one of them.",
                    id.value, first.line
                ),
            );
            return None;
        }
        ids.insert(id.value.clone(), id.loc);
        Some(id.value.clone())
    }

    /// Parameter declarations, and the names written (even of broken ones, so that a broken
    /// declaration does not also make every placeholder naming it an error).
    fn params(&self, params: &Params) -> (Vec<ParamDef>, Vec<String>) {
        let Some(params) = params.as_ref() else {
            return (Vec::new(), Vec::new());
        };
        let Some(params) = &params.0 else {
            return (Vec::new(), Vec::new());
        };
        let declared: Vec<String> = params
            .value
            .0
            .iter()
            .map(|(k, _)| k.value.clone())
            .collect();
        if params.value.0.len() > MAX_PARAMS {
            self.reader.error(
                params.loc,
                "too-many-params",
                format!(
                    "{} parameters are declared; at most {MAX_PARAMS} are allowed.",
                    params.value.0.len()
                ),
            );
        }
        let mut compiled = Vec::new();
        for (name, spec) in &params.value.0 {
            if !is_valid_param_name(&name.value) {
                self.reader.error(
                    name.loc,
                    "invalid-name",
                    format!(
                        "`{}` is not a valid parameter name: {PARAM_NAME_RULE}.",
                        abbreviate(&name.value)
                    ),
                );
                continue;
            }
            let Some(spec) = &spec.0 else { continue };
            if let Some(param) = self.param(name, spec) {
                compiled.push(param);
            }
        }
        (compiled, declared)
    }

    fn param(&self, name: &Spanned<String>, spec: &ParamSpec) -> Option<ParamDef> {
        let values = field(&spec.values);
        let ty = match (field(&spec.ty).map(|t| t.value), values) {
            (Some(ParamTypeSpec::Enum), Some(values)) | (None, Some(values)) => {
                if values.value.is_empty() {
                    self.reader.error(
                        values.loc,
                        "invalid-param",
                        format!(
                            "The enum parameter `{}` lists no `values`; list the allowed values.",
                            name.value
                        ),
                    );
                    return None;
                }
                ParamType::Enum(values.value.iter().map(|v| v.value.clone()).collect())
            }
            (Some(ParamTypeSpec::Enum), None) => {
                self.reader.error(
                    name.loc,
                    "missing-key",
                    format!(
                        "The enum parameter `{}` has no `values`; add `values: [a, b]`.",
                        name.value
                    ),
                );
                return None;
            }
            (Some(other), Some(values)) => {
                self.reader.error(
                    values.loc,
                    "conflicting-keys",
                    format!(
                        "`values` is only for `type: enum`, and `{}` is of type {}; remove \
                         `values` or write `type: enum`.",
                        name.value,
                        param_type_name(other)
                    ),
                );
                return None;
            }
            (Some(ParamTypeSpec::String) | None, None) => ParamType::String,
            (Some(ParamTypeSpec::Int), None) => ParamType::Int,
            (Some(ParamTypeSpec::Bool), None) => ParamType::Bool,
            (Some(ParamTypeSpec::Duration), None) => ParamType::Duration,
            (Some(ParamTypeSpec::Percent), None) => ParamType::Percent,
        };
        if spec.ty.as_ref().is_some_and(|t| t.0.is_none()) {
            return None;
        }
        let required = field(&spec.required).is_some_and(|r| r.value);
        let default = match &spec.default {
            None => None,
            Some(default) if default.value.0.is_null() => None,
            Some(default) => {
                if required && let Some(flag) = field(&spec.required) {
                    self.reader.error(
                        flag.loc,
                        "conflicting-keys",
                        format!(
                            "The parameter `{}` has a `default`, so it is never missing; remove \
                             `required: true` or the default.",
                            name.value
                        ),
                    );
                }
                let text = match &default.value.0 {
                    serde_json::Value::String(text) => text.clone(),
                    serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                        default.value.0.to_string()
                    }
                    _ => {
                        self.reader.error(
                            default.loc,
                            "invalid-default",
                            format!(
                                "The default of `{}` must be a single value of type {}, not a \
                                 list or mapping.",
                                name.value,
                                ty.name()
                            ),
                        );
                        return None;
                    }
                };
                match ty.parse(&text) {
                    Ok(value) => Some(value),
                    Err(reason) => {
                        self.reader.error(
                            default.loc,
                            "invalid-default",
                            format!(
                                "The default of `{}` does not fit its type {}: {reason}",
                                name.value,
                                ty.name()
                            ),
                        );
                        return None;
                    }
                }
            }
        };
        Some(ParamDef {
            name: name.value.clone(),
            ty,
            required,
            default,
            description: field(&spec.description).cloned(),
            origin: self.origin(name.loc),
        })
    }

    /// `with:` as a JSON object with its keys' origins; placeholders must name `declared`
    /// parameters.
    fn arguments(&self, with: &Args, declared: &[String], kind: &str) -> Arguments {
        let Some(with) = field(with) else {
            return Arguments::default();
        };
        let mut arguments = Arguments::default();
        for (key, value) in &with.value.0 {
            self.check_placeholders_in(&value.value.0, value.loc, declared, kind);
            arguments.keys.push(self.located(key));
            arguments
                .value
                .insert(key.value.clone(), value.value.0.clone());
        }
        arguments
    }

    fn check_placeholders_in(
        &self,
        value: &serde_json::Value,
        loc: Loc,
        declared: &[String],
        kind: &str,
    ) {
        match value {
            serde_json::Value::String(text) => self.check_placeholders(text, loc, declared, kind),
            serde_json::Value::Array(items) => {
                for item in items {
                    self.check_placeholders_in(item, loc, declared, kind);
                }
            }
            serde_json::Value::Object(entries) => {
                for item in entries.values() {
                    self.check_placeholders_in(item, loc, declared, kind);
                }
            }
            _ => {}
        }
    }

    fn check_placeholders(&self, text: &str, loc: Loc, declared: &[String], kind: &str) {
        match placeholder_names(text) {
            Err(message) => self.reader.error(loc, "invalid-placeholder", message),
            Ok(names_used) => {
                for name in names_used {
                    if declared.iter().any(|d| d == name) {
                        continue;
                    }
                    let declared_list = if declared.is_empty() {
                        format!("this {kind} declares no parameters")
                    } else {
                        format!(
                            "the declared ones are {}",
                            names::list_of(declared.iter().map(String::as_str))
                        )
                    };
                    self.reader.error(
                        loc,
                        "undeclared-param",
                        format!(
                            "`{{{{ params.{name} }}}}` names a parameter this {kind} does not \
                             declare.{} Declare it under `params:`; {declared_list}.",
                            names::did_you_mean(name, declared.iter().map(String::as_str))
                        ),
                    );
                }
            }
        }
    }

    fn references(&self, references: &References, allow_paths: bool) -> Vec<Located<String>> {
        let Some(references) = field(references) else {
            return Vec::new();
        };
        let mut out: Vec<Located<String>> = Vec::new();
        for reference in &references.value.0 {
            let valid = if allow_paths {
                is_valid_reference(&reference.value)
            } else {
                is_valid_task_id(&reference.value)
            };
            if !valid {
                self.reader.error(
                    reference.loc,
                    "invalid-name",
                    format!(
                        "`{}` is not a valid task reference: {TASK_ID_RULE}{}.",
                        abbreviate(&reference.value),
                        if allow_paths {
                            ", with `/` between an include's id and its task's id"
                        } else {
                            ""
                        }
                    ),
                );
                continue;
            }
            if out.iter().all(|seen| seen.value != reference.value) {
                out.push(self.located(reference));
            }
        }
        out
    }

    fn timeout(&self, timeout: &Field<Spanned<String>>) -> Option<u64> {
        let timeout = field(timeout)?;
        match parse_duration_ms(&timeout.value) {
            Ok(0) => {
                self.reader.error(
                    timeout.loc,
                    "invalid-duration",
                    "A `timeout` must be longer than zero; remove it or write a duration such as \
                     `10m`.",
                );
                None
            }
            Ok(ms) => Some(ms),
            Err(message) => {
                self.reader.error(timeout.loc, "invalid-duration", message);
                None
            }
        }
    }

    fn retries(&self, retries: &Field<Spanned<RetriesSpec>>) -> Option<RetryPolicy> {
        let retries = field(retries)?;
        let spec = &retries.value;
        let max = match u32::try_from(spec.max.value) {
            Ok(max) if max <= MAX_RETRIES => max,
            _ => {
                self.reader.error(
                    spec.max.loc,
                    "invalid-retries",
                    format!(
                        "`retries` is {}; it must be between 0 and {MAX_RETRIES}.",
                        spec.max.value
                    ),
                );
                return None;
            }
        };
        let mut policy = RetryPolicy {
            max,
            ..RetryPolicy::NONE
        };
        for (text, slot) in [
            (&spec.backoff, &mut policy.backoff_ms),
            (&spec.max_backoff, &mut policy.max_backoff_ms),
        ] {
            if let Some(text) = text {
                match parse_duration_ms(&text.value) {
                    Ok(ms) => *slot = ms,
                    Err(message) => self.reader.error(text.loc, "invalid-duration", message),
                }
            }
        }
        if policy.max_backoff_ms < policy.backoff_ms {
            let loc = spec.max_backoff.as_ref().map_or(retries.loc, |m| m.loc);
            self.reader.error(
                loc,
                "invalid-retries",
                "`max_backoff` is shorter than `backoff`; make it at least as long.",
            );
        }
        Some(policy)
    }

    fn checks(&self, checks: &Checks, declared: &[String], list: &str) -> Vec<Check> {
        let Some(checks) = field(checks) else {
            return Vec::new();
        };
        if checks.value.len() > MAX_CHECKS_PER_LIST {
            self.reader.error(
                checks.loc,
                "too-many-checks",
                format!(
                    "`{list}` has {} checks; at most {MAX_CHECKS_PER_LIST} are allowed.",
                    checks.value.len()
                ),
            );
        }
        let check_nodes = checks.value.iter().filter_map(|c| c.0.as_ref());
        let mut compiled = Vec::new();
        for spec in check_nodes {
            if let Some(check) = self.check(checks.loc, spec, declared) {
                compiled.push(check);
            }
        }
        compiled
    }

    fn check(&self, list_loc: Loc, spec: &CheckSpec, declared: &[String]) -> Option<Check> {
        let mut kinds: Vec<(Loc, CheckKind)> = Vec::new();
        let mut texts: Vec<(&Spanned<String>, Loc)> = Vec::new();
        if let Some(http) = &spec.http {
            let status = match &http.value.status {
                None => 200,
                Some(status) => match u16::try_from(status.value) {
                    Ok(code) if (100..=599).contains(&code) => code,
                    _ => {
                        self.reader.error(
                            status.loc,
                            "invalid-check",
                            format!(
                                "`status` is {}; an HTTP status is between 100 and 599.",
                                status.value
                            ),
                        );
                        200
                    }
                },
            };
            texts.push((&http.value.url, http.value.url.loc));
            if let Some(json) = &http.value.json {
                texts.push((&json.path, json.path.loc));
            }
            kinds.push((
                http.loc,
                CheckKind::Http {
                    url: http.value.url.value.clone(),
                    status,
                    json: http.value.json.as_ref().map(|json| JsonCheck {
                        path: json.path.value.clone(),
                        equals: json.equals.0.clone(),
                    }),
                },
            ));
        }
        if let Some(shell) = &spec.shell {
            if shell.value.command.value.is_empty() {
                self.reader.error(
                    shell.value.command.loc,
                    "invalid-check",
                    "`command` is empty; give the program and its arguments, such as \
                     `[curl, -fsS, http://localhost/health]`.",
                );
            }
            for arg in &shell.value.command.value {
                texts.push((arg, arg.loc));
            }
            kinds.push((
                shell.loc,
                CheckKind::Shell {
                    command: shell
                        .value
                        .command
                        .value
                        .iter()
                        .map(|a| a.value.clone())
                        .collect(),
                },
            ));
        }
        if let Some(state) = &spec.state {
            texts.push((&state.value.machine, state.value.machine.loc));
            if state.value.in_states.value.0.is_empty() {
                self.reader.error(
                    state.value.in_states.loc,
                    "invalid-check",
                    "This check's `in` lists no states, so it could never hold; name at least \
                     one state.",
                );
            }
            kinds.push((
                state.loc,
                CheckKind::State {
                    machine: state.value.machine.value.clone(),
                    in_states: state
                        .value
                        .in_states
                        .value
                        .0
                        .iter()
                        .map(|s| s.value.clone())
                        .collect(),
                },
            ));
        }
        if let Some(metric) = &spec.metric {
            texts.push((&metric.value.query, metric.value.query.loc));
            let threshold = match (&metric.value.below, &metric.value.above) {
                (Some(below), None) => Some(Threshold::Below(below.value)),
                (None, Some(above)) => Some(Threshold::Above(above.value)),
                (Some(_), Some(above)) => {
                    self.reader.error(
                        above.loc,
                        "conflicting-keys",
                        "A metric check has either `below` or `above`, not both; write two \
                         checks for a range.",
                    );
                    None
                }
                (None, None) => {
                    self.reader.error(
                        metric.loc,
                        "missing-key",
                        "This metric check has neither `below` nor `above`; add the threshold, \
                         such as `below: 0.01`.",
                    );
                    None
                }
            };
            if let Some(threshold) = threshold {
                kinds.push((
                    metric.loc,
                    CheckKind::Metric {
                        query: metric.value.query.value.clone(),
                        threshold,
                    },
                ));
            }
        }
        for (text, loc) in texts {
            self.check_placeholders(&text.value, loc, declared, RUNBOOK_KIND);
        }
        match kinds.len() {
            0 => {
                if spec.metric.is_none() {
                    self.reader.error(
                        list_loc,
                        "invalid-check",
                        "A check needs one of `http`, `shell`, `state` or `metric`.",
                    );
                }
                None
            }
            1 => {
                let (loc, kind) = kinds.pop()?;
                Some(Check {
                    name: spec.name.clone(),
                    kind,
                    origin: self.origin(loc),
                })
            }
            _ => {
                self.reader.error(
                    kinds[1].0,
                    "conflicting-keys",
                    "A check has exactly one of `http`, `shell`, `state` or `metric`; write \
                     separate checks.",
                );
                None
            }
        }
    }

    fn task(
        &self,
        loc: Loc,
        spec: &TaskSpec,
        declared: &[String],
        ids: &mut HashMap<String, Loc>,
    ) -> Option<TaskDef> {
        let id = self.id(loc, &spec.id, "task", ids);
        let action = match (field(&spec.stage), field(&spec.template)) {
            (Some(stage), None) => {
                self.check_stage_name(stage);
                Some(TaskAction::Stage(self.located(stage)))
            }
            (None, Some(template)) => {
                self.check_definition_name(template, "template");
                Some(TaskAction::Template(self.located(template)))
            }
            (Some(_), Some(template)) => {
                self.reader.error(
                    template.loc,
                    "conflicting-keys",
                    "A task has either `stage` or `template`, not both; remove one of them.",
                );
                None
            }
            (None, None) => {
                if spec.stage.is_none() && spec.template.is_none() {
                    self.reader.error(
                        loc,
                        "missing-key",
                        "This task has neither `stage` nor `template`; add the stage that runs \
                         it, such as `stage: shell`, or `template: NAME`.",
                    );
                }
                None
            }
        };
        let with = self.arguments(&spec.with, declared, RUNBOOK_KIND);
        let needs = self.references(&spec.needs, true);
        let after = self.references(&spec.after, true);
        let pre = self.checks(&spec.pre, declared, "pre");
        let post = self.checks(&spec.post, declared, "post");
        let health = self.checks(&spec.health, declared, "health");
        let timeout_ms = self.timeout(&spec.timeout);
        let retries = self.retries(&spec.retries);
        let when = self.when(&spec.when, declared);
        let origin = self.origin(field(&spec.id).map_or(loc, |id| id.loc));
        Some(TaskDef {
            id: id?,
            description: field(&spec.description).cloned(),
            action: action?,
            with,
            needs,
            after,
            pre,
            post,
            health,
            timeout_ms,
            retries,
            when,
            origin,
        })
    }

    /// A task's `when`: `true`, `false`, or text whose placeholders name `declared` parameters.
    fn when(&self, when: &Field<Spanned<String>>, declared: &[String]) -> Option<Located<String>> {
        let when = field(when)?;
        match placeholder_names(&when.value) {
            Ok(names_used) if names_used.is_empty() => {
                if !matches!(when.value.trim(), "true" | "false") {
                    self.reader.error(
                        when.loc,
                        "invalid-when",
                        format!(
                            "`when: {}` is neither `true`, `false` nor a placeholder; write \
                             `when: \"{{{{ params.NAME }}}}\"` with a `bool` parameter.",
                            abbreviate(&when.value)
                        ),
                    );
                }
            }
            _ => self.check_placeholders(&when.value, when.loc, declared, RUNBOOK_KIND),
        }
        Some(self.located(when))
    }

    fn include(
        &self,
        loc: Loc,
        spec: &IncludeSpec,
        declared: &[String],
        ids: &mut HashMap<String, Loc>,
    ) -> Option<IncludeDef> {
        let id = self.id(loc, &spec.id, "include", ids);
        if spec.runbook.is_none() {
            self.reader.error(
                loc,
                "missing-key",
                "This include has no `runbook`; name the runbook to include.",
            );
        }
        let runbook = field(&spec.runbook).map(|runbook| {
            self.check_definition_name(runbook, "runbook");
            self.located(runbook)
        });
        let with = self.arguments(&spec.with, declared, RUNBOOK_KIND);
        let needs = self.references(&spec.needs, true);
        let after = self.references(&spec.after, true);
        let origin = self.origin(field(&spec.id).map_or(loc, |id| id.loc));
        Some(IncludeDef {
            id: id?,
            runbook: runbook?,
            with,
            needs,
            after,
            origin,
        })
    }
}

fn param_type_name(ty: ParamTypeSpec) -> &'static str {
    match ty {
        ParamTypeSpec::String => "string",
        ParamTypeSpec::Int => "int",
        ParamTypeSpec::Bool => "bool",
        ParamTypeSpec::Duration => "duration",
        ParamTypeSpec::Percent => "percent",
        ParamTypeSpec::Enum => "enum",
    }
}
