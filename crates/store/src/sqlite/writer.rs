//! The single writer: every write of a [`super::SqliteStore`] goes through one task that owns
//! one connection and commits whatever is queued together (group commit).
//!
//! SQLite allows one writer at a time, so funnelling all writes through one task costs no
//! parallelism, and it lets one `fsync` acknowledge many requests: while a commit's `fsync`
//! runs, new requests queue up, and the next wake-up takes all of them into one transaction.
//! There is no timer and no artificial delay: a batch holds whatever queued while the
//! previous commit ran, so batches grow exactly when commits are the bottleneck.
//!
//! Within a batch, machine records live in an overlay map: an op sees the effects of every op
//! decided before it in the same transaction, whether from its own call or another one, which
//! is what makes read-decide-write free of lost updates. Changed records, history and audit
//! rows are written with a few multi-row statements just before the commit.
//!
//! Run commits get the same treatment ([`super::runs`]): their compare-and-set is checked
//! against an overlay of run versions, so commits of one run in one batch chain up, and one
//! that fails its check is answered `Conflict` without failing the rest of the batch.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use levee_engine::{Change, HistoryEntry, MachineRecord};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::mpsc;

use super::codec::{
    AUDIT_COLUMN_COUNT, AUDIT_COLUMNS, DEFINITION_COLUMNS, HISTORY_COLUMN_COUNT, HISTORY_COLUMNS,
    MACHINE_COLUMN_COUNT, MACHINE_COLUMNS, SQLITE_MAX_VARIABLES, db_error, definition_from_row,
    history_from_row, machine_from_row, values_placeholders,
};
use super::runs::{RunBatch, write_setting};
use crate::queue::{
    Gathered, NOT_FOUND, Reply, Request, Write, check_change, gather, named_machines, named_runs,
    panic_message, push_audit,
};
use crate::rows::history_kind_name;
use crate::{
    Applied, AuditEntry, DefinitionRecord, Error, MachineOp, NewDefinition, OpContext, OpOutcome,
    Result, TokenRecord,
};

/// Sends a request's answer once the batch's fate is known: its own result if the commit
/// succeeded, `Unavailable` with the batch's error if it did not.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

fn finish<T: Send + 'static>(reply: Reply<T>, result: Result<T>) -> Finish {
    Box::new(move |failure| {
        let answer = match failure {
            Some(message) => Err(Error::Unavailable(message.to_string())),
            None => result,
        };
        let _ = reply.send(answer);
    })
}

/// Records a request's result, or, if processing it hit an error that dooms the batch, queues
/// its reply for the batch's failure answer and passes the error on.
fn settle<T: Send + 'static>(
    done: &mut Vec<Finish>,
    reply: Reply<T>,
    outcome: Result<Result<T>>,
) -> Result<()> {
    match outcome {
        Ok(result) => {
            done.push(finish(reply, result));
            Ok(())
        }
        Err(fatal) => {
            // The placeholder is never sent: a failed batch answers every request with its
            // own error.
            done.push(finish::<T>(reply, Err(Error::Unavailable(String::new()))));
            Err(fatal)
        }
    }
}

pub(crate) struct Writer {
    /// `None` after a failure left the connection in an unknown state; reopened on demand.
    conn: Option<SqliteConnection>,
    options: SqliteConnectOptions,
    rx: mpsc::Receiver<Request>,
    /// The database path, for messages.
    label: String,
    /// Where the notices of each committed batch are broadcast.
    notices: tokio::sync::broadcast::Sender<crate::Notice>,
}

impl Writer {
    pub(crate) fn new(
        conn: SqliteConnection,
        options: SqliteConnectOptions,
        rx: mpsc::Receiver<Request>,
        label: String,
        notices: tokio::sync::broadcast::Sender<crate::Notice>,
    ) -> Writer {
        // A reconnect after a failure must find the database where it was: creating an empty
        // file in its place would hide the problem behind "no such table" errors.
        let options = options.create_if_missing(false);
        Writer {
            conn: Some(conn),
            options,
            rx,
            label,
            notices,
        }
    }

