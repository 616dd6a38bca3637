//! Parameters at run start: checking `-p key=value` strings against a runbook's declared
//! parameters ([`bind_params`]), and substituting `{{ params.NAME }}` placeholders
//! ([`render`], [`render_text`]).
//!
//! Rendering is substitution and nothing else: there are no expressions, filters or function
//! calls, so a definition can never run code through a placeholder. A placeholder inside a
//! shell `command` list fills one argument, never several, so a parameter value never reaches a
//! shell unquoted.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::link::ResolvedRunbook;
use crate::names;

/// The shape of a parameter name: a lowercase identifier, so placeholders read unambiguously.
pub const PARAM_NAME_PATTERN: &str = "^[a-z_][a-z0-9_]{0,62}$";
/// The rule behind [`PARAM_NAME_PATTERN`], for messages.
pub const PARAM_NAME_RULE: &str =
    "use 1 to 63 lowercase letters, digits or `_`, starting with a letter or `_`";

/// Whether `name` follows [`PARAM_NAME_PATTERN`].
pub fn is_valid_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && name.len() <= 63
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// A piece of a string: literal text or a placeholder's parameter name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Param(&'a str),
}

/// Splits `text` into literal text and `{{ params.NAME }}` placeholders. Braces that do not
/// start with `params` are literal (a shell command may contain `{{.State}}`); a placeholder
/// that starts with `params` but is malformed is an error, so a typo is never sent as text.
pub(crate) fn split_placeholders(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut literal_start = 0;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        let after_open = &rest[open + 2..];
        let inner_start = after_open.trim_start();
        if !inner_start.starts_with("param") {
            offset += open + 2;
            rest = after_open;
            continue;
        }
        let Some(close) = after_open.find("}}") else {
            return Err(format!(
                "The placeholder in `{}` has no closing `}}}}`; write `{{{{ params.NAME }}}}`.",
                crate::yaml::abbreviate(text)
            ));
        };
        let inner = after_open[..close].trim();
        let name = inner.strip_prefix("params.").unwrap_or("");
        if !is_valid_param_name(name) {
            return Err(format!(
                "`{{{{{}}}}}` is not a placeholder Levee understands; write `{{{{ params.NAME }}}}` \
                 (a parameter name: {PARAM_NAME_RULE}). Placeholders only substitute parameters.",
                crate::yaml::abbreviate(&after_open[..close])
            ));
        }
        let absolute_open = offset + open;
        if absolute_open > literal_start {
            pieces.push(Piece::Text(&text[literal_start..absolute_open]));
        }
        pieces.push(Piece::Param(name));
        let consumed = open + 2 + close + 2;
        offset += consumed;
        literal_start = offset;
        rest = &rest[consumed..];
    }
    if literal_start < text.len() {
        pieces.push(Piece::Text(&text[literal_start..]));
    }
    Ok(pieces)
}

/// The parameter names `text` refers to.
pub(crate) fn placeholder_names(text: &str) -> Result<Vec<&str>, String> {
    Ok(split_placeholders(text)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Param(name) => Some(name),
            Piece::Text(_) => None,
        })
        .collect())
}

/// A value as text inside a longer string: strings as they are, null as nothing, other values
/// as compact JSON.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Substitutes placeholders in every string of `value` (object keys are left alone). A string
/// that is exactly one placeholder becomes the parameter's value with its JSON type; inside a
/// longer string the value is written as text.
pub(crate) fn substitute(
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<Value>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => {
            let pieces = split_placeholders(text)?;
            if let [Piece::Param(name)] = pieces.as_slice() {
                lookup(name).ok_or_else(|| unknown_placeholder(name))?
            } else {
                Value::String(join(&pieces, lookup)?)
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute(item, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, item)| Ok((key.clone(), substitute(item, lookup)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Substitutes placeholders in `text`, always giving text.
pub(crate) fn substitute_text(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<Value>,
) -> Result<String, String> {
    join(&split_placeholders(text)?, lookup)
}

fn join(pieces: &[Piece<'_>], lookup: &dyn Fn(&str) -> Option<Value>) -> Result<String, String> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Param(name) => out.push_str(&as_text(
                &lookup(name).ok_or_else(|| unknown_placeholder(name))?,
            )),
        }
    }
    Ok(out)
}

fn unknown_placeholder(name: &str) -> String {
    format!("`{{{{ params.{name} }}}}` names a parameter that has no value in this run.")
}

/// A run's parameter values: every declared parameter, with the value given, its default, or
/// null for an optional parameter without either.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BoundParams {
    pub values: BTreeMap<String, Value>,
}

impl BoundParams {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }
}

