//! Levee's store: every fact the control plane keeps, behind one [`Store`] trait.
//!
//! Only this crate knows SQL. Each implementation passes the same [`conformance`] suite. Writes
//! that must be decided against the latest committed state (a report to a machine, say) are
//! sent as [`MachineOp`]s: the store runs their decision inside its write transaction, so two
//! concurrent requests can never both act on the same old state, and it batches the ops of
//! concurrent requests into one commit (group commit). A write is acknowledged only after its
//! commit is durable.

pub mod conformance;
mod notices;
pub mod postgres;
mod queue;
mod rows;
pub mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use levee_engine::runbook::{Change as RunChange, JournalEntry, RunState, RunStatus};
use levee_engine::{Change, HistoryEntry, MachineRecord, Refusal};
use serde::{Deserialize, Serialize};

pub use notices::{
    MAX_NOTICE_PAYLOAD_BYTES, NOTICE_BUFFER, NOTICE_CHANNEL, NOTICE_RECONNECT_MAX_MS,
    NOTICE_RECONNECT_MIN_MS, Notice,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Most rows one listing returns. A `limit` of 0, or one above this, means this many: every
/// answer stays bounded however a caller pages.
pub const MAX_PAGE_ROWS: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A uniqueness rule was broken (a token name already taken, say).
    #[error("{0}")]
    Conflict(String),
    /// The database cannot take writes or answer now (down, locked past the timeout, disk
    /// full). Nothing was changed; the caller may retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data that does not parse, or a decision that panicked on a record: a bug or a
    /// hand-edited database. Retrying will not help.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A run commit carried a lease epoch that is no longer the run's: another replica
    /// claimed the run since. Nothing was changed; the writer has lost the run and must stop
    /// acting on it (retrying cannot help).
    #[error("fenced: {0}")]
    Fenced(String),
}

/// A stored definition version. Applying identical content again keeps the version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DefinitionRecord {
    pub kind: String,
    pub name: String,
    pub version: i64,
    /// The compiled definition as JSON (for `StateMachine`: a `levee_model::MachineDef`).
    pub compiled: serde_json::Value,
    /// The YAML text it was loaded from, kept for display and export.
    pub source: String,
    /// Hex SHA-256 of `compiled`'s canonical JSON: equal digests mean equal definitions.
    pub digest: String,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// A definition to store; the store assigns the version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewDefinition {
    pub kind: String,
    pub name: String,
    pub compiled: serde_json::Value,
    pub source: String,
    pub digest: String,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// One line of the audit log, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// A token's name, or `anonymous` when no tokens are configured.
    pub actor: String,
    /// What was attempted, dotted: `machine.report`, `definition.apply`, `token.create`, ...
    pub action: String,
    /// What it was attempted on: a machine id, a definition name, ...
    pub target: String,
    /// `ok`, `noop`, or the refusal or error code.
    pub outcome: String,
    /// Request details worth keeping (query, remote address, reason given).
    pub detail: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only entries with `seq` greater than this (cursor for paging forward).
    pub after_seq: Option<i64>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub limit: u32,
}

#[derive(Clone, Debug, Default)]
pub struct MachineFilter {
    pub definition: Option<String>,
    pub group: Option<String>,
    /// Only ids sorting after this (cursor for paging forward, ids ascending).
    pub after_id: Option<String>,
    pub limit: u32,
}

/// An API token as stored: never the secret, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// `machine:ID` or `group:NAME`; `None` means every machine.
    pub scope: Option<String>,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub created_at_ms: i64,
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
}

/// A run to create. The store keeps `spec` (the resolved, rendered tasks the server executes)
/// opaque; `state` is the engine's initial [`RunState`] (every task waiting).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewRun {
    /// Assigned by the server; unique.
    pub id: String,
    /// A client-supplied name that makes starting a run idempotent: a second create with the
    /// same name returns the first run instead of creating another.
    pub name: Option<String>,
    pub runbook: String,
    pub runbook_version: i64,
    /// The bound parameter values.
    pub params: serde_json::Value,
    /// What the server executes, stored as given.
    pub spec: serde_json::Value,
    pub created_by: String,
    pub state: RunState,
}

