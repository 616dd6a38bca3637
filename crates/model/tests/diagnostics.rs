//! What users read when a definition is wrong: one snapshot per case, holding the input (with
//! line numbers) and the diagnostics exactly as `levee validate` prints them.
//!
//! Review changed snapshots with `cargo insta review`, or run with `INSTA_UPDATE=always` and
//! read the `.snap` files under `tests/snapshots/`.

use levee_model::{LoadContext, load_documents_with_warnings, stateservice};

/// 2025-01-01T00:00:00Z: timers before it are in the past.
const NOW_MS: i64 = 1_735_689_600_000;

fn context() -> LoadContext {
    LoadContext::new(NOW_MS, jiff::tz::TimeZone::UTC)
}

/// The input with line numbers (long inputs abbreviated), a separator, then the result.
fn render(source: &str, result: String) -> String {
    const MAX_SHOWN_LINES: usize = 30;
    const SHOWN_LINES_OF_LONG_INPUTS: usize = 8;
    let mut out = String::new();
    let lines: Vec<&str> = source.lines().collect();
    let shown = if lines.len() > MAX_SHOWN_LINES {
        SHOWN_LINES_OF_LONG_INPUTS
    } else {
        lines.len()
    };
    for (index, line) in lines.iter().enumerate().take(shown) {
        let line: String = line.chars().take(70).collect();
        out.push_str(&format!("{:>3} | {line}\n", index + 1));
    }
    if lines.len() > shown {
        out.push_str(&format!(
            "... ({} more lines, {} bytes in all)\n",
            lines.len() - shown,
            source.len()
        ));
    }
    out.push_str("----\n");
    out.push_str(&result);
    out
}

fn lines_of<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(|d| format!("{}\n", d.to_string()))
        .collect()
}

/// Loads `source` as native definitions and snapshots what `levee validate` would print.
fn check(name: &str, source: &str) {
    let result = match load_documents_with_warnings("defs.yaml", source, &context()) {
        Ok(loaded) => {
            let names: Vec<String> = loaded
                .definitions
                .iter()
                .map(|d| format!("{} {}", d.kind(), d.name()))
                .collect();
            format!("ok: {}\n{}", names.join(", "), lines_of(&loaded.warnings))
        }
        Err(diagnostics) => lines_of(&diagnostics),
    };
    insta::assert_snapshot!(name, render(source, result));
}

/// Loads `source` as a StateService file and snapshots the outcome.
fn check_stateservice(name: &str, source: &str) {
    let result = match stateservice::load_with_warnings("states.yaml", "db-1", source, &context()) {
        Ok((machine, warnings)) => format!(
            "ok: {} states, initial {}\n{}",
            machine.states.len(),
            machine.initial,
            lines_of(&warnings)
        ),
        Err(diagnostics) => lines_of(&diagnostics),
    };
    insta::assert_snapshot!(name, render(source, result));
}

macro_rules! cases {
    ($checker:ident: $($name:ident => $source:expr,)*) => {
        $(
            #[test]
            fn $name() {
                $checker(stringify!($name), &$source);
            }
        )*
    };
}

