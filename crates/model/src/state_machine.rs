//! `kind: StateMachine`: the YAML users write, and its compilation into a [`MachineDef`].
//!
//! The `*Spec` types are the native format exactly: they parse it (through [`crate::de`]) and
//! describe it (through schemars, for [`crate::schema`]); their `///` comments become the
//! descriptions editors show. [`compile`] checks everything serde cannot (names, references,
//! counts, durations, times) and builds the engine's form.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;

use crate::de::{Field, OneOrMany, OrderedMap, Reader, Recover, Spanned, field};
use crate::load::LoadContext;
use crate::machine::{DefFormat, EventTransition, Guard, MachineDef, StateDef, Timer};
use crate::names::{
    self, DEFINITION_NAME_PATTERN, DEFINITION_NAME_RULE, MACHINE_ID_PATTERN, MACHINE_ID_RULE,
    STATE_NAME_PATTERN, STATE_NAME_RULE,
};
use crate::time::{parse_duration_ms, parse_instant_ms};
use crate::yaml::{Loc, Node, abbreviate};
use crate::{MAX_INLINE_INSTANCES, MAX_STATES, MAX_TRANSITION_COUNT};

/// The `kind` of this definition.
pub const KIND: &str = "StateMachine";

/// Hints for unknown keys that are known mistakes: StateService's keys (a habit carried into a
/// native file gets a pointed hint instead of a bare "unknown key"), and YAML merge keys.
pub(crate) const KEY_HINTS: &[(&str, &str)] = &[
    (
        "<<",
        "YAML merge keys are not supported in definitions; write the keys out.",
    ),
    (
        "current_state",
        "StateService's `current_state` is `initial` in Levee's format.",
    ),
    (
        "target",
        "StateService's `target` is written `on: { done: STATE }` in Levee's format.",
    ),
    (
        "func",
        "Instead of StateService's `func`, count reports with `on: { done: { to: STATE, count: N } }` \
         and wait with `timer: { at: TIME, to: STATE }`.",
    ),
    (
        "current",
        "Levee keeps counts itself; write `on: { done: { to: STATE, count: N } }` instead of \
         StateService's `current`.",
    ),
];

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Deserialize)]
        #[serde(transparent)]
        pub(crate) struct $name(pub Spanned<String>);

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }

        impl std::ops::Deref for $name {
            type Target = Spanned<String>;
            fn deref(&self) -> &Spanned<String> {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// A definition's name (`name:`).
    DefinitionName,
    json_schema!({
        "type": "string",
        "pattern": DEFINITION_NAME_PATTERN,
        "description": "A definition name: 1 to 63 lowercase letters, digits, `.`, `_` or `-`, \
                        starting with a letter or a digit."
    })
);
string_newtype!(
    /// A machine instance id.
    MachineId,
    json_schema!({
        "type": "string",
        "pattern": MACHINE_ID_PATTERN,
        "description": "A machine id, as in `/machines/{id}/state`: 1 to 128 letters, digits, \
                        `.`, `_` or `-`, starting with a letter or a digit."
    })
);
string_newtype!(
    /// A state's name.
    StateName,
    json_schema!({
        "type": "string",
        "pattern": STATE_NAME_PATTERN,
        "description": "A state name, as in `?state=NAME`: 1 to 128 letters, digits, `.`, `_` \
                        or `-`, starting with a letter, a digit or `_`."
    })
);
string_newtype!(
    /// An event's name.
    EventName,
    json_schema!({
        "type": "string",
        "pattern": STATE_NAME_PATTERN,
        "description": "An event name: 1 to 128 letters, digits, `.`, `_` or `-`, starting with \
                        a letter, a digit or `_`. A plain report (`PUT ...?state=S`) sends `done`."
    })
);
string_newtype!(
    /// A duration such as `10m`.
    DurationText,
    json_schema!({
        "type": "string",
        "pattern": "^(?=[0-9])([0-9]+d)?([0-9]+h)?([0-9]+m(?!s))?([0-9]+s)?([0-9]+ms)?$",
        "description": "A duration: whole numbers with units, largest first, such as `500ms`, \
                        `30s`, `10m`, `1h30m` or `2d`. Must be longer than zero.",
        "examples": ["30s", "10m", "1h30m"]
    })
);
string_newtype!(
    /// An instant such as `2030-01-01T12:00:00Z`.
    InstantText,
    json_schema!({
        "type": "string",
        "description": "An instant: RFC 3339 with an offset (`2030-01-01T12:00:00Z`, \
                        `2030-01-01T12:00:00+02:00`), or without one for the server's local time \
                        (`2030-01-01T12:00:00`).",
        "examples": ["2030-01-01T12:00:00Z"]
    })
);

/// The schema of `kind:` in a state machine document.
pub(crate) struct StateMachineKind;

impl JsonSchema for StateMachineKind {
    fn schema_name() -> Cow<'static, str> {
        "StateMachineKind".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "const": KIND,
            "description": "The kind of definition: `StateMachine`."
        })
    }
}

