//! The `promote_primary` stage: stateful traffic. Promote a replica (in another datacenter)
//! to primary, check that it is, then move traffic to it.
//!
//! In committed steps:
//! 1. **promoted**: `promote` (a server, SERVICE/DC on the simulator; or a list of
//!    candidates: one outside `away_from` that `verify` already shows to be primary is kept,
//!    else the first outside `away_from` that is up and not in maintenance is chosen, so
//!    one runbook serves whichever datacenter is drained) becomes
//!    primary, by the `promote_hook` (a command or an `http://` URL, with `{server}`) or,
//!    without one, by the backend; with `ready_first` it is set `ready` before. The choice
//!    is committed with the step, so a resumed attempt keeps it;
//! 2. **verified**: the `verify` check (written as in `pre`, such as
//!    `{ metric: { query: 'levee_sim_primary{service="db",dc="{promoted_server}"}', above:
//!    0.5 } }`; `{promoted}` and `{promoted_server}`, the part after `/`, are replaced by the
//!    chosen server) must pass, re-evaluated every [`VERIFY_POLL_INTERVAL_MS`] for at most
//!    `verify_timeout`; traffic never moves to a replica nobody has seen become primary;
//! 3. **raise**: with `to_weight`, the promoted server's weight rises to it in paced steps;
//! 4. **away**: the servers of `away_from` (the old primary's datacenter) go to weight 0 in
//!    paced steps (closed loop optional) and, with `then_maint`, are drained until their
//!    sessions end and set `maint`.
//!
//! Promoting a server that is already primary changes nothing on the simulator and on most
//! databases' tools, so the stage is idempotent with the backend; with a hook, only if the
//! task says `idempotent: true`.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::context::{StageContext, StageOutcome};
use crate::hook::{DEFAULT_HOOK_TIMEOUT_MS, Hook, MAX_HOOK_TIMEOUT_MS, parse_hook, run_hook};
use crate::ramp::{Amount, parse_pace};
use crate::sticky::{commit, resumed, tag};
use crate::traffic::finished;
use crate::traffic::{
    BACKEND_ARG, BREACH_HOLD_ARG, BUDGET_ARG, BUDGET_LIMIT_ARG, BudgetArgs,
    DEFAULT_DRAIN_TIMEOUT_MS, FIRST_STEP_ARG, GROW_ARG, HAPROXY_ARG, HEALTH_BELOW_ARG,
    HEALTH_QUERY_ARG, HealthLoop, MAX_STEP_ARG, SLOW_AT_ARG, STEP_ARG, TrafficBackend, TrafficKit,
    Via, WAIT_ARG, WeightMove, check_target, failed, move_weights, parse_budget, parse_health,
    parse_steps, parse_targets, parse_via, parse_wait, say, set_states, wait_for_sessions, weight,
};
use crate::wait::{CheckCall, MAX_WAIT_MS, check_from_definition};

/// How long the promotion may take to show, when the task does not say (`verify_timeout`),
/// in milliseconds.
pub const DEFAULT_VERIFY_TIMEOUT_MS: u64 = 5 * 60_000;

/// How often `verify` is re-evaluated until it passes, in milliseconds.
pub const VERIFY_POLL_INTERVAL_MS: u64 = 2_000;

/// The step of the weights when the task does not say.
const DEFAULT_PROMOTE_STEP: Amount = Amount::Fraction(0.25);

