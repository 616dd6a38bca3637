//! The shared store: a PostgreSQL database that several Levee replicas may use at once.
//!
//! Reads go straight to a connection pool. Writes go through [`writer`], one task per store that
//! commits concurrent requests together, like the SQLite store's; row locks taken in one order
//! by every replica keep two replicas from deciding on the same old state, and a write is
//! acknowledged only once PostgreSQL's commit is durable (never with `synchronous_commit =
//! off`). See the writer's documentation for how a batch locks, decides, writes and retries.

mod codec;
mod drain_tests;
mod leases;
mod maintenance;
mod outbox;
mod runs;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use levee_engine::{Change, HistoryEntry, MachineRecord};
use sqlx::Row;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};

use self::codec::{
    AUDIT_COLUMNS, DEFINITION_COLUMNS, HISTORY_COLUMNS, MACHINE_COLUMNS, TOKEN_COLUMNS,
    audit_from_row, db_error, definition_from_row, history_from_row, machine_from_row,
    token_from_row,
};
pub use self::outbox::{NOTICE_SEND_ATTEMPTS, NOTICE_SEND_BACKOFF_MS, NOTICE_SEND_INTERVAL_MS};
use self::runs::{
    RUN_SUMMARY_COLUMNS, duration_from_row, journal_from_row, output_from_row, read_run,
    run_summary_from_row, setting_from_text,
};
use self::writer::Writer;
pub use self::writer::{
    BATCH_ATTEMPTS, BATCH_RETRY_BACKOFF_MS, DEFINITION_VERSION_ATTEMPTS, GROUP_COMMIT_LINGER_US,
    WRITER_CONNECTION_HOLD_MAX_MS, WRITER_IDLE_RELEASE_MS,
};
pub use crate::queue::{GROUP_COMMIT_MAX_OPS, WRITE_QUEUE_CAPACITY};
use crate::queue::{Request, Write};
use crate::rows::page_limit;
use crate::{
    Applied, AuditEntry, AuditFilter, AuditRecord, CreatedRun, DefinitionRecord, Error,
    JournalRecord, Lease, MAX_PAGE_ROWS, MachineFilter, MachineOp, NewDefinition, NewRun,
    OpOutcome, ReplicaRecord, Result, RunCommit, RunFilter, RunOwner, RunSummary, Store, StoredRun,
    TaskDuration, TaskOutput, TokenRecord,
};

/// Most connections one store opens: the writer uses one at a time, reads the rest. Several
/// replicas share the server's `max_connections` (100 by default), and on a 2-core machine
/// more concurrent reads than this only queue inside PostgreSQL instead of in the pool.
pub const MAX_CONNECTIONS: u32 = 8;

/// How long a read or a batch waits for a free pooled connection (or a new one to open)
/// before failing with `Unavailable`.
pub const ACQUIRE_TIMEOUT_MS: u64 = 5_000;

/// Longest any one statement may run before the server cancels it (`statement_timeout`). The
/// largest statements write a 10,000-task run, a few megabytes; this is far above that, and
/// bounds how long a batch can wait for a lock another replica holds.
pub const STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// Longest a session may sit idle inside a transaction before the server ends it
/// (`idle_in_transaction_session_timeout`): a replica that hangs mid-batch must not hold its
/// row locks, and with them every other replica's writes, forever.
pub const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 60_000;

/// An idle pooled connection is closed after this long, so a quiet replica gives its server
/// connections back.
pub const IDLE_TIMEOUT_MS: u64 = 300_000;

/// A connection is replaced after this long, so server-side memory a long-lived session
/// accumulates is returned now and then.
pub const MAX_LIFETIME_MS: u64 = 1_800_000;

