//! The writer: every write of a [`super::PostgresStore`] goes through one task per store that
//! commits whatever is queued together (group commit), and row locks that keep replicas
//! sharing the database from deciding on the same old state.
//!
//! Group commit is what lets a hot machine (a barrier a whole fleet reports to) take more than
//! one report per `fsync`: while a commit is flushed, new requests queue up, and the next
//! batch takes all of them into one transaction.
//!
//! A batch is one `READ COMMITTED` transaction:
//!
//! 1. It locks every machine its writes name (ops, their peers, machines an apply creates),
//!    then every run its commits name, each with one `SELECT ... ORDER BY id FOR UPDATE`. Every
//!    store takes its locks in that one order, so two replicas' batches wait for each other
//!    instead of deadlocking, and a batch reads each record only once it holds it: the latest
//!    committed state, which nobody else can change until the batch ends.
//! 2. It decides the writes in order against an overlay of those records, exactly as the
//!    SQLite writer does: an op sees every op decided before it in the batch.
//! 3. It writes the changed rows with `UNNEST`: the machines, history and audit rows in one
//!    statement (a data-modifying `WITH` per table), runs' rows one statement per table; and
//!    commits.
//! 4. Only then are its notices handed to the [`Outbox`], which sends them with `pg_notify`
//!    outside the transaction (why: see the outbox).
//!
//! A history entry's `seq` comes from the `history_seq` sequence while the batch holds its
//! machine's lock, so one machine's entries are in commit order, and a decision that reads
//! history sees the entries decided earlier in the batch with their final `seq`. A run's
//! journal entries are likewise appended under the run's lock. Audit entries take their `seq`
//! when the batch writes them: one store's batches commit one after another, so its entries
//! are in commit order, but another replica's batch may commit an entry with a lower `seq`
//! after this one's.
//!
//! A batch that PostgreSQL picks as a deadlock victim, that fails to serialize, or whose
//! connection is lost before it commits, changed nothing and is run again, up to
//! [`BATCH_ATTEMPTS`] times. A machine op's decision runs only once (it is a closure that
//! is consumed), so a call whose decisions already ran is answered `Unavailable` instead, and
//! the rest of the batch is retried without it.

use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use levee_engine::{Change, HistoryEntry, MachineRecord};
use sqlx::Row;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use tokio::sync::mpsc;

use super::codec::{
    DEFINITION_COLUMNS, HISTORY_COLUMNS, MACHINE_COLUMNS, array, check_text, db_error,
    definition_from_row, history_from_row, is_connection_lost, is_retryable, machine_from_row,
};
use super::outbox::Outbox;
use super::runs::{RunBatch, write_setting};
use crate::queue::{
    Gathered, Linger, NOT_FOUND, Request, Write, check_change, gather, named_machines, named_runs,
    panic_message, push_audit,
};
use crate::rows::history_kind_name;
use crate::{
    Applied, AuditEntry, CreatedRun, DefinitionRecord, Error, MachineOp, NewDefinition, OpContext,
    OpOutcome, Result, TokenRecord,
};

/// Times one batch is run before its requests are answered `Unavailable`: the first run and
/// the retries after a deadlock, a serialization failure or a lost connection.
pub const BATCH_ATTEMPTS: u32 = 4;

/// Pause before retrying a batch, multiplied by the attempt number: long enough for the
/// transaction that won a deadlock to finish, short against a request's patience.
pub const BATCH_RETRY_BACKOFF_MS: u64 = 20;

/// Times an apply reads a definition's latest version again when another replica stored the
/// same version first. Each attempt waits for that replica's commit, so more than a few means
/// replicas are applying the same definition in a loop.
pub const DEFINITION_VERSION_ATTEMPTS: u32 = 8;

/// How long the writer keeps its connection while no write comes. Between batches of a busy
/// writer the connection stays taken, which spares every batch the pool's health check (a
/// round trip to the server); a writer idle this long gives it back to the pool.
pub const WRITER_IDLE_RELEASE_MS: u64 = 1_000;

/// Longest the writer keeps one connection taken, however busy it is, so the pool's
/// `MAX_LIFETIME_MS` and its health check still come round.
pub const WRITER_CONNECTION_HOLD_MAX_MS: u64 = 60_000;

/// Longest a writer waits for more writes before it begins a batch smaller than its last one,
/// in microseconds. Each replica group-commits only the writes its own clients send, so three
/// replicas behind a load balancer each see a third of the load, and without this wait each
/// commits a third as many writes per transaction: the same load costs three times the
/// commits, and PostgreSQL's CPU per transition more than doubles. Waiting for the callers the
/// last commit answered keeps batches as large as the load allows. `levee-bench replicas` on 2
/// cores shared with PostgreSQL and the load, 3 replicas over one replica's transitions/s:
/// with 48 clients from 0.84-0.86x to 0.97-1.07x (one replica's own rate rose too, 12,700 to
/// 13,100-15,500); with 16 clients from 0.65-0.72x to 0.86x. A lone caller's batches are of one
/// write, so it never waits.
pub const GROUP_COMMIT_LINGER_US: u64 = 3_000;

/// Why a batch stopped: the error its requests get, and whether running it again may work.
#[derive(Debug)]
pub(crate) struct Abort {
    pub(crate) error: Error,
    pub(crate) retry: bool,
}

impl Abort {
    /// An abort for a database error while doing `what`.
    pub(crate) fn db(what: &str, error: sqlx::Error) -> Abort {
        Abort {
            retry: is_retryable(&error),
            error: db_error(what, error),
        }
    }

    /// A batch that cannot go on and must not be retried (a bug, or a database changed
    /// behind the store's locks).
    pub(crate) fn fatal(error: Error) -> Abort {
        Abort {
            error,
            retry: false,
        }
    }
}

/// A closure mapping a database error while doing `what` to an [`Abort`].
pub(crate) fn abort(what: &'static str) -> impl FnOnce(sqlx::Error) -> Abort {
    move |error| Abort::db(what, error)
}

/// A request's own result, kept until the batch's fate is known.
enum Answer {
    Ops(Result<Vec<OpOutcome>>),
    Applied(Result<Applied>),
    Done(Result<()>),
    Revoked(Result<bool>),
    /// Boxed: a stored run carries every task record, and most answers are far smaller.
    Created(Box<Result<CreatedRun>>),
    Scheduled(Box<Result<crate::Scheduled>>),
}

