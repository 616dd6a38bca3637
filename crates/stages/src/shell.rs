//! The `shell` stage: run a program with arguments, never through a shell.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::context::{StageContext, StageOutcome, StageOutput};
use crate::process::{ProgramEnd, ProgramSpec, describe_status, run_program};

/// The `timeout` of a command that gives none, in milliseconds.
pub const DEFAULT_SHELL_TIMEOUT_MS: u64 = 30_000;

/// The longest `timeout` a command may ask for, in milliseconds (a day): a longer wait is a
/// runbook design problem, not a command.
pub const MAX_SHELL_TIMEOUT_MS: u64 = 24 * 3_600_000;

/// Most elements in `command` (program and arguments).
pub const MAX_COMMAND_ARGS: usize = 4_096;

/// Most entries in `env`.
pub const MAX_ENV_ENTRIES: usize = 256;

pub(crate) const SHELL_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "command",
        kind: ArgKind::StringList,
        required: true,
        description: "The program and its arguments, as a list; it is run directly, never \
                      through a shell, so templated values are never interpreted by one.",
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
        description: "How long the command may run before its whole process group is killed \
                      (30s by default, at most 24h).",
    },
];

/// The parsed arguments of a `shell` stage or check.
#[derive(Clone, Debug)]
pub(crate) struct ShellArgs {
    pub program: ProgramSpec,
    pub timeout: Duration,
}

/// Parses and checks `shell` arguments (shared with the `shell` check).
pub(crate) fn parse_shell_args(specs: &[ArgSpec], args: &Value) -> Result<ShellArgs, ArgError> {
    let args = Args::checked(specs, args)?;
    let argv = args.string_list("command")?.unwrap_or_default();
    if argv.is_empty() {
        return Err(ArgError::invalid(
            "command",
            "the list is empty; give at least the program to run",
        ));
    }
    if argv.len() > MAX_COMMAND_ARGS {
        return Err(ArgError::invalid(
            "command",
            format!(
                "{} elements is more than the limit of {MAX_COMMAND_ARGS}",
                argv.len()
            ),
        ));
    }
    if argv[0].is_empty() {
        return Err(ArgError::invalid("command", "the program name is empty"));
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err(ArgError::invalid(
            "command",
            "an argument contains a NUL byte",
        ));
    }
    let env = args.map("env")?;
    if env.len() > MAX_ENV_ENTRIES {
        return Err(ArgError::invalid(
            "env",
            format!(
                "{} variables is more than the limit of {MAX_ENV_ENTRIES}",
                env.len()
            ),
        ));
    }
    for (key, value) in &env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(ArgError::invalid(
                "env",
                format!(
                    "`{key}` is not a valid variable (names are non-empty, without `=` or NUL)"
                ),
            ));
        }
    }
    let cwd = args.string("cwd")?.map(str::to_string);
    if cwd.as_deref() == Some("") {
        return Err(ArgError::invalid("cwd", "the directory is empty"));
    }
    let timeout_ms = args
        .duration_ms("timeout", MAX_SHELL_TIMEOUT_MS)?
        .unwrap_or(DEFAULT_SHELL_TIMEOUT_MS);
    Ok(ShellArgs {
        program: ProgramSpec { argv, env, cwd },
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// Runs a program. Not idempotent: the command may do anything, so a crash in the middle of it
/// leaves the task waiting for an operator rather than running it again.
#[derive(Debug, Default)]
pub struct ShellStage;

#[async_trait]
impl Stage for ShellStage {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn args(&self) -> &'static [ArgSpec] {
        SHELL_ARGS
    }

    fn validate(&self, args: &Value) -> Result<(), ArgError> {
        parse_shell_args(SHELL_ARGS, args).map(|_| ())
    }

    async fn run(&self, ctx: StageContext, args: &Value) -> StageOutcome {
        let parsed = match parse_shell_args(SHELL_ARGS, args) {
            Ok(parsed) => parsed,
            Err(error) => return StageOutcome::invalid_args(error),
        };
        let deadline = ctx.deadline_within(parsed.timeout);
        let mut program = parsed.program;
        if let Some(token) = ctx.fencing_token {
            // Set last, so a task cannot pass a token of its own choosing.
            program
                .env
                .retain(|(key, _)| key != crate::FENCING_TOKEN_ENV);
            program
                .env
                .push((crate::FENCING_TOKEN_ENV.to_string(), token.to_string()));
        }
        let end = run_program(&program, &ctx.cancel, deadline, &ctx.output).await;
        let captured = ctx.output.snapshot();
        match end {
            ProgramEnd::Exited(status) if status.success() => StageOutcome::Succeeded {
                output: StageOutput {
                    captured,
                    data: json!({ "exit_code": 0 }),
                },
            },
            ProgramEnd::Exited(status) => {
                let error = format!(
                    "`{}` {}; last output:\n{}",
                    program.argv[0],
                    describe_status(&status),
                    captured.display()
                );
                StageOutcome::Failed {
                    error,
                    retryable: true,
                    output: StageOutput {
                        captured,
                        data: json!({ "exit_code": status.code() }),
                    },
                }
            }
            ProgramEnd::SpawnFailed(error) => StageOutcome::Failed {
                error,
                retryable: false,
                output: StageOutput {
                    captured,
                    data: Value::Null,
                },
            },
            ProgramEnd::Cancelled => StageOutcome::Cancelled,
            ProgramEnd::TimedOut => StageOutcome::TimedOut,
        }
    }
}
