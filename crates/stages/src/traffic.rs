//! The `traffic_shift` stage: move load-balancer weights in paced, committed steps, then
//! drain and take servers out (or, restoring, put them back in and raise their weights).
//!
//! Weights live behind [`TrafficBackend`]: HAProxy's runtime API, or a named backend such as
//! the simulator. Each step sets every target to the step's weight and is committed with it;
//! before each step the stage reads the targets back, and a target whose weight is not the
//! committed one (HAProxy was reloaded and forgot the runtime change) is set back first and
//! the output says so. Setting an absolute weight twice is harmless, so the stage is
//! idempotent.
//!
//! # The closed loop
//!
//! With `health_query` and `health_below`, the stage reads that metric (through the
//! registry's [`MetricSource`]: Prometheus, the simulator) before every step and adapts:
//! - **healthy** (below `slow_at` × the limit): after the first step (always `first_step`,
//!   deliberately small) and one step of `step`, each further step grows by `grow` up to
//!   `max_step`; the wait stays as written;
//! - **near the limit** (from `slow_at` × the limit up to the limit): the step shrinks by
//!   `grow` (never below `first_step`) and the wait after it is [`NEAR_LIMIT_WAIT_FACTOR`]
//!   times as long, so the metric has time to show what the step did;
//! - **at or above the limit**: no further step. The stage holds at the weight it reached,
//!   re-reading the metric every [`HEALTH_HOLD_POLL_MS`], for at most `breach_hold` (none by
//!   default); if the metric does not come back below the limit in that time the attempt
//!   fails with the value, the limit and the weight it stopped at, and the task stalls for an
//!   operator. Nothing is undone: a half-shifted service is healthier than one shifted back
//!   and forth by a controller that cannot see why errors rose. An SRE who wants the shift to
//!   ride out a short spike gives `breach_hold: 2m`; the default stops at once.
//! - **no answer** (no data, NaN, several series, an unreachable source, a query slower than
//!   [`crate::METRIC_QUERY_TIMEOUT_MS`]): the attempt fails closed, like a health gate.
//!
//! Every decision (the value read, healthy/near/breach, the step chosen and the wait after
//! it) is written to the output and into the committed step's state, so the journal says why
//! a shift slowed down. An operator's `step` (through `levee runs pace`) replaces the adapted
//! size; the health gate still holds and stops.
//!
//! # Network budgets
//!
//! `budget: NAME` with `budget_limit: N` (1 by default) lets at most N attempts holding the
//! budget `NAME` move weights at once in this server process (a service's name, say, so two
//! tasks shifting one service never run together beyond its budget); the others wait, saying
//! so, until one ends. Budgets are counted per Levee process: runs of one fleet are meant to
//! be executed by one replica at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::check::{METRIC_QUERY_TIMEOUT_MS, MetricSource, NoMetricSource};
use crate::context::{CancelToken, StageContext, StageOutcome, StageOutput, Step};
use crate::haproxy::{Haproxy, HaproxySocket, MAX_HAPROXY_WEIGHT};
use crate::ramp::{Amount, MAX_RAMP_STEPS, advance, parse_pace, wait_between_steps};
use crate::wait::MAX_WAIT_MS;

/// Most servers one task shifts together.
pub const MAX_TRAFFIC_TARGETS: usize = 256;

/// How long draining servers may keep sessions before the task fails, when the task does not
/// say (`drain_timeout`), in milliseconds.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 5 * 60_000;

/// How often draining servers' sessions are counted, in milliseconds.
pub const DRAIN_POLL_INTERVAL_MS: u64 = 500;

/// The fraction of `health_below` from which the closed loop slows down, unless the task
/// says (`slow_at`).
pub const DEFAULT_SLOW_AT_FRACTION: f64 = 0.5;

/// How much a healthy step grows (and a step near the limit shrinks), unless the task says
/// (`grow`).
pub const DEFAULT_STEP_GROWTH_FACTOR: f64 = 2.0;

/// The largest `grow` accepted: beyond it one healthy reading would jump to `max_step`.
pub const MAX_STEP_GROWTH_FACTOR: f64 = 10.0;

/// Without `max_step`, steps grow up to this many times `step`.
pub const DEFAULT_MAX_STEP_MULTIPLE: f64 = 4.0;

/// Near the limit, the wait after a step is this many times the written wait.
pub const NEAR_LIMIT_WAIT_FACTOR: u32 = 2;

/// How often a shift holding at a breached limit re-reads the metric, in milliseconds.
pub const HEALTH_HOLD_POLL_MS: u64 = 5_000;

/// The largest `budget_limit`.
pub const MAX_BUDGET_LIMIT: u64 = 1_000;

/// How long after a request for (or a release of) a network budget its units are granted,
/// in milliseconds: long enough that every request of the same instant is in, so grants
/// follow a fixed order (see [`Budgets`]).
pub const BUDGET_GRANT_DELAY_MS: u64 = 1;

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