/// A write in the batch being committed.
struct Job {
    write: Write,
    answer: Option<Answer>,
    /// Its machine ops' decisions ran: it cannot be run again.
    decided: bool,
}

impl Job {
    /// Sends the answer decided for the write, now that its batch committed.
    fn send(self) {
        // A caller that gave up waiting has dropped its receiver; nobody is left to tell.
        match (self.write, self.answer) {
            (Write::Run { reply, .. }, Some(Answer::Ops(result))) => {
                let _ = reply.send(result);
            }
            (Write::Apply { reply, .. }, Some(Answer::Applied(result))) => {
                let _ = reply.send(result);
            }
            (Write::RevokeToken { reply, .. }, Some(Answer::Revoked(result))) => {
                let _ = reply.send(result);
            }
            (Write::CreateRun { reply, .. }, Some(Answer::Created(result))) => {
                let _ = reply.send(*result);
            }
            (Write::ScheduleMaintenance { reply, .. }, Some(Answer::Scheduled(result))) => {
                let _ = reply.send(*result);
            }
            (
                Write::Audit { reply, .. }
                | Write::CreateToken { reply, .. }
                | Write::CommitRun { reply, .. }
                | Write::SetSetting { reply, .. }
                | Write::UpdateMaintenance { reply, .. }
                | Write::Ping { reply },
                Some(Answer::Done(result)),
            ) => {
                let _ = reply.send(result);
            }
            (write, _) => {
                // Cannot happen: `Batch::process` answers every write with its own kind of
                // answer. Should it, the caller hears of it rather than waiting forever.
                tracing::error!("a committed write had no answer of its kind");
                write.fail("the writer lost this request's answer");
            }
        }
    }
}

pub(crate) struct Writer {
    pool: PgPool,
    rx: mpsc::Receiver<Request>,
    /// The database, for messages (never with a password).
    label: String,
    /// Where committed batches' notices go to be sent, after their commit.
    outbox: Outbox,
    /// The connection the last batch committed on, and since when it is held: the next batch
    /// uses it, see [`WRITER_IDLE_RELEASE_MS`].
    held: Option<(PoolConnection<Postgres>, Instant)>,
    /// Writes in the last batch, what the next one lingers for (see [`GROUP_COMMIT_LINGER_US`]).
    last_batch_writes: usize,
}

impl Writer {
    pub(crate) fn new(
        pool: PgPool,
        rx: mpsc::Receiver<Request>,
        label: String,
        outbox: Outbox,
    ) -> Writer {
        Writer {
            pool,
            rx,
            label,
            outbox,
            held: None,
            last_batch_writes: 0,
        }
    }

    /// Serves batches until every store handle is dropped or `close` is asked for.
    pub(crate) async fn run(mut self) {
        let mut carried: Option<Write> = None;
        loop {
            let first = match carried.take() {
                Some(write) => write,
                None => match self.next_request().await {
                    Some(Request::Write(write)) => write,
                    Some(Request::Close { done }) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    // Every sender is gone: nobody can ask for anything again.
                    None => break,
                },
            };
            let linger = Linger {
                wait: Duration::from_micros(GROUP_COMMIT_LINGER_US),
                expected: self.last_batch_writes,
            };
            let Gathered {
                batch,
                carried: next,
                close,
            } = gather(&mut self.rx, first, Some(linger)).await;
            carried = next;
            self.last_batch_writes = batch.len();
            self.commit_batch(batch).await;
            if let Some(done) = close {
                if let Some(write) = carried.take() {
                    self.commit_batch(vec![write]).await;
                }
                self.shutdown().await;
                let _ = done.send(());
                return;
            }
        }
        self.shutdown().await;
    }

    /// The next request; the held connection goes back to the pool if none comes within
    /// [`WRITER_IDLE_RELEASE_MS`].
    async fn next_request(&mut self) -> Option<Request> {
        if self.held.is_some() {
            let idle = Duration::from_millis(WRITER_IDLE_RELEASE_MS);
            if let Ok(request) = tokio::time::timeout(idle, self.rx.recv()).await {
                return request;
            }
            self.held = None;
        }
        self.rx.recv().await
    }

    /// Answers whatever is still queued as closed, then closes the pool: reads fail from now
    /// on too.
    async fn shutdown(&mut self) {
        // The pool closes only once every connection is back.
        self.held = None;
        self.rx.close();
        while let Ok(request) = self.rx.try_recv() {
            match request {
                Request::Write(write) => write.fail("the store is closed"),
                Request::Close { done } => {
                    let _ = done.send(());
                }
            }
        }
        self.outbox.close().await;
        self.pool.close().await;
    }

    /// Runs one batch in one transaction, retrying it as the module documentation says, and
    /// answers every request in it.
    async fn commit_batch(&mut self, writes: Vec<Write>) {
        let mut jobs: Vec<Job> = writes
            .into_iter()
            .map(|write| Job {
                write,
                answer: None,
                decided: false,
            })
            .collect();
        let mut attempt = 1;
        loop {
            let count = jobs.len();
            let abort = match self.attempt(&mut jobs).await {
                Ok(notices) => {
                    tracing::trace!(requests = count, attempt, "write batch committed");
                    for job in jobs {
                        job.send();
                    }
                    self.outbox.push(notices);
                    return;
                }
                Err(abort) => abort,
            };
            let message = format!("write to {} failed: {}", self.label, abort.error);
            if !abort.retry || attempt >= BATCH_ATTEMPTS {
                tracing::warn!(requests = count, attempt, error = %message, "write batch failed");
                for job in jobs {
                    job.write.fail(&message);
                }
                return;
            }
            let (decided, rest): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.decided);
            tracing::info!(
                requests = count,
                attempt,
                refused = decided.len(),
                error = %message,
                "write batch rolled back; retrying it"
            );
            for job in decided {
                job.write.fail(&format!(
                    "{message}; the call's decisions had already run, so it was not retried"
                ));
            }
            jobs = rest;
            if jobs.is_empty() {
                return;
            }
            for job in &mut jobs {
                job.answer = None;
            }
            tokio::time::sleep(Duration::from_millis(
                BATCH_RETRY_BACKOFF_MS * u64::from(attempt),
            ))
            .await;
            attempt += 1;
        }
    }

    /// One run of a batch on a connection of the pool: commits it (and returns its notices),
    /// or rolls it back.
    async fn attempt(&mut self, jobs: &mut [Job]) -> Result<Vec<crate::Notice>, Abort> {
        let hold_max = Duration::from_millis(WRITER_CONNECTION_HOLD_MAX_MS);
        let (mut conn, since) = match self.held.take() {
            Some((conn, since)) if since.elapsed() < hold_max => (conn, since),
            _ => (
                self.pool
                    .acquire()
                    .await
                    .map_err(abort("take a database connection for writing"))?,
                Instant::now(),
            ),
        };
        let result = run_batch(&mut conn, jobs).await;
        if result.is_err() {
            // A connection that cannot even roll back (it was lost, say) is closed, not
            // handed back to the pool. One that was held may have died while it waited: the
            // batch is retried on a connection the pool checks.
            if let Err(error) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                tracing::debug!(database = %self.label, %error, "rollback failed; dropping the connection");
                conn.close_on_drop();
            }
            return result;
        }
        self.held = Some((conn, since));
        result
    }
}

