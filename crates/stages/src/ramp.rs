//! The `ramp` stage: move a value from `from` to `to` in paced, committed steps, running a
//! command at each step.
//!
//! It is the generic form of Maelstrom's paced changes (shift 5% of the traffic, then 20% at a
//! time, waiting between steps): the command sets the value (a load balancer weight, a rollout
//! percentage), and Levee owns the pacing, the journal and the operator's controls. The first
//! step is deliberately its own size (`first_step`), so a mistake shows on a small change.
//! Each step is committed before the next one starts, and a resumed task continues from the
//! value its last committed step reached. An operator may change `step` and `wait` while the
//! stage runs; the change applies from the next step (and shortens or lengthens the current
//! wait at once).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::context::{StageContext, StageOutcome, StageOutput, Step};
use crate::process::{ProgramEnd, describe_status, run_program};
use crate::shell::{ShellArgs, parse_shell_args};
use crate::wait::MAX_WAIT_MS;

/// Most steps one ramp may take, as written or as re-paced by an operator.
pub const MAX_RAMP_STEPS: usize = 10_000;

/// Two values closer than this are equal: the ramp has reached its target.
const VALUE_EPSILON: f64 = 1e-9;

pub(crate) const RAMP_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "command",
        kind: ArgKind::StringList,
        required: true,
        description: "The program and its arguments, run once per step without a shell; \
                      `{value}` in any argument is replaced by the step's value (also in \
                      `LEVEE_RAMP_VALUE`, with the step's number in `LEVEE_RAMP_STEP`).",
    },
    ArgSpec {
        name: "from",
        kind: ArgKind::Number,
        required: true,
        description: "The value before the first step (the current weight, say).",
    },
    ArgSpec {
        name: "to",
        kind: ArgKind::Number,
        required: true,
        description: "The value after the last step.",
    },
    ArgSpec {
        name: "step",
        kind: ArgKind::Any,
        required: true,
        description: "How far each step moves: a number, or a percentage of the whole span \
                      such as `20%`. Operators may change it while the task runs.",
    },
    ArgSpec {
        name: "first_step",
        kind: ArgKind::Any,
        required: false,
        description: "How far the first step moves (`step` by default); keep it small so a \
                      mistake shows early.",
    },
    ArgSpec {
        name: "wait",
        kind: ArgKind::Duration,
        required: false,
        description: "How long to wait after each step before the next (none by default). \
                      Operators may change it while the task runs.",
    },
    ArgSpec {
        name: "env",
        kind: ArgKind::Map,
        required: false,
        description: "Environment variables added to (or replacing those of) Levee's own.",
    },
    ArgSpec {
        name: "cwd",
        kind: ArgKind::String,
        required: false,
        description: "The directory to run in; Levee's working directory by default.",
    },
    ArgSpec {
        name: "timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "How long one step's command may run (30s by default, at most 24h).",
    },
    ArgSpec {
        name: "idempotent",
        kind: ArgKind::Bool,
        required: false,
        description: "Your word that running a step's command twice with the same value is \
                      safe (it sets a value rather than adding to it). False by default: a \
                      step in flight during a crash then waits for an operator.",
    },
];

/// How far a step moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Amount {
    Absolute(f64),
    /// A fraction (0, 1] of the span `|to - from|`.
    Fraction(f64),
}

impl Amount {
    pub(crate) fn parse(argument: &str, value: &Value) -> Result<Amount, ArgError> {
        let invalid = |why: &str| {
            ArgError::invalid(
                argument,
                format!("{why}; write a positive number or a percentage such as `20%`"),
            )
        };
        let amount = match value {
            Value::Number(number) => Amount::Absolute(number.as_f64().unwrap_or(f64::NAN)),
            Value::String(text) => {
                let text = text.trim();
                match text.strip_suffix('%') {
                    Some(percent) => {
                        let percent: f64 = percent
                            .trim()
                            .parse()
                            .map_err(|_| invalid(&format!("`{text}` is not a percentage")))?;
                        if !(percent > 0.0 && percent <= 100.0) {
                            return Err(invalid(&format!(
                                "`{text}` is not between 0% (excluded) and 100%"
                            )));
                        }
                        Amount::Fraction(percent / 100.0)
                    }
                    None => Amount::Absolute(
                        text.parse()
                            .map_err(|_| invalid(&format!("`{text}` is not a number")))?,
                    ),
                }
            }
            _ => return Err(invalid("it is neither a number nor a percentage")),
        };
        if let Amount::Absolute(size) = amount
            && !(size.is_finite() && size > 0.0)
        {
            return Err(invalid("a step must move forward"));
        }
        Ok(amount)
    }

