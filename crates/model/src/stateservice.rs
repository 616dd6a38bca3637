//! Facebook StateService's file format, accepted verbatim.
//!
//! ```yaml
//! current_state: green_state
//! states:
//!   - name: green_state
//!     func: increment          # or: time
//!     current: { key: count, value: 0 }
//!     target:
//!       name: red_state
//!       when: { key: count, value: 1 }   # for func: time, {key: clock, value: '2030-01-01T12:00:00'}
//!   - name: blue_state         # no func: a final state
//! ```
//!
//! One file is one machine. `func: increment` becomes a `done` transition needing
//! `when.value - current.value` reports; `func: time` becomes an absolute timer (a `clock`
//! without an offset is local time); a state without `func` is final. StateService ignores keys
//! it does not know, so unknown keys are warnings here, not errors.

use std::collections::HashMap;

use serde::Deserialize;

use crate::de::{Field, Reader, Recover, Spanned, UnknownKeys, field};
use crate::load::{LoadContext, check_size, sorted};
use crate::machine::{
    CompatCounter, DEFAULT_EVENT, DefFormat, EventTransition, MachineDef, StateDef, Timer,
};
use crate::names::{self, MACHINE_ID_RULE, STATE_NAME_RULE};
use crate::state_machine::{check_instant, reachable_states};
use crate::yaml::{self, Loc, Node, abbreviate};
use crate::{Diagnostic, MAX_STATES, MAX_TRANSITION_COUNT};

/// The `func` values StateService knows.
pub const FUNCS: &[&str] = &["increment", "time"];

const IGNORED_NOTE: &str = "StateService ignores keys it does not know, and so does Levee.";

#[derive(Debug, Deserialize)]
struct FileSpec {
    current_state: Field<Spanned<String>>,
    states: Field<Spanned<Vec<Spanned<Recover<StateSpec>>>>>,
}

#[derive(Debug, Deserialize)]
struct StateSpec {
    name: Field<Spanned<String>>,
    func: Field<Spanned<String>>,
    current: Field<Spanned<CounterSpec>>,
    target: Field<Spanned<TargetSpec>>,
}

/// `{ key: count, value: 0 }`. The value is kept as text: a number for `increment`, a time for
/// `time`.
#[derive(Debug, Deserialize)]
struct CounterSpec {
    key: Spanned<String>,
    value: Spanned<String>,
}

#[derive(Debug, Deserialize)]
struct TargetSpec {
    name: Spanned<String>,
    when: Spanned<CounterSpec>,
}

/// Whether `source` looks like a StateService file: its (first) document is a mapping with
/// `current_state` and no `kind`. Text that does not parse is not.
pub fn looks_like_stateservice(source: &str) -> bool {
    if source.len() > crate::MAX_DEFINITION_BYTES {
        return false;
    }
    let parsed = yaml::parse_file("", source);
    parsed
        .documents
        .first()
        .is_some_and(|root| root.get("current_state").is_some() && root.get("kind").is_none())
}

/// Loads a StateService file as the machine `name` (its one instance has the same id). On
/// failure, returns every error found, and the warnings, sorted by line.
pub fn load(
    file: &str,
    name: &str,
    source: &str,
    ctx: &LoadContext,
) -> Result<MachineDef, Vec<Diagnostic>> {
    load_with_warnings(file, name, source, ctx).map(|(machine, _)| machine)
}

/// Like [`load`], and on success also returns the warnings (unknown keys, ignored targets,
/// unreachable states), sorted by line.
pub fn load_with_warnings(
    file: &str,
    name: &str,
    source: &str,
    ctx: &LoadContext,
) -> Result<(MachineDef, Vec<Diagnostic>), Vec<Diagnostic>> {
    if let Some(too_large) = check_size(file, source) {
        return Err(vec![too_large]);
    }
    let parsed = yaml::parse_file(file, source);
    let reader = Reader::new(file, UnknownKeys::Warn { note: IGNORED_NOTE }, &[]);
    for diagnostic in parsed.diagnostics {
        reader.push_diagnostic(diagnostic);
    }
    if !names::is_valid_machine_id(name) {
        reader.error(
            Loc::FILE,
            "invalid-name",
            format!(
                "`{}` is not a valid machine name: {MACHINE_ID_RULE}.",
                abbreviate(name)
            ),
        );
    }
    let machine = match parsed.documents.as_slice() {
        [] => {
            if reader.error_count() == 0 {
                reader.error(
                    Loc::FILE,
                    "empty-file",
                    "The file is empty; a StateService file has `current_state` and `states`.",
                );
            }
            None
        }
        [root, rest @ ..] => {
            if let Some(second) = rest.first() {
                reader.error(
                    second.loc,
                    "multiple-documents",
                    "A StateService file holds one document; remove everything from this `---` \
                     on, or put it in another file.",
                );
            }
            compile(root, name, &reader, ctx)
        }
    };
    let diagnostics = sorted(reader.into_diagnostics());
    match machine {
        Some(machine) if !diagnostics.iter().any(Diagnostic::is_error) => {
            Ok((machine, diagnostics))
        }
        _ => Err(diagnostics),
    }
}

