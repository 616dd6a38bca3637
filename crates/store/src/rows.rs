//! What both databases store the same way: the stored spelling of the engine's enums, values
//! read back from columns, the encoded rows of a run commit and the checks a commit passes
//! before any of it is written.
//!
//! Each store has its own SQL; everything here is what must not differ between stores, so a
//! run written by one reads back the same from another.

use levee_engine::HistoryKind;
use levee_engine::runbook::{Change as RunChange, JournalEntry, RunRecord, RunStatus, TaskRecord};

use crate::{Error, MAX_PAGE_ROWS, Result, TaskOutput};

/// Task statuses counted as done (succeeded or skipped), running, and failed (failed, or
/// stalled waiting for a human). Each store's `run_tasks_count` trigger uses the same names; a
/// test checks they are the engine's and that every migration spells them.
pub(crate) const DONE_STATUSES: [&str; 2] = ["succeeded", "skipped"];
pub(crate) const RUNNING_STATUS: &str = "running";
pub(crate) const FAILED_STATUSES: [&str; 2] = ["failed", "stalled"];

/// The runs a replica executes, and so the runs leases are claimed on and listed for:
/// running, paused, or pending with a start time. The same SQL in both databases.
pub(crate) const ACTIVE_RUN_SQL: &str = "(status IN ('running', 'paused') \
     OR (status = 'pending' AND started_at_ms IS NOT NULL))";

/// Leases as `ReplicaRecord`s: every replica with its leases, from replica rows
/// `(id, address, started_at_ms, seen_at_ms)` and lease rows `(owner, lease)`.
pub(crate) fn replicas_with_leases(
    replicas: Vec<(String, String, i64, i64)>,
    leases: Vec<(String, crate::Lease)>,
) -> Vec<crate::ReplicaRecord> {
    let mut by_owner: std::collections::HashMap<String, Vec<crate::Lease>> =
        std::collections::HashMap::new();
    for (owner, lease) in leases {
        by_owner.entry(owner).or_default().push(lease);
    }
    let mut records: Vec<crate::ReplicaRecord> = replicas
        .into_iter()
        .map(|(id, address, started_at_ms, seen_at_ms)| {
            let mut leases = by_owner.remove(&id).unwrap_or_default();
            leases.sort_by(|a, b| a.run_id.as_bytes().cmp(b.run_id.as_bytes()));
            crate::ReplicaRecord {
                id,
                address,
                started_at_ms,
                seen_at_ms,
                leases,
            }
        })
        .collect();
    records.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
    records
}

/// Sorts leases by run id as bytes, as every lease answer is.
pub(crate) fn sorted_leases(mut leases: Vec<crate::Lease>) -> Vec<crate::Lease> {
    leases.sort_by(|a, b| a.run_id.as_bytes().cmp(b.run_id.as_bytes()));
    leases
}

/// `limit` as the listing functions take it: 0 or too large means [`MAX_PAGE_ROWS`].
pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(if limit == 0 {
        MAX_PAGE_ROWS
    } else {
        limit.min(MAX_PAGE_ROWS)
    })
}

pub(crate) fn corrupt(what: impl std::fmt::Display, error: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{what}: {error}"))
}

/// A column of a row, by name; a missing column or a value of the wrong type is `Corrupt`.
pub(crate) fn column<'r, R, T>(row: &'r R, table: &str, name: &str) -> Result<T>
where
    R: sqlx::Row,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'n> &'n str: sqlx::ColumnIndex<R>,
{
    row.try_get(name)
        .map_err(|e| corrupt(format_args!("{table}.{name}"), e))
}

/// Stored JSON text, parsed; text that does not parse is `Corrupt`.
pub(crate) fn json_column<T: serde::de::DeserializeOwned>(
    text: &str,
    what: impl std::fmt::Display,
) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| corrupt(what, format_args!("stored JSON does not parse: {e}")))
}

/// A value as the JSON text the stores keep.
pub(crate) fn encode<T: serde::Serialize + ?Sized>(
    value: &T,
    what: impl std::fmt::Display,
) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// A stored count or counter, which the engine keeps as `u32`.
pub(crate) fn count(value: i64, what: impl std::fmt::Display) -> Result<u32> {
    u32::try_from(value).map_err(|_| corrupt(what, format_args!("count {value} is out of range")))
}