/// A state machine definition (`kind: StateMachine`): named states, the events that move an
/// instance from one to another, timers, and guards on other machines. Configuration
/// management asks `GET /machines/{id}/state?state=S` ("may I do the step of S now?") and
/// reports `PUT /machines/{id}/state?state=S` when it has.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Levee StateMachine")]
pub(crate) struct StateMachineSpec {
    /// The kind of definition: `StateMachine`.
    #[schemars(with = "StateMachineKind")]
    #[allow(
        dead_code,
        reason = "read by the loader's dispatch on `kind` before this type"
    )]
    pub kind: Spanned<String>,
    /// The definition's name, unique among state machines.
    #[schemars(with = "DefinitionName")]
    pub name: Field<DefinitionName>,
    /// What the machine is for, in a sentence or two.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
    /// The state new instances start in. Defaults to the first state.
    #[serde(default)]
    #[schemars(with = "Option<StateName>")]
    pub initial: Field<StateName>,
    /// Ids of the machine instances to create when the definition is applied. Instances can
    /// also be created later through the API.
    #[serde(default)]
    #[schemars(with = "Option<Vec<MachineId>>", length(max = MAX_INLINE_INSTANCES))]
    pub instances: Field<Spanned<Vec<MachineId>>>,
    /// The states, in order. Names are unique.
    #[schemars(with = "Vec<StateSpec>", length(min = 1, max = MAX_STATES))]
    pub states: Field<Spanned<Vec<Spanned<Recover<StateSpec>>>>>,
}

/// One state. A state either moves on (through `on` events or a `timer`) or is `final`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "State")]
pub(crate) struct StateSpec {
    /// The state's name, unique in this machine.
    #[schemars(with = "StateName")]
    pub name: Field<StateName>,
    /// What happens in this state, in a sentence or two.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
    /// Transitions by event name. A value is the target state (`done: installed`) or a
    /// mapping (`done: { to: installed, count: 3 }`). A plain report sends the event `done`.
    #[serde(default)]
    #[schemars(with = "Option<OrderedMap<EventName, TransitionSpec>>")]
    pub on: Field<Spanned<OrderedMap<EventName, Recover<TransitionSpec>>>>,
    /// A transition the state takes by itself: `after` some time in the state, or `at` an
    /// instant. A state may have both `on` events and one timer.
    #[serde(default)]
    #[schemars(with = "Option<TimerSpec>")]
    pub timer: Field<Spanned<TimerSpec>>,
    /// Conditions on other machines that must all hold before this state's step may be taken:
    /// until they do, a check answers "no" and reports are refused.
    #[serde(default)]
    #[schemars(with = "Option<Vec<GuardSpec>>")]
    pub guard: Field<Spanned<Vec<Recover<GuardSpec>>>>,
    /// `true` for a state the machine ends in: it has no `on` or `timer`, answers "yes" to
    /// checks, and refuses reports.
    #[serde(default, rename = "final")]
    #[schemars(with = "Option<bool>")]
    pub is_final: Field<Spanned<bool>>,
}

/// Where an event leads: the target state alone, or a mapping with `to` and `count`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename = "$levee::shorthand::to::transition", deny_unknown_fields)]
#[schemars(rename = "Transition", transform = transition_shorthand)]
pub(crate) struct TransitionSpec {
    /// The state to move to.
    pub to: StateName,
    /// Reports needed before the transition fires (default 1). With a reporter name on each
    /// report, this is a barrier across that many distinct reporters.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1, max = MAX_TRANSITION_COUNT))]
    pub count: Option<Spanned<i64>>,
}

