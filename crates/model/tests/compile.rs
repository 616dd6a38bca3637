//! Definitions that load, and the exact `MachineDef`s they compile to.

use levee_model::{
    CompatCounter, DEFAULT_EVENT, DefFormat, Definition, EventTransition, Guard, LoadContext,
    MachineDef, StateDef, Timer, load_documents, load_documents_with_warnings, stateservice,
};

/// 2025-01-01T00:00:00Z.
const NOW_MS: i64 = 1_735_689_600_000;
/// 2030-01-01T12:00:00Z.
const JAN_2030_NOON_UTC_MS: i64 = 1_893_499_200_000;
const HOUR_MS: i64 = 3_600_000;

fn context() -> LoadContext {
    LoadContext::new(NOW_MS, jiff::tz::TimeZone::UTC)
}

fn state(name: &str) -> StateDef {
    StateDef {
        name: name.to_string(),
        description: None,
        on: Vec::new(),
        timer: None,
        guards: Vec::new(),
        is_final: false,
        compat_counter: None,
    }
}

fn on(event: &str, to: &str, count: u32) -> EventTransition {
    EventTransition {
        event: event.to_string(),
        to: to.to_string(),
        count,
    }
}

fn machines(source: &str) -> Vec<MachineDef> {
    match load_documents("deploy.yaml", source, &context()) {
        Ok(definitions) => definitions
            .into_iter()
            .filter_map(Definition::into_state_machine)
            .collect(),
        Err(diagnostics) => {
            let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            panic!("the definitions did not load:\n{}", rendered.join("\n"));
        }
    }
}

const THREE_TIER: &str = r#"# yaml-language-server: $schema=../../../schemas/state-machine.schema.json
kind: StateMachine
name: three-tier-db
description: Database primary first, then replicas, then app VMs.
initial: installing
instances: [db-1]
states:
  - name: installing
    description: Install and start the primary.
    on:
      done: installed
      failed: { to: broken }
  - name: installed
    on: { done: replicas_installing }
  - name: replicas_installing
    on:
      done: { to: replicas_ready, count: 3 }
      failed: broken
  - name: replicas_ready
    on: { done: soak }
  - name: soak
    timer: { after: 10m, to: window }
    on: { abort: broken }
  - name: window
    timer: { at: "2030-01-01T12:00:00Z", to: serving }
  - name: serving
    final: true
  - name: broken
    on: { retry: installing }
---
kind: StateMachine
name: app-vm
instances: [app-1, app-2]
states:
  - name: waiting
    guard:
      - { machine: db-1, in: serving }
    on: { done: deploy }
  - name: deploy
    guard:
      - machine: db-1
        in: [serving, window]
    timer: { after: 1h30m, to: done }
    on:
      done: done
  - name: done
    final: true
"#;

#[test]
fn three_tier_deployment_compiles_to_the_expected_machines() {
    let loaded = machines(THREE_TIER);
    let database = MachineDef {
        name: "three-tier-db".to_string(),
        description: Some("Database primary first, then replicas, then app VMs.".to_string()),
        initial: "installing".to_string(),
        states: vec![
            StateDef {
                description: Some("Install and start the primary.".to_string()),
                on: vec![on("done", "installed", 1), on("failed", "broken", 1)],
                ..state("installing")
            },
            StateDef {
                on: vec![on("done", "replicas_installing", 1)],
                ..state("installed")
            },
            StateDef {
                on: vec![on("done", "replicas_ready", 3), on("failed", "broken", 1)],
                ..state("replicas_installing")
            },
            StateDef {
                on: vec![on("done", "soak", 1)],
                ..state("replicas_ready")
            },
            StateDef {
                on: vec![on("abort", "broken", 1)],
                timer: Some(Timer::After {
                    duration_ms: 600_000,
                    to: "window".to_string(),
                }),
                ..state("soak")
            },
            StateDef {
                timer: Some(Timer::At {
                    at_ms: JAN_2030_NOON_UTC_MS,
                    to: "serving".to_string(),
                }),
                ..state("window")
            },
            StateDef {
                is_final: true,
                ..state("serving")
            },
            StateDef {
                on: vec![on("retry", "installing", 1)],
                ..state("broken")
            },
        ],
        instances: vec!["db-1".to_string()],
        format: DefFormat::Native,
    };
    let app = MachineDef {
        name: "app-vm".to_string(),
        description: None,
        initial: "waiting".to_string(),
        states: vec![
            StateDef {
                guards: vec![Guard {
                    machine: "db-1".to_string(),
                    in_states: vec!["serving".to_string()],
                }],
                on: vec![on("done", "deploy", 1)],
                ..state("waiting")
            },
            StateDef {
                guards: vec![Guard {
                    machine: "db-1".to_string(),
                    in_states: vec!["serving".to_string(), "window".to_string()],
                }],
                timer: Some(Timer::After {
                    duration_ms: 5_400_000,
                    to: "done".to_string(),
                }),
                on: vec![on("done", "done", 1)],
                ..state("deploy")
            },
            StateDef {
                is_final: true,
                ..state("done")
            },
        ],
        instances: vec!["app-1".to_string(), "app-2".to_string()],
        format: DefFormat::Native,
    };
    assert_eq!(loaded, vec![database, app.clone()]);
    assert_eq!(app.guarded_machines(), vec!["db-1".to_string()]);
}

#[test]
fn definitions_report_their_kind_and_name() {
    let definitions = load_documents("deploy.yaml", THREE_TIER, &context()).expect("loads");
    let names: Vec<(&str, &str)> = definitions.iter().map(|d| (d.kind(), d.name())).collect();
    assert_eq!(
        names,
        [
            ("StateMachine", "three-tier-db"),
            ("StateMachine", "app-vm")
        ]
    );
}

