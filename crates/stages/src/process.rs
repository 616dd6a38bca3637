//! Running a program in its own process group, bounded in time and output, and killing the whole
//! group when it must stop. Shared by the `shell` stage and the `shell` check.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::context::{CancelToken, OutputSink};

/// After SIGTERM, how long the process group has to exit before it gets SIGKILL.
pub const KILL_GRACE_MS: u64 = 2_000;

/// After the program exits, how long its pipes may stay open (held by a background child it
/// left behind) before Levee stops reading and kills what is left of its process group. A stage
/// must not leave processes behind that nobody tracks.
pub const PIPE_DRAIN_AFTER_EXIT_MS: u64 = 1_000;

/// How often, while waiting out [`KILL_GRACE_MS`], Levee looks whether the group is gone.
const GROUP_POLL_INTERVAL_MS: u64 = 20;

/// Bytes read from a pipe at a time.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// A program to run: argv (never through a shell), extra environment, working directory.
#[derive(Clone, Debug)]
pub(crate) struct ProgramSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
}

/// How a program run ended.
#[derive(Debug)]
pub(crate) enum ProgramEnd {
    /// It exited by itself (possibly killed by a signal someone else sent).
    Exited(ExitStatus),
    /// It could not be started.
    SpawnFailed(String),
    /// Cancellation was asked for; the group was killed.
    Cancelled,
    /// The deadline passed; the group was killed.
    TimedOut,
}

/// Describes an exit status as a sentence fragment ("exited with code 3", "was killed by
/// signal 9").
pub(crate) fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended in an unknown way".to_string(),
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a process group.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

fn group_exists(pgid: i32) -> bool {
    // SAFETY: as above; signal 0 only checks that the group exists.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// Kills the group if the run is abandoned (its future dropped) before the group was dealt
/// with, so no process outlives a stage its caller gave up on.
struct GroupGuard {
    pgid: Option<i32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// SIGTERM to the group, up to [`KILL_GRACE_MS`] for it to disappear, then SIGKILL to whatever
/// is left, and the leader reaped.
async fn terminate_group(child: &mut Child, pgid: i32) {
    signal_group(pgid, libc::SIGTERM);
    let grace_end = Instant::now() + Duration::from_millis(KILL_GRACE_MS);
    let mut leader_reaped = false;
    loop {
        if !leader_reaped {
            leader_reaped = matches!(child.try_wait(), Ok(Some(_)));
        }
        if leader_reaped && !group_exists(pgid) {
            return;
        }
        if Instant::now() >= grace_end {
            break;
        }
        sleep(Duration::from_millis(GROUP_POLL_INTERVAL_MS)).await;
    }
    signal_group(pgid, libc::SIGKILL);
    if !leader_reaped {
        let _ = child.wait().await;
    }
}

/// Runs the program in a new process group with stdin closed, writing stdout and stderr
/// (interleaved as they arrive) into `sink`. At `deadline` or on cancellation the whole group
/// gets SIGTERM, then SIGKILL after [`KILL_GRACE_MS`].
pub(crate) async fn run_program(
    spec: &ProgramSpec,
    cancel: &CancelToken,
    deadline: Instant,
    sink: &OutputSink,
) -> ProgramEnd {
    let Some((program, rest)) = spec.argv.split_first() else {
        return ProgramEnd::SpawnFailed("the command is empty".to_string());
    };
    if cancel.is_cancelled() {
        return ProgramEnd::Cancelled;
    }
    let mut command = Command::new(program);
    command
        .args(rest)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return ProgramEnd::SpawnFailed(format!("could not start `{program}`: {error}"));
        }
    };
    let Some(pgid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        // The child already exited and was reaped; there is no group left to manage.
        return match child.wait().await {
            Ok(status) => ProgramEnd::Exited(status),
            Err(error) => {
                ProgramEnd::SpawnFailed(format!("could not wait for `{program}`: {error}"))
            }
        };
    };
    let mut guard = GroupGuard { pgid: Some(pgid) };
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(copy_into(stdout, sink.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(copy_into(stderr, sink.clone())));
    }

    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => ProgramEnd::Exited(status),
            Err(error) => ProgramEnd::SpawnFailed(format!("could not wait for `{program}`: {error}")),
        },
        () = cancel.cancelled() => ProgramEnd::Cancelled,
        () = sleep_until(deadline) => ProgramEnd::TimedOut,
    };

    let drain_end = match end {
        ProgramEnd::Exited(_) | ProgramEnd::SpawnFailed(_) => {
            Instant::now() + Duration::from_millis(PIPE_DRAIN_AFTER_EXIT_MS)
        }
        ProgramEnd::Cancelled | ProgramEnd::TimedOut => {
            terminate_group(&mut child, pgid).await;
            // Once the group is dead the pipes close and the readers end; bound it all the same.
            Instant::now() + Duration::from_millis(PIPE_DRAIN_AFTER_EXIT_MS)
        }
    };
    let mut still_open = Vec::new();
    for mut reader in readers {
        if timeout(
            drain_end.saturating_duration_since(Instant::now()),
            &mut reader,
        )
        .await
        .is_err()
        {
            still_open.push(reader);
        }
    }
    if !still_open.is_empty() {
        if matches!(end, ProgramEnd::Exited(_) | ProgramEnd::SpawnFailed(_)) {
            // Something the program left in the background still holds its output: stop it.
            tracing::warn!(
                pgid,
                "leftover processes held the output open; killing the group"
            );
            terminate_group(&mut child, pgid).await;
        }
        for mut reader in still_open {
            if timeout(Duration::from_millis(PIPE_DRAIN_AFTER_EXIT_MS), &mut reader)
                .await
                .is_err()
            {
                reader.abort();
            }
        }
    }
    guard.pgid = None;
    end
}

async fn copy_into(mut pipe: impl AsyncReadExt + Unpin, sink: OutputSink) {
    let mut buffer = vec![0_u8; READ_CHUNK_BYTES];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => sink.write(&buffer[..read]),
        }
    }
}