/// A run as stored: what it was created with, and its current state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRun {
    pub id: String,
    pub name: Option<String>,
    pub runbook: String,
    pub runbook_version: i64,
    pub params: serde_json::Value,
    pub spec: serde_json::Value,
    pub created_by: String,
    pub state: RunState,
}

/// The outcome of [`Store::create_run`].
#[derive(Clone, Debug, PartialEq)]
pub enum CreatedRun {
    Created(StoredRun),
    /// A run with the same `name` already existed; it is returned unchanged.
    Existing(StoredRun),
}

/// One line of a run listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub name: Option<String>,
    pub runbook: String,
    pub runbook_version: i64,
    pub created_by: String,
    pub status: RunStatus,
    pub version: i64,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub outcome: Option<String>,
    pub tasks_total: u32,
    /// Succeeded or skipped.
    pub tasks_done: u32,
    pub tasks_running: u32,
    /// Failed or stalled: waiting for a human.
    pub tasks_failed: u32,
}

#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Only runs with one of these statuses; empty means any.
    pub statuses: Vec<RunStatus>,
    pub runbook: Option<String>,
    /// Only runs created before this run (cursor for paging backwards; newest first).
    pub before_id: Option<String>,
    pub limit: u32,
}

/// The output an attempt of a task produced, kept with the commit that ended it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskOutput {
    pub task: String,
    pub attempt: u32,
    pub at_ms: i64,
    /// `succeeded`, `failed`, `timed_out`, `check_failed`, ...
    pub outcome: String,
    /// Size-limited by the stage.
    pub text: String,
    /// Bytes cut from the front of `text`.
    pub cut_bytes: u64,
    /// Structured facts (`{"exit_code": 1}`).
    pub data: serde_json::Value,
}

/// A decided change to one run, to commit if the run is still at `expected_version`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunCommit {
    pub run_id: String,
    /// The run's version the change was decided against (compare-and-set).
    pub expected_version: i64,
    pub change: RunChange,
    pub outputs: Vec<TaskOutput>,
    /// Written in the same transaction, exactly as given.
    pub audits: Vec<AuditEntry>,
    /// The lease epoch the writer holds the run at (the fencing token): the commit is refused
    /// with [`Error::Fenced`] unless the run's epoch is still this. `None` skips the check,
    /// for tools that write without holding a lease.
    pub epoch: Option<i64>,
}

/// A replica's hold on a run, from [`Store::claim_runs`] or [`Store::claim_run`]. It is the
/// holder's for as long as the run's epoch stays `epoch`: another replica may claim the run
/// once `expires_ms` has passed, and that claim moves the epoch on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub run_id: String,
    /// The fencing token every commit of the holder carries.
    pub epoch: i64,
    /// Epoch ms after which the lease may be taken over unless renewed.
    pub expires_ms: i64,
}

/// Who holds a run now, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOwner {
    /// The replica holding the lease; `None` if nobody does (never claimed, or released).
    pub owner: Option<String>,
    pub epoch: i64,
    pub expires_ms: Option<i64>,
}

/// A replica as its heartbeats left it, with the leases it holds on active runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub id: String,
    /// Where other replicas reach it (`http://host:port`), as it announced itself.
    pub address: String,
    pub started_at_ms: i64,
    /// Its latest heartbeat.
    pub seen_at_ms: i64,
    /// Leases on runs that are running, paused or pending, run id ascending.
    pub leases: Vec<Lease>,
}

/// A journal entry as stored, with its place in the run's journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Grows with every entry of every run; a cursor for paging and event streams.
    pub seq: i64,
    #[serde(flatten)]
    pub entry: JournalEntry,
}

/// How long one task took in a past run, for predictions and stuck detection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDuration {
    pub task: String,
    pub run_id: String,
    /// From the task's first dispatch to its success.
    pub duration_ms: u64,
    pub finished_at_ms: i64,
}