    /// Serves batches until every store handle is dropped or `close` is asked for.
    pub(crate) async fn run(mut self) {
        let mut carried: Option<Write> = None;
        loop {
            let first = match carried.take() {
                Some(write) => write,
                None => match self.rx.recv().await {
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
            // SQLite's one writer sees every write of the server, so what is queued is
            // already the whole load: no lingering.
            let Gathered {
                batch,
                carried: next,
                close,
            } = gather(&mut self.rx, first, None).await;
            carried = next;
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

    /// Answers whatever is still queued as closed, then closes the connection.
    async fn shutdown(&mut self) {
        self.rx.close();
        while let Ok(request) = self.rx.try_recv() {
            match request {
                Request::Write(write) => write.fail("the store is closed"),
                Request::Close { done } => {
                    let _ = done.send(());
                }
            }
        }
        if let Some(conn) = self.conn.take()
            && let Err(error) = conn.close().await
        {
            tracing::warn!(database = %self.label, %error, "closing the SQLite writer connection failed");
        }
    }

    /// Runs one batch in one transaction and answers every request in it: each its own result
    /// if the commit succeeded, all `Unavailable` if anything failed.
    async fn commit_batch(&mut self, writes: Vec<Write>) {
        let count = writes.len();
        let mut done: Vec<Finish> = Vec::with_capacity(count);
        let mut pending = writes.into_iter();
        let mut notices = Vec::new();
        let result = match self.connection().await {
            Ok(conn) => run_batch(conn, &mut pending, &mut done, &mut notices).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => {
                tracing::trace!(requests = count, "write batch committed");
                for finish in done {
                    finish(None);
                }
                for notice in notices {
                    // No receiver is not an error: nobody is listening.
                    let _ = self.notices.send(notice);
                }
            }
            Err(error) => {
                self.rollback().await;
                let message = format!(
                    "write to {} failed and was rolled back: {error}",
                    self.label
                );
                tracing::warn!(requests = count, error = %message, "write batch failed");
                for finish in done {
                    finish(Some(&message));
                }
                for write in pending {
                    write.fail(&message);
                }
            }
        }
    }

    async fn connection(&mut self) -> Result<&mut SqliteConnection> {
        if self.conn.is_none() {
            let conn = self
                .options
                .connect()
                .await
                .map_err(|e| db_error(&format!("reopen {} for writing", self.label), e))?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::Unavailable(format!("{}: no writer connection", self.label)))
    }

    /// Undoes a failed batch. SQLite rolls some failures back by itself (a full disk, an I/O
    /// error), so "no transaction is active" is fine; any other failure leaves the connection
    /// suspect, and it is replaced before the next batch.
    async fn rollback(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(error) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
            let text = error.to_string();
            if !text.contains("no transaction is active") {
                tracing::warn!(database = %self.label, %error, "rollback failed; reopening the writer connection");
                self.conn = None;
            }
        }
    }
}

async fn run_batch(
    conn: &mut SqliteConnection,
    pending: &mut std::vec::IntoIter<Write>,
    done: &mut Vec<Finish>,
    notices: &mut Vec<crate::Notice>,
) -> Result<()> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("begin a write transaction", e))?;
    let (ids, needs_seq) = named_machines(pending.as_slice());
    let mut batch = Batch::load(conn, &ids, needs_seq).await?;
    let runs = named_runs(pending.as_slice());
    batch.runs.load(conn, &runs).await?;
    for write in pending.by_ref() {
        match write {
            Write::Run { ops, reply } => {
                let outcome = batch.run(conn, ops).await;
                settle(done, reply, outcome)?;
            }
            Write::Apply {
                definitions,
                machines,
                audits,
                reply,
            } => {
                let any_definitions = !definitions.is_empty();
                let outcome = batch.apply(conn, definitions, machines, audits).await;
                if any_definitions
                    && matches!(&outcome, Ok(Ok(applied)) if applied.definitions.iter().any(|(_, new)| *new))
                    && !notices.contains(&crate::Notice::Definitions)
                {
                    notices.push(crate::Notice::Definitions);
                }
                settle(done, reply, outcome)?;
            }
            Write::Audit { entry, reply } => {
                batch.audit.push(entry);
                done.push(finish(reply, Ok(())));
            }
            Write::CreateToken {
                token,
                audit,
                reply,
            } => {
                let outcome = batch.create_token(conn, token, audit).await;
                settle(done, reply, outcome)?;
            }
            Write::RevokeToken {
                name,
                at_ms,
                audit,
                reply,
            } => {
                let outcome = batch.revoke_token(conn, &name, at_ms, audit).await;
                settle(done, reply, outcome)?;
            }
            Write::Ping { reply } => done.push(finish(reply, Ok(()))),
            Write::CreateRun { run, audit, reply } => {
                let outcome = batch.runs.create(conn, *run, audit, &mut batch.audit).await;
                settle(done, reply, outcome)?;
            }
            Write::CommitRun { commit, reply } => {
                let outcome = batch.runs.commit(conn, *commit, &mut batch.audit).await;
                settle(done, reply, outcome)?;
            }
            Write::SetSetting {
                key,
                value,
                audit,
                reply,
            } => {
                let at_ms = audit.as_ref().map(|entry| entry.at_ms);
                let outcome = write_setting(conn, &key, &value, at_ms).await;
                if matches!(outcome, Ok(Ok(()))) {
                    push_audit(&mut batch.audit, audit, "ok");
                    notices.push(crate::Notice::Setting { key: key.clone() });
                }
                settle(done, reply, outcome)?;
            }
            Write::ScheduleMaintenance {
                maintenance,
                admit,
                audit,
                reply,
            } => {
                let outcome = super::maintenance::schedule(
                    conn,
                    *maintenance,
                    admit,
                    audit,
                    &mut batch.audit,
                )
                .await;
                settle(done, reply, outcome)?;
            }
            Write::UpdateMaintenance {
                maintenance,
                audit,
                reply,
            } => {
                let outcome =
                    super::maintenance::update(conn, *maintenance, audit, &mut batch.audit).await;
                settle(done, reply, outcome)?;
            }
        }
    }
    batch.flush(conn).await?;
    sqlx::query("COMMIT")
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("commit", e))?;
    Ok(())
}

