//! Argument specifications and their checking.
//!
//! Every stage and check declares its arguments as a static list of [`ArgSpec`]s, so one piece
//! of code can lint a definition (unknown or missing arguments, wrong types) for stages that run
//! here and for those the server runs, and the documentation can be generated from the same
//! list that the checks use.

use serde_json::{Map, Value};

/// What kind of value an argument takes, as written in YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// A string.
    String,
    /// A whole number (no fraction).
    Int,
    /// A number, whole or not (thresholds such as `below: 0.01`).
    Number,
    /// `true` or `false`.
    Bool,
    /// A duration written like `500ms`, `5s`, `10m` or `1h30m`.
    Duration,
    /// A list of strings.
    StringList,
    /// A list of whole numbers (expected HTTP statuses).
    IntList,
    /// A mapping of names to strings (environment variables, HTTP headers).
    Map,
    /// Any value; the stage checks it itself.
    Any,
}

impl ArgKind {
    /// How the kind is described in error messages, so they read as sentences.
    pub fn describe(self) -> &'static str {
        match self {
            ArgKind::String => "a string",
            ArgKind::Int => "a whole number",
            ArgKind::Number => "a number",
            ArgKind::Bool => "true or false",
            ArgKind::Duration => "a duration such as `500ms`, `5s`, `10m` or `1h30m`",
            ArgKind::StringList => "a list of strings",
            ArgKind::IntList => "a list of whole numbers",
            ArgKind::Map => "a mapping of names to strings",
            ArgKind::Any => "any value",
        }
    }
}

/// One argument a stage or check accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgSpec {
    /// The key under `with:`.
    pub name: &'static str,
    /// The kind of value it takes.
    pub kind: ArgKind,
    /// Whether a definition must give it (otherwise the stage has a default or does without).
    pub required: bool,
    /// One sentence for documentation and editors.
    pub description: &'static str,
}

/// Why a stage's arguments were refused; every variant names the argument at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// `with:` was given but is not a mapping.
    #[error("the arguments (`with:`) must be a mapping of names to values")]
    NotAMapping,
    /// A required argument is absent.
    #[error("argument `{argument}` is required: {description}")]
    Missing {
        /// The missing argument.
        argument: String,
        /// What it is for, so the author knows what to write.
        description: String,
    },
    /// The argument is not one this stage knows.
    #[error("unknown argument `{argument}`; known arguments are: {}", known.join(", "))]
    Unknown {
        /// The argument as written.
        argument: String,
        /// Every argument the stage accepts.
        known: Vec<String>,
    },
    /// The argument has the wrong type of value.
    #[error("argument `{argument}` must be {expected}, not {found}")]
    WrongType {
        /// The argument at fault.
        argument: String,
        /// The kind expected, as a phrase.
        expected: String,
        /// What was written instead, as a phrase.
        found: String,
    },
    /// The argument has the right type but an unacceptable value.
    #[error("argument `{argument}`: {reason}")]
    Invalid {
        /// The argument at fault.
        argument: String,
        /// Why the value is refused.
        reason: String,
    },
}

impl ArgError {
    /// The name of the argument at fault, when there is one (every variant but `NotAMapping`).
    pub fn argument(&self) -> Option<&str> {
        match self {
            ArgError::NotAMapping => None,
            ArgError::Missing { argument, .. }
            | ArgError::Unknown { argument, .. }
            | ArgError::WrongType { argument, .. }
            | ArgError::Invalid { argument, .. } => Some(argument),
        }
    }

    /// Shorthand for [`ArgError::Invalid`].
    pub fn invalid(argument: &str, reason: impl Into<String>) -> ArgError {
        ArgError::Invalid {
            argument: argument.to_string(),
            reason: reason.into(),
        }
    }
}

/// How strictly values are checked against their kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// Before a run: values are final, every type must match.
    Run,
    /// While linting a definition: a string holding a template (`{{ params.dc }}`) stands for a
    /// value that is only known when the run starts, so it is accepted for any kind.
    Lint,
}

/// The arguments as a mapping; an absent `with:` (null) means no arguments.
pub fn as_mapping(args: &Value) -> Result<Option<&Map<String, Value>>, ArgError> {
    match args {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        _ => Err(ArgError::NotAMapping),
    }
}

