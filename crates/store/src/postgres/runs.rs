//! Runs: the `runs` row, one `run_tasks` row per task, the `run_journal`, `task_outputs`, and
//! the `settings` table. Rows to records, the reads the store answers, and the writer's part of
//! a batch ([`RunBatch`]).
//!
//! Run commits are compare-and-set on the run's version. The batch locks the rows of the runs
//! its commits name when it begins, so the versions it reads stay true until it commits; it
//! keeps an overlay of them, so two commits of the same run in one batch chain up, and a
//! commit that fails its check is answered `Conflict` without touching the rest of the batch.
//! The rows of the commits that pass are written just before the commit, and the `UPDATE` of
//! each run row names the version it was locked at: if it ever matched nothing, something
//! changed the row behind the lock, and the batch fails rather than overwrite it.

use std::collections::{BTreeMap, HashMap};

use levee_engine::runbook::{RunRecord, RunState, RunStatus, TaskRecord};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use super::codec::{array, check_text};
use super::writer::{Abort, abort, check_audit};
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

/// What a stored run holds besides its tasks, read by [`read_run`].
const RUN_COLUMNS: &str = "id, name, runbook, runbook_version, s.params, s.spec, created_by, \
     status, version, created_at_ms, started_at_ms, started_by, finished_at_ms, outcome, \
     max_parallel";

const TASK_COLUMNS: &str = "run_id, idx, task_id, status, started_at_ms, finished_at_ms, record";

/// `UNNEST` of the seven task columns, in [`TASK_COLUMNS`] order.
const TASK_UNNEST: &str = "UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], \
     $5::bigint[], $6::bigint[], $7::text[])";

fn run_status(row: &PgRow, id: &str) -> Result<RunStatus> {
    let status: String = column(row, "runs", "status")?;
    run_status_from_name(&status).ok_or_else(|| {
        corrupt(
            format_args!("run `{id}`"),
            format_args!("unknown status `{status}`"),
        )
    })
}

/// Reads a listing line selected with [`RUN_SUMMARY_COLUMNS`].
pub(crate) fn run_summary_from_row(row: &PgRow) -> Result<RunSummary> {
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

/// A run with every task record in plan order, read on `conn`: the caller makes the two
/// statements see one commit (a repeatable-read transaction, or the writer's own). The outer
/// error is the database's; the inner one a stored row that does not decode.
pub(crate) async fn read_run(
    conn: &mut PgConnection,
    id: &str,
) -> std::result::Result<Result<Option<StoredRun>>, sqlx::Error> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs JOIN run_specs s ON s.run_id = runs.id WHERE runs.id = $1"
    );
    let Some(row) = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(Ok(None));
    };
    let rows = sqlx::query("SELECT idx, record FROM run_tasks WHERE run_id = $1 ORDER BY idx")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(decode_run(id, &row, &rows))
}

fn decode_run(id: &str, row: &PgRow, task_rows: &[PgRow]) -> Result<Option<StoredRun>> {
    let what = format!("run `{id}`");
    let params: String = column(row, "run_specs", "params")?;
    let spec: String = column(row, "run_specs", "spec")?;
    let max_parallel: i64 = column(row, "runs", "max_parallel")?;
    let run = RunRecord {
        status: run_status(row, id)?,
        max_parallel: count(max_parallel, &what)?,
        version: column(row, "runs", "version")?,
        created_at_ms: column(row, "runs", "created_at_ms")?,
        started_at_ms: column(row, "runs", "started_at_ms")?,
        started_by: column(row, "runs", "started_by")?,
        finished_at_ms: column(row, "runs", "finished_at_ms")?,
        outcome: column(row, "runs", "outcome")?,
    };
    let mut tasks = Vec::with_capacity(task_rows.len());
    for (expected, task_row) in task_rows.iter().enumerate() {
        let idx: i64 = column(task_row, "run_tasks", "idx")?;
        if usize::try_from(idx).ok() != Some(expected) {
            return Err(corrupt(
                &what,
                format_args!("task rows skip from index {expected} to {idx}"),
            ));
        }
        let record: String = column(task_row, "run_tasks", "record")?;
        tasks.push(json_column::<TaskRecord>(
            &record,
            format_args!("{what} task {idx}"),
        )?);
    }
    Ok(Some(StoredRun {
        id: column(row, "runs", "id")?,
        name: column(row, "runs", "name")?,
        runbook: column(row, "runs", "runbook")?,
        runbook_version: column(row, "runs", "runbook_version")?,
        params: json_column(&params, format_args!("{what} params"))?,
        spec: json_column(&spec, format_args!("{what} spec"))?,
        created_by: column(row, "runs", "created_by")?,
        state: RunState { run, tasks },
    }))
}

