//! Property tests: random valid machines, written as YAML text in varied styles, always load
//! to what was written; and no input, however broken, makes loading panic.

use std::collections::BTreeSet;

use levee_model::{LoadContext, Timer, load_documents, load_documents_with_warnings, stateservice};
use proptest::prelude::*;

/// 2025-01-01T00:00:00Z.
const NOW_MS: i64 = 1_735_689_600_000;

fn context() -> LoadContext {
    LoadContext::new(NOW_MS, jiff::tz::TimeZone::UTC)
}

/// How a name is written in YAML.
#[derive(Clone, Copy, Debug)]
enum Quoting {
    Plain,
    Single,
    Double,
}

fn write_name(name: &str, quoting: Quoting) -> String {
    // A plain `null` (or `~`, or nothing) is YAML's null, so such names must be quoted.
    let must_quote = matches!(name, "null" | "Null" | "NULL");
    match quoting {
        Quoting::Plain if !must_quote => name.to_string(),
        Quoting::Single | Quoting::Plain => format!("'{name}'"),
        Quoting::Double => format!("\"{name}\""),
    }
}

#[derive(Clone, Debug)]
struct TransitionCase {
    event: String,
    target: usize,
    count: Option<u32>,
    long_form: bool,
}

#[derive(Clone, Debug)]
enum TimerCase {
    After(&'static str, u64),
    At(&'static str, i64),
}

#[derive(Clone, Debug)]
struct StateCase {
    name: String,
    transitions: Vec<TransitionCase>,
    timer: Option<(TimerCase, usize)>,
    guard: Option<(String, Vec<String>)>,
    is_final: bool,
    flow_style: bool,
    quoting: Quoting,
}

#[derive(Clone, Debug)]
struct MachineCase {
    name: String,
    initial: Option<usize>,
    instances: Vec<String>,
    states: Vec<StateCase>,
}

fn quoting() -> impl Strategy<Value = Quoting> {
    prop_oneof![
        Just(Quoting::Plain),
        Just(Quoting::Single),
        Just(Quoting::Double)
    ]
}

/// Valid state and event names, including ones YAML would read as something else if it were
/// asked to guess: `true`, `on`, `1e3`, `0x10`, `null`.
fn name_stem() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}",
        prop::sample::select(vec![
            "true", "on", "yes", "no", "1e3", "0x10", "007", "null", "done", "failed", "_x",
        ])
        .prop_map(str::to_string),
    ]
}

fn timer_case() -> impl Strategy<Value = TimerCase> {
    prop_oneof![
        prop::sample::select(vec![
            ("500ms", 500u64),
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
        ])
        .prop_map(|(text, ms)| TimerCase::After(text, ms)),
        prop::sample::select(vec![
            ("2030-01-01T12:00:00Z", 1_893_499_200_000i64),
            ("2030-01-01T14:00:00+02:00", 1_893_499_200_000),
            ("2030-01-01T12:00:00", 1_893_499_200_000),
        ])
        .prop_map(|(text, ms)| TimerCase::At(text, ms)),
    ]
}

