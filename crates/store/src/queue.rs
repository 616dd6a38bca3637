//! What every store's writer task takes and the rules it applies, whatever the database.
//!
//! A store funnels its writes through one writer task that commits whatever is queued together
//! (group commit). The requests that task takes ([`Write`]), the bounds on a batch, and the
//! checks a machine op's decision must pass live here, so stores cannot drift apart on them.

use std::any::Any;
use std::time::Duration;

use levee_engine::{Change, MachineRecord};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{
    Admit, Applied, AuditEntry, CreatedRun, Error, MachineOp, MaintenanceRecord, NewDefinition,
    NewRun, OpOutcome, Result, RunCommit, Scheduled, TokenRecord,
};

/// Requests that may wait for the writer before senders are made to wait too. Bounded so a
/// flood of writes applies back-pressure to callers instead of growing memory.
pub const WRITE_QUEUE_CAPACITY: usize = 4_096;

/// Most ops (machine ops, definitions and machines of an apply, or one per other request)
/// taken into one transaction. Bounds the time one commit holds the write lock and the memory
/// of one batch; a single request larger than this still forms a batch of its own.
pub const GROUP_COMMIT_MAX_OPS: usize = 1_024;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A write waiting for the writer, with where to send its answer.
pub(crate) enum Write {
    Run {
        ops: Vec<MachineOp>,
        reply: Reply<Vec<OpOutcome>>,
    },
    Apply {
        definitions: Vec<NewDefinition>,
        machines: Vec<Change>,
        audits: Vec<AuditEntry>,
        reply: Reply<Applied>,
    },
    Audit {
        entry: AuditEntry,
        reply: Reply<()>,
    },
    CreateToken {
        token: TokenRecord,
        audit: Option<AuditEntry>,
        reply: Reply<()>,
    },
    RevokeToken {
        name: String,
        at_ms: i64,
        audit: Option<AuditEntry>,
        reply: Reply<bool>,
    },
    /// Proves the writer can begin and commit a write transaction; writes nothing.
    Ping {
        reply: Reply<()>,
    },
    /// Boxed: a run carries every task record, and most writes are far smaller.
    CreateRun {
        run: Box<NewRun>,
        audit: Option<AuditEntry>,
        reply: Reply<CreatedRun>,
    },
    CommitRun {
        commit: Box<RunCommit>,
        reply: Reply<()>,
    },
    SetSetting {
        key: String,
        value: serde_json::Value,
        audit: Option<AuditEntry>,
        reply: Reply<()>,
    },
    /// Its `admit` runs once, inside the batch, against the reserving maintenances.
    ScheduleMaintenance {
        maintenance: Box<MaintenanceRecord>,
        admit: Admit,
        audit: Option<AuditEntry>,
        reply: Reply<Scheduled>,
    },
    UpdateMaintenance {
        maintenance: Box<MaintenanceRecord>,
        audit: Option<AuditEntry>,
        reply: Reply<()>,
    },
}

#[expect(
    clippy::large_enum_variant,
    reason = "nearly every request is a write; boxing it would cost an allocation per write to \
              shrink the one close"
)]
pub(crate) enum Request {
    Write(Write),
    /// Commit what came before, close the database and stop.
    Close {
        done: oneshot::Sender<()>,
    },
}

/// What a writer takes into its next transaction.
pub(crate) struct Gathered {
    pub(crate) batch: Vec<Write>,
    /// A write that would have made the batch larger than [`GROUP_COMMIT_MAX_OPS`]: the first
    /// of the next batch.
    pub(crate) carried: Option<Write>,
    /// A close that came after the batch's writes: commit them, then stop.
    pub(crate) close: Option<oneshot::Sender<()>>,
}

/// How long a writer may wait for more writes before it begins a batch smaller than its last
/// one (the callers its last commit answered are likely to write again soon: a VM reporting
/// step after step, a run committing task after task).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Linger {
    /// The longest wait, from when the writer starts gathering.
    pub(crate) wait: Duration,
    /// Writes in the last batch: the wait ends as soon as the batch has as many.
    pub(crate) expected: usize,
}