/// What a machine op's decision sees, read inside the write transaction.
pub struct OpContext<'a> {
    pub record: &'a MachineRecord,
    /// The records of the op's `peers` that exist.
    pub peers: &'a HashMap<String, MachineRecord>,
    /// The machine's whole history in order, if the op asked for it (replay needs it). It
    /// includes entries decided earlier in the same commit, with their final `seq`.
    pub history: Option<&'a [HistoryEntry]>,
}

pub type Decide = Box<dyn FnOnce(&OpContext<'_>) -> Result<Change, Refusal> + Send>;

/// A change to one machine, decided against its latest committed record.
pub struct MachineOp {
    pub machine: String,
    /// Other machines the decision reads (guards).
    pub peers: Vec<String>,
    pub with_history: bool,
    pub decide: Decide,
    /// Written in the same transaction, its `outcome` set by the store: `ok` for a change,
    /// `noop` for a no-op change, the refusal's code, or `not_found`.
    pub audit: Option<AuditEntry>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OpOutcome {
    /// Committed: the new record, and its history entries with their `seq` assigned.
    Applied(Change),
    /// The decision changed nothing (a duplicate report); the current record.
    Unchanged(MachineRecord),
    /// The decision refused; the current record.
    Refused(Refusal, MachineRecord),
    /// No machine with that id.
    NotFound,
}

/// The result of [`Store::apply`].
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// One per definition given, in order, and whether it made a new version.
    pub definitions: Vec<(DefinitionRecord, bool)>,
    /// The machines that were created (ids that already existed are left alone).
    pub created: Vec<MachineRecord>,
}

/// States in which a maintenance no longer holds capacity: every other state reserves its
/// hosts during its window.
pub const MAINTENANCE_RELEASED_STATES: [&str; 2] = ["done", "cancelled"];

/// A maintenance as stored: what it covers and when, where its flow is, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceRecord {
    pub id: String,
    pub fleet: String,
    /// The scope as written (`rack=a-r1`).
    pub selector: String,
    /// The hosts the selector resolved to when it was scheduled: what it reserves.
    pub hosts: Vec<String>,
    /// `network`, `power`, `reboot` or a custom type.
    pub kind: String,
    /// The window, `[start_ms, end_ms)`.
    pub start_ms: i64,
    pub end_ms: i64,
    pub owner: String,
    /// `scheduled`, `preflight`, `disabling`, `in_maintenance`, `enabling`, `done`, `blocked`,
    /// `needs_human`, `failed` or `cancelled`.
    pub state: String,
    /// Why it is in its state.
    pub why: String,
    /// What would move it on; empty when nothing is needed.
    pub unblock: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Grows by one per stored change; updates are compare-and-set on it.
    pub version: i64,
    /// The flow's own facts (per-service actions and confirmations, runs started, the last
    /// preflight), stored as given.
    pub details: serde_json::Value,
}

impl MaintenanceRecord {
    /// Whether it still holds its hosts during its window.
    pub fn reserves(&self) -> bool {
        !MAINTENANCE_RELEASED_STATES.contains(&self.state.as_str())
    }
}

/// Decides, inside the write transaction, whether a new maintenance may be stored next to
/// every stored maintenance that still reserves capacity (any fleet; the closure filters).
/// `Err` carries the explanation the caller is answered with.
pub type Admit =
    Box<dyn FnOnce(&[MaintenanceRecord]) -> std::result::Result<(), serde_json::Value> + Send>;

/// The outcome of [`Store::schedule_maintenance`].
#[derive(Clone, Debug, PartialEq)]
pub enum Scheduled {
    Stored(Box<MaintenanceRecord>),
    /// The decision refused; nothing was stored. Its explanation.
    Refused(serde_json::Value),
}

