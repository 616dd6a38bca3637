//! Notices: what a commit changed that every replica may want to act on at once, instead of at
//! its next poll. [`crate::Store::notices`] hands out a receiver; PostgreSQL sends them with
//! `pg_notify` inside the committing transaction (so a notice is delivered only if, and only
//! after, its change committed) and each store's listener turns them back into [`Notice`]s;
//! SQLite, one process on one file, broadcasts them in process after its commit.
//!
//! Notices only wake replicas early: they may be lost (a listener reconnecting, a receiver
//! that lags), so everything they announce is also found by polling, and a receiver that may
//! have missed some gets [`Notice::Resync`].

use serde::{Deserialize, Serialize};

/// The PostgreSQL channel every store of one database notifies and listens on.
pub const NOTICE_CHANNEL: &str = "levee";

/// Notices a slow receiver may fall behind by before it gets [`Notice::Resync`] instead.
pub const NOTICE_BUFFER: usize = 1_024;

/// Longest payload one `pg_notify` carries; PostgreSQL refuses 8,000 bytes and more.
pub const MAX_NOTICE_PAYLOAD_BYTES: usize = 7_000;

/// Longest a notice listener waits before reconnecting after it lost its connection (it
/// starts at [`NOTICE_RECONNECT_MIN_MS`] and doubles).
pub const NOTICE_RECONNECT_MAX_MS: u64 = 2_000;
/// First wait before a notice listener reconnects.
pub const NOTICE_RECONNECT_MIN_MS: u64 = 50;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// Leases were released: their runs are claimable now.
    RunsClaimable,
    /// A server-wide setting (`settings` row) changed.
    Setting { key: String },
    /// Definitions were stored (state machines, runbooks, templates, fleets, ...).
    Definitions,
    /// Machines were changed; each to the version given.
    Machines { versions: Vec<(String, i64)> },
    /// Notices may have been missed (the listener (re)connected, or this receiver lagged):
    /// re-read whatever notices would have announced.
    Resync,
}

const CLAIMABLE: &str = "claimable";
const SETTING: &str = "setting ";
const DEFINITIONS: &str = "definitions";
const MACHINES: &str = "machines ";

impl Notice {
    /// The `pg_notify` payloads that carry this notice (machines split across several when
    /// they do not fit in one). `Resync` is never sent.
    pub fn payloads(&self) -> Vec<String> {
        match self {
            Notice::RunsClaimable => vec![CLAIMABLE.to_string()],
            Notice::Setting { key } => vec![format!("{SETTING}{key}")],
            Notice::Definitions => vec![DEFINITIONS.to_string()],
            Notice::Machines { versions } => {
                let mut payloads = Vec::new();
                let mut chunk: Vec<&(String, i64)> = Vec::new();
                let mut size = MACHINES.len() + 2;
                for entry in versions {
                    // `["id",version],` with room for JSON escapes.
                    let entry_size = entry.0.len() * 2 + 26;
                    if !chunk.is_empty() && size + entry_size > MAX_NOTICE_PAYLOAD_BYTES {
                        payloads.push(machines_payload(&chunk));
                        chunk.clear();
                        size = MACHINES.len() + 2;
                    }
                    // An id too long for a payload of its own is left out; whoever caches
                    // it learns of the change by polling.
                    if MACHINES.len() + 2 + entry_size <= MAX_NOTICE_PAYLOAD_BYTES {
                        size += entry_size;
                        chunk.push(entry);
                    }
                }
                if !chunk.is_empty() {
                    payloads.push(machines_payload(&chunk));
                }
                payloads
            }
            Notice::Resync => Vec::new(),
        }
    }

    /// Reads a payload back; `None` for one this build does not know (sent by a newer
    /// replica), which is ignored.
    pub fn from_payload(payload: &str) -> Option<Notice> {
        if payload == CLAIMABLE {
            Some(Notice::RunsClaimable)
        } else if payload == DEFINITIONS {
            Some(Notice::Definitions)
        } else if let Some(key) = payload.strip_prefix(SETTING) {
            Some(Notice::Setting {
                key: key.to_string(),
            })
        } else if let Some(json) = payload.strip_prefix(MACHINES) {
            serde_json::from_str(json)
                .ok()
                .map(|versions| Notice::Machines { versions })
        } else {
            None
        }
    }
}

fn machines_payload(chunk: &[&(String, i64)]) -> String {
    format!(
        "{MACHINES}{}",
        serde_json::to_string(chunk).unwrap_or_else(|_| "[]".to_string())
    )
}

/// A broadcast sender of notices, and what each store does with it.
pub(crate) fn channel() -> tokio::sync::broadcast::Sender<Notice> {
    tokio::sync::broadcast::channel(NOTICE_BUFFER).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_back_as_sent() {
        let notices = [
            Notice::RunsClaimable,
            Notice::Definitions,
            Notice::Setting {
                key: "runs.global_pause".into(),
            },
            Notice::Machines {
                versions: vec![("web-1".into(), 3), ("odd \"id\"".into(), 9)],
            },
        ];
        for notice in notices {
            let payloads = notice.payloads();
            assert_eq!(payloads.len(), 1, "{notice:?}");
            assert_eq!(Notice::from_payload(&payloads[0]), Some(notice));
        }
        assert_eq!(Notice::from_payload("something newer"), None);
        assert!(Notice::Resync.payloads().is_empty());
    }

    #[test]
    fn many_machines_are_split_into_payloads_that_fit() {
        let versions: Vec<(String, i64)> = (0..2_000)
            .map(|i| (format!("machine-{i:05}"), i64::from(i) * 1_000_000))
            .collect();
        let payloads = Notice::Machines {
            versions: versions.clone(),
        }
        .payloads();
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(
                payload.len() < MAX_NOTICE_PAYLOAD_BYTES,
                "{}",
                payload.len()
            );
            match Notice::from_payload(payload) {
                Some(Notice::Machines { versions }) => back.extend(versions),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, versions);
    }
}
