//! What a stage is given to run ([`StageContext`]) and what it gives back ([`StageOutcome`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Most bytes of output kept per stage run; beyond it the oldest bytes are cut, because the end
/// of a failing command's output is where the error is.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Most step reports that may wait, unjournaled, in the channel to the caller. A stage waits for
/// each report to be acknowledged, so more than one is never in flight from one stage; the room
/// is for a caller that drives several stages through one channel.
pub const STEP_CHANNEL_CAPACITY: usize = 16;

/// A cancellation signal a caller can raise once, observed by any number of stages.
///
/// It is a `watch` channel rather than a dedicated token type so the crate needs nothing beyond
/// tokio. When the [`Canceller`] is dropped without cancelling, nothing will ever cancel: the
/// stage then runs to its own end or its deadline, which bounds it either way.
#[derive(Clone, Debug)]
pub struct CancelToken {
    receiver: watch::Receiver<bool>,
}

/// The caller's half of a [`CancelToken`].
#[derive(Debug)]
pub struct Canceller {
    sender: watch::Sender<bool>,
}

impl Canceller {
    /// Makes a new canceller and its token.
    pub fn new() -> (Canceller, CancelToken) {
        let (sender, receiver) = watch::channel(false);
        (Canceller { sender }, CancelToken { receiver })
    }

    /// Asks every stage holding the token to stop.
    pub fn cancel(&self) {
        self.sender.send_replace(true);
    }
}

impl CancelToken {
    /// A token that is never cancelled, for callers that only bound stages by their deadline.
    pub fn never() -> CancelToken {
        let (_, receiver) = watch::channel(false);
        CancelToken { receiver }
    }

    /// Whether cancellation has been asked for.
    pub fn is_cancelled(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes when cancellation is asked for; never completes if the canceller is dropped
    /// without cancelling.
    pub async fn cancelled(&self) {
        let mut receiver = self.receiver.clone();
        if receiver.wait_for(|cancelled| *cancelled).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One committed step of a paced stage: which step it was and what the stage needs to continue
/// after it (the weight reached, the hosts done), so a resumed task continues from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Zero-based index of the step.
    pub index: u64,
    /// Stage-defined state after the step.
    pub state: serde_json::Value,
}

/// A step report on its way to the caller, with the channel on which the caller says whether
/// it was journaled.
#[derive(Debug)]
pub struct StepCommit {
    /// The step the stage has completed.
    pub step: Step,
    /// Answer `Ok(())` once the step is durably recorded, or an error to stop the stage.
    pub ack: oneshot::Sender<Result<(), String>>,
}

/// Why a step could not be journaled; the stage must stop without taking further steps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The caller stopped listening; nobody would record further steps.
    #[error("nobody is journaling steps any more")]
    Closed,
    /// The caller tried and failed to record the step.
    #[error("the step could not be journaled: {0}")]
    Refused(String),
}

/// How a paced stage reports each step; `report` returns only once the step is journaled, so
/// the journal always holds every step whose effects the next step builds on.
#[derive(Clone, Debug)]
pub struct StepReporter {
    sender: Option<mpsc::Sender<StepCommit>>,
}

impl StepReporter {
    /// A reporter and the receiving end, on which the caller journals each step and acks it.
    pub fn channel() -> (StepReporter, mpsc::Receiver<StepCommit>) {
        let (sender, receiver) = mpsc::channel(STEP_CHANNEL_CAPACITY);
        (
            StepReporter {
                sender: Some(sender),
            },
            receiver,
        )
    }

    /// A reporter that acknowledges every step at once, for callers that journal nothing (plans,
    /// tests, checks).
    pub fn unjournaled() -> StepReporter {
        StepReporter { sender: None }
    }

    /// Reports a step and waits until the caller has journaled it.
    pub async fn report(&self, step: Step) -> Result<(), StepError> {
        let Some(sender) = &self.sender else {
            return Ok(());
        };
        let (ack, answer) = oneshot::channel();
        sender
            .send(StepCommit { step, ack })
            .await
            .map_err(|_| StepError::Closed)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StepError::Refused(reason)),
            Err(_) => Err(StepError::Closed),
        }
    }
}