/// Adds the shorthand (the target state alone) to the schema of [`TransitionSpec`].
fn transition_shorthand(schema: &mut Schema) {
    let description = schema.remove("description");
    let long_form = std::mem::replace(schema, json_schema!({}));
    let mut combined = json_schema!({
        "anyOf": [
            {
                "type": "string",
                "pattern": STATE_NAME_PATTERN,
                "description": "The target state: shorthand for `{ to: STATE }`."
            },
            long_form
        ]
    });
    if let Some(description) = description {
        combined.insert("description".to_string(), description);
    }
    *schema = combined;
}

/// A timer: exactly one of `after` and `at`, and the state to move to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "Timer",
    extend("oneOf" = [{ "required": ["after"] }, { "required": ["at"] }])
)]
pub(crate) struct TimerSpec {
    /// Fire this long after the instance entered the state, such as `10m` or `1h30m`.
    #[serde(default)]
    pub after: Option<DurationText>,
    /// Fire at this instant, such as `2030-01-01T12:00:00Z`.
    #[serde(default)]
    pub at: Option<InstantText>,
    /// The state to move to when the timer fires.
    pub to: StateName,
}

/// A condition on another machine: it holds while that machine is in one of the given states.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Guard")]
pub(crate) struct GuardSpec {
    /// Id of the machine to look at. Its states are not checked here, since its definition
    /// may live in another file.
    pub machine: MachineId,
    /// The state, or the list of states, that machine must be in.
    #[serde(rename = "in")]
    pub in_states: Spanned<OneOrMany<StateName>>,
}

/// Compiles one `kind: StateMachine` document. Problems are recorded in `reader`; the machine
/// is returned only if this document has no errors.
pub(crate) fn compile(root: &Node, reader: &Reader, ctx: &LoadContext) -> Option<MachineDef> {
    let errors_before = reader.error_count();
    let spec: StateMachineSpec = reader.read(root)?;
    let compiler = Compiler {
        reader,
        ctx,
        known_states: raw_state_names(root),
    };
    let machine = compiler.machine(root, spec);
    if reader.error_count() > errors_before {
        return None;
    }
    let machine = machine?;
    compiler.warn_unreachable(root, &machine);
    Some(machine)
}

/// The keys a state may have: [`StateSpec`]'s fields as written in YAML.
const STATE_KEYS: &[&str] = &["name", "description", "on", "timer", "guard", "final"];

fn has_unknown_state_keys(state: &Node) -> bool {
    state
        .as_mapping()
        .unwrap_or(&[])
        .iter()
        .any(|(key, _)| !key.as_str().is_some_and(|key| STATE_KEYS.contains(&key)))
}

/// Names of every state written in the document, including states that failed to parse, so
/// that one broken state does not turn every transition to it into an "unknown state" error.
fn raw_state_names(root: &Node) -> Vec<String> {
    root.get("states")
        .and_then(Node::as_sequence)
        .unwrap_or(&[])
        .iter()
        .filter_map(|state| state.get("name").and_then(Node::as_str))
        .map(str::to_string)
        .collect()
}

struct Compiler<'a> {
    reader: &'a Reader<'a>,
    ctx: &'a LoadContext,
    known_states: Vec<String>,
}

