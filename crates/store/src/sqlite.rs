//! The embedded store: one SQLite file, written by one task, read by a small pool.
//!
//! SQLite runs in write-ahead-log mode so readers never wait for the writer, with
//! `synchronous=FULL` so a commit is on disk before it is acknowledged: an acknowledged write
//! survives the process being killed and the machine losing power. All writes go through
//! [`writer`], which commits concurrent requests together; see its documentation for how
//! batching keeps decisions free of lost updates.

mod codec;
mod drain_tests;
mod leases;
mod maintenance;
mod runs;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use levee_engine::{Change, HistoryEntry, MachineRecord};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{mpsc, oneshot};

use self::codec::{
    AUDIT_COLUMNS, DEFINITION_COLUMNS, HISTORY_COLUMNS, MACHINE_COLUMNS, TOKEN_COLUMNS,
    audit_from_row, db_error, definition_from_row, history_from_row, is_not_a_database,
    machine_from_row, token_from_row,
};
use self::runs::{
    RUN_SUMMARY_COLUMNS, duration_from_row, journal_from_row, load_run, output_from_row,
    run_summary_from_row, setting_from_text,
};
use self::writer::Writer;
pub use crate::queue::{GROUP_COMMIT_MAX_OPS, WRITE_QUEUE_CAPACITY};
use crate::queue::{Request, Write};
use crate::rows::page_limit;
use crate::{
    Applied, AuditEntry, AuditFilter, AuditRecord, CreatedRun, DefinitionRecord, Error,
    JournalRecord, Lease, MAX_PAGE_ROWS, MachineFilter, MachineOp, NewDefinition, NewRun,
    OpOutcome, ReplicaRecord, Result, RunCommit, RunFilter, RunOwner, RunSummary, Store, StoredRun,
    TaskDuration, TaskOutput, TokenRecord,
};

/// How long a statement waits for a lock held by another connection (a reader during a
/// checkpoint, or another process on the same file) before giving up with `Unavailable`.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Connections serving reads. WAL lets them all read while the writer writes; more than a few
/// only add memory on a 2-core machine, since reads are short and CPU-bound.
pub const READ_POOL_CONNECTIONS: u32 = 4;

/// How long a read waits for a free pooled connection before failing with `Unavailable`.
pub const READ_ACQUIRE_TIMEOUT_MS: u64 = 5_000;

/// Prepared statements kept by the writer connection. Multi-row inserts have one statement
/// text per row count, so this is sized to keep the common batch sizes prepared.
pub const WRITER_STATEMENT_CACHE_STATEMENTS: usize = 512;

/// Prepared statements kept by each read connection.
pub const READER_STATEMENT_CACHE_STATEMENTS: usize = 64;

/// The schema, embedded in the binary: a deployment is one file, and opening a database brings
/// it up to date.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// A [`Store`] on a SQLite file. Cheap to clone: clones share the writer and the read pool.
/// The writer stops when the last clone is dropped, or at [`SqliteStore::close`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writes: mpsc::Sender<Request>,
    read: SqlitePool,
    /// One connection for lease and heartbeat statements, the only writes that bypass the
    /// writer (see `leases.rs` for why that is safe).
    lease: SqlitePool,
    path: PathBuf,
    /// Notices of this store's commits, broadcast in process (one process per file).
    notices: tokio::sync::broadcast::Sender<crate::Notice>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Options of the one connection that writes. Every setting that matters for durability is
/// spelled out rather than left to a default that could change.
fn writer_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL syncs the WAL at every commit: a commit survives power loss, not only a crash.
        .synchronous(SqliteSynchronous::Full)
        // Other connections (the read pool, another process) must be able to read the file.
        .locking_mode(SqliteLockingMode::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        // On macOS a plain fsync does not flush the drive's cache; elsewhere this is ignored.
        .pragma("fullfsync", "ON")
        .statement_cache_capacity(WRITER_STATEMENT_CACHE_STATEMENTS)
}

/// Options of the lease connection: the writer's durability settings, a small cache.
fn lease_options(path: &Path) -> SqliteConnectOptions {
    writer_options(path)
        .create_if_missing(false)
        .statement_cache_capacity(READER_STATEMENT_CACHE_STATEMENTS)
}

