//! Rows to records and back, and PostgreSQL errors to the store's [`Error`].
//!
//! Column lists live here, next to the code that reads them by name, so a reader and the
//! writer cannot disagree on what a `machines` row holds.

use levee_engine::{HistoryEntry, MachineRecord};
use sqlx::postgres::{PgDatabaseError, PgRow};

use crate::rows::{column, corrupt, count, history_kind_from_name, json_column};
use crate::{AuditEntry, AuditRecord, DefinitionRecord, Error, Result, TokenRecord};

pub(crate) const MACHINE_COLUMNS: &str = "id, definition, grp, state, counter, reporters, \
     entered_at_ms, timer_due_ms, version, replay, created_at_ms, updated_at_ms";

pub(crate) const HISTORY_COLUMNS: &str =
    "seq, machine, version, at_ms, kind, from_state, to_state, event, counter, actor, reporter";

pub(crate) const AUDIT_COLUMNS: &str = "at_ms, actor, action, target, outcome, detail";

pub(crate) const DEFINITION_COLUMNS: &str =
    "kind, name, version, compiled, source, digest, created_at_ms, created_by";

pub(crate) const TOKEN_COLUMNS: &str =
    "name, role, scope, hash, created_at_ms, created_by, revoked_at_ms";

// SQLSTATE codes (PostgreSQL manual, appendix A) the store treats specially.
const UNIQUE_VIOLATION: &str = "23505";
const SERIALIZATION_FAILURE: &str = "40001";
const DEADLOCK_DETECTED: &str = "40P01";
const QUERY_CANCELED: &str = "57014";
const DATA_CORRUPTED: &str = "XX001";
const INDEX_CORRUPTED: &str = "XX002";
/// Class 08 (connection exception) and the 57P0x operator interventions (the server shutting
/// down, the connection terminated by an administrator): the session is gone, and with it any
/// transaction it had open.
const CONNECTION_EXCEPTION_CLASS: &str = "08";
const SESSION_ENDED_CODES: [&str; 3] = ["57P01", "57P02", "57P03"];

fn sqlstate(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .map(PgDatabaseError::code),
        _ => None,
    }
}

/// Whether the error ended the session (the connection broke, or the server or an
/// administrator ended it): a transaction it had open is rolled back by the server, and a new
/// connection may well work.
pub(crate) fn is_connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(_) => sqlstate(error).is_some_and(|code| {
            code.starts_with(CONNECTION_EXCEPTION_CLASS) || SESSION_ENDED_CODES.contains(&code)
        }),
        _ => false,
    }
}

/// Whether running the same transaction again may succeed: PostgreSQL chose it as the victim
/// of a deadlock or a serialization failure, or its session ended before it committed.
pub(crate) fn is_retryable(error: &sqlx::Error) -> bool {
    matches!(
        sqlstate(error),
        Some(SERIALIZATION_FAILURE | DEADLOCK_DETECTED)
    ) || is_connection_lost(error)
}

/// Maps a database error to the store's error, saying what the store was doing.
///
/// Unique violations become `Conflict`; data PostgreSQL reports damaged, or a value that does
/// not decode, becomes `Corrupt`; everything else (the server down or unreachable, a timeout,
/// a closed pool, a deadlock) becomes `Unavailable`, which tells the caller nothing changed and
/// a retry may work.
pub(crate) fn db_error(what: &str, error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::Database(db) => match sqlstate(&error) {
            Some(UNIQUE_VIOLATION) => Error::Conflict(format!("{what}: {}", db.message())),
            Some(DATA_CORRUPTED | INDEX_CORRUPTED) => Error::Corrupt(format!("{what}: {error}")),
            Some(QUERY_CANCELED) => Error::Unavailable(format!(
                "{what}: the statement ran past its timeout or was cancelled ({error})"
            )),
            _ => Error::Unavailable(format!("{what}: {error}")),
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => Error::Corrupt(format!("{what}: {error}")),
        sqlx::Error::PoolClosed => Error::Unavailable(format!("{what}: the store is closed")),
        sqlx::Error::PoolTimedOut => Error::Unavailable(format!(
            "{what}: no database connection became free in time (the server is down, \
             unreachable, or overloaded)"
        )),
        _ => Error::Unavailable(format!("{what}: {error}")),
    }
}

/// Reads a `machines` row selected with [`MACHINE_COLUMNS`].
pub(crate) fn machine_from_row(row: &PgRow) -> Result<MachineRecord> {
    let id: String = column(row, "machines", "id")?;
    let reporters: String = column(row, "machines", "reporters")?;
    let replay: Option<String> = column(row, "machines", "replay")?;
    Ok(MachineRecord {
        definition: column(row, "machines", "definition")?,
        group: column(row, "machines", "grp")?,
        state: column(row, "machines", "state")?,
        counter: count(
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
pub(crate) fn history_from_row(row: &PgRow) -> Result<HistoryEntry> {
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
        counter: count(
            column(row, "history", "counter")?,
            format_args!("history seq {seq}"),
        )?,
        actor: column(row, "history", "actor")?,
        reporter: column(row, "history", "reporter")?,
    })
}

/// Reads an `audit` row selected with `seq, ` and [`AUDIT_COLUMNS`].
pub(crate) fn audit_from_row(row: &PgRow) -> Result<AuditRecord> {
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
pub(crate) fn definition_from_row(row: &PgRow) -> Result<DefinitionRecord> {
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
pub(crate) fn token_from_row(row: &PgRow) -> Result<TokenRecord> {
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

/// One field of every row, as the array a multi-row statement binds for `UNNEST`: a statement
/// takes a whole batch whatever its size, with one parameter per column.
pub(crate) fn array<'a, T, U>(rows: &'a [T], field: impl FnMut(&'a T) -> U) -> Vec<U> {
    rows.iter().map(field).collect()
}

/// PostgreSQL's `text` cannot hold U+0000 (a statement binding it fails, and with it the whole
/// transaction). Text that must be stored as `text` is checked first, so only the request that
/// carries it fails.
pub(crate) fn check_text<'a>(what: &str, values: impl IntoIterator<Item = &'a str>) -> Result<()> {
    for value in values {
        if value.contains('\0') {
            return Err(Error::Corrupt(format!(
                "{what} contains the character U+0000, which PostgreSQL cannot store as text: \
                 {value:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_with_a_nul_character_is_refused_by_name() {
        assert!(check_text("a run outcome", ["fine", "also fine"]).is_ok());
        let error = check_text("a run outcome", ["fine", "bad\0byte"]).unwrap_err();
        let Error::Corrupt(message) = error else {
            panic!("{error:?}");
        };
        assert!(message.starts_with("a run outcome contains"), "{message}");
        assert!(message.contains("bad\\0byte"), "{message}");
    }

    #[test]
    fn errors_without_a_session_are_not_connection_losses() {
        assert!(!is_connection_lost(&sqlx::Error::PoolTimedOut));
        assert!(!is_retryable(&sqlx::Error::PoolClosed));
        assert!(is_retryable(&sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset"
        ))));
        assert!(matches!(
            db_error("read", sqlx::Error::PoolClosed),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            db_error("read", sqlx::Error::ColumnNotFound("x".to_string())),
            Error::Corrupt(_)
        ));
    }
}
