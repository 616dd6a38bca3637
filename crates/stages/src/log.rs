//! The `log` stage: a change-log entry in the run's record.

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::context::{CapturedOutput, StageContext, StageOutcome, StageOutput};

/// The longest `message`, in bytes: a change-log line, not a document.
pub const MAX_LOG_MESSAGE_BYTES: usize = 4 * 1024;

pub(crate) const LOG_ARGS: &[ArgSpec] = &[ArgSpec {
    name: "message",
    kind: ArgKind::String,
    required: true,
    description: "The change-log entry to record, such as `web drained from dc1 for rack swap`.",
}];

fn parse(args: &Value) -> Result<String, ArgError> {
    let args = Args::checked(LOG_ARGS, args)?;
    let message = args.required_string("message")?;
    if message.trim().is_empty() {
        return Err(ArgError::invalid("message", "the message is empty"));
    }
    if message.len() > MAX_LOG_MESSAGE_BYTES {
        return Err(ArgError::invalid(
            "message",
            format!(
                "{} bytes is longer than the limit of {MAX_LOG_MESSAGE_BYTES}",
                message.len()
            ),
        ));
    }
    Ok(message.to_string())
}

/// Records a message as the task's output, so it lands in the run's history beside what was
/// done. Idempotent: recording the same entry again after a crash repeats a line, harms nothing.
#[derive(Debug, Default)]
pub struct LogStage;

#[async_trait]
impl Stage for LogStage {
    fn name(&self) -> &'static str {
        "log"
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn args(&self) -> &'static [ArgSpec] {
        LOG_ARGS
    }

    fn validate(&self, args: &Value) -> Result<(), ArgError> {
        parse(args).map(|_| ())
    }

    async fn run(&self, ctx: StageContext, args: &Value) -> StageOutcome {
        let message = match parse(args) {
            Ok(message) => message,
            Err(error) => return StageOutcome::invalid_args(error),
        };
        tracing::info!(run = %ctx.run_id, task = %ctx.task_id, %message, "change log");
        ctx.output.write(message.as_bytes());
        StageOutcome::Succeeded {
            output: StageOutput {
                captured: CapturedOutput {
                    text: message.clone(),
                    cut_bytes: 0,
                },
                data: json!({ "message": message }),
            },
        }
    }
}