fn machine_case() -> impl Strategy<Value = MachineCase> {
    (1usize..10).prop_flat_map(|state_count| {
        let state = (
            name_stem(),
            prop::collection::vec(
                (
                    name_stem(),
                    0..state_count,
                    prop::option::of(1u32..=5),
                    any::<bool>(),
                ),
                0..3,
            ),
            prop::option::of((timer_case(), 0..state_count)),
            prop::option::of((
                "[A-Za-z0-9][A-Za-z0-9._-]{0,10}",
                prop::collection::vec(name_stem(), 1..3),
            )),
            any::<bool>(),
            any::<bool>(),
            quoting(),
        );
        (
            "[a-z0-9][a-z0-9._-]{0,20}",
            prop::option::of(0..state_count),
            prop::collection::btree_set("[A-Za-z0-9][A-Za-z0-9._-]{0,10}", 0..4),
            prop::collection::vec(state, state_count),
        )
            .prop_map(|(name, initial, instances, states)| {
                let count = states.len();
                let states = states
                    .into_iter()
                    .enumerate()
                    .map(
                        |(index, (stem, transitions, timer, guard, is_final, flow, quoting))| {
                            // The index makes names unique and keeps them valid.
                            let name = format!("{stem}{index}");
                            let mut events = BTreeSet::new();
                            let transitions: Vec<TransitionCase> = transitions
                                .into_iter()
                                .filter(|(event, ..)| events.insert(event.clone()))
                                .map(|(event, target, count, long_form)| TransitionCase {
                                    event,
                                    target,
                                    count,
                                    long_form,
                                })
                                .collect();
                            // The last state is always final; a final state has no way out,
                            // and any other state needs one.
                            let is_final = index == count - 1 || is_final;
                            let (transitions, timer) = if is_final {
                                (Vec::new(), None)
                            } else if transitions.is_empty() && timer.is_none() {
                                let fallback = TransitionCase {
                                    event: "done".to_string(),
                                    target: count - 1,
                                    count: None,
                                    long_form: false,
                                };
                                (vec![fallback], None)
                            } else {
                                (transitions, timer)
                            };
                            StateCase {
                                name,
                                transitions,
                                timer,
                                guard: if is_final { None } else { guard },
                                is_final,
                                flow_style: flow,
                                quoting,
                            }
                        },
                    )
                    .collect();
                MachineCase {
                    name,
                    initial,
                    instances: instances.into_iter().collect(),
                    states,
                }
            })
    })
}

fn to_yaml(machine: &MachineCase) -> String {
    let mut out = format!("kind: StateMachine\nname: {}\n", machine.name);
    if let Some(initial) = machine.initial {
        let state = &machine.states[initial];
        out.push_str(&format!(
            "initial: {}\n",
            write_name(&state.name, state.quoting)
        ));
    }
    if !machine.instances.is_empty() {
        out.push_str(&format!("instances: [{}]\n", machine.instances.join(", ")));
    }
    out.push_str("states:\n");
    for state in &machine.states {
        let q = |name: &str| write_name(name, state.quoting);
        out.push_str(&format!("  - name: {}\n", q(&state.name)));
        if !state.transitions.is_empty() {
            let entries: Vec<String> = state
                .transitions
                .iter()
                .map(|t| {
                    let target = q(&machine.states[t.target].name);
                    let value = match (t.long_form, t.count) {
                        (false, None) => target,
                        (_, Some(count)) => format!("{{ to: {target}, count: {count} }}"),
                        (true, None) => format!("{{ to: {target} }}"),
                    };
                    format!("{}: {value}", q(&t.event))
                })
                .collect();
            if state.flow_style {
                out.push_str(&format!("    on: {{ {} }}\n", entries.join(", ")));
            } else {
                out.push_str("    on:\n");
                for entry in entries {
                    out.push_str(&format!("      {entry}\n"));
                }
            }
        }
        if let Some((timer, target)) = &state.timer {
            let target = q(&machine.states[*target].name);
            let when = match timer {
                TimerCase::After(text, _) => format!("after: {text}"),
                TimerCase::At(text, _) => format!("at: \"{text}\""),
            };
            out.push_str(&format!("    timer: {{ {when}, to: {target} }}\n"));
        }
        if let Some((machine_id, in_states)) = &state.guard {
            let in_states: Vec<String> = in_states.iter().map(|s| q(s)).collect();
            let in_value = match in_states.as_slice() {
                [one] => one.clone(),
                many => format!("[{}]", many.join(", ")),
            };
            out.push_str(&format!(
                "    guard:\n      - machine: {machine_id}\n        in: {in_value}\n"
            ));
        }
        if state.is_final {
            out.push_str("    final: true\n");
        }
    }
    out
}