/// The schema, embedded in the binary. `sqlx` runs migrations under an advisory lock, so
/// replicas starting together apply each one once.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// A [`Store`] on a PostgreSQL database. Cheap to clone: clones share the writer and the pool.
/// The writer stops when the last clone is dropped, or at [`PostgresStore::close`].
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    writes: mpsc::Sender<Request>,
    pool: PgPool,
    /// `postgres://user@host:port/database`, for messages: never the password.
    label: String,
    /// Notices from every replica, broadcast by the listener task.
    notices: tokio::sync::broadcast::Sender<crate::Notice>,
    /// The listener, started by the first call to `notices()`: a store nobody asks for
    /// notices holds no listening connection.
    listener: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get() {
            listener.abort();
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.inner.label)
            .finish_non_exhaustive()
    }
}

/// The connection options of `url`, with the session settings the store relies on set
/// explicitly rather than left to the server's configuration.
fn connect_options(url: &str) -> Result<PgConnectOptions> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::Unavailable(format!(
            "not a PostgreSQL URL: expected postgres://USER@HOST:PORT/DATABASE, got `{}`",
            redact_url(url)
        )));
    }
    let options: PgConnectOptions = url.parse().map_err(|e| {
        Error::Unavailable(format!(
            "`{}` is not a valid PostgreSQL URL: {e}",
            redact_url(url)
        ))
    })?;
    Ok(options.application_name("levee").options([
        ("statement_timeout", STATEMENT_TIMEOUT_MS.to_string()),
        (
            "idle_in_transaction_session_timeout",
            IDLE_IN_TRANSACTION_TIMEOUT_MS.to_string(),
        ),
    ]))
}

/// `url` without its password (in the authority or as a `password=` parameter), for
/// messages and logs. Any other URL comes back as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<&str> = query
                .split('&')
                .map(|param| {
                    if param.starts_with("password=") {
                        "password=***"
                    } else {
                        param
                    }
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// A write is acknowledged only once its commit is durable: a server (or role, or database)
/// configured with `synchronous_commit = off` would acknowledge commits it can still lose, so
/// the store's sessions turn it back on. Any other setting (`local`, or waiting for standbys)
/// already flushes the commit locally and is left as the administrator chose.
async fn require_durable_commits(conn: &mut PgConnection) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('synchronous_commit', 'on', false) \
         WHERE current_setting('synchronous_commit') = 'off'",
    )
    .execute(conn)
    .await?;
    Ok(())
}

