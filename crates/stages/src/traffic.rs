//! The `traffic_shift` stage: move load-balancer weights in paced, committed steps, then
//! drain and take servers out (or, restoring, put them back in and raise their weights).
//!
//! Weights live behind [`TrafficBackend`]: HAProxy's runtime API here, the simulator later.
//! Each step sets every target to the step's weight and is committed with it; before each
//! step the stage reads the targets back, and a target whose weight is not the committed one
//! (HAProxy was reloaded and forgot the runtime change) is set back first and the output says
//! so. Setting an absolute weight twice is harmless, so the stage is idempotent.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::context::{StageContext, StageOutcome, StageOutput, Step};
use crate::haproxy::{Haproxy, HaproxySocket, MAX_HAPROXY_WEIGHT};
use crate::ramp::{Amount, advance, parse_pace, wait_between_steps};
use crate::wait::MAX_WAIT_MS;

/// Most servers one task shifts together.
pub const MAX_TRAFFIC_TARGETS: usize = 256;

/// How long draining servers may keep sessions before the task fails, when the task does not
/// say (`drain_timeout`), in milliseconds.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 5 * 60_000;

/// How often draining servers' sessions are counted, in milliseconds.
pub const DRAIN_POLL_INTERVAL_MS: u64 = 500;

/// What a traffic backend says about one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// The weight in force.
    pub weight: u32,
    /// The weight the configuration gives it.
    pub initial_weight: u32,
    pub maintenance: bool,
    pub draining: bool,
    /// Passing its health checks (or not checked).
    pub up: bool,
    /// Current sessions.
    pub sessions: u64,
}

/// Where traffic weights are read and set.
#[async_trait]
pub trait TrafficBackend: Send + Sync {
    /// `haproxy`, `sim`, ...
    fn name(&self) -> &'static str;
    /// A server's state; the target is `BACKEND/SERVER`.
    async fn status(&self, target: &str) -> Result<ServerStatus, String>;
    async fn set_weight(&self, target: &str, weight: u32) -> Result<(), String>;
    /// `ready`, `drain` or `maint`.
    async fn set_state(&self, target: &str, state: &str) -> Result<(), String>;
}

pub(crate) const TRAFFIC_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "haproxy",
        kind: ArgKind::String,
        required: false,
        description: "HAProxy's runtime API: a socket path or HOST:PORT (its `stats socket`, at \
                      `level admin`). Give either `haproxy` or `backend`.",
    },
    ArgSpec {
        name: "backend",
        kind: ArgKind::String,
        required: false,
        description: "A traffic backend this server was started with, by name (`sim` for the \
                      simulated fleet of `levee demo`, whose servers are SERVICE/DC).",
    },
    ArgSpec {
        name: "servers",
        kind: ArgKind::StringList,
        required: true,
        description: "The servers to shift (BACKEND/SERVER on HAProxy, SERVICE/DC on the \
                      simulator); each step sets them all.",
    },
    ArgSpec {
        name: "to_weight",
        kind: ArgKind::Int,
        required: true,
        description: "The weight after the last step (0 to drain, up to 256).",
    },
    ArgSpec {
        name: "from_weight",
        kind: ArgKind::Int,
        required: false,
        description: "The weight before the first step; read from the first server when left \
                      out.",
    },
    ArgSpec {
        name: "step",
        kind: ArgKind::Any,
        required: true,
        description: "How far each step moves the weight: a number, or a percentage of the \
                      whole shift such as `20%`. Operators may change it while it runs.",
    },
    ArgSpec {
        name: "first_step",
        kind: ArgKind::Any,
        required: false,
        description: "How far the first step moves (`step` by default); keep it small.",
    },
    ArgSpec {
        name: "wait",
        kind: ArgKind::Duration,
        required: false,
        description: "How long to wait after each step (none by default). Operators may \
                      change it while it runs.",
    },
    ArgSpec {
        name: "ready_first",
        kind: ArgKind::Bool,
        required: false,
        description: "Restoring: set the servers `ready` before raising their weights.",
    },
    ArgSpec {
        name: "then_maint",
        kind: ArgKind::Bool,
        required: false,
        description: "Draining: once at the final weight, set the servers `drain`, wait until \
                      their sessions reach zero, then set them `maint`.",
    },
    ArgSpec {
        name: "drain_timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "With `then_maint`: how long sessions may take to reach zero before the \
                      task fails (5m by default).",
    },
];