#[derive(Clone, Debug, Default)]
pub struct MaintenanceFilter {
    /// Only maintenances that still reserve capacity (not done or cancelled).
    pub reserving_only: bool,
    pub fleet: Option<String>,
    pub limit: u32,
}

/// States of a drain test execution that are over.
pub const DRAIN_TEST_FINAL_STATES: [&str; 3] = ["passed", "failed", "skipped"];

/// One firing of a drain test: its slot, target, runs, state and report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainTestExecution {
    /// `dt-NAME-YYYYMMDDTHHMMZ` (the slot), `-manual-...` for one asked for.
    pub id: String,
    pub drain_test: String,
    /// The firing time the slot stands for, epoch ms.
    pub scheduled_ms: i64,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// The datacenter drained; empty for a firing skipped before one was picked.
    pub target: String,
    /// `draining`, `restoring`, `passed`, `failed` or `skipped`.
    pub state: String,
    /// Why it is in its state (the failed criterion, why it was skipped).
    pub reason: String,
    pub drain_run: Option<String>,
    pub restore_run: Option<String>,
    pub created_by: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_ms: Option<i64>,
    /// Grows by one per stored change; updates are compare-and-set on it.
    pub version: i64,
    /// The evaluation and the runs' reports, stored as given.
    pub report: serde_json::Value,
}

impl DrainTestExecution {
    pub fn is_final(&self) -> bool {
        DRAIN_TEST_FINAL_STATES.contains(&self.state.as_str())
    }
}

#[derive(Clone, Debug, Default)]
pub struct DrainTestFilter {
    pub drain_test: Option<String>,
    /// Only executions not over yet.
    pub active_only: bool,
    /// Newest first, at most this many (0: [`MAX_PAGE_ROWS`]).
    pub limit: u32,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Answers once the database can be read and written.
    async fn ping(&self) -> Result<()>;

    /// Stores definitions and creates new machines, atomically: all or nothing. A definition
    /// whose digest equals its latest version's is not stored again. New machines come as the
    /// engine's `new_instance` changes; ids that already exist are skipped. The audit entries
    /// (one per target, so the log can be filtered by machine) are written in the same
    /// transaction; their `outcome` is set by the store: `ok` if a version or machine was
    /// added, else `noop`.
    async fn apply(
        &self,
        definitions: Vec<NewDefinition>,
        machines: Vec<Change>,
        audits: Vec<AuditEntry>,
    ) -> Result<Applied>;

    /// The latest version of a definition.
    async fn definition(&self, kind: &str, name: &str) -> Result<Option<DefinitionRecord>>;

    /// The latest version of every definition, optionally of one kind, by name.
    async fn definitions(&self, kind: Option<&str>) -> Result<Vec<DefinitionRecord>>;

    async fn machine(&self, id: &str) -> Result<Option<MachineRecord>>;

    /// Machines ordered by id.
    async fn machines(&self, filter: &MachineFilter) -> Result<Vec<MachineRecord>>;

    /// Runs ops, each decided against the latest committed records, and answers after the
    /// commit that holds them is durable. Ops of concurrent calls share commits. Outcomes are
    /// in the order of `ops`; ops on the same machine in one call see each other's effects.
    async fn run(&self, ops: Vec<MachineOp>) -> Result<Vec<OpOutcome>>;

    /// A machine's history, `seq` ascending, after the given seq.
    async fn history(&self, machine: &str, after_seq: i64, limit: u32)
    -> Result<Vec<HistoryEntry>>;

    /// Ids of machines whose `timer_due_ms` is at or before `now_ms`, earliest first (ties by
    /// id).
    async fn due_timers(&self, now_ms: i64, limit: u32) -> Result<Vec<String>>;

    /// Appends to the audit log (group-committed like every write), exactly as given.
    async fn audit(&self, entry: AuditEntry) -> Result<()>;

    async fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;

    /// Fails with `Conflict` if the name is taken, even by a revoked token, or if another token
    /// has the same hash. The audit entry is written either way, its `outcome` set by the
    /// store: `ok` or `conflict`.
    async fn create_token(&self, token: TokenRecord, audit: Option<AuditEntry>) -> Result<()>;