proptest! {
    #[test]
    fn valid_machines_always_load(machine in machine_case()) {
        let source = to_yaml(&machine);
        let loaded = match load_documents_with_warnings("random.yaml", &source, &context()) {
            Ok(loaded) => loaded,
            Err(diagnostics) => {
                let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
                return Err(TestCaseError::fail(format!(
                    "did not load:\n{source}\n{}",
                    rendered.join("\n")
                )));
            }
        };
        prop_assert!(loaded.warnings.iter().all(|w| w.code == "unreachable-state"));
        prop_assert_eq!(loaded.definitions.len(), 1);
        let compiled = loaded.definitions[0].as_state_machine().expect("a state machine");
        let names: BTreeSet<&str> = compiled.states.iter().map(|s| s.name.as_str()).collect();

        // Every reference names an existing state.
        prop_assert!(names.contains(compiled.initial.as_str()));
        for state in &compiled.states {
            for transition in &state.on {
                prop_assert!(names.contains(transition.to.as_str()), "{}", transition.to);
            }
            if let Some(timer) = &state.timer {
                prop_assert!(names.contains(timer.target()));
            }
        }

        // And the machine is what was written.
        prop_assert_eq!(&compiled.name, &machine.name);
        prop_assert_eq!(&compiled.instances, &machine.instances);
        let initial = machine.initial.unwrap_or(0);
        prop_assert_eq!(&compiled.initial, &machine.states[initial].name);
        prop_assert_eq!(compiled.states.len(), machine.states.len());
        for (written, state) in machine.states.iter().zip(&compiled.states) {
            prop_assert_eq!(&state.name, &written.name);
            prop_assert_eq!(state.is_final, written.is_final);
            prop_assert_eq!(state.on.len(), written.transitions.len());
            for (t, compiled_t) in written.transitions.iter().zip(&state.on) {
                prop_assert_eq!(&compiled_t.event, &t.event);
                prop_assert_eq!(&compiled_t.to, &machine.states[t.target].name);
                prop_assert_eq!(compiled_t.count, t.count.unwrap_or(1));
            }
            match (&written.timer, &state.timer) {
                (None, None) => {}
                (Some((TimerCase::After(_, ms), _)), Some(Timer::After { duration_ms, .. })) => {
                    prop_assert_eq!(ms, duration_ms);
                }
                (Some((TimerCase::At(_, ms), _)), Some(Timer::At { at_ms, .. })) => {
                    prop_assert_eq!(ms, at_ms);
                }
                (written, compiled) => {
                    return Err(TestCaseError::fail(format!("{written:?} became {compiled:?}")));
                }
            }
            prop_assert_eq!(state.guards.len(), usize::from(written.guard.is_some()));
        }
    }

    #[test]
    fn arbitrary_text_never_panics(source in ".{0,300}") {
        let _ = load_documents("noise.yaml", &source, &context());
        let _ = stateservice::load("noise.yaml", "noise", &source, &context());
        let _ = stateservice::looks_like_stateservice(&source);
    }

    #[test]
    fn broken_yaml_never_panics_and_points_into_the_file(
        fragments in prop::collection::vec(
            prop::sample::select(vec![
                "kind: StateMachine\n", "name: x\n", "states:\n", "  - name: a\n",
                "    on: { done: b }\n", "    final: true\n", "    timer: { after: 10m, to: a }\n",
                "current_state: a\n", "---\n", "- ", ": ", "[", "]", "{", "}", "&a ", "*a ",
                "  ", "\t", "\n", "'", "\"", "#", "!tag ", "count: 0", "in: [x", "~", "<<: *a\n",
            ]),
            0..40,
        )
    ) {
        let source: String = fragments.concat();
        let last_line = source.lines().count() as u64 + 1;
        for result in [
            load_documents("broken.yaml", &source, &context()).err(),
            stateservice::load("broken.yaml", "m", &source, &context()).err(),
        ] {
            for diagnostic in result.unwrap_or_default() {
                prop_assert!(diagnostic.line <= last_line, "{diagnostic}");
                prop_assert!(!diagnostic.message.is_empty());
            }
        }
    }
}