/// What the batch knows about one machine.
#[derive(Clone)]
enum Slot {
    Missing,
    Present(MachineRecord),
    /// Its stored row does not parse; ops on it (or reading it as a peer) fail with `Corrupt`.
    Corrupt(String),
}

/// The state of the open transaction: records as the batch's ops left them, and the rows to
/// write before the commit.
struct Batch {
    machines: HashMap<String, Slot>,
    /// Ids whose record must be written.
    dirty: HashSet<String>,
    /// New history entries, `seq` already assigned, in seq order.
    history: Vec<HistoryEntry>,
    audit: Vec<AuditEntry>,
    /// Runs: their version overlay and the rows of their commits.
    runs: RunBatch,
    /// The seq the next history entry gets. Assigned here rather than read back after the
    /// insert, so a decision that reads history sees entries decided earlier in the same
    /// batch with their final seq. Safe because the batch holds SQLite's write lock from its
    /// first statement: nobody else can insert history meanwhile.
    next_seq: i64,
}

/// Where a call started, so a call whose op fails can be taken back out of the batch.
struct Mark {
    history: usize,
    audit: usize,
    next_seq: i64,
    /// The first slot each machine had before the call changed it, and whether it was dirty.
    saved: Vec<(String, Slot, bool)>,
}

impl Batch {
    /// Reads, inside the transaction, every machine the batch names, with one query.
    async fn load(conn: &mut SqliteConnection, ids: &[String], needs_seq: bool) -> Result<Batch> {
        let mut batch = Batch {
            machines: HashMap::new(),
            dirty: HashSet::new(),
            history: Vec::new(),
            audit: Vec::new(),
            runs: RunBatch::default(),
            next_seq: 0,
        };
        if needs_seq {
            let row = sqlx::query(
                "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'history'), 0), \
                            COALESCE((SELECT MAX(seq) FROM history), 0)) AS last_seq",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| db_error("read the last history seq", e))?;
            let last: i64 = row
                .try_get("last_seq")
                .map_err(|e| db_error("read the last history seq", e))?;
            batch.next_seq = last + 1;
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        batch.fetch(conn, &ids).await?;
        Ok(batch)
    }

    /// Loads the given machines into the overlay; ids without a row become `Missing`.
    async fn fetch(&mut self, conn: &mut SqliteConnection, ids: &[&str]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // One statement with one parameter whatever the number of ids: SQLite expands the JSON
        // array itself, so there is no variable limit to chunk around and the statement stays
        // in the prepared-statement cache.
        let list = serde_json::to_string(ids)
            .map_err(|e| Error::Unavailable(format!("encode machine ids: {e}")))?;
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE id IN (SELECT value FROM json_each(?1))"
        );
        let rows = sqlx::query(&sql)
            .bind(&list)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| db_error("load machines", e))?;
        for id in ids {
            self.machines.insert((*id).to_string(), Slot::Missing);
        }
        for row in &rows {
            let id: String = row
                .try_get("id")
                .map_err(|e| db_error("load machines", e))?;
            let slot = match machine_from_row(row) {
                Ok(record) => Slot::Present(record),
                Err(Error::Corrupt(reason)) => Slot::Corrupt(reason),
                Err(other) => Slot::Corrupt(other.to_string()),
            };
            self.machines.insert(id, slot);
        }
        Ok(())
    }

    /// Loads any of these machines the overlay does not know yet. Normally a no-op: `load`
    /// already read every machine the batch names.
    async fn ensure_loaded(&mut self, conn: &mut SqliteConnection, ids: &[&str]) -> Result<()> {
        let unknown: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !self.machines.contains_key(*id))
            .collect();
        self.fetch(conn, &unknown).await
    }

    /// A machine's whole history: what is committed, then what this batch has decided.
    async fn history_of(
        &self,
        conn: &mut SqliteConnection,
        machine: &str,
    ) -> Result<Result<Vec<HistoryEntry>>> {
        let sql = format!("SELECT {HISTORY_COLUMNS} FROM history WHERE machine = ?1 ORDER BY seq");
        let rows = sqlx::query(&sql)
            .bind(machine)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| db_error("load history", e))?;
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

    /// Decides one call's ops in order. If one fails (its decision panicked or returned
    /// something unwritable), the call's earlier ops are taken back out of the batch too, so
    /// an error answer always means the call changed nothing.
    async fn run(
        &mut self,
        conn: &mut SqliteConnection,
        ops: Vec<MachineOp>,
    ) -> Result<Result<Vec<OpOutcome>>> {
        let mut mark = Mark {
            history: self.history.len(),
            audit: self.audit.len(),
            next_seq: self.next_seq,
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
        self.next_seq = mark.next_seq;
        for (id, slot, was_dirty) in mark.saved {
            if !was_dirty {
                self.dirty.remove(&id);
            }
            self.machines.insert(id, slot);
        }
    }

    async fn run_op(
        &mut self,
        conn: &mut SqliteConnection,
        op: MachineOp,
        save: Option<&mut Vec<(String, Slot, bool)>>,
    ) -> Result<Result<OpOutcome>> {
        let MachineOp {
            machine,
            peers,
            with_history,
            decide,
            audit,
        } = op;
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
                if let Err(message) = check_change(&machine, &current, &change) {
                    tracing::error!(%machine, %message, "machine op returned an invalid change");
                    self.machines.insert(machine, Slot::Present(current));
                    return Ok(Err(Error::Corrupt(message)));
                }
                for entry in &mut change.history {
                    entry.seq = self.next_seq;
                    self.next_seq += 1;
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
        conn: &mut SqliteConnection,
        definitions: Vec<NewDefinition>,
        machines: Vec<Change>,
        audits: Vec<AuditEntry>,
    ) -> Result<Result<Applied>> {
        // Check everything that can be checked before writing anything.
        for change in &machines {
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
        }
        let mut stored = Vec::with_capacity(definitions.len());
        if !definitions.is_empty() {
            // Definitions are written at once (each version depends on the one before); a
            // savepoint takes them back if a later one fails, keeping the apply all or nothing
            // without failing the rest of the batch.
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
        let mut created = Vec::new();
        for mut change in machines {
            if !matches!(
                self.machines.get(&change.record.id),
                Some(Slot::Missing) | None
            ) {
                continue; // Already there: apply never overwrites a running machine.
            }
            for entry in &mut change.history {
                entry.seq = self.next_seq;
                self.next_seq += 1;
            }
            self.history.extend(change.history);
            self.dirty.insert(change.record.id.clone());
            self.machines.insert(
                change.record.id.clone(),
                Slot::Present(change.record.clone()),
            );
            created.push(change.record);
        }
        let changed = stored.iter().any(|(_, new)| *new) || !created.is_empty();
        for audit in audits {
            push_audit(
                &mut self.audit,
                Some(audit),
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
        conn: &mut SqliteConnection,
        token: TokenRecord,
        audit: Option<AuditEntry>,
    ) -> Result<Result<()>> {
        let inserted = sqlx::query(
            "INSERT INTO tokens (name, role, scope, hash, created_at_ms, created_by, revoked_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&token.name)
        .bind(&token.role)
        .bind(&token.scope)
        .bind(&token.hash)
        .bind(token.created_at_ms)
        .bind(&token.created_by)
        .bind(token.revoked_at_ms)
        .execute(&mut *conn)
        .await;
        match inserted {
            Ok(_) => {
                push_audit(&mut self.audit, audit, "ok");
                Ok(Ok(()))
            }
            // A failed statement leaves the rest of the transaction as it was.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                let message = if db.message().contains("tokens.hash") {
                    "another token already has this secret".to_string()
                } else {
                    format!("a token named `{}` already exists", token.name)
                };
                push_audit(&mut self.audit, audit, "conflict");
                Ok(Err(Error::Conflict(message)))
            }
            Err(error) => Err(db_error("create a token", error)),
        }
    }

    async fn revoke_token(
        &mut self,
        conn: &mut SqliteConnection,
        name: &str,
        at_ms: i64,
        audit: Option<AuditEntry>,
    ) -> Result<Result<bool>> {
        let result = sqlx::query(
            "UPDATE tokens SET revoked_at_ms = ?1 WHERE name = ?2 AND revoked_at_ms IS NULL",
        )
        .bind(at_ms)
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("revoke a token", e))?;
        let revoked = result.rows_affected() > 0;
        push_audit(
            &mut self.audit,
            audit,
            if revoked { "ok" } else { NOT_FOUND },
        );
        Ok(Ok(revoked))
    }

    /// Writes the batch's changed records, history, run rows and audit rows, each with as few
    /// multi-row statements as SQLite's parameter limit allows.
    async fn flush(&mut self, conn: &mut SqliteConnection) -> Result<()> {
        self.runs.flush(conn).await?;
        let records: Vec<&MachineRecord> = self
            .dirty
            .iter()
            .filter_map(|id| match self.machines.get(id) {
                Some(Slot::Present(record)) => Some(record),
                _ => None,
            })
            .collect();
        for chunk in records.chunks(SQLITE_MAX_VARIABLES / MACHINE_COLUMN_COUNT) {
            upsert_machines(conn, chunk).await?;
        }
        for chunk in self
            .history
            .chunks(SQLITE_MAX_VARIABLES / HISTORY_COLUMN_COUNT)
        {
            insert_history(conn, chunk).await?;
        }
        for chunk in self.audit.chunks(SQLITE_MAX_VARIABLES / AUDIT_COLUMN_COUNT) {
            insert_audit(conn, chunk).await?;
        }
        Ok(())
    }
}

async fn execute(conn: &mut SqliteConnection, sql: &str, what: &str) -> Result<()> {
    sqlx::query(sql)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error(what, e))?;
    Ok(())
}

/// Stores each definition whose digest differs from its latest version's, as the next
/// version. Reads its own writes, so two versions of one definition in one apply chain up.
async fn store_definitions(
    conn: &mut SqliteConnection,
    definitions: Vec<NewDefinition>,
) -> Result<Result<Vec<(DefinitionRecord, bool)>>> {
    let select = format!(
        "SELECT {DEFINITION_COLUMNS} FROM definitions WHERE kind = ?1 AND name = ?2 \
         ORDER BY version DESC LIMIT 1"
    );
    let mut stored = Vec::with_capacity(definitions.len());
    for new in definitions {
        let latest = sqlx::query(&select)
            .bind(&new.kind)
            .bind(&new.name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| db_error("read the latest definition version", e))?;
        let mut version = 1;
        if let Some(row) = latest {
            let digest: String = row
                .try_get("digest")
                .map_err(|e| db_error("read a definition digest", e))?;
            if digest == new.digest {
                match definition_from_row(&row) {
                    Ok(record) => stored.push((record, false)),
                    Err(error) => return Ok(Err(error)),
                }
                continue;
            }
            let latest_version: i64 = row
                .try_get("version")
                .map_err(|e| db_error("read a definition version", e))?;
            version = latest_version + 1;
        }
        let compiled = match serde_json::to_string(&new.compiled) {
            Ok(text) => text,
            Err(error) => {
                return Ok(Err(Error::Corrupt(format!(
                    "definition {} `{}` does not encode as JSON: {error}",
                    new.kind, new.name
                ))));
            }
        };
        sqlx::query(
            "INSERT INTO definitions \
             (kind, name, version, compiled, source, digest, created_at_ms, created_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&new.kind)
        .bind(&new.name)
        .bind(version)
        .bind(&compiled)
        .bind(&new.source)
        .bind(&new.digest)
        .bind(new.created_at_ms)
        .bind(&new.created_by)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("store a definition", e))?;
        stored.push((
            DefinitionRecord {
                kind: new.kind,
                name: new.name,
                version,
                compiled: new.compiled,
                source: new.source,
                digest: new.digest,
                created_at_ms: new.created_at_ms,
                created_by: new.created_by,
            },
            true,
        ));
    }
    Ok(Ok(stored))
}

fn encode_error(what: &str, error: serde_json::Error) -> Error {
    Error::Unavailable(format!("encode {what} as JSON: {error}"))
}

async fn upsert_machines(conn: &mut SqliteConnection, records: &[&MachineRecord]) -> Result<()> {
    let mut encoded = Vec::with_capacity(records.len());
    for record in records {
        let reporters = serde_json::to_string(&record.reporters)
            .map_err(|e| encode_error("machine reporters", e))?;
        let replay = match &record.replay {
            Some(replay) => {
                Some(serde_json::to_string(replay).map_err(|e| encode_error("machine replay", e))?)
            }
            None => None,
        };
        encoded.push((reporters, replay));
    }
    let sql = format!(
        "INSERT INTO machines ({MACHINE_COLUMNS}) VALUES {} \
         ON CONFLICT (id) DO UPDATE SET \
         definition = excluded.definition, grp = excluded.grp, state = excluded.state, \
         counter = excluded.counter, reporters = excluded.reporters, \
         entered_at_ms = excluded.entered_at_ms, timer_due_ms = excluded.timer_due_ms, \
         version = excluded.version, replay = excluded.replay, \
         updated_at_ms = excluded.updated_at_ms",
        values_placeholders(records.len(), MACHINE_COLUMN_COUNT)
    );
    let mut query = sqlx::query(&sql);
    for (record, (reporters, replay)) in records.iter().zip(&encoded) {
        query = query
            .bind(&record.id)
            .bind(&record.definition)
            .bind(&record.group)
            .bind(&record.state)
            .bind(i64::from(record.counter))
            .bind(reporters)
            .bind(record.entered_at_ms)
            .bind(record.timer_due_ms)
            .bind(record.version)
            .bind(replay)
            .bind(record.created_at_ms)
            .bind(record.updated_at_ms);
    }
    query
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("write machines", e))?;
    Ok(())
}