pub(crate) const PROMOTE_ARGS: &[ArgSpec] = &[
    HAPROXY_ARG,
    BACKEND_ARG,
    ArgSpec {
        name: "promote",
        kind: ArgKind::Any,
        required: true,
        description: "The replica to make primary (BACKEND/SERVER; SERVICE/DC on the \
                      simulator), or a list of candidates: the first not in `away_from`, up \
                      and not in maintenance is chosen.",
    },
    ArgSpec {
        name: "promote_hook",
        kind: ArgKind::Any,
        required: false,
        description: "Promotes it: a command or an http:// URL to POST to (with `{server}`); \
                      the backend's own when left out.",
    },
    ArgSpec {
        name: "verify",
        kind: ArgKind::Any,
        required: true,
        description: "A check, written as in `pre`, that passes once the replica is primary \
                      (`{promoted}` and `{promoted_server}` in its strings name the chosen \
                      one); traffic moves only after it passes.",
    },
    ArgSpec {
        name: "verify_timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "How long `verify` may take to pass before the task fails (5m by \
                      default).",
    },
    ArgSpec {
        name: "ready_first",
        kind: ArgKind::Bool,
        required: false,
        description: "Set the replica `ready` before promoting it (it was in maintenance).",
    },
    ArgSpec {
        name: "to_weight",
        kind: ArgKind::Int,
        required: false,
        description: "Raise the promoted server's weight to this, in paced steps, once \
                      verified.",
    },
    ArgSpec {
        name: "away_from",
        kind: ArgKind::StringList,
        required: false,
        description: "Servers whose traffic moves away once the replica is primary: their \
                      weights go to 0 in paced steps (the old primary's datacenter).",
    },
    ArgSpec {
        name: "then_maint",
        kind: ArgKind::Bool,
        required: false,
        description: "With `away_from`: then drain them until their sessions end and set them \
                      `maint`.",
    },
    ArgSpec {
        name: "drain_timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "With `then_maint`: how long sessions may take to end (5m by default).",
    },
    STEP_ARG,
    FIRST_STEP_ARG,
    WAIT_ARG,
    ArgSpec {
        name: "hook_timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "How long `promote_hook` may run (1m by default, at most 1h).",
    },
    ArgSpec {
        name: "idempotent",
        kind: ArgKind::Bool,
        required: false,
        description: "With `promote_hook`: your word that promoting twice is safe (false by \
                      default).",
    },
    HEALTH_QUERY_ARG,
    HEALTH_BELOW_ARG,
    SLOW_AT_ARG,
    GROW_ARG,
    MAX_STEP_ARG,
    BREACH_HOLD_ARG,
    BUDGET_ARG,
    BUDGET_LIMIT_ARG,
];

#[derive(Clone, Debug)]
struct PromoteArgs {
    via: Via,
    candidates: Vec<String>,
    hook: Option<Hook>,
    verify: CheckCall,
    verify_timeout: Duration,
    ready_first: bool,
    to: Option<u32>,
    away_from: Vec<String>,
    then_maint: bool,
    drain_timeout: Duration,
    step: Amount,
    first_step: Amount,
    wait: Duration,
    hook_timeout: Duration,
    idempotent: bool,
    health: Option<HealthLoop>,
    budget: Option<BudgetArgs>,
}