    /// The token with this hash, revoked or not.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;

    async fn tokens(&self) -> Result<Vec<TokenRecord>>;

    /// Marks a token revoked; `false` if no active token has that name. The audit entry's
    /// `outcome` is set by the store: `ok` or `not_found`.
    async fn revoke_token(&self, name: &str, at_ms: i64, audit: Option<AuditEntry>)
    -> Result<bool>;

    /// Creates a run, or returns the existing run with the same `name`. The audit entry is
    /// written in the same transaction (outcome `ok`, or `noop` for an existing run).
    async fn create_run(&self, run: NewRun, audit: Option<AuditEntry>) -> Result<CreatedRun>;

    /// A run with its current state (every task record, in plan order).
    async fn load_run(&self, id: &str) -> Result<Option<StoredRun>>;

    /// Runs, newest first (`created_at_ms`, then id, descending). A `before_id` that names no
    /// run gives an empty page. The task counts come with the run, without reading its tasks.
    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>>;

    /// Commits a change decided against `expected_version`: the run row, the changed task
    /// rows, the journal entries, outputs and audits, in one transaction, group-committed with
    /// other writes. Fails with `Conflict` (and changes nothing) if the run does not exist or
    /// is not at `expected_version`, and with `Fenced` (changing nothing) if `epoch` is given
    /// and is not the run's current epoch (checked first, with the run's row locked, so no
    /// claim can slip between the check and the write); other commits of the same batch are
    /// unaffected.
    async fn commit_run(&self, commit: RunCommit) -> Result<()>;

    /// Claims up to `limit` runs for replica `owner` (`limit` 0 claims none): runs that are
    /// active — running, paused, or pending with a start time — and either unowned or whose
    /// lease expired (`lease_expires_ms <= now_ms`). Each claimed run gets `owner`, a lease
    /// until `now_ms + ttl_ms`, and its epoch incremented by one, atomically: two claimers
    /// never both get one run at one epoch. Runs are taken in id order; runs another
    /// transaction is writing right now may be skipped (the next claim finds them). Returns
    /// the leases, run id ascending.
    async fn claim_runs(
        &self,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
        limit: u32,
    ) -> Result<Vec<Lease>>;

    /// Claims run `run_id` whatever its status, as [`Store::claim_runs`] claims one: only if
    /// it is unowned or its lease expired at `now_ms`. `None` if it does not exist or another
    /// replica holds a live lease on it (or `owner` itself does: renew that one instead).
    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>>;

