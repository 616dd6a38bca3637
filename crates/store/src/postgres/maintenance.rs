//! Maintenances in PostgreSQL: rows, the admission of a new one inside the writer's transaction,
//! compare-and-set updates, and reads.

use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use super::codec::{check_text, db_error};
use super::writer::{Abort, abort};
use crate::queue::{check_maintenance, push_audit, run_admit};
use crate::rows::encode;
use crate::{AuditEntry, Error, MaintenanceFilter, MaintenanceRecord, Result, Scheduled};

pub(crate) const MAINTENANCE_COLUMNS: &str = "id, fleet, selector, hosts, kind, start_ms, \
     end_ms, owner, state, why, unblock, created_by, created_at_ms, updated_at_ms, version, \
     details";

/// Reads a `maintenances` row selected with [`MAINTENANCE_COLUMNS`].
pub(crate) fn maintenance_from_row(row: &PgRow) -> Result<MaintenanceRecord> {
    let get_text = |name: &str| -> Result<String> {
        row.try_get::<String, _>(name)
            .map_err(|e| db_error("read a maintenance", e))
    };
    let get_int = |name: &str| -> Result<i64> {
        row.try_get::<i64, _>(name)
            .map_err(|e| db_error("read a maintenance", e))
    };
    let id = get_text("id")?;
    let hosts: Vec<String> = serde_json::from_str(&get_text("hosts")?)
        .map_err(|e| Error::Corrupt(format!("maintenance `{id}` hosts: {e}")))?;
    let details = serde_json::from_str(&get_text("details")?)
        .map_err(|e| Error::Corrupt(format!("maintenance `{id}` details: {e}")))?;
    Ok(MaintenanceRecord {
        fleet: get_text("fleet")?,
        selector: get_text("selector")?,
        hosts,
        kind: get_text("kind")?,
        start_ms: get_int("start_ms")?,
        end_ms: get_int("end_ms")?,
        owner: get_text("owner")?,
        state: get_text("state")?,
        why: get_text("why")?,
        unblock: get_text("unblock")?,
        created_by: get_text("created_by")?,
        created_at_ms: get_int("created_at_ms")?,
        updated_at_ms: get_int("updated_at_ms")?,
        version: get_int("version")?,
        details,
        id,
    })
}

/// The `WHERE` clause of reserving maintenances.
const RESERVING: &str = "state NOT IN ('done', 'cancelled')";

/// Maintenances as the filter says, by start time then id.
pub(crate) async fn list<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    filter: &MaintenanceFilter,
) -> Result<Vec<MaintenanceRecord>> {
    let mut sql = format!("SELECT {MAINTENANCE_COLUMNS} FROM maintenances WHERE 1 = 1");
    if filter.reserving_only {
        sql.push_str(&format!(" AND {RESERVING}"));
    }
    if filter.fleet.is_some() {
        sql.push_str(" AND fleet = $1");
    }
    sql.push_str(" ORDER BY start_ms, id");
    if filter.limit > 0 {
        sql.push_str(&format!(
            " LIMIT {}",
            filter.limit.min(crate::MAX_PAGE_ROWS)
        ));
    }
    let mut query = sqlx::query(&sql);
    if let Some(fleet) = &filter.fleet {
        query = query.bind(fleet);
    }
    let rows = query
        .fetch_all(executor)
        .await
        .map_err(|e| db_error("read maintenances", e))?;
    rows.iter().map(maintenance_from_row).collect()
}