/// Runs and commits a batch; the notices of what it committed, to be sent now that it has.
async fn run_batch(conn: &mut PgConnection, jobs: &mut [Job]) -> Result<Vec<crate::Notice>, Abort> {
    // Explicit, so a server whose default isolation is stricter cannot change what the
    // batch's locks guarantee.
    sqlx::query("BEGIN ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await
        .map_err(abort("begin a write transaction"))?;
    let (ids, _) = named_machines(jobs.iter().map(|job| &job.write));
    let mut batch = Batch::new(expected_history(jobs));
    batch.lock_machines(conn, &ids).await?;
    let runs = named_runs(jobs.iter().map(|job| &job.write));
    batch.runs.lock(conn, &runs).await?;
    for job in jobs.iter_mut() {
        let answer = batch
            .process(conn, &mut job.write, &mut job.decided)
            .await?;
        job.answer = Some(answer);
    }
    batch.flush(conn).await?;
    if let Err(error) = sqlx::query("COMMIT").execute(&mut *conn).await {
        // Lost during the commit, a transaction may have committed or not: never run again.
        let doubt = if is_connection_lost(&error) {
            "; the connection was lost during the commit, so whether it was committed is \
             unknown"
        } else {
            ""
        };
        return Err(Abort::fatal(Error::Unavailable(format!(
            "commit: {}{doubt}",
            db_error("commit", error)
        ))));
    }
    Ok(batch.notices)
}

/// History entries a batch will likely write: one per machine op, and what an apply brings.
/// The batch reserves that many seqs at once, when it first needs one.
fn expected_history(jobs: &[Job]) -> usize {
    jobs.iter()
        .map(|job| match &job.write {
            Write::Run { ops, .. } => ops.len(),
            Write::Apply { machines, .. } => machines.iter().map(|c| c.history.len()).sum(),
            _ => 0,
        })
        .sum()
}

/// What the batch knows about one machine.
#[derive(Clone)]
enum Slot {
    Missing,
    Present(MachineRecord),
    /// Its stored row does not parse; ops on it (or reading it as a peer) fail with `Corrupt`.
    Corrupt(String),
}

/// History seqs taken from the sequence for this batch, handed out in ascending order.
struct Seqs {
    reserved: Vec<i64>,
    used: usize,
    /// How many the batch is expected to need in all, see [`expected_history`].
    expected: usize,
}

impl Seqs {
    /// The next `count` seqs, reserving more from the sequence if needed. Seqs reserved and
    /// never used are gaps, which cursors do not mind.
    async fn take(&mut self, conn: &mut PgConnection, count: usize) -> Result<Vec<i64>, Abort> {
        let available = self.reserved.len() - self.used;
        if available < count {
            let want = (count - available).max(self.expected.saturating_sub(self.reserved.len()));
            let want = i64::try_from(want).unwrap_or(i64::MAX);
            let rows =
                sqlx::query("SELECT nextval('history_seq') AS seq FROM generate_series(1, $1)")
                    .bind(want)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(abort("reserve history seqs"))?;
            let mut fresh = Vec::with_capacity(rows.len());
            for row in &rows {
                fresh.push(
                    row.try_get::<i64, _>("seq")
                        .map_err(abort("reserve history seqs"))?,
                );
            }
            fresh.sort_unstable();
            self.reserved.extend(fresh);
        }
        let Some(taken) = self.reserved.get(self.used..self.used + count) else {
            return Err(Abort::fatal(Error::Unavailable(format!(
                "the history sequence gave fewer than the {count} seqs asked for"
            ))));
        };
        let taken = taken.to_vec();
        self.used += count;
        Ok(taken)
    }
}

/// The state of the open transaction: records as the batch's writes left them, and the rows
/// to write before the commit.
struct Batch {
    machines: HashMap<String, Slot>,
    /// Ids whose record must be written, sorted.
    dirty: BTreeSet<String>,
    /// New history entries, `seq` already assigned, in seq order.
    history: Vec<HistoryEntry>,
    audit: Vec<AuditEntry>,
    seqs: Seqs,
    runs: RunBatch,
    /// What the batch changed that other replicas may act on, sent through the [`Outbox`]
    /// once the batch has committed (never inside the transaction: see the outbox).
    notices: Vec<crate::Notice>,
}

/// Where a call started, so a call whose op fails can be taken back out of the batch.
struct Mark {
    history: usize,
    audit: usize,
    seqs_used: usize,
    /// The first slot each machine had before the call changed it, and whether it was dirty.
    saved: Vec<(String, Slot, bool)>,
}

/// The texts of a machine record and its history that PostgreSQL stores as `text`.
fn change_texts<'a>(
    record: &'a MachineRecord,
    history: &'a [HistoryEntry],
) -> impl Iterator<Item = &'a str> {
    [
        record.id.as_str(),
        record.definition.as_str(),
        record.state.as_str(),
    ]
    .into_iter()
    .chain(record.group.as_deref())
    .chain(history.iter().flat_map(|e| {
        [
            e.machine.as_str(),
            e.from_state.as_str(),
            e.to_state.as_str(),
            e.actor.as_str(),
        ]
        .into_iter()
        .chain(e.event.as_deref())
        .chain(e.reporter.as_deref())
    }))
}

