//! Runs: the `runs` row, one `run_tasks` row per task, the `run_journal`, `task_outputs`, and
//! the `settings` table. Rows to records and back, the reads the store answers, and the
//! writer's part of a batch ([`RunBatch`]).
//!
//! Run commits are compare-and-set on the run's version. Within a batch the writer keeps an
//! overlay of run versions, so two commits of the same run in one batch see each other, and a
//! commit that fails its check is answered `Conflict` without touching the rest of the batch:
//! commits are checked and encoded in memory, and their rows written with a few multi-row
//! statements before the batch commits.

use std::collections::{BTreeMap, HashMap};

use levee_engine::runbook::{RunRecord, RunState, RunStatus, TaskRecord};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Connection, Row};

use super::codec::{SQLITE_MAX_VARIABLES, db_error, values_placeholders};
use crate::queue::push_audit;
use crate::rows::{
    JournalRow, OutputRow, RunSlot, TaskCounts, TaskRow, check_commit, column, corrupt, count,
    encode, json_column, run_status_from_name,
};
use crate::{
    AuditEntry, CreatedRun, Error, JournalRecord, NewRun, Result, RunCommit, RunSummary, StoredRun,
    TaskDuration, TaskOutput,
};

/// The columns of a run listing line, in [`run_summary_from_row`]'s order.
pub(crate) const RUN_SUMMARY_COLUMNS: &str = "id, name, runbook, runbook_version, created_by, \
     status, version, created_at_ms, started_at_ms, finished_at_ms, outcome, tasks_total, \
     tasks_done, tasks_running, tasks_failed";

/// What a stored run holds besides its tasks, read by [`load_run`].
const RUN_COLUMNS: &str = "id, name, runbook, runbook_version, \
     (SELECT s.params FROM run_specs s WHERE s.run_id = runs.id) AS params, \
     (SELECT s.spec FROM run_specs s WHERE s.run_id = runs.id) AS spec, created_by, status, \
     version, created_at_ms, started_at_ms, started_by, finished_at_ms, outcome, max_parallel";

const TASK_COLUMNS: &str = "run_id, idx, task_id, status, started_at_ms, finished_at_ms, record";
const TASK_COLUMN_COUNT: usize = 7;

/// The run-level columns a commit changes, in `UPDATE ... FROM (VALUES ...)` order.
const RUN_UPDATE_COLUMN_COUNT: usize = 8;

const JOURNAL_COLUMNS: &str = "run_id, version, at_ms, task, actor, kind, entry";
const JOURNAL_COLUMN_COUNT: usize = 7;

const OUTPUT_COLUMNS: &str = "run_id, task, attempt, at_ms, outcome, text, cut_bytes, data";
const OUTPUT_COLUMN_COUNT: usize = 8;

fn run_status(row: &SqliteRow, id: &str) -> Result<RunStatus> {
    let status: String = column(row, "runs", "status")?;
    run_status_from_name(&status).ok_or_else(|| {
        corrupt(
            format_args!("run `{id}`"),
            format_args!("unknown status `{status}`"),
        )
    })
}

/// Reads a listing line selected with [`RUN_SUMMARY_COLUMNS`].
pub(crate) fn run_summary_from_row(row: &SqliteRow) -> Result<RunSummary> {
    let id: String = column(row, "runs", "id")?;
    let what = format!("run `{id}`");
    Ok(RunSummary {
        name: column(row, "runs", "name")?,
        runbook: column(row, "runs", "runbook")?,
        runbook_version: column(row, "runs", "runbook_version")?,
        created_by: column(row, "runs", "created_by")?,
        status: run_status(row, &id)?,
        version: column(row, "runs", "version")?,
        created_at_ms: column(row, "runs", "created_at_ms")?,
        started_at_ms: column(row, "runs", "started_at_ms")?,
        finished_at_ms: column(row, "runs", "finished_at_ms")?,
        outcome: column(row, "runs", "outcome")?,
        tasks_total: count(column(row, "runs", "tasks_total")?, &what)?,
        tasks_done: count(column(row, "runs", "tasks_done")?, &what)?,
        tasks_running: count(column(row, "runs", "tasks_running")?, &what)?,
        tasks_failed: count(column(row, "runs", "tasks_failed")?, &what)?,
        id,
    })
}