/// Checks names, presence and kinds of `args` against `specs`.
///
/// This is the part of validation every stage shares; stages add their own checks of values
/// (ranges, non-empty lists) after it.
pub fn check_args(specs: &[ArgSpec], args: &Value, strictness: Strictness) -> Result<(), ArgError> {
    let empty = Map::new();
    let map = as_mapping(args)?.unwrap_or(&empty);
    for key in map.keys() {
        if !specs.iter().any(|spec| spec.name == key) {
            return Err(ArgError::Unknown {
                argument: key.clone(),
                known: specs.iter().map(|spec| spec.name.to_string()).collect(),
            });
        }
    }
    for spec in specs {
        match map.get(spec.name) {
            None | Some(Value::Null) => {
                if spec.required {
                    return Err(ArgError::Missing {
                        argument: spec.name.to_string(),
                        description: spec.description.to_string(),
                    });
                }
            }
            Some(value) => check_kind(spec, value, strictness)?,
        }
    }
    Ok(())
}

fn is_template(value: &Value) -> bool {
    matches!(value, Value::String(text) if text.contains("{{"))
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(_) => "a boolean".to_string(),
        Value::Number(number) if number.is_i64() || number.is_u64() => {
            format!("the number {number}")
        }
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string {text:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a mapping".to_string(),
    }
}

fn check_kind(spec: &ArgSpec, value: &Value, strictness: Strictness) -> Result<(), ArgError> {
    if strictness == Strictness::Lint && is_template(value) {
        return Ok(());
    }
    let wrong = |found: String| ArgError::WrongType {
        argument: spec.name.to_string(),
        expected: spec.kind.describe().to_string(),
        found,
    };
    let element_ok = |element: &Value, ok: fn(&Value) -> bool| {
        ok(element) || (strictness == Strictness::Lint && is_template(element))
    };
    match spec.kind {
        ArgKind::Any => Ok(()),
        ArgKind::String if value.is_string() => Ok(()),
        ArgKind::Int if value.is_i64() || value.is_u64() => Ok(()),
        ArgKind::Number if value.is_number() => Ok(()),
        ArgKind::Bool if value.is_boolean() => Ok(()),
        ArgKind::Duration => match value {
            Value::String(text) => levee_model::parse_duration_ms(text)
                .map(|_| ())
                .map_err(|reason| ArgError::invalid(spec.name, reason)),
            other => Err(wrong(describe_value(other))),
        },
        ArgKind::StringList => match value {
            Value::Array(items) => match items
                .iter()
                .find(|item| !element_ok(item, Value::is_string))
            {
                None => Ok(()),
                Some(item) => Err(wrong(format!("a list holding {}", describe_value(item)))),
            },
            other => Err(wrong(describe_value(other))),
        },
        ArgKind::IntList => match value {
            Value::Array(items) => {
                let is_int: fn(&Value) -> bool = |item| item.is_i64() || item.is_u64();
                match items.iter().find(|item| !element_ok(item, is_int)) {
                    None => Ok(()),
                    Some(item) => Err(wrong(format!("a list holding {}", describe_value(item)))),
                }
            }
            other => Err(wrong(describe_value(other))),
        },
        ArgKind::Map => match value {
            Value::Object(entries) => {
                match entries
                    .iter()
                    .find(|(_, item)| !element_ok(item, Value::is_string))
                {
                    None => Ok(()),
                    Some((key, item)) => Err(ArgError::WrongType {
                        argument: format!("{}.{key}", spec.name),
                        expected: "a string".to_string(),
                        found: describe_value(item),
                    }),
                }
            }
            other => Err(wrong(describe_value(other))),
        },
        _ => Err(wrong(describe_value(value))),
    }
}

