//! The compiled forms of `kind: Runbook` and `kind: TaskTemplate`, as one document says them.
//!
//! A [`RunbookDef`] is valid on its own (ids unique, references inside a template resolved,
//! durations parsed, placeholders naming declared parameters); what needs other documents
//! (stages, templates, included runbooks, dependencies across includes) is checked by
//! [`crate::link`], which turns runbooks into flat [`crate::ResolvedRunbook`]s. Every reference
//! keeps the [`Origin`] it was written at, so linking can point at it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::parse_duration_ms;

/// Most retries one task may ask for: beyond this a task is broken, not unlucky.
pub const MAX_RETRIES: u32 = 100;
/// Wait before the first retry when `retries` gives only a count, in milliseconds.
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 5_000;
/// Longest wait between retries when `retries` does not say, in milliseconds.
pub const DEFAULT_MAX_RETRY_BACKOFF_MS: u64 = 5 * 60 * 1_000;
/// Most tasks (and includes) one runbook document may list, before expansion.
pub const MAX_WRITTEN_TASKS: usize = 10_000;
/// Most steps one task template may have.
pub const MAX_TEMPLATE_STEPS: usize = 100;
/// Most parameters one runbook or template may declare.
pub const MAX_PARAMS: usize = 100;
/// Most checks in one `pre`, `post` or `health` list.
pub const MAX_CHECKS_PER_LIST: usize = 50;
/// Largest `max_parallel`: more concurrent tasks than a runbook may have at all.
pub const MAX_PARALLEL_TASKS: u32 = 10_000;

/// Where something was written: file, 1-based line and column. Shown as `file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A value and where it was written, kept for references that linking resolves later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located<T> {
    pub value: T,
    pub origin: Origin,
}

/// What a runbook is for. A `drain` must name the `recovery` runbook that undoes it, so the
/// way back is written before the day it is needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Drain,
    Restore,
    Maintenance,
    #[default]
    Other,
}

/// The type of a parameter, which decides how a `-p key=value` string is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "values")]
pub enum ParamType {
    String,
    Int,
    Bool,
    /// A duration such as `30s` or `1h30m`; kept as written so stages parse it themselves.
    Duration,
    /// A percentage such as `10%` or `12.5%`, between 0 and 100; kept as written.
    Percent,
    /// One of the listed values.
    Enum(Vec<String>),
}

impl ParamType {
    /// The name written after `type:`.
    pub fn name(&self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Int => "int",
            ParamType::Bool => "bool",
            ParamType::Duration => "duration",
            ParamType::Percent => "percent",
            ParamType::Enum(_) => "enum",
        }
    }

    /// Checks `text` against the type and returns the JSON value placeholders are replaced
    /// with: a number for `int`, a boolean for `bool`, the text itself otherwise. The error is
    /// a sentence saying what a valid value looks like.
    pub fn parse(&self, text: &str) -> Result<serde_json::Value, String> {
        use serde_json::Value;
        match self {
            ParamType::String => Ok(Value::String(text.to_string())),
            ParamType::Int => text.parse::<i64>().map(Value::from).map_err(|_| {
                format!("`{text}` is not a whole number; write digits such as `3` or `-1`.")
            }),
            ParamType::Bool => match text {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(format!(
                    "`{text}` is not a boolean; write `true` or `false`."
                )),
            },
            ParamType::Duration => parse_duration_ms(text)
                .map(|_| Value::String(text.to_string()))
                .map_err(|message| message.replace("The duration", "This duration")),
            ParamType::Percent => parse_percent(text)
                .map(|_| Value::String(text.to_string()))
                .ok_or_else(|| {
                    format!(
                        "`{text}` is not a percentage; write a number from 0 to 100 followed by \
                         `%`, such as `10%` or `12.5%`."
                    )
                }),
            ParamType::Enum(values) => {
                if values.iter().any(|value| value == text) {
                    Ok(Value::String(text.to_string()))
                } else {
                    Err(format!(
                        "`{text}` is not one of {}.{}",
                        crate::names::list_of(values.iter().map(String::as_str)),
                        crate::names::did_you_mean(text, values.iter().map(String::as_str))
                    ))
                }
            }
        }
    }
}