#[derive(Clone, Debug)]
enum Via {
    Haproxy(HaproxySocket),
    Named(String),
}

#[derive(Clone, Debug)]
struct ShiftArgs {
    via: Via,
    servers: Vec<String>,
    from: Option<u32>,
    to: u32,
    step: Amount,
    first_step: Amount,
    wait: Duration,
    ready_first: bool,
    then_maint: bool,
    drain_timeout: Duration,
}

fn weight(parsed: &Args<'_>, name: &str) -> Result<Option<u32>, ArgError> {
    let Some(value) = parsed.get(name) else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(w) if w <= u64::from(MAX_HAPROXY_WEIGHT) => Ok(Some(w as u32)),
        _ => Err(ArgError::invalid(
            name,
            format!("a weight is a whole number from 0 to {MAX_HAPROXY_WEIGHT}"),
        )),
    }
}

fn parse(args: &Value) -> Result<ShiftArgs, ArgError> {
    let parsed = Args::checked(TRAFFIC_ARGS, args)?;
    let via = match (parsed.string("haproxy")?, parsed.string("backend")?) {
        (Some(socket), None) => Via::Haproxy(
            HaproxySocket::parse(socket).map_err(|why| ArgError::invalid("haproxy", why))?,
        ),
        (None, Some(name)) => Via::Named(name.to_string()),
        (Some(_), Some(_)) => {
            return Err(ArgError::invalid(
                "backend",
                "give either `haproxy` or `backend`, not both",
            ));
        }
        (None, None) => {
            return Err(ArgError::Missing {
                argument: "haproxy".to_string(),
                description: TRAFFIC_ARGS[0].description.to_string(),
            });
        }
    };
    let servers = parsed.string_list("servers")?.unwrap_or_default();
    if servers.is_empty() {
        return Err(ArgError::invalid(
            "servers",
            "the list is empty; name at least one BACKEND/SERVER (never \"all\")",
        ));
    }
    if servers.len() > MAX_TRAFFIC_TARGETS {
        return Err(ArgError::invalid(
            "servers",
            format!("at most {MAX_TRAFFIC_TARGETS} servers per task"),
        ));
    }
    for server in &servers {
        let valid = server
            .split_once('/')
            .is_some_and(|(b, s)| !b.is_empty() && !s.is_empty() && !s.contains('/'))
            && !server.contains(char::is_whitespace)
            && !server.contains(';');
        if !valid {
            return Err(ArgError::invalid(
                "servers",
                format!("`{server}` is not BACKEND/SERVER"),
            ));
        }
    }
    let to = weight(&parsed, "to_weight")?.ok_or_else(|| ArgError::Missing {
        argument: "to_weight".to_string(),
        description: TRAFFIC_ARGS[3].description.to_string(),
    })?;
    let step = Amount::parse(
        "step",
        parsed.get("step").ok_or_else(|| ArgError::Missing {
            argument: "step".to_string(),
            description: TRAFFIC_ARGS[5].description.to_string(),
        })?,
    )?;
    let first_step = match parsed.get("first_step") {
        Some(value) => Amount::parse("first_step", value)?,
        None => step,
    };
    Ok(ShiftArgs {
        via,
        servers,
        from: weight(&parsed, "from_weight")?,
        to,
        step,
        first_step,
        wait: Duration::from_millis(parsed.duration_ms("wait", MAX_WAIT_MS)?.unwrap_or(0)),
        ready_first: parsed.bool("ready_first")?.unwrap_or(false),
        then_maint: parsed.bool("then_maint")?.unwrap_or(false),
        drain_timeout: Duration::from_millis(
            parsed
                .duration_ms("drain_timeout", MAX_WAIT_MS)?
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS),
        ),
    })
}

/// The next whole weight toward `to`: at least one unit, never past `to`.
fn next_weight(current: u32, to: u32, size: f64) -> u32 {
    let moved = advance(f64::from(current), f64::from(to), size.max(1.0)).round() as u32;
    if moved == current && current != to {
        if to > current {
            current + 1
        } else {
            current - 1
        }
    } else {
        moved
    }
}