fn compile(root: &Node, name: &str, reader: &Reader, ctx: &LoadContext) -> Option<MachineDef> {
    if root.as_mapping().is_none() {
        reader.error(
            root.loc,
            "wrong-type",
            format!(
                "A StateService file is a mapping with `current_state` and `states`, not {}.",
                root.describe()
            ),
        );
        return None;
    }
    if let Some((key, _)) = root.entry("kind") {
        reader.error(
            key.loc,
            "not-stateservice",
            "This file has `kind`, so it is a Levee definition, not a StateService file; store \
             it with `levee apply FILE`.",
        );
        return None;
    }
    let errors_before = reader.error_count();
    let spec: FileSpec = reader.read(root)?;
    let known_states: Vec<String> = root
        .get("states")
        .and_then(Node::as_sequence)
        .unwrap_or(&[])
        .iter()
        .filter_map(|state| state.get("name").and_then(Node::as_str))
        .map(str::to_string)
        .collect();
    let compiler = Compiler {
        reader,
        ctx,
        known_states,
    };
    if spec.current_state.is_none() {
        reader.error(
            root.loc,
            "missing-key",
            "This file has no `current_state`; add `current_state: NAME` with the state a new \
             machine starts in.",
        );
    }
    let initial = field(&spec.current_state).map(|current| {
        compiler.check_state_reference(current, "`current_state`");
        current.value.clone()
    });
    if spec.states.is_none() {
        reader.error(
            root.loc,
            "missing-key",
            "This file has no `states`; add the list of states.",
        );
    }
    let states = field(&spec.states)
        .map(|states| compiler.states(states))
        .unwrap_or_default();
    if reader.error_count() > errors_before {
        return None;
    }
    let machine = MachineDef {
        name: name.to_string(),
        description: None,
        initial: initial?,
        states,
        instances: vec![name.to_string()],
        format: DefFormat::StateService,
    };
    let reachable = reachable_states(&machine);
    for state in &machine.states {
        if !reachable.contains(state.name.as_str()) {
            let loc = compiler.state_name_loc(root, &state.name);
            reader.warning(
                loc,
                "unreachable-state",
                format!(
                    "No target leads from `current_state` (`{}`) to the state `{}`.",
                    machine.initial, state.name
                ),
            );
        }
    }
    Some(machine)
}

struct Compiler<'a> {
    reader: &'a Reader<'a>,
    ctx: &'a LoadContext,
    known_states: Vec<String>,
}