/// A run with every task record in plan order, read on `conn` in one read transaction so the
/// run row and its task rows are of the same commit.
pub(crate) async fn load_run(conn: &mut SqliteConnection, id: &str) -> Result<Option<StoredRun>> {
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| db_error("begin reading a run", e))?;
    let loaded = read_run(&mut tx, id).await;
    // Only reads happened: ending the transaction either way changes nothing.
    tx.commit()
        .await
        .map_err(|e| db_error("finish reading a run", e))?;
    loaded
}

/// [`load_run`] inside a transaction the caller holds (the writer's).
pub(crate) async fn read_run(conn: &mut SqliteConnection, id: &str) -> Result<Option<StoredRun>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
    let Some(row) = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error("read a run", e))?
    else {
        return Ok(None);
    };
    let what = format!("run `{id}`");
    let params: String = column(&row, "runs", "params")?;
    let spec: String = column(&row, "runs", "spec")?;
    let max_parallel: i64 = column(&row, "runs", "max_parallel")?;
    let run = RunRecord {
        status: run_status(&row, id)?,
        max_parallel: count(max_parallel, &what)?,
        version: column(&row, "runs", "version")?,
        created_at_ms: column(&row, "runs", "created_at_ms")?,
        started_at_ms: column(&row, "runs", "started_at_ms")?,
        started_by: column(&row, "runs", "started_by")?,
        finished_at_ms: column(&row, "runs", "finished_at_ms")?,
        outcome: column(&row, "runs", "outcome")?,
    };
    let rows = sqlx::query("SELECT idx, record FROM run_tasks WHERE run_id = ?1 ORDER BY idx")
        .bind(id)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db_error("read a run's tasks", e))?;
    let mut tasks = Vec::with_capacity(rows.len());
    for (expected, row) in rows.iter().enumerate() {
        let idx: i64 = column(row, "run_tasks", "idx")?;
        if usize::try_from(idx).ok() != Some(expected) {
            return Err(corrupt(
                &what,
                format_args!("task rows skip from index {expected} to {idx}"),
            ));
        }
        let record: String = column(row, "run_tasks", "record")?;
        tasks.push(json_column::<TaskRecord>(
            &record,
            format_args!("{what} task {idx}"),
        )?);
    }
    Ok(Some(StoredRun {
        id: column(&row, "runs", "id")?,
        name: column(&row, "runs", "name")?,
        runbook: column(&row, "runs", "runbook")?,
        runbook_version: column(&row, "runs", "runbook_version")?,
        params: json_column(&params, format_args!("{what} params"))?,
        spec: json_column(&spec, format_args!("{what} spec"))?,
        created_by: column(&row, "runs", "created_by")?,
        state: RunState { run, tasks },
    }))
}

/// Reads a journal line selected as `seq, entry`.
pub(crate) fn journal_from_row(row: &SqliteRow) -> Result<JournalRecord> {
    let seq: i64 = column(row, "run_journal", "seq")?;
    let entry: String = column(row, "run_journal", "entry")?;
    Ok(JournalRecord {
        seq,
        entry: json_column(&entry, format_args!("run journal seq {seq}"))?,
    })
}

/// Reads an output selected as `task, attempt, at_ms, outcome, text, cut_bytes, data`.
pub(crate) fn output_from_row(row: &SqliteRow) -> Result<TaskOutput> {
    let task: String = column(row, "task_outputs", "task")?;
    let attempt: i64 = column(row, "task_outputs", "attempt")?;
    let what = format!("output of task `{task}` attempt {attempt}");
    let cut_bytes: i64 = column(row, "task_outputs", "cut_bytes")?;
    let data: String = column(row, "task_outputs", "data")?;
    Ok(TaskOutput {
        attempt: count(attempt, &what)?,
        at_ms: column(row, "task_outputs", "at_ms")?,
        outcome: column(row, "task_outputs", "outcome")?,
        text: column(row, "task_outputs", "text")?,
        cut_bytes: u64::try_from(cut_bytes)
            .map_err(|_| corrupt(&what, format_args!("cut_bytes {cut_bytes} is negative")))?,
        data: json_column(&data, format_args!("{what} data"))?,
        task,
    })
}

