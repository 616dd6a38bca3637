//! The stage library: what a runbook task can do, behind one trait, and the checks behind its
//! `pre`, `post` and `health` conditions.
//!
//! A task names a stage (`stage: shell`) and gives it arguments (`with:`). The runbook engine
//! looks the stage up in a [`Registry`], validates the arguments before the run starts
//! ([`Stage::validate`]), journals that the step starts, runs it ([`Stage::run`]) with a
//! [`StageContext`] (cancellation, a deadline, a step reporter, an output sink), and journals the
//! [`StageOutcome`]. Because execution is at-least-once, every stage says whether running it
//! twice is safe ([`Stage::idempotent`], refined by [`Stage::idempotent_for`] from the
//! arguments); an in-flight step of a stage that is not idempotent waits for an operator after a
//! crash instead of being re-run.
//!
//! # Stages carried out here
//!
//! | stage   | arguments | idempotent |
//! |---------|-----------|------------|
//! | `shell` | `command: [program, arg, ...]` (required), `env: {K: V}`, `cwd`, `timeout` (30s) | no |
//! | `http`  | `method` (GET), `url` (required), `body`, `headers`, `expect_status` (2xx), `timeout` (10s) | GET, HEAD, PUT, DELETE, OPTIONS |
//! | `wait`  | `duration`, or `until` (a check as in `pre`), `every` (5s), `deadline` (1h) | yes |
//! | `traffic_shift` | `haproxy` (socket) or `backend`, `servers: [BACKEND/SERVER]`, `to_weight`, `from_weight`, `step`, `first_step`, `wait`, `ready_first`, `then_maint`, `drain_timeout`; closed loop: `health_query`, `health_below`, `slow_at`, `grow`, `max_step`, `breach_hold`; `budget`, `budget_limit` | yes |
//! | `sticky_drain` | `haproxy`/`backend`, `servers`, `sessions_below`, `session_timeout`, `restart` (hook), `batches`, `wait`, `step`, `first_step`, `restore`, `to_weight`, `hook_timeout`, `idempotent`, closed loop and budget as `traffic_shift` | yes, or as `idempotent` says with `restart` |
//! | `replication` | `haproxy`/`backend`, `servers`, `direction` (`drain`/`restore`), `stop`/`start` (hooks), `bandwidth_mbps`, `lag_query`, `lag_below`, `catchup_timeout`, `to_weight`, `step`, `first_step`, `wait`, `hook_timeout`, `idempotent`, closed loop and budget | as `idempotent` says (yes) |
//! | `promote_primary` | `haproxy`/`backend`, `promote`, `promote_hook`, `verify` (a check), `verify_timeout`, `ready_first`, `to_weight`, `away_from`, `then_maint`, `drain_timeout`, `step`, `first_step`, `wait`, `hook_timeout`, `idempotent`, closed loop and budget | yes, or as `idempotent` says with a hook |
//! | `ramp`  | `command`, `from`, `to`, `step`, `first_step`, `wait`, `env`, `timeout`, `idempotent` | if it says so |
//! | `log`   | `message` (required) | yes |
//!
//! The four traffic stages are Maelstrom's four kinds of traffic: `traffic_shift` (stateless;
//! optionally a closed loop on a health metric, see [`traffic`](TrafficShiftStage)),
//! `sticky_drain`, `replication` and `promote_primary`. They share [`TrafficKit`]: the named
//! backends, the registry's metric source and its network budgets. Hooks (`restart`, `stop`,
//! `start`, `promote_hook`) are a command (argv, no shell) or an `http://` URL to POST to.
//!
//! `ramp` is the generic paced stage: it moves a value from `from` to `to` in steps (the first
//! one `first_step`, then `step`, each a number or a percentage of the whole span), running
//! `command` once per step with `{value}` replaced, committing each step before the next, and
//! waiting `wait` between steps. An operator may change `step` and `wait` while it runs
//! ([`StageContext::pace`]); a resumed task continues from the value its last committed step
//! reached.
//!
//! `shell` runs argv directly, never through a shell, in its own process group; at its timeout
//! or on cancellation the whole group gets SIGTERM, then SIGKILL after [`KILL_GRACE_MS`].
//! Output is kept up to [`MAX_OUTPUT_BYTES`] (the tail for commands, the head for HTTP bodies).
//! `http` follows at most [`MAX_HTTP_REDIRECTS`] redirects and only within the scheme, host and
//! port of the written URL; a redirect anywhere else fails the stage.
//!
//! # Stages carried out by the server
//!
//! `approval` (`approvers?: [names]`, `not_starter: bool`, `expires: 1h`) waits on an operator
//! and `state` (`machine`, `advance?: STATE`, `event?`, `wait_for?: [STATE...]`, `timeout`)
//! advances or waits on a Levee state machine. Both need the server's store, so they are not
//! implemented here; the registry lists their arguments ([`SERVER_STAGES`]) so definitions that
//! use them are linted like any other, and [`Registry::stage_execution`] says
//! [`Execution::Server`] for them. Likewise the `state` check ([`SERVER_CHECKS`]).
//!
//! # Checks
//!
//! [`Check`]s only observe. `http` (GET, expected status, optionally a JSON `field` that
//! `equals` a value), `shell` (exit code 0) and `metric` (`query` with `below` and/or `above`,
//! over any [`MetricSource`]). Every uncertain answer fails the check: no data, NaN, an
//! unreachable source, an unreadable body.

mod args;
mod check;
mod context;
mod haproxy;
mod hook;
mod http;
#[cfg(test)]
mod kinds_tests;
mod log;
mod process;
mod prometheus;
mod promote;
mod ramp;
mod registry;
mod replication;
mod shell;
mod sticky;
#[cfg(test)]
mod testing;
mod traffic;
mod wait;

