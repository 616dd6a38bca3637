//! The `sticky_drain` stage: move sticky traffic (sessions pinned to servers, such as chat or
//! messaging) out of servers, or back in.
//!
//! Draining, in committed steps:
//! 1. **weights**: the servers' weights go to 0 (at once by default; in paced steps with
//!    `step`, in the same closed loop as `traffic_shift` with `health_query`), and the servers
//!    are set `drain`: no new session lands on them, established ones go on;
//! 2. **wait**: until fewer than `sessions_below` sessions are left (sessions end by
//!    themselves), for at most `session_timeout`; past it the attempt fails and says how many
//!    are left, rather than cutting sessions the owner expected to end on their own;
//! 3. **teardown**: the rest are ended in `batches` batches, `wait` apart (an operator may
//!    re-pace it): each batch runs `restart` (a command or an `http://` hook, with `{server}`,
//!    `{batch}` and `{batches}`) once per server, or, without `restart`, asks the backend to
//!    end that share of the sessions (the simulator can; HAProxy only all at once, so with
//!    HAProxy and no `restart` there is one batch: `shutdown sessions server`);
//! 4. **maint**: once sessions reach zero (within `session_timeout`), the servers are set
//!    `maint`.
//!
//! `restore: true` mirrors it: the servers are set `ready`, then their weights rise from 0 to
//! `to_weight` in paced steps (closed loop optional); new sessions come back by themselves.
//!
//! A resumed attempt continues after its last committed step (a batch is never restarted
//! twice by Levee unless its step was in flight during a crash; with a `restart` command that
//! then waits for an operator unless the task says `idempotent: true`).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::context::{StageContext, StageOutcome, StageOutput, Step};
use crate::hook::{DEFAULT_HOOK_TIMEOUT_MS, Hook, MAX_HOOK_TIMEOUT_MS, parse_hook, run_hook};
use crate::ramp::{Amount, parse_pace, wait_between_steps};
use crate::traffic::{
    BACKEND_ARG, BREACH_HOLD_ARG, BUDGET_ARG, BUDGET_LIMIT_ARG, BudgetArgs, FIRST_STEP_ARG,
    GROW_ARG, HAPROXY_ARG, HEALTH_BELOW_ARG, HEALTH_QUERY_ARG, HealthLoop, MAX_STEP_ARG,
    SERVERS_ARG, SLOW_AT_ARG, STEP_ARG, TrafficBackend, TrafficKit, Via, WAIT_ARG, WeightMove,
    failed, finished, move_weights, open_sessions, parse_budget, parse_health, parse_steps,
    parse_targets, parse_via, parse_wait, say, set_states, wait_for_sessions, weight,
};
use crate::wait::MAX_WAIT_MS;

/// How long sessions may take to fall below the threshold (and, after the teardown, to
/// reach zero) when the task does not say (`session_timeout`), in milliseconds.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 30 * 60_000;

/// Batches the remaining sessions are torn down in when the task does not say (`batches`).
pub const DEFAULT_TEARDOWN_BATCHES: u64 = 4;

/// The most batches one teardown may take.
pub const MAX_TEARDOWN_BATCHES: u64 = 1_000;