/// Checks an audit entry's texts; its detail is JSON, which escapes U+0000.
pub(crate) fn check_audit<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Result<()> {
    for entry in entries {
        check_text(
            "an audit entry",
            [
                entry.actor.as_str(),
                entry.action.as_str(),
                entry.target.as_str(),
                entry.outcome.as_str(),
            ],
        )?;
    }
    Ok(())
}

impl Batch {
    fn new(expected_history: usize) -> Batch {
        Batch {
            machines: HashMap::new(),
            dirty: BTreeSet::new(),
            history: Vec::new(),
            audit: Vec::new(),
            seqs: Seqs {
                reserved: Vec::new(),
                used: 0,
                expected: expected_history,
            },
            runs: RunBatch::default(),
            notices: Vec::new(),
        }
    }

    /// Locks and reads the given machines (sorted ids) into the overlay; ids without a row
    /// become `Missing`. Ids the overlay knows are skipped.
    async fn lock_machines(
        &mut self,
        conn: &mut PgConnection,
        ids: &[String],
    ) -> Result<(), Abort> {
        let unknown: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !self.machines.contains_key(*id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        );
        let rows = sqlx::query(&sql)
            .bind(&unknown)
            .fetch_all(&mut *conn)
            .await
            .map_err(abort("lock machines"))?;
        for id in &unknown {
            self.machines.insert((*id).to_string(), Slot::Missing);
        }
        for row in &rows {
            let id: String = row.try_get("id").map_err(abort("lock machines"))?;
            let slot = match machine_from_row(row) {
                Ok(record) => Slot::Present(record),
                Err(Error::Corrupt(reason)) => Slot::Corrupt(reason),
                Err(other) => Slot::Corrupt(other.to_string()),
            };
            self.machines.insert(id, slot);
        }
        Ok(())
    }

    /// Locks and loads any of these machines the overlay does not know yet. Normally a no-op:
    /// the batch locked every machine its writes name when it began.
    async fn ensure_loaded(&mut self, conn: &mut PgConnection, ids: &[&str]) -> Result<(), Abort> {
        let mut unknown: Vec<String> = ids
            .iter()
            .filter(|id| !self.machines.contains_key(**id))
            .map(|id| (*id).to_string())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        self.lock_machines(conn, &unknown).await
    }

    /// A machine's whole history: what is committed, then what this batch has decided.
    async fn history_of(
        &self,
        conn: &mut PgConnection,
        machine: &str,
    ) -> Result<Result<Vec<HistoryEntry>>, Abort> {
        let sql = format!("SELECT {HISTORY_COLUMNS} FROM history WHERE machine = $1 ORDER BY seq");
        let rows = sqlx::query(&sql)
            .bind(machine)
            .fetch_all(&mut *conn)
            .await
            .map_err(abort("load history"))?;
        let mut history = Vec::with_capacity(rows.len());
        for row in &rows {
            match history_from_row(row) {
                Ok(entry) => history.push(entry),
                Err(error) => return Ok(Err(error)),
            }
        }
        history.extend(
            self.history
                .iter()
                .filter(|e| e.machine == machine)
                .cloned(),
        );
        Ok(Ok(history))
    }

    /// Decides or performs one write, leaving its effects in the overlay and the queues.
    async fn process(
        &mut self,
        conn: &mut PgConnection,
        write: &mut Write,
        decided: &mut bool,
    ) -> Result<Answer, Abort> {
        Ok(match write {
            Write::Run { ops, .. } => {
                *decided = true;
                Answer::Ops(self.run(conn, std::mem::take(ops)).await?)
            }
            Write::Apply {
                definitions,
                machines,
                audits,
                ..
            } => Answer::Applied(self.apply(conn, definitions, machines, audits).await?),
            Write::Audit { entry, .. } => Answer::Done(match check_audit([&*entry]) {
                Ok(()) => {
                    self.audit.push(entry.clone());
                    Ok(())
                }
                Err(error) => Err(error),
            }),
            Write::CreateToken { token, audit, .. } => {
                Answer::Done(self.create_token(conn, token, audit.as_ref()).await?)
            }
            Write::RevokeToken {
                name, at_ms, audit, ..
            } => Answer::Revoked(
                self.revoke_token(conn, name, *at_ms, audit.as_ref())
                    .await?,
            ),
            Write::Ping { .. } => Answer::Done(Ok(())),
            Write::CreateRun { run, audit, .. } => Answer::Created(Box::new(
                self.runs
                    .create(conn, run, audit.as_ref(), &mut self.audit)
                    .await?,
            )),
            Write::CommitRun { commit, .. } => {
                Answer::Done(self.runs.commit(conn, commit, &mut self.audit).await?)
            }
            Write::SetSetting {
                key, value, audit, ..
            } => {
                let checked = check_text("a setting's key", [key.as_str()])
                    .and_then(|()| check_audit(audit.as_ref()));
                Answer::Done(match checked {
                    Ok(()) => {
                        let at_ms = audit.as_ref().map(|entry| entry.at_ms);
                        let outcome = write_setting(conn, key, value, at_ms).await?;
                        if outcome.is_ok() {
                            push_audit(&mut self.audit, audit.clone(), "ok");
                            self.notices
                                .push(crate::Notice::Setting { key: key.clone() });
                        }
                        outcome
                    }
                    Err(error) => Err(error),
                })
            }
            Write::ScheduleMaintenance {
                maintenance,
                admit,
                audit,
                ..
            } => {
                // The decision is consumed here: a retried batch answers this call
                // `Unavailable` instead of deciding it twice.
                *decided = true;
                let admit = std::mem::replace(admit, Box::new(|_| Err(serde_json::Value::Null)));
                let audit_checked = check_audit(audit.as_ref());
                Answer::Scheduled(Box::new(match audit_checked {
                    Ok(()) => {
                        super::maintenance::schedule(
                            conn,
                            (**maintenance).clone(),
                            admit,
                            audit.clone(),
                            &mut self.audit,
                        )
                        .await?
                    }
                    Err(error) => Err(error),
                }))
            }
            Write::UpdateMaintenance {
                maintenance, audit, ..
            } => Answer::Done(match check_audit(audit.as_ref()) {
                Ok(()) => {
                    super::maintenance::update(
                        conn,
                        (**maintenance).clone(),
                        audit.clone(),
                        &mut self.audit,
                    )
                    .await?
                }
                Err(error) => Err(error),
            }),
        })
    }