pub(crate) async fn get<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    id: &str,
) -> Result<Option<MaintenanceRecord>> {
    let sql = format!("SELECT {MAINTENANCE_COLUMNS} FROM maintenances WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(executor)
        .await
        .map_err(|e| db_error("read a maintenance", e))?;
    row.as_ref().map(maintenance_from_row).transpose()
}

/// The texts of a maintenance that PostgreSQL stores as `text`; its JSON escapes U+0000.
fn check_texts(m: &MaintenanceRecord) -> Result<()> {
    check_text(
        "a maintenance",
        [
            m.id.as_str(),
            m.fleet.as_str(),
            m.selector.as_str(),
            m.kind.as_str(),
            m.owner.as_str(),
            m.state.as_str(),
            m.why.as_str(),
            m.unblock.as_str(),
            m.created_by.as_str(),
        ],
    )
}

/// The JSON columns of a maintenance, or why they cannot be stored.
fn encoded(m: &MaintenanceRecord) -> Result<(String, String)> {
    check_texts(m)?;
    let hosts = encode(&m.hosts, format_args!("maintenance `{}` hosts", m.id))?;
    let details = encode(&m.details, format_args!("maintenance `{}` details", m.id))?;
    Ok((hosts, details))
}

async fn insert(conn: &mut PgConnection, m: &MaintenanceRecord) -> Result<Result<()>, Abort> {
    let (hosts, details) = match encoded(m) {
        Ok(encoded) => encoded,
        Err(error) => return Ok(Err(error)),
    };
    let sql = format!(
        "INSERT INTO maintenances ({MAINTENANCE_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (id) DO NOTHING"
    );
    let done = sqlx::query(&sql)
        .bind(&m.id)
        .bind(&m.fleet)
        .bind(&m.selector)
        .bind(&hosts)
        .bind(&m.kind)
        .bind(m.start_ms)
        .bind(m.end_ms)
        .bind(&m.owner)
        .bind(&m.state)
        .bind(&m.why)
        .bind(&m.unblock)
        .bind(&m.created_by)
        .bind(m.created_at_ms)
        .bind(m.updated_at_ms)
        .bind(m.version)
        .bind(&details)
        .execute(&mut *conn)
        .await
        .map_err(abort("store a maintenance"))?;
    if done.rows_affected() == 0 {
        return Ok(Err(Error::Conflict(format!(
            "a maintenance with the id `{}` already exists",
            m.id
        ))));
    }
    Ok(Ok(()))
}

/// Decides and stores a new maintenance inside the writer's transaction, holding the
/// `fleet_lock` row so another replica's schedule waits. The rows this batch stored earlier
/// are visible to the decision: they were inserted already.
pub(crate) async fn schedule(
    conn: &mut PgConnection,
    maintenance: MaintenanceRecord,
    admit: crate::Admit,
    audit: Option<AuditEntry>,
    audits: &mut Vec<AuditEntry>,
) -> Result<Result<Scheduled>, Abort> {
    if let Err(error) = check_maintenance(&maintenance) {
        return Ok(Err(error));
    }
    if maintenance.version != 1 {
        return Ok(Err(Error::Corrupt(format!(
            "a new maintenance starts at version 1, not {}",
            maintenance.version
        ))));
    }
    if let Err(error) = check_texts(&maintenance) {
        return Ok(Err(error));
    }
    // Replicas take turns here: the row stays locked until this batch commits.
    sqlx::query("SELECT id FROM fleet_lock WHERE id = 1 FOR UPDATE")
        .execute(&mut *conn)
        .await
        .map_err(abort("lock the fleet's reservations"))?;
    let reserving = list(
        &mut *conn,
        &MaintenanceFilter {
            reserving_only: true,
            ..MaintenanceFilter::default()
        },
    )
    .await
    .map_err(|error| Abort {
        retry: matches!(error, Error::Unavailable(_)),
        error,
    })?;
    match run_admit(admit, &reserving) {
        Err(error) => Ok(Err(error)),
        Ok(Err(refusal)) => {
            push_audit(audits, audit, "refused");
            Ok(Ok(Scheduled::Refused(refusal)))
        }
        Ok(Ok(())) => {
            if let Err(error) = insert(conn, &maintenance).await? {
                push_audit(audits, audit, "conflict");
                return Ok(Err(error));
            }
            push_audit(audits, audit, "ok");
            Ok(Ok(Scheduled::Stored(Box::new(maintenance))))
        }
    }
}

/// Stores a change to a maintenance if its stored version is the one before.
pub(crate) async fn update(
    conn: &mut PgConnection,
    m: MaintenanceRecord,
    audit: Option<AuditEntry>,
    audits: &mut Vec<AuditEntry>,
) -> Result<Result<()>, Abort> {
    if let Err(error) = check_maintenance(&m) {
        return Ok(Err(error));
    }
    let (hosts, details) = match encoded(&m) {
        Ok(encoded) => encoded,
        Err(error) => return Ok(Err(error)),
    };
    let done = sqlx::query(
        "UPDATE maintenances SET fleet = $2, selector = $3, hosts = $4, kind = $5, \
         start_ms = $6, end_ms = $7, owner = $8, state = $9, why = $10, unblock = $11, \
         updated_at_ms = $12, version = $13, details = $14 WHERE id = $1 AND version = $15",
    )
    .bind(&m.id)
    .bind(&m.fleet)
    .bind(&m.selector)
    .bind(&hosts)
    .bind(&m.kind)
    .bind(m.start_ms)
    .bind(m.end_ms)
    .bind(&m.owner)
    .bind(&m.state)
    .bind(&m.why)
    .bind(&m.unblock)
    .bind(m.updated_at_ms)
    .bind(m.version)
    .bind(&details)
    .bind(m.version - 1)
    .execute(&mut *conn)
    .await
    .map_err(abort("update a maintenance"))?;
    if done.rows_affected() == 0 {
        return Ok(Err(Error::Conflict(format!(
            "maintenance `{}` is not at version {} (it changed, or does not exist)",
            m.id,
            m.version - 1
        ))));
    }
    push_audit(audits, audit, "ok");
    Ok(Ok(()))
}