impl Compiler<'_> {
    fn states(&self, states: &Spanned<Vec<Spanned<Recover<StateSpec>>>>) -> Vec<StateDef> {
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
                    "This file has {} states; at most {MAX_STATES} are allowed.",
                    states.value.len()
                ),
            );
        }
        let mut first_seen: HashMap<&str, Loc> = HashMap::new();
        let mut compiled = Vec::new();
        for state in &states.value {
            let Some(spec) = &state.value.0 else {
                continue;
            };
            if spec.name.is_none() {
                self.reader.error(
                    state.loc,
                    "missing-key",
                    "This state has no `name`; add `name: ...`.",
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
                        "`{}` is not a state name Levee can serve: {STATE_NAME_RULE}.",
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
            if let Some(state) = self.state(state.loc, name, spec) {
                compiled.push(state);
            }
        }
        compiled
    }

    fn state(&self, loc: Loc, name: &Spanned<String>, spec: &StateSpec) -> Option<StateDef> {
        let mut state = StateDef {
            name: name.value.clone(),
            description: None,
            on: Vec::new(),
            timer: None,
            guards: Vec::new(),
            is_final: false,
            compat_counter: None,
        };
        if spec.func.is_some() && field(&spec.func).is_none() {
            return None;
        }
        let Some(func) = field(&spec.func) else {
            if let Some(target) = field(&spec.target) {
                self.reader.warning(
                    target.loc,
                    "ignored-key",
                    format!(
                        "The state `{}` has no `func`, so it is final and its `target` is \
                         ignored; remove `target`, or add `func: increment` or `func: time`.",
                        abbreviate(&name.value)
                    ),
                );
            }
            state.is_final = true;
            return Some(state);
        };
        if !FUNCS.contains(&func.value.as_str()) {
            self.reader.error(
                func.loc,
                "unknown-func",
                format!(
                    "Unknown `func: {}`.{} StateService knows `increment` (count reports) and \
                     `time` (move at a time); leave `func` out for a final state.",
                    abbreviate(&func.value),
                    names::did_you_mean(&func.value, FUNCS.iter().copied())
                ),
            );
            return None;
        }
        if spec.target.is_some() && field(&spec.target).is_none() {
            return None;
        }
        let Some(target) = field(&spec.target) else {
            self.reader.error(
                func.loc,
                "missing-key",
                format!(
                    "The state `{}` has `func: {}` but no `target`; add `target: {{ name: STATE, \
                     when: {{ key: ..., value: ... }} }}`.",
                    abbreviate(&name.value),
                    func.value
                ),
            );
            return None;
        };
        self.check_state_reference(&target.value.name, "This target");
        let when = &target.value.when.value;
        if func.value == "time" {
            let at_ms = check_instant(self.reader, self.ctx, &when.value)?;
            state.timer = Some(Timer::At {
                at_ms,
                to: target.value.name.value.clone(),
            });
            return Some(state);
        }
        if spec.current.is_some() && field(&spec.current).is_none() {
            return None;
        }
        let Some(current) = field(&spec.current) else {
            self.reader.error(
                loc,
                "missing-key",
                format!(
                    "The state `{}` has `func: increment` but no `current`; add `current: {{ key: \
                     count, value: 0 }}`.",
                    abbreviate(&name.value)
                ),
            );
            return None;
        };
        let start = self.whole_number(&current.value.value)?;
        let end = self.whole_number(&when.value)?;
        let count = end.checked_sub(start).unwrap_or(i64::MIN);
        match u32::try_from(count) {
            Ok(count) if (1..=MAX_TRANSITION_COUNT).contains(&count) => {
                state.on.push(EventTransition {
                    event: DEFAULT_EVENT.to_string(),
                    to: target.value.name.value.clone(),
                    count,
                });
                state.compat_counter = Some(CompatCounter {
                    key: current.value.key.value.clone(),
                    start,
                });
                Some(state)
            }
            _ => {
                self.reader.error(
                    when.value.loc,
                    "invalid-count",
                    format!(
                        "`when.value` ({end}) must be between 1 and {MAX_TRANSITION_COUNT} more \
                         than `current.value` ({start}): the state moves on after that many \
                         reports."
                    ),
                );
                None
            }
        }
    }

    fn whole_number(&self, value: &Spanned<String>) -> Option<i64> {
        match value.value.parse::<i64>() {
            Ok(number) => Some(number),
            Err(_) => {
                self.reader.error(
                    value.loc,
                    "wrong-type",
                    format!(
                        "`value` must be a whole number for `func: increment`, not `{}`.",
                        abbreviate(&value.value)
                    ),
                );
                None
            }
        }
    }

    fn check_state_reference(&self, state: &Spanned<String>, what: &str) {
        if !self.known_states.contains(&state.value) {
            self.reader.error(
                state.loc,
                "unknown-state",
                format!(
                    "{what} names the state `{}`, which this file does not define.{}",
                    abbreviate(&state.value),
                    names::did_you_mean(&state.value, self.known_states.iter().map(String::as_str))
                ),
            );
        }
    }

    fn state_name_loc(&self, root: &Node, name: &str) -> Loc {
        root.get("states")
            .and_then(Node::as_sequence)
            .unwrap_or(&[])
            .iter()
            .filter_map(|node| node.get("name"))
            .find(|node| node.as_str() == Some(name))
            .map_or(root.loc, |node| node.loc)
    }
}
