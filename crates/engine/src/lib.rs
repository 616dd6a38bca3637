//! Levee's pure core: decisions as functions of stored state, a request and an injected clock.
//!
//! Nothing here reads the clock, touches a socket or knows SQL. Callers (the store's writer,
//! the server) load records, call these functions, and persist what they return.

pub mod machine;
pub mod runbook;

pub use machine::{
    Answer, Change, HistoryEntry, HistoryKind, MachineRecord, NoReason, Peers, Refusal, Replay,
    ReplayStep, Report,
};