/// The value of a percentage such as `12.5%`, if it is one between 0 and 100.
pub fn parse_percent(text: &str) -> Option<f64> {
    let number = text.strip_suffix('%')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    (0.0..=100.0).contains(&value).then_some(value)
}

/// One declared parameter of a runbook or template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamDef {
    pub name: String,
    #[serde(flatten)]
    pub ty: ParamType,
    pub required: bool,
    /// Already checked against `ty`, in the form [`ParamType::parse`] returns.
    pub default: Option<serde_json::Value>,
    pub description: Option<String>,
    pub origin: Origin,
}

/// How often a failed task is tried again, and how long to wait in between: `backoff_ms`
/// before the first retry, doubling each time up to `max_backoff_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means a failure stalls the task at once.
    pub max: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl RetryPolicy {
    /// No retries: the default, since retrying is only safe for stages that say so.
    pub const NONE: RetryPolicy = RetryPolicy {
        max: 0,
        backoff_ms: DEFAULT_RETRY_BACKOFF_MS,
        max_backoff_ms: DEFAULT_MAX_RETRY_BACKOFF_MS,
    };

    /// The wait before retry number `retry` (1 for the first), in milliseconds.
    pub fn backoff_before_ms(&self, retry: u32) -> u64 {
        let doublings = retry.saturating_sub(1).min(63);
        self.backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ms.max(self.backoff_ms))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::NONE
    }
}

/// A metric check's threshold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Threshold {
    /// Holds while the query's value is strictly below this.
    Below(f64),
    /// Holds while the query's value is strictly above this.
    Above(f64),
}

/// What a check looks at. Strings may hold `{{ params.NAME }}` placeholders, rendered at run
/// time with [`crate::render_text`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Holds when a GET of `url` answers `status`, and (if given) the JSON field at `path`
    /// (dot-separated keys) equals `equals`.
    Http {
        url: String,
        status: u16,
        json: Option<JsonCheck>,
    },
    /// Holds when the command (argv, no shell) exits 0.
    Shell { command: Vec<String> },
    /// Holds while the Levee state machine `machine` is in one of `in_states`.
    State {
        machine: String,
        in_states: Vec<String>,
    },
    /// Holds while the metric query's value is on the right side of the threshold.
    Metric { query: String, threshold: Threshold },
}

/// The JSON part of an HTTP check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonCheck {
    pub path: String,
    pub equals: serde_json::Value,
}

/// One `pre`, `post` or `health` condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// A name for messages; defaults to a description of the check.
    pub name: Option<String>,
    pub kind: CheckKind,
    pub origin: Origin,
}

impl Check {
    /// The same check with every string passed through `f` (placeholder substitution).
    pub(crate) fn map_text(
        &self,
        f: &mut dyn FnMut(&str) -> Result<String, String>,
        g: &mut dyn FnMut(&serde_json::Value) -> Result<serde_json::Value, String>,
    ) -> Result<Check, String> {
        let kind = match &self.kind {
            CheckKind::Http { url, status, json } => CheckKind::Http {
                url: f(url)?,
                status: *status,
                json: match json {
                    Some(json) => Some(JsonCheck {
                        path: f(&json.path)?,
                        equals: g(&json.equals)?,
                    }),
                    None => None,
                },
            },
            CheckKind::Shell { command } => CheckKind::Shell {
                command: command.iter().map(|arg| f(arg)).collect::<Result<_, _>>()?,
            },
            CheckKind::State { machine, in_states } => CheckKind::State {
                machine: f(machine)?,
                in_states: in_states
                    .iter()
                    .map(|state| f(state))
                    .collect::<Result<_, _>>()?,
            },
            CheckKind::Metric { query, threshold } => CheckKind::Metric {
                query: f(query)?,
                threshold: *threshold,
            },
        };
        Ok(Check {
            name: self.name.clone(),
            kind,
            origin: self.origin.clone(),
        })
    }
}