/// The stored spelling of a history kind: the engine's serde name. The match is exhaustive on
/// purpose, so a new kind in the engine does not compile here until it has a stored name.
pub(crate) fn history_kind_name(kind: HistoryKind) -> &'static str {
    match kind {
        HistoryKind::Created => "created",
        HistoryKind::Counted => "counted",
        HistoryKind::Transition => "transition",
        HistoryKind::Timer => "timer",
        HistoryKind::ReplayStarted => "replay_started",
        HistoryKind::ReplayStep => "replay_step",
        HistoryKind::ReplayFinished => "replay_finished",
    }
}

pub(crate) fn history_kind_from_name(name: &str) -> Option<HistoryKind> {
    Some(match name {
        "created" => HistoryKind::Created,
        "counted" => HistoryKind::Counted,
        "transition" => HistoryKind::Transition,
        "timer" => HistoryKind::Timer,
        "replay_started" => HistoryKind::ReplayStarted,
        "replay_step" => HistoryKind::ReplayStep,
        "replay_finished" => HistoryKind::ReplayFinished,
        _ => return None,
    })
}

/// A stored run status name back to the engine's status.
pub(crate) fn run_status_from_name(name: &str) -> Option<RunStatus> {
    Some(match name {
        "pending" => RunStatus::Pending,
        "running" => RunStatus::Running,
        "paused" => RunStatus::Paused,
        "succeeded" => RunStatus::Succeeded,
        "failed" => RunStatus::Failed,
        "aborted" => RunStatus::Aborted,
        _ => return None,
    })
}

/// How many tasks are done, running and failed, as the `runs` counters keep them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskCounts {
    pub(crate) done: i64,
    pub(crate) running: i64,
    pub(crate) failed: i64,
}

impl TaskCounts {
    pub(crate) fn of(tasks: &[TaskRecord]) -> TaskCounts {
        let mut counts = TaskCounts::default();
        for task in tasks {
            let name = task.status.name();
            if DONE_STATUSES.contains(&name) {
                counts.done += 1;
            } else if name == RUNNING_STATUS {
                counts.running += 1;
            } else if FAILED_STATUSES.contains(&name) {
                counts.failed += 1;
            }
        }
        counts
    }
}

/// A `run_tasks` row, encoded.
pub(crate) struct TaskRow {
    pub(crate) run_id: String,
    pub(crate) idx: i64,
    pub(crate) task_id: String,
    pub(crate) status: &'static str,
    pub(crate) started_at_ms: Option<i64>,
    pub(crate) finished_at_ms: Option<i64>,
    pub(crate) record: String,
}

impl TaskRow {
    pub(crate) fn encode(run_id: &str, index: usize, record: &TaskRecord) -> Result<TaskRow> {
        let idx = i64::try_from(index).map_err(|_| {
            Error::Corrupt(format!(
                "run `{run_id}`: task index {index} is out of range"
            ))
        })?;
        Ok(TaskRow {
            run_id: run_id.to_string(),
            idx,
            task_id: record.id.clone(),
            status: record.status.name(),
            started_at_ms: record.started_at_ms,
            finished_at_ms: record.finished_at_ms,
            record: encode(record, format_args!("run `{run_id}` task `{}`", record.id))?,
        })
    }
}

/// A `run_journal` row, encoded; its seq is assigned by the insert.
pub(crate) struct JournalRow {
    pub(crate) run_id: String,
    pub(crate) version: i64,
    pub(crate) at_ms: i64,
    pub(crate) task: Option<String>,
    pub(crate) actor: String,
    pub(crate) kind: String,
    pub(crate) entry: String,
}

impl JournalRow {
    pub(crate) fn encode(run_id: &str, entry: JournalEntry) -> Result<JournalRow> {
        let what = format_args!("run `{run_id}` journal entry");
        let value = serde_json::to_value(&entry).map_err(|e| corrupt(what, e))?;
        // The kind's serde name, so the column and the JSON never disagree.
        let kind = value
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(JournalRow {
            run_id: run_id.to_string(),
            entry: encode(&value, what)?,
            version: entry.version,
            at_ms: entry.at_ms,
            task: entry.task,
            actor: entry.actor,
            kind,
        })
    }
}

/// A `task_outputs` row, encoded.
pub(crate) struct OutputRow {
    pub(crate) run_id: String,
    pub(crate) cut_bytes: i64,
    pub(crate) data: String,
    pub(crate) output: TaskOutput,
}

