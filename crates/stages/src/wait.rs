//! The `wait` stage: pause a runbook for a fixed time.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::context::{StageContext, StageOutcome, StageOutput};

/// The longest `duration` a wait may ask for, in milliseconds (a week).
pub const MAX_WAIT_MS: u64 = 7 * 24 * 3_600_000;

pub(crate) const WAIT_ARGS: &[ArgSpec] = &[ArgSpec {
    name: "duration",
    kind: ArgKind::Duration,
    required: true,
    description: "How long to wait, such as `500ms`, `5s`, `10m` or `1h30m` (at most a week).",
}];

fn parse(args: &Value) -> Result<Duration, ArgError> {
    let args = Args::checked(WAIT_ARGS, args)?;
    let ms = args
        .duration_ms("duration", MAX_WAIT_MS)?
        .ok_or_else(|| ArgError::Missing {
            argument: "duration".to_string(),
            description: WAIT_ARGS[0].description.to_string(),
        })?;
    Ok(Duration::from_millis(ms))
}

/// Sleeps for `duration`, stopping early when cancelled.
///
/// It is idempotent and does not journal progress: after a crash the whole wait starts again,
/// which only ever waits longer, never shorter, than the author asked — the safe direction.
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
        let duration = match parse(args) {
            Ok(duration) => duration,
            Err(error) => return StageOutcome::invalid_args(error),
        };
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
}