    /// Decides one call's ops in order. If one fails (its decision panicked or returned
    /// something unwritable), the call's earlier ops are taken back out of the batch too, so
    /// an error answer always means the call changed nothing.
    async fn run(
        &mut self,
        conn: &mut PgConnection,
        ops: Vec<MachineOp>,
    ) -> Result<Result<Vec<OpOutcome>>, Abort> {
        let mut mark = Mark {
            history: self.history.len(),
            audit: self.audit.len(),
            seqs_used: self.seqs.used,
            saved: Vec::new(),
        };
        let count = ops.len();
        let mut outcomes = Vec::with_capacity(count);
        for (index, op) in ops.into_iter().enumerate() {
            // The last op fails before it changes anything, so only earlier ones need saving.
            let save = (index + 1 < count).then_some(&mut mark.saved);
            match self.run_op(conn, op, save).await? {
                Ok(outcome) => outcomes.push(outcome),
                Err(error) => {
                    self.undo(mark);
                    return Ok(Err(error));
                }
            }
        }
        Ok(Ok(outcomes))
    }

    fn undo(&mut self, mark: Mark) {
        self.history.truncate(mark.history);
        self.audit.truncate(mark.audit);
        // The call's seqs go back to the batch, for the next op that writes history.
        self.seqs.used = mark.seqs_used;
        for (id, slot, was_dirty) in mark.saved {
            if !was_dirty {
                self.dirty.remove(&id);
            }
            self.machines.insert(id, slot);
        }
    }

    async fn run_op(
        &mut self,
        conn: &mut PgConnection,
        op: MachineOp,
        save: Option<&mut Vec<(String, Slot, bool)>>,
    ) -> Result<Result<OpOutcome>, Abort> {
        let MachineOp {
            machine,
            peers,
            with_history,
            decide,
            audit,
        } = op;
        if let Err(error) = check_audit(audit.as_ref()) {
            return Ok(Err(error));
        }
        let mut named: Vec<&str> = Vec::with_capacity(peers.len() + 1);
        named.push(&machine);
        named.extend(peers.iter().map(String::as_str));
        self.ensure_loaded(conn, &named).await?;

        let mut peer_records = HashMap::with_capacity(peers.len());
        for peer in &peers {
            match self.machines.get(peer) {
                Some(Slot::Present(record)) => {
                    peer_records.insert(peer.clone(), record.clone());
                }
                Some(Slot::Corrupt(reason)) => {
                    return Ok(Err(Error::Corrupt(format!("peer `{peer}`: {reason}"))));
                }
                Some(Slot::Missing) | None => {}
            }
        }
        let history =
            if with_history && matches!(self.machines.get(&machine), Some(Slot::Present(_))) {
                match self.history_of(conn, &machine).await? {
                    Ok(history) => Some(history),
                    Err(error) => return Ok(Err(error)),
                }
            } else {
                None
            };

        let current = match self.machines.remove(&machine) {
            Some(Slot::Present(record)) => record,
            Some(Slot::Corrupt(reason)) => {
                let error = Error::Corrupt(reason.clone());
                self.machines.insert(machine, Slot::Corrupt(reason));
                return Ok(Err(error));
            }
            Some(Slot::Missing) | None => {
                self.machines.insert(machine, Slot::Missing);
                push_audit(&mut self.audit, audit, NOT_FOUND);
                return Ok(Ok(OpOutcome::NotFound));
            }
        };

        let decision = {
            let context = OpContext {
                record: &current,
                peers: &peer_records,
                history: history.as_deref(),
            };
            // A bug in one decision must not take down the writer, and with it every other
            // request: the panic fails this op's call only.
            catch_unwind(AssertUnwindSafe(|| decide(&context)))
        };
        let outcome = match decision {
            Err(payload) => {
                let message = format!(
                    "the decision for machine `{machine}` panicked: {}",
                    panic_message(payload.as_ref())
                );
                tracing::error!(%machine, %message, "machine op panicked; its call is refused");
                self.machines.insert(machine, Slot::Present(current));
                return Ok(Err(Error::Corrupt(message)));
            }
            Ok(Err(refusal)) => {
                push_audit(&mut self.audit, audit, refusal.code());
                let outcome = OpOutcome::Refused(refusal, current.clone());
                self.machines.insert(machine, Slot::Present(current));
                outcome
            }
            Ok(Ok(change)) if change.is_noop() => {
                push_audit(&mut self.audit, audit, "noop");
                let outcome = OpOutcome::Unchanged(current.clone());
                self.machines.insert(machine, Slot::Present(current));
                outcome
            }
            Ok(Ok(mut change)) => {
                let checked = check_change(&machine, &current, &change).map_err(Error::Corrupt);
                let checked = checked.and_then(|()| {
                    check_text(
                        &format!("the change to machine `{machine}`"),
                        change_texts(&change.record, &change.history),
                    )
                });
                if let Err(error) = checked {
                    tracing::error!(%machine, %error, "machine op returned an invalid change");
                    self.machines.insert(machine, Slot::Present(current));
                    return Ok(Err(error));
                }
                let seqs = self.seqs.take(conn, change.history.len()).await?;
                for (entry, seq) in change.history.iter_mut().zip(seqs) {
                    entry.seq = seq;
                }
                self.history.extend(change.history.iter().cloned());
                let was_dirty = !self.dirty.insert(machine.clone());
                if let Some(saved) = save
                    && !saved.iter().any(|(id, _, _)| *id == machine)
                {
                    saved.push((machine.clone(), Slot::Present(current), was_dirty));
                }
                self.machines
                    .insert(machine, Slot::Present(change.record.clone()));
                push_audit(&mut self.audit, audit, "ok");
                OpOutcome::Applied(change)
            }
        };
        Ok(Ok(outcome))
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        definitions: &[NewDefinition],
        machines: &[Change],
        audits: &[AuditEntry],
    ) -> Result<Result<Applied>, Abort> {
        // Check everything that can be checked before writing anything.
        for change in machines {
            if let Some(entry) = change
                .history
                .iter()
                .find(|e| e.machine != change.record.id)
            {
                return Ok(Err(Error::Corrupt(format!(
                    "apply: the new machine `{}` comes with history for machine `{}`",
                    change.record.id, entry.machine
                ))));
            }
            let what = format!("apply: the new machine `{}`", change.record.id);
            if let Err(error) = check_text(&what, change_texts(&change.record, &change.history)) {
                return Ok(Err(error));
            }
        }
        for new in definitions {
            let what = format!("apply: definition {} `{}`", new.kind, new.name);
            let texts = [
                new.kind.as_str(),
                new.name.as_str(),
                new.source.as_str(),
                new.digest.as_str(),
                new.created_by.as_str(),
            ];
            if let Err(error) = check_text(&what, texts) {
                return Ok(Err(error));
            }
        }
        if let Err(error) = check_audit(audits) {
            return Ok(Err(error));
        }
        let mut stored = Vec::with_capacity(definitions.len());
        if !definitions.is_empty() {
            // A savepoint takes the definitions back if a later one fails, keeping the apply
            // all or nothing without failing the rest of the batch.
            execute(conn, "SAVEPOINT apply_definitions", "start an apply").await?;
            match store_definitions(conn, definitions).await? {
                Ok(list) => {
                    execute(conn, "RELEASE apply_definitions", "finish an apply").await?;
                    stored = list;
                }
                Err(error) => {
                    execute(conn, "ROLLBACK TO apply_definitions", "undo an apply").await?;
                    execute(conn, "RELEASE apply_definitions", "undo an apply").await?;
                    return Ok(Err(error));
                }
            }
        }
        let ids: Vec<&str> = machines.iter().map(|c| c.record.id.as_str()).collect();
        self.ensure_loaded(conn, &ids).await?;
        // The first change for each id the batch does not know as existing.
        let mut candidates: Vec<&Change> = Vec::new();
        for change in machines {
            let id = change.record.id.as_str();
            let missing = matches!(self.machines.get(id), Some(Slot::Missing) | None);
            if missing && !candidates.iter().any(|c| c.record.id == id) {
                candidates.push(change);
            }
        }
        let inserted = insert_new_machines(conn, &candidates).await?;
        // Ids another replica created since the batch locked them: theirs stand.
        let taken: Vec<&str> = candidates
            .iter()
            .map(|c| c.record.id.as_str())
            .filter(|id| !inserted.contains(*id))
            .collect();
        if !taken.is_empty() {
            for id in &taken {
                self.machines.remove(*id);
            }
            self.ensure_loaded(conn, &taken).await?;
        }
        let mut created = Vec::new();
        for change in candidates {
            if !inserted.contains(&change.record.id) {
                continue; // Already there: apply never overwrites a running machine.
            }
            let mut history = change.history.clone();
            let seqs = self.seqs.take(conn, history.len()).await?;
            for (entry, seq) in history.iter_mut().zip(seqs) {
                entry.seq = seq;
            }
            self.history.extend(history);
            // Written already; a later op of the batch that changes it marks it dirty.
            self.machines.insert(
                change.record.id.clone(),
                Slot::Present(change.record.clone()),
            );
            created.push(change.record.clone());
        }
        let new_definitions = stored.iter().any(|(_, new)| *new);
        if new_definitions && !self.notices.contains(&crate::Notice::Definitions) {
            self.notices.push(crate::Notice::Definitions);
        }
        let changed = new_definitions || !created.is_empty();
        for audit in audits {
            push_audit(
                &mut self.audit,
                Some(audit.clone()),
                if changed { "ok" } else { "noop" },
            );
        }
        Ok(Ok(Applied {
            definitions: stored,
            created,
        }))
    }