/// Reads a duration selected as `task_id, run_id, duration_ms, finished_at_ms`.
pub(crate) fn duration_from_row(row: &SqliteRow) -> Result<TaskDuration> {
    let duration_ms: i64 = column(row, "run_tasks", "duration_ms")?;
    Ok(TaskDuration {
        task: column(row, "run_tasks", "task_id")?,
        run_id: column(row, "run_tasks", "run_id")?,
        // The query never returns a negative duration (a clock that went backwards is 0).
        duration_ms: u64::try_from(duration_ms).unwrap_or(0),
        finished_at_ms: column(row, "run_tasks", "finished_at_ms")?,
    })
}

/// The runs part of an open write transaction: the version overlay and the rows to write.
#[derive(Default)]
pub(crate) struct RunBatch {
    slots: HashMap<String, RunSlot>,
    /// Run rows to update, the latest change of each run.
    rows: HashMap<String, RunRecord>,
    /// Task rows to write, the latest of each `(run, index)`.
    tasks: BTreeMap<(String, i64), TaskRow>,
    journal: Vec<JournalRow>,
    outputs: Vec<OutputRow>,
}

impl RunBatch {
    /// Reads the versions of these runs into the overlay, with one query; runs it already
    /// knows are skipped.
    pub(crate) async fn load(&mut self, conn: &mut SqliteConnection, ids: &[&str]) -> Result<()> {
        let unknown: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !self.slots.contains_key(*id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let list = serde_json::to_string(&unknown)
            .map_err(|e| Error::Unavailable(format!("encode run ids: {e}")))?;
        let rows = sqlx::query(
            "SELECT id, version, tasks_total, epoch FROM runs \
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&list)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db_error("load run versions", e))?;
        for id in unknown {
            self.slots.insert(id.to_string(), RunSlot::Missing);
        }
        for row in &rows {
            let id: String = row.try_get("id").map_err(|e| db_error("load runs", e))?;
            let version: i64 = row
                .try_get("version")
                .map_err(|e| db_error("load runs", e))?;
            let total: i64 = row
                .try_get("tasks_total")
                .map_err(|e| db_error("load runs", e))?;
            let tasks = usize::try_from(total).unwrap_or(0);
            let epoch: i64 = row.try_get("epoch").map_err(|e| db_error("load runs", e))?;
            self.slots.insert(
                id,
                RunSlot::Present {
                    version,
                    tasks,
                    epoch,
                },
            );
        }
        Ok(())
    }

    fn has_pending(&self, id: &str) -> bool {
        self.rows.contains_key(id)
    }

    /// Checks a commit against the overlay and queues its rows. An error (`Conflict` when the
    /// run is missing or moved on, `Corrupt` for a change the store cannot write) leaves the
    /// batch exactly as it was.
    pub(crate) async fn commit(
        &mut self,
        conn: &mut SqliteConnection,
        commit: RunCommit,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<Result<()>> {
        self.load(conn, &[commit.run_id.as_str()]).await?;
        Ok(self.check_and_queue(commit, audit))
    }

    fn check_and_queue(&mut self, commit: RunCommit, audit: &mut Vec<AuditEntry>) -> Result<()> {
        let RunCommit {
            run_id,
            expected_version,
            change,
            outputs,
            audits,
            epoch,
        } = commit;
        let slot = self.slots.get(&run_id).copied();
        let checked = check_commit(slot, &run_id, expected_version, epoch, change, outputs)?;
        if let Some(RunSlot::Present { version, .. }) = self.slots.get_mut(&run_id) {
            *version = checked.run.version;
        }
        for row in checked.tasks {
            self.tasks.insert((row.run_id.clone(), row.idx), row);
        }
        self.journal.extend(checked.journal);
        self.outputs.extend(checked.outputs);
        self.rows.insert(run_id, checked.run);
        audit.extend(audits);
        Ok(())
    }

    /// Creates a run, or finds the one that already has its name. Runs at once (not at
    /// flush), so a later create or commit in the same batch sees it.
    pub(crate) async fn create(
        &mut self,
        conn: &mut SqliteConnection,
        run: NewRun,
        entry: Option<AuditEntry>,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<Result<CreatedRun>> {
        if let Some(name) = &run.name {
            let existing: Option<String> =
                sqlx::query_scalar("SELECT id FROM runs WHERE name = ?1")
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| db_error("look up a run by name", e))?;
            if let Some(id) = existing {
                // The existing run is answered as this batch leaves it.
                if self.has_pending(&id) {
                    self.flush(conn).await?;
                }
                return match read_run(conn, &id).await {
                    Ok(Some(stored)) => {
                        push_audit(audit, entry, "noop");
                        Ok(Ok(CreatedRun::Existing(stored)))
                    }
                    Ok(None) => Ok(Err(Error::Corrupt(format!(
                        "run `{id}` named `{name}` vanished while it was read"
                    )))),
                    Err(Error::Corrupt(reason)) => Ok(Err(Error::Corrupt(reason))),
                    Err(other) => Err(other),
                };
            }
        }
        let id = run.id.as_str();
        let state = &run.state;
        if state.run.version < 1 || state.run.max_parallel == 0 {
            return Ok(Err(Error::Corrupt(format!(
                "run `{id}`: a new run needs version >= 1 and max_parallel >= 1, not {} and {}",
                state.run.version, state.run.max_parallel
            ))));
        }
        let encoded = (|| -> Result<_> {
            let params = encode(&run.params, format_args!("run `{id}` params"))?;
            let spec = encode(&run.spec, format_args!("run `{id}` spec"))?;
            let tasks = state
                .tasks
                .iter()
                .enumerate()
                .map(|(index, record)| TaskRow::encode(id, index, record))
                .collect::<Result<Vec<_>>>()?;
            Ok((params, spec, tasks))
        })();
        let (params, spec, tasks) = match encoded {
            Ok(encoded) => encoded,
            Err(error) => return Ok(Err(error)),
        };
        let counts = TaskCounts::of(&state.tasks);
        let total = i64::try_from(state.tasks.len()).unwrap_or(i64::MAX);
        let inserted = sqlx::query(
            "INSERT INTO runs (id, name, runbook, runbook_version, created_by, \
             status, version, created_at_ms, started_at_ms, started_by, finished_at_ms, outcome, \
             max_parallel, tasks_total, tasks_done, tasks_running, tasks_failed) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )
        .bind(id)
        .bind(&run.name)
        .bind(&run.runbook)
        .bind(run.runbook_version)
        .bind(&run.created_by)
        .bind(state.run.status.name())
        .bind(state.run.version)
        .bind(state.run.created_at_ms)
        .bind(state.run.started_at_ms)
        .bind(&state.run.started_by)
        .bind(state.run.finished_at_ms)
        .bind(&state.run.outcome)
        .bind(i64::from(state.run.max_parallel))
        .bind(total)
        .bind(counts.done)
        .bind(counts.running)
        .bind(counts.failed)
        .execute(&mut *conn)
        .await;
        match inserted {
            Ok(_) => {}
            // A failed statement leaves the rest of the transaction as it was. The name was
            // looked up above, so only the id can be taken.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                push_audit(audit, entry, "conflict");
                return Ok(Err(Error::Conflict(format!(
                    "a run with id `{id}` already exists"
                ))));
            }
            Err(error) => return Err(db_error("create a run", error)),
        }
        sqlx::query("INSERT INTO run_specs (run_id, params, spec) VALUES (?1, ?2, ?3)")
            .bind(id)
            .bind(&params)
            .bind(&spec)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error("store a run's spec", e))?;
        for chunk in tasks.chunks(SQLITE_MAX_VARIABLES / TASK_COLUMN_COUNT) {
            write_tasks(conn, chunk).await?;
        }
        self.slots.insert(
            run.id.clone(),
            RunSlot::Present {
                version: state.run.version,
                tasks: state.tasks.len(),
                epoch: 0,
            },
        );
        push_audit(audit, entry, "ok");
        let NewRun {
            id,
            name,
            runbook,
            runbook_version,
            params,
            spec,
            created_by,
            state,
        } = run;
        Ok(Ok(CreatedRun::Created(StoredRun {
            id,
            name,
            runbook,
            runbook_version,
            params,
            spec,
            created_by,
            state,
        })))
    }

    /// Writes the queued run rows, task rows, journal entries and outputs, each with as few
    /// multi-row statements as SQLite's parameter limit allows, and empties the queues.
    pub(crate) async fn flush(&mut self, conn: &mut SqliteConnection) -> Result<()> {
        let rows: Vec<(String, RunRecord)> = self.rows.drain().collect();
        for chunk in rows.chunks(SQLITE_MAX_VARIABLES / RUN_UPDATE_COLUMN_COUNT) {
            update_runs(conn, chunk).await?;
        }
        let tasks: Vec<TaskRow> = std::mem::take(&mut self.tasks).into_values().collect();
        for chunk in tasks.chunks(SQLITE_MAX_VARIABLES / TASK_COLUMN_COUNT) {
            write_tasks(conn, chunk).await?;
        }
        let journal = std::mem::take(&mut self.journal);
        for chunk in journal.chunks(SQLITE_MAX_VARIABLES / JOURNAL_COLUMN_COUNT) {
            insert_journal(conn, chunk).await?;
        }
        let outputs = std::mem::take(&mut self.outputs);
        for chunk in outputs.chunks(SQLITE_MAX_VARIABLES / OUTPUT_COLUMN_COUNT) {
            insert_outputs(conn, chunk).await?;
        }
        Ok(())
    }
}

/// Updates the run-level columns of several runs with one statement.
async fn update_runs(conn: &mut SqliteConnection, rows: &[(String, RunRecord)]) -> Result<()> {
    let sql = format!(
        "UPDATE runs SET status = v.column2, version = v.column3, started_at_ms = v.column4, \
         started_by = v.column5, finished_at_ms = v.column6, outcome = v.column7, \
         max_parallel = v.column8 \
         FROM (VALUES {}) AS v WHERE runs.id = v.column1",
        values_placeholders(rows.len(), RUN_UPDATE_COLUMN_COUNT)
    );
    let mut query = sqlx::query(&sql);
    for (id, run) in rows {
        query = query
            .bind(id)
            .bind(run.status.name())
            .bind(run.version)
            .bind(run.started_at_ms)
            .bind(&run.started_by)
            .bind(run.finished_at_ms)
            .bind(&run.outcome)
            .bind(i64::from(run.max_parallel));
    }
    query
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("write runs", e))?;
    Ok(())
}

/// Inserts task rows, or updates the ones that exist (which fires the counting trigger).
async fn write_tasks(conn: &mut SqliteConnection, rows: &[TaskRow]) -> Result<()> {
    let sql = format!(
        "INSERT INTO run_tasks ({TASK_COLUMNS}) VALUES {} \
         ON CONFLICT (run_id, idx) DO UPDATE SET task_id = excluded.task_id, \
         status = excluded.status, started_at_ms = excluded.started_at_ms, \
         finished_at_ms = excluded.finished_at_ms, record = excluded.record",
        values_placeholders(rows.len(), TASK_COLUMN_COUNT)
    );
    let mut query = sqlx::query(&sql);
    for row in rows {
        query = query
            .bind(&row.run_id)
            .bind(row.idx)
            .bind(&row.task_id)
            .bind(row.status)
            .bind(row.started_at_ms)
            .bind(row.finished_at_ms)
            .bind(&row.record);
    }
    query
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("write run tasks", e))?;
    Ok(())
}