/// Options of the read connections: read-only, so no write can bypass the writer.
fn reader_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .read_only(true)
        .foreign_keys(true)
        .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .statement_cache_capacity(READER_STATEMENT_CACHE_STATEMENTS)
}

/// The file path in a `sqlite://PATH` URL: `sqlite://levee.db` is relative to the working
/// directory, `sqlite:///var/lib/levee.db` is absolute. `sqlite:PATH` is accepted too.
fn path_from_url(url: &str) -> Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "`{url}` is not a SQLite URL: expected sqlite://PATH"
            ))
        })?;
    if rest.contains('?') {
        return Err(Error::Unavailable(format!(
            "`{url}`: SQLite URL options are not supported; the store sets its own"
        )));
    }
    check_path(Path::new(rest))?;
    Ok(PathBuf::from(rest))
}

fn check_path(path: &Path) -> Result<()> {
    let text = path.to_string_lossy();
    if text.is_empty() {
        return Err(Error::Unavailable(
            "the SQLite database path is empty".to_string(),
        ));
    }
    if text == ":memory:" || text.starts_with("file:") {
        return Err(Error::Unavailable(format!(
            "`{text}`: the store needs a plain file path: its writer and readers share the file, \
             and commits must survive a restart"
        )));
    }
    Ok(())
}

fn open_error(path: &Path, error: sqlx::Error) -> Error {
    if is_not_a_database(&error) {
        Error::Corrupt(format!(
            "cannot open {}: the file is not a SQLite database, or is damaged ({error})",
            path.display()
        ))
    } else {
        db_error(
            &format!("cannot open SQLite database {}", path.display()),
            error,
        )
    }
}

fn migrate_error(path: &Path, error: MigrateError) -> Error {
    match error {
        MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => {
            open_error(path, error)
        }
        MigrateError::VersionMissing(version) => Error::Corrupt(format!(
            "{}: the database has schema migration {version}, which this build does not know; \
             it was written by a newer levee",
            path.display()
        )),
        other => Error::Corrupt(format!(
            "{}: schema migration failed: {other}",
            path.display()
        )),
    }
}

/// Makes a newly created database file's directory entry durable, so power loss right after
/// the first commit cannot lose the whole file. (SQLite syncs the directory for its journal
/// files, not for the database file itself.)
async fn sync_parent_directory(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let result = tokio::task::spawn_blocking(move || {
        std::fs::File::open(&parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| (parent, e))
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err((parent, error))) => Err(Error::Unavailable(format!(
            "sync directory {} after creating {}: {error}",
            parent.display(),
            path.display()
        ))),
        Err(error) => Err(Error::Unavailable(format!(
            "sync the database directory: {error}"
        ))),
    }
}