/// What the replication stage asks of a backend that replicates by itself (the simulator).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Replication {
    /// Stop replicating into the target.
    Stopped,
    /// Replicate into the target, catching up at most at this many megabytes per second
    /// (`None`: as fast as the network lets it).
    Running { bandwidth_mbps: Option<f64> },
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

    /// Ends `fraction` (0, 1] of the target's current sessions, as restarting that share of
    /// the jobs holding them would; answers how many were ended. Backends that cannot say
    /// no: the task then gives a `restart` command.
    async fn end_sessions(&self, target: &str, fraction: f64) -> Result<u64, String> {
        let _ = (target, fraction);
        Err(format!(
            "the `{}` backend cannot end sessions by itself; give a `restart` command",
            self.name()
        ))
    }

    /// Stops or starts replication into the target. Backends that do not replicate say no:
    /// the task then gives `stop`/`start` hooks.
    async fn set_replication(&self, target: &str, replication: Replication) -> Result<(), String> {
        let _ = (target, replication);
        Err(format!(
            "the `{}` backend does not replicate; give `stop` and `start` hooks",
            self.name()
        ))
    }

    /// Makes the target its service's primary. Backends that do not know primaries say no:
    /// the task then gives a `promote` hook.
    async fn promote(&self, target: &str) -> Result<(), String> {
        let _ = target;
        Err(format!(
            "the `{}` backend does not promote; give a `promote` hook",
            self.name()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments shared by the traffic stages.

pub(crate) const HAPROXY_ARG: ArgSpec = ArgSpec {
    name: "haproxy",
    kind: ArgKind::String,
    required: false,
    description: "HAProxy's runtime API: a socket path or HOST:PORT (its `stats socket`, at \
                  `level admin`). Give either `haproxy` or `backend`.",
};

pub(crate) const BACKEND_ARG: ArgSpec = ArgSpec {
    name: "backend",
    kind: ArgKind::String,
    required: false,
    description: "A traffic backend this server was started with, by name (`sim` for the \
                  simulated fleet of `levee demo`, whose servers are SERVICE/DC).",
};

pub(crate) const SERVERS_ARG: ArgSpec = ArgSpec {
    name: "servers",
    kind: ArgKind::StringList,
    required: true,
    description: "The servers to shift (BACKEND/SERVER on HAProxy, SERVICE/DC on the \
                  simulator); each step sets them all.",
};

pub(crate) const STEP_ARG: ArgSpec = ArgSpec {
    name: "step",
    kind: ArgKind::Any,
    required: false,
    description: "How far each step moves the weight: a number, or a percentage of the whole \
                  shift such as `20%` (required by `traffic_shift`; 25% elsewhere). Operators \
                  may change it while it runs.",
};

pub(crate) const FIRST_STEP_ARG: ArgSpec = ArgSpec {
    name: "first_step",
    kind: ArgKind::Any,
    required: false,
    description: "How far the first step moves (`step` by default); keep it small.",
};

pub(crate) const WAIT_ARG: ArgSpec = ArgSpec {
    name: "wait",
    kind: ArgKind::Duration,
    required: false,
    description: "How long to wait after each step (none by default). Operators may change \
                  it while it runs.",
};

pub(crate) const HEALTH_QUERY_ARG: ArgSpec = ArgSpec {
    name: "health_query",
    kind: ArgKind::String,
    required: false,
    description: "A metric query (PromQL on Prometheus) with one value, read before every \
                  step: the closed loop. Needs `health_below`.",
};

pub(crate) const HEALTH_BELOW_ARG: ArgSpec = ArgSpec {
    name: "health_below",
    kind: ArgKind::Number,
    required: false,
    description: "The limit `health_query` must stay below; at or above it no further step \
                  is taken.",
};

pub(crate) const SLOW_AT_ARG: ArgSpec = ArgSpec {
    name: "slow_at",
    kind: ArgKind::Number,
    required: false,
    description: "The fraction of `health_below` (between 0 and 1) from which steps shrink \
                  and waits double (0.5 by default).",
};

pub(crate) const GROW_ARG: ArgSpec = ArgSpec {
    name: "grow",
    kind: ArgKind::Number,
    required: false,
    description: "How much a step grows while healthy and shrinks near the limit (2 by \
                  default, above 1, at most 10).",
};

pub(crate) const MAX_STEP_ARG: ArgSpec = ArgSpec {
    name: "max_step",
    kind: ArgKind::Any,
    required: false,
    description: "The largest step while healthy, a number or a percentage (4 times `step` \
                  by default).",
};

pub(crate) const BREACH_HOLD_ARG: ArgSpec = ArgSpec {
    name: "breach_hold",
    kind: ArgKind::Duration,
    required: false,
    description: "How long to hold at the weight reached, re-reading the metric, when it \
                  breaks `health_below` before failing the attempt (none by default: fail at \
                  once).",
};

pub(crate) const BUDGET_ARG: ArgSpec = ArgSpec {
    name: "budget",
    kind: ArgKind::String,
    required: false,
    description: "A network budget's name (the service's, say): at most `budget_limit` tasks \
                  holding it shift at once in this server; the others wait their turn.",
};

pub(crate) const BUDGET_LIMIT_ARG: ArgSpec = ArgSpec {
    name: "budget_limit",
    kind: ArgKind::Int,
    required: false,
    description: "How many tasks may hold `budget` at once (1 by default).",
};

pub(crate) const TRAFFIC_ARGS: &[ArgSpec] = &[
    HAPROXY_ARG,
    BACKEND_ARG,
    SERVERS_ARG,
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
    STEP_ARG,
    FIRST_STEP_ARG,
    WAIT_ARG,
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
    HEALTH_QUERY_ARG,
    HEALTH_BELOW_ARG,
    SLOW_AT_ARG,
    GROW_ARG,
    MAX_STEP_ARG,
    BREACH_HOLD_ARG,
    BUDGET_ARG,
    BUDGET_LIMIT_ARG,
];

/// Where a traffic stage moves weights.
#[derive(Clone, Debug)]
pub(crate) enum Via {
    Haproxy(HaproxySocket),
    Named(String),
}

pub(crate) fn parse_via(parsed: &Args<'_>) -> Result<Via, ArgError> {
    match (parsed.string("haproxy")?, parsed.string("backend")?) {
        (Some(socket), None) => Ok(Via::Haproxy(
            HaproxySocket::parse(socket).map_err(|why| ArgError::invalid("haproxy", why))?,
        )),
        (None, Some(name)) => Ok(Via::Named(name.to_string())),
        (Some(_), Some(_)) => Err(ArgError::invalid(
            "backend",
            "give either `haproxy` or `backend`, not both",
        )),
        (None, None) => Err(ArgError::Missing {
            argument: "haproxy".to_string(),
            description: HAPROXY_ARG.description.to_string(),
        }),
    }
}

/// A list of `BACKEND/SERVER` targets: never empty, never more than [`MAX_TRAFFIC_TARGETS`].
pub(crate) fn parse_targets(parsed: &Args<'_>, name: &str) -> Result<Vec<String>, ArgError> {
    let servers = parsed.string_list(name)?.unwrap_or_default();
    if servers.is_empty() {
        return Err(ArgError::invalid(
            name,
            "the list is empty; name at least one BACKEND/SERVER (never \"all\")",
        ));
    }
    if servers.len() > MAX_TRAFFIC_TARGETS {
        return Err(ArgError::invalid(
            name,
            format!("at most {MAX_TRAFFIC_TARGETS} servers per task"),
        ));
    }
    for server in &servers {
        check_target(name, server)?;
    }
    Ok(servers)
}

pub(crate) fn check_target(name: &str, server: &str) -> Result<(), ArgError> {
    let valid = server
        .split_once('/')
        .is_some_and(|(b, s)| !b.is_empty() && !s.is_empty() && !s.contains('/'))
        && !server.contains(char::is_whitespace)
        && !server.contains(';');
    if valid {
        Ok(())
    } else {
        Err(ArgError::invalid(
            name,
            format!("`{server}` is not BACKEND/SERVER"),
        ))
    }
}

pub(crate) fn weight(parsed: &Args<'_>, name: &str) -> Result<Option<u32>, ArgError> {
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

/// `step` and `first_step`; `default_step` when the stage does not require `step`.
pub(crate) fn parse_steps(
    parsed: &Args<'_>,
    default_step: Option<Amount>,
) -> Result<(Amount, Amount), ArgError> {
    let step = match (parsed.get("step"), default_step) {
        (Some(value), _) => Amount::parse("step", value)?,
        (None, Some(step)) => step,
        (None, None) => {
            return Err(ArgError::Missing {
                argument: "step".to_string(),
                description: STEP_ARG.description.to_string(),
            });
        }
    };
    let first_step = match parsed.get("first_step") {
        Some(value) => Amount::parse("first_step", value)?,
        None => step,
    };
    Ok((step, first_step))
}

pub(crate) fn parse_wait(parsed: &Args<'_>, name: &str) -> Result<Duration, ArgError> {
    Ok(Duration::from_millis(
        parsed.duration_ms(name, MAX_WAIT_MS)?.unwrap_or(0),
    ))
}

/// The closed loop's settings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HealthLoop {
    pub query: String,
    pub below: f64,
    pub slow_at: f64,
    pub grow: f64,
    pub max_step: Option<Amount>,
    pub breach_hold: Duration,
}

pub(crate) fn parse_health(parsed: &Args<'_>) -> Result<Option<HealthLoop>, ArgError> {
    let query = parsed.string("health_query")?.map(str::trim);
    let below = parsed.number("health_below")?;
    let tuning = ["slow_at", "grow", "max_step", "breach_hold"]
        .into_iter()
        .find(|name| parsed.get(name).is_some());
    let (query, below) = match (query, below) {
        (None, None) => {
            if let Some(name) = tuning {
                return Err(ArgError::invalid(
                    name,
                    "tunes the closed loop, which needs `health_query` and `health_below`",
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(ArgError::Missing {
                argument: "health_below".to_string(),
                description: HEALTH_BELOW_ARG.description.to_string(),
            });
        }
        (None, Some(_)) => {
            return Err(ArgError::Missing {
                argument: "health_query".to_string(),
                description: HEALTH_QUERY_ARG.description.to_string(),
            });
        }
        (Some(query), Some(below)) => (query, below),
    };
    if query.is_empty() {
        return Err(ArgError::invalid("health_query", "the query is empty"));
    }
    if !below.is_finite() {
        return Err(ArgError::invalid("health_below", "not a finite number"));
    }
    let slow_at = parsed
        .number("slow_at")?
        .unwrap_or(DEFAULT_SLOW_AT_FRACTION);
    if !(slow_at > 0.0 && slow_at < 1.0) {
        return Err(ArgError::invalid(
            "slow_at",
            format!("{slow_at} is not a fraction between 0 and 1 (both excluded)"),
        ));
    }
    let grow = parsed.number("grow")?.unwrap_or(DEFAULT_STEP_GROWTH_FACTOR);
    if !(grow > 1.0 && grow <= MAX_STEP_GROWTH_FACTOR) {
        return Err(ArgError::invalid(
            "grow",
            format!("{grow} is not above 1 and at most {MAX_STEP_GROWTH_FACTOR}"),
        ));
    }
    let max_step = parsed
        .get("max_step")
        .map(|value| Amount::parse("max_step", value))
        .transpose()?;
    Ok(Some(HealthLoop {
        query: query.to_string(),
        below,
        slow_at,
        grow,
        max_step,
        breach_hold: Duration::from_millis(
            parsed.duration_ms("breach_hold", MAX_WAIT_MS)?.unwrap_or(0),
        ),
    }))
}

/// A network budget to hold while shifting: its name and how many may hold it at once.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BudgetArgs {
    pub name: String,
    pub limit: u64,
}

pub(crate) fn parse_budget(parsed: &Args<'_>) -> Result<Option<BudgetArgs>, ArgError> {
    let limit = match parsed.get("budget_limit") {
        None => None,
        Some(value) => match value.as_u64() {
            Some(limit) if (1..=MAX_BUDGET_LIMIT).contains(&limit) => Some(limit),
            _ => {
                return Err(ArgError::invalid(
                    "budget_limit",
                    format!("a budget's limit is a whole number from 1 to {MAX_BUDGET_LIMIT}"),
                ));
            }
        },
    };
    match (parsed.string("budget")?.map(str::trim), limit) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ArgError::Missing {
            argument: "budget".to_string(),
            description: BUDGET_ARG.description.to_string(),
        }),
        (Some(""), _) => Err(ArgError::invalid("budget", "the budget's name is empty")),
        (Some(name), limit) => Ok(Some(BudgetArgs {
            name: name.to_string(),
            limit: limit.unwrap_or(1),
        })),
    }
}

// ---------------------------------------------------------------------------------------------
// Network budgets.

/// Named counting semaphores shared by every traffic stage of one registry: at most a
/// budget's limit of attempts hold it at once.
///
/// Units are granted in a fixed order, never to whoever looks first: a request (and a
/// release) is only acted on [`BUDGET_GRANT_DELAY_MS`] later, by a grant pass that hands
/// the free units to the waiters in the order they asked (by Tokio's clock, then by name:
/// the run and task). Everything that happens at one instant of a paused clock (a
/// rehearsal) happens before the clock moves on, so the same waits give the same order
/// whatever the real timing of the commits in between, and a rehearsal repeats exactly.
#[derive(Debug, Default)]
pub struct Budgets {
    state: Mutex<BudgetState>,
    freed: Notify,
}

/// Who waits for a budget: when they asked, their name, and a sequence number for ties.
type WaiterKey = (Instant, String, u64);

#[derive(Debug, Default)]
struct BudgetState {
    in_use: HashMap<String, u64>,
    waiters: HashMap<String, BTreeMap<WaiterKey, tokio::sync::oneshot::Sender<()>>>,
    next_seq: u64,
}

/// One attempt's hold on a budget, given back when dropped.
#[derive(Debug)]
pub struct BudgetGuard {
    budgets: Arc<Budgets>,
    name: String,
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        self.budgets.release(&self.name);
    }
}

/// Why a budget was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetWait {
    Cancelled,
    TimedOut,
}

impl Budgets {
    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many attempts hold `name` now.
    pub fn in_use(&self, name: &str) -> u64 {
        self.lock().in_use.get(name).copied().unwrap_or(0)
    }

    /// How many attempts hold or wait for `name` now.
    pub fn demand(&self, name: &str) -> u64 {
        let state = self.lock();
        state.in_use.get(name).copied().unwrap_or(0)
            + state.waiters.get(name).map_or(0, |w| w.len() as u64)
    }

    fn release(&self, name: &str) {
        {
            let mut state = self.lock();
            if let Some(count) = state.in_use.get_mut(name) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    state.in_use.remove(name);
                }
            }
        }
        self.freed.notify_waiters();
    }

    /// Hands the free units of `name` to its first waiters.
    fn grant(&self, name: &str, limit: u64) {
        let mut state = self.lock();
        loop {
            let held = state.in_use.get(name).copied().unwrap_or(0);
            if held >= limit {
                break;
            }
            let Some(waiters) = state.waiters.get_mut(name) else {
                break;
            };
            let Some((_, waiter)) = waiters.pop_first() else {
                state.waiters.remove(name);
                break;
            };
            if waiter.send(()).is_ok() {
                *state.in_use.entry(name.to_string()).or_insert(0) += 1;
            }
        }
    }

    /// Takes one unit of `name` at once if fewer than `limit` are held and nobody waits.
    pub fn try_acquire(self: &Arc<Self>, name: &str, limit: u64) -> Option<BudgetGuard> {
        let mut state = self.lock();
        if state.waiters.get(name).is_some_and(|w| !w.is_empty()) {
            return None;
        }
        let count = state.in_use.entry(name.to_string()).or_insert(0);
        if *count < limit {
            *count += 1;
            Some(BudgetGuard {
                budgets: self.clone(),
                name: name.to_string(),
            })
        } else {
            None
        }
    }

    /// Waits until one unit of `name` is granted to `who` (see the type's docs) and takes
    /// it.
    pub async fn acquire(
        self: &Arc<Self>,
        name: &str,
        limit: u64,
        who: &str,
        cancel: &CancelToken,
        deadline: Instant,
    ) -> Result<BudgetGuard, BudgetWait> {
        let (sender, mut handed) = tokio::sync::oneshot::channel();
        let key = {
            let mut state = self.lock();
            state.next_seq += 1;
            let key = (Instant::now(), who.to_string(), state.next_seq);
            state
                .waiters
                .entry(name.to_string())
                .or_default()
                .insert(key.clone(), sender);
            key
        };
        let guard = || BudgetGuard {
            budgets: self.clone(),
            name: name.to_string(),
        };
        let grant_delay = Duration::from_millis(BUDGET_GRANT_DELAY_MS);
        let stopped = loop {
            // Whatever else asks or frees at this instant is in by then.
            tokio::select! {
                () = tokio::time::sleep(grant_delay) => {}
                () = cancel.cancelled() => break BudgetWait::Cancelled,
                () = sleep_until(deadline) => break BudgetWait::TimedOut,
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            self.grant(name, limit);
            tokio::select! {
                answer = &mut handed => match answer {
                    Ok(()) => return Ok(guard()),
                    // Never: only a grant, which sends, or we ourselves remove the sender.
                    Err(_) => break BudgetWait::Cancelled,
                },
                () = &mut freed => {}
                () = cancel.cancelled() => break BudgetWait::Cancelled,
                () = sleep_until(deadline) => break BudgetWait::TimedOut,
            }
        };
        let removed = {
            let mut state = self.lock();
            let removed = state
                .waiters
                .get_mut(name)
                .and_then(|waiters| waiters.remove(&key))
                .is_some();
            if state.waiters.get(name).is_some_and(BTreeMap::is_empty) {
                state.waiters.remove(name);
            }
            removed
        };
        if !removed || handed.try_recv().is_ok() {
            // A unit was granted as we stopped: give it back.
            drop(guard());
        }
        Err(stopped)
    }
}