cases! { check:
    yaml_syntax_error_has_its_line_and_column => "\
kind: StateMachine
name: broken
states:
  - name: a
    on: { done: b
  - name: b
    final: true
",
    unknown_key_tragets_typo => "\
kind: StateMachine
name: typo
states:
  - name: installing
    tragets: { done: installed }
  - name: installed
    final: true
",
    unknown_keys_suggest_the_closest_valid_key => "\
kind: StateMachine
name: typos
intial: a
states:
  - name: a
    timr: { after: 10m, to: b }
    on: { done: { to: b, cuont: 2 } }
  - name: b
    final: true
",
    unknown_key_from_stateservice_gets_a_hint => "\
kind: StateMachine
name: habits
states:
  - name: a
    func: increment
    target: { name: b }
    on: { done: b }
  - name: b
    final: true
",
    missing_keys => "\
kind: StateMachine
description: No name and no states.
---
kind: StateMachine
name: partial
states:
  - description: a state without a name
    on: { done: b }
  - name: b
    timer: { after: 1m }
  - name: c
    guard:
      - { in: serving }
    final: true
---
name: no-kind
states: []
",
    wrong_types => "\
kind: StateMachine
name: types
instances: db-1
states:
  - name: a
    on: { done: { to: b, count: many } }
  - name: b
    final: yes
  - name: c
    on: [done, b]
  - name: d
    on: { done: { to: b, count: \"3\" } }
---
kind: StateMachine
name: states-not-a-list
states: everything
---
- just
- a list
",
    unknown_kind_lists_the_known_kinds => "\
kind: StateMachin
name: x
---
kind: Runbook
name: y
---
kind: [StateMachine]
name: z
",
    invalid_names => "\
kind: StateMachine
name: Three Tier
instances: [db-1, -db-2, \"db 3\"]
states:
  - name: .hidden
    on: { \"bad event\": ok }
    guard:
      - { machine: _db, in: [serving, \"not valid\"] }
  - name: ok
    final: true
",
    duplicate_definition_in_one_file => "\
kind: StateMachine
name: web
states:
  - { name: a, final: true }
---
kind: StateMachine
name: db
states:
  - { name: a, final: true }
---
kind: StateMachine
name: web
states:
  - { name: a, final: true }
",
    empty_file => "",
    file_of_comments_only => "# nothing here yet\n\n---\n# still nothing\n",
    duplicate_states => "\
kind: StateMachine
name: dup
states:
  - name: a
    on: { done: b }
  - name: b
    on: { done: a }
  - name: a
    final: true
",
    unknown_states_in_initial_transitions_and_timers => "\
kind: StateMachine
name: refs
initial: instaling
states:
  - name: installing
    on:
      done: instaled
      failed: { to: borken }
    timer: { after: 1h, to: nowhere }
  - name: installed
    guard:
      - { machine: db-1, in: any-state-of-another-machine }
    final: true
  - name: broken
    final: true
",
    transition_to_a_state_that_failed_to_parse_is_not_unknown => "\
kind: StateMachine
name: partial
states:
  - name: a
    on: { done: b }
  - name: b
    on: { done: { to: a, count: -1 } }
",
    duplicate_instances => "\
kind: StateMachine
name: fleet
instances:
  - db-1
  - db-2
  - db-1
states:
  - { name: a, final: true }
",
    invalid_counts => "\
kind: StateMachine
name: counts
states:
  - name: a
    on:
      done: { to: b, count: 0 }
      partial: { to: b, count: 100001 }
      negative: { to: b, count: -3 }
  - name: b
    final: true
",
    invalid_durations => "\
kind: StateMachine
name: durations
states:
  - name: a
    timer: { after: 10x, to: e }
  - name: b
    timer: { after: 0s, to: e }
  - name: c
    timer: { after: 30m1h, to: e }
  - name: d
    timer: { after: 10, to: e }
  - name: e
    final: true
",
    invalid_and_past_times => "\
kind: StateMachine
name: times
states:
  - name: a
    timer: { at: tomorrow, to: c }
  - name: b
    timer: { at: \"2020-01-01T00:00:00Z\", to: c }
  - name: c
    timer: { at: 2030-01-01T12:00:00Z, after: 1h, to: d }
  - name: d
    final: true
",
    final_with_transitions => "\
kind: StateMachine
name: finals
states:
  - name: a
    on: { done: b }
  - name: b
    final: true
    on: { done: a }
    timer: { after: 1m, to: a }
    guard:
      - { machine: db-1, in: serving }
",
    dead_end => "\
kind: StateMachine
name: stuck
states:
  - name: a
    on: { done: b }
  - name: b
    description: Nothing leads out of here.
  - name: c
    final: false
  - name: d
    on: {}
",
    no_states => "\
kind: StateMachine
name: empty
states: []
",
    too_many_states => {
        let mut source = String::from("kind: StateMachine\nname: huge\nstates:\n");
        for index in 0..1_000 {
            source.push_str(&format!("  - {{ name: s{index}, on: {{ done: s{} }} }}\n", index + 1));
        }
        source.push_str("  - { name: s1000, final: true }\n");
        source
    },
    too_many_instances => {
        let mut source = String::from("kind: StateMachine\nname: crowd\ninstances:\n");
        for index in 0..10_001 {
            source.push_str(&format!("  - vm-{index}\n"));
        }
        source.push_str("states:\n  - { name: a, final: true }\n");
        source
    },
    unreachable_states_are_warnings => "\
kind: StateMachine
name: islands
states:
  - name: a
    on: { done: b }
  - name: b
    final: true
  - name: orphan
    on: { done: b }
",
    duplicate_yaml_keys => "\
kind: StateMachine
name: keys
states:
  - name: a
    on:
      done: b
      done: c
    name: a2
  - name: b
    final: true
  - name: c
    final: true
",
    file_over_the_size_limit => {
        let mut source = String::from("kind: StateMachine\nname: big\ndescription: >\n");
        let line = format!("  {}\n", "x".repeat(99));
        while source.len() <= levee_model::MAX_DEFINITION_BYTES {
            source.push_str(&line);
        }
        source.push_str("states:\n  - { name: a, final: true }\n");
        source
    },
    stateservice_file_given_to_load_documents => "\
current_state: green_state
states:
  - name: green_state
    func: increment
    current: { key: count, value: 0 }
    target:
      name: blue_state
      when: { key: count, value: 1 }
  - name: blue_state
",
    second_document_errors_have_file_line_numbers => "\
# Three machines; the second and third have errors.
kind: StateMachine
name: first
states:
  - { name: a, final: true }
---
kind: StateMachine
name: second
states:
  - name: a
    on: { done: { to: missing, count: 0 } }
---
kind: StateMachine
name: third
states:
  - name: a
    tragets: { done: a }
    final: true
",
    syntax_error_in_one_document_does_not_hide_the_next => "\
kind: StateMachine
name: first
states: [
---
kind: StateMachine
name: second
states:
  - name: a
    on: { done: nowhere }
",
    guards_need_states => "\
kind: StateMachine
name: guarded
states:
  - name: a
    guard:
      - { machine: db-1, in: [] }
    on: { done: b }
  - name: b
    final: true
",
    unsupported_tags_and_alias_bombs => {
        let mut source = String::from(
            "kind: StateMachine\nname: tags\nstates:\n  - name: !custom a\n    final: true\n---\n",
        );
        source.push_str("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..8 {
            let p = level - 1;
            source.push_str(&format!(
                "a{level}: &a{level} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        source
    },
    a_document_that_is_not_a_mapping => "\
just a sentence
",
    deeply_nested_yaml => format!(
        "kind: StateMachine\nname: deep\ndescription: {}{}\nstates: []\n",
        "[".repeat(80),
        "]".repeat(80)
    ),
    merge_keys_are_not_supported => "\
kind: StateMachine
name: merged
states:
  - &base
    name: a
    on: { done: b }
  - <<: *base
    name: b
    final: true
",
}

cases! { check_stateservice:
    stateservice_unknown_keys_are_warnings => "\
current_state: green_state
color: green
states:
  - name: green_state
    func: increment
    curent: { key: count, value: 0 }
    current: { key: count, value: 0 }
    target:
      name: blue_state
      when: { key: count, value: 2 }
  - name: blue_state
    target: { name: green_state, when: { key: count, value: 1 } }
",
    stateservice_missing_keys => "\
states:
  - name: a
    func: increment
  - name: b
    func: time
",
    stateservice_errors => "\
current_state: gren_state
states:
  - name: green_state
    func: incremnt
    target: { name: red_state, when: { key: count, value: 1 } }
  - name: red_state
    func: increment
    current: { key: count, value: 3 }
    target: { name: blue_state, when: { key: count, value: 3 } }
  - name: yellow_state
    func: time
    target: { name: blue_state, when: { key: clock, value: 'next tuesday' } }
  - name: orange_state
    func: time
    target: { name: blu_state, when: { key: clock, value: '2020-01-01T12:00:00' } }
  - name: red_state
  - name: blue_state
",
    stateservice_not_a_number => "\
current_state: a
states:
  - name: a
    func: increment
    current: { key: count, value: zero }
    target: { name: b, when: { key: count, value: 1 } }
  - name: b
",
    stateservice_given_a_native_file => "\
kind: StateMachine
name: x
states:
  - { name: a, final: true }
",
    stateservice_with_two_documents => "\
current_state: a
states:
  - name: a
---
current_state: b
",
    stateservice_empty => "",
}