/// Reads a journal line selected as `seq, entry`.
pub(crate) fn journal_from_row(row: &PgRow) -> Result<JournalRecord> {
    let seq: i64 = column(row, "run_journal", "seq")?;
    let entry: String = column(row, "run_journal", "entry")?;
    Ok(JournalRecord {
        seq,
        entry: json_column(&entry, format_args!("run journal seq {seq}"))?,
    })
}

/// Reads an output selected as `task, attempt, at_ms, outcome, text, cut_bytes, data`.
pub(crate) fn output_from_row(row: &PgRow) -> Result<TaskOutput> {
    let task: String = column(row, "task_outputs", "task")?;
    let attempt: i64 = column(row, "task_outputs", "attempt")?;
    let what = format!("output of task `{task}` attempt {attempt}");
    let cut_bytes: i64 = column(row, "task_outputs", "cut_bytes")?;
    let data: String = column(row, "task_outputs", "data")?;
    let text: Vec<u8> = column(row, "task_outputs", "text")?;
    Ok(TaskOutput {
        attempt: count(attempt, &what)?,
        at_ms: column(row, "task_outputs", "at_ms")?,
        outcome: column(row, "task_outputs", "outcome")?,
        text: String::from_utf8(text)
            .map_err(|e| corrupt(&what, format_args!("the text is not UTF-8: {e}")))?,
        cut_bytes: u64::try_from(cut_bytes)
            .map_err(|_| corrupt(&what, format_args!("cut_bytes {cut_bytes} is negative")))?,
        data: json_column(&data, format_args!("{what} data"))?,
        task,
    })
}

/// Reads a duration selected as `task_id, run_id, duration_ms, finished_at_ms`.
pub(crate) fn duration_from_row(row: &PgRow) -> Result<TaskDuration> {
    let duration_ms: i64 = column(row, "run_tasks", "duration_ms")?;
    Ok(TaskDuration {
        task: column(row, "run_tasks", "task_id")?,
        run_id: column(row, "run_tasks", "run_id")?,
        // The query never returns a negative duration (a clock that went backwards is 0).
        duration_ms: u64::try_from(duration_ms).unwrap_or(0),
        finished_at_ms: column(row, "run_tasks", "finished_at_ms")?,
    })
}

/// A setting's stored JSON, parsed.
pub(crate) fn setting_from_text(key: &str, text: &str) -> Result<serde_json::Value> {
    json_column(text, format_args!("setting `{key}`"))
}

/// The texts of a run record that PostgreSQL stores as `text`.
fn run_texts(run: &RunRecord) -> impl Iterator<Item = &str> {
    run.started_by
        .as_deref()
        .into_iter()
        .chain(run.outcome.as_deref())
}

/// The runs part of an open write transaction: the version overlay and the rows to write.
#[derive(Default)]
pub(crate) struct RunBatch {
    slots: HashMap<String, RunSlot>,
    /// The version each run's row has in the database now: what the flush's `UPDATE`
    /// expects to find.
    stored_versions: HashMap<String, i64>,
    /// Run rows to update, the latest change of each run.
    rows: HashMap<String, RunRecord>,
    /// Task rows to write, the latest of each `(run, index)`.
    tasks: BTreeMap<(String, i64), TaskRow>,
    journal: Vec<JournalRow>,
    outputs: Vec<OutputRow>,
}