impl OutputRow {
    pub(crate) fn encode(run_id: &str, output: TaskOutput) -> Result<OutputRow> {
        let what = format!(
            "run `{run_id}` output of task `{}` attempt {}",
            output.task, output.attempt
        );
        let cut_bytes = i64::try_from(output.cut_bytes).map_err(|_| {
            Error::Corrupt(format!(
                "{what}: cut_bytes {} is too large",
                output.cut_bytes
            ))
        })?;
        Ok(OutputRow {
            run_id: run_id.to_string(),
            cut_bytes,
            data: encode(&output.data, &what)?,
            output,
        })
    }
}

/// What a write transaction knows about one run: missing, or at a version and lease epoch
/// with so many tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunSlot {
    Missing,
    Present {
        version: i64,
        tasks: usize,
        epoch: i64,
    },
}

/// A run commit checked and encoded, not yet written.
pub(crate) struct Checked {
    pub(crate) run: RunRecord,
    pub(crate) tasks: Vec<TaskRow>,
    pub(crate) journal: Vec<JournalRow>,
    pub(crate) outputs: Vec<OutputRow>,
}

/// Checks a run commit against what the transaction knows of the run (`None`: not read) and
/// encodes its rows. `Conflict` when the run is missing or moved on from `expected_version`;
/// `Fenced` when `held_epoch` is given and the run's lease epoch moved on from it (checked
/// before the version: a fenced writer must stop, not retry); `Corrupt` for a change no store
/// can write.
pub(crate) fn check_commit(
    slot: Option<RunSlot>,
    run_id: &str,
    expected_version: i64,
    held_epoch: Option<i64>,
    change: RunChange,
    outputs: Vec<TaskOutput>,
) -> Result<Checked> {
    let Some(RunSlot::Present {
        version,
        tasks,
        epoch,
    }) = slot
    else {
        return Err(Error::Conflict(format!(
            "run `{run_id}` does not exist; the change was not committed"
        )));
    };
    if let Some(held) = held_epoch
        && held != epoch
    {
        return Err(Error::Fenced(format!(
            "run `{run_id}` is at lease epoch {epoch}, not {held}: another replica claimed it;              the change was not committed"
        )));
    }
    if version != expected_version {
        return Err(Error::Conflict(format!(
            "run `{run_id}` is at version {version}, not {expected_version}: it changed \
             after the change was decided, which was not committed"
        )));
    }
    let RunChange {
        run,
        tasks: changed,
        journal,
    } = change;
    if run.version < expected_version {
        return Err(Error::Corrupt(format!(
            "run `{run_id}`: a change decided at version {expected_version} would move it \
             back to version {}",
            run.version
        )));
    }
    if run.max_parallel == 0 {
        return Err(Error::Corrupt(format!(
            "run `{run_id}`: a change sets max_parallel to 0"
        )));
    }
    if let Some((index, _)) = changed.iter().find(|(index, _)| *index >= tasks) {
        return Err(Error::Corrupt(format!(
            "run `{run_id}` has {tasks} tasks; a change names task index {index}"
        )));
    }
    Ok(Checked {
        tasks: changed
            .iter()
            .map(|(index, record)| TaskRow::encode(run_id, *index, record))
            .collect::<Result<_>>()?,
        journal: journal
            .into_iter()
            .map(|entry| JournalRow::encode(run_id, entry))
            .collect::<Result<_>>()?,
        outputs: outputs
            .into_iter()
            .map(|output| OutputRow::encode(run_id, output))
            .collect::<Result<_>>()?,
        run,
    })
}

/// The columns of `drain_test_executions`, in the order the statements bind them.
pub(crate) const DRAIN_TEST_COLUMNS: &str = "id, drain_test, scheduled_ms, trigger, target, \
     state, reason, drain_run, restore_run, created_by, created_at_ms, updated_at_ms, \
     finished_ms, version, report";

/// Inserts a drain test execution unless its id or slot is taken (`?N` placeholders; the
/// PostgreSQL store swaps them for `$N`).
pub(crate) const DRAIN_TEST_INSERT_SQL: &str = "INSERT INTO drain_test_executions (id, \
     drain_test, scheduled_ms, trigger, target, state, reason, drain_run, restore_run, \
     created_by, created_at_ms, updated_at_ms, finished_ms, version, report) VALUES \
     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) ON CONFLICT DO NOTHING";