impl Compiler<'_> {
    fn machine(&self, root: &Node, spec: StateMachineSpec) -> Option<MachineDef> {
        if spec.name.is_none() {
            self.reader.error(
                root.loc,
                "missing-key",
                format!(
                    "This StateMachine has no `name`; add `name: ...` ({DEFINITION_NAME_RULE})."
                ),
            );
        }
        let name = field(&spec.name).map(|name| {
            if !names::is_valid_definition_name(&name.value) {
                self.reader.error(
                    name.loc,
                    "invalid-name",
                    format!(
                        "`{}` is not a valid definition name: {DEFINITION_NAME_RULE}.",
                        abbreviate(&name.value)
                    ),
                );
            }
            name.value.clone()
        });
        let instances = field(&spec.instances)
            .map(|instances| self.instances(instances))
            .unwrap_or_default();
        if spec.states.is_none() {
            self.reader.error(
                root.loc,
                "missing-key",
                "This StateMachine has no `states`; add a list of states, such as \
                 `states: [{ name: start, on: { done: end } }, { name: end, final: true }]`.",
            );
        }
        let states = field(&spec.states)
            .map(|states| self.states(root, states))
            .unwrap_or_default();
        let initial = match field(&spec.initial) {
            Some(initial) => {
                self.check_state_reference(initial, "`initial`");
                Some(initial.value.clone())
            }
            None => states.first().map(|state| state.name.clone()),
        };
        Some(MachineDef {
            name: name?,
            description: field(&spec.description).cloned(),
            initial: initial?,
            states,
            instances,
            format: DefFormat::Native,
        })
    }

    fn instances(&self, instances: &Spanned<Vec<MachineId>>) -> Vec<String> {
        if instances.value.len() > MAX_INLINE_INSTANCES {
            self.reader.error(
                instances.loc,
                "too-many-instances",
                format!(
                    "This list has {} instances; at most {MAX_INLINE_INSTANCES} may be declared \
                     inline. Create the others through the API.",
                    instances.value.len()
                ),
            );
        }
        let mut first_seen: HashMap<&str, Loc> = HashMap::new();
        let mut ids = Vec::with_capacity(instances.value.len());
        for id in &instances.value {
            if !names::is_valid_machine_id(&id.value) {
                self.reader.error(
                    id.loc,
                    "invalid-name",
                    format!(
                        "`{}` is not a valid machine id: {MACHINE_ID_RULE}.",
                        abbreviate(&id.value)
                    ),
                );
            }
            if let Some(first) = first_seen.get(id.value.as_str()) {
                self.reader.error(
                    id.loc,
                    "duplicate-instance",
                    format!(
                        "The instance `{}` is already listed on line {}; remove one of them.",
                        abbreviate(&id.value),
                        first.line
                    ),
                );
            } else {
                first_seen.insert(&id.value, id.loc);
                ids.push(id.value.clone());
            }
        }
        ids
    }

    fn states(
        &self,
        root: &Node,
        states: &Spanned<Vec<Spanned<Recover<StateSpec>>>>,
    ) -> Vec<StateDef> {
        if states.value.is_empty() {
            self.reader.error(
                states.loc,
                "no-states",
                "`states` is empty; a machine needs at least one state.",
            );
        }
        if states.value.len() > MAX_STATES {
            self.reader.error(
                states.loc,
                "too-many-states",
                format!(
                    "This machine has {} states; at most {MAX_STATES} are allowed. Split it into \
                     several machines joined by guards.",
                    states.value.len()
                ),
            );
        }
        let state_nodes = root
            .get("states")
            .and_then(Node::as_sequence)
            .unwrap_or(&[]);
        let mut first_seen: HashMap<&str, Loc> = HashMap::new();
        let mut compiled = Vec::with_capacity(states.value.len());
        for (index, state) in states.value.iter().enumerate() {
            let Some(spec) = &state.value.0 else {
                continue;
            };
            if spec.name.is_none() {
                self.reader.error(
                    state.loc,
                    "missing-key",
                    format!("This state has no `name`; add `name: ...` ({STATE_NAME_RULE})."),
                );
            }
            let Some(name) = field(&spec.name) else {
                continue;
            };
            if !names::is_valid_state_name(&name.value) {
                self.reader.error(
                    name.loc,
                    "invalid-name",
                    format!(
                        "`{}` is not a valid state name: {STATE_NAME_RULE}.",
                        abbreviate(&name.value)
                    ),
                );
            }
            if let Some(first) = first_seen.get(name.value.as_str()) {
                self.reader.error(
                    name.loc,
                    "duplicate-state",
                    format!(
                        "The state `{}` is already defined on line {}; rename or remove one of \
                         them.",
                        abbreviate(&name.value),
                        first.line
                    ),
                );
                continue;
            }
            first_seen.insert(&name.value, name.loc);
            let has_unknown_keys = state_nodes.get(index).is_some_and(has_unknown_state_keys);
            compiled.push(self.state(name, spec, has_unknown_keys));
        }
        compiled
    }

    /// Compiles one state. `has_unknown_keys` says an unknown key was already reported in it;
    /// then a missing way out is most likely that key's fault (`tragets:`, `tiemr:`), and is not
    /// reported a second time as a dead end.
    fn state(&self, name: &StateName, spec: &StateSpec, has_unknown_keys: bool) -> StateDef {
        let on = field(&spec.on)
            .map(|on| self.transitions(on))
            .unwrap_or_default();
        let timer = field(&spec.timer).and_then(|timer| self.timer(timer.loc, &timer.value));
        let guards = field(&spec.guard)
            .map(|guards| self.guards(&guards.value))
            .unwrap_or_default();
        // A key whose value had errors counts as present: its errors are reported already.
        let has_on = match &spec.on {
            Some(Recover(Some(on))) => !on.value.0.is_empty(),
            Some(Recover(None)) => true,
            None => false,
        };
        let has_timer = spec.timer.is_some();
        let final_flag = field(&spec.is_final);
        match final_flag {
            Some(final_flag) if final_flag.value => {
                if has_on || has_timer {
                    let what = match (has_on, has_timer) {
                        (true, true) => "`on` and `timer`",
                        (true, false) => "`on`",
                        _ => "`timer`",
                    };
                    self.reader.error(
                        final_flag.loc,
                        "final-with-transitions",
                        format!(
                            "The state `{}` is final but has {what}; a final state has no \
                             transitions. Remove {what}, or remove `final: true`.",
                            abbreviate(&name.value)
                        ),
                    );
                }
                if let Some(guard) = field(&spec.guard) {
                    self.reader.warning(
                        guard.loc,
                        "guard-on-final",
                        format!(
                            "The state `{}` is final, so it takes no step and its guards never \
                             apply; remove `guard`.",
                            abbreviate(&name.value)
                        ),
                    );
                }
            }
            None if spec.is_final.is_some() => {}
            _ if !has_on && !has_timer && !has_unknown_keys => {
                self.reader.error(
                    name.loc,
                    "dead-end",
                    format!(
                        "The state `{}` has no way out: add `on`, a `timer`, or `final: true`.",
                        abbreviate(&name.value)
                    ),
                );
            }
            _ => {}
        }
        StateDef {
            name: name.value.clone(),
            description: field(&spec.description).cloned(),
            on,
            timer,
            guards,
            is_final: final_flag.is_some_and(|f| f.value),
            compat_counter: None,
        }
    }

    fn transitions(
        &self,
        on: &Spanned<OrderedMap<EventName, Recover<TransitionSpec>>>,
    ) -> Vec<EventTransition> {
        let mut transitions = Vec::with_capacity(on.value.0.len());
        for (event, transition) in &on.value.0 {
            if !names::is_valid_state_name(&event.value) {
                self.reader.error(
                    event.loc,
                    "invalid-name",
                    format!(
                        "`{}` is not a valid event name: {STATE_NAME_RULE}.",
                        abbreviate(&event.value)
                    ),
                );
            }
            let Some(transition) = &transition.0 else {
                continue;
            };
            self.check_state_reference(&transition.to, "This transition's target");
            let count = match &transition.count {
                None => 1,
                Some(count) => match u32::try_from(count.value) {
                    Ok(value) if (1..=MAX_TRANSITION_COUNT).contains(&value) => value,
                    _ => {
                        self.reader.error(
                            count.loc,
                            "invalid-count",
                            format!(
                                "`count` is {}; it must be between 1 and {MAX_TRANSITION_COUNT} \
                                 (the number of reports needed before the transition fires).",
                                count.value
                            ),
                        );
                        1
                    }
                },
            };
            transitions.push(EventTransition {
                event: event.value.clone(),
                to: transition.to.value.clone(),
                count,
            });
        }
        transitions
    }

    fn timer(&self, loc: Loc, timer: &TimerSpec) -> Option<Timer> {
        self.check_state_reference(&timer.to, "This timer's target");
        let to = timer.to.value.clone();
        match (&timer.after, &timer.at) {
            (Some(_), Some(at)) => {
                self.reader.error(
                    at.loc,
                    "conflicting-keys",
                    "A timer has either `after` or `at`, not both; remove one of them.",
                );
                None
            }
            (None, None) => {
                self.reader.error(
                    loc,
                    "missing-key",
                    "This timer has neither `after` nor `at`; add `after: 10m` (time in the \
                     state) or `at: 2030-01-01T12:00:00Z` (an instant).",
                );
                None
            }
            (Some(after), None) => match parse_duration_ms(&after.value) {
                Ok(0) => {
                    self.reader.error(
                        after.loc,
                        "invalid-duration",
                        format!(
                            "A timer's `after` must be longer than zero, not `{}`; remove the \
                             timer or give it a duration such as `30s`.",
                            abbreviate(&after.value)
                        ),
                    );
                    None
                }
                Ok(duration_ms) => Some(Timer::After { duration_ms, to }),
                Err(message) => {
                    self.reader.error(after.loc, "invalid-duration", message);
                    None
                }
            },
            (None, Some(at)) => {
                let at_ms = check_instant(self.reader, self.ctx, at)?;
                Some(Timer::At { at_ms, to })
            }
        }
    }

    fn guards(&self, guards: &[Recover<GuardSpec>]) -> Vec<Guard> {
        let mut compiled = Vec::with_capacity(guards.len());
        for guard in guards.iter().filter_map(|g| g.0.as_ref()) {
            if !names::is_valid_machine_id(&guard.machine.value) {
                self.reader.error(
                    guard.machine.loc,
                    "invalid-name",
                    format!(
                        "`{}` is not a valid machine id: {MACHINE_ID_RULE}.",
                        abbreviate(&guard.machine.value)
                    ),
                );
            }
            if guard.in_states.value.0.is_empty() {
                self.reader.error(
                    guard.in_states.loc,
                    "invalid-guard",
                    "This guard's `in` lists no states, so it could never hold; name at least \
                     one state.",
                );
            }
            for state in &guard.in_states.value.0 {
                if !names::is_valid_state_name(&state.value) {
                    self.reader.error(
                        state.loc,
                        "invalid-name",
                        format!(
                            "`{}` is not a valid state name: {STATE_NAME_RULE}.",
                            abbreviate(&state.value)
                        ),
                    );
                }
            }
            compiled.push(Guard {
                machine: guard.machine.value.clone(),
                in_states: guard
                    .in_states
                    .value
                    .0
                    .iter()
                    .map(|s| s.value.clone())
                    .collect(),
            });
        }
        compiled
    }

    fn check_state_reference(&self, state: &Spanned<String>, what: &str) {
        if !self.known_states.contains(&state.value) {
            self.reader.error(
                state.loc,
                "unknown-state",
                format!(
                    "{what} names the state `{}`, which this machine does not define.{}",
                    abbreviate(&state.value),
                    names::did_you_mean(&state.value, self.known_states.iter().map(String::as_str))
                ),
            );
        }
    }

    fn warn_unreachable(&self, root: &Node, machine: &MachineDef) {
        let reachable = reachable_states(machine);
        let state_nodes = root
            .get("states")
            .and_then(Node::as_sequence)
            .unwrap_or(&[]);
        for state in &machine.states {
            if reachable.contains(state.name.as_str()) {
                continue;
            }
            let loc = state_nodes
                .iter()
                .filter_map(|node| node.get("name"))
                .find(|name| name.as_str() == Some(state.name.as_str()))
                .map_or(root.loc, |name| name.loc);
            self.reader.warning(
                loc,
                "unreachable-state",
                format!(
                    "No transition leads from the initial state `{}` to the state `{}`; add one, \
                     or remove the state.",
                    machine.initial, state.name
                ),
            );
        }
    }
}