    pub(crate) fn size(self, span: f64) -> f64 {
        match self {
            Amount::Absolute(size) => size,
            Amount::Fraction(fraction) => fraction * span,
        }
    }
}

#[derive(Clone, Debug)]
struct RampArgs {
    program: ShellArgs,
    from: f64,
    to: f64,
    step: Amount,
    first_step: Amount,
    wait: Duration,
    idempotent: bool,
}

/// An operator's pace: either part may be left out.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Pace {
    pub(crate) step: Option<Amount>,
    pub(crate) wait: Option<Duration>,
}

pub(crate) fn parse_pace(pace: &Value) -> Result<Pace, ArgError> {
    if pace.is_null() {
        return Ok(Pace::default());
    }
    let Some(map) = pace.as_object() else {
        return Err(ArgError::invalid(
            "pace",
            "give a mapping with `step` and/or `wait`",
        ));
    };
    if let Some(key) = map.keys().find(|k| *k != "step" && *k != "wait") {
        return Err(ArgError::invalid(
            "pace",
            format!("`{key}` cannot be changed; a ramp's pace is its `step` and `wait`"),
        ));
    }
    if map.is_empty() {
        return Err(ArgError::invalid(
            "pace",
            "give `step`, `wait` or both: there is nothing to change",
        ));
    }
    let step = map
        .get("step")
        .map(|value| Amount::parse("step", value))
        .transpose()?;
    let wait = match map.get("wait") {
        None => None,
        Some(Value::String(text)) => {
            let ms = levee_model::parse_duration_ms(text)
                .map_err(|why| ArgError::invalid("wait", why))?;
            if ms > MAX_WAIT_MS {
                return Err(ArgError::invalid("wait", "longer than a week"));
            }
            Some(Duration::from_millis(ms))
        }
        Some(_) => {
            return Err(ArgError::invalid(
                "wait",
                "write a duration such as `30s` or `2m`",
            ));
        }
    };
    Ok(Pace { step, wait })
}

fn parse(args: &Value) -> Result<RampArgs, ArgError> {
    let program = parse_shell_args(RAMP_ARGS, args)?;
    let parsed = Args::checked(RAMP_ARGS, args)?;
    let number = |name: &str| -> Result<f64, ArgError> {
        let value = parsed.number(name)?.ok_or_else(|| ArgError::Missing {
            argument: name.to_string(),
            description: "The value before and after the ramp.".to_string(),
        })?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(ArgError::invalid(name, "not a finite number"))
        }
    };
    let from = number("from")?;
    let to = number("to")?;
    let step = Amount::parse(
        "step",
        parsed.get("step").ok_or_else(|| ArgError::Missing {
            argument: "step".to_string(),
            description: RAMP_ARGS[3].description.to_string(),
        })?,
    )?;
    let first_step = match parsed.get("first_step") {
        Some(value) => Amount::parse("first_step", value)?,
        None => step,
    };
    let wait = Duration::from_millis(parsed.duration_ms("wait", MAX_WAIT_MS)?.unwrap_or(0));
    let idempotent = parsed.bool("idempotent")?.unwrap_or(false);
    let ramp = RampArgs {
        program,
        from,
        to,
        step,
        first_step,
        wait,
        idempotent,
    };
    let steps = ramp_values(from, to, ramp.sizes(None)).len();
    if steps > MAX_RAMP_STEPS {
        return Err(ArgError::invalid(
            "step",
            format!("the ramp would take {steps} steps; at most {MAX_RAMP_STEPS} are allowed"),
        ));
    }
    Ok(ramp)
}

impl RampArgs {
    fn span(&self) -> f64 {
        (self.to - self.from).abs()
    }

    /// The size of each step from the first on, with the operator's `step` if any.
    fn sizes(&self, pace: Option<Amount>) -> impl Iterator<Item = f64> + '_ {
        let span = self.span();
        let first = self.first_step.size(span);
        let rest = pace.unwrap_or(self.step).size(span);
        std::iter::once(first).chain(std::iter::repeat(rest))
    }
}

