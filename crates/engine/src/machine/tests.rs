use std::collections::HashMap;

use levee_model::{DefFormat, EventTransition, Guard, MachineDef, StateDef, Timer};
use proptest::prelude::*;

use super::*;

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

fn on(mut s: StateDef, event: &str, to: &str, count: u32) -> StateDef {
    s.on.push(EventTransition {
        event: event.to_string(),
        to: to.to_string(),
        count,
    });
    s
}

fn final_state(name: &str) -> StateDef {
    StateDef {
        is_final: true,
        ..state(name)
    }
}

fn machine(states: Vec<StateDef>) -> MachineDef {
    MachineDef {
        name: "m".to_string(),
        description: None,
        initial: states[0].name.clone(),
        states,
        instances: Vec::new(),
        format: DefFormat::Native,
    }
}

/// installing --done x3--> soak --(timer 10 s)--> deploy [guard db=serving] --done--> serving.
fn deployment() -> MachineDef {
    let mut soak = on(state("soak"), "abort", "broken", 1);
    soak.timer = Some(Timer::After {
        duration_ms: 10_000,
        to: "deploy".to_string(),
    });
    let mut deploy = on(state("deploy"), "done", "serving", 1);
    deploy.guards.push(Guard {
        machine: "db".to_string(),
        in_states: vec!["serving".to_string()],
    });
    machine(vec![
        on(state("installing"), "done", "soak", 3),
        soak,
        deploy,
        final_state("serving"),
        final_state("broken"),
    ])
}

fn report<'a>(state: &'a str, reporter: Option<&'a str>) -> Report<'a> {
    Report {
        state,
        event: "done",
        reporter,
        actor: "test",
        expect_version: None,
    }
}

fn db_serving() -> HashMap<String, String> {
    HashMap::from([("db".to_string(), "serving".to_string())])
}

#[test]
fn a_new_instance_starts_in_the_initial_state_with_its_history() {
    let change = new_instance(&deployment(), "vm-1", Some("web"), 1_000, "alice");
    assert_eq!(change.record.state, "installing");
    assert_eq!(change.record.version, 1);
    assert_eq!(change.record.group.as_deref(), Some("web"));
    assert_eq!(change.history.len(), 1);
    assert_eq!(change.history[0].kind, HistoryKind::Created);
}

#[test]
fn a_barrier_moves_on_after_its_count_of_distinct_reporters() {
    let def = deployment();
    let mut record = new_instance(&def, "vm", None, 0, "t").record;
    for (n, reporter) in ["a", "b"].iter().enumerate() {
        let change = super::report(
            &def,
            &record,
            &(),
            &report("installing", Some(reporter)),
            10,
        )
        .unwrap();
        record = change.record;
        assert_eq!(record.state, "installing");
        assert_eq!(record.counter, n as u32 + 1);
    }
    let duplicate =
        super::report(&def, &record, &(), &report("installing", Some("a")), 11).unwrap();
    assert!(
        duplicate.is_noop(),
        "a retried report from `a` must not count twice"
    );
    assert_eq!(duplicate.record, record);
    let change = super::report(&def, &record, &(), &report("installing", Some("c")), 12).unwrap();
    assert_eq!(change.record.state, "soak");
    assert_eq!(change.record.counter, 0);
    assert!(change.record.reporters.is_empty());
    assert_eq!(change.record.timer_due_ms, Some(12 + 10_000));
    assert_eq!(change.history[0].kind, HistoryKind::Transition);
    assert_eq!(change.record.version, record.version + 1);
}

#[test]
fn reports_without_a_reporter_each_count() {
    let def = deployment();
    let mut record = new_instance(&def, "vm", None, 0, "t").record;
    for _ in 0..3 {
        record = super::report(&def, &record, &(), &report("installing", None), 1)
            .unwrap()
            .record;
    }
    assert_eq!(record.state, "soak");
}

#[test]
fn a_report_for_another_state_is_refused_with_the_current_one() {
    let def = deployment();
    let record = new_instance(&def, "vm", None, 0, "t").record;
    let refusal = super::report(&def, &record, &(), &report("deploy", None), 1).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::NotCurrent {
            state: "deploy".to_string(),
            current: "installing".to_string()
        }
    );
    let refusal = super::report(&def, &record, &(), &report("nope", None), 1).unwrap_err();
    assert_eq!(refusal.code(), "unknown_state");
}