    /// Extends to `now_ms + ttl_ms` each of `leases` that `owner` still holds at the same
    /// epoch (even one that expired, if nobody claimed the run since). Returns the leases
    /// still held, with their new expiry, run id ascending; a lease missing from the answer
    /// is lost: another replica claimed the run, and the epoch moved on.
    async fn renew_leases(
        &self,
        owner: &str,
        leases: &[Lease],
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Vec<Lease>>;

    /// Gives up each of `leases` that `owner` still holds at its epoch, so any replica may
    /// claim the run at once (the epoch is kept; the next claim moves it on). Leases already
    /// lost are left alone. Returns how many were released.
    async fn release_leases(&self, owner: &str, leases: &[Lease]) -> Result<u64>;

    /// Who holds run `run_id`; `None` if there is no such run.
    async fn run_owner(&self, run_id: &str) -> Result<Option<RunOwner>>;

    /// Records that replica `id` (started at `started_at_ms`, reachable at `address`) is
    /// alive at `now_ms`. The time seen never moves backwards.
    async fn heartbeat(
        &self,
        id: &str,
        address: &str,
        started_at_ms: i64,
        now_ms: i64,
    ) -> Result<()>;

    /// Replicas whose latest heartbeat is at or after `seen_since_ms`, id ascending, each
    /// with the leases it holds on active runs.
    async fn replicas(&self, seen_since_ms: i64) -> Result<Vec<ReplicaRecord>>;

    /// A run's journal, `seq` ascending, after the given seq.
    async fn run_journal(
        &self,
        run_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<JournalRecord>>;

    /// Every output kept for a task of a run, attempts ascending.
    async fn task_outputs(&self, run_id: &str, task: &str) -> Result<Vec<TaskOutput>>;

    /// For every task of runs of `runbook`, the durations of its latest `per_task` successes
    /// (newest first), from any run of that runbook, the current one included. A success
    /// counts when the task has both a start and a finish time. `per_task` 0 gives nothing; it
    /// is capped at [`MAX_PAGE_ROWS`].
    async fn task_durations(&self, runbook: &str, per_task: u32) -> Result<Vec<TaskDuration>>;

    /// A server-wide setting (the global pause, say).
    async fn setting(&self, key: &str) -> Result<Option<serde_json::Value>>;

    /// Sets a server-wide setting; the audit entry is written in the same transaction (outcome
    /// `ok`), and its time is kept as the setting's update time.
    async fn set_setting(
        &self,
        key: &str,
        value: serde_json::Value,
        audit: Option<AuditEntry>,
    ) -> Result<()>;

    /// Stores a new maintenance (its `version` must be 1) if `admit`, run inside the write
    /// transaction against every stored maintenance that still reserves capacity, lets it:
    /// two concurrent schedules, from this process or another replica, are decided one after
    /// the other, so they can never both take the last headroom. The audit entry is written
    /// either way, its `outcome` set by the store: `ok` or `refused`. Fails with `Conflict` if
    /// the id is taken.
    async fn schedule_maintenance(
        &self,
        maintenance: MaintenanceRecord,
        admit: Admit,
        audit: Option<AuditEntry>,
    ) -> Result<Scheduled>;

    /// Stores a change to a maintenance whose stored version is `maintenance.version - 1`
    /// (compare-and-set), with its audit entry (outcome `ok`); `Conflict` otherwise, and
    /// nothing changes.
    async fn update_maintenance(
        &self,
        maintenance: MaintenanceRecord,
        audit: Option<AuditEntry>,
    ) -> Result<()>;

    async fn maintenance(&self, id: &str) -> Result<Option<MaintenanceRecord>>;

    /// Maintenances by start time, then id.
    async fn maintenances(&self, filter: &MaintenanceFilter) -> Result<Vec<MaintenanceRecord>>;

    /// Stores a new execution (version 1) unless its id or its (drain test, scheduled time)
    /// slot is taken: `true` if this call stored it. One atomic statement, so of several
    /// replicas claiming one slot exactly one gets `true`.
    async fn claim_drain_test_slot(&self, execution: &DrainTestExecution) -> Result<bool>;

    /// Stores a change to an execution whose stored version is `execution.version - 1`
    /// (compare-and-set); `Conflict` otherwise, and nothing changes.
    async fn update_drain_test_execution(&self, execution: &DrainTestExecution) -> Result<()>;

    async fn drain_test_execution(&self, id: &str) -> Result<Option<DrainTestExecution>>;

    /// Executions as the filter says, newest scheduled first (then id, descending).
    async fn drain_test_executions(
        &self,
        filter: &DrainTestFilter,
    ) -> Result<Vec<DrainTestExecution>>;

    /// Commits the writes already queued, then closes the database. Writes after this fail
    /// with `Unavailable`. Call it on graceful shutdown so nothing acknowledged is left behind
    /// and the database is left tidy (SQLite folds its write-ahead log back into the file).
    async fn close(&self) {}

    /// Notices of committed changes, from every writer of this database (other replicas and
    /// this one): see [`Notice`]. A receiver that falls more than [`NOTICE_BUFFER`] behind
    /// gets `Lagged` and must treat it as [`Notice::Resync`]. Notices only wake a replica
    /// early: whatever they announce is also found by polling.
    fn notices(&self) -> tokio::sync::broadcast::Receiver<Notice>;
}

pub type DynStore = Arc<dyn Store>;
