//! Run leases and replica heartbeats on SQLite.
//!
//! Each is one statement on the store's lease connection, outside the writer's batches: a
//! claim needs no decision, only an atomic `UPDATE`. SQLite lets one transaction write at a
//! time, and the writer reads a run's epoch inside its batch's write transaction, so a claim
//! lands wholly before or after a batch: a commit after the claim sees the new epoch. A
//! single write statement takes the write lock before it reads (waiting up to
//! [`super::BUSY_TIMEOUT_MS`]), so its reads are never stale.

use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::codec::db_error;
use crate::rows::{ACTIVE_RUN_SQL, replicas_with_leases, sorted_leases};
use crate::{Error, Lease, ReplicaRecord, Result, RunOwner};

fn lease_from_row(row: &SqliteRow) -> std::result::Result<Lease, sqlx::Error> {
    Ok(Lease {
        run_id: row.try_get("id")?,
        epoch: row.try_get("epoch")?,
        expires_ms: row
            .try_get::<Option<i64>, _>("lease_expires_ms")?
            .unwrap_or(0),
    })
}

fn leases_from_rows(rows: &[SqliteRow], what: &str) -> Result<Vec<Lease>> {
    rows.iter()
        .map(lease_from_row)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(sorted_leases)
        .map_err(|e| db_error(what, e))
}

/// `[[run id, epoch], ...]` as JSON, for `json_each`.
fn lease_list(leases: &[Lease]) -> Result<String> {
    let pairs: Vec<(&str, i64)> = leases
        .iter()
        .map(|l| (l.run_id.as_str(), l.epoch))
        .collect();
    serde_json::to_string(&pairs).map_err(|e| Error::Unavailable(format!("encode leases: {e}")))
}

/// Matches a `runs` row against the `[[id, epoch], ...]` list bound as `?2`.
const IN_LEASE_LIST: &str = "EXISTS (SELECT 1 FROM json_each(?2) AS j \
     WHERE json_extract(j.value, '$[0]') = runs.id \
       AND json_extract(j.value, '$[1]') = runs.epoch)";

pub(crate) async fn claim_runs(
    pool: &SqlitePool,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
    limit: u32,
) -> Result<Vec<Lease>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let sql = format!(
        "UPDATE runs SET owner = ?1, lease_expires_ms = ?3, epoch = epoch + 1 \
         WHERE id IN (SELECT id FROM runs WHERE {ACTIVE_RUN_SQL} \
             AND (owner IS NULL OR lease_expires_ms IS NULL OR lease_expires_ms <= ?2) \
             ORDER BY id LIMIT ?4) \
         RETURNING id, epoch, lease_expires_ms"
    );
    let rows = sqlx::query(&sql)
        .bind(owner)
        .bind(now_ms)
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(|e| db_error("claim runs", e))?;
    leases_from_rows(&rows, "claim runs")
}

pub(crate) async fn claim_run(
    pool: &SqlitePool,
    run_id: &str,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Option<Lease>> {
    let rows = sqlx::query(
        "UPDATE runs SET owner = ?2, lease_expires_ms = ?4, epoch = epoch + 1 \
         WHERE id = ?1 \
           AND (owner IS NULL OR lease_expires_ms IS NULL OR lease_expires_ms <= ?3) \
         RETURNING id, epoch, lease_expires_ms",
    )
    .bind(run_id)
    .bind(owner)
    .bind(now_ms)
    .bind(now_ms.saturating_add(ttl_ms))
    .fetch_all(pool)
    .await
    .map_err(|e| db_error("claim a run", e))?;
    Ok(leases_from_rows(&rows, "claim a run")?.into_iter().next())
}

pub(crate) async fn renew_leases(
    pool: &SqlitePool,
    owner: &str,
    leases: &[Lease],
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Vec<Lease>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "UPDATE runs SET lease_expires_ms = ?3 WHERE owner = ?1 AND {IN_LEASE_LIST} \
         RETURNING id, epoch, lease_expires_ms"
    );
    let rows = sqlx::query(&sql)
        .bind(owner)
        .bind(lease_list(leases)?)
        .bind(now_ms.saturating_add(ttl_ms))
        .fetch_all(pool)
        .await
        .map_err(|e| db_error("renew leases", e))?;
    leases_from_rows(&rows, "renew leases")
}

pub(crate) async fn release_leases(
    pool: &SqlitePool,
    owner: &str,
    leases: &[Lease],
) -> Result<u64> {
    if leases.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "UPDATE runs SET owner = NULL, lease_expires_ms = NULL WHERE owner = ?1 AND {IN_LEASE_LIST}"
    );
    let done = sqlx::query(&sql)
        .bind(owner)
        .bind(lease_list(leases)?)
        .execute(pool)
        .await
        .map_err(|e| db_error("release leases", e))?;
    Ok(done.rows_affected())
}

pub(crate) async fn run_owner(pool: &SqlitePool, run_id: &str) -> Result<Option<RunOwner>> {
    let row = sqlx::query("SELECT owner, epoch, lease_expires_ms FROM runs WHERE id = ?1")
        .bind(run_id)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error("read a run's owner", e))?;
    row.map(|row| {
        Ok(RunOwner {
            owner: row.try_get("owner")?,
            epoch: row.try_get("epoch")?,
            expires_ms: row.try_get("lease_expires_ms")?,
        })
    })
    .transpose()
    .map_err(|e| db_error("read a run's owner", e))
}

pub(crate) async fn heartbeat(
    pool: &SqlitePool,
    id: &str,
    address: &str,
    started_at_ms: i64,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO replicas (id, address, started_at_ms, seen_at_ms) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (id) DO UPDATE SET address = excluded.address, seen_at_ms = MAX(seen_at_ms, excluded.seen_at_ms)",
    )
    .bind(id)
    .bind(address)
    .bind(started_at_ms)
    .bind(now_ms)
    .execute(pool)
    .await
    .map_err(|e| db_error("record a replica heartbeat", e))?;
    Ok(())
}

pub(crate) async fn replicas(pool: &SqlitePool, seen_since_ms: i64) -> Result<Vec<ReplicaRecord>> {
    let read = async {
        let replicas = sqlx::query(
            "SELECT id, address, started_at_ms, seen_at_ms FROM replicas WHERE seen_at_ms >= ?1",
        )
        .bind(seen_since_ms)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                row.try_get("address")?,
                row.try_get("started_at_ms")?,
                row.try_get("seen_at_ms")?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        let sql = format!(
            "SELECT owner, id, epoch, lease_expires_ms FROM runs \
             WHERE owner IS NOT NULL AND {ACTIVE_RUN_SQL}"
        );
        let leases = sqlx::query(&sql)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("owner")?, lease_from_row(row)?)))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        Ok::<_, sqlx::Error>(replicas_with_leases(replicas, leases))
    };
    read.await.map_err(|e| db_error("list replicas", e))
}