/// Shifts weights in paced, committed steps, on HAProxy or a named backend; see the module
/// docs.
#[derive(Default)]
pub struct TrafficShiftStage {
    backends: std::collections::BTreeMap<String, Arc<dyn TrafficBackend>>,
}

impl std::fmt::Debug for TrafficShiftStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficShiftStage")
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TrafficShiftStage {
    /// A stage that also knows `backend` by its name (the simulator, say).
    pub fn with_backend(mut self, backend: Arc<dyn TrafficBackend>) -> TrafficShiftStage {
        self.backends.insert(backend.name().to_string(), backend);
        self
    }

    fn parse(&self, args: &Value) -> Result<ShiftArgs, ArgError> {
        let shift = parse(args)?;
        if let Via::Named(name) = &shift.via
            && !self.backends.contains_key(name)
        {
            return Err(ArgError::invalid(
                "backend",
                format!(
                    "this server has no traffic backend `{name}`{}",
                    if self.backends.is_empty() {
                        "; use `haproxy: SOCKET`".to_string()
                    } else {
                        format!(
                            "; it has {}",
                            self.backends.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                ),
            ));
        }
        Ok(shift)
    }
}

fn failed(error: String, ctx: &StageContext, data: Value) -> StageOutcome {
    StageOutcome::Failed {
        error,
        // Every change is an absolute setting, so trying again is safe.
        retryable: true,
        output: StageOutput {
            captured: ctx.output.snapshot(),
            data,
        },
    }
}

#[async_trait]
impl Stage for TrafficShiftStage {
    fn name(&self) -> &'static str {
        "traffic_shift"
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn args(&self) -> &'static [ArgSpec] {
        TRAFFIC_ARGS
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
        let shift = match self.parse(args) {
            Ok(shift) => shift,
            Err(error) => return StageOutcome::invalid_args(error),
        };
        let backend: Arc<dyn TrafficBackend> = match &shift.via {
            Via::Haproxy(socket) => Arc::new(Haproxy::new(socket.clone())),
            Via::Named(name) => self.backends[name].clone(),
        };
        run_shift(ctx, &shift, backend.as_ref()).await
    }
}

async fn run_shift(
    mut ctx: StageContext,
    shift: &ShiftArgs,
    backend: &dyn TrafficBackend,
) -> StageOutcome {
    let say = |ctx: &StageContext, line: String| ctx.output.write(format!("{line}\n").as_bytes());
    // Where to continue: the weight and start of the last committed step, or the beginning.
    let resumed = ctx.resume_from.as_ref().and_then(|step| {
        let weight = step.state.get("weight")?.as_u64()? as u32;
        let from = step.state.get("from")?.as_u64()? as u32;
        Some((step.index + 1, weight, from))
    });
    let (mut index, mut current, from) = match resumed {
        Some(resumed) => resumed,
        None => {
            if shift.ready_first {
                for server in &shift.servers {
                    if let Err(error) = backend.set_state(server, "ready").await {
                        return failed(error, &ctx, Value::Null);
                    }
                }
                say(&ctx, format!("{} set ready", shift.servers.join(", ")));
            }
            let from = match shift.from {
                Some(from) => from,
                None => match backend.status(&shift.servers[0]).await {
                    Ok(status) => status.weight,
                    Err(error) => return failed(error, &ctx, Value::Null),
                },
            };
            (0, from, from)
        }
    };
    if index > 0 {
        say(
            &ctx,
            format!("resuming after step {index} at weight {current}"),
        );
    }
    let span = f64::from(from.abs_diff(shift.to));
    let data = |weight: u32, steps: u64| json!({ "from": from, "to": shift.to, "weight": weight, "steps": steps });
    while current != shift.to {
        // The committed weight must still be in force: HAProxy forgets runtime changes on a
        // reload.
        if index > 0 {
            for server in &shift.servers {
                match backend.status(server).await {
                    Ok(status) if status.weight == current => {}
                    Ok(status) => {
                        say(
                            &ctx,
                            format!(
                                "{server} has weight {} instead of the committed {current} \
                                 (reloaded?); setting it back",
                                status.weight
                            ),
                        );
                        if let Err(error) = backend.set_weight(server, current).await {
                            return failed(error, &ctx, data(current, index));
                        }
                    }
                    Err(error) => return failed(error, &ctx, data(current, index)),
                }
            }
        }
        let pace = parse_pace(&ctx.pace.current()).unwrap_or_default();
        let size = if index == 0 {
            shift.first_step.size(span)
        } else {
            pace.step.unwrap_or(shift.step).size(span)
        };
        let next = next_weight(current, shift.to, size);
        for server in &shift.servers {
            if let Err(error) = backend.set_weight(server, next).await {
                return failed(error, &ctx, data(current, index));
            }
        }
        say(&ctx, format!("step {}: weight {next}", index + 1));
        let committed = ctx
            .steps
            .report(Step {
                index,
                state: json!({ "weight": next, "from": from }),
            })
            .await;
        if let Err(error) = committed {
            return StageOutcome::Failed {
                error: format!("step {} was done but not journaled: {error}", index + 1),
                retryable: true,
                output: StageOutput {
                    captured: ctx.output.snapshot(),
                    data: data(next, index + 1),
                },
            };
        }
        current = next;
        index += 1;
        if current == shift.to {
            break;
        }
        if let Some(stopped) = wait_between_steps(&mut ctx, shift.wait).await {
            return stopped;
        }
    }
    if shift.then_maint {
        for server in &shift.servers {
            if let Err(error) = backend.set_state(server, "drain").await {
                return failed(error, &ctx, data(current, index));
            }
        }
        let gives_up = Instant::now() + shift.drain_timeout;
        loop {
            let mut open = 0_u64;
            for server in &shift.servers {
                match backend.status(server).await {
                    Ok(status) => open += status.sessions,
                    Err(error) => return failed(error, &ctx, data(current, index)),
                }
            }
            if open == 0 {
                break;
            }
            if Instant::now() >= gives_up {
                return failed(
                    format!(
                        "{open} sessions still open on {} after {} ms of draining",
                        shift.servers.join(", "),
                        shift.drain_timeout.as_millis()
                    ),
                    &ctx,
                    data(current, index),
                );
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(DRAIN_POLL_INTERVAL_MS)) => {}
                () = ctx.cancel.cancelled() => return StageOutcome::Cancelled,
                () = sleep_until(ctx.deadline) => return StageOutcome::TimedOut,
            }
        }
        for server in &shift.servers {
            if let Err(error) = backend.set_state(server, "maint").await {
                return failed(error, &ctx, data(current, index));
            }
        }
        say(
            &ctx,
            format!("{} drained and in maintenance", shift.servers.join(", ")),
        );
    }
    StageOutcome::Succeeded {
        output: StageOutput {
            captured: ctx.output.snapshot(),
            data: data(current, index),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_weights_always_move_and_land_on_the_target() {
        assert_eq!(next_weight(100, 0, 10.0), 90);
        assert_eq!(next_weight(5, 0, 10.0), 0);
        assert_eq!(next_weight(10, 0, 0.2), 9);
        assert_eq!(next_weight(0, 100, 50.0), 50);
    }

    #[test]
    fn arguments_name_what_is_wrong() {
        let error = |args: Value| parse(&args).unwrap_err().to_string();
        let base = json!({ "haproxy": "/run/h.sock", "servers": ["web/s1"], "to_weight": 0, "step": "20%" });
        assert!(parse(&base).is_ok());
        let mut empty = base.clone();
        empty["servers"] = json!([]);
        assert!(error(empty).contains("never \"all\""));
        let mut heavy = base.clone();
        heavy["to_weight"] = json!(300);
        assert!(error(heavy).contains("0 to 256"));
        let mut bad = base.clone();
        bad["servers"] = json!(["web s1"]);
        assert!(error(bad).contains("BACKEND/SERVER"));
        let named =
            json!({ "backend": "sim", "servers": ["web/east"], "to_weight": 0, "step": 50 });
        let refused = TrafficShiftStage::default()
            .parse(&named)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("no traffic backend `sim`"), "{refused}");
    }
}