#[test]
fn timers_fire_at_their_due_time_and_answers_see_them_before_the_worker_commits() {
    let def = deployment();
    let mut record = new_instance(&def, "vm", None, 0, "t").record;
    for r in ["a", "b", "c"] {
        record = super::report(&def, &record, &(), &report("installing", Some(r)), 100)
            .unwrap()
            .record;
    }
    assert_eq!(effective_state(&def, &record, 10_099), "soak");
    assert_eq!(effective_state(&def, &record, 10_100), "deploy");
    assert!(catch_up(&def, &record, 10_099).is_none());
    let fired = catch_up(&def, &record, 50_000).unwrap();
    assert_eq!(fired.record.state, "deploy");
    assert_eq!(
        fired.record.entered_at_ms, 10_100,
        "entered at the due time, not when noticed"
    );
    assert_eq!(fired.history[0].kind, HistoryKind::Timer);
    assert_eq!(fired.history[0].at_ms, 10_100);
    assert!(
        catch_up(&def, &fired.record, 60_000).is_none(),
        "a timer fires once"
    );
}

#[test]
fn a_report_after_a_due_timer_meets_the_state_the_timer_moved_to() {
    let def = deployment();
    let mut record = new_instance(&def, "vm", None, 0, "t").record;
    for r in ["a", "b", "c"] {
        record = super::report(&def, &record, &(), &report("installing", Some(r)), 0)
            .unwrap()
            .record;
    }
    let change = super::report(
        &def,
        &record,
        &db_serving(),
        &report("deploy", None),
        20_000,
    )
    .unwrap();
    assert_eq!(change.record.state, "serving");
    let kinds: Vec<_> = change.history.iter().map(|h| h.kind).collect();
    assert_eq!(kinds, vec![HistoryKind::Timer, HistoryKind::Transition]);
}

#[test]
fn guards_hold_a_step_until_the_other_machine_is_ready() {
    let def = deployment();
    let mut record = new_instance(&def, "vm", None, 0, "t").record;
    for r in ["a", "b", "c"] {
        record = super::report(&def, &record, &(), &report("installing", Some(r)), 0)
            .unwrap()
            .record;
    }
    record = catch_up(&def, &record, 20_000).unwrap().record;
    let installing = HashMap::from([("db".to_string(), "installing".to_string())]);
    let answer = answer(&def, &record, &installing, "deploy", 20_000).unwrap();
    assert!(
        matches!(answer, Answer::No(NoReason::Guard(ref g)) if g.state.as_deref() == Some("installing"))
    );
    let refused =
        super::report(&def, &record, &installing, &report("deploy", None), 20_000).unwrap_err();
    assert_eq!(refused.code(), "guard");
    let missing = super::answer(&def, &record, &(), "deploy", 20_000).unwrap();
    assert!(matches!(missing, Answer::No(NoReason::Guard(ref g)) if g.state.is_none()));
    assert_eq!(
        super::answer(&def, &record, &db_serving(), "deploy", 20_000).unwrap(),
        Answer::Yes
    );
}

#[test]
fn final_states_answer_yes_and_refuse_reports() {
    let def = machine(vec![on(state("a"), "done", "z", 1), final_state("z")]);
    let record = new_instance(&def, "vm", None, 0, "t").record;
    let record = super::report(&def, &record, &(), &report("a", None), 1)
        .unwrap()
        .record;
    assert_eq!(answer(&def, &record, &(), "z", 2).unwrap(), Answer::Yes);
    assert_eq!(
        super::report(&def, &record, &(), &report("z", None), 2)
            .unwrap_err()
            .code(),
        "final_state"
    );
}

#[test]
fn a_state_without_the_event_says_which_events_it_takes() {
    let mut timed = state("wait");
    timed.timer = Some(Timer::At {
        at_ms: 5_000,
        to: "z".to_string(),
    });
    let def = machine(vec![timed, final_state("z")]);
    let record = new_instance(&def, "vm", None, 0, "t").record;
    let refusal = super::report(&def, &record, &(), &report("wait", None), 1).unwrap_err();
    assert!(matches!(refusal, Refusal::NoTransition { ref accepted, .. } if accepted.is_empty()));
}

#[test]
fn if_match_versions_reject_a_lost_race() {
    let def = deployment();
    let record = new_instance(&def, "vm", None, 0, "t").record;
    let stale = Report {
        expect_version: Some(7),
        ..report("installing", None)
    };
    assert_eq!(
        super::report(&def, &record, &(), &stale, 1).unwrap_err(),
        Refusal::VersionMismatch {
            expected: 7,
            actual: 1
        }
    );
}

