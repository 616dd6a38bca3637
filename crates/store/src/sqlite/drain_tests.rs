//! Drain test executions on SQLite: each call is one statement outside the
//! writer's batches, like the run leases. Claiming a slot is one `INSERT ... ON CONFLICT DO
//! NOTHING` against the primary key and the unique (drain test, scheduled time), so of several
//! replicas claiming one firing exactly one stores it; updates are compare-and-set on the
//! version.

use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::codec::db_error;
use crate::rows::{
    DRAIN_TEST_COLUMNS, DRAIN_TEST_INSERT_SQL, DRAIN_TEST_UPDATE_SQL, check_drain_test_execution,
    drain_test_list_sql,
};
use crate::{DrainTestExecution, DrainTestFilter, Error, Result};

fn sql(text: &str) -> String {
    text.to_string()
}

fn from_row(row: &SqliteRow) -> Result<DrainTestExecution> {
    let read = |e| db_error("read a drain test execution", e);
    let id: String = row.try_get("id").map_err(read)?;
    let report: String = row.try_get("report").map_err(read)?;
    let report = serde_json::from_str(&report)
        .map_err(|e| Error::Corrupt(format!("drain test execution `{id}` report: {e}")))?;
    Ok(DrainTestExecution {
        drain_test: row.try_get("drain_test").map_err(read)?,
        scheduled_ms: row.try_get("scheduled_ms").map_err(read)?,
        trigger: row.try_get("trigger").map_err(read)?,
        target: row.try_get("target").map_err(read)?,
        state: row.try_get("state").map_err(read)?,
        reason: row.try_get("reason").map_err(read)?,
        drain_run: row.try_get("drain_run").map_err(read)?,
        restore_run: row.try_get("restore_run").map_err(read)?,
        created_by: row.try_get("created_by").map_err(read)?,
        created_at_ms: row.try_get("created_at_ms").map_err(read)?,
        updated_at_ms: row.try_get("updated_at_ms").map_err(read)?,
        finished_ms: row.try_get("finished_ms").map_err(read)?,
        version: row.try_get("version").map_err(read)?,
        report,
        id,
    })
}

pub(crate) async fn claim(pool: &SqlitePool, e: &DrainTestExecution) -> Result<bool> {
    let report = check_drain_test_execution(e, true)?;
    let done = sqlx::query(&sql(DRAIN_TEST_INSERT_SQL))
        .bind(&e.id)
        .bind(&e.drain_test)
        .bind(e.scheduled_ms)
        .bind(&e.trigger)
        .bind(&e.target)
        .bind(&e.state)
        .bind(&e.reason)
        .bind(&e.drain_run)
        .bind(&e.restore_run)
        .bind(&e.created_by)
        .bind(e.created_at_ms)
        .bind(e.updated_at_ms)
        .bind(e.finished_ms)
        .bind(e.version)
        .bind(&report)
        .execute(pool)
        .await
        .map_err(|e| db_error("claim a drain test slot", e))?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn update(pool: &SqlitePool, e: &DrainTestExecution) -> Result<()> {
    let report = check_drain_test_execution(e, false)?;
    let done = sqlx::query(&sql(DRAIN_TEST_UPDATE_SQL))
        .bind(&e.id)
        .bind(&e.drain_test)
        .bind(e.scheduled_ms)
        .bind(&e.trigger)
        .bind(&e.target)
        .bind(&e.state)
        .bind(&e.reason)
        .bind(&e.drain_run)
        .bind(&e.restore_run)
        .bind(&e.created_by)
        .bind(e.created_at_ms)
        .bind(e.updated_at_ms)
        .bind(e.finished_ms)
        .bind(e.version)
        .bind(&report)
        .bind(e.version - 1)
        .execute(pool)
        .await
        .map_err(|e| db_error("update a drain test execution", e))?;
    if done.rows_affected() == 0 {
        return Err(Error::Conflict(format!(
            "drain test execution `{}` is not at version {} (it changed, or does not exist)",
            e.id,
            e.version - 1
        )));
    }
    Ok(())
}

pub(crate) async fn get(pool: &SqlitePool, id: &str) -> Result<Option<DrainTestExecution>> {
    let text = format!("SELECT {DRAIN_TEST_COLUMNS} FROM drain_test_executions WHERE id = ?1");
    let row = sqlx::query(&sql(&text))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error("read a drain test execution", e))?;
    row.as_ref().map(from_row).transpose()
}

pub(crate) async fn list(
    pool: &SqlitePool,
    filter: &DrainTestFilter,
) -> Result<Vec<DrainTestExecution>> {
    let text = sql(&drain_test_list_sql(filter));
    let mut query = sqlx::query(&text);
    if let Some(name) = &filter.drain_test {
        query = query.bind(name);
    }
    let rows = query
        .fetch_all(pool)
        .await
        .map_err(|e| db_error("read drain test executions", e))?;
    rows.iter().map(from_row).collect()
}