/// Takes `first` and whatever is queued behind it, up to [`GROUP_COMMIT_MAX_OPS`], into one
/// batch. With a `linger`, a batch smaller than the last one waits for more writes until it
/// is as large or the wait is over; without one, it takes only what is already queued.
pub(crate) async fn gather(
    rx: &mut mpsc::Receiver<Request>,
    first: Write,
    linger: Option<Linger>,
) -> Gathered {
    let deadline = linger
        .filter(|linger| !linger.wait.is_zero())
        .map(|linger| (Instant::now() + linger.wait, linger.expected));
    let mut ops = first.ops();
    let mut gathered = Gathered {
        batch: vec![first],
        carried: None,
        close: None,
    };
    while ops < GROUP_COMMIT_MAX_OPS {
        let request = match rx.try_recv() {
            Ok(request) => request,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => match deadline {
                Some((at, expected)) if gathered.batch.len() < expected => {
                    match tokio::time::timeout_at(at, rx.recv()).await {
                        Ok(Some(request)) => request,
                        // The wait is over, or every sender is gone.
                        Ok(None) | Err(_) => break,
                    }
                }
                _ => break,
            },
        };
        match request {
            Request::Write(write) => {
                if ops + write.ops() > GROUP_COMMIT_MAX_OPS {
                    gathered.carried = Some(write);
                    break;
                }
                ops += write.ops();
                gathered.batch.push(write);
            }
            Request::Close { done } => {
                gathered.close = Some(done);
                break;
            }
        }
    }
    gathered
}

impl Write {
    /// How much of a batch this write uses, see [`GROUP_COMMIT_MAX_OPS`].
    pub(crate) fn ops(&self) -> usize {
        match self {
            Write::Run { ops, .. } => ops.len().max(1),
            Write::Apply {
                definitions,
                machines,
                ..
            } => (definitions.len() + machines.len()).max(1),
            Write::CreateRun { run, .. } => run.state.tasks.len().max(1),
            Write::CommitRun { commit, .. } => {
                (commit.change.tasks.len() + commit.change.journal.len() + commit.outputs.len())
                    .max(1)
            }
            _ => 1,
        }
    }