/// Arguments of a stage, template or include (`with:`): the JSON value, and each key with its
/// origin so that linking can point at an unknown one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Arguments {
    /// A JSON object (empty when `with` is absent).
    pub value: serde_json::Map<String, serde_json::Value>,
    pub keys: Vec<Located<String>>,
}

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskAction {
    /// A stage of the stage library, by name.
    Stage(Located<String>),
    /// A `kind: TaskTemplate`, by name; expanded into its steps when linking.
    Template(Located<String>),
}

/// One task as written in a runbook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDef {
    pub id: String,
    pub description: Option<String>,
    pub action: TaskAction,
    pub with: Arguments,
    /// Strong dependencies: task ids, include ids, or `include/task` paths.
    pub needs: Vec<Located<String>>,
    /// Weak dependencies: like `needs`, but an operator may override them.
    pub after: Vec<Located<String>>,
    pub pre: Vec<Check>,
    pub post: Vec<Check>,
    pub health: Vec<Check>,
    pub timeout_ms: Option<u64>,
    /// `None` when not written, so a template's steps can keep their own.
    pub retries: Option<RetryPolicy>,
    /// Run only when this renders `true` at the start (`{{ params.NAME }}` placeholders);
    /// `false` skips the task. `None`: always run.
    pub when: Option<Located<String>>,
    /// Where the task's `id` was written.
    pub origin: Origin,
}

/// Another runbook included in this one; its tasks become `ID/TASK`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncludeDef {
    pub id: String,
    pub runbook: Located<String>,
    /// Values of the included runbook's parameters; they may hold this runbook's placeholders.
    pub with: Arguments,
    pub needs: Vec<Located<String>>,
    pub after: Vec<Located<String>>,
    pub origin: Origin,
}

/// A compiled `kind: Runbook` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunbookDef {
    pub name: String,
    pub description: Option<String>,
    pub purpose: Located<Purpose>,
    pub params: Vec<ParamDef>,
    pub recovery: Option<Located<String>>,
    pub max_parallel: Option<u32>,
    pub tasks: Vec<TaskDef>,
    pub includes: Vec<IncludeDef>,
    /// Where the runbook's `name` was written.
    pub origin: Origin,
}

/// One step of a task template: always a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepDef {
    pub id: String,
    pub stage: Located<String>,
    pub with: Arguments,
    /// Step ids within the template; the previous step when `needs` is not written.
    pub needs: Vec<Located<String>>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<RetryPolicy>,
    pub origin: Origin,
}

/// A compiled `kind: TaskTemplate` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateDef {
    pub name: String,
    pub description: Option<String>,
    pub params: Vec<ParamDef>,
    pub steps: Vec<StepDef>,
    pub origin: Origin,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_types_check_their_text() {
        assert_eq!(ParamType::Int.parse("42"), Ok(serde_json::json!(42)));
        assert!(ParamType::Int.parse("4x").is_err());
        assert_eq!(ParamType::Bool.parse("true"), Ok(serde_json::json!(true)));
        assert!(ParamType::Bool.parse("yes").is_err());
        assert_eq!(
            ParamType::Duration.parse("1h30m"),
            Ok(serde_json::json!("1h30m"))
        );
        assert!(ParamType::Duration.parse("90 minutes").is_err());
        assert_eq!(
            ParamType::Percent.parse("12.5%"),
            Ok(serde_json::json!("12.5%"))
        );
        assert!(ParamType::Percent.parse("120%").is_err());
        assert!(ParamType::Percent.parse("10").is_err());
        let colors = ParamType::Enum(vec!["red".into(), "green".into()]);
        assert_eq!(colors.parse("red"), Ok(serde_json::json!("red")));
        let error = colors.parse("gren").expect_err("not a value");
        assert!(error.contains("Did you mean `green`?"), "{error}");
    }

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let policy = RetryPolicy {
            max: 10,
            backoff_ms: 1_000,
            max_backoff_ms: 5_000,
        };
        let waits: Vec<u64> = (1..=5).map(|n| policy.backoff_before_ms(n)).collect();
        assert_eq!(waits, [1_000, 2_000, 4_000, 5_000, 5_000]);
    }
}
