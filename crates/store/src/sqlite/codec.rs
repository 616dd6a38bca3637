//! Rows to records and back, and SQLite errors to the store's [`Error`].
//!
//! Column lists live here, next to the code that reads them by name, so a reader and the
//! writer cannot disagree on what a `machines` row holds.

use levee_engine::{HistoryEntry, MachineRecord};
use sqlx::sqlite::SqliteRow;

use crate::rows::{column, corrupt, history_kind_from_name, json_column};
use crate::{AuditEntry, AuditRecord, DefinitionRecord, Error, Result, TokenRecord};

/// Most `?` parameters SQLite accepts in one statement (`SQLITE_MAX_VARIABLE_NUMBER`, the
/// default since SQLite 3.32). Multi-row inserts are cut into chunks that stay under it.
pub(crate) const SQLITE_MAX_VARIABLES: usize = 32_766;

pub(crate) const MACHINE_COLUMNS: &str = "id, definition, grp, state, counter, reporters, \
     entered_at_ms, timer_due_ms, version, replay, created_at_ms, updated_at_ms";
pub(crate) const MACHINE_COLUMN_COUNT: usize = 12;

pub(crate) const HISTORY_COLUMNS: &str =
    "seq, machine, version, at_ms, kind, from_state, to_state, event, counter, actor, reporter";
pub(crate) const HISTORY_COLUMN_COUNT: usize = 11;

pub(crate) const AUDIT_COLUMNS: &str = "at_ms, actor, action, target, outcome, detail";
pub(crate) const AUDIT_COLUMN_COUNT: usize = 6;

pub(crate) const DEFINITION_COLUMNS: &str =
    "kind, name, version, compiled, source, digest, created_at_ms, created_by";

pub(crate) const TOKEN_COLUMNS: &str =
    "name, role, scope, hash, created_at_ms, created_by, revoked_at_ms";

// SQLite's primary result codes (the low byte of an extended code), from sqlite3.h.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_NOTADB: i32 = 26;

/// Maps a database error to the store's error, saying what the store was doing.
///
/// Unique violations become `Conflict`; a damaged file or a value that does not decode becomes
/// `Corrupt`; everything else (disk full, I/O errors, a lock held past the busy timeout, a
/// closed pool) becomes `Unavailable`, which tells the caller nothing changed and a retry may
/// work.
pub(crate) fn db_error(what: &str, error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                return Error::Conflict(format!("{what}: {}", db.message()));
            }
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            match code & 0xff {
                SQLITE_CORRUPT | SQLITE_NOTADB => Error::Corrupt(format!("{what}: {error}")),
                SQLITE_BUSY | SQLITE_LOCKED => Error::Unavailable(format!(
                    "{what}: the database stayed locked past the busy timeout ({error})"
                )),
                _ => Error::Unavailable(format!("{what}: {error}")),
            }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => Error::Corrupt(format!("{what}: {error}")),
        sqlx::Error::PoolClosed => Error::Unavailable(format!("{what}: the store is closed")),
        _ => Error::Unavailable(format!("{what}: {error}")),
    }
}

/// Whether SQLite said the file is not a database at all (or is damaged beyond reading).
pub(crate) fn is_not_a_database(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            matches!(code & 0xff, SQLITE_NOTADB | SQLITE_CORRUPT)
        }
        _ => false,
    }
}

fn counter(value: i64, what: impl std::fmt::Display) -> Result<u32> {
    u32::try_from(value).map_err(|_| corrupt(what, format_args!("counter {value} is out of range")))
}