#[test]
fn replay_answers_only_the_recorded_next_step_then_carries_on() {
    let def = deployment();
    let created = new_instance(&def, "vm", None, 0, "t");
    let mut history = created.history.clone();
    let mut record = created.record;
    for r in ["a", "b", "c"] {
        let change = super::report(&def, &record, &(), &report("installing", Some(r)), 0).unwrap();
        history.extend(change.history.clone());
        record = change.record;
    }
    let fired = catch_up(&def, &record, 20_000).unwrap();
    history.extend(fired.history.clone());
    record = fired.record;
    assert_eq!(record.state, "deploy");

    let replay = start_replay(&def, &record, &history, 30_000, "op").unwrap();
    record = replay.record;
    assert_eq!(record.state, "installing");
    assert_eq!(record.timer_due_ms, None, "no timers while replaying");
    // One report replays the whole barrier; the timer step follows by itself.
    let wrong = Report {
        event: "abort",
        ..report("installing", None)
    };
    assert_eq!(
        super::report(&def, &record, &(), &wrong, 30_001)
            .unwrap_err()
            .code(),
        "replay_mismatch"
    );
    let step = super::report(&def, &record, &(), &report("installing", None), 30_001).unwrap();
    record = step.record;
    assert_eq!(record.state, "deploy");
    assert!(record.replay.is_none(), "the last-known state was reached");
    assert_eq!(
        step.history.last().unwrap().kind,
        HistoryKind::ReplayFinished
    );
    // Back to normal: the guard applies again.
    assert_eq!(
        super::report(&def, &record, &(), &report("deploy", None), 30_002)
            .unwrap_err()
            .code(),
        "guard"
    );
}

#[test]
fn replay_of_an_untouched_machine_is_refused() {
    let def = deployment();
    let created = new_instance(&def, "vm", None, 0, "t");
    let refusal = start_replay(&def, &created.record, &created.history, 1, "op").unwrap_err();
    assert_eq!(refusal, Refusal::NothingToReplay);
}

#[test]
fn the_recorded_path_restarts_at_every_replay() {
    let def = deployment();
    let created = new_instance(&def, "vm", None, 0, "t");
    let mut history = created.history.clone();
    let mut record = created.record;
    for r in ["a", "b", "c"] {
        let change = super::report(&def, &record, &(), &report("installing", Some(r)), 0).unwrap();
        history.extend(change.history);
        record = change.record;
    }
    let replay = start_replay(&def, &record, &history, 5, "op").unwrap();
    history.extend(replay.history);
    let step = super::report(&def, &replay.record, &(), &report("installing", None), 6).unwrap();
    history.extend(step.history);
    let path = recorded_path(&history);
    assert_eq!(path.len(), 1, "{path:?}");
    assert_eq!(
        (path[0].from.as_str(), path[0].to.as_str()),
        ("installing", "soak")
    );
}

proptest! {
    /// Whatever the order of reports and clock moves, the instance is always in a defined
    /// state, its version grows by one per change, and counters stay below their target.
    #[test]
    fn random_report_sequences_keep_the_record_consistent(
        steps in proptest::collection::vec((0usize..5, 0u8..4, 0i64..20_000), 1..60)
    ) {
        let def = deployment();
        let names = ["installing", "soak", "deploy", "serving", "broken"];
        let peers = db_serving();
        let mut record = new_instance(&def, "vm", None, 0, "t").record;
        let mut now = 0;
        for (state_index, reporter, advance) in steps {
            now += advance;
            let reporter = format!("r{reporter}");
            let before = record.version;
            if let Ok(change) = super::report(&def, &record, &peers, &report(names[state_index], Some(&reporter)), now) {
                if change.is_noop() {
                    prop_assert_eq!(change.record.version, before);
                } else {
                    prop_assert_eq!(change.record.version, before + 1);
                    prop_assert!(change.history.iter().all(|h| h.version == before + 1));
                }
                record = change.record;
            }
            let current = def.state(&record.state);
            prop_assert!(current.is_some());
            if let Some(t) = current.unwrap().on.first() {
                prop_assert!(record.counter < t.count);
            }
            prop_assert_eq!(record.reporters.len() as u32, record.counter);
        }
    }
}