/// Waits after a step for the pace's `wait` (`written` unless an operator changed it),
/// re-reading the pace whenever it changes, so a shorter or longer wait applies at once.
/// `Some` when the stage must stop instead (cancelled, or past its deadline).
pub(crate) async fn wait_between_steps(
    ctx: &mut StageContext,
    written: Duration,
) -> Option<StageOutcome> {
    let step_ended = Instant::now();
    loop {
        let pace = parse_pace(&ctx.pace.current()).unwrap_or_default();
        let until = step_ended + pace.wait.unwrap_or(written);
        if until <= Instant::now() {
            return None;
        }
        tokio::select! {
            () = sleep_until(until) => return None,
            () = ctx.pace.changed() => {}
            () = ctx.cancel.cancelled() => return Some(StageOutcome::Cancelled),
            () = sleep_until(ctx.deadline) => return Some(StageOutcome::TimedOut),
        }
    }
}

/// Moves `value` toward `to` by `size`, landing exactly on `to` at the end.
pub(crate) fn advance(value: f64, to: f64, size: f64) -> f64 {
    let remaining = to - value;
    if remaining.abs() <= size + VALUE_EPSILON {
        to
    } else {
        value + size.copysign(remaining)
    }
}

/// The values a ramp sets, one per step, for step sizes `sizes` (the first step's first),
/// stopping at `to` or after [`MAX_RAMP_STEPS`] + 1 values (so callers see that it is too
/// many).
pub fn ramp_values(from: f64, to: f64, sizes: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut values = Vec::new();
    let mut value = from;
    for size in sizes {
        if (value - to).abs() <= VALUE_EPSILON || values.len() > MAX_RAMP_STEPS {
            break;
        }
        value = advance(value, to, size);
        values.push(value);
    }
    values
}