async fn insert_history(conn: &mut SqliteConnection, entries: &[HistoryEntry]) -> Result<()> {
    let sql = format!(
        "INSERT INTO history ({HISTORY_COLUMNS}) VALUES {}",
        values_placeholders(entries.len(), HISTORY_COLUMN_COUNT)
    );
    let mut query = sqlx::query(&sql);
    for entry in entries {
        query = query
            .bind(entry.seq)
            .bind(&entry.machine)
            .bind(entry.version)
            .bind(entry.at_ms)
            .bind(history_kind_name(entry.kind))
            .bind(&entry.from_state)
            .bind(&entry.to_state)
            .bind(&entry.event)
            .bind(i64::from(entry.counter))
            .bind(&entry.actor)
            .bind(&entry.reporter);
    }
    query
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("write history", e))?;
    Ok(())
}

async fn insert_audit(conn: &mut SqliteConnection, entries: &[AuditEntry]) -> Result<()> {
    let mut details = Vec::with_capacity(entries.len());
    for entry in entries {
        details.push(
            serde_json::to_string(&entry.detail).map_err(|e| encode_error("audit detail", e))?,
        );
    }
    let sql = format!(
        "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES {}",
        values_placeholders(entries.len(), AUDIT_COLUMN_COUNT)
    );
    let mut query = sqlx::query(&sql);
    for (entry, detail) in entries.iter().zip(&details) {
        query = query
            .bind(entry.at_ms)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.outcome)
            .bind(detail);
    }
    query
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("write the audit log", e))?;
    Ok(())
}
