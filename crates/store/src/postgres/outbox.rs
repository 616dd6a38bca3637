//! The notice outbox: the writer's notices are sent with `pg_notify` after its batch commits,
//! by a task of their own, never inside the batch's transaction.
//!
//! Why not in the transaction: PostgreSQL serialises every committing transaction that has
//! sent a notification, cluster-wide, with one lock held from before the commit until after its
//! WAL flush (`PreCommit_Notify` in `async.c`). With a `pg_notify` in every batch, replicas
//! could not share a WAL flush: each batch waited (`wait_event` `Lock: object` on `COMMIT`)
//! for the other replicas' flushes, one after another, and three replicas committed fewer
//! transitions per second than one (`levee-bench replicas`).
//!
//! Sent after the commit, a notice still announces only committed changes; a notification
//! alone writes no WAL, so its own short transaction holds that lock without waiting for a
//! flush. Notices queued while one is being sent, or within [`NOTICE_SEND_INTERVAL_MS`] of
//! the last send, are merged (a machine keeps its highest version) and go out together in one
//! statement. Notices remain a way to wake replicas early,
//! not a guarantee: one that cannot be sent after [`NOTICE_SEND_ATTEMPTS`] tries, or that a
//! replica dies before sending, is found by the other replicas' polling and by the `Resync`
//! every listener receives when it reconnects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgPool;

use crate::Notice;

/// Times one set of notices is offered to the database before it is dropped (each a
/// `pg_notify` statement on a pooled connection).
pub const NOTICE_SEND_ATTEMPTS: u32 = 3;

/// Pause before sending notices again after a failure, multiplied by the attempt number.
pub const NOTICE_SEND_BACKOFF_MS: u64 = 50;

/// Least time between two sends of one store's notices; what commits meanwhile is merged
/// into the next. Every notification wakes every listening replica (and a backend for each),
/// so one per batch cost each replica CPU for every batch of every other replica; this bounds
/// a store to 1,000 / this many sends a second, and delays a notice by at most this much.
pub const NOTICE_SEND_INTERVAL_MS: u64 = 10;

/// Notices committed and not yet sent, merged.
#[derive(Default, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    claimable: bool,
    definitions: bool,
    settings: BTreeSet<String>,
    /// Each machine's highest committed version.
    machines: BTreeMap<String, i64>,
}

impl Pending {
    pub(crate) fn add(&mut self, notice: Notice) {
        match notice {
            Notice::RunsClaimable => self.claimable = true,
            Notice::Definitions => self.definitions = true,
            Notice::Setting { key } => {
                self.settings.insert(key);
            }
            Notice::Machines { versions } => {
                for (id, version) in versions {
                    let highest = self.machines.entry(id).or_insert(version);
                    *highest = (*highest).max(version);
                }
            }
            // Never sent: each listener makes its own.
            Notice::Resync => {}
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Pending::default()
    }

    /// The notices, as few as they merge into.
    pub(crate) fn into_notices(self) -> Vec<Notice> {
        let mut notices = Vec::new();
        if self.claimable {
            notices.push(Notice::RunsClaimable);
        }
        if self.definitions {
            notices.push(Notice::Definitions);
        }
        notices.extend(self.settings.into_iter().map(|key| Notice::Setting { key }));
        if !self.machines.is_empty() {
            notices.push(Notice::Machines {
                versions: self.machines.into_iter().collect(),
            });
        }
        notices
    }
}

/// The writer's side of the outbox; the sending task holds the other.
#[derive(Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
    /// The sending task, awaited by [`Outbox::close`].
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Outbox {
    /// An outbox and the task that sends what is put in it on `pool`, until [`Outbox::close`].
    pub(crate) fn start(pool: PgPool, label: String) -> Outbox {
        let outbox = Outbox {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                wake: tokio::sync::Notify::new(),
                closed: std::sync::atomic::AtomicBool::new(false),
                task: Mutex::new(None),
            }),
        };
        let task = tokio::spawn(outbox.clone().send_loop(pool, label));
        *outbox.shared.task.lock().expect("outbox lock") = Some(task);
        outbox
    }

    /// Queues the notices of a committed batch.
    pub(crate) fn push(&self, notices: Vec<Notice>) {
        if notices.is_empty() {
            return;
        }
        let mut pending = self.shared.pending.lock().expect("outbox lock");
        for notice in notices {
            pending.add(notice);
        }
        drop(pending);
        self.shared.wake.notify_one();
    }

    /// Sends what is queued, then stops the task and waits for it. Call before the pool
    /// closes.
    pub(crate) async fn close(&self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.wake.notify_one();
        let task = self.shared.task.lock().expect("outbox lock").take();
        if let Some(task) = task {
            // A task that panicked has nothing left to send.
            let _ = task.await;
        }
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.shared.pending.lock().expect("outbox lock"))
    }

    async fn send_loop(self, pool: PgPool, label: String) {
        loop {
            self.shared.wake.notified().await;
            let pending = self.take();
            if !pending.is_empty() {
                send(&pool, &label, pending.into_notices()).await;
            }
            if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(NOTICE_SEND_INTERVAL_MS)).await;
        }
    }
}

async fn send(pool: &PgPool, label: &str, notices: Vec<Notice>) {
    let payloads: Vec<String> = notices.iter().flat_map(Notice::payloads).collect();
    for attempt in 1..=NOTICE_SEND_ATTEMPTS {
        // One autocommit statement: its own transaction, delivered when it ends.
        let sent = sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(crate::NOTICE_CHANNEL)
            .bind(&payloads)
            .execute(pool)
            .await;
        match sent {
            Ok(_) => return,
            Err(error) if attempt < NOTICE_SEND_ATTEMPTS && !pool.is_closed() => {
                tracing::debug!(database = %label, %error, attempt, "cannot send notices; retrying");
                tokio::time::sleep(Duration::from_millis(
                    NOTICE_SEND_BACKOFF_MS * u64::from(attempt),
                ))
                .await;
            }
            Err(error) => {
                if !pool.is_closed() {
                    tracing::warn!(database = %label, %error, "notices dropped; other replicas find the changes by polling");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_notices_merge_to_one_of_each() {
        let mut pending = Pending::default();
        assert!(pending.is_empty());
        pending.add(Notice::Machines {
            versions: vec![("b".into(), 4), ("a".into(), 2)],
        });
        pending.add(Notice::Definitions);
        pending.add(Notice::Machines {
            versions: vec![("a".into(), 3), ("b".into(), 1)],
        });
        pending.add(Notice::Setting { key: "k".into() });
        pending.add(Notice::Setting { key: "k".into() });
        pending.add(Notice::Definitions);
        pending.add(Notice::Resync);
        assert_eq!(
            pending.into_notices(),
            vec![
                Notice::Definitions,
                Notice::Setting { key: "k".into() },
                Notice::Machines {
                    versions: vec![("a".into(), 3), ("b".into(), 4)],
                },
            ]
        );
    }
}