/// Output kept from a run: the last bytes written and how many earlier bytes were cut.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedOutput {
    /// The kept bytes as text (invalid UTF-8 replaced).
    pub text: String,
    /// How many bytes were cut from the front to stay within the limit.
    pub cut_bytes: u64,
}

impl CapturedOutput {
    /// The text with a leading note of what was cut, for error messages and logs.
    pub fn display(&self) -> String {
        if self.cut_bytes == 0 {
            self.text.clone()
        } else {
            format!("[{} earlier bytes cut]\n{}", self.cut_bytes, self.text)
        }
    }
}

#[derive(Debug)]
struct Tail {
    bytes: VecDeque<u8>,
    limit_bytes: usize,
    cut_bytes: u64,
}

/// A size-limited buffer that keeps the tail of everything written to it. It is shared: the
/// caller may read it while the stage is still writing (to show live progress), and it is what
/// remains when a stage is cancelled or times out.
#[derive(Clone, Debug)]
pub struct OutputSink {
    tail: Arc<Mutex<Tail>>,
}

impl OutputSink {
    /// A sink keeping at most `limit_bytes`.
    pub fn new(limit_bytes: usize) -> OutputSink {
        OutputSink {
            tail: Arc::new(Mutex::new(Tail {
                bytes: VecDeque::with_capacity(limit_bytes.min(4096)),
                limit_bytes,
                cut_bytes: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        // A panic while holding the lock leaves bytes, not broken invariants; keep using them.
        self.tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends bytes, cutting the oldest ones beyond the limit.
    pub fn write(&self, data: &[u8]) {
        let mut tail = self.lock();
        let limit = tail.limit_bytes;
        let skipped = data.len().saturating_sub(limit);
        tail.cut_bytes += skipped as u64;
        tail.bytes.extend(&data[skipped..]);
        let excess = tail.bytes.len().saturating_sub(limit);
        if excess > 0 {
            tail.bytes.drain(..excess);
            tail.cut_bytes += excess as u64;
        }
    }

    /// What has been kept so far. A multi-byte character split by the cut is dropped whole.
    pub fn snapshot(&self) -> CapturedOutput {
        let tail = self.lock();
        let (front, back) = tail.bytes.as_slices();
        let mut bytes = Vec::with_capacity(tail.bytes.len());
        bytes.extend_from_slice(front);
        bytes.extend_from_slice(back);
        let mut start = 0;
        if tail.cut_bytes > 0 {
            // Skip UTF-8 continuation bytes left from a character whose start was cut.
            while start < bytes.len() && start < 3 && (bytes[start] & 0xC0) == 0x80 {
                start += 1;
            }
        }
        CapturedOutput {
            text: String::from_utf8_lossy(&bytes[start..]).into_owned(),
            cut_bytes: tail.cut_bytes + start as u64,
        }
    }
}

/// Everything a stage is given besides its arguments.
#[derive(Clone, Debug)]
pub struct StageContext {
    /// The task being run, for logs and for stages that name what they touch.
    pub task_id: String,
    /// The run the task belongs to.
    pub run_id: String,
    /// One for the first attempt; retries count up.
    pub attempt: u32,
    /// The last committed step when the task is resumed after a crash or a retry; a paced stage
    /// continues after it.
    pub resume_from: Option<Step>,
    /// Raised when an operator aborts or pauses the run, or the server shuts down.
    pub cancel: CancelToken,
    /// The latest instant the stage may run until (the task's `timeout`); at it the stage stops
    /// and answers [`StageOutcome::TimedOut`].
    pub deadline: Instant,
    /// Where a paced stage reports each step before taking the next.
    pub steps: StepReporter,
    /// Where the stage writes its human-readable output, size-limited.
    pub output: OutputSink,
    /// The operator's pace for a paced stage (`Value::Null` when none was set); it may change
    /// while the stage runs.
    pub pace: PaceWatch,
    /// Evaluates checks for stages that wait until a condition holds (`wait` with `until`).
    pub checks: Arc<dyn CheckRunner>,
    /// The run's lease epoch when a replica holds it: it grows with every takeover, so a
    /// target that remembers the highest token it saw can refuse a stale replica's late
    /// request (Kleppmann's fencing token). `shell` passes it as [`FENCING_TOKEN_ENV`], `http`
    /// as the [`FENCING_TOKEN_HEADER`] header.
    pub fencing_token: Option<i64>,
}

/// The environment variable a `shell` stage's program finds the run's fencing token in.
pub const FENCING_TOKEN_ENV: &str = "LEVEE_FENCING_TOKEN";
/// The request header an `http` stage sends the run's fencing token in.
pub const FENCING_TOKEN_HEADER: &str = "Levee-Fencing-Token";

impl StageContext {
    /// A context with no resume point, no journaling and an output sink of
    /// [`MAX_OUTPUT_BYTES`]; the caller fills in the rest as it needs.
    pub fn new(task_id: &str, run_id: &str, timeout: Duration, cancel: CancelToken) -> Self {
        StageContext {
            task_id: task_id.to_string(),
            run_id: run_id.to_string(),
            attempt: 1,
            resume_from: None,
            cancel,
            deadline: Instant::now() + timeout,
            steps: StepReporter::unjournaled(),
            output: OutputSink::new(MAX_OUTPUT_BYTES),
            pace: PaceWatch::fixed(serde_json::Value::Null),
            checks: Arc::new(NoChecks),
            fencing_token: None,
        }
    }

    /// The earlier of the context's deadline and `timeout` from now, for stages that also take
    /// their own `timeout` argument.
    pub fn deadline_within(&self, timeout: Duration) -> Instant {
        self.deadline.min(Instant::now() + timeout)
    }
}

/// An operator's pace for a paced stage, as the stage defines it (for `ramp`: `step` and
/// `wait`), shared by whoever sets it with the running stage.
#[derive(Debug)]
pub struct PaceSetter {
    sender: watch::Sender<serde_json::Value>,
}

/// The stage's half of a [`PaceSetter`]: the current pace, and a way to wait for a change.
#[derive(Clone, Debug)]
pub struct PaceWatch {
    receiver: watch::Receiver<serde_json::Value>,
}

impl PaceSetter {
    /// A setter holding `initial` (`Value::Null` for "as the task was written") and its watch.
    pub fn new(initial: serde_json::Value) -> (PaceSetter, PaceWatch) {
        let (sender, receiver) = watch::channel(initial);
        (PaceSetter { sender }, PaceWatch { receiver })
    }

    /// Changes the pace; the stage sees it at its next step or wait.
    pub fn set(&self, pace: serde_json::Value) {
        self.sender.send_replace(pace);
    }
}

impl PaceWatch {
    /// A pace that never changes.
    pub fn fixed(pace: serde_json::Value) -> PaceWatch {
        let (_, receiver) = watch::channel(pace);
        PaceWatch { receiver }
    }

    /// The pace now.
    pub fn current(&self) -> serde_json::Value {
        self.receiver.borrow().clone()
    }

    /// Completes when the pace changes; never completes once nobody can change it.
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Evaluates a check by name (`http`, `metric`, `state`, ...) with its arguments, for stages
/// that wait on a condition. The server's implementation covers its own checks (`state`) as
/// well as the library's; [`crate::Registry`] covers the library's.
#[async_trait::async_trait]
pub trait CheckRunner: Send + Sync {
    /// Evaluates the check; an unknown check or an uncertain answer fails it.
    async fn evaluate(
        &self,
        cancel: &CancelToken,
        check: &str,
        args: &serde_json::Value,
    ) -> crate::CheckOutcome;
}

impl std::fmt::Debug for dyn CheckRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckRunner")
    }
}

/// Evaluates no check: every evaluation fails and says why. The default of a
/// [`StageContext`] made by [`StageContext::new`].
#[derive(Debug, Default)]
pub struct NoChecks;

#[async_trait::async_trait]
impl CheckRunner for NoChecks {
    async fn evaluate(
        &self,
        _cancel: &CancelToken,
        check: &str,
        _args: &serde_json::Value,
    ) -> crate::CheckOutcome {
        crate::CheckOutcome {
            ok: false,
            observed: String::new(),
            reason: format!(
                "this caller evaluates no checks, so `{check}` cannot be shown to hold"
            ),
        }
    }
}

/// What a stage produced: its captured output and structured facts (an exit code, a status).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageOutput {
    /// The human-readable output, size-limited.
    pub captured: CapturedOutput,
    /// Facts the stage reports, such as `{"exit_code": 0}` or `{"status": 200}`.
    pub data: serde_json::Value,
}

/// How a stage run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StageOutcome {
    /// The stage did what it was asked.
    Succeeded {
        /// What it produced.
        output: StageOutput,
    },
    /// The stage failed. `retryable` says whether trying again could help (a 503, a nonzero
    /// exit) or not (invalid arguments, a refused redirect); the task's `retries` decide whether
    /// it actually is retried.
    Failed {
        /// A sentence saying what failed.
        error: String,
        /// Whether another attempt could succeed.
        retryable: bool,
        /// What it produced before failing.
        output: StageOutput,
    },
    /// The stage stopped because it was cancelled.
    Cancelled,
    /// The stage stopped at its deadline.
    TimedOut,
}

impl StageOutcome {
    /// Whether the stage succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, StageOutcome::Succeeded { .. })
    }

    /// The outcome of a run whose arguments are invalid: a failure no retry can fix.
    pub fn invalid_args(error: crate::args::ArgError) -> StageOutcome {
        StageOutcome::Failed {
            error: format!("invalid arguments: {error}"),
            retryable: false,
            output: StageOutput::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_keeps_the_tail_and_counts_the_cut() {
        let sink = OutputSink::new(10);
        sink.write(b"0123456789");
        sink.write(b"abcde");
        let kept = sink.snapshot();
        assert_eq!(kept.text, "56789abcde");
        assert_eq!(kept.cut_bytes, 5);
        sink.write(&[b'x'; 25]);
        let kept = sink.snapshot();
        assert_eq!(kept.text, "xxxxxxxxxx");
        assert_eq!(kept.cut_bytes, 30);
        assert!(kept.display().starts_with("[30 earlier bytes cut]"));
    }

    #[test]
    fn a_character_split_by_the_cut_is_dropped_whole() {
        let sink = OutputSink::new(4);
        sink.write("aé€".as_bytes()); // 1 + 2 + 3 bytes
        let kept = sink.snapshot();
        assert_eq!(kept.text, "€");
        assert_eq!(kept.cut_bytes, 3);
    }

    #[tokio::test]
    async fn a_step_returns_only_once_journaled() {
        let (reporter, mut receiver) = StepReporter::channel();
        let journal = tokio::spawn(async move {
            let mut journaled = Vec::new();
            while let Some(commit) = receiver.recv().await {
                journaled.push(commit.step.index);
                let answer = if commit.step.index < 2 {
                    Ok(())
                } else {
                    Err("disk full".to_string())
                };
                commit.ack.send(answer).unwrap();
            }
            journaled
        });
        for index in 0..2 {
            reporter
                .report(Step {
                    index,
                    state: serde_json::json!({ "weight": index * 10 }),
                })
                .await
                .unwrap();
        }
        let refused = reporter
            .report(Step {
                index: 2,
                state: serde_json::Value::Null,
            })
            .await;
        assert_eq!(refused, Err(StepError::Refused("disk full".to_string())));
        drop(reporter);
        assert_eq!(journal.await.unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn cancellation_is_seen_by_every_clone() {
        let (canceller, token) = Canceller::new();
        let other = token.clone();
        assert!(!token.is_cancelled());
        canceller.cancel();
        other.cancelled().await;
        assert!(token.is_cancelled());
    }
}