fn parse(args: &Value) -> Result<PromoteArgs, ArgError> {
    let parsed = Args::checked(PROMOTE_ARGS, args)?;
    let via = parse_via(&parsed)?;
    let candidates = match parsed.get("promote") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(_)) => parse_targets(&parsed, "promote")?,
        Some(_) => {
            return Err(ArgError::invalid(
                "promote",
                "write a server (BACKEND/SERVER) or a list of candidate servers",
            ));
        }
        None => {
            return Err(ArgError::Missing {
                argument: "promote".to_string(),
                description: PROMOTE_ARGS[2].description.to_string(),
            });
        }
    };
    for candidate in &candidates {
        check_target("promote", candidate)?;
    }
    let verify =
        check_from_definition(parsed.get("verify").unwrap_or(&Value::Null)).map_err(|error| {
            match error.argument() {
                Some(_) => ArgError::invalid("verify", error.to_string()),
                None => error,
            }
        })?;
    let away_from = match parsed.get("away_from") {
        Some(_) => parse_targets(&parsed, "away_from")?,
        None => Vec::new(),
    };
    if candidates
        .iter()
        .all(|candidate| away_from.contains(candidate))
    {
        return Err(ArgError::invalid(
            "away_from",
            "every server that could be promoted is in `away_from`; traffic would have \
             nowhere to go",
        ));
    }
    let then_maint = parsed.bool("then_maint")?.unwrap_or(false);
    if then_maint && away_from.is_empty() {
        return Err(ArgError::invalid(
            "then_maint",
            "needs `away_from`: the servers to take out",
        ));
    }
    let to = weight(&parsed, "to_weight")?;
    if to.is_none() && away_from.is_empty() {
        return Err(ArgError::Missing {
            argument: "away_from".to_string(),
            description: "promoting then moves traffic: give `away_from`, `to_weight` or both"
                .to_string(),
        });
    }
    let (step, first_step) = parse_steps(&parsed, Some(DEFAULT_PROMOTE_STEP))?;
    Ok(PromoteArgs {
        via,
        candidates,
        hook: parsed
            .get("promote_hook")
            .map(|value| parse_hook("promote_hook", value))
            .transpose()?,
        verify,
        verify_timeout: Duration::from_millis(
            parsed
                .duration_ms("verify_timeout", MAX_WAIT_MS)?
                .unwrap_or(DEFAULT_VERIFY_TIMEOUT_MS),
        ),
        ready_first: parsed.bool("ready_first")?.unwrap_or(false),
        to,
        away_from,
        then_maint,
        drain_timeout: Duration::from_millis(
            parsed
                .duration_ms("drain_timeout", MAX_WAIT_MS)?
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS),
        ),
        step,
        first_step,
        wait: parse_wait(&parsed, "wait")?,
        hook_timeout: Duration::from_millis(
            parsed
                .duration_ms("hook_timeout", MAX_HOOK_TIMEOUT_MS)?
                .unwrap_or(DEFAULT_HOOK_TIMEOUT_MS),
        ),
        idempotent: parsed.bool("idempotent")?.unwrap_or(false),
        health: parse_health(&parsed)?,
        budget: parse_budget(&parsed)?,
    })
}

/// Promotes a replica to primary, verifies it, and moves traffic to it; see the module docs.
#[derive(Debug, Default)]
pub struct PromotePrimaryStage {
    kit: TrafficKit,
}

impl PromotePrimaryStage {
    /// A stage using `kit`'s backends, metric source and budgets.
    pub fn new(kit: TrafficKit) -> PromotePrimaryStage {
        PromotePrimaryStage { kit }
    }

    fn parse(&self, args: &Value) -> Result<PromoteArgs, ArgError> {
        let promote = parse(args)?;
        self.kit.check_via(&promote.via)?;
        Ok(promote)
    }
}

#[async_trait]
impl Stage for PromotePrimaryStage {
    fn name(&self) -> &'static str {
        "promote_primary"
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn idempotent_for(&self, args: &Value) -> bool {
        parse(args).is_ok_and(|promote| promote.hook.is_none() || promote.idempotent)
    }

    fn args(&self) -> &'static [ArgSpec] {
        PROMOTE_ARGS
    }

    fn validate(&self, args: &Value) -> Result<(), ArgError> {
        self.parse(args).map(|_| ())
    }

    fn paced(&self) -> bool {
        true
    }

    fn validate_pace(&self, pace: &Value) -> Result<(), ArgError> {
        parse_pace(pace).map(|_| ())
    }

    async fn run(&self, ctx: StageContext, args: &Value) -> StageOutcome {
        let promote = match self.parse(args) {
            Ok(promote) => promote,
            Err(error) => return StageOutcome::invalid_args(error),
        };
        let (backend, _budget) = match self
            .kit
            .prepare(&ctx, &promote.via, promote.budget.as_ref())
            .await
        {
            Ok(prepared) => prepared,
            Err(outcome) => return outcome,
        };
        let outcome = run(ctx.clone(), &promote, backend.as_ref(), &self.kit).await;
        finished(&ctx, outcome)
    }
}

fn rank(phase: &str) -> u8 {
    match phase {
        "promoted" => 1,
        "verified" => 2,
        "raise" => 3,
        "away" => 4,
        "maint" => 5,
        _ => 0,
    }
}