/// Parses an absolute timer's instant and refuses one in the past (unless the context allows
/// it). Shared with the StateService loader.
pub(crate) fn check_instant(
    reader: &Reader,
    ctx: &LoadContext,
    at: &Spanned<String>,
) -> Option<i64> {
    match parse_instant_ms(&at.value, &ctx.local_tz) {
        Err(message) => {
            reader.error(at.loc, "invalid-time", message);
            None
        }
        Ok(at_ms) if at_ms < ctx.now_ms && !ctx.allow_past_timers => {
            let now = jiff::Timestamp::from_millisecond(ctx.now_ms)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| format!("{} ms after the epoch", ctx.now_ms));
            reader.error(
                at.loc,
                "timer-in-past",
                format!(
                    "The timer time `{}` is in the past (it is now {now}), so the timer would fire \
                     at once; give a future time.",
                    abbreviate(&at.value)
                ),
            );
            None
        }
        Ok(at_ms) => Some(at_ms),
    }
}

/// Names of the states reachable from the initial state through events and timers.
pub(crate) fn reachable_states(machine: &MachineDef) -> HashSet<&str> {
    let mut reachable: HashSet<&str> = HashSet::new();
    let mut queue: VecDeque<&str> = VecDeque::new();
    reachable.insert(machine.initial.as_str());
    queue.push_back(machine.initial.as_str());
    while let Some(name) = queue.pop_front() {
        let Some(state) = machine.state(name) else {
            continue;
        };
        let targets = state
            .on
            .iter()
            .map(|t| t.to.as_str())
            .chain(state.timer.as_ref().map(Timer::target));
        for target in targets {
            if reachable.insert(target) {
                queue.push_back(target);
            }
        }
    }
    reachable
}