/// Compare-and-set update of a drain test execution (`?16` is the version before).
pub(crate) const DRAIN_TEST_UPDATE_SQL: &str = "UPDATE drain_test_executions SET \
     drain_test = ?2, scheduled_ms = ?3, trigger = ?4, target = ?5, state = ?6, reason = ?7, \
     drain_run = ?8, restore_run = ?9, created_by = ?10, created_at_ms = ?11, \
     updated_at_ms = ?12, finished_ms = ?13, version = ?14, report = ?15 \
     WHERE id = ?1 AND version = ?16";

/// Checks an execution the store is asked to write.
pub(crate) fn check_drain_test_execution(
    execution: &crate::DrainTestExecution,
    new: bool,
) -> crate::Result<String> {
    if new && execution.version != 1 {
        return Err(crate::Error::Corrupt(format!(
            "a new drain test execution starts at version 1, not {}",
            execution.version
        )));
    }
    if execution.version < 1 {
        return Err(crate::Error::Corrupt(format!(
            "drain test execution `{}` has version {}",
            execution.id, execution.version
        )));
    }
    encode(
        &execution.report,
        format_args!("drain test execution `{}` report", execution.id),
    )
}

/// The `SELECT` of executions as `filter` says (`?N` placeholders: `?1` the drain test).
pub(crate) fn drain_test_list_sql(filter: &crate::DrainTestFilter) -> String {
    let mut sql = format!("SELECT {DRAIN_TEST_COLUMNS} FROM drain_test_executions WHERE 1 = 1");
    if filter.drain_test.is_some() {
        sql.push_str(" AND drain_test = ?1");
    }
    if filter.active_only {
        sql.push_str(" AND state NOT IN ('passed', 'failed', 'skipped')");
    }
    let limit = if filter.limit == 0 {
        crate::MAX_PAGE_ROWS
    } else {
        filter.limit.min(crate::MAX_PAGE_ROWS)
    };
    sql.push_str(&format!(
        " ORDER BY scheduled_ms DESC, id DESC LIMIT {limit}"
    ));
    sql
}

#[cfg(test)]
mod tests {
    use levee_engine::runbook::{StallCause, TaskStatus};

    use super::*;

    #[test]
    fn history_kind_names_match_the_engine_serde_names() {
        let kinds = [
            HistoryKind::Created,
            HistoryKind::Counted,
            HistoryKind::Transition,
            HistoryKind::Timer,
            HistoryKind::ReplayStarted,
            HistoryKind::ReplayStep,
            HistoryKind::ReplayFinished,
        ];
        for kind in kinds {
            let serde_name = serde_json::to_value(kind).unwrap();
            assert_eq!(serde_name, history_kind_name(kind), "{kind:?}");
            assert_eq!(history_kind_from_name(history_kind_name(kind)), Some(kind));
        }
        assert_eq!(history_kind_from_name("exploded"), None);
    }

    #[test]
    fn counted_status_names_are_the_engine_names() {
        assert_eq!(
            DONE_STATUSES,
            [TaskStatus::Succeeded.name(), TaskStatus::Skipped.name()]
        );
        let running = TaskStatus::Running {
            attempt: 1,
            started_at_ms: 0,
            in_flight: false,
        };
        assert_eq!(RUNNING_STATUS, running.name());
        let failed = TaskStatus::Failed {
            error: String::new(),
        };
        let stalled = TaskStatus::Stalled {
            cause: StallCause::TimedOut,
            reason: String::new(),
        };
        assert_eq!(FAILED_STATUSES, [failed.name(), stalled.name()]);
        // Every migration's trigger and index spell the same names.
        let migrations = [
            include_str!("../migrations/sqlite/0002_runs.sql"),
            include_str!("../migrations/postgres/0002_runs.sql"),
        ];
        for migration in migrations {
            for name in DONE_STATUSES.iter().chain(&FAILED_STATUSES) {
                assert!(migration.contains(&format!("'{name}'")), "{name}");
            }
            assert!(migration.contains(&format!("'{RUNNING_STATUS}'")));
        }
    }

    #[test]
    fn run_status_names_round_trip() {
        for status in [
            RunStatus::Pending,
            RunStatus::Running,
            RunStatus::Paused,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Aborted,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.name());
            assert_eq!(run_status_from_name(status.name()), Some(status));
        }
        assert_eq!(run_status_from_name("exploded"), None);
    }

    #[test]
    fn page_limits_are_bounded() {
        assert_eq!(page_limit(0), i64::from(MAX_PAGE_ROWS));
        assert_eq!(page_limit(7), 7);
        assert_eq!(page_limit(u32::MAX), i64::from(MAX_PAGE_ROWS));
    }
}
