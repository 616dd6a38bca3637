//! Hooks: what the traffic stages run to act on something Levee cannot reach through a
//! traffic backend (restart a batch of jobs, stop replication, promote a replica).
//!
//! A hook is written either as a command, `[program, arg, ...]`, run without a shell like
//! `shell` (`{name}` placeholders in its arguments replaced by the step's values, the run's
//! fencing token in [`crate::FENCING_TOKEN_ENV`]), or as an `http://` URL that is sent a
//! `POST` with the step's values as a JSON object (and the fencing token in
//! [`crate::FENCING_TOKEN_HEADER`]). Either must succeed (exit 0, a 2xx answer) within the
//! hook's timeout.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::args::ArgError;
use crate::context::StageContext;
use crate::http::{RequestEnd, RequestSpec, send};
use crate::process::{ProgramEnd, ProgramSpec, describe_status, run_program};
use crate::shell::MAX_COMMAND_ARGS;

/// How long one hook may run when the task does not say (`hook_timeout`), in milliseconds.
pub const DEFAULT_HOOK_TIMEOUT_MS: u64 = 60_000;

/// The longest `hook_timeout`, in milliseconds.
pub const MAX_HOOK_TIMEOUT_MS: u64 = 3_600_000;

/// A command or an HTTP endpoint to call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Hook {
    Program(Vec<String>),
    Post(reqwest::Url),
}

/// Reads a hook as written: a list of strings (a command) or an `http://` URL.
pub(crate) fn parse_hook(argument: &str, value: &Value) -> Result<Hook, ArgError> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ArgError::invalid(argument, "the command is empty"));
            }
            if items.len() > MAX_COMMAND_ARGS {
                return Err(ArgError::invalid(
                    argument,
                    format!("more than {MAX_COMMAND_ARGS} arguments"),
                ));
            }
            let argv = items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| ArgError::invalid(argument, "a command is a list of strings"))?;
            if argv[0].trim().is_empty() {
                return Err(ArgError::invalid(argument, "the program name is empty"));
            }
            Ok(Hook::Program(argv))
        }
        Value::String(text) => {
            let url = reqwest::Url::parse(text).map_err(|error| {
                ArgError::invalid(argument, format!("`{text}` is not a URL: {error}"))
            })?;
            if url.scheme() != "http" || url.host_str().is_none_or(str::is_empty) {
                return Err(ArgError::invalid(
                    argument,
                    format!("`{text}` is not an http:// URL with a host"),
                ));
            }
            Ok(Hook::Post(url))
        }
        _ => Err(ArgError::invalid(
            argument,
            "write a command as a list of strings, or an http:// URL to POST to",
        )),
    }
}

/// Runs the hook with `values` (substituted as `{name}` in a command's arguments, sent as a
/// JSON object to a URL). `Err` says what failed; `Ok` may still be a cancellation, which
/// the caller sees on its token.
pub(crate) async fn run_hook(
    ctx: &StageContext,
    what: &str,
    hook: &Hook,
    values: &[(&str, String)],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = ctx.deadline_within(timeout);
    match hook {
        Hook::Program(argv) => {
            let argv: Vec<String> = argv
                .iter()
                .map(|arg| {
                    values.iter().fold(arg.clone(), |arg, (name, value)| {
                        arg.replace(&format!("{{{name}}}"), value)
                    })
                })
                .collect();
            let mut env = Vec::new();
            if let Some(token) = ctx.fencing_token {
                env.push((crate::FENCING_TOKEN_ENV.to_string(), token.to_string()));
            }
            let spec = ProgramSpec {
                argv,
                env,
                cwd: None,
            };
            match run_program(&spec, &ctx.cancel, deadline, &ctx.output).await {
                ProgramEnd::Exited(status) if status.success() => Ok(()),
                ProgramEnd::Exited(status) => Err(format!(
                    "{what}: `{}` {}",
                    spec.argv[0],
                    describe_status(&status)
                )),
                ProgramEnd::SpawnFailed(error) => Err(format!("{what}: {error}")),
                ProgramEnd::Cancelled => Err(format!("{what}: cancelled")),
                ProgramEnd::TimedOut => Err(format!(
                    "{what}: `{}` did not finish within {} ms",
                    spec.argv[0],
                    timeout.as_millis()
                )),
            }
        }
        Hook::Post(url) => {
            let body: Map<String, Value> = values
                .iter()
                .map(|(name, value)| (name.to_string(), Value::String(value.clone())))
                .collect();
            let mut headers = HeaderMap::new();
            if let Some(token) = ctx.fencing_token
                && let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(crate::FENCING_TOKEN_HEADER.as_bytes()),
                    HeaderValue::from_str(&token.to_string()),
                )
            {
                headers.insert(name, value);
            }
            let spec = RequestSpec {
                method: Method::POST,
                url: url.clone(),
                body: Some((
                    serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
                    true,
                )),
                headers,
                expect_status: None,
                timeout,
            };
            match send(&spec, &ctx.cancel, deadline).await {
                RequestEnd::Response(response) if spec.status_ok(response.status) => Ok(()),
                RequestEnd::Response(response) => Err(format!(
                    "{what}: POST {url} answered {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body).trim()
                )),
                RequestEnd::Failed { error, .. } => Err(format!("{what}: {error}")),
                RequestEnd::Cancelled => Err(format!("{what}: cancelled")),
                RequestEnd::TimedOut => Err(format!(
                    "{what}: POST {url} did not answer within {} ms",
                    timeout.as_millis()
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hooks_are_commands_or_http_urls() {
        assert_eq!(
            parse_hook("stop", &json!(["pg_ctl", "stop"])),
            Ok(Hook::Program(vec!["pg_ctl".into(), "stop".into()]))
        );
        assert!(matches!(
            parse_hook("stop", &json!("http://db:8080/replication/stop")),
            Ok(Hook::Post(_))
        ));
        for bad in [json!([]), json!("ftp://x/y"), json!(3), json!([1, 2])] {
            let error = parse_hook("stop", &bad).unwrap_err();
            assert_eq!(error.argument(), Some("stop"), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_command_hook_gets_the_values_and_a_failing_one_says_so() {
        let ctx = StageContext::new(
            "t",
            "r",
            Duration::from_secs(10),
            crate::CancelToken::never(),
        );
        let hook = Hook::Program(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo restarting {server}".into(),
        ]);
        run_hook(
            &ctx,
            "restart",
            &hook,
            &[("server", "chat/east".to_string())],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(ctx.output.snapshot().text.contains("restarting chat/east"));
        let failing = Hook::Program(vec!["/bin/false".into()]);
        let error = run_hook(&ctx, "restart", &failing, &[], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(error.contains("exited with code 1"), "{error}");
    }
}