    async fn create_token(
        &mut self,
        conn: &mut PgConnection,
        token: &TokenRecord,
        audit: Option<&AuditEntry>,
    ) -> Result<Result<()>, Abort> {
        let texts = [
            token.name.as_str(),
            token.role.as_str(),
            token.hash.as_str(),
            token.created_by.as_str(),
        ];
        let checked = check_text("a token", texts.into_iter().chain(token.scope.as_deref()))
            .and_then(|()| check_audit(audit));
        if let Err(error) = checked {
            return Ok(Err(error));
        }
        // ON CONFLICT DO NOTHING rather than a unique violation: an error would abort the
        // whole transaction, and with it the rest of the batch.
        let inserted = sqlx::query(
            "INSERT INTO tokens (name, role, scope, hash, created_at_ms, created_by, revoked_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING name",
        )
        .bind(&token.name)
        .bind(&token.role)
        .bind(&token.scope)
        .bind(&token.hash)
        .bind(token.created_at_ms)
        .bind(&token.created_by)
        .bind(token.revoked_at_ms)
        .fetch_optional(&mut *conn)
        .await
        .map_err(abort("create a token"))?;
        if inserted.is_some() {
            push_audit(&mut self.audit, audit.cloned(), "ok");
            return Ok(Ok(()));
        }
        let name_taken: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tokens WHERE name = $1)")
                .bind(&token.name)
                .fetch_one(&mut *conn)
                .await
                .map_err(abort("look up a token name"))?;
        let message = if name_taken {
            format!("a token named `{}` already exists", token.name)
        } else {
            "another token already has this secret".to_string()
        };
        push_audit(&mut self.audit, audit.cloned(), "conflict");
        Ok(Err(Error::Conflict(message)))
    }

    async fn revoke_token(
        &mut self,
        conn: &mut PgConnection,
        name: &str,
        at_ms: i64,
        audit: Option<&AuditEntry>,
    ) -> Result<Result<bool>, Abort> {
        let checked = check_text("a token name", [name]).and_then(|()| check_audit(audit));
        if let Err(error) = checked {
            return Ok(Err(error));
        }
        let result = sqlx::query(
            "UPDATE tokens SET revoked_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL",
        )
        .bind(at_ms)
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(abort("revoke a token"))?;
        let revoked = result.rows_affected() > 0;
        push_audit(
            &mut self.audit,
            audit.cloned(),
            if revoked { "ok" } else { NOT_FOUND },
        );
        Ok(Ok(revoked))
    }

    /// Writes the batch's changed records, history, run rows and audit rows, one statement
    /// per table.
    async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), Abort> {
        self.runs.flush(conn).await?;
        let records: Vec<&MachineRecord> = self
            .dirty
            .iter()
            .filter_map(|id| match self.machines.get(id) {
                Some(Slot::Present(record)) => Some(record),
                _ => None,
            })
            .collect();
        write_rows(conn, &records, &self.history, &self.audit).await?;
        if !records.is_empty() {
            self.notices.push(crate::Notice::Machines {
                versions: records.iter().map(|r| (r.id.clone(), r.version)).collect(),
            });
        }
        Ok(())
    }
}