async fn insert_journal(conn: &mut SqliteConnection, rows: &[JournalRow]) -> Result<()> {
    let sql = format!(
        "INSERT INTO run_journal ({JOURNAL_COLUMNS}) VALUES {}",
        values_placeholders(rows.len(), JOURNAL_COLUMN_COUNT)
    );
    let mut query = sqlx::query(&sql);
    for row in rows {
        query = query
            .bind(&row.run_id)
            .bind(row.version)
            .bind(row.at_ms)
            .bind(&row.task)
            .bind(&row.actor)
            .bind(&row.kind)
            .bind(&row.entry);
    }
    query
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("write the run journal", e))?;
    Ok(())
}

async fn insert_outputs(conn: &mut SqliteConnection, rows: &[OutputRow]) -> Result<()> {
    let sql = format!(
        "INSERT INTO task_outputs ({OUTPUT_COLUMNS}) VALUES {}",
        values_placeholders(rows.len(), OUTPUT_COLUMN_COUNT)
    );
    let mut query = sqlx::query(&sql);
    for row in rows {
        query = query
            .bind(&row.run_id)
            .bind(&row.output.task)
            .bind(i64::from(row.output.attempt))
            .bind(row.output.at_ms)
            .bind(&row.output.outcome)
            .bind(&row.output.text)
            .bind(row.cut_bytes)
            .bind(&row.data);
    }
    query
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("write task outputs", e))?;
    Ok(())
}