impl RunBatch {
    /// Locks and reads the versions of these runs (sorted ids) into the overlay, with one
    /// query; runs it already knows are skipped.
    pub(crate) async fn lock(
        &mut self,
        conn: &mut PgConnection,
        ids: &[&str],
    ) -> Result<(), Abort> {
        let mut unknown: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !self.slots.contains_key(*id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort_unstable();
        let rows = sqlx::query(
            "SELECT id, version, tasks_total, epoch FROM runs WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&unknown)
        .fetch_all(&mut *conn)
        .await
        .map_err(abort("lock runs"))?;
        for id in unknown {
            self.slots.insert(id.to_string(), RunSlot::Missing);
        }
        for row in &rows {
            let id: String = row.try_get("id").map_err(abort("lock runs"))?;
            let version: i64 = row.try_get("version").map_err(abort("lock runs"))?;
            let total: i64 = row.try_get("tasks_total").map_err(abort("lock runs"))?;
            let tasks = usize::try_from(total).unwrap_or(0);
            let epoch: i64 = row.try_get("epoch").map_err(abort("lock runs"))?;
            self.stored_versions.insert(id.clone(), version);
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

    /// Checks a commit against the overlay and queues its rows. An error (`Conflict` when the
    /// run is missing or moved on, `Corrupt` for a change the store cannot write) leaves the
    /// batch exactly as it was.
    pub(crate) async fn commit(
        &mut self,
        conn: &mut PgConnection,
        commit: &RunCommit,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<Result<()>, Abort> {
        self.lock(conn, &[commit.run_id.as_str()]).await?;
        Ok(self.check_and_queue(commit, audit))
    }

    fn check_and_queue(&mut self, commit: &RunCommit, audit: &mut Vec<AuditEntry>) -> Result<()> {
        let RunCommit {
            run_id,
            expected_version,
            change,
            outputs,
            audits,
            epoch,
        } = commit;
        let what = format!("a commit of run `{run_id}`");
        check_text(&what, run_texts(&change.run))?;
        check_text(&what, change.tasks.iter().map(|(_, task)| task.id.as_str()))?;
        check_text(
            &what,
            change
                .journal
                .iter()
                .flat_map(|e| std::iter::once(e.actor.as_str()).chain(e.task.as_deref())),
        )?;
        check_text(
            &what,
            outputs
                .iter()
                .flat_map(|o| [o.task.as_str(), o.outcome.as_str()]),
        )?;
        check_audit(audits)?;
        let slot = self.slots.get(run_id).copied();
        let checked = check_commit(
            slot,
            run_id,
            *expected_version,
            *epoch,
            change.clone(),
            outputs.clone(),
        )?;
        if let Some(RunSlot::Present { version, .. }) = self.slots.get_mut(run_id) {
            *version = checked.run.version;
        }
        for row in checked.tasks {
            self.tasks.insert((row.run_id.clone(), row.idx), row);
        }
        self.journal.extend(checked.journal);
        self.outputs.extend(checked.outputs);
        self.rows.insert(run_id.clone(), checked.run);
        audit.extend(audits.iter().cloned());
        Ok(())
    }

    /// Creates a run, or finds the one that already has its name. Runs at once (not at
    /// flush), so a later create or commit in the same batch sees it.
    pub(crate) async fn create(
        &mut self,
        conn: &mut PgConnection,
        run: &NewRun,
        entry: Option<&AuditEntry>,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<Result<CreatedRun>, Abort> {
        let id = run.id.as_str();
        let state = &run.state;
        let what = format!("the new run `{id}`");
        let texts = [id, run.runbook.as_str(), run.created_by.as_str()]
            .into_iter()
            .chain(run.name.as_deref())
            .chain(run_texts(&state.run))
            .chain(state.tasks.iter().map(|task| task.id.as_str()));
        if let Err(error) = check_text(&what, texts).and_then(|()| check_audit(entry)) {
            return Ok(Err(error));
        }
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
        // ON CONFLICT DO NOTHING rather than a unique violation, which would abort the whole
        // transaction. A run with the same id or name that another replica is creating is
        // waited for.
        let inserted = sqlx::query(
            "INSERT INTO runs (id, name, runbook, runbook_version, created_by, \
             status, version, created_at_ms, started_at_ms, started_by, finished_at_ms, outcome, \
             max_parallel, tasks_total, tasks_done, tasks_running, tasks_failed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT DO NOTHING RETURNING id",
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
        .fetch_optional(&mut *conn)
        .await
        .map_err(abort("create a run"))?;
        if inserted.is_none() {
            return self.existing(conn, run, entry, audit).await;
        }
        sqlx::query("INSERT INTO run_specs (run_id, params, spec) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(&params)
            .bind(&spec)
            .execute(&mut *conn)
            .await
            .map_err(abort("store a run's spec"))?;
        let sql = format!("INSERT INTO run_tasks ({TASK_COLUMNS}) SELECT * FROM {TASK_UNNEST}");
        bind_tasks(sqlx::query(&sql), &tasks)
            .execute(&mut *conn)
            .await
            .map_err(abort("store a run's tasks"))?;
        self.stored_versions
            .insert(run.id.clone(), state.run.version);
        self.slots.insert(
            run.id.clone(),
            RunSlot::Present {
                version: state.run.version,
                tasks: state.tasks.len(),
                epoch: 0,
            },
        );
        push_audit(audit, entry.cloned(), "ok");
        Ok(Ok(CreatedRun::Created(StoredRun {
            id: run.id.clone(),
            name: run.name.clone(),
            runbook: run.runbook.clone(),
            runbook_version: run.runbook_version,
            params: run.params.clone(),
            spec: run.spec.clone(),
            created_by: run.created_by.clone(),
            state: run.state.clone(),
        })))
    }

    /// The answer to a create whose run could not be inserted: the run that has its name, as
    /// this batch leaves it, or `Conflict` if only its id is taken.
    async fn existing(
        &mut self,
        conn: &mut PgConnection,
        run: &NewRun,
        entry: Option<&AuditEntry>,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<Result<CreatedRun>, Abort> {
        let named = match &run.name {
            Some(name) => sqlx::query_scalar::<_, String>("SELECT id FROM runs WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
                .map_err(abort("look up a run by name"))?,
            None => None,
        };
        let Some(existing) = named else {
            push_audit(audit, entry.cloned(), "conflict");
            return Ok(Err(Error::Conflict(format!(
                "a run with id `{}` already exists",
                run.id
            ))));
        };
        if self.rows.contains_key(&existing) {
            self.flush(conn).await?;
        }
        match read_run(conn, &existing)
            .await
            .map_err(abort("read a run"))?
        {
            Ok(Some(stored)) => {
                push_audit(audit, entry.cloned(), "noop");
                Ok(Ok(CreatedRun::Existing(stored)))
            }
            Ok(None) => Ok(Err(Error::Corrupt(format!(
                "run `{existing}` named `{}` vanished while it was read",
                run.name.as_deref().unwrap_or_default()
            )))),
            Err(error) => Ok(Err(error)),
        }
    }

    /// Writes the queued run rows, task rows, journal entries and outputs, one statement per
    /// table, and empties the queues.
    pub(crate) async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), Abort> {
        let rows: Vec<(String, RunRecord)> = self.rows.drain().collect();
        self.update_runs(conn, &rows).await?;
        let tasks: Vec<TaskRow> = std::mem::take(&mut self.tasks).into_values().collect();
        update_tasks(conn, &tasks).await?;
        insert_journal(conn, &std::mem::take(&mut self.journal)).await?;
        insert_outputs(conn, &std::mem::take(&mut self.outputs)).await
    }

    /// Updates the run-level columns of several runs with one statement, each only if its row
    /// is still at the version the batch locked it at.
    async fn update_runs(
        &mut self,
        conn: &mut PgConnection,
        rows: &[(String, RunRecord)],
    ) -> Result<(), Abort> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut expected = Vec::with_capacity(rows.len());
        for (id, _) in rows {
            let Some(version) = self.stored_versions.get(id) else {
                return Err(Abort::fatal(Error::Corrupt(format!(
                    "run `{id}` was changed by a batch that never read it"
                ))));
            };
            expected.push(*version);
        }
        let updated = sqlx::query(
            "UPDATE runs SET status = v.status, version = v.version, \
             started_at_ms = v.started_at_ms, started_by = v.started_by, \
             finished_at_ms = v.finished_at_ms, outcome = v.outcome, \
             max_parallel = v.max_parallel \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], \
                 $6::text[], $7::bigint[], $8::text[], $9::bigint[]) \
                 AS v (id, expected, status, version, started_at_ms, started_by, \
                     finished_at_ms, outcome, max_parallel) \
             WHERE runs.id = v.id AND runs.version = v.expected",
        )
        .bind(array(rows, |(id, _)| id.as_str()))
        .bind(&expected)
        .bind(array(rows, |(_, r)| r.status.name()))
        .bind(array(rows, |(_, r)| r.version))
        .bind(array(rows, |(_, r)| r.started_at_ms))
        .bind(array(rows, |(_, r)| r.started_by.as_deref()))
        .bind(array(rows, |(_, r)| r.finished_at_ms))
        .bind(array(rows, |(_, r)| r.outcome.as_deref()))
        .bind(array(rows, |(_, r)| i64::from(r.max_parallel)))
        .execute(&mut *conn)
        .await
        .map_err(abort("write runs"))?;
        if updated.rows_affected() != rows.len() as u64 {
            return Err(Abort::fatal(Error::Unavailable(format!(
                "{} of {} run rows were not at the version this batch locked them at: something \
                 wrote them without the store's locks; nothing was committed",
                rows.len() as u64 - updated.rows_affected(),
                rows.len()
            ))));
        }
        for (id, run) in rows {
            self.stored_versions.insert(id.clone(), run.version);
        }
        Ok(())
    }
}

fn bind_tasks<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    rows: &'q [TaskRow],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(array(rows, |r| r.run_id.as_str()))
        .bind(array(rows, |r| r.idx))
        .bind(array(rows, |r| r.task_id.as_str()))
        .bind(array(rows, |r| r.status))
        .bind(array(rows, |r| r.started_at_ms))
        .bind(array(rows, |r| r.finished_at_ms))
        .bind(array(rows, |r| r.record.as_str()))
}

/// Updates task rows (which fires the counting trigger once for the statement).
async fn update_tasks(conn: &mut PgConnection, rows: &[TaskRow]) -> Result<(), Abort> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE run_tasks SET task_id = v.task_id, status = v.status, \
         started_at_ms = v.started_at_ms, finished_at_ms = v.finished_at_ms, record = v.record \
         FROM {TASK_UNNEST} AS v ({TASK_COLUMNS}) \
         WHERE run_tasks.run_id = v.run_id AND run_tasks.idx = v.idx"
    );
    let updated = bind_tasks(sqlx::query(&sql), rows)
        .execute(&mut *conn)
        .await
        .map_err(abort("write run tasks"))?;
    if updated.rows_affected() != rows.len() as u64 {
        return Err(Abort::fatal(Error::Corrupt(format!(
            "{} of {} task rows to update do not exist",
            rows.len() as u64 - updated.rows_affected(),
            rows.len()
        ))));
    }
    Ok(())
}

/// Appends journal entries; rows are numbered so their seqs follow the order given.
async fn insert_journal(conn: &mut PgConnection, rows: &[JournalRow]) -> Result<(), Abort> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO run_journal (run_id, version, at_ms, task, actor, kind, entry) \
         SELECT run_id, version, at_ms, task, actor, kind, entry \
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], \
             $6::text[], $7::text[]) \
             WITH ORDINALITY AS v (run_id, version, at_ms, task, actor, kind, entry, n) \
         ORDER BY n",
    )
    .bind(array(rows, |r| r.run_id.as_str()))
    .bind(array(rows, |r| r.version))
    .bind(array(rows, |r| r.at_ms))
    .bind(array(rows, |r| r.task.as_deref()))
    .bind(array(rows, |r| r.actor.as_str()))
    .bind(array(rows, |r| r.kind.as_str()))
    .bind(array(rows, |r| r.entry.as_str()))
    .execute(&mut *conn)
    .await
    .map_err(abort("write the run journal"))?;
    Ok(())
}

/// Appends task outputs; rows are numbered so their seqs follow the order given.
async fn insert_outputs(conn: &mut PgConnection, rows: &[OutputRow]) -> Result<(), Abort> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO task_outputs (run_id, task, attempt, at_ms, outcome, text, cut_bytes, data) \
         SELECT run_id, task, attempt, at_ms, outcome, text, cut_bytes, data \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], \
             $6::bytea[], $7::bigint[], $8::text[]) \
             WITH ORDINALITY AS v (run_id, task, attempt, at_ms, outcome, text, cut_bytes, \
                 data, n) \
         ORDER BY n",
    )
    .bind(array(rows, |r| r.run_id.as_str()))
    .bind(array(rows, |r| r.output.task.as_str()))
    .bind(array(rows, |r| i64::from(r.output.attempt)))
    .bind(array(rows, |r| r.output.at_ms))
    .bind(array(rows, |r| r.output.outcome.as_str()))
    .bind(array(rows, |r| r.output.text.as_bytes()))
    .bind(array(rows, |r| r.cut_bytes))
    .bind(array(rows, |r| r.data.as_str()))
    .execute(&mut *conn)
    .await
    .map_err(abort("write task outputs"))?;
    Ok(())
}

/// Sets a setting; `at_ms` is the audit entry's time, if there is one.
pub(crate) async fn write_setting(
    conn: &mut PgConnection,
    key: &str,
    value: &serde_json::Value,
    at_ms: Option<i64>,
) -> Result<Result<()>, Abort> {
    let text = match encode(value, format_args!("setting `{key}`")) {
        Ok(text) => text,
        Err(error) => return Ok(Err(error)),
    };
    sqlx::query(
        "INSERT INTO settings (key, value, updated_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
         updated_at_ms = excluded.updated_at_ms",
    )
    .bind(key)
    .bind(&text)
    .bind(at_ms)
    .execute(&mut *conn)
    .await
    .map_err(abort("write a setting"))?;
    Ok(Ok(()))
}