fn label(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

fn migrate_error(label: &str, error: MigrateError) -> Error {
    match error {
        MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => {
            db_error(&format!("migrate {label}"), error)
        }
        MigrateError::VersionMissing(version) => Error::Corrupt(format!(
            "{label}: the database has schema migration {version}, which this build does not \
             know; it was written by a newer levee"
        )),
        other => Error::Corrupt(format!("{label}: schema migration failed: {other}")),
    }
}

impl PostgresStore {
    /// Connects to the database a `postgres://` URL names and brings its schema up to date.
    /// Must be called inside a Tokio runtime: the writer task is spawned on it.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let options = connect_options(url)?;
        let label = label(&options);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(Duration::from_millis(ACQUIRE_TIMEOUT_MS))
            .idle_timeout(Duration::from_millis(IDLE_TIMEOUT_MS))
            .max_lifetime(Duration::from_millis(MAX_LIFETIME_MS))
            // A connection the server ended (a restart, an administrator) is found out and
            // replaced when it is taken, not when a statement fails on it.
            .test_before_acquire(true)
            .after_connect(|conn, _| Box::pin(async move { require_durable_commits(conn).await }))
            .connect_with(options)
            .await
            .map_err(|e| db_error(&format!("connect to {label}"), e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| migrate_error(&label, e))?;
        let (writes, queue) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let outbox = outbox::Outbox::start(pool.clone(), label.clone());
        tokio::spawn(Writer::new(pool.clone(), queue, label.clone(), outbox).run());
        tracing::debug!(database = %label, "PostgreSQL store open");
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                writes,
                pool,
                label,
                notices: crate::notices::channel(),
                listener: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The database, as `postgres://user@host:port/database` (never with a password).
    pub fn database(&self) -> &str {
        &self.inner.label
    }

    /// Commits the writes already queued, then closes the pool. Writes and reads afterwards
    /// fail with `Unavailable`; closing twice is harmless.
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
        if let Some(listener) = self.inner.listener.get() {
            listener.abort();
        }
        self.inner.pool.close().await;
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
        Error::Unavailable(format!("the store for {} is closed", self.inner.label))
    }

    fn read_error(&self, what: &str, error: sqlx::Error) -> Error {
        db_error(&format!("{what} (from {})", self.inner.label), error)
    }
}

/// `WHERE` conditions with numbered parameters, for the listings whose filters are optional:
/// only the conditions in use are written, so the planner can pick the matching index.
struct Conditions {
    sql: String,
    next: usize,
}

impl Conditions {
    fn new(select: String) -> Conditions {
        Conditions {
            sql: format!("{select} WHERE TRUE"),
            next: 1,
        }
    }

    /// Adds ` AND {left}$n{right}` for the next parameter `$n`.
    fn and(&mut self, left: &str, right: &str) {
        self.sql
            .push_str(&format!(" AND {left}${}{right}", self.next));
        self.next += 1;
    }

    /// The statement, ending with `{tail}` and the next parameter as the limit.
    fn finish(mut self, tail: &str) -> String {
        self.sql.push_str(&format!(" {tail} LIMIT ${}", self.next));
        self.sql
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.read_error("ping the pool", e))?;
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
            "SELECT {DEFINITION_COLUMNS} FROM definitions WHERE kind = $1 AND name = $2 \
             ORDER BY version DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(kind)
            .bind(name)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.read_error("read a definition", e))?;
        row.as_ref().map(definition_from_row).transpose()
    }

    async fn definitions(&self, kind: Option<&str>) -> Result<Vec<DefinitionRecord>> {
        let filter = if kind.is_some() { "kind = $1" } else { "TRUE" };
        let sql = format!(
            "SELECT DISTINCT ON (name, kind) {DEFINITION_COLUMNS} FROM definitions \
             WHERE {filter} ORDER BY name, kind, version DESC"
        );
        let mut query = sqlx::query(&sql);
        if let Some(kind) = kind {
            query = query.bind(kind);
        }
        let rows = query
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.read_error("list definitions", e))?;
        rows.iter().map(definition_from_row).collect()
    }

    async fn machine(&self, id: &str) -> Result<Option<MachineRecord>> {
        let sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.read_error("read a machine", e))?;
        row.as_ref().map(machine_from_row).transpose()
    }

    async fn machines(&self, filter: &MachineFilter) -> Result<Vec<MachineRecord>> {
        let mut conditions = Conditions::new(format!("SELECT {MACHINE_COLUMNS} FROM machines"));
        if filter.definition.is_some() {
            conditions.and("definition = ", "");
        }
        if filter.group.is_some() {
            conditions.and("grp = ", "");
        }
        if filter.after_id.is_some() {
            conditions.and("id > ", "");
        }
        let sql = conditions.finish("ORDER BY id");
        let mut query = sqlx::query(&sql);
        for value in [&filter.definition, &filter.group, &filter.after_id]
            .into_iter()
            .flatten()
        {
            query = query.bind(value);
        }
        let rows = query
            .bind(page_limit(filter.limit))
            .fetch_all(&self.inner.pool)
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
            "SELECT {HISTORY_COLUMNS} FROM history WHERE machine = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(machine)
            .bind(after_seq)
            .bind(page_limit(limit))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.read_error("read history", e))?;
        rows.iter().map(history_from_row).collect()
    }

    async fn due_timers(&self, now_ms: i64, limit: u32) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM machines WHERE timer_due_ms <= $1 ORDER BY timer_due_ms, id LIMIT $2",
        )
        .bind(now_ms)
        .bind(page_limit(limit))
        .fetch_all(&self.inner.pool)
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
        let mut conditions = Conditions::new(format!("SELECT seq, {AUDIT_COLUMNS} FROM audit"));
        if filter.after_seq.is_some() {
            conditions.and("seq > ", "");
        }
        if filter.actor.is_some() {
            conditions.and("actor = ", "");
        }
        if filter.target.is_some() {
            conditions.and("target = ", "");
        }
        let sql = conditions.finish("ORDER BY seq");
        let mut query = sqlx::query(&sql);
        if let Some(after_seq) = filter.after_seq {
            query = query.bind(after_seq);
        }
        for value in [&filter.actor, &filter.target].into_iter().flatten() {
            query = query.bind(value);
        }
        let rows = query
            .bind(page_limit(filter.limit))
            .fetch_all(&self.inner.pool)
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
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1");
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.read_error("look up a token", e))?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.inner.pool)
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
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(|e| self.read_error("begin reading a run", e))?;
        // One snapshot for the run row and its task rows, so they are of the same commit.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(|e| self.read_error("begin reading a run", e))?;
        let loaded = read_run(&mut tx, id)
            .await
            .map_err(|e| self.read_error("read a run", e))?;
        // Only reads happened: ending the transaction either way changes nothing.
        tx.commit()
            .await
            .map_err(|e| self.read_error("finish reading a run", e))?;
        loaded
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>> {
        let mut conditions = Conditions::new(format!("SELECT {RUN_SUMMARY_COLUMNS} FROM runs"));
        let statuses: Option<Vec<&str>> = if filter.statuses.is_empty() {
            None
        } else {
            conditions.and("status = ANY(", ")");
            Some(filter.statuses.iter().map(|s| s.name()).collect())
        };
        if filter.runbook.is_some() {
            conditions.and("runbook = ", "");
        }
        // An unknown cursor run matches nothing, so its page is empty.
        if filter.before_id.is_some() {
            conditions.and(
                "(created_at_ms, id) < (SELECT created_at_ms, id FROM runs WHERE id = ",
                ")",
            );
        }
        let sql = conditions.finish("ORDER BY created_at_ms DESC, id DESC");
        let mut query = sqlx::query(&sql);
        if let Some(statuses) = statuses {
            query = query.bind(statuses);
        }
        for value in [&filter.runbook, &filter.before_id].into_iter().flatten() {
            query = query.bind(value);
        }
        let rows = query
            .bind(page_limit(filter.limit))
            .fetch_all(&self.inner.pool)
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
            "SELECT seq, entry FROM run_journal WHERE run_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(run_id)
        .bind(after_seq)
        .bind(page_limit(limit))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(|e| self.read_error("read a run journal", e))?;
        rows.iter().map(journal_from_row).collect()
    }

    async fn task_outputs(&self, run_id: &str, task: &str) -> Result<Vec<TaskOutput>> {
        let rows = sqlx::query(
            "SELECT task, attempt, at_ms, outcome, text, cut_bytes, data FROM task_outputs \
             WHERE run_id = $1 AND task = $2 ORDER BY attempt, seq",
        )
        .bind(run_id)
        .bind(task)
        .fetch_all(&self.inner.pool)
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
                        GREATEST(t.finished_at_ms - t.started_at_ms, 0) AS duration_ms, \
                        ROW_NUMBER() OVER (PARTITION BY t.task_id \
                            ORDER BY t.finished_at_ms DESC, t.run_id DESC) AS newest \
                 FROM runs r JOIN run_tasks t ON t.run_id = r.id \
                 WHERE r.runbook = $1 AND t.status = 'succeeded' \
                   AND t.started_at_ms IS NOT NULL AND t.finished_at_ms IS NOT NULL \
             ) AS ranked WHERE newest <= $2 \
             ORDER BY task_id, finished_at_ms DESC, run_id DESC",
        )
        .bind(runbook)
        .bind(i64::from(per_task.min(MAX_PAGE_ROWS)))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(|e| self.read_error("read past task durations", e))?;
        rows.iter().map(duration_from_row).collect()
    }

    async fn setting(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let text: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.inner.pool)
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
        leases::claim_runs(&self.inner.pool, owner, now_ms, ttl_ms, limit).await
    }

    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>> {
        leases::claim_run(&self.inner.pool, run_id, owner, now_ms, ttl_ms).await
    }

    async fn renew_leases(
        &self,
        owner: &str,
        held: &[Lease],
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Vec<Lease>> {
        leases::renew_leases(&self.inner.pool, owner, held, now_ms, ttl_ms).await
    }

    async fn release_leases(&self, owner: &str, held: &[Lease]) -> Result<u64> {
        leases::release_leases(&self.inner.pool, owner, held).await
    }

    async fn run_owner(&self, run_id: &str) -> Result<Option<RunOwner>> {
        leases::run_owner(&self.inner.pool, run_id).await
    }

    async fn heartbeat(
        &self,
        id: &str,
        address: &str,
        started_at_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        leases::heartbeat(&self.inner.pool, id, address, started_at_ms, now_ms).await
    }

    async fn replicas(&self, seen_since_ms: i64) -> Result<Vec<ReplicaRecord>> {
        leases::replicas(&self.inner.pool, seen_since_ms).await
    }

    async fn claim_drain_test_slot(&self, execution: &crate::DrainTestExecution) -> Result<bool> {
        drain_tests::claim(&self.inner.pool, execution).await
    }

    async fn update_drain_test_execution(
        &self,
        execution: &crate::DrainTestExecution,
    ) -> Result<()> {
        drain_tests::update(&self.inner.pool, execution).await
    }

    async fn drain_test_execution(&self, id: &str) -> Result<Option<crate::DrainTestExecution>> {
        drain_tests::get(&self.inner.pool, id).await
    }

    async fn drain_test_executions(
        &self,
        filter: &crate::DrainTestFilter,
    ) -> Result<Vec<crate::DrainTestExecution>> {
        drain_tests::list(&self.inner.pool, filter).await
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
        maintenance::get(&self.inner.pool, id).await
    }

    async fn maintenances(
        &self,
        filter: &crate::MaintenanceFilter,
    ) -> Result<Vec<crate::MaintenanceRecord>> {
        maintenance::list(&self.inner.pool, filter).await
    }

    async fn close(&self) {
        PostgresStore::close(self).await;
    }

    fn notices(&self) -> tokio::sync::broadcast::Receiver<crate::Notice> {
        let receiver = self.inner.notices.subscribe();
        self.inner.listener.get_or_init(|| {
            tokio::spawn(leases::listen(
                self.inner.pool.clone(),
                self.inner.label.clone(),
                self.inner.notices.clone(),
            ))
        });
        receiver
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_are_not_postgres_are_refused() {
        for url in [
            "sqlite://levee.db",
            "mysql://host/db",
            "postgres://host:notaport/db",
        ] {
            let error = connect_options(url).unwrap_err();
            assert!(matches!(error, Error::Unavailable(_)), "{url}: {error}");
        }
    }

    #[test]
    fn messages_never_show_the_password() {
        assert_eq!(
            redact_url("postgres://levee:s3cret@db.example:5432/levee"),
            "postgres://levee:***@db.example:5432/levee"
        );
        assert_eq!(
            redact_url("postgres://levee@db/levee"),
            "postgres://levee@db/levee"
        );
        assert_eq!(redact_url("postgresql://db/levee"), "postgresql://db/levee");
        assert_eq!(
            redact_url("postgres://db/levee?sslmode=require&password=s3cret"),
            "postgres://db/levee?sslmode=require&password=***"
        );
        let options = connect_options("postgres://levee:s3cret@db.example:6543/fleet").unwrap();
        assert_eq!(label(&options), "postgres://levee@db.example:6543/fleet");
        let error = connect_options("postgres://levee:s3cret@db:notaport/x").unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    #[test]
    fn optional_conditions_number_their_parameters() {
        let mut conditions = Conditions::new("SELECT id FROM t".to_string());
        conditions.and("a = ", "");
        conditions.and("b = ANY(", ")");
        assert_eq!(
            conditions.finish("ORDER BY id"),
            "SELECT id FROM t WHERE TRUE AND a = $1 AND b = ANY($2) ORDER BY id LIMIT $3"
        );
    }
}