    /// Answers the write `Unavailable` with `message`: it was not committed.
    pub(crate) fn fail(self, message: &str) {
        let error = || Error::Unavailable(message.to_string());
        // A caller that gave up waiting has dropped its receiver; nobody is left to tell.
        match self {
            Write::Run { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Write::Apply { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Write::RevokeToken { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Write::CreateRun { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Write::ScheduleMaintenance { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Write::UpdateMaintenance { reply, .. }
            | Write::Audit { reply, .. }
            | Write::CreateToken { reply, .. }
            | Write::CommitRun { reply, .. }
            | Write::SetSetting { reply, .. }
            | Write::Ping { reply } => {
                let _ = reply.send(Err(error()));
            }
        }
    }
}

/// The audit outcome of an op or revocation whose target does not exist.
pub(crate) const NOT_FOUND: &str = "not_found";

/// Queues an audit entry, if there is one, with the outcome the store decided.
pub(crate) fn push_audit(audit: &mut Vec<AuditEntry>, entry: Option<AuditEntry>, outcome: &str) {
    if let Some(mut entry) = entry {
        entry.outcome = outcome.to_string();
        audit.push(entry);
    }
}

/// The message a panicking decision gave, for the error its call is answered with.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

/// Checks that a decision returned a change the store can write: for its own machine, one
/// version on, with history of that machine only. A violation is a bug in the decision.
pub(crate) fn check_change(
    machine: &str,
    current: &MachineRecord,
    change: &Change,
) -> Result<(), String> {
    if change.record.id != machine {
        return Err(format!(
            "the decision for machine `{machine}` returned a record for `{}`",
            change.record.id
        ));
    }
    if change.record.version != current.version + 1 {
        return Err(format!(
            "the decision for machine `{machine}` at version {} returned version {} (expected {})",
            current.version,
            change.record.version,
            current.version + 1
        ));
    }
    if let Some(entry) = change.history.iter().find(|e| e.machine != machine) {
        return Err(format!(
            "the decision for machine `{machine}` returned history for machine `{}`",
            entry.machine
        ));
    }
    Ok(())
}

/// Every machine id the writes name (sorted, without repeats), and whether any of them may
/// write history. Sorted so that a store that locks them locks them in one order everywhere.
pub(crate) fn named_machines<'a>(
    writes: impl IntoIterator<Item = &'a Write>,
) -> (Vec<String>, bool) {
    let mut ids = Vec::new();
    let mut writes_history = false;
    for write in writes {
        match write {
            Write::Run { ops, .. } => {
                writes_history = true;
                for op in ops {
                    ids.push(op.machine.clone());
                    ids.extend(op.peers.iter().cloned());
                }
            }
            Write::Apply { machines, .. } => {
                writes_history = true;
                ids.extend(machines.iter().map(|c| c.record.id.clone()));
            }
            _ => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    (ids, writes_history)
}

/// Every run the batch's commits name (sorted, without repeats), to read their versions with
/// one query.
pub(crate) fn named_runs<'a>(writes: impl IntoIterator<Item = &'a Write>) -> Vec<&'a str> {
    let mut ids: Vec<&str> = writes
        .into_iter()
        .filter_map(|write| match write {
            Write::CommitRun { commit, .. } => Some(commit.run_id.as_str()),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Runs a schedule's admission decision against the reserving maintenances; a panicking
/// decision is a bug, answered `Corrupt` without failing the rest of the batch.
pub(crate) fn run_admit(
    admit: crate::Admit,
    reserving: &[MaintenanceRecord],
) -> Result<std::result::Result<(), serde_json::Value>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| admit(reserving))).map_err(|payload| {
        Error::Corrupt(format!(
            "the admission decision panicked: {}",
            panic_message(&*payload)
        ))
    })
}

/// Checks a maintenance the store is asked to write: a window that ends after it starts.
pub(crate) fn check_maintenance(maintenance: &MaintenanceRecord) -> Result<()> {
    if maintenance.end_ms <= maintenance.start_ms {
        return Err(Error::Corrupt(format!(
            "maintenance `{}` ends ({}) no later than it starts ({})",
            maintenance.id, maintenance.end_ms, maintenance.start_ms
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping() -> Write {
        Write::Ping {
            reply: oneshot::channel().0,
        }
    }

    fn queue() -> (mpsc::Sender<Request>, mpsc::Receiver<Request>) {
        mpsc::channel(WRITE_QUEUE_CAPACITY)
    }

    /// Tokio's timers tick in milliseconds, so the tests' times are whole milliseconds.
    const WAIT: Duration = Duration::from_millis(30);

    /// Gathers a batch that starts with a ping, lingering for `expected` writes if given; the
    /// batch and how long gathering took.
    async fn gather_timed(
        rx: &mut mpsc::Receiver<Request>,
        expected: Option<usize>,
    ) -> (Gathered, Duration) {
        let started = Instant::now();
        let linger = expected.map(|expected| Linger {
            wait: WAIT,
            expected,
        });
        let gathered = gather(rx, ping(), linger).await;
        (gathered, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn without_linger_a_batch_is_what_is_queued() {
        let (tx, mut rx) = queue();
        for _ in 0..3 {
            tx.send(Request::Write(ping())).await.unwrap();
        }
        let (gathered, took) = gather_timed(&mut rx, None).await;
        assert_eq!(gathered.batch.len(), 4);
        assert!(gathered.carried.is_none() && gathered.close.is_none());
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_smaller_than_the_last_waits_for_the_callers_to_come_back() {
        let (tx, mut rx) = queue();
        tx.send(Request::Write(ping())).await.unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                late.send(Request::Write(ping())).await.unwrap();
            }
        });
        let (gathered, took) = gather_timed(&mut rx, Some(4)).await;
        // The first two came back in time; gathering stops as soon as the batch is as large
        // as the last, without waiting out the rest of the linger.
        assert_eq!(gathered.batch.len(), 4);
        assert_eq!(took, Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded_when_nobody_comes_back() {
        let (_tx, mut rx) = queue();
        let (gathered, took) = gather_timed(&mut rx, Some(10)).await;
        assert_eq!(gathered.batch.len(), 1);
        assert_eq!(took, WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_caller_never_waits() {
        let (_tx, mut rx) = queue();
        let (gathered, took) = gather_timed(&mut rx, Some(1)).await;
        assert_eq!(gathered.batch.len(), 1);
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_ends_the_wait_at_once() {
        let (tx, mut rx) = queue();
        let (done, _closed) = oneshot::channel();
        tx.send(Request::Write(ping())).await.unwrap();
        tx.send(Request::Close { done }).await.unwrap();
        tx.send(Request::Write(ping())).await.unwrap();
        let (gathered, took) = gather_timed(&mut rx, Some(10)).await;
        assert_eq!(
            gathered.batch.len(),
            2,
            "nothing after the close joins the batch"
        );
        assert!(gathered.close.is_some());
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_dropped_while_waiting_ends_the_wait() {
        let (tx, mut rx) = queue();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(tx);
        });
        let (gathered, took) = gather_timed(&mut rx, Some(10)).await;
        assert_eq!(gathered.batch.len(), 1);
        assert_eq!(took, Duration::from_millis(5));
    }
}
