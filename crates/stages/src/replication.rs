//! The `replication` stage: move a replicated service's reads out of a datacenter and stop
//! replicating into it, or (restoring) start replication again with its catch-up throttled
//! to a bandwidth budget and bring the reads back once it has caught up.
//!
//! Draining (`direction: drain`), in committed steps: the servers' weights (their reads) go to
//! 0 in paced steps (closed loop optional, as `traffic_shift`); then replication is stopped,
//! by the `stop` hook (a command or an `http://` URL, with `{server}`) or, without one, by the
//! backend (the simulator).
//!
//! Restoring (`direction: restore`): the servers are set `ready` (at weight 0, so no read
//! reaches them yet), replication starts with its catch-up capped at `bandwidth_mbps`
//! (the `start` hook gets `{server}` and `{bandwidth_mbps}`; the backend gets the cap) —
//! catching up unthrottled is how a restore saturates a datacenter's network; then the stage
//! waits until `lag_query` is below `lag_below` (re-read every [`LAG_POLL_INTERVAL_MS`], for
//! at most `catchup_timeout`; no data or NaN fails closed), and only then raises the weights
//! to `to_weight` in paced steps.
//!
//! Stopping or starting replication twice is harmless, so the stage is idempotent unless its
//! hooks say otherwise (`idempotent: false`).

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
    BACKEND_ARG, BREACH_HOLD_ARG, BUDGET_ARG, BUDGET_LIMIT_ARG, BudgetArgs, FIRST_STEP_ARG,
    GROW_ARG, HAPROXY_ARG, HEALTH_BELOW_ARG, HEALTH_QUERY_ARG, HealthLoop, MAX_STEP_ARG,
    Replication, SERVERS_ARG, SLOW_AT_ARG, STEP_ARG, TrafficBackend, TrafficKit, Via, WAIT_ARG,
    WeightMove, failed, move_weights, parse_budget, parse_health, parse_steps, parse_targets,
    parse_via, parse_wait, say, set_states, weight,
};
use crate::wait::MAX_WAIT_MS;

/// How long the catch-up may take before the task fails, when the task does not say
/// (`catchup_timeout`), in milliseconds.
pub const DEFAULT_CATCHUP_TIMEOUT_MS: u64 = 60 * 60_000;

/// How often the replication lag is read while catching up, in milliseconds.
pub const LAG_POLL_INTERVAL_MS: u64 = 5_000;

/// The largest `bandwidth_mbps` accepted (a 100 Gbit/s link), in megabytes per second.
pub const MAX_BANDWIDTH_MBPS: f64 = 12_500.0;

/// The step of the reads' weights when the task does not say.
const DEFAULT_READ_STEP: Amount = Amount::Fraction(0.25);

