//! `kind: StateMachine` after parsing and validation.
//!
//! These types are the compiled, checked form of a definition: every name they hold has been
//! resolved, so the engine can index into them without handling "unknown state" as an error of
//! its own. They are built only by [`crate::load`] (native YAML) and [`crate::stateservice`]
//! (StateService's file format), both of which validate first.

use serde::{Deserialize, Serialize};

/// The event a plain `PUT ...?state=S` sends: "the step of state S is done".
pub const DEFAULT_EVENT: &str = "done";

/// A validated state machine definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineDef {
    pub name: String,
    pub description: Option<String>,
    /// Name of the state a new instance starts in.
    pub initial: String,
    /// In declaration order; names are unique.
    pub states: Vec<StateDef>,
    /// Instances created when the definition is applied (ids, unique).
    pub instances: Vec<String>,
    /// Where the definition came from, which decides the `/state` compatibility rules.
    pub format: DefFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefFormat {
    /// `kind: StateMachine`.
    Native,
    /// Facebook StateService's `current_state` / `states` file.
    StateService,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateDef {
    pub name: String,
    pub description: Option<String>,
    /// Event-driven transitions, at most one per event name.
    pub on: Vec<EventTransition>,
    /// At most one timer per state.
    pub timer: Option<Timer>,
    /// Conditions on other machines that must all hold before this state's step may be taken:
    /// a GET answers "no" and a report is refused while any guard fails.
    pub guards: Vec<Guard>,
    /// A final state has no transitions; it answers "yes" to GET and refuses reports.
    pub is_final: bool,
    /// StateService's counter key and start value, kept to show counts the way it did.
    pub compat_counter: Option<CompatCounter>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventTransition {
    pub event: String,
    pub to: String,
    /// Reports needed before the transition fires (1 = the first report moves on). With a
    /// reporter name on each report this is a barrier across that many distinct reporters.
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Timer {
    /// Fires `duration_ms` after the instance entered the state.
    After { duration_ms: u64, to: String },
    /// Fires at an absolute instant (epoch milliseconds, UTC).
    At { at_ms: i64, to: String },
}

impl Timer {
    pub fn target(&self) -> &str {
        match self {
            Timer::After { to, .. } | Timer::At { to, .. } => to,
        }
    }

    /// When the timer fires for an instance that entered the state at `entered_at_ms`.
    pub fn due_ms(&self, entered_at_ms: i64) -> i64 {
        match self {
            Timer::After { duration_ms, .. } => {
                entered_at_ms.saturating_add(i64::try_from(*duration_ms).unwrap_or(i64::MAX))
            }
            Timer::At { at_ms, .. } => *at_ms,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    /// Id of another machine instance.
    pub machine: String,
    /// The guard holds while that machine is in any of these states.
    pub in_states: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompatCounter {
    pub key: String,
    /// `current.value` in the file: the count shown before any report.
    pub start: i64,
}

impl MachineDef {
    pub fn state(&self, name: &str) -> Option<&StateDef> {
        self.states.iter().find(|s| s.name == name)
    }

    /// Every machine id this definition's guards read.
    pub fn guarded_machines(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .states
            .iter()
            .flat_map(|s| s.guards.iter().map(|g| g.machine.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

impl StateDef {
    pub fn transition_on(&self, event: &str) -> Option<&EventTransition> {
        self.on.iter().find(|t| t.event == event)
    }
}