#[test]
fn initial_defaults_to_the_first_state_and_names_keep_their_text() {
    // `on`, `yes`, `01` and `null` are names here, not booleans, numbers or nothing.
    let loaded = machines(
        "kind: StateMachine\nname: odd-names\nstates:\n  - name: '01'\n    on: { on: yes, 'null': \"01\" }\n  - name: yes\n    final: true\n",
    );
    assert_eq!(loaded[0].initial, "01");
    assert_eq!(
        loaded[0].states[0].on,
        vec![on("on", "yes", 1), on("null", "01", 1)]
    );
}

#[test]
fn times_without_an_offset_are_local() {
    let source = "kind: StateMachine\nname: local\nstates:\n  - name: a\n    timer: { at: 2030-01-01T12:00:00, to: b }\n  - name: b\n    final: true\n";
    let paris_in_winter = jiff::tz::TimeZone::fixed(jiff::tz::offset(1));
    let ctx = LoadContext::new(NOW_MS, paris_in_winter);
    let definitions = load_documents("local.yaml", source, &ctx).expect("loads");
    let machine = definitions[0].as_state_machine().expect("a state machine");
    assert_eq!(
        machine.states[0].timer,
        Some(Timer::At {
            at_ms: JAN_2030_NOON_UTC_MS - HOUR_MS,
            to: "b".to_string()
        })
    );
}

#[test]
fn past_timers_are_accepted_when_the_context_allows_them() {
    let source = "kind: StateMachine\nname: restart\nstates:\n  - name: a\n    timer: { at: 2020-01-01T00:00:00Z, to: b }\n  - name: b\n    final: true\n";
    assert!(load_documents("restart.yaml", source, &context()).is_err());
    let ctx = LoadContext {
        allow_past_timers: true,
        ..context()
    };
    assert!(load_documents("restart.yaml", source, &ctx).is_ok());
}

#[test]
fn warnings_do_not_fail_a_load() {
    let source = "kind: StateMachine\nname: islands\nstates:\n  - { name: a, final: true }\n  - { name: b, on: { done: a } }\n";
    let loaded = load_documents_with_warnings("w.yaml", source, &context()).expect("loads");
    assert_eq!(loaded.definitions.len(), 1);
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].code, "unreachable-state");
    assert!(!loaded.warnings[0].is_error());
}

/// The README's example, in the form StateService's users have it on disk.
const STATESERVICE_README: &str = "\
current_state: green_state
states:
  - name: green_state
    func: increment
    current:
      key: count
      value: 0
    target:
      name: red_state
      when:
        key: count
        value: 1
  - name: red_state
    func: increment
    current:
      key: count
      value: 0
    target:
      name: blue_state
      when:
        key: count
        value: 1
  - name: blue_state
";

#[test]
fn stateservice_readme_example_compiles_to_the_expected_machine() {
    assert!(stateservice::looks_like_stateservice(STATESERVICE_README));
    let machine = stateservice::load("states.yaml", "states", STATESERVICE_README, &context())
        .expect("loads");
    let counter = Some(CompatCounter {
        key: "count".to_string(),
        start: 0,
    });
    let expected = MachineDef {
        name: "states".to_string(),
        description: None,
        initial: "green_state".to_string(),
        states: vec![
            StateDef {
                on: vec![on(DEFAULT_EVENT, "red_state", 1)],
                compat_counter: counter.clone(),
                ..state("green_state")
            },
            StateDef {
                on: vec![on(DEFAULT_EVENT, "blue_state", 1)],
                compat_counter: counter,
                ..state("red_state")
            },
            StateDef {
                is_final: true,
                ..state("blue_state")
            },
        ],
        instances: vec!["states".to_string()],
        format: DefFormat::StateService,
    };
    assert_eq!(machine, expected);
}

#[test]
fn stateservice_counts_and_clocks() {
    let source = "\
current_state: counting
states:
  - name: counting
    func: increment
    current: { key: hosts, value: 2 }
    target: { name: waiting, when: { key: hosts, value: 5 } }
  - name: waiting
    func: time
    target: { name: done, when: { key: clock, value: '2030-01-01T12:00:00' } }
  - name: done
";
    let ctx = LoadContext::new(NOW_MS, jiff::tz::TimeZone::fixed(jiff::tz::offset(1)));
    let machine = stateservice::load("states.yaml", "db-1", source, &ctx).expect("loads");
    assert_eq!(machine.states[0].on, vec![on("done", "waiting", 3)]);
    assert_eq!(
        machine.states[0].compat_counter,
        Some(CompatCounter {
            key: "hosts".to_string(),
            start: 2
        })
    );
    assert_eq!(machine.states[1].on, Vec::new());
    assert_eq!(
        machine.states[1].timer,
        Some(Timer::At {
            at_ms: JAN_2030_NOON_UTC_MS - HOUR_MS,
            to: "done".to_string()
        })
    );
    assert!(machine.states[2].is_final);
    assert_eq!(machine.instances, vec!["db-1".to_string()]);
}

#[test]
fn stateservice_detection() {
    assert!(stateservice::looks_like_stateservice(
        "# a comment\ncurrent_state: a\nstates: []\n"
    ));
    assert!(!stateservice::looks_like_stateservice(
        "kind: StateMachine\ncurrent_state: a\n"
    ));
    assert!(!stateservice::looks_like_stateservice(THREE_TIER));
    assert!(!stateservice::looks_like_stateservice(
        "current_state: [a\n"
    ));
    assert!(!stateservice::looks_like_stateservice(""));
}