/// Sets a setting; `at_ms` is the audit entry's time, if there is one.
pub(crate) async fn write_setting(
    conn: &mut SqliteConnection,
    key: &str,
    value: &serde_json::Value,
    at_ms: Option<i64>,
) -> Result<Result<()>> {
    let text = match encode(value, format_args!("setting `{key}`")) {
        Ok(text) => text,
        Err(error) => return Ok(Err(error)),
    };
    sqlx::query(
        "INSERT INTO settings (key, value, updated_at_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
         updated_at_ms = excluded.updated_at_ms",
    )
    .bind(key)
    .bind(&text)
    .bind(at_ms)
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error("write a setting", e))?;
    Ok(Ok(()))
}

/// A setting's stored JSON, parsed.
pub(crate) fn setting_from_text(key: &str, text: &str) -> Result<serde_json::Value> {
    json_column(text, format_args!("setting `{key}`"))
}

#[cfg(test)]
mod tests {
    use levee_engine::runbook::Control;
    use sqlx::sqlite::SqliteConnectOptions;

    use super::*;
    use crate::Store;
    use crate::conformance::{NOW_MS, TestRun, audit_entry, control, create_test_run, wide_plan};

    /// Drives one batch by hand, so the commits are certain to share it: each sees the
    /// versions the ones before it left, a failed check changes nothing, and the rest of the
    /// batch commits.
    #[tokio::test]
    async fn commits_in_one_batch_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("levee.db");
        let store = crate::SqliteStore::open(&path).await.unwrap();
        let mut run = TestRun::new("run-1", wide_plan(3), NOW_MS);
        create_test_run(&store, &run, None, "deploy").await;
        store.close().await;