/// Typed reading of arguments that [`check_args`] has already accepted.
///
/// The getters still return errors rather than panicking, so a stage that is run without being
/// validated first fails with a message instead of crashing the process.
pub(crate) struct Args<'a> {
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Args<'a> {
    /// Checks `args` against `specs` (strictly, as for a run) and wraps them for reading.
    pub(crate) fn checked(specs: &[ArgSpec], args: &'a Value) -> Result<Args<'a>, ArgError> {
        check_args(specs, args, Strictness::Run)?;
        Ok(Args {
            map: as_mapping(args)?,
        })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.map
            .and_then(|map| map.get(name))
            .filter(|value| !value.is_null())
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<&'a str>, ArgError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(type_error(name, ArgKind::String, other)),
        }
    }

    pub(crate) fn required_string(&self, name: &str) -> Result<&'a str, ArgError> {
        self.string(name)?.ok_or_else(|| ArgError::Missing {
            argument: name.to_string(),
            description: String::new(),
        })
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ArgError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(type_error(name, ArgKind::Bool, other)),
        }
    }

    pub(crate) fn number(&self, name: &str) -> Result<Option<f64>, ArgError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(number)) => Ok(number.as_f64()),
            Some(other) => Err(type_error(name, ArgKind::Number, other)),
        }
    }

    /// A duration in milliseconds, refused when zero or above `max_ms`.
    pub(crate) fn duration_ms(&self, name: &str, max_ms: u64) -> Result<Option<u64>, ArgError> {
        let Some(text) = self.string(name)? else {
            return Ok(None);
        };
        let ms = levee_model::parse_duration_ms(text)
            .map_err(|reason| ArgError::invalid(name, reason))?;
        if ms == 0 {
            return Err(ArgError::invalid(name, "a duration of zero is not allowed"));
        }
        if ms > max_ms {
            return Err(ArgError::invalid(
                name,
                format!("`{text}` is longer than the longest allowed, {max_ms}ms"),
            ));
        }
        Ok(Some(ms))
    }

    pub(crate) fn string_list(&self, name: &str) -> Result<Option<Vec<String>>, ArgError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.clone()),
                    other => Err(type_error(name, ArgKind::StringList, other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(type_error(name, ArgKind::StringList, other)),
        }
    }

    pub(crate) fn int_list(&self, name: &str) -> Result<Option<Vec<i64>>, ArgError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_i64()
                        .ok_or_else(|| type_error(name, ArgKind::IntList, item))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(type_error(name, ArgKind::IntList, other)),
        }
    }

    pub(crate) fn map(&self, name: &str) -> Result<Vec<(String, String)>, ArgError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Object(entries)) => entries
                .iter()
                .map(|(key, item)| match item {
                    Value::String(text) => Ok((key.clone(), text.clone())),
                    other => Err(type_error(&format!("{name}.{key}"), ArgKind::String, other)),
                })
                .collect(),
            Some(other) => Err(type_error(name, ArgKind::Map, other)),
        }
    }
}

fn type_error(name: &str, kind: ArgKind, found: &Value) -> ArgError {
    ArgError::WrongType {
        argument: name.to_string(),
        expected: kind.describe().to_string(),
        found: describe_value(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPECS: &[ArgSpec] = &[
        ArgSpec {
            name: "count",
            kind: ArgKind::Int,
            required: true,
            description: "how many",
        },
        ArgSpec {
            name: "every",
            kind: ArgKind::Duration,
            required: false,
            description: "how often",
        },
    ];

    #[test]
    fn templates_pass_lint_but_not_a_run() {
        let args = json!({ "count": "{{ params.n }}" });
        assert!(check_args(SPECS, &args, Strictness::Lint).is_ok());
        let error = check_args(SPECS, &args, Strictness::Run).unwrap_err();
        assert_eq!(error.argument(), Some("count"));
    }

    #[test]
    fn durations_are_parsed_while_checking() {
        let error = check_args(
            SPECS,
            &json!({ "count": 1, "every": "5 minutes" }),
            Strictness::Run,
        )
        .unwrap_err();
        assert_eq!(error.argument(), Some("every"));
        assert!(
            check_args(
                SPECS,
                &json!({ "count": 1, "every": "1h30m" }),
                Strictness::Run
            )
            .is_ok()
        );
    }

    #[test]
    fn a_missing_with_is_no_arguments() {
        let error = check_args(SPECS, &Value::Null, Strictness::Run).unwrap_err();
        assert!(matches!(error, ArgError::Missing { ref argument, .. } if argument == "count"));
        assert_eq!(
            check_args(SPECS, &json!([1]), Strictness::Run),
            Err(ArgError::NotAMapping)
        );
    }
}