pub(crate) const REPLICATION_ARGS: &[ArgSpec] = &[
    HAPROXY_ARG,
    BACKEND_ARG,
    SERVERS_ARG,
    ArgSpec {
        name: "direction",
        kind: ArgKind::String,
        required: true,
        description: "`drain` (reads away, then stop replication) or `restore` (start \
                      replication throttled, wait for the lag, then reads back).",
    },
    ArgSpec {
        name: "stop",
        kind: ArgKind::Any,
        required: false,
        description: "Draining: stops replication into a server: a command or an http:// URL \
                      (with `{server}`); the backend's own when left out.",
    },
    ArgSpec {
        name: "start",
        kind: ArgKind::Any,
        required: false,
        description: "Restoring: starts replication into a server with its catch-up capped: a \
                      command or an http:// URL (with `{server}` and `{bandwidth_mbps}`); the \
                      backend's own when left out.",
    },
    ArgSpec {
        name: "bandwidth_mbps",
        kind: ArgKind::Number,
        required: false,
        description: "Restoring: the catch-up's bandwidth budget per server, in megabytes per \
                      second (required to restore).",
    },
    ArgSpec {
        name: "lag_query",
        kind: ArgKind::String,
        required: false,
        description: "Restoring: a metric query with the replication lag (required to \
                      restore).",
    },
    ArgSpec {
        name: "lag_below",
        kind: ArgKind::Number,
        required: false,
        description: "Restoring: reads come back only once `lag_query` is below this.",
    },
    ArgSpec {
        name: "catchup_timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "Restoring: how long the lag may take to fall below `lag_below` before \
                      the task fails (1h by default).",
    },
    ArgSpec {
        name: "to_weight",
        kind: ArgKind::Int,
        required: false,
        description: "Restoring: the reads' weight after the last step (required to restore).",
    },
    STEP_ARG,
    FIRST_STEP_ARG,
    WAIT_ARG,
    ArgSpec {
        name: "hook_timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "How long one `stop` or `start` may run (1m by default, at most 1h).",
    },
    ArgSpec {
        name: "idempotent",
        kind: ArgKind::Bool,
        required: false,
        description: "Whether running a hook twice is safe (true by default: stopping or \
                      starting replication twice changes nothing).",
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
enum Direction {
    Drain {
        stop: Option<Hook>,
    },
    Restore {
        start: Option<Hook>,
        bandwidth_mbps: f64,
        lag_query: String,
        lag_below: f64,
        catchup_timeout: Duration,
        to: u32,
    },
}

#[derive(Clone, Debug)]
struct ReplicationArgs {
    via: Via,
    servers: Vec<String>,
    direction: Direction,
    step: Amount,
    first_step: Amount,
    wait: Duration,
    hook_timeout: Duration,
    idempotent: bool,
    health: Option<HealthLoop>,
    budget: Option<BudgetArgs>,
}

fn parse(args: &Value) -> Result<ReplicationArgs, ArgError> {
    let parsed = Args::checked(REPLICATION_ARGS, args)?;
    let via = parse_via(&parsed)?;
    let servers = parse_targets(&parsed, "servers")?;
    let (step, first_step) = parse_steps(&parsed, Some(DEFAULT_READ_STEP))?;
    let only = |names: &[&str], when: &str| -> Result<(), ArgError> {
        match names.iter().find(|name| parsed.get(name).is_some()) {
            Some(name) => Err(ArgError::invalid(name, format!("only when {when}"))),
            None => Ok(()),
        }
    };
    let direction = match parsed.required_string("direction")? {
        "drain" => {
            only(
                &[
                    "start",
                    "bandwidth_mbps",
                    "lag_query",
                    "lag_below",
                    "catchup_timeout",
                    "to_weight",
                ],
                "restoring",
            )?;
            Direction::Drain {
                stop: parsed
                    .get("stop")
                    .map(|value| parse_hook("stop", value))
                    .transpose()?,
            }
        }
        "restore" => {
            only(&["stop"], "draining")?;
            let missing = |name: &str| ArgError::Missing {
                argument: name.to_string(),
                description: REPLICATION_ARGS
                    .iter()
                    .find(|spec| spec.name == name)
                    .map_or(String::new(), |spec| spec.description.to_string()),
            };
            let bandwidth_mbps = parsed
                .number("bandwidth_mbps")?
                .ok_or_else(|| missing("bandwidth_mbps"))?;
            if !(bandwidth_mbps > 0.0 && bandwidth_mbps <= MAX_BANDWIDTH_MBPS) {
                return Err(ArgError::invalid(
                    "bandwidth_mbps",
                    format!(
                        "{bandwidth_mbps} is not above 0 and at most {MAX_BANDWIDTH_MBPS} MB/s; \
                         an unthrottled catch-up is what saturates a datacenter's network"
                    ),
                ));
            }
            let lag_query = parsed
                .string("lag_query")?
                .map(str::trim)
                .filter(|query| !query.is_empty())
                .ok_or_else(|| missing("lag_query"))?
                .to_string();
            let lag_below = parsed
                .number("lag_below")?
                .ok_or_else(|| missing("lag_below"))?;
            if !lag_below.is_finite() {
                return Err(ArgError::invalid("lag_below", "not a finite number"));
            }
            Direction::Restore {
                start: parsed
                    .get("start")
                    .map(|value| parse_hook("start", value))
                    .transpose()?,
                bandwidth_mbps,
                lag_query,
                lag_below,
                catchup_timeout: Duration::from_millis(
                    parsed
                        .duration_ms("catchup_timeout", MAX_WAIT_MS)?
                        .unwrap_or(DEFAULT_CATCHUP_TIMEOUT_MS),
                ),
                to: weight(&parsed, "to_weight")?.ok_or_else(|| missing("to_weight"))?,
            }
        }
        other => {
            return Err(ArgError::invalid(
                "direction",
                format!("`{other}` is neither `drain` nor `restore`"),
            ));
        }
    };
    Ok(ReplicationArgs {
        via,
        servers,
        direction,
        step,
        first_step,
        wait: parse_wait(&parsed, "wait")?,
        hook_timeout: Duration::from_millis(
            parsed
                .duration_ms("hook_timeout", MAX_HOOK_TIMEOUT_MS)?
                .unwrap_or(DEFAULT_HOOK_TIMEOUT_MS),
        ),
        idempotent: parsed.bool("idempotent")?.unwrap_or(true),
        health: parse_health(&parsed)?,
        budget: parse_budget(&parsed)?,
    })
}

/// Moves reads and replication out of servers or back in; see the module docs.
#[derive(Debug, Default)]
pub struct ReplicationStage {
    kit: TrafficKit,
}

impl ReplicationStage {
    /// A stage using `kit`'s backends, metric source and budgets.
    pub fn new(kit: TrafficKit) -> ReplicationStage {
        ReplicationStage { kit }
    }

    fn parse(&self, args: &Value) -> Result<ReplicationArgs, ArgError> {
        let replication = parse(args)?;
        self.kit.check_via(&replication.via)?;
        Ok(replication)
    }
}

#[async_trait]
impl Stage for ReplicationStage {
    fn name(&self) -> &'static str {
        "replication"
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn idempotent_for(&self, args: &Value) -> bool {
        parse(args).is_ok_and(|replication| replication.idempotent)
    }

    fn args(&self) -> &'static [ArgSpec] {
        REPLICATION_ARGS
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
        let replication = match self.parse(args) {
            Ok(replication) => replication,
            Err(error) => return StageOutcome::invalid_args(error),
        };
        let (backend, _budget) = match self
            .kit
            .prepare(&ctx, &replication.via, replication.budget.as_ref())
            .await
        {
            Ok(prepared) => prepared,
            Err(outcome) => return outcome,
        };
        let outcome = run(ctx.clone(), &replication, backend.as_ref(), &self.kit).await;
        finished(&ctx, outcome)
    }
}

/// Stops or starts replication into every server, through the hook or the backend.
async fn switch(
    ctx: &StageContext,
    args: &ReplicationArgs,
    backend: &dyn TrafficBackend,
    hook: Option<&Hook>,
    replication: Replication,
    data: &Value,
) -> Result<(), StageOutcome> {
    let what = match replication {
        Replication::Stopped => "stop replication",
        Replication::Running { .. } => "start replication",
    };
    for server in &args.servers {
        let done = match hook {
            Some(hook) => {
                let mut values = vec![("server", server.clone())];
                if let Replication::Running {
                    bandwidth_mbps: Some(mbps),
                } = replication
                {
                    values.push(("bandwidth_mbps", mbps.to_string()));
                }
                run_hook(ctx, what, hook, &values, args.hook_timeout).await
            }
            None => backend.set_replication(server, replication).await,
        };
        done.map_err(|error| failed(error, ctx, data.clone()))?;
    }
    Ok(())
}

async fn run(
    mut ctx: StageContext,
    args: &ReplicationArgs,
    backend: &dyn TrafficBackend,
    kit: &TrafficKit,
) -> Result<Value, StageOutcome> {
    let servers = &args.servers;
    let resumed = resumed(&ctx);
    let (mut index, phase, state) =
        resumed
            .clone()
            .unwrap_or((0, "start".to_string(), Value::Null));
    if resumed.is_some() {
        say(&ctx, format!("resuming after step {index} ({phase})"));
    }
    let data = |phase: &str| json!({ "phase": phase, "servers": servers });
    let weights = |from: u32, to: u32| WeightMove {
        servers,
        from,
        to,
        step: args.step,
        first_step: args.first_step,
        wait: args.wait,
        health: args.health.as_ref(),
        tag: tag("reads"),
    };
    match &args.direction {
        Direction::Drain { stop } => {
            if phase == "start" || phase == "reads" {
                let (from, current) = if phase == "reads" {
                    (
                        state["from"].as_u64().unwrap_or(0) as u32,
                        state["weight"].as_u64().unwrap_or(0) as u32,
                    )
                } else {
                    match backend.status(&servers[0]).await {
                        Ok(status) => (status.weight, status.weight),
                        Err(error) => return Err(failed(error, &ctx, data("reads"))),
                    }
                };
                index = move_weights(
                    &mut ctx,
                    &weights(from, 0),
                    backend,
                    kit.metrics.as_ref(),
                    index,
                    current,
                )
                .await?;
                say(
                    &ctx,
                    format!("reads moved away from {}", servers.join(", ")),
                );
                switch(
                    &ctx,
                    args,
                    backend,
                    stop.as_ref(),
                    Replication::Stopped,
                    &data("stopped"),
                )
                .await?;
                say(
                    &ctx,
                    format!("replication into {} stopped", servers.join(", ")),
                );
                index =
                    commit(&ctx, index, json!({ "phase": "stopped" }), &data("stopped")).await?;
            }
            Ok(json!({ "phase": "stopped", "servers": servers, "steps": index }))
        }
        Direction::Restore {
            start,
            bandwidth_mbps,
            lag_query,
            lag_below,
            catchup_timeout,
            to,
        } => {
            if phase == "start" {
                set_states(&ctx, backend, servers, "ready", &data("started")).await?;
                switch(
                    &ctx,
                    args,
                    backend,
                    start.as_ref(),
                    Replication::Running {
                        bandwidth_mbps: Some(*bandwidth_mbps),
                    },
                    &data("started"),
                )
                .await?;
                say(
                    &ctx,
                    format!(
                        "replication into {} started, catch-up capped at {bandwidth_mbps} MB/s",
                        servers.join(", ")
                    ),
                );
                index = commit(
                    &ctx,
                    index,
                    json!({ "phase": "started", "bandwidth_mbps": bandwidth_mbps }),
                    &data("started"),
                )
                .await?;
            }
            if phase == "start" || phase == "started" {
                let lag = wait_for_lag(
                    &ctx,
                    kit,
                    lag_query,
                    *lag_below,
                    *catchup_timeout,
                    &data("caught_up"),
                )
                .await?;
                index = commit(
                    &ctx,
                    index,
                    json!({ "phase": "caught_up", "lag": lag }),
                    &data("caught_up"),
                )
                .await?;
            }
            let (from, current) = if phase == "reads" {
                (
                    state["from"].as_u64().unwrap_or(0) as u32,
                    state["weight"].as_u64().unwrap_or(0) as u32,
                )
            } else {
                match backend.status(&servers[0]).await {
                    Ok(status) => (status.weight, status.weight),
                    Err(error) => return Err(failed(error, &ctx, data("reads"))),
                }
            };
            index = move_weights(
                &mut ctx,
                &weights(from, *to),
                backend,
                kit.metrics.as_ref(),
                index,
                current,
            )
            .await?;
            say(&ctx, format!("reads back on {}", servers.join(", ")));
            Ok(json!({ "phase": "reads", "weight": to, "servers": servers, "steps": index }))
        }
    }
}

/// Waits until the lag is below the threshold; no data, NaN or an unreachable source fail
/// closed at once (a lag Levee cannot see is not a small lag).
async fn wait_for_lag(
    ctx: &StageContext,
    kit: &TrafficKit,
    query: &str,
    below: f64,
    timeout: Duration,
    data: &Value,
) -> Result<f64, StageOutcome> {
    let started = Instant::now();
    let gives_up = started + timeout;
    let mut last_said: Option<f64> = None;
    loop {
        let answer = tokio::time::timeout(
            Duration::from_millis(crate::METRIC_QUERY_TIMEOUT_MS),
            kit.metrics.query(query),
        )
        .await;
        let lag = match answer {
            Ok(Ok(lag)) if !lag.is_nan() => lag,
            Ok(Ok(_)) => {
                return Err(failed(
                    format!("`{query}` returned NaN; failing closed before moving reads back"),
                    ctx,
                    data.clone(),
                ));
            }
            Ok(Err(error)) => {
                return Err(failed(
                    format!(
                        "replication lag unknown ({error}); failing closed before moving \
                             reads back"
                    ),
                    ctx,
                    data.clone(),
                ));
            }
            Err(_) => {
                return Err(failed(
                    format!(
                        "`{query}` did not answer within {} ms; failing closed",
                        crate::METRIC_QUERY_TIMEOUT_MS
                    ),
                    ctx,
                    data.clone(),
                ));
            }
        };
        if lag < below {
            say(
                ctx,
                format!(
                    "caught up: `{query}` is {lag}, below {below}, after {} ms",
                    started.elapsed().as_millis()
                ),
            );
            return Ok(lag);
        }
        // Say how the lag goes about once per halving, not at every poll.
        if last_said.is_none_or(|said| lag <= said / 2.0 || lag > said) {
            say(
                ctx,
                format!("catching up: `{query}` is {lag} (waiting for below {below})"),
            );
            last_said = Some(lag);
        }
        if Instant::now() >= gives_up {
            return Err(failed(
                format!(
                    "`{query}` is still {lag}, not below {below}, after {} ms of catch-up",
                    timeout.as_millis()
                ),
                ctx,
                data.clone(),
            ));
        }
        tokio::select! {
            () = sleep_until((Instant::now() + Duration::from_millis(LAG_POLL_INTERVAL_MS)).min(gives_up)) => {}
            () = ctx.cancel.cancelled() => return Err(StageOutcome::Cancelled),
            () = sleep_until(ctx.deadline) => return Err(StageOutcome::TimedOut),
        }
    }
}
