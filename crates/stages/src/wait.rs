//! The `wait` stage: pause a runbook for a fixed time, or until a check holds.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tokio::time::{Instant, sleep_until};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::check::{Check, HttpCheck, MetricCheck, NoMetricSource, ShellCheck};
use crate::context::{StageContext, StageOutcome, StageOutput};

/// The longest `duration` or `deadline` a wait may ask for, in milliseconds (a week).
pub const MAX_WAIT_MS: u64 = 7 * 24 * 3_600_000;

/// How long a wait `until` a check waits when it gives no `deadline`, in milliseconds.
pub const DEFAULT_WAIT_DEADLINE_MS: u64 = 3_600_000;

/// How often a wait `until` a check evaluates it when it gives no `every`, in milliseconds.
pub const DEFAULT_WAIT_EVERY_MS: u64 = 5_000;

/// The shortest `every` accepted, in milliseconds: a check is a request to something real.
pub const MIN_WAIT_EVERY_MS: u64 = 100;

pub(crate) const WAIT_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "duration",
        kind: ArgKind::Duration,
        required: false,
        description: "How long to wait, such as `500ms`, `5s`, `10m` or `1h30m` (at most a \
                      week). Give either `duration` or `until`.",
    },
    ArgSpec {
        name: "until",
        kind: ArgKind::Any,
        required: false,
        description: "Wait until this check holds, written as in `pre`, `post` and `health`: \
                      `{ http: { url: ..., status: 200 } }`, `{ metric: { query: ..., below: 0.01 \
                      } }`, `{ shell: { command: [...] } }` or `{ state: { machine: ..., in: \
                      [...] } }`.",
    },
    ArgSpec {
        name: "every",
        kind: ArgKind::Duration,
        required: false,
        description: "With `until`: how often the check is evaluated (5s by default, at least \
                      100ms).",
    },
    ArgSpec {
        name: "deadline",
        kind: ArgKind::Duration,
        required: false,
        description: "With `until`: how long to wait for the check before the task fails (1h \
                      by default, at most a week; the task's `timeout` still applies).",
    },
];

/// A check written as in a task's `pre`, `post` or `health` list, converted to the check it
/// names and that check's arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckCall {
    /// `http`, `shell`, `metric` or `state`.
    pub check: &'static str,
    /// The arguments the check's implementation takes.
    pub args: Value,
    /// The check's `name`, or a description of it, for messages.
    pub name: String,
}

