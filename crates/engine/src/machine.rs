//! State machine instances: answering "may I take this step?", accepting reports, firing
//! timers and replaying a recorded path.
//!
//! Every function takes the instance's stored [`MachineRecord`] and returns either a refusal or
//! a [`Change`]: the next record (its `version` one higher) plus the history entries that
//! explain it. The caller commits the change before it answers anyone.

use levee_model::{MachineDef, StateDef};
use serde::{Deserialize, Serialize};

/// Most timer transitions taken in one catch-up. A definition has at most
/// `levee_model::MAX_STATES` states, so a longer chain could only be a timer loop; stopping
/// keeps a misbehaving definition from spinning the writer.
pub const MAX_TIMER_CHAIN: usize = 1_000;
/// Most distinct reporters remembered for one counting state; reports beyond it are refused
/// rather than growing a record without bound.
pub const MAX_REPORTERS: usize = 100_000;

/// The stored state of one machine instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub id: String,
    /// Name of the `StateMachine` definition this instance follows.
    pub definition: String,
    /// Optional group, for tokens scoped to a group of machines.
    pub group: Option<String>,
    pub state: String,
    /// Reports counted towards the current state's counting transition.
    pub counter: u32,
    /// Distinct reporters already counted in the current state.
    pub reporters: Vec<String>,
    /// When the instance entered its current state (epoch ms).
    pub entered_at_ms: i64,
    /// When the current state's timer fires, if it has one (epoch ms). Stored so the timer
    /// worker can find due instances with an index instead of evaluating every definition.
    pub timer_due_ms: Option<i64>,
    /// Grows by one with every committed change; the basis of compare-and-set.
    pub version: i64,
    /// Present while the instance replays its recorded path.
    pub replay: Option<Replay>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A recorded path being replayed: the instance answers yes only to `steps[next]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    pub steps: Vec<ReplayStep>,
    pub next: usize,
    pub started_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayStep {
    pub from: String,
    pub to: String,
    pub event: Option<String>,
    /// Taken by a timer: replay moves on by itself, the wait has already happened once.
    pub by_timer: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// The instance was created in its initial state.
    Created,
    /// A report was counted; the state did not change yet.
    Counted,
    /// An event moved the instance to another state.
    Transition,
    /// A timer moved the instance to another state.
    Timer,
    /// An operator sent the instance back to its initial state to replay its path.
    ReplayStarted,
    /// One recorded step was replayed.
    ReplayStep,
    /// The replay reached the last-known state; the instance carries on normally.
    ReplayFinished,
}

/// One line of an instance's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Assigned by the store when committed; 0 before.
    pub seq: i64,
    pub machine: String,
    /// The record's version after this entry.
    pub version: i64,
    pub at_ms: i64,
    pub kind: HistoryKind,
    pub from_state: String,
    pub to_state: String,
    pub event: Option<String>,
    /// The counter after this entry.
    pub counter: u32,
    /// Who caused it: a token's name, `anonymous`, or `timer`.
    pub actor: String,
    /// The reporter named in the request, if any (a VM's hostname, say).
    pub reporter: Option<String>,
}

/// The result of a decision: the record to store and what to append to its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub record: MachineRecord,
    pub history: Vec<HistoryEntry>,
}

impl Change {
    /// A change that stores nothing (a duplicate report, say).
    pub fn is_noop(&self) -> bool {
        self.history.is_empty()
    }
}

/// A request to count "the step of `state` is done" (or another event of that state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<'a> {
    pub state: &'a str,
    pub event: &'a str,
    pub reporter: Option<&'a str>,
    pub actor: &'a str,
    /// If set, the report applies only to this stored version (HTTP `If-Match`).
    pub expect_version: Option<i64>,
}

/// What the other machines named in guards are doing, as far as the caller knows.
pub trait Peers {
    /// The effective state of another instance, or `None` if no such instance exists.
    fn state_of(&self, machine: &str) -> Option<String>;
}

/// No peers at all: every guard fails.
impl Peers for () {
    fn state_of(&self, _machine: &str) -> Option<String> {
        None
    }
}

impl<S: std::hash::BuildHasher> Peers for std::collections::HashMap<String, String, S> {
    fn state_of(&self, machine: &str) -> Option<String> {
        self.get(machine).cloned()
    }
}

/// The answer to "is the machine in `state`, and may it take that step now?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Yes,
    No(NoReason),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NoReason {
    NotCurrent { current: String },
    Guard(GuardFailure),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuardFailure {
    pub machine: String,
    /// The guarded machine's state, `None` if it does not exist.
    pub state: Option<String>,
    pub needs: Vec<String>,
}

/// Why a change was refused. Each maps to one HTTP status at the edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Refusal {
    #[error("machine has no state named `{state}`")]
    UnknownState { state: String },
    #[error("machine is in `{current}`, not `{state}`")]
    NotCurrent { state: String, current: String },
    #[error("`{state}` is a final state; it takes no reports")]
    Final { state: String },
    #[error("state `{state}` has no transition on event `{event}` (it accepts: {accepted:?})")]
    NoTransition {
        state: String,
        event: String,
        accepted: Vec<String>,
    },
    #[error("guard not met: machine `{}` must be in {:?}", .0.machine, .0.needs)]
    Guard(GuardFailure),
    #[error("stored version is {actual}, the request expected {expected}")]
    VersionMismatch { expected: i64, actual: i64 },
    #[error("replaying: the next recorded step is `{expected_state}` on event `{expected_event}`")]
    ReplayMismatch {
        expected_state: String,
        expected_event: String,
    },
    #[error("reporter limit reached: state `{state}` already counted {limit} distinct reporters")]
    TooManyReporters { state: String, limit: usize },
    #[error("the history holds no step to replay")]
    NothingToReplay,
}

impl Refusal {
    /// Stable machine-readable code, as in the JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownState { .. } => "unknown_state",
            Refusal::NotCurrent { .. } => "not_current",
            Refusal::Final { .. } => "final_state",
            Refusal::NoTransition { .. } => "no_transition",
            Refusal::Guard(_) => "guard",
            Refusal::VersionMismatch { .. } => "version_mismatch",
            Refusal::ReplayMismatch { .. } => "replay_mismatch",
            Refusal::TooManyReporters { .. } => "too_many_reporters",
            Refusal::NothingToReplay => "nothing_to_replay",
        }
    }
}

/// A new instance in the definition's initial state.
pub fn new_instance(
    def: &MachineDef,
    id: &str,
    group: Option<&str>,
    now_ms: i64,
    actor: &str,
) -> Change {
    let initial = def
        .state(&def.initial)
        .expect("validated definition has its initial state");
    let record = MachineRecord {
        id: id.to_string(),
        definition: def.name.clone(),
        group: group.map(str::to_string),
        state: initial.name.clone(),
        counter: 0,
        reporters: Vec::new(),
        entered_at_ms: now_ms,
        timer_due_ms: initial.timer.as_ref().map(|t| t.due_ms(now_ms)),
        version: 1,
        replay: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    };
    let entry = HistoryEntry {
        seq: 0,
        machine: id.to_string(),
        version: 1,
        at_ms: now_ms,
        kind: HistoryKind::Created,
        from_state: String::new(),
        to_state: initial.name.clone(),
        event: None,
        counter: 0,
        actor: actor.to_string(),
        reporter: None,
    };
    Change {
        record,
        history: vec![entry],
    }
}

/// The state the instance is in at `now_ms`, counting timers that are due but not yet
/// committed. Reads use this so an answer never depends on how late the timer worker runs.
pub fn effective_state<'a>(def: &'a MachineDef, record: &'a MachineRecord, now_ms: i64) -> &'a str {
    let mut state = record.state.as_str();
    let Some(mut due) = record.timer_due_ms else {
        return state;
    };
    for _ in 0..MAX_TIMER_CHAIN {
        if due > now_ms {
            return state;
        }
        let Some(timer) = def.state(state).and_then(|s| s.timer.as_ref()) else {
            return state;
        };
        state = timer.target();
        match def.state(state).and_then(|s| s.timer.as_ref()) {
            Some(next) => due = next.due_ms(due),
            None => return state,
        }
    }
    state
}

/// Fires every timer due at `now_ms`, in order, each entering its next state at its own due
/// time (not at `now_ms`), so the history does not depend on when the worker ran.
pub fn catch_up(def: &MachineDef, record: &MachineRecord, now_ms: i64) -> Option<Change> {
    let mut change = Change {
        record: record.clone(),
        history: Vec::new(),
    };
    fire_due_timers(def, &mut change, now_ms);
    (change.record != *record).then(|| {
        change.record.version += 1;
        change.record.updated_at_ms = now_ms;
        for entry in &mut change.history {
            entry.version = change.record.version;
        }
        change
    })
}

fn fire_due_timers(def: &MachineDef, change: &mut Change, now_ms: i64) {
    if change.record.replay.is_some() {
        return;
    }
    for _ in 0..MAX_TIMER_CHAIN {
        let Some(due) = change.record.timer_due_ms.filter(|due| *due <= now_ms) else {
            return;
        };
        let Some(timer) = def
            .state(&change.record.state)
            .and_then(|s| s.timer.clone())
        else {
            // The definition changed under the instance and dropped the timer.
            change.record.timer_due_ms = None;
            return;
        };
        let from = change.record.state.clone();
        enter(def, &mut change.record, timer.target(), due);
        change.history.push(HistoryEntry {
            seq: 0,
            machine: change.record.id.clone(),
            version: 0,
            at_ms: due,
            kind: HistoryKind::Timer,
            from_state: from,
            to_state: change.record.state.clone(),
            event: None,
            counter: 0,
            actor: "timer".to_string(),
            reporter: None,
        });
    }
}

/// Moves the record into `state` as of `at_ms`, resetting its counter and arming the timer.
fn enter(def: &MachineDef, record: &mut MachineRecord, state: &str, at_ms: i64) {
    record.state = state.to_string();
    record.counter = 0;
    record.reporters.clear();
    record.entered_at_ms = at_ms;
    record.timer_due_ms = if record.replay.is_some() {
        None
    } else {
        def.state(state)
            .and_then(|s| s.timer.as_ref())
            .map(|t| t.due_ms(at_ms))
    };
}

/// "Is the machine in `state`, and may it take that step now?" Unknown states are refused so
/// the native API can tell a typo (404) from "not yet" (406).
pub fn answer(
    def: &MachineDef,
    record: &MachineRecord,
    peers: &dyn Peers,
    state: &str,
    now_ms: i64,
) -> Result<Answer, Refusal> {
    let Some(wanted) = def.state(state) else {
        return Err(Refusal::UnknownState {
            state: state.to_string(),
        });
    };
    let current = effective_state(def, record, now_ms);
    if current != state {
        return Ok(Answer::No(NoReason::NotCurrent {
            current: current.to_string(),
        }));
    }
    if record.replay.is_none()
        && let Some(failure) = failed_guard(wanted, peers)
    {
        return Ok(Answer::No(NoReason::Guard(failure)));
    }
    Ok(Answer::Yes)
}

fn failed_guard(state: &StateDef, peers: &dyn Peers) -> Option<GuardFailure> {
    state.guards.iter().find_map(|guard| {
        let peer_state = peers.state_of(&guard.machine);
        let holds = peer_state
            .as_ref()
            .is_some_and(|s| guard.in_states.iter().any(|n| n == s));
        (!holds).then(|| GuardFailure {
            machine: guard.machine.clone(),
            state: peer_state,
            needs: guard.in_states.clone(),
        })
    })
}

/// Accepts a report that the step of `report.state` is done (or another of its events).
///
/// Due timers fire first, so a report always meets the state the instance is really in. A
/// duplicate report from a reporter already counted returns a no-op change: retries by
/// configuration management (which re-runs every resource) never open a barrier early.
pub fn report(
    def: &MachineDef,
    record: &MachineRecord,
    peers: &dyn Peers,
    report: &Report<'_>,
    now_ms: i64,
) -> Result<Change, Refusal> {
    if let Some(expected) = report.expect_version
        && expected != record.version
    {
        return Err(Refusal::VersionMismatch {
            expected,
            actual: record.version,
        });
    }
    let Some(target_state) = def.state(report.state) else {
        return Err(Refusal::UnknownState {
            state: report.state.to_string(),
        });
    };
    let mut change = Change {
        record: record.clone(),
        history: Vec::new(),
    };
    fire_due_timers(def, &mut change, now_ms);
    if change.record.state != report.state {
        return Err(Refusal::NotCurrent {
            state: report.state.to_string(),
            current: change.record.state.clone(),
        });
    }
    if change.record.replay.is_some() {
        replay_report(def, &mut change, report, now_ms)?;
    } else {
        live_report(def, target_state, &mut change, peers, report, now_ms)?;
    }
    if !change.history.is_empty() {
        change.record.version += 1;
        change.record.updated_at_ms = now_ms;
        for entry in &mut change.history {
            entry.version = change.record.version;
        }
    }
    Ok(change)
}

fn live_report(
    def: &MachineDef,
    state: &StateDef,
    change: &mut Change,
    peers: &dyn Peers,
    report: &Report<'_>,
    now_ms: i64,
) -> Result<(), Refusal> {
    if state.is_final {
        return Err(Refusal::Final {
            state: state.name.clone(),
        });
    }
    let Some(transition) = state.transition_on(report.event) else {
        return Err(Refusal::NoTransition {
            state: state.name.clone(),
            event: report.event.to_string(),
            accepted: state.on.iter().map(|t| t.event.clone()).collect(),
        });
    };
    if let Some(failure) = failed_guard(state, peers) {
        return Err(Refusal::Guard(failure));
    }
    let record = &mut change.record;
    if let Some(reporter) = report.reporter
        && transition.count > 1
    {
        if record.reporters.iter().any(|r| r == reporter) {
            return Ok(()); // Already counted: a retry, not a new report.
        }
        if record.reporters.len() >= MAX_REPORTERS {
            return Err(Refusal::TooManyReporters {
                state: state.name.clone(),
                limit: MAX_REPORTERS,
            });
        }
        record.reporters.push(reporter.to_string());
    }
    record.counter += 1;
    let mut entry = HistoryEntry {
        seq: 0,
        machine: record.id.clone(),
        version: 0,
        at_ms: now_ms,
        kind: HistoryKind::Counted,
        from_state: state.name.clone(),
        to_state: state.name.clone(),
        event: Some(report.event.to_string()),
        counter: record.counter,
        actor: report.actor.to_string(),
        reporter: report.reporter.map(str::to_string),
    };
    if record.counter >= transition.count {
        enter(def, record, &transition.to, now_ms);
        entry.kind = HistoryKind::Transition;
        entry.to_state = transition.to.clone();
        entry.counter = 0;
    }
    change.history.push(entry);
    Ok(())
}

fn replay_report(
    def: &MachineDef,
    change: &mut Change,
    report: &Report<'_>,
    now_ms: i64,
) -> Result<(), Refusal> {
    let replay = change
        .record
        .replay
        .as_ref()
        .expect("caller checked replay");
    let step = &replay.steps[replay.next];
    let event_matches = step.event.as_deref().unwrap_or(levee_model::DEFAULT_EVENT) == report.event;
    if step.by_timer || !event_matches {
        return Err(Refusal::ReplayMismatch {
            expected_state: step.from.clone(),
            expected_event: step.event.clone().unwrap_or_else(|| "(timer)".to_string()),
        });
    }
    take_replay_step(def, change, report.actor, report.reporter, now_ms);
    Ok(())
}

/// Takes the next recorded step, then any timer steps after it, and ends the replay when the
/// last-known state is reached.
fn take_replay_step(
    def: &MachineDef,
    change: &mut Change,
    actor: &str,
    reporter: Option<&str>,
    now_ms: i64,
) {
    loop {
        let record = &mut change.record;
        let Some(replay) = record.replay.as_mut() else {
            return;
        };
        let step = replay.steps[replay.next].clone();
        replay.next += 1;
        let finished = replay.next >= replay.steps.len();
        let next_is_timer = !finished && replay.steps[replay.next].by_timer;
        if finished {
            record.replay = None;
        }
        enter(def, record, &step.to, now_ms);
        change.history.push(HistoryEntry {
            seq: 0,
            machine: record.id.clone(),
            version: 0,
            at_ms: now_ms,
            kind: HistoryKind::ReplayStep,
            from_state: step.from.clone(),
            to_state: step.to.clone(),
            event: step.event.clone(),
            counter: 0,
            actor: actor.to_string(),
            reporter: reporter.map(str::to_string),
        });
        if finished {
            change.history.push(HistoryEntry {
                seq: 0,
                machine: record.id.clone(),
                version: 0,
                at_ms: now_ms,
                kind: HistoryKind::ReplayFinished,
                from_state: step.to.clone(),
                to_state: step.to.clone(),
                event: None,
                counter: 0,
                actor: actor.to_string(),
                reporter: None,
            });
            return;
        }
        if !next_is_timer {
            return;
        }
    }
}

/// The path from the initial state to the current one, as recorded: every move since the
/// instance was created or last sent back to its start.
pub fn recorded_path(history: &[HistoryEntry]) -> Vec<ReplayStep> {
    let mut path = Vec::new();
    for entry in history {
        match entry.kind {
            HistoryKind::Created | HistoryKind::ReplayStarted => path.clear(),
            HistoryKind::Transition | HistoryKind::Timer | HistoryKind::ReplayStep => {
                path.push(ReplayStep {
                    from: entry.from_state.clone(),
                    to: entry.to_state.clone(),
                    event: entry.event.clone(),
                    by_timer: entry.kind == HistoryKind::Timer
                        || (entry.kind == HistoryKind::ReplayStep && entry.event.is_none()),
                });
            }
            HistoryKind::Counted | HistoryKind::ReplayFinished => {}
        }
    }
    path
}

/// Sends the instance back to its initial state to replay `history`'s recorded path: it then
/// answers yes only to the recorded next step until it reaches its last-known state.
pub fn start_replay(
    def: &MachineDef,
    record: &MachineRecord,
    history: &[HistoryEntry],
    now_ms: i64,
    actor: &str,
) -> Result<Change, Refusal> {
    let steps = recorded_path(history);
    if steps.is_empty() {
        return Err(Refusal::NothingToReplay);
    }
    let mut change = Change {
        record: record.clone(),
        history: Vec::new(),
    };
    let from = change.record.state.clone();
    change.record.replay = Some(Replay {
        steps,
        next: 0,
        started_at_ms: now_ms,
    });
    let initial = change
        .record
        .replay
        .as_ref()
        .map(|r| r.steps[0].from.clone())
        .unwrap_or_default();
    enter(def, &mut change.record, &initial, now_ms);
    change.history.push(HistoryEntry {
        seq: 0,
        machine: record.id.clone(),
        version: 0,
        at_ms: now_ms,
        kind: HistoryKind::ReplayStarted,
        from_state: from,
        to_state: initial,
        event: None,
        counter: 0,
        actor: actor.to_string(),
        reporter: None,
    });
    if change
        .record
        .replay
        .as_ref()
        .is_some_and(|r| r.steps[0].by_timer)
    {
        take_replay_step(def, &mut change, actor, None, now_ms);
    }
    change.record.version += 1;
    change.record.updated_at_ms = now_ms;
    for entry in &mut change.history {
        entry.version = change.record.version;
    }
    Ok(change)
}

#[cfg(test)]
mod tests;