pub(crate) const STICKY_ARGS: &[ArgSpec] = &[
    HAPROXY_ARG,
    BACKEND_ARG,
    SERVERS_ARG,
    ArgSpec {
        name: "sessions_below",
        kind: ArgKind::Int,
        required: false,
        description: "Draining: wait until fewer sessions than this are left before tearing \
                      down the rest (required to drain, at least 1).",
    },
    ArgSpec {
        name: "session_timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "How long sessions may take to fall below `sessions_below`, and to reach \
                      zero after the teardown, before the task fails (30m by default).",
    },
    ArgSpec {
        name: "restart",
        kind: ArgKind::Any,
        required: false,
        description: "Tears down one batch: a command `[program, arg, ...]` or an http:// URL \
                      to POST to, run once per server with `{server}`, `{batch}`, `{batches}`. \
                      Without it the backend ends the sessions itself.",
    },
    ArgSpec {
        name: "batches",
        kind: ArgKind::Int,
        required: false,
        description: "How many batches the remaining sessions are torn down in (4 by default; \
                      1 on HAProxy without `restart`).",
    },
    WAIT_ARG,
    STEP_ARG,
    FIRST_STEP_ARG,
    ArgSpec {
        name: "restore",
        kind: ArgKind::Bool,
        required: false,
        description: "Restore instead: set the servers `ready`, then raise their weights to \
                      `to_weight` in paced steps.",
    },
    ArgSpec {
        name: "to_weight",
        kind: ArgKind::Int,
        required: false,
        description: "Restoring: the weight after the last step (required with `restore`).",
    },
    ArgSpec {
        name: "hook_timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "How long one `restart` may run (1m by default, at most 1h).",
    },
    ArgSpec {
        name: "idempotent",
        kind: ArgKind::Bool,
        required: false,
        description: "Your word that running `restart` twice for a batch is safe (false by \
                      default: a batch in flight during a crash then waits for an operator).",
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
enum Mode {
    Drain {
        sessions_below: u64,
        restart: Option<Hook>,
        batches: u64,
    },
    Restore {
        to: u32,
    },
}

#[derive(Clone, Debug)]
struct StickyArgs {
    via: Via,
    servers: Vec<String>,
    mode: Mode,
    session_timeout: Duration,
    step: Amount,
    first_step: Amount,
    wait: Duration,
    hook_timeout: Duration,
    idempotent: bool,
    health: Option<HealthLoop>,
    budget: Option<BudgetArgs>,
}

fn parse(args: &Value) -> Result<StickyArgs, ArgError> {
    let parsed = Args::checked(STICKY_ARGS, args)?;
    let via = parse_via(&parsed)?;
    let servers = parse_targets(&parsed, "servers")?;
    let restore = parsed.bool("restore")?.unwrap_or(false);
    let (step, first_step) = parse_steps(&parsed, Some(Amount::Fraction(1.0)))?;
    let mode = if restore {
        for drain_only in ["sessions_below", "restart", "batches"] {
            if parsed.get(drain_only).is_some() {
                return Err(ArgError::invalid(
                    drain_only,
                    "only when draining; a restore lets sessions come back by themselves",
                ));
            }
        }
        let to = weight(&parsed, "to_weight")?.ok_or_else(|| ArgError::Missing {
            argument: "to_weight".to_string(),
            description: "restoring raises the weights to `to_weight`".to_string(),
        })?;
        Mode::Restore { to }
    } else {
        if parsed.get("to_weight").is_some() {
            return Err(ArgError::invalid(
                "to_weight",
                "only with `restore`; draining always ends at weight 0",
            ));
        }
        let sessions_below = match parsed.get("sessions_below").map(Value::as_u64) {
            Some(Some(n)) if n >= 1 => n,
            Some(_) => {
                return Err(ArgError::invalid(
                    "sessions_below",
                    "a whole number of sessions, at least 1",
                ));
            }
            None => {
                return Err(ArgError::Missing {
                    argument: "sessions_below".to_string(),
                    description: STICKY_ARGS[3].description.to_string(),
                });
            }
        };
        let restart = parsed
            .get("restart")
            .map(|value| parse_hook("restart", value))
            .transpose()?;
        let default_batches = match (&via, &restart) {
            (Via::Haproxy(_), None) => 1,
            _ => DEFAULT_TEARDOWN_BATCHES,
        };
        let batches = match parsed.get("batches").map(Value::as_u64) {
            None => default_batches,
            Some(Some(n)) if (1..=MAX_TEARDOWN_BATCHES).contains(&n) => n,
            Some(_) => {
                return Err(ArgError::invalid(
                    "batches",
                    format!("a whole number from 1 to {MAX_TEARDOWN_BATCHES}"),
                ));
            }
        };
        if matches!(via, Via::Haproxy(_)) && restart.is_none() && batches > 1 {
            return Err(ArgError::invalid(
                "batches",
                "HAProxy ends a server's sessions only all at once; give `restart` to tear \
                 them down in batches, or `batches: 1`",
            ));
        }
        Mode::Drain {
            sessions_below,
            restart,
            batches,
        }
    };
    Ok(StickyArgs {
        via,
        servers,
        mode,
        session_timeout: Duration::from_millis(
            parsed
                .duration_ms("session_timeout", MAX_WAIT_MS)?
                .unwrap_or(DEFAULT_SESSION_TIMEOUT_MS),
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

/// Drains sticky traffic: new sessions elsewhere, wait, tear down the rest in paced batches;
/// or restores it. See the module docs.
#[derive(Debug, Default)]
pub struct StickyDrainStage {
    kit: TrafficKit,
}

impl StickyDrainStage {
    /// A stage using `kit`'s backends, metric source and budgets.
    pub fn new(kit: TrafficKit) -> StickyDrainStage {
        StickyDrainStage { kit }
    }

    fn parse(&self, args: &Value) -> Result<StickyArgs, ArgError> {
        let sticky = parse(args)?;
        self.kit.check_via(&sticky.via)?;
        Ok(sticky)
    }
}

/// Where a resumed attempt continues: the phase of its last committed step and that step.
pub(crate) fn resumed(ctx: &StageContext) -> Option<(u64, String, Value)> {
    let step = ctx.resume_from.as_ref()?;
    let phase = step.state.get("phase")?.as_str()?.to_string();
    Some((step.index + 1, phase, step.state.clone()))
}

/// Commits a step of a multi-phase stage.
pub(crate) async fn commit(
    ctx: &StageContext,
    index: u64,
    state: Value,
    data: &Value,
) -> Result<u64, StageOutcome> {
    match ctx.steps.report(Step { index, state }).await {
        Ok(()) => Ok(index + 1),
        Err(error) => Err(StageOutcome::Failed {
            error: format!("step {} was done but not journaled: {error}", index + 1),
            retryable: true,
            output: StageOutput {
                captured: ctx.output.snapshot(),
                data: data.clone(),
            },
        }),
    }
}

pub(crate) fn tag(phase: &str) -> Map<String, Value> {
    let mut tag = Map::new();
    tag.insert("phase".to_string(), json!(phase));
    tag
}

#[async_trait]
impl Stage for StickyDrainStage {
    fn name(&self) -> &'static str {
        "sticky_drain"
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn idempotent_for(&self, args: &Value) -> bool {
        parse(args).is_ok_and(|sticky| match sticky.mode {
            Mode::Drain {
                restart: Some(_), ..
            } => sticky.idempotent,
            _ => true,
        })
    }

    fn args(&self) -> &'static [ArgSpec] {
        STICKY_ARGS
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
        let sticky = match self.parse(args) {
            Ok(sticky) => sticky,
            Err(error) => return StageOutcome::invalid_args(error),
        };
        let (backend, _budget) = match self
            .kit
            .prepare(&ctx, &sticky.via, sticky.budget.as_ref())
            .await
        {
            Ok(prepared) => prepared,
            Err(outcome) => return outcome,
        };
        let run = Run {
            sticky: &sticky,
            backend: backend.as_ref(),
            kit: &self.kit,
        };
        let outcome = match &sticky.mode {
            Mode::Drain {
                sessions_below,
                restart,
                batches,
            } => {
                run.drain(ctx.clone(), *sessions_below, restart.as_ref(), *batches)
                    .await
            }
            Mode::Restore { to } => run.restore(ctx.clone(), *to).await,
        };
        finished(&ctx, outcome)
    }
}

struct Run<'a> {
    sticky: &'a StickyArgs,
    backend: &'a dyn TrafficBackend,
    kit: &'a TrafficKit,
}

/// The order of a drain's phases, to skip what a resumed attempt already committed.
fn drain_rank(phase: &str) -> u8 {
    match phase {
        "weights" => 0,
        "drain" => 1,
        "teardown" => 2,
        "maint" => 3,
        _ => 0,
    }
}

impl Run<'_> {
    async fn drain(
        &self,
        mut ctx: StageContext,
        sessions_below: u64,
        restart: Option<&Hook>,
        batches: u64,
    ) -> Result<Value, StageOutcome> {
        let servers = &self.sticky.servers;
        let resumed = resumed(&ctx);
        let (mut index, phase, state) =
            resumed
                .clone()
                .unwrap_or((0, "start".to_string(), Value::Null));
        if resumed.is_some() {
            say(&ctx, format!("resuming after step {index} ({phase})"));
        }
        let data = |phase: &str| json!({ "phase": phase, "servers": servers });
        // 1. Weights to 0, then drain: no new sessions.
        if resumed.is_none() || phase == "weights" {
            let (from, current) = if phase == "weights" {
                (
                    state["from"].as_u64().unwrap_or(0) as u32,
                    state["weight"].as_u64().unwrap_or(0) as u32,
                )
            } else {
                match self.backend.status(&servers[0]).await {
                    Ok(status) => (status.weight, status.weight),
                    Err(error) => return Err(failed(error, &ctx, data("weights"))),
                }
            };
            let plan = WeightMove {
                servers,
                from,
                to: 0,
                step: self.sticky.step,
                first_step: self.sticky.first_step,
                wait: self.sticky.wait,
                health: self.sticky.health.as_ref(),
                tag: tag("weights"),
            };
            index = move_weights(
                &mut ctx,
                &plan,
                self.backend,
                self.kit.metrics.as_ref(),
                index,
                current,
            )
            .await?;
        }
        if drain_rank(&phase) < 1 || phase == "weights" {
            set_states(&ctx, self.backend, servers, "drain", &data("drain")).await?;
            let open = open_sessions(&ctx, self.backend, servers, &data("drain")).await?;
            say(
                &ctx,
                format!(
                    "{} at weight 0 and draining: new sessions go elsewhere; {open} open",
                    servers.join(", ")
                ),
            );
            index = commit(
                &ctx,
                index,
                json!({ "phase": "drain", "sessions": open }),
                &data("drain"),
            )
            .await?;
        }
        // 2. Wait for sessions to end by themselves, then 3. tear down the rest in batches.
        let mut done_batches = 0;
        if phase == "teardown" {
            done_batches = state["batch"].as_u64().unwrap_or(0);
        } else if drain_rank(&phase) < 2 {
            let open = wait_for_sessions(
                &ctx,
                self.backend,
                servers,
                sessions_below - 1,
                self.sticky.session_timeout,
                &data("wait"),
            )
            .await?;
            say(
                &ctx,
                format!(
                    "{open} sessions left (below {sessions_below}); tearing down the rest in \
                     {batches} batches"
                ),
            );
        }
        if drain_rank(&phase) < 3 {
            for batch in done_batches + 1..=batches {
                if batch > done_batches + 1
                    && let Some(stopped) = wait_between_steps(&mut ctx, self.sticky.wait).await
                {
                    return Err(stopped);
                }
                let mut ended = 0;
                for server in servers {
                    match restart {
                        Some(hook) => {
                            let values = [
                                ("server", server.clone()),
                                ("batch", batch.to_string()),
                                ("batches", batches.to_string()),
                            ];
                            run_hook(
                                &ctx,
                                &format!("restart batch {batch} of {batches}"),
                                hook,
                                &values,
                                self.sticky.hook_timeout,
                            )
                            .await
                            .map_err(|error| failed(error, &ctx, data("teardown")))?;
                        }
                        None => {
                            // The remaining batches share what is left equally.
                            let fraction = 1.0 / (batches - batch + 1) as f64;
                            ended += self
                                .backend
                                .end_sessions(server, fraction)
                                .await
                                .map_err(|error| failed(error, &ctx, data("teardown")))?;
                        }
                    }
                }
                let open = open_sessions(&ctx, self.backend, servers, &data("teardown")).await?;
                say(
                    &ctx,
                    format!(
                        "teardown batch {batch} of {batches}: {}; {open} sessions open",
                        if restart.is_some() {
                            "restarted".to_string()
                        } else {
                            format!("{ended} sessions ended")
                        }
                    ),
                );
                index = commit(
                    &ctx,
                    index,
                    json!({ "phase": "teardown", "batch": batch, "batches": batches, "sessions": open }),
                    &data("teardown"),
                )
                .await?;
            }
            // 4. Nothing left: maintenance.
            wait_for_sessions(
                &ctx,
                self.backend,
                servers,
                0,
                self.sticky.session_timeout,
                &data("maint"),
            )
            .await?;
            set_states(&ctx, self.backend, servers, "maint", &data("maint")).await?;
            say(
                &ctx,
                format!("{} drained and in maintenance", servers.join(", ")),
            );
            index = commit(&ctx, index, json!({ "phase": "maint" }), &data("maint")).await?;
        }
        Ok(json!({ "phase": "maint", "servers": servers, "steps": index }))
    }

    async fn restore(&self, mut ctx: StageContext, to: u32) -> Result<Value, StageOutcome> {
        let servers = &self.sticky.servers;
        let (index, from, current) = match resumed(&ctx) {
            Some((index, _, state)) => (
                index,
                state["from"].as_u64().unwrap_or(0) as u32,
                state["weight"].as_u64().unwrap_or(0) as u32,
            ),
            None => {
                set_states(&ctx, self.backend, servers, "ready", &Value::Null).await?;
                say(&ctx, format!("{} set ready", servers.join(", ")));
                let weight = match self.backend.status(&servers[0]).await {
                    Ok(status) => status.weight,
                    Err(error) => return Err(failed(error, &ctx, Value::Null)),
                };
                (0, weight, weight)
            }
        };
        let plan = WeightMove {
            servers,
            from,
            to,
            step: self.sticky.step,
            first_step: self.sticky.first_step,
            wait: self.sticky.wait,
            health: self.sticky.health.as_ref(),
            tag: tag("weights"),
        };
        let index = move_weights(
            &mut ctx,
            &plan,
            self.backend,
            self.kit.metrics.as_ref(),
            index,
            current,
        )
        .await?;
        Ok(json!({ "weight": to, "servers": servers, "steps": index }))
    }
}