/// Why a `-p key=value` was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamError {
    /// The parameter's name, as given or as declared.
    pub param: String,
    /// `unknown-param`, `missing-param` or `invalid-param-value`.
    pub code: String,
    pub message: String,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error[{}]: {}", self.code, self.message)
    }
}

/// Checks the parameters given to start a run of `runbook`: each against its declared type,
/// required ones present, no unknown ones. Returns every problem, not only the first, so an
/// operator fixes the command line once.
pub fn bind_params(
    runbook: &ResolvedRunbook,
    given: &BTreeMap<String, String>,
) -> Result<BoundParams, Vec<ParamError>> {
    let mut errors = Vec::new();
    let declared = || runbook.params.iter().map(|param| param.name.as_str());
    for name in given.keys() {
        if !runbook.params.iter().any(|param| &param.name == name) {
            let valid = if runbook.params.is_empty() {
                "it takes no parameters".to_string()
            } else {
                format!("its parameters are {}", names::list_of(declared()))
            };
            errors.push(ParamError {
                param: name.clone(),
                code: "unknown-param".to_string(),
                message: format!(
                    "The runbook `{}` has no parameter `{name}`.{} Remove `-p {name}=...`; {valid}.",
                    runbook.name,
                    names::did_you_mean(name, declared()),
                ),
            });
        }
    }
    let mut values = BTreeMap::new();
    for param in &runbook.params {
        let value = match (given.get(&param.name), &param.default) {
            (Some(text), _) => match param.ty.parse(text) {
                Ok(value) => value,
                Err(reason) => {
                    errors.push(ParamError {
                        param: param.name.clone(),
                        code: "invalid-param-value".to_string(),
                        message: format!(
                            "The parameter `{}` is of type {}: {reason}",
                            param.name,
                            param.ty.name()
                        ),
                    });
                    continue;
                }
            },
            (None, Some(default)) => default.clone(),
            (None, None) if param.required => {
                errors.push(ParamError {
                    param: param.name.clone(),
                    code: "missing-param".to_string(),
                    message: format!(
                        "The runbook `{}` needs the parameter `{}` ({}{}); add `-p {}=VALUE`.",
                        runbook.name,
                        param.name,
                        param.ty.name(),
                        param
                            .description
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default(),
                        param.name
                    ),
                });
                continue;
            }
            (None, None) => Value::Null,
        };
        values.insert(param.name.clone(), value);
    }
    if errors.is_empty() {
        Ok(BoundParams { values })
    } else {
        Err(errors)
    }
}

/// Substitutes `{{ params.NAME }}` in every string of `value`. A string that is exactly one
/// placeholder takes the parameter's JSON type (`replicas: "{{ params.n }}"` gives a number for
/// an `int` parameter); inside a longer string the value is written as text, and an unset
/// optional parameter as nothing. A placeholder naming a parameter that is not bound is an
/// error, never left in place.
pub fn render(value: &Value, params: &BoundParams) -> Result<Value, String> {
    substitute(value, &|name| params.values.get(name).cloned())
}

/// Like [`render`] for one string that must stay a string (a check's URL or query).
pub fn render_text(text: &str, params: &BoundParams) -> Result<String, String> {
    substitute_text(text, &|name| params.values.get(name).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> BoundParams {
        BoundParams {
            values: BTreeMap::from([
                ("dc".to_string(), json!("east")),
                ("n".to_string(), json!(3)),
                ("flag".to_string(), Value::Null),
            ]),
        }
    }

    #[test]
    fn whole_placeholders_keep_their_type_and_inner_ones_become_text() {
        let value = json!({
            "count": "{{ params.n }}",
            "name": "web-{{params.dc}}-{{ params.n }}",
            "list": ["{{ params.dc }}", 1],
            "unset": "x{{ params.flag }}y",
            "go": "{{.State.Running}}",
        });
        let rendered = render(&value, &params()).expect("renders");
        assert_eq!(
            rendered,
            json!({
                "count": 3,
                "name": "web-east-3",
                "list": ["east", 1],
                "unset": "xy",
                "go": "{{.State.Running}}",
            })
        );
    }

    #[test]
    fn malformed_and_unknown_placeholders_are_errors() {
        assert!(render(&json!("{{ params.zone }}"), &params()).is_err());
        assert!(render(&json!("{{ params.dc"), &params()).is_err());
        assert!(render(&json!("{{ param.dc }}"), &params()).is_err());
        assert!(render(&json!("{{ params.dc | upper }}"), &params()).is_err());
    }
}