// ---------------------------------------------------------------------------------------------
// What every traffic stage is given: backends, the metric source, the budgets.

/// The backends, metric source and budgets the traffic stages of one registry share.
#[derive(Clone)]
pub struct TrafficKit {
    backends: BTreeMap<String, Arc<dyn TrafficBackend>>,
    pub(crate) metrics: Arc<dyn MetricSource>,
    pub(crate) budgets: Arc<Budgets>,
}

impl Default for TrafficKit {
    fn default() -> Self {
        TrafficKit::new(Arc::new(NoMetricSource), Arc::new(Budgets::default()))
    }
}

impl std::fmt::Debug for TrafficKit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficKit")
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TrafficKit {
    /// A kit reading health from `metrics`, counting budgets in `budgets`, with HAProxy only.
    pub fn new(metrics: Arc<dyn MetricSource>, budgets: Arc<Budgets>) -> TrafficKit {
        TrafficKit {
            backends: BTreeMap::new(),
            metrics,
            budgets,
        }
    }

    /// The kit also knowing `backend` by its name (the simulator, say).
    pub fn with_backend(mut self, backend: Arc<dyn TrafficBackend>) -> TrafficKit {
        self.backends.insert(backend.name().to_string(), backend);
        self
    }

    /// The budgets, to see who holds what.
    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    pub(crate) fn check_via(&self, via: &Via) -> Result<(), ArgError> {
        if let Via::Named(name) = via
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
        Ok(())
    }

    pub(crate) fn backend(&self, via: &Via) -> Result<Arc<dyn TrafficBackend>, StageOutcome> {
        match via {
            Via::Haproxy(socket) => Ok(Arc::new(Haproxy::new(socket.clone()))),
            Via::Named(name) => {
                self.backends
                    .get(name)
                    .cloned()
                    .ok_or_else(|| StageOutcome::Failed {
                        error: format!("this server has no traffic backend `{name}`"),
                        retryable: false,
                        output: StageOutput::default(),
                    })
            }
        }
    }

    /// What every traffic stage does before its first step: the backend `via` names, and
    /// the network budget, if any, held until the returned guard drops.
    pub(crate) async fn prepare(
        &self,
        ctx: &StageContext,
        via: &Via,
        budget: Option<&BudgetArgs>,
    ) -> Result<(Arc<dyn TrafficBackend>, Option<BudgetGuard>), StageOutcome> {
        let backend = self.backend(via)?;
        let guard = self.hold_budget(ctx, budget).await?;
        Ok((backend, guard))
    }

    /// Takes the budget, if any, saying so when it has to wait.
    pub(crate) async fn hold_budget(
        &self,
        ctx: &StageContext,
        budget: Option<&BudgetArgs>,
    ) -> Result<Option<BudgetGuard>, StageOutcome> {
        let Some(budget) = budget else {
            return Ok(None);
        };
        let busy = self.budgets.demand(&budget.name);
        if busy >= budget.limit {
            say(
                ctx,
                format!(
                    "waiting for network budget `{}`: {busy} of {} in use or asked for by \
                     other tasks",
                    budget.name, budget.limit
                ),
            );
        }
        let waited = Instant::now();
        match self
            .budgets
            .acquire(
                &budget.name,
                budget.limit,
                &format!("{}/{}", ctx.run_id, ctx.task_id),
                &ctx.cancel,
                ctx.deadline,
            )
            .await
        {
            Ok(guard) => {
                if busy >= budget.limit {
                    say(
                        ctx,
                        format!(
                            "took network budget `{}` after {} ms",
                            budget.name,
                            waited.elapsed().as_millis()
                        ),
                    );
                }
                Ok(Some(guard))
            }
            Err(BudgetWait::Cancelled) => Err(StageOutcome::Cancelled),
            Err(BudgetWait::TimedOut) => Err(StageOutcome::TimedOut),
        }
    }
}