use async_trait::async_trait;

pub use args::{ArgError, ArgKind, ArgSpec, Strictness, check_args};
pub use check::{
    Check, CheckOutcome, HttpCheck, MAX_CHECK_OUTPUT_BYTES, MAX_FIELD_PATH_SEGMENTS,
    METRIC_QUERY_TIMEOUT_MS, MetricCheck, MetricError, MetricSource, NoMetricSource, ShellCheck,
    StaticMetrics, json_field,
};
pub use context::{
    CancelToken, Canceller, CapturedOutput, CheckRunner, FENCING_TOKEN_ENV, FENCING_TOKEN_HEADER,
    MAX_OUTPUT_BYTES, NoChecks, OutputSink, PaceSetter, PaceWatch, STEP_CHANNEL_CAPACITY,
    StageContext, StageOutcome, StageOutput, Step, StepCommit, StepError, StepReporter,
};
pub use haproxy::{
    HAPROXY_COMMAND_TIMEOUT_MS, Haproxy, HaproxySocket, MAX_HAPROXY_ANSWER_BYTES,
    MAX_HAPROXY_WEIGHT,
};
pub use hook::{DEFAULT_HOOK_TIMEOUT_MS, MAX_HOOK_TIMEOUT_MS};
pub use http::{
    DEFAULT_HTTP_TIMEOUT_MS, HttpStage, MAX_EXPECTED_STATUSES, MAX_HTTP_HEADERS,
    MAX_HTTP_REDIRECTS, MAX_HTTP_REQUEST_BODY_BYTES, MAX_HTTP_TIMEOUT_MS,
};
pub use log::{LogStage, MAX_LOG_MESSAGE_BYTES};
pub use process::{KILL_GRACE_MS, PIPE_DRAIN_AFTER_EXIT_MS};
pub use prometheus::{
    MAX_PROMETHEUS_ANSWER_BYTES, PROMETHEUS_QUERY_TIMEOUT_MS, PrometheusSource, read_answer,
};
pub use promote::{DEFAULT_VERIFY_TIMEOUT_MS, PromotePrimaryStage, VERIFY_POLL_INTERVAL_MS};
pub use ramp::{MAX_RAMP_STEPS, RampStage, ramp_values};
pub use registry::{
    Execution, LintError, MAX_APPROVAL_EXPIRY_MS, MAX_APPROVERS, MAX_STATE_LIST, Registry,
    RegistryError, SERVER_CHECKS, SERVER_STAGES, ServerCheck, ServerStage,
};
pub use replication::{
    DEFAULT_CATCHUP_TIMEOUT_MS, LAG_POLL_INTERVAL_MS, MAX_BANDWIDTH_MBPS, ReplicationStage,
};
pub use shell::{
    DEFAULT_SHELL_TIMEOUT_MS, MAX_COMMAND_ARGS, MAX_ENV_ENTRIES, MAX_SHELL_TIMEOUT_MS, ShellStage,
};
pub use sticky::{
    DEFAULT_SESSION_TIMEOUT_MS, DEFAULT_TEARDOWN_BATCHES, MAX_TEARDOWN_BATCHES, StickyDrainStage,
};
pub use traffic::{
    BUDGET_GRANT_DELAY_MS, BudgetGuard, BudgetWait, Budgets, DEFAULT_DRAIN_TIMEOUT_MS,
    DEFAULT_MAX_STEP_MULTIPLE, DEFAULT_SLOW_AT_FRACTION, DEFAULT_STEP_GROWTH_FACTOR,
    DRAIN_POLL_INTERVAL_MS, HEALTH_HOLD_POLL_MS, MAX_BUDGET_LIMIT, MAX_STEP_GROWTH_FACTOR,
    MAX_TRAFFIC_TARGETS, NEAR_LIMIT_WAIT_FACTOR, Replication, ServerStatus, TrafficBackend,
    TrafficKit, TrafficShiftStage,
};
pub use wait::{
    CheckCall, DEFAULT_WAIT_DEADLINE_MS, DEFAULT_WAIT_EVERY_MS, MAX_WAIT_MS, MIN_WAIT_EVERY_MS,
    WaitStage, check_from_definition,
};

/// Something a runbook task can do.
#[async_trait]
pub trait Stage: Send + Sync {
    /// The name definitions use (`stage: shell`).
    fn name(&self) -> &'static str;

    /// Whether running it twice is safe (a crash may re-run an in-flight step).
    fn idempotent(&self) -> bool;

    /// Whether running it twice with these arguments is safe; stages whose safety depends on
    /// their arguments (an HTTP GET versus a POST) override it.
    fn idempotent_for(&self, _args: &serde_json::Value) -> bool {
        self.idempotent()
    }

    /// The arguments it accepts, for linting definitions (`unknown stage arguments`) and docs.
    fn args(&self) -> &'static [ArgSpec];

    /// Checks arguments before a run starts (types, ranges); errors name the argument.
    fn validate(&self, args: &serde_json::Value) -> Result<(), ArgError>;

    /// Whether the stage runs in steps whose size and wait an operator may change while it
    /// runs ([`StageContext::pace`]).
    fn paced(&self) -> bool {
        false
    }

    /// Checks an operator's pace for this stage before it is stored.
    fn validate_pace(&self, _pace: &serde_json::Value) -> Result<(), ArgError> {
        Err(ArgError::invalid(
            "pace",
            format!("stage `{}` does not run in paced steps", self.name()),
        ))
    }

    /// Does the work. Invalid arguments give a non-retryable failure rather than a panic, so a
    /// caller that skipped [`Stage::validate`] still gets an answer.
    async fn run(&self, ctx: StageContext, args: &serde_json::Value) -> StageOutcome;
}