async fn run(
    mut ctx: StageContext,
    args: &PromoteArgs,
    backend: &dyn TrafficBackend,
    kit: &TrafficKit,
) -> Result<Value, StageOutcome> {
    let resumed = resumed(&ctx);
    let (mut index, phase, state) =
        resumed
            .clone()
            .unwrap_or((0, "start".to_string(), Value::Null));
    if resumed.is_some() {
        say(&ctx, format!("resuming after step {index} ({phase})"));
    }
    let data = |phase: &str| json!({ "phase": phase, "candidates": args.candidates });
    // 1. Choose and promote.
    let chosen = match state.get("promoted").and_then(Value::as_str) {
        Some(chosen) if rank(&phase) >= 1 => chosen.to_string(),
        _ => choose(&ctx, args, backend, &data("promoted")).await?,
    };
    let promote = std::slice::from_ref(&chosen);
    if rank(&phase) < 1 {
        if args.ready_first {
            set_states(&ctx, backend, promote, "ready", &data("promoted")).await?;
        }
        let promoted = match &args.hook {
            Some(hook) => {
                run_hook(
                    &ctx,
                    "promote",
                    hook,
                    &[("server", chosen.clone())],
                    args.hook_timeout,
                )
                .await
            }
            None => backend.promote(&chosen).await,
        };
        promoted.map_err(|error| failed(error, &ctx, data("promoted")))?;
        say(&ctx, format!("{chosen} promoted to primary"));
        index = commit(
            &ctx,
            index,
            json!({ "phase": "promoted", "promoted": chosen }),
            &data("promoted"),
        )
        .await?;
    }
    let verify_args = verify_args_for(&args.verify.args, &chosen);
    // 2. Verify, before any traffic moves.
    if rank(&phase) < 2 {
        let started = Instant::now();
        let gives_up = started + args.verify_timeout;
        loop {
            let outcome = ctx
                .checks
                .evaluate(&ctx.cancel, args.verify.check, &verify_args)
                .await;
            if outcome.ok {
                say(
                    &ctx,
                    format!(
                        "verified that {chosen} is primary: {} ({})",
                        args.verify.name, outcome.reason
                    ),
                );
                break;
            }
            if Instant::now() >= gives_up {
                return Err(failed(
                    format!(
                        "{chosen} was promoted but `{}` did not pass within {} ms: {}; no \
                         traffic was moved",
                        args.verify.name,
                        args.verify_timeout.as_millis(),
                        outcome.reason
                    ),
                    &ctx,
                    data("verified"),
                ));
            }
            tokio::select! {
                () = sleep_until((Instant::now() + Duration::from_millis(VERIFY_POLL_INTERVAL_MS)).min(gives_up)) => {}
                () = ctx.cancel.cancelled() => return Err(StageOutcome::Cancelled),
                () = sleep_until(ctx.deadline) => return Err(StageOutcome::TimedOut),
            }
        }
        index = commit(
            &ctx,
            index,
            json!({ "phase": "verified", "promoted": chosen }),
            &data("verified"),
        )
        .await?;
    }
    let resume_weights = |wanted: &str| -> Option<(u32, u32)> {
        (phase == wanted).then(|| {
            (
                state["from"].as_u64().unwrap_or(0) as u32,
                state["weight"].as_u64().unwrap_or(0) as u32,
            )
        })
    };
    // 3. Raise the promoted server's weight.
    if let Some(to) = args.to
        && rank(&phase) <= 3
    {
        let (from, current) = match resume_weights("raise") {
            Some(resumed) => resumed,
            None => match backend.status(&chosen).await {
                Ok(status) => (status.weight, status.weight),
                Err(error) => return Err(failed(error, &ctx, data("raise"))),
            },
        };
        let mut tag = tag("raise");
        tag.insert("promoted".to_string(), json!(chosen));
        let plan = WeightMove {
            servers: promote,
            from,
            to,
            step: args.step,
            first_step: args.first_step,
            wait: args.wait,
            health: args.health.as_ref(),
            tag,
        };
        index = move_weights(
            &mut ctx,
            &plan,
            backend,
            kit.metrics.as_ref(),
            index,
            current,
        )
        .await?;
    }
    // 4. Move traffic away from the old primary's servers.
    if !args.away_from.is_empty() && rank(&phase) <= 4 {
        let (from, current) = match resume_weights("away") {
            Some(resumed) => resumed,
            None => match backend.status(&args.away_from[0]).await {
                Ok(status) => (status.weight, status.weight),
                Err(error) => return Err(failed(error, &ctx, data("away"))),
            },
        };
        let mut tag = tag("away");
        tag.insert("promoted".to_string(), json!(chosen));
        let plan = WeightMove {
            servers: &args.away_from,
            from,
            to: 0,
            step: args.step,
            first_step: args.first_step,
            wait: args.wait,
            health: args.health.as_ref(),
            tag,
        };
        index = move_weights(
            &mut ctx,
            &plan,
            backend,
            kit.metrics.as_ref(),
            index,
            current,
        )
        .await?;
        say(
            &ctx,
            format!("traffic moved away from {}", args.away_from.join(", ")),
        );
        if args.then_maint {
            set_states(&ctx, backend, &args.away_from, "drain", &data("maint")).await?;
            wait_for_sessions(
                &ctx,
                backend,
                &args.away_from,
                0,
                args.drain_timeout,
                &data("maint"),
            )
            .await?;
            set_states(&ctx, backend, &args.away_from, "maint", &data("maint")).await?;
            say(
                &ctx,
                format!("{} drained and in maintenance", args.away_from.join(", ")),
            );
            index = commit(
                &ctx,
                index,
                json!({ "phase": "maint", "promoted": chosen }),
                &data("maint"),
            )
            .await?;
        }
    }
    Ok(json!({ "primary": chosen, "steps": index }))
}