pub(crate) fn say(ctx: &StageContext, line: String) {
    ctx.output.write(format!("{line}\n").as_bytes());
}

/// A failure after which trying again is safe (every change is an absolute setting).
pub(crate) fn failed(error: String, ctx: &StageContext, data: Value) -> StageOutcome {
    StageOutcome::Failed {
        error,
        retryable: true,
        output: StageOutput {
            captured: ctx.output.snapshot(),
            data,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Health readings.

/// Where a health reading falls against the limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Reading {
    Healthy(f64),
    Near(f64),
    Breach(f64),
}

impl Reading {
    fn value(self) -> f64 {
        match self {
            Reading::Healthy(v) | Reading::Near(v) | Reading::Breach(v) => v,
        }
    }
}

/// Reads the metric once: `Err` says why there is no usable value (which fails closed).
pub(crate) async fn read_health(
    metrics: &dyn MetricSource,
    health: &HealthLoop,
    cancel: &CancelToken,
) -> Result<Reading, String> {
    let answer = tokio::select! {
        answer = tokio::time::timeout(
            Duration::from_millis(METRIC_QUERY_TIMEOUT_MS),
            metrics.query(&health.query),
        ) => answer,
        () = cancel.cancelled() => return Err("cancelled while reading health".to_string()),
    };
    let value = match answer {
        Err(_) => {
            return Err(format!(
                "`{}` did not answer within {METRIC_QUERY_TIMEOUT_MS} ms",
                health.query
            ));
        }
        Ok(Err(error)) => return Err(error.to_string()),
        Ok(Ok(value)) if value.is_nan() => return Err(format!("`{}` returned NaN", health.query)),
        Ok(Ok(value)) => value,
    };
    Ok(if value >= health.below {
        Reading::Breach(value)
    } else if value >= health.below * health.slow_at {
        Reading::Near(value)
    } else {
        Reading::Healthy(value)
    })
}

/// Reads health before a step; on a breach holds (re-reading) up to `breach_hold`. `Err` is
/// the attempt's end: failed closed, failed on the breach, cancelled or timed out.
async fn health_before_step(
    ctx: &StageContext,
    health: &HealthLoop,
    metrics: &dyn MetricSource,
    current: u32,
    data: &Value,
) -> Result<Reading, StageOutcome> {
    let hold_until = Instant::now() + health.breach_hold;
    let mut held = false;
    loop {
        let reading = match read_health(metrics, health, &ctx.cancel).await {
            Ok(reading) => reading,
            Err(_) if ctx.cancel.is_cancelled() => return Err(StageOutcome::Cancelled),
            Err(reason) => {
                let error = format!(
                    "health metric has no usable value ({reason}); failing closed: the shift \
                     stopped at weight {current}"
                );
                say(ctx, error.clone());
                return Err(failed(error, ctx, data.clone()));
            }
        };
        let Reading::Breach(value) = reading else {
            if held {
                say(
                    ctx,
                    format!(
                        "`{}` is back to {value} (limit {}); continuing",
                        health.query,
                        health.below,
                        value = reading.value()
                    ),
                );
            }
            return Ok(reading);
        };
        if Instant::now() >= hold_until {
            let error = format!(
                "`{}` is {value}, at or above its limit {}: the shift stopped at weight \
                 {current}{}",
                health.query,
                health.below,
                if held {
                    format!(" after holding {} ms", health.breach_hold.as_millis())
                } else {
                    String::new()
                }
            );
            say(ctx, error.clone());
            return Err(StageOutcome::Failed {
                error,
                // Another attempt re-reads the metric before any step, so it is safe.
                retryable: true,
                output: StageOutput {
                    captured: ctx.output.snapshot(),
                    data: data.clone(),
                },
            });
        }
        if !held {
            say(
                ctx,
                format!(
                    "holding at weight {current}: `{}` is {value}, at or above its limit {}; \
                     re-reading for up to {} ms",
                    health.query,
                    health.below,
                    health.breach_hold.as_millis()
                ),
            );
            held = true;
        }
        let next = (Instant::now() + Duration::from_millis(HEALTH_HOLD_POLL_MS)).min(hold_until);
        tokio::select! {
            () = sleep_until(next) => {}
            () = ctx.cancel.cancelled() => return Err(StageOutcome::Cancelled),
            () = sleep_until(ctx.deadline) => return Err(StageOutcome::TimedOut),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Moving weights: the paced, committed, closed-loop core every traffic stage uses.

/// One move of weights from `from` to `to`.
#[derive(Clone, Debug)]
pub(crate) struct WeightMove<'a> {
    pub servers: &'a [String],
    pub from: u32,
    pub to: u32,
    pub step: Amount,
    pub first_step: Amount,
    pub wait: Duration,
    pub health: Option<&'a HealthLoop>,
    /// Fields added to every committed step's state (a multi-phase stage's phase).
    pub tag: Map<String, Value>,
}

/// The next whole weight toward `to`: at least one unit, never past `to`.
pub(crate) fn next_weight(current: u32, to: u32, size: f64) -> u32 {
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

/// What the closed loop decided before a step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Adaptation {
    /// The step's size in weight units.
    pub size: f64,
    /// The wait after the step.
    pub wait: Duration,
    /// `first`, `steady`, `grow`, `shrink`, `operator`.
    pub adapt: &'static str,
    /// One sentence for the operator.
    pub why: String,
}

/// The step size and wait after a reading: pure, so the policy is tested on its own.
/// `previous` is the adapted size of the step before (None before the second step).
#[allow(clippy::too_many_arguments)]
pub(crate) fn adapt(
    health: &HealthLoop,
    reading: Reading,
    first: bool,
    operator_step: Option<f64>,
    previous: Option<f64>,
    written_step: f64,
    first_step: f64,
    span: f64,
    wait: Duration,
) -> Adaptation {
    let limit = health.below;
    let value = reading.value();
    let near = matches!(reading, Reading::Near(_));
    let wait = if near {
        wait * NEAR_LIMIT_WAIT_FACTOR
    } else {
        wait
    };
    let smallest = first_step.max(1.0);
    let largest = health
        .max_step
        .map(|max| max.size(span))
        .unwrap_or(written_step * DEFAULT_MAX_STEP_MULTIPLE)
        .max(smallest);
    let slow_from = limit * health.slow_at;
    let (size, adapt) = if first {
        (first_step, "first")
    } else if let Some(size) = operator_step {
        (size, "operator")
    } else if near {
        (
            (previous.unwrap_or(written_step) / health.grow).max(smallest),
            "shrink",
        )
    } else {
        match previous {
            None => (written_step, "steady"),
            Some(previous) => ((previous * health.grow).min(largest).max(smallest), "grow"),
        }
    };
    let why = match (adapt, near) {
        ("first", false) => format!("{value} is healthy (below {slow_from}); first step"),
        ("first", true) => format!(
            "{value} is near the limit {limit} (from {slow_from}); first step, then a \
             {NEAR_LIMIT_WAIT_FACTOR}x wait"
        ),
        ("operator", _) => format!("{value}; the operator's step"),
        ("shrink", _) if size >= previous.unwrap_or(written_step) => format!(
            "{value} is near the limit {limit} (from {slow_from}): step stays at the smallest, \
             {size:.1}, wait {NEAR_LIMIT_WAIT_FACTOR}x"
        ),
        ("shrink", _) => format!(
            "{value} is near the limit {limit} (from {slow_from}): step shrinks to {size:.1}, \
             wait {NEAR_LIMIT_WAIT_FACTOR}x"
        ),
        ("grow", _) => format!("{value} is healthy (below {slow_from}): step grows to {size:.1}"),
        _ => format!("{value} is healthy (below {slow_from}): step {size:.1}"),
    };
    Adaptation {
        size,
        wait,
        adapt,
        why,
    }
}

/// Moves the weights of `plan.servers` from where they are (`current`) to `plan.to` in paced
/// steps, committing each with the global step `index`; returns the next index. The caller
/// resumes a move by passing the weight its last committed step reached.
pub(crate) async fn move_weights(
    ctx: &mut StageContext,
    plan: &WeightMove<'_>,
    backend: &dyn TrafficBackend,
    metrics: &dyn MetricSource,
    mut index: u64,
    mut current: u32,
) -> Result<u64, StageOutcome> {
    let span = f64::from(plan.from.abs_diff(plan.to));
    let data = |weight: u32, steps: u64| json!({ "from": plan.from, "to": plan.to, "weight": weight, "steps": steps });
    let mut previous: Option<f64> = None;
    let mut taken = 0_usize;
    while current != plan.to {
        if taken >= MAX_RAMP_STEPS {
            return Err(StageOutcome::Failed {
                error: format!(
                    "{MAX_RAMP_STEPS} steps without reaching weight {}; make the step larger",
                    plan.to
                ),
                retryable: false,
                output: StageOutput {
                    captured: ctx.output.snapshot(),
                    data: data(current, index),
                },
            });
        }
        // The committed weight must still be in force: HAProxy forgets runtime changes on a
        // reload.
        if current != plan.from {
            for server in plan.servers {
                match backend.status(server).await {
                    Ok(status) if status.weight == current => {}
                    Ok(status) => {
                        say(
                            ctx,
                            format!(
                                "{server} has weight {} instead of the committed {current} \
                                 (reloaded?); setting it back",
                                status.weight
                            ),
                        );
                        if let Err(error) = backend.set_weight(server, current).await {
                            return Err(failed(error, ctx, data(current, index)));
                        }
                    }
                    Err(error) => return Err(failed(error, ctx, data(current, index))),
                }
            }
        }
        let pace = parse_pace(&ctx.pace.current()).unwrap_or_default();
        let first = current == plan.from;
        let written_step = plan.step.size(span);
        let first_step = plan.first_step.size(span);
        let wait = pace.wait.unwrap_or(plan.wait);
        let (size, wait, decision) = match plan.health {
            None => {
                let size = if first {
                    first_step
                } else {
                    pace.step.map_or(written_step, |step| step.size(span))
                };
                (size, wait, Value::Null)
            }
            Some(health) => {
                let reading =
                    health_before_step(ctx, health, metrics, current, &data(current, index))
                        .await?;
                let decided = adapt(
                    health,
                    reading,
                    first,
                    pace.step.map(|step| step.size(span)),
                    previous,
                    written_step,
                    first_step,
                    span,
                    wait,
                );
                // The first step is its own size; growth starts from `step`.
                if !first {
                    previous = Some(decided.size);
                }
                let decision = json!({
                    "value": reading.value(),
                    "limit": health.below,
                    "state": if matches!(reading, Reading::Near(_)) { "near" } else { "healthy" },
                    "adapt": decided.adapt,
                    "size": decided.size,
                    "wait_ms": decided.wait.as_millis() as u64,
                    "why": decided.why,
                });
                (decided.size, decided.wait, decision)
            }
        };
        let next = next_weight(current, plan.to, size);
        for server in plan.servers {
            if let Err(error) = backend.set_weight(server, next).await {
                return Err(failed(error, ctx, data(current, index)));
            }
        }
        match decision.get("why").and_then(Value::as_str) {
            Some(why) => say(
                ctx,
                format!(
                    "step {}: weight {next} ({why}; wait {} ms)",
                    index + 1,
                    wait.as_millis()
                ),
            ),
            None => say(ctx, format!("step {}: weight {next}", index + 1)),
        }
        let mut state = plan.tag.clone();
        state.insert("weight".to_string(), json!(next));
        state.insert("from".to_string(), json!(plan.from));
        if !decision.is_null() {
            state.insert("health".to_string(), decision);
        }
        let committed = ctx
            .steps
            .report(Step {
                index,
                state: Value::Object(state),
            })
            .await;
        if let Err(error) = committed {
            return Err(StageOutcome::Failed {
                error: format!("step {} was done but not journaled: {error}", index + 1),
                retryable: true,
                output: StageOutput {
                    captured: ctx.output.snapshot(),
                    data: data(next, index + 1),
                },
            });
        }
        current = next;
        index += 1;
        taken += 1;
        if current == plan.to {
            break;
        }
        if let Some(stopped) = wait_between_steps(ctx, wait).await {
            return Err(stopped);
        }
    }
    Ok(index)
}

/// Sets every server to `state` (`ready`, `drain`, `maint`).
pub(crate) async fn set_states(
    ctx: &StageContext,
    backend: &dyn TrafficBackend,
    servers: &[String],
    state: &str,
    data: &Value,
) -> Result<(), StageOutcome> {
    for server in servers {
        if let Err(error) = backend.set_state(server, state).await {
            return Err(failed(error, ctx, data.clone()));
        }
    }
    Ok(())
}

/// The sessions open on all servers.
pub(crate) async fn open_sessions(
    ctx: &StageContext,
    backend: &dyn TrafficBackend,
    servers: &[String],
    data: &Value,
) -> Result<u64, StageOutcome> {
    let mut open = 0_u64;
    for server in servers {
        match backend.status(server).await {
            Ok(status) => open += status.sessions,
            Err(error) => return Err(failed(error, ctx, data.clone())),
        }
    }
    Ok(open)
}

/// Waits until the servers' sessions are at most `at_most`, polling every
/// [`DRAIN_POLL_INTERVAL_MS`]; fails after `timeout`.
pub(crate) async fn wait_for_sessions(
    ctx: &StageContext,
    backend: &dyn TrafficBackend,
    servers: &[String],
    at_most: u64,
    timeout: Duration,
    data: &Value,
) -> Result<u64, StageOutcome> {
    let gives_up = Instant::now() + timeout;
    loop {
        let open = open_sessions(ctx, backend, servers, data).await?;
        if open <= at_most {
            return Ok(open);
        }
        if Instant::now() >= gives_up {
            return Err(failed(
                format!(
                    "{open} sessions still open on {} after {} ms (waiting for at most \
                     {at_most})",
                    servers.join(", "),
                    timeout.as_millis()
                ),
                ctx,
                data.clone(),
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(DRAIN_POLL_INTERVAL_MS)) => {}
            () = ctx.cancel.cancelled() => return Err(StageOutcome::Cancelled),
            () = sleep_until(ctx.deadline) => return Err(StageOutcome::TimedOut),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// traffic_shift

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
    health: Option<HealthLoop>,
    budget: Option<BudgetArgs>,
}

fn parse(args: &Value) -> Result<ShiftArgs, ArgError> {
    let parsed = Args::checked(TRAFFIC_ARGS, args)?;
    let via = parse_via(&parsed)?;
    let servers = parse_targets(&parsed, "servers")?;
    let to = weight(&parsed, "to_weight")?.ok_or_else(|| ArgError::Missing {
        argument: "to_weight".to_string(),
        description: TRAFFIC_ARGS[3].description.to_string(),
    })?;
    let (step, first_step) = parse_steps(&parsed, None)?;
    Ok(ShiftArgs {
        via,
        servers,
        from: weight(&parsed, "from_weight")?,
        to,
        step,
        first_step,
        wait: parse_wait(&parsed, "wait")?,
        ready_first: parsed.bool("ready_first")?.unwrap_or(false),
        then_maint: parsed.bool("then_maint")?.unwrap_or(false),
        drain_timeout: Duration::from_millis(
            parsed
                .duration_ms("drain_timeout", MAX_WAIT_MS)?
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS),
        ),
        health: parse_health(&parsed)?,
        budget: parse_budget(&parsed)?,
    })
}

/// Shifts weights in paced, committed steps, on HAProxy or a named backend, optionally in a
/// closed loop on a health metric and within a network budget; see the module docs.
#[derive(Debug, Default)]
pub struct TrafficShiftStage {
    kit: TrafficKit,
}

impl TrafficShiftStage {
    /// A stage using `kit`'s backends, metric source and budgets.
    pub fn new(kit: TrafficKit) -> TrafficShiftStage {
        TrafficShiftStage { kit }
    }

    /// A stage that also knows `backend` by its name (the simulator, say).
    pub fn with_backend(self, backend: Arc<dyn TrafficBackend>) -> TrafficShiftStage {
        TrafficShiftStage {
            kit: self.kit.with_backend(backend),
        }
    }

    fn parse(&self, args: &Value) -> Result<ShiftArgs, ArgError> {
        let shift = parse(args)?;
        self.kit.check_via(&shift.via)?;
        Ok(shift)
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
        let (backend, _budget) = match self
            .kit
            .prepare(&ctx, &shift.via, shift.budget.as_ref())
            .await
        {
            Ok(prepared) => prepared,
            Err(outcome) => return outcome,
        };
        run_shift(ctx, &shift, backend.as_ref(), self.kit.metrics.as_ref()).await
    }
}

async fn run_shift(
    mut ctx: StageContext,
    shift: &ShiftArgs,
    backend: &dyn TrafficBackend,
    metrics: &dyn MetricSource,
) -> StageOutcome {
    // Where to continue: the weight and start of the last committed step, or the beginning.
    let resumed = ctx.resume_from.as_ref().and_then(|step| {
        let weight = step.state.get("weight")?.as_u64()? as u32;
        let from = step.state.get("from")?.as_u64()? as u32;
        Some((step.index + 1, weight, from))
    });
    let (index, current, from) = match resumed {
        Some(resumed) => resumed,
        None => {
            if shift.ready_first {
                if let Err(outcome) =
                    set_states(&ctx, backend, &shift.servers, "ready", &Value::Null).await
                {
                    return outcome;
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
    let data = |weight: u32, steps: u64| json!({ "from": from, "to": shift.to, "weight": weight, "steps": steps });
    let plan = WeightMove {
        servers: &shift.servers,
        from,
        to: shift.to,
        step: shift.step,
        first_step: shift.first_step,
        wait: shift.wait,
        health: shift.health.as_ref(),
        tag: Map::new(),
    };
    let index = match move_weights(&mut ctx, &plan, backend, metrics, index, current).await {
        Ok(index) => index,
        Err(outcome) => return outcome,
    };
    let current = shift.to;
    if shift.then_maint {
        let data = data(current, index);
        if let Err(outcome) = set_states(&ctx, backend, &shift.servers, "drain", &data).await {
            return outcome;
        }
        if let Err(outcome) =
            wait_for_sessions(&ctx, backend, &shift.servers, 0, shift.drain_timeout, &data).await
        {
            return outcome;
        }
        if let Err(outcome) = set_states(&ctx, backend, &shift.servers, "maint", &data).await {
            return outcome;
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

/// A traffic stage's end: its data with what it printed, or the outcome it stopped with.
pub(crate) fn finished(ctx: &StageContext, outcome: Result<Value, StageOutcome>) -> StageOutcome {
    match outcome {
        Ok(data) => StageOutcome::Succeeded {
            output: StageOutput {
                captured: ctx.output.snapshot(),
                data,
            },
        },
        Err(outcome) => outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{MetricError, StaticMetrics};
    use crate::context::CancelToken;
    use crate::testing::{FnMetrics, MemoryBackend, journaled};

    const QUERY: &str = "max(error_ratio{service=\"web\"})";

    fn stage(backend: &MemoryBackend, metrics: Arc<dyn MetricSource>) -> TrafficShiftStage {
        TrafficShiftStage::new(
            TrafficKit::new(metrics, Arc::new(Budgets::default()))
                .with_backend(Arc::new(backend.clone())),
        )
    }

    fn context() -> StageContext {
        StageContext::new(
            "shift",
            "run",
            Duration::from_secs(24 * 3_600),
            CancelToken::never(),
        )
    }

    /// Errors that rise as traffic leaves `web/east`: 0.001 at full weight, `per_weight` more
    /// for every unit of weight gone.
    fn rising_errors(backend: &MemoryBackend, per_weight: f64) -> Arc<dyn MetricSource> {
        Arc::new(FnMetrics {
            backend: backend.clone(),
            f: move |backend: &MemoryBackend| {
                Ok(0.001 + f64::from(100 - backend.weight("web/east")) * per_weight)
            },
        })
    }

    fn closed_loop() -> Value {
        json!({
            "backend": "memory", "servers": ["web/east"], "to_weight": 0,
            "first_step": 5, "step": 10, "max_step": 40, "wait": "1m",
            "health_query": QUERY, "health_below": 0.05,
        })
    }

    fn weights(steps: &[Step]) -> Vec<u64> {
        steps
            .iter()
            .map(|step| step.state["weight"].as_u64().unwrap())
            .collect()
    }

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
        let mut no_step = base.clone();
        no_step.as_object_mut().unwrap().remove("step");
        assert!(error(no_step).contains("argument `step` is required"));
    }

    #[test]
    fn closed_loop_arguments_are_checked_together() {
        let error = |extra: Value| {
            let mut args = json!({ "haproxy": "/run/h.sock", "servers": ["web/s1"], "to_weight": 0, "step": 10 });
            for (key, value) in extra.as_object().unwrap() {
                args[key] = value.clone();
            }
            parse(&args).unwrap_err()
        };
        assert_eq!(
            error(json!({ "health_query": QUERY })).argument(),
            Some("health_below")
        );
        assert_eq!(
            error(json!({ "health_below": 0.05 })).argument(),
            Some("health_query")
        );
        assert_eq!(error(json!({ "grow": 3 })).argument(), Some("grow"));
        assert_eq!(
            error(json!({ "health_query": QUERY, "health_below": 0.05, "slow_at": 1.5 }))
                .argument(),
            Some("slow_at")
        );
        assert_eq!(
            error(json!({ "health_query": QUERY, "health_below": 0.05, "grow": 1 })).argument(),
            Some("grow")
        );
        assert_eq!(
            error(json!({ "budget_limit": 2 })).argument(),
            Some("budget")
        );
        assert_eq!(
            error(json!({ "budget": "web", "budget_limit": 0 })).argument(),
            Some("budget_limit")
        );
    }

    #[test]
    fn the_loop_grows_while_healthy_and_shrinks_near_the_limit() {
        let health = HealthLoop {
            query: QUERY.to_string(),
            below: 0.05,
            slow_at: 0.5,
            grow: 2.0,
            max_step: Some(Amount::Absolute(40.0)),
            breach_hold: Duration::ZERO,
        };
        let wait = Duration::from_secs(60);
        let decide = |reading, first, previous| {
            adapt(
                &health, reading, first, None, previous, 10.0, 5.0, 100.0, wait,
            )
        };
        let first = decide(Reading::Healthy(0.001), true, None);
        assert_eq!((first.size, first.adapt, first.wait), (5.0, "first", wait));
        let steady = decide(Reading::Healthy(0.001), false, None);
        assert_eq!((steady.size, steady.adapt), (10.0, "steady"));
        let grown = decide(Reading::Healthy(0.001), false, Some(10.0));
        assert_eq!((grown.size, grown.adapt), (20.0, "grow"));
        let capped = decide(Reading::Healthy(0.001), false, Some(30.0));
        assert_eq!(capped.size, 40.0);
        let near = decide(Reading::Near(0.03), false, Some(40.0));
        assert_eq!((near.size, near.adapt), (20.0, "shrink"));
        assert_eq!(near.wait, wait * NEAR_LIMIT_WAIT_FACTOR);
        assert!(near.why.contains("near the limit 0.05"), "{}", near.why);
        let floor = decide(Reading::Near(0.04), false, Some(6.0));
        assert_eq!(floor.size, 5.0, "never below the first step");
        let operator = adapt(
            &health,
            Reading::Near(0.03),
            false,
            Some(25.0),
            Some(40.0),
            10.0,
            5.0,
            100.0,
            wait,
        );
        assert_eq!((operator.size, operator.adapt), (25.0, "operator"));
        assert_eq!(
            operator.wait,
            wait * NEAR_LIMIT_WAIT_FACTOR,
            "the wait still doubles"
        );
    }

    /// The complaint: "the shift kept going while errors rose". Errors grow with every unit
    /// of weight moved; the shift must stop before a step is taken at or above the limit,
    /// and say so.
    #[tokio::test(start_paused = true)]
    async fn the_shift_stops_when_errors_rise_to_the_limit() {
        let backend = MemoryBackend::with(&[("web/east", 100, 0)]);
        let metrics = rising_errors(&backend, 0.001);
        let mut ctx = context();
        let steps = journaled(&mut ctx);
        let outcome = stage(&backend, metrics)
            .run(ctx.clone(), &closed_loop())
            .await;
        let StageOutcome::Failed {
            error, retryable, ..
        } = outcome
        else {
            panic!("the shift went on: {outcome:?}");
        };
        assert!(retryable);
        assert!(error.contains("at or above its limit 0.05"), "{error}");
        let stopped_at = backend.weight("web/east");
        assert!(
            error.contains(&format!("stopped at weight {stopped_at}")),
            "{error}"
        );
        // Errors reach 0.05 once 49 units have left: the shift stopped around there, not at 0.
        assert!((40..=55).contains(&stopped_at), "stopped at {stopped_at}");
        let steps = steps.lock().unwrap().clone();
        for step in &steps {
            let health = &step.state["health"];
            assert!(health["value"].as_f64().unwrap() < 0.05, "{health}");
        }
        // It slowed down before it stopped, and the journal says why.
        assert!(
            steps.iter().any(|s| s.state["health"]["adapt"] == "shrink"),
            "{steps:?}"
        );
        let output = ctx.output.snapshot().text;
        assert!(output.contains("near the limit"), "{output}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_shift_grows_its_steps_up_to_the_cap() {
        let backend = MemoryBackend::with(&[("web/east", 100, 0)]);
        let metrics = rising_errors(&backend, 0.0);
        let mut ctx = context();
        let steps = journaled(&mut ctx);
        let started = tokio::time::Instant::now();
        let outcome = stage(&backend, metrics).run(ctx, &closed_loop()).await;
        assert!(outcome.is_success(), "{outcome:?}");
        let steps = steps.lock().unwrap().clone();
        // 5 first, then 10, 20, 40, 40 (capped), the rest.
        assert_eq!(weights(&steps), vec![95, 85, 65, 25, 0]);
        let adapts: Vec<_> = steps
            .iter()
            .map(|s| s.state["health"]["adapt"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(adapts, ["first", "steady", "grow", "grow", "grow"]);
        // Healthy: the written wait, one per step but the last.
        assert_eq!(started.elapsed(), Duration::from_secs(4 * 60));
    }

    #[tokio::test(start_paused = true)]
    async fn near_the_limit_steps_stay_small_and_waits_double() {
        let backend = MemoryBackend::with(&[("web/east", 100, 0)]);
        let metrics = Arc::new(StaticMetrics::new());
        metrics.set(QUERY, 0.04);
        let mut ctx = context();
        let steps = journaled(&mut ctx);
        let started = tokio::time::Instant::now();
        let outcome = stage(&backend, metrics).run(ctx, &closed_loop()).await;
        assert!(outcome.is_success(), "{outcome:?}");
        let steps = steps.lock().unwrap().clone();
        // Every step the smallest (5), every wait two minutes.
        assert_eq!(steps.len(), 20);
        assert_eq!(weights(&steps)[..3], [95, 90, 85]);
        assert_eq!(started.elapsed(), Duration::from_secs(19 * 2 * 60));
        assert_eq!(steps[3].state["health"]["wait_ms"], 120_000);
    }

    #[tokio::test(start_paused = true)]
    async fn no_data_or_nan_fails_closed_before_any_change() {
        for broken in [None, Some(f64::NAN)] {
            let backend = MemoryBackend::with(&[("web/east", 100, 0)]);
            let metrics = Arc::new(StaticMetrics::new());
            if let Some(value) = broken {
                metrics.set(QUERY, value);
            }
            let outcome = stage(&backend, metrics)
                .run(context(), &closed_loop())
                .await;
            let StageOutcome::Failed { error, .. } = outcome else {
                panic!("{outcome:?}");
            };
            assert!(error.contains("failing closed"), "{error}");
            assert_eq!(backend.weight("web/east"), 100, "nothing moved");
            assert!(backend.log().is_empty());
        }
        let backend = MemoryBackend::with(&[("web/east", 100, 0)]);
        let metrics = Arc::new(StaticMetrics::new());
        metrics.set_error(
            QUERY,
            MetricError::Unreachable {
                reason: "connection refused".to_string(),
            },
        );
        let outcome = stage(&backend, metrics)
            .run(context(), &closed_loop())
            .await;
        assert!(
            matches!(&outcome, StageOutcome::Failed { error, .. } if error.contains("connection refused")),
            "{outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_breach_held_through_a_spike_continues_and_one_that_lasts_fails() {
        let backend = MemoryBackend::with(&[("web/east", 100, 0)]);
        let metrics = Arc::new(StaticMetrics::new());
        metrics.set(QUERY, 0.2);
        let mut args = closed_loop();
        args["breach_hold"] = json!("2m");
        let ctx = context();
        let run = {
            let stage = stage(&backend, metrics.clone());
            let ctx = ctx.clone();
            let args = args.clone();
            tokio::spawn(async move { stage.run(ctx, &args).await })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(backend.weight("web/east"), 100, "held while breached");
        metrics.set(QUERY, 0.001);
        let outcome = run.await.unwrap();
        assert!(outcome.is_success(), "{outcome:?}");
        let output = ctx.output.snapshot().text;
        assert!(output.contains("holding at weight 100"), "{output}");
        assert!(output.contains("is back to 0.001"), "{output}");

        let backend = MemoryBackend::with(&[("web/east", 100, 0)]);
        metrics.set(QUERY, 0.2);
        let started = tokio::time::Instant::now();
        let outcome = stage(&backend, metrics).run(context(), &args).await;
        let StageOutcome::Failed { error, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(error.contains("after holding 120000 ms"), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(120));
        assert_eq!(backend.weight("web/east"), 100);
    }

    /// The complaint: "two tasks of one service shifted at once and saturated its network".
    #[tokio::test(start_paused = true)]
    async fn two_shifts_of_one_service_take_turns_within_its_budget() {
        let backend = MemoryBackend::with(&[("web/east", 100, 0), ("web/west", 100, 0)]);
        let kit = TrafficKit::new(Arc::new(StaticMetrics::new()), Arc::new(Budgets::default()))
            .with_backend(Arc::new(backend.clone()));
        let stage = Arc::new(TrafficShiftStage::new(kit.clone()));
        let args = |server: &str| {
            json!({ "backend": "memory", "servers": [server], "to_weight": 0, "step": 50,
                    "wait": "1m", "budget": "web", "budget_limit": 1 })
        };
        let mut runs = Vec::new();
        let mut contexts = Vec::new();
        for server in ["web/east", "web/west"] {
            let stage = stage.clone();
            let ctx = context();
            contexts.push(ctx.clone());
            let args = args(server);
            runs.push(tokio::spawn(async move { stage.run(ctx, &args).await }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(kit.budgets().in_use("web"), 1);
        for run in runs {
            assert!(run.await.unwrap().is_success());
        }
        assert_eq!(kit.budgets().in_use("web"), 0, "given back");
        // One service's shifts never interleave.
        let log = backend.log();
        let first_west = log.iter().position(|l| l.starts_with("web/west")).unwrap();
        let last_east = log.iter().rposition(|l| l.starts_with("web/east")).unwrap();
        assert!(last_east < first_west, "{log:?}");
        let waited = contexts[1].output.snapshot().text;
        assert!(
            waited.contains("waiting for network budget `web`: 1 of 1"),
            "{waited}"
        );
        // With a limit of 2, they run together.
        let backend = MemoryBackend::with(&[("web/east", 100, 0), ("web/west", 100, 0)]);
        let kit = TrafficKit::new(Arc::new(StaticMetrics::new()), Arc::new(Budgets::default()))
            .with_backend(Arc::new(backend.clone()));
        let stage = Arc::new(TrafficShiftStage::new(kit));
        let started = tokio::time::Instant::now();
        let together: Vec<_> = ["web/east", "web/west"]
            .into_iter()
            .map(|server| {
                let stage = stage.clone();
                let mut args = args(server);
                args["budget_limit"] = json!(2);
                tokio::spawn(async move { stage.run(context(), &args).await })
            })
            .collect();
        for run in together {
            assert!(run.await.unwrap().is_success());
        }
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(60) + Duration::from_millis(BUDGET_GRANT_DELAY_MS)
        );
    }

    /// A rehearsal must give the same schedule every time: a freed unit goes to the first
    /// waiter, never to whoever happens to look first.
    #[tokio::test(start_paused = true)]
    async fn a_freed_budget_goes_to_the_first_waiter() {
        let budgets = Arc::new(Budgets::default());
        let held = budgets.try_acquire("db", 1).unwrap();
        let far = tokio::time::Instant::now() + Duration::from_secs(3_600);
        let wait = |who: &'static str| {
            let budgets = budgets.clone();
            tokio::spawn(async move {
                budgets
                    .acquire("db", 1, who, &CancelToken::never(), far)
                    .await
                    .map(|guard| (who, guard))
            })
        };
        let second = wait("b-second");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let late = wait("a-late");
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert!(
            budgets.try_acquire("db", 1).is_none(),
            "handed over, not freed"
        );
        let (who, guard) = second.await.unwrap().unwrap();
        assert_eq!(who, "b-second");
        assert_eq!(budgets.in_use("db"), 1);
        drop(guard);
        let (who, guard) = late.await.unwrap().unwrap();
        assert_eq!(who, "a-late");
        drop(guard);
        assert_eq!(budgets.in_use("db"), 0);
        // A waiter that gives up passes nothing on and leaves no trace.
        let held = budgets.try_acquire("db", 1).unwrap();
        let soon = tokio::time::Instant::now() + Duration::from_secs(5);
        let gave_up = budgets
            .acquire("db", 1, "c", &CancelToken::never(), soon)
            .await
            .unwrap_err();
        assert_eq!(gave_up, BudgetWait::TimedOut);
        drop(held);
        assert_eq!(budgets.in_use("db"), 0);
        assert!(budgets.try_acquire("db", 1).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_shift_continues_from_its_last_committed_weight() {
        let backend = MemoryBackend::with(&[("web/east", 60, 0)]);
        let metrics = rising_errors(&backend, 0.0);
        let mut ctx = context();
        ctx.resume_from = Some(Step {
            index: 2,
            state: json!({ "weight": 60, "from": 100 }),
        });
        let steps = journaled(&mut ctx);
        let outcome = stage(&backend, metrics).run(ctx, &closed_loop()).await;
        assert!(outcome.is_success(), "{outcome:?}");
        let steps = steps.lock().unwrap().clone();
        assert_eq!(steps[0].index, 3);
        // A resumed shift starts again at `step`, not at a grown size.
        assert_eq!(steps[0].state["weight"], 50);
    }
}