impl SqliteStore {
    /// Opens (creating it if needed) the database at `path` and brings its schema up to date.
    /// Must be called inside a Tokio runtime: the writer task is spawned on it.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        check_path(path)?;
        let existed = tokio::fs::try_exists(path).await.unwrap_or(false);
        let options = writer_options(path);
        let mut conn = options.connect().await.map_err(|e| open_error(path, e))?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| migrate_error(path, e))?;
        if !existed {
            sync_parent_directory(path).await?;
        }
        let read = SqlitePoolOptions::new()
            .max_connections(READ_POOL_CONNECTIONS)
            .acquire_timeout(Duration::from_millis(READ_ACQUIRE_TIMEOUT_MS))
            // A local file does not drop connections; a ping per read would only add latency.
            .test_before_acquire(false)
            .connect_with(reader_options(path))
            .await
            .map_err(|e| open_error(path, e))?;
        let lease = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(READ_ACQUIRE_TIMEOUT_MS))
            .test_before_acquire(false)
            .connect_with(lease_options(path))
            .await
            .map_err(|e| open_error(path, e))?;
        let (writes, queue) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let notices = crate::notices::channel();
        let writer = Writer::new(
            conn,
            options,
            queue,
            path.display().to_string(),
            notices.clone(),
        );
        tokio::spawn(writer.run());
        tracing::debug!(database = %path.display(), "SQLite store open");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writes,
                read,
                lease,
                path: path.to_path_buf(),
                notices,
            }),
        })
    }

    /// Opens the database a `sqlite://PATH` URL names (`sqlite://relative.db`,
    /// `sqlite:///absolute/path.db`).
    pub async fn open_url(url: &str) -> Result<SqliteStore> {
        SqliteStore::open(&path_from_url(url)?).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commits the writes already queued, closes the writer connection and the read pool.
    /// Writes and reads afterwards fail with `Unavailable`; closing twice is harmless.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self
            .inner
            .writes
            .send(Request::Close { done })
            .await
            .is_ok()
        {
            // An error means the writer already stopped, which is what was asked for.
            drop(closed.await);
        }
        self.inner.read.close().await;
        self.inner.lease.close().await;
    }

    async fn write<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Write) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writes
            .send(Request::Write(make(reply)))
            .await
            .map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    fn closed(&self) -> Error {
        Error::Unavailable(format!(
            "the store for {} is closed",
            self.inner.path.display()
        ))
    }

    fn read_error(&self, what: &str, error: sqlx::Error) -> Error {
        db_error(
            &format!("{what} (from {})", self.inner.path.display()),
            error,
        )
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .fetch_one(&self.inner.read)
            .await
            .map_err(|e| self.read_error("ping the read pool", e))?;
        self.write(|reply| Write::Ping { reply }).await
    }

    async fn apply(
        &self,
        definitions: Vec<NewDefinition>,
        machines: Vec<Change>,
        audits: Vec<AuditEntry>,
    ) -> Result<Applied> {
        self.write(|reply| Write::Apply {
            definitions,
            machines,
            audits,
            reply,
        })
        .await
    }

    async fn definition(&self, kind: &str, name: &str) -> Result<Option<DefinitionRecord>> {
        let sql = format!(
            "SELECT {DEFINITION_COLUMNS} FROM definitions WHERE kind = ?1 AND name = ?2 \
             ORDER BY version DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(kind)
            .bind(name)
            .fetch_optional(&self.inner.read)
            .await
            .map_err(|e| self.read_error("read a definition", e))?;
        row.as_ref().map(definition_from_row).transpose()
    }

    async fn definitions(&self, kind: Option<&str>) -> Result<Vec<DefinitionRecord>> {
        let filter = if kind.is_some() {
            "d.kind = ?1 AND "
        } else {
            ""
        };
        let sql = format!(
            "SELECT {DEFINITION_COLUMNS} FROM definitions d WHERE {filter}d.version = \
             (SELECT MAX(version) FROM definitions l WHERE l.kind = d.kind AND l.name = d.name) \
             ORDER BY d.name, d.kind"
        );
        let mut query = sqlx::query(&sql);
        if let Some(kind) = kind {
            query = query.bind(kind);
        }
        let rows = query
            .fetch_all(&self.inner.read)
            .await
            .map_err(|e| self.read_error("list definitions", e))?;
        rows.iter().map(definition_from_row).collect()
    }

    async fn machine(&self, id: &str) -> Result<Option<MachineRecord>> {
        let sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = ?1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.inner.read)
            .await
            .map_err(|e| self.read_error("read a machine", e))?;
        row.as_ref().map(machine_from_row).transpose()
    }

    async fn machines(&self, filter: &MachineFilter) -> Result<Vec<MachineRecord>> {
        // Only the conditions in use are written, so SQLite can pick the matching index.
        let mut sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE 1 = 1");
        if filter.definition.is_some() {
            sql.push_str(" AND definition = ?");
        }
        if filter.group.is_some() {
            sql.push_str(" AND grp = ?");
        }
        if filter.after_id.is_some() {
            sql.push_str(" AND id > ?");
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        let mut query = sqlx::query(&sql);
        for value in [&filter.definition, &filter.group, &filter.after_id]
            .into_iter()
            .flatten()
        {
            query = query.bind(value);
        }
        let rows = query
            .bind(page_limit(filter.limit))
            .fetch_all(&self.inner.read)
            .await
            .map_err(|e| self.read_error("list machines", e))?;
        rows.iter().map(machine_from_row).collect()
    }

    async fn run(&self, ops: Vec<MachineOp>) -> Result<Vec<OpOutcome>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| Write::Run { ops, reply }).await
    }

    async fn history(
        &self,
        machine: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>> {
        let sql = format!(
            "SELECT {HISTORY_COLUMNS} FROM history WHERE machine = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3"
        );
        let rows = sqlx::query(&sql)
            .bind(machine)
            .bind(after_seq)
            .bind(page_limit(limit))
            .fetch_all(&self.inner.read)
            .await
            .map_err(|e| self.read_error("read history", e))?;
        rows.iter().map(history_from_row).collect()
    }

    async fn due_timers(&self, now_ms: i64, limit: u32) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM machines WHERE timer_due_ms <= ?1 ORDER BY timer_due_ms, id LIMIT ?2",
        )
        .bind(now_ms)
        .bind(page_limit(limit))
        .fetch_all(&self.inner.read)
        .await
        .map_err(|e| self.read_error("find due timers", e))?;
        rows.iter()
            .map(|row| {
                row.try_get("id")
                    .map_err(|e| self.read_error("find due timers", e))
            })
            .collect()
    }

    async fn audit(&self, entry: AuditEntry) -> Result<()> {
        self.write(|reply| Write::Audit { entry, reply }).await
    }

    async fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut sql = format!("SELECT seq, {AUDIT_COLUMNS} FROM audit WHERE 1 = 1");
        if filter.after_seq.is_some() {
            sql.push_str(" AND seq > ?");
        }
        if filter.actor.is_some() {
            sql.push_str(" AND actor = ?");
        }
        if filter.target.is_some() {
            sql.push_str(" AND target = ?");
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        let mut query = sqlx::query(&sql);
        if let Some(after_seq) = filter.after_seq {
            query = query.bind(after_seq);
        }
        for value in [&filter.actor, &filter.target].into_iter().flatten() {
            query = query.bind(value);
        }
        let rows = query
            .bind(page_limit(filter.limit))
            .fetch_all(&self.inner.read)
            .await
            .map_err(|e| self.read_error("read the audit log", e))?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn create_token(&self, token: TokenRecord, audit: Option<AuditEntry>) -> Result<()> {
        self.write(|reply| Write::CreateToken {
            token,
            audit,
            reply,
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1");
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.inner.read)
            .await
            .map_err(|e| self.read_error("look up a token", e))?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.inner.read)
            .await
            .map_err(|e| self.read_error("list tokens", e))?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(
        &self,
        name: &str,
        at_ms: i64,
        audit: Option<AuditEntry>,
    ) -> Result<bool> {
        let name = name.to_string();
        self.write(|reply| Write::RevokeToken {
            name,
            at_ms,
            audit,
            reply,
        })
        .await
    }

    async fn create_run(&self, run: NewRun, audit: Option<AuditEntry>) -> Result<CreatedRun> {
        let run = Box::new(run);
        self.write(|reply| Write::CreateRun { run, audit, reply })
            .await
    }

    async fn load_run(&self, id: &str) -> Result<Option<StoredRun>> {
        let mut conn = self
            .inner
            .read
            .acquire()
            .await
            .map_err(|e| self.read_error("read a run", e))?;
        load_run(&mut conn, id).await
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>> {
        // Only the conditions in use are written, so SQLite can pick the matching index.
        let mut sql = format!("SELECT {RUN_SUMMARY_COLUMNS} FROM runs WHERE 1 = 1");
        let statuses = if filter.statuses.is_empty() {
            None
        } else {
            sql.push_str(" AND status IN (SELECT value FROM json_each(?))");
            let names: Vec<&str> = filter.statuses.iter().map(|s| s.name()).collect();
            Some(
                serde_json::to_string(&names)
                    .map_err(|e| Error::Unavailable(format!("encode run statuses: {e}")))?,
            )
        };
        if filter.runbook.is_some() {
            sql.push_str(" AND runbook = ?");
        }
        // An unknown cursor run matches nothing, so its page is empty.
        if filter.before_id.is_some() {
            sql.push_str(
                " AND (created_at_ms, id) < (SELECT created_at_ms, id FROM runs WHERE id = ?)",
            );
        }
        sql.push_str(" ORDER BY created_at_ms DESC, id DESC LIMIT ?");
        let mut query = sqlx::query(&sql);
        for value in [&statuses, &filter.runbook, &filter.before_id]
            .into_iter()
            .flatten()
        {
            query = query.bind(value);
        }
        let rows = query
            .bind(page_limit(filter.limit))
            .fetch_all(&self.inner.read)
            .await
            .map_err(|e| self.read_error("list runs", e))?;
        rows.iter().map(run_summary_from_row).collect()
    }

    async fn commit_run(&self, commit: RunCommit) -> Result<()> {
        let commit = Box::new(commit);
        self.write(|reply| Write::CommitRun { commit, reply }).await
    }

    async fn run_journal(
        &self,
        run_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<JournalRecord>> {
        let rows = sqlx::query(
            "SELECT seq, entry FROM run_journal WHERE run_id = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )
        .bind(run_id)
        .bind(after_seq)
        .bind(page_limit(limit))
        .fetch_all(&self.inner.read)
        .await
        .map_err(|e| self.read_error("read a run journal", e))?;
        rows.iter().map(journal_from_row).collect()
    }

    async fn task_outputs(&self, run_id: &str, task: &str) -> Result<Vec<TaskOutput>> {
        let rows = sqlx::query(
            "SELECT task, attempt, at_ms, outcome, text, cut_bytes, data FROM task_outputs \
             WHERE run_id = ?1 AND task = ?2 ORDER BY attempt, seq",
        )
        .bind(run_id)
        .bind(task)
        .fetch_all(&self.inner.read)
        .await
        .map_err(|e| self.read_error("read task outputs", e))?;
        rows.iter().map(output_from_row).collect()
    }

    async fn task_durations(&self, runbook: &str, per_task: u32) -> Result<Vec<TaskDuration>> {
        if per_task == 0 {
            return Ok(Vec::new());
        }
        // Succeeded rows of the runbook's runs, numbered newest first within each task id.
        let rows = sqlx::query(
            "SELECT task_id, run_id, duration_ms, finished_at_ms FROM ( \
                 SELECT t.task_id, t.run_id, t.finished_at_ms, \
                        MAX(t.finished_at_ms - t.started_at_ms, 0) AS duration_ms, \
                        ROW_NUMBER() OVER (PARTITION BY t.task_id \
                            ORDER BY t.finished_at_ms DESC, t.run_id DESC) AS newest \
                 FROM runs r JOIN run_tasks t ON t.run_id = r.id \
                 WHERE r.runbook = ?1 AND t.status = 'succeeded' \
                   AND t.started_at_ms IS NOT NULL AND t.finished_at_ms IS NOT NULL \
             ) WHERE newest <= ?2 \
             ORDER BY task_id, finished_at_ms DESC, run_id DESC",
        )
        .bind(runbook)
        .bind(i64::from(per_task.min(MAX_PAGE_ROWS)))
        .fetch_all(&self.inner.read)
        .await
        .map_err(|e| self.read_error("read past task durations", e))?;
        rows.iter().map(duration_from_row).collect()
    }

    async fn setting(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let text: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.inner.read)
            .await
            .map_err(|e| self.read_error("read a setting", e))?;
        text.map(|text| setting_from_text(key, &text)).transpose()
    }

    async fn set_setting(
        &self,
        key: &str,
        value: serde_json::Value,
        audit: Option<AuditEntry>,
    ) -> Result<()> {
        let key = key.to_string();
        self.write(|reply| Write::SetSetting {
            key,
            value,
            audit,
            reply,
        })
        .await
    }

    async fn claim_runs(
        &self,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        leases::claim_runs(&self.inner.lease, owner, now_ms, ttl_ms, limit).await
    }

    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>> {
        leases::claim_run(&self.inner.lease, run_id, owner, now_ms, ttl_ms).await
    }

    async fn renew_leases(
        &self,
        owner: &str,
        held: &[Lease],
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Vec<Lease>> {
        leases::renew_leases(&self.inner.lease, owner, held, now_ms, ttl_ms).await
    }

    async fn release_leases(&self, owner: &str, held: &[Lease]) -> Result<u64> {
        let released = leases::release_leases(&self.inner.lease, owner, held).await?;
        if released > 0 {
            // No receiver is not an error: nobody is listening.
            let _ = self.inner.notices.send(crate::Notice::RunsClaimable);
        }
        Ok(released)
    }

    async fn run_owner(&self, run_id: &str) -> Result<Option<RunOwner>> {
        leases::run_owner(&self.inner.read, run_id).await
    }

    async fn heartbeat(
        &self,
        id: &str,
        address: &str,
        started_at_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        leases::heartbeat(&self.inner.lease, id, address, started_at_ms, now_ms).await
    }

    async fn replicas(&self, seen_since_ms: i64) -> Result<Vec<ReplicaRecord>> {
        leases::replicas(&self.inner.read, seen_since_ms).await
    }

    async fn claim_drain_test_slot(&self, execution: &crate::DrainTestExecution) -> Result<bool> {
        drain_tests::claim(&self.inner.lease, execution).await
    }

    async fn update_drain_test_execution(
        &self,
        execution: &crate::DrainTestExecution,
    ) -> Result<()> {
        drain_tests::update(&self.inner.lease, execution).await
    }

    async fn drain_test_execution(&self, id: &str) -> Result<Option<crate::DrainTestExecution>> {
        drain_tests::get(&self.inner.read, id).await
    }

    async fn drain_test_executions(
        &self,
        filter: &crate::DrainTestFilter,
    ) -> Result<Vec<crate::DrainTestExecution>> {
        drain_tests::list(&self.inner.read, filter).await
    }

    async fn schedule_maintenance(
        &self,
        maintenance: crate::MaintenanceRecord,
        admit: crate::Admit,
        audit: Option<AuditEntry>,
    ) -> Result<crate::Scheduled> {
        self.write(|reply| Write::ScheduleMaintenance {
            maintenance: Box::new(maintenance),
            admit,
            audit,
            reply,
        })
        .await
    }

    async fn update_maintenance(
        &self,
        maintenance: crate::MaintenanceRecord,
        audit: Option<AuditEntry>,
    ) -> Result<()> {
        self.write(|reply| Write::UpdateMaintenance {
            maintenance: Box::new(maintenance),
            audit,
            reply,
        })
        .await
    }

    async fn maintenance(&self, id: &str) -> Result<Option<crate::MaintenanceRecord>> {
        maintenance::get(&self.inner.read, id).await
    }

    async fn maintenances(
        &self,
        filter: &crate::MaintenanceFilter,
    ) -> Result<Vec<crate::MaintenanceRecord>> {
        maintenance::list(&self.inner.read, filter).await
    }

    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    fn notices(&self) -> tokio::sync::broadcast::Receiver<crate::Notice> {
        self.inner.notices.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_relative_and_absolute_paths() {
        assert_eq!(
            path_from_url("sqlite://levee.db").unwrap(),
            PathBuf::from("levee.db")
        );
        assert_eq!(
            path_from_url("sqlite://data/levee.db").unwrap(),
            PathBuf::from("data/levee.db")
        );
        assert_eq!(
            path_from_url("sqlite:///var/lib/levee/levee.db").unwrap(),
            PathBuf::from("/var/lib/levee/levee.db")
        );
        assert_eq!(
            path_from_url("sqlite:levee.db").unwrap(),
            PathBuf::from("levee.db")
        );
    }

    #[test]
    fn urls_that_are_not_plain_sqlite_files_are_refused() {
        for url in [
            "postgres://host/db",
            "sqlite://",
            "sqlite::memory:",
            "sqlite://x.db?mode=ro",
        ] {
            let error = path_from_url(url).unwrap_err();
            assert!(matches!(error, Error::Unavailable(_)), "{url}: {error}");
        }
    }
}