/// A value as the command sees it: whole numbers without a fraction, others with up to six
/// decimals.
fn format_value(value: f64) -> String {
    if (value - value.round()).abs() < VALUE_EPSILON {
        format!("{}", value.round() as i64)
    } else {
        let text = format!("{value:.6}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Runs a command per step while moving a value from `from` to `to`; see the module docs.
#[derive(Debug, Default)]
pub struct RampStage;

#[async_trait]
impl Stage for RampStage {
    fn name(&self) -> &'static str {
        "ramp"
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn idempotent_for(&self, args: &Value) -> bool {
        parse(args).is_ok_and(|ramp| ramp.idempotent)
    }

    fn args(&self) -> &'static [ArgSpec] {
        RAMP_ARGS
    }

    fn validate(&self, args: &Value) -> Result<(), ArgError> {
        parse(args).map(|_| ())
    }

    fn paced(&self) -> bool {
        true
    }

    fn validate_pace(&self, pace: &Value) -> Result<(), ArgError> {
        parse_pace(pace).map(|_| ())
    }

    async fn run(&self, mut ctx: StageContext, args: &Value) -> StageOutcome {
        let ramp = match parse(args) {
            Ok(ramp) => ramp,
            Err(error) => return StageOutcome::invalid_args(error),
        };
        let span = ramp.span();
        // Where to continue: after the last committed step, at the value it reached.
        let (mut value, mut index) = match &ctx.resume_from {
            None => (ramp.from, 0_u64),
            Some(step) => {
                let reached = step.state.get("value").and_then(Value::as_f64);
                let value = reached.unwrap_or_else(|| {
                    // A step committed without its value (an older journal): replay the ramp
                    // as written, which is where it was unless an operator re-paced it.
                    let values = ramp_values(ramp.from, ramp.to, ramp.sizes(None));
                    let at = usize::try_from(step.index).unwrap_or(usize::MAX);
                    values.get(at).copied().unwrap_or(ramp.to)
                });
                (value, step.index + 1)
            }
        };
        if index > 0 {
            ctx.output.write(
                format!("resuming after step {index} at {}\n", format_value(value)).as_bytes(),
            );
        }
        let data = |value: f64, steps: u64| {
            json!({
                "from": ramp.from,
                "to": ramp.to,
                "value": value,
                "steps": steps,
            })
        };
        while (value - ramp.to).abs() > VALUE_EPSILON {
            if index as usize >= MAX_RAMP_STEPS {
                return StageOutcome::Failed {
                    error: format!(
                        "the ramp took {MAX_RAMP_STEPS} steps without reaching {}; make the \
                         step larger",
                        format_value(ramp.to)
                    ),
                    retryable: false,
                    output: StageOutput {
                        captured: ctx.output.snapshot(),
                        data: data(value, index),
                    },
                };
            }
            let pace = parse_pace(&ctx.pace.current()).unwrap_or_default();
            let size = if index == 0 {
                ramp.first_step.size(span)
            } else {
                pace.step.unwrap_or(ramp.step).size(span)
            };
            let next = advance(value, ramp.to, size);
            let shown = format_value(next);
            let mut program = ramp.program.program.clone();
            for arg in &mut program.argv {
                *arg = arg.replace("{value}", &shown);
            }
            program
                .env
                .push(("LEVEE_RAMP_VALUE".to_string(), shown.clone()));
            program
                .env
                .push(("LEVEE_RAMP_STEP".to_string(), (index + 1).to_string()));
            ctx.output
                .write(format!("step {}: {}\n", index + 1, shown).as_bytes());
            let deadline = ctx.deadline_within(ramp.program.timeout);
            let end = run_program(&program, &ctx.cancel, deadline, &ctx.output).await;
            match end {
                ProgramEnd::Exited(status) if status.success() => {}
                ProgramEnd::Exited(status) => {
                    let captured = ctx.output.snapshot();
                    return StageOutcome::Failed {
                        error: format!(
                            "step {} (value {shown}): `{}` {}; last output:\n{}",
                            index + 1,
                            program.argv[0],
                            describe_status(&status),
                            captured.display()
                        ),
                        // The step may have half-happened; trying again is safe only if the
                        // author said running a step twice is.
                        retryable: ramp.idempotent,
                        output: StageOutput {
                            captured,
                            data: data(value, index),
                        },
                    };
                }
                ProgramEnd::SpawnFailed(error) => {
                    return StageOutcome::Failed {
                        error,
                        retryable: false,
                        output: StageOutput {
                            captured: ctx.output.snapshot(),
                            data: data(value, index),
                        },
                    };
                }
                ProgramEnd::Cancelled => return StageOutcome::Cancelled,
                ProgramEnd::TimedOut => return StageOutcome::TimedOut,
            }
            let committed = ctx
                .steps
                .report(Step {
                    index,
                    state: json!({ "value": next }),
                })
                .await;
            if let Err(error) = committed {
                return StageOutcome::Failed {
                    error: format!("step {} was done but not journaled: {error}", index + 1),
                    retryable: false,
                    output: StageOutput {
                        captured: ctx.output.snapshot(),
                        data: data(next, index + 1),
                    },
                };
            }
            value = next;
            index += 1;
            if (value - ramp.to).abs() <= VALUE_EPSILON {
                break;
            }
            if let Some(stopped) = wait_between_steps(&mut ctx, ramp.wait).await {
                return stopped;
            }
        }
        StageOutcome::Succeeded {
            output: StageOutput {
                captured: ctx.output.snapshot(),
                data: data(value, index),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_step_is_its_own_size_and_the_last_lands_on_the_target() {
        let ramp = parse(&json!({
            "command": ["true"], "from": 100, "to": 0, "first_step": "5%", "step": "20%"
        }))
        .unwrap();
        let values: Vec<String> = ramp_values(100.0, 0.0, ramp.sizes(None))
            .into_iter()
            .map(format_value)
            .collect();
        assert_eq!(values, ["95", "75", "55", "35", "15", "0"]);
        let up = ramp_values(0.0, 1.0, std::iter::repeat(0.3));
        assert_eq!(
            up.into_iter().map(format_value).collect::<Vec<_>>(),
            ["0.3", "0.6", "0.9", "1"]
        );
        assert!(ramp_values(5.0, 5.0, std::iter::repeat(1.0)).is_empty());
    }

    #[test]
    fn bad_steps_and_paces_say_what_to_fix() {
        let error = |args: Value| parse(&args).unwrap_err().to_string();
        assert!(
            error(json!({ "command": ["true"], "from": 0, "to": 10, "step": 0 }))
                .contains("move forward")
        );
        assert!(
            error(json!({ "command": ["true"], "from": 0, "to": 10, "step": "150%" }))
                .contains("100%")
        );
        assert!(
            error(json!({ "command": ["true"], "from": 0, "to": 1e9, "step": 1 }))
                .contains("at most 10000")
        );
        assert!(parse(&json!({ "command": ["true"], "from": 0, "to": 10, "step": "2" })).is_ok());
        assert!(parse_pace(&json!({ "step": "10%", "wait": "5s" })).is_ok());
        assert!(parse_pace(&json!({ "wait": 5 })).is_err());
        assert!(
            parse_pace(&json!({ "to": 3 }))
                .unwrap_err()
                .to_string()
                .contains("cannot be changed")
        );
        assert!(parse_pace(&json!({})).is_err());
    }
}