/// The first candidate not in `away_from` that is up and not in maintenance.
/// Which candidate to promote: one outside `away_from` that `verify` already shows to be
/// primary (promoting it again changes nothing: draining a datacenter that does not hold
/// the primary leaves the primary where it is), else the first outside `away_from` that is
/// up and not in maintenance.
async fn choose(
    ctx: &StageContext,
    args: &PromoteArgs,
    backend: &dyn TrafficBackend,
    data: &Value,
) -> Result<String, StageOutcome> {
    if args.candidates.len() > 1 {
        for candidate in &args.candidates {
            if args.away_from.contains(candidate) {
                continue;
            }
            let outcome = ctx
                .checks
                .evaluate(
                    &ctx.cancel,
                    args.verify.check,
                    &verify_args_for(&args.verify.args, candidate),
                )
                .await;
            if outcome.ok {
                say(ctx, format!("{candidate} is already primary; keeping it"));
                return Ok(candidate.clone());
            }
        }
    }
    let mut passed = Vec::new();
    for candidate in &args.candidates {
        if args.away_from.contains(candidate) {
            continue;
        }
        if args.candidates.len() == 1 {
            return Ok(candidate.clone());
        }
        match backend.status(candidate).await {
            Ok(status) if status.up && !status.maintenance => return Ok(candidate.clone()),
            Ok(status) => passed.push(format!(
                "{candidate} ({})",
                if status.maintenance {
                    "in maintenance"
                } else {
                    "down"
                }
            )),
            Err(error) => passed.push(format!("{candidate} ({error})")),
        }
    }
    Err(failed(
        format!(
            "no candidate to promote: {}",
            if passed.is_empty() {
                "every one is in `away_from`".to_string()
            } else {
                passed.join(", ")
            }
        ),
        ctx,
        data.clone(),
    ))
}

/// The `verify` check's arguments for one candidate.
fn verify_args_for(args: &Value, candidate: &str) -> Value {
    substitute(
        args,
        &[
            ("{promoted}", candidate),
            (
                "{promoted_server}",
                candidate.split_once('/').map_or("", |(_, server)| server),
            ),
        ],
    )
}

/// `value` with every `(from, to)` replaced in its strings.
fn substitute(value: &Value, pairs: &[(&str, &str)]) -> Value {
    match value {
        Value::String(text) => Value::String(
            pairs
                .iter()
                .fold(text.clone(), |text, (from, to)| text.replace(from, to)),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, pairs)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, pairs)))
                .collect(),
        ),
        other => other.clone(),
    }
}