/// Reads a `machines` row selected with [`MACHINE_COLUMNS`].
pub(crate) fn machine_from_row(row: &SqliteRow) -> Result<MachineRecord> {
    let id: String = column(row, "machines", "id")?;
    let reporters: String = column(row, "machines", "reporters")?;
    let replay: Option<String> = column(row, "machines", "replay")?;
    Ok(MachineRecord {
        definition: column(row, "machines", "definition")?,
        group: column(row, "machines", "grp")?,
        state: column(row, "machines", "state")?,
        counter: counter(
            column(row, "machines", "counter")?,
            format_args!("machine `{id}`"),
        )?,
        reporters: json_column(&reporters, format_args!("machine `{id}` reporters"))?,
        entered_at_ms: column(row, "machines", "entered_at_ms")?,
        timer_due_ms: column(row, "machines", "timer_due_ms")?,
        version: column(row, "machines", "version")?,
        replay: match replay {
            Some(text) => Some(json_column(&text, format_args!("machine `{id}` replay"))?),
            None => None,
        },
        created_at_ms: column(row, "machines", "created_at_ms")?,
        updated_at_ms: column(row, "machines", "updated_at_ms")?,
        id,
    })
}

/// Reads a `history` row selected with [`HISTORY_COLUMNS`].
pub(crate) fn history_from_row(row: &SqliteRow) -> Result<HistoryEntry> {
    let seq: i64 = column(row, "history", "seq")?;
    let kind: String = column(row, "history", "kind")?;
    Ok(HistoryEntry {
        seq,
        machine: column(row, "history", "machine")?,
        version: column(row, "history", "version")?,
        at_ms: column(row, "history", "at_ms")?,
        kind: history_kind_from_name(&kind).ok_or_else(|| {
            corrupt(
                format_args!("history seq {seq}"),
                format_args!("unknown kind `{kind}`"),
            )
        })?,
        from_state: column(row, "history", "from_state")?,
        to_state: column(row, "history", "to_state")?,
        event: column(row, "history", "event")?,
        counter: counter(
            column(row, "history", "counter")?,
            format_args!("history seq {seq}"),
        )?,
        actor: column(row, "history", "actor")?,
        reporter: column(row, "history", "reporter")?,
    })
}

/// Reads an `audit` row selected with `seq, ` and [`AUDIT_COLUMNS`].
pub(crate) fn audit_from_row(row: &SqliteRow) -> Result<AuditRecord> {
    let seq: i64 = column(row, "audit", "seq")?;
    let detail: String = column(row, "audit", "detail")?;
    Ok(AuditRecord {
        seq,
        entry: AuditEntry {
            at_ms: column(row, "audit", "at_ms")?,
            actor: column(row, "audit", "actor")?,
            action: column(row, "audit", "action")?,
            target: column(row, "audit", "target")?,
            outcome: column(row, "audit", "outcome")?,
            detail: json_column(&detail, format_args!("audit seq {seq} detail"))?,
        },
    })
}

/// Reads a `definitions` row selected with [`DEFINITION_COLUMNS`].
pub(crate) fn definition_from_row(row: &SqliteRow) -> Result<DefinitionRecord> {
    let kind: String = column(row, "definitions", "kind")?;
    let name: String = column(row, "definitions", "name")?;
    let version: i64 = column(row, "definitions", "version")?;
    let compiled: String = column(row, "definitions", "compiled")?;
    Ok(DefinitionRecord {
        compiled: json_column(
            &compiled,
            format_args!("definition {kind} `{name}` version {version}"),
        )?,
        source: column(row, "definitions", "source")?,
        digest: column(row, "definitions", "digest")?,
        created_at_ms: column(row, "definitions", "created_at_ms")?,
        created_by: column(row, "definitions", "created_by")?,
        kind,
        name,
        version,
    })
}

/// Reads a `tokens` row selected with [`TOKEN_COLUMNS`].
pub(crate) fn token_from_row(row: &SqliteRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        name: column(row, "tokens", "name")?,
        role: column(row, "tokens", "role")?,
        scope: column(row, "tokens", "scope")?,
        hash: column(row, "tokens", "hash")?,
        created_at_ms: column(row, "tokens", "created_at_ms")?,
        created_by: column(row, "tokens", "created_by")?,
        revoked_at_ms: column(row, "tokens", "revoked_at_ms")?,
    })
}

/// `(?, ?, ...), (?, ?, ...)`: the VALUES list of a multi-row insert.
pub(crate) fn values_placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_cover_every_row_and_column() {
        assert_eq!(values_placeholders(1, 2), "(?, ?)");
        assert_eq!(values_placeholders(2, 3), "(?, ?, ?), (?, ?, ?)");
    }
}