/// What a parsed `wait` does.
#[derive(Clone, Debug, PartialEq)]
enum WaitFor {
    Duration(Duration),
    Until {
        check: CheckCall,
        every: Duration,
        deadline: Duration,
    },
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ArgError> {
    value
        .as_object()
        .ok_or_else(|| ArgError::invalid("until", format!("`{what}` must be a mapping")))
}

fn refuse_unknown(map: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), ArgError> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(ArgError::invalid(
            "until",
            format!(
                "`{what}` has no key `{key}`; it takes {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn nested(error: ArgError, what: &str) -> ArgError {
    ArgError::invalid("until", format!("in `{what}`: {error}"))
}

/// Converts a check as written in a definition into the check that carries it out and its
/// arguments, validating them. Errors name the `until` argument.
pub fn check_from_definition(value: &Value) -> Result<CheckCall, ArgError> {
    let map = object(value, "until")?;
    let name = match map.get("name") {
        None => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(_) => return Err(ArgError::invalid("until", "`name` must be a string")),
    };
    let kinds: Vec<&String> = map.keys().filter(|key| *key != "name").collect();
    let [kind] = kinds.as_slice() else {
        return Err(ArgError::invalid(
            "until",
            "give exactly one check: `http`, `shell`, `state` or `metric` (and optionally \
             `name`)",
        ));
    };
    let body = &map[kind.as_str()];
    let (check, args, described): (&'static str, Value, String) = match kind.as_str() {
        "http" => {
            let spec = object(body, "http")?;
            refuse_unknown(spec, &["url", "status", "json"], "http")?;
            let url = spec.get("url").cloned().unwrap_or(Value::Null);
            let status = spec.get("status").cloned().unwrap_or(json!(200));
            let mut args = Map::new();
            args.insert("url".into(), url.clone());
            args.insert("expect_status".into(), json!([status]));
            if let Some(field) = spec.get("json") {
                let field = object(field, "json")?;
                refuse_unknown(field, &["path", "equals"], "json")?;
                args.insert(
                    "field".into(),
                    field.get("path").cloned().unwrap_or(Value::Null),
                );
                args.insert(
                    "equals".into(),
                    field.get("equals").cloned().unwrap_or(Value::Null),
                );
            }
            let args = Value::Object(args);
            HttpCheck
                .validate(&args)
                .map_err(|error| nested(error, "http"))?;
            let described = format!("GET {} answers {status}", url.as_str().unwrap_or_default());
            ("http", args, described)
        }
        "shell" => {
            let spec = object(body, "shell")?;
            refuse_unknown(spec, &["command"], "shell")?;
            let args = json!({ "command": spec.get("command").cloned().unwrap_or(Value::Null) });
            ShellCheck
                .validate(&args)
                .map_err(|error| nested(error, "shell"))?;
            let described = format!(
                "`{}` exits 0",
                args["command"]
                    .as_array()
                    .map(|argv| argv
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            );
            ("shell", args, described)
        }
        "metric" => {
            let spec = object(body, "metric")?;
            refuse_unknown(spec, &["query", "below", "above"], "metric")?;
            let args = Value::Object(spec.clone());
            MetricCheck::new(Arc::new(NoMetricSource))
                .validate(&args)
                .map_err(|error| nested(error, "metric"))?;
            let query = spec.get("query").and_then(Value::as_str).unwrap_or("");
            let described = match (spec.get("below"), spec.get("above")) {
                (Some(below), _) => format!("{query} < {below}"),
                (_, Some(above)) => format!("{query} > {above}"),
                _ => query.to_string(),
            };
            ("metric", args, described)
        }
        "state" => {
            let spec = object(body, "state")?;
            refuse_unknown(spec, &["machine", "in"], "state")?;
            let mut args = spec.clone();
            // `in` takes one state or a list, as in a task's checks.
            if let Some(Value::String(state)) = args.get("in").cloned() {
                args.insert("in".into(), json!([state]));
            }
            let args = Value::Object(args);
            let state = crate::registry::SERVER_CHECKS
                .iter()
                .find(|c| c.name == "state")
                .expect("the state check is built in");
            (state.validate)(&args).map_err(|error| nested(error, "state"))?;
            let described = format!(
                "machine {} in {}",
                args["machine"].as_str().unwrap_or_default(),
                args["in"]
                    .as_array()
                    .map(|states| states
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("|"))
                    .unwrap_or_default()
            );
            ("state", args, described)
        }
        other => {
            return Err(ArgError::invalid(
                "until",
                format!("`{other}` is not a check; use `http`, `shell`, `state` or `metric`"),
            ));
        }
    };
    Ok(CheckCall {
        check,
        args,
        name: name.unwrap_or(described),
    })
}

fn parse(args: &Value) -> Result<WaitFor, ArgError> {
    let parsed = Args::checked(WAIT_ARGS, args)?;
    let duration = parsed.duration_ms("duration", MAX_WAIT_MS)?;
    let every = parsed.duration_ms("every", MAX_WAIT_MS)?;
    let deadline = parsed.duration_ms("deadline", MAX_WAIT_MS)?;
    match (duration, parsed.get("until")) {
        (Some(_), Some(_)) => Err(ArgError::invalid(
            "until",
            "give either `duration` or `until`, not both",
        )),
        (None, None) => Err(ArgError::Missing {
            argument: "duration".to_string(),
            description: WAIT_ARGS[0].description.to_string(),
        }),
        (Some(ms), None) => {
            if let Some(name) = [("every", every), ("deadline", deadline)]
                .iter()
                .find_map(|(name, value)| value.map(|_| *name))
            {
                return Err(ArgError::invalid(
                    name,
                    "only a wait `until` a check takes it; a fixed `duration` ends on time",
                ));
            }
            Ok(WaitFor::Duration(Duration::from_millis(ms)))
        }
        (None, Some(until)) => {
            let every = every.unwrap_or(DEFAULT_WAIT_EVERY_MS);
            if every < MIN_WAIT_EVERY_MS {
                return Err(ArgError::invalid(
                    "every",
                    format!("at least {MIN_WAIT_EVERY_MS}ms between evaluations"),
                ));
            }
            Ok(WaitFor::Until {
                check: check_from_definition(until)?,
                every: Duration::from_millis(every),
                deadline: Duration::from_millis(deadline.unwrap_or(DEFAULT_WAIT_DEADLINE_MS)),
            })
        }
    }
}

/// Sleeps for `duration`, or evaluates `until` every `every` until it holds or `deadline`
/// passes, stopping early when cancelled.
///
/// It is idempotent and does not journal progress: after a crash the whole wait starts again,
/// which only ever waits longer, never shorter, than the author asked — the safe direction.
/// A wait `until` a check evaluates it through [`StageContext::checks`]; a deadline that
/// passes fails the task (and stalls it for an operator) rather than carrying on.
#[derive(Debug, Default)]
pub struct WaitStage;

#[async_trait]
impl Stage for WaitStage {
    fn name(&self) -> &'static str {
        "wait"
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn args(&self) -> &'static [ArgSpec] {
        WAIT_ARGS
    }

    fn validate(&self, args: &Value) -> Result<(), ArgError> {
        parse(args).map(|_| ())
    }

    async fn run(&self, ctx: StageContext, args: &Value) -> StageOutcome {
        match parse(args) {
            Ok(WaitFor::Duration(duration)) => wait_for_duration(&ctx, duration).await,
            Ok(WaitFor::Until {
                check,
                every,
                deadline,
            }) => wait_until(&ctx, &check, every, deadline).await,
            Err(error) => StageOutcome::invalid_args(error),
        }
    }
}

async fn wait_for_duration(ctx: &StageContext, duration: Duration) -> StageOutcome {
    let started = Instant::now();
    let until = started + duration;
    if ctx.deadline < until {
        tokio::select! {
            () = sleep_until(ctx.deadline) => StageOutcome::TimedOut,
            () = ctx.cancel.cancelled() => StageOutcome::Cancelled,
        }
    } else {
        tokio::select! {
            () = sleep_until(until) => StageOutcome::Succeeded {
                output: StageOutput {
                    captured: Default::default(),
                    data: json!({ "waited_ms": started.elapsed().as_millis() as u64 }),
                },
            },
            () = ctx.cancel.cancelled() => StageOutcome::Cancelled,
        }
    }
}

async fn wait_until(
    ctx: &StageContext,
    check: &CheckCall,
    every: Duration,
    deadline: Duration,
) -> StageOutcome {
    let started = Instant::now();
    let gives_up_at = started + deadline;
    let mut evaluations: u64 = 0;
    let mut last_observed: Option<String> = None;
    loop {
        let outcome = tokio::select! {
            outcome = ctx.checks.evaluate(&ctx.cancel, check.check, &check.args) => outcome,
            () = ctx.cancel.cancelled() => return StageOutcome::Cancelled,
            () = sleep_until(ctx.deadline) => return StageOutcome::TimedOut,
        };
        evaluations += 1;
        // One line per change of what is seen, not per evaluation: the output stays readable
        // over an hour of polling.
        if last_observed.as_deref() != Some(outcome.observed.as_str()) {
            let waited_ms = started.elapsed().as_millis();
            ctx.output.write(
                format!(
                    "{waited_ms}ms: {} {}: {}\n",
                    if outcome.ok { "holds" } else { "waiting" },
                    check.name,
                    outcome.reason
                )
                .as_bytes(),
            );
            last_observed = Some(outcome.observed.clone());
        }
        let waited_ms = started.elapsed().as_millis() as u64;
        if outcome.ok {
            return StageOutcome::Succeeded {
                output: StageOutput {
                    captured: ctx.output.snapshot(),
                    data: json!({
                        "waited_ms": waited_ms,
                        "evaluations": evaluations,
                        "observed": outcome.observed,
                    }),
                },
            };
        }
        let next = Instant::now() + every;
        if next >= gives_up_at {
            return StageOutcome::Failed {
                error: format!(
                    "{} still does not hold after {waited_ms} ms ({evaluations} evaluations; \
                     the deadline is {} ms): {}",
                    check.name,
                    deadline.as_millis(),
                    outcome.reason
                ),
                retryable: true,
                output: StageOutput {
                    captured: ctx.output.snapshot(),
                    data: json!({
                        "waited_ms": waited_ms,
                        "evaluations": evaluations,
                        "observed": outcome.observed,
                    }),
                },
            };
        }
        tokio::select! {
            () = sleep_until(next) => {}
            () = ctx.cancel.cancelled() => return StageOutcome::Cancelled,
            () = sleep_until(ctx.deadline) => return StageOutcome::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_as_written_in_a_definition_becomes_the_checks_arguments() {
        let call = check_from_definition(&json!({
            "http": { "url": "http://127.0.0.1:1/ready", "json": { "path": "a.b", "equals": true } }
        }))
        .unwrap();
        assert_eq!(call.check, "http");
        assert_eq!(
            call.args,
            json!({
                "url": "http://127.0.0.1:1/ready",
                "expect_status": [200],
                "field": "a.b",
                "equals": true
            })
        );
        assert_eq!(call.name, "GET http://127.0.0.1:1/ready answers 200");
        let call = check_from_definition(
            &json!({ "name": "db caught up", "state": { "machine": "db", "in": "ready" } }),
        )
        .unwrap();
        assert_eq!(call.args, json!({ "machine": "db", "in": ["ready"] }));
        assert_eq!(call.name, "db caught up");
        let call =
            check_from_definition(&json!({ "metric": { "query": "lag", "below": 5 } })).unwrap();
        assert_eq!(call.name, "lag < 5");
    }

    #[test]
    fn a_wrong_check_says_what_to_fix() {
        let error = |value: Value| check_from_definition(&value).unwrap_err().to_string();
        assert!(error(json!({})).contains("exactly one check"));
        assert!(error(json!({ "http": {}, "shell": {} })).contains("exactly one check"));
        assert!(error(json!({ "grep": {} })).contains("`grep` is not a check"));
        assert!(error(json!({ "http": { "uri": "x" } })).contains("no key `uri`"));
        assert!(error(json!({ "metric": { "query": "q" } })).contains("metric"));
        assert!(error(json!({ "shell": { "command": [] } })).contains("empty"));
    }

    #[test]
    fn duration_and_until_exclude_each_other() {
        assert!(parse(&json!({ "duration": "1s" })).is_ok());
        let until = json!({ "shell": { "command": ["true"] } });
        assert!(parse(&json!({ "until": until, "every": "1s", "deadline": "1m" })).is_ok());
        let both = parse(&json!({ "duration": "1s", "until": until })).unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        assert!(parse(&json!({})).is_err());
        let stray = parse(&json!({ "duration": "1s", "every": "1s" })).unwrap_err();
        assert!(stray.to_string().contains("only a wait `until`"), "{stray}");
        let fast = parse(&json!({ "until": until, "every": "10ms" })).unwrap_err();
        assert!(fast.to_string().contains("at least"), "{fast}");
    }
}