async fn execute(conn: &mut PgConnection, sql: &str, what: &'static str) -> Result<(), Abort> {
    sqlx::query(sql)
        .execute(&mut *conn)
        .await
        .map_err(abort(what))?;
    Ok(())
}

/// Stores each definition whose digest differs from its latest version's, as the next
/// version. Reads its own writes, so two versions of one definition in one apply chain up.
/// When another replica stores the same version first, its commit is waited for and the
/// latest version read again.
async fn store_definitions(
    conn: &mut PgConnection,
    definitions: &[NewDefinition],
) -> Result<Result<Vec<(DefinitionRecord, bool)>>, Abort> {
    let select = format!(
        "SELECT {DEFINITION_COLUMNS} FROM definitions WHERE kind = $1 AND name = $2 \
         ORDER BY version DESC LIMIT 1"
    );
    let mut stored = Vec::with_capacity(definitions.len());
    'definitions: for new in definitions {
        let compiled = match serde_json::to_string(&new.compiled) {
            Ok(text) => text,
            Err(error) => {
                return Ok(Err(Error::Corrupt(format!(
                    "definition {} `{}` does not encode as JSON: {error}",
                    new.kind, new.name
                ))));
            }
        };
        for _ in 0..DEFINITION_VERSION_ATTEMPTS {
            let latest = sqlx::query(&select)
                .bind(&new.kind)
                .bind(&new.name)
                .fetch_optional(&mut *conn)
                .await
                .map_err(abort("read the latest definition version"))?;
            let mut version = 1;
            if let Some(row) = latest {
                let digest: String = row
                    .try_get("digest")
                    .map_err(abort("read a definition digest"))?;
                if digest == new.digest {
                    match definition_from_row(&row) {
                        Ok(record) => stored.push((record, false)),
                        Err(error) => return Ok(Err(error)),
                    }
                    continue 'definitions;
                }
                let latest_version: i64 = row
                    .try_get("version")
                    .map_err(abort("read a definition version"))?;
                version = latest_version + 1;
            }
            let inserted = sqlx::query(
                "INSERT INTO definitions \
                 (kind, name, version, compiled, source, digest, created_at_ms, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING version",
            )
            .bind(&new.kind)
            .bind(&new.name)
            .bind(version)
            .bind(&compiled)
            .bind(&new.source)
            .bind(&new.digest)
            .bind(new.created_at_ms)
            .bind(&new.created_by)
            .fetch_optional(&mut *conn)
            .await
            .map_err(abort("store a definition"))?;
            if inserted.is_some() {
                stored.push((
                    DefinitionRecord {
                        kind: new.kind.clone(),
                        name: new.name.clone(),
                        version,
                        compiled: new.compiled.clone(),
                        source: new.source.clone(),
                        digest: new.digest.clone(),
                        created_at_ms: new.created_at_ms,
                        created_by: new.created_by.clone(),
                    },
                    true,
                ));
                continue 'definitions;
            }
        }
        return Ok(Err(Error::Conflict(format!(
            "definition {} `{}` kept getting new versions from elsewhere while this apply ran \
             ({DEFINITION_VERSION_ATTEMPTS} attempts); nothing was applied",
            new.kind, new.name
        ))));
    }
    Ok(Ok(stored))
}

fn encode_error(what: &str, error: serde_json::Error) -> Abort {
    Abort::fatal(Error::Unavailable(format!(
        "encode {what} as JSON: {error}"
    )))
}

/// A machine row's columns, as arrays for `UNNEST`.
#[derive(Default)]
struct MachineColumns<'a> {
    id: Vec<&'a str>,
    definition: Vec<&'a str>,
    group: Vec<Option<&'a str>>,
    state: Vec<&'a str>,
    counter: Vec<i64>,
    reporters: Vec<String>,
    entered_at_ms: Vec<i64>,
    timer_due_ms: Vec<Option<i64>>,
    version: Vec<i64>,
    replay: Vec<Option<String>>,
    created_at_ms: Vec<i64>,
    updated_at_ms: Vec<i64>,
}

impl<'a> MachineColumns<'a> {
    fn of(records: impl IntoIterator<Item = &'a MachineRecord>) -> Result<Self, Abort> {
        let mut columns = MachineColumns::default();
        for record in records {
            columns.id.push(&record.id);
            columns.definition.push(&record.definition);
            columns.group.push(record.group.as_deref());
            columns.state.push(&record.state);
            columns.counter.push(i64::from(record.counter));
            columns.reporters.push(
                serde_json::to_string(&record.reporters)
                    .map_err(|e| encode_error("machine reporters", e))?,
            );
            columns.entered_at_ms.push(record.entered_at_ms);
            columns.timer_due_ms.push(record.timer_due_ms);
            columns.version.push(record.version);
            columns.replay.push(match &record.replay {
                Some(replay) => Some(
                    serde_json::to_string(replay).map_err(|e| encode_error("machine replay", e))?,
                ),
                None => None,
            });
            columns.created_at_ms.push(record.created_at_ms);
            columns.updated_at_ms.push(record.updated_at_ms);
        }
        Ok(columns)
    }

    fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        query
            .bind(self.id)
            .bind(self.definition)
            .bind(self.group)
            .bind(self.state)
            .bind(self.counter)
            .bind(self.reporters)
            .bind(self.entered_at_ms)
            .bind(self.timer_due_ms)
            .bind(self.version)
            .bind(self.replay)
            .bind(self.created_at_ms)
            .bind(self.updated_at_ms)
    }
}

/// `UNNEST` of the twelve machine columns, in [`MACHINE_COLUMNS`] order.
const MACHINE_UNNEST: &str = "UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::bigint[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], \
     $11::bigint[], $12::bigint[])";

/// Inserts new machines, sorted by id so concurrent applies take the new rows in one order;
/// ids that exist (another replica created them) are left alone. Returns the ids inserted.
async fn insert_new_machines(
    conn: &mut PgConnection,
    changes: &[&Change],
) -> Result<BTreeSet<String>, Abort> {
    if changes.is_empty() {
        return Ok(BTreeSet::new());
    }
    let columns = MachineColumns::of(changes.iter().map(|c| &c.record))?;
    let sql = format!(
        "INSERT INTO machines ({MACHINE_COLUMNS}) \
         SELECT * FROM {MACHINE_UNNEST} AS v ({MACHINE_COLUMNS}) ORDER BY v.id \
         ON CONFLICT (id) DO NOTHING RETURNING id"
    );
    let rows = columns
        .bind(sqlx::query(&sql))
        .fetch_all(&mut *conn)
        .await
        .map_err(abort("create machines"))?;
    rows.iter()
        .map(|row| {
            row.try_get::<String, _>("id")
                .map_err(abort("create machines"))
        })
        .collect()
}

/// `$first::type[], $first+1::type[], ...`: the parameters of an `UNNEST`, numbered from
/// `first`.
fn unnest_params(first: usize, types: &[&str]) -> String {
    types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::{ty}[]", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The machine columns' types, in [`MACHINE_COLUMNS`] order.
const MACHINE_TYPES: [&str; 12] = [
    "text", "text", "text", "text", "bigint", "text", "bigint", "bigint", "bigint", "text",
    "bigint", "bigint",
];

/// The history columns' types, in [`HISTORY_COLUMNS`] order.
const HISTORY_TYPES: [&str; 11] = [
    "bigint", "text", "bigint", "bigint", "text", "text", "text", "text", "bigint", "text", "text",
];

/// The audit columns' types, as [`write_rows`] binds them.
const AUDIT_TYPES: [&str; 6] = ["bigint", "text", "text", "text", "text", "text"];

/// Writes the batch's changed machines, new history and audit entries in one statement (a
/// data-modifying `WITH` per table): one round trip to the server instead of one per table,
/// which is most of a small batch's time.
async fn write_rows(
    conn: &mut PgConnection,
    records: &[&MachineRecord],
    history: &[HistoryEntry],
    audit: &[AuditEntry],
) -> Result<(), Abort> {
    let mut parts: Vec<String> = Vec::new();
    let mut next = 1;
    if !records.is_empty() {
        parts.push(format!(
            "m AS (INSERT INTO machines ({MACHINE_COLUMNS}) \
             SELECT * FROM UNNEST({}) AS v ({MACHINE_COLUMNS}) ORDER BY v.id \
             ON CONFLICT (id) DO UPDATE SET \
             definition = excluded.definition, grp = excluded.grp, state = excluded.state, \
             counter = excluded.counter, reporters = excluded.reporters, \
             entered_at_ms = excluded.entered_at_ms, timer_due_ms = excluded.timer_due_ms, \
             version = excluded.version, replay = excluded.replay, \
             updated_at_ms = excluded.updated_at_ms)",
            unnest_params(next, &MACHINE_TYPES)
        ));
        next += MACHINE_TYPES.len();
    }
    if !history.is_empty() {
        parts.push(format!(
            "h AS (INSERT INTO history ({HISTORY_COLUMNS}) SELECT * FROM UNNEST({}))",
            unnest_params(next, &HISTORY_TYPES)
        ));
        next += HISTORY_TYPES.len();
    }
    if !audit.is_empty() {
        // Rows are numbered so their seqs follow the order they were written in.
        parts.push(format!(
            "a AS (INSERT INTO audit (at_ms, actor, action, target, outcome, detail) \
             SELECT at_ms, actor, action, target, outcome, detail \
             FROM UNNEST({}) WITH ORDINALITY \
                 AS v (at_ms, actor, action, target, outcome, detail, n) \
             ORDER BY n)",
            unnest_params(next, &AUDIT_TYPES)
        ));
    }
    if parts.is_empty() {
        return Ok(());
    }
    let sql = format!("WITH {} SELECT 1", parts.join(", "));
    let mut query = sqlx::query(&sql);
    if !records.is_empty() {
        query = MachineColumns::of(records.iter().copied())?.bind(query);
    }
    if !history.is_empty() {
        query = query
            .bind(array(history, |e| e.seq))
            .bind(array(history, |e| e.machine.as_str()))
            .bind(array(history, |e| e.version))
            .bind(array(history, |e| e.at_ms))
            .bind(array(history, |e| history_kind_name(e.kind)))
            .bind(array(history, |e| e.from_state.as_str()))
            .bind(array(history, |e| e.to_state.as_str()))
            .bind(array(history, |e| e.event.as_deref()))
            .bind(array(history, |e| i64::from(e.counter)))
            .bind(array(history, |e| e.actor.as_str()))
            .bind(array(history, |e| e.reporter.as_deref()));
    }
    if !audit.is_empty() {
        let mut details = Vec::with_capacity(audit.len());
        for entry in audit {
            details.push(
                serde_json::to_string(&entry.detail)
                    .map_err(|e| encode_error("audit detail", e))?,
            );
        }
        query = query
            .bind(array(audit, |e| e.at_ms))
            .bind(array(audit, |e| e.actor.as_str()))
            .bind(array(audit, |e| e.action.as_str()))
            .bind(array(audit, |e| e.target.as_str()))
            .bind(array(audit, |e| e.outcome.as_str()))
            .bind(details);
    }
    query
        .execute(&mut *conn)
        .await
        .map_err(abort("write machines, history and the audit log"))?;
    Ok(())
}