        let options = SqliteConnectOptions::new().filename(&path);
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .unwrap();
        let mut batch = RunBatch::default();
        let mut audit = Vec::new();
        batch.load(&mut conn, &["ghost", "run-1"]).await.unwrap();
        let before = run.state.clone();

        let start = run.decide(&control(Control::Start), NOW_MS + 1);
        let mut commit = run.commit_of(start.clone());
        commit.audits.push(audit_entry("t", "run.control", "first"));
        batch
            .commit(&mut conn, commit, &mut audit)
            .await
            .unwrap()
            .unwrap();
        run.state.commit(&start);

        // Decided against version 1, which the first commit of the batch moved on from.
        let stale_run = TestRun {
            id: "run-1".to_string(),
            plan: wide_plan(3),
            state: before,
        };
        let mut stale = stale_run.commit_of(stale_run.decide(&control(Control::Start), NOW_MS));
        stale.audits.push(audit_entry("t", "run.control", "stale"));
        let result = batch.commit(&mut conn, stale, &mut audit).await.unwrap();
        assert!(matches!(result, Err(Error::Conflict(_))), "{result:?}");

        // Decided against version 2, which only this batch knows about yet.
        let pause = run.decide(&control(Control::Pause), NOW_MS + 2);
        let second = run.commit_of(pause.clone());
        batch
            .commit(&mut conn, second, &mut audit)
            .await
            .unwrap()
            .unwrap();
        run.state.commit(&pause);

        let mut ghost = run.commit_of(run.decide(&control(Control::Resume), NOW_MS + 3));
        ghost.run_id = "ghost".to_string();
        let result = batch.commit(&mut conn, ghost, &mut audit).await.unwrap();
        assert!(matches!(result, Err(Error::Conflict(_))), "{result:?}");

        assert_eq!(
            audit.iter().map(|a| a.target.as_str()).collect::<Vec<_>>(),
            vec!["first"],
            "only the commits that passed their check bring their audits"
        );
        batch.flush(&mut conn).await.unwrap();
        sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();

        let store = crate::SqliteStore::open(&path).await.unwrap();
        let stored = store.load_run("run-1").await.unwrap().unwrap();
        assert_eq!(stored.state, run.state);
        assert_eq!(stored.state.run.version, 3);
        let journal = store.run_journal("run-1", 0, 0).await.unwrap();
        assert_eq!(journal.len(), start.journal.len() + pause.journal.len());
        let summary = &store.runs(&crate::RunFilter::default()).await.unwrap()[0];
        assert_eq!((summary.tasks_running, summary.version), (3, 3));
        store.close().await;
    }
}
