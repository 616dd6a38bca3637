use super::*;

/// A run driven by hand: each event is applied and its change committed, as the store would.
struct Run {
    plan: RunPlan,
    state: RunState,
    now: i64,
    global_pause: bool,
}

fn operator() -> Operator {
    Operator {
        actor: "alice".to_string(),
        reason: "testing".to_string(),
    }
}

impl Run {
    fn new(tasks: Vec<PlanTask>) -> Run {
        Run::with_parallel(tasks, DEFAULT_MAX_PARALLEL_TASKS)
    }

    fn with_parallel(tasks: Vec<PlanTask>, max_parallel: u32) -> Run {
        let plan = RunPlan::new(tasks).expect("valid plan");
        let state = RunState::new(&plan, max_parallel, 0).expect("valid parallelism");
        Run {
            plan,
            state,
            now: 0,
            global_pause: false,
        }
    }

    fn try_apply(&mut self, event: Event) -> Result<Decision, Refusal> {
        let ctx = Context {
            now_ms: self.now,
            global_pause: self.global_pause,
        };
        let decision = apply(&self.plan, &self.state, &event, ctx)?;
        self.state.commit(&decision.change);
        Ok(decision)
    }

    fn apply(&mut self, event: Event) -> Vec<Action> {
        self.try_apply(event).expect("event accepted").actions
    }

    fn control(&mut self, control: Control) -> Result<Vec<Action>, Refusal> {
        self.try_apply(Event::Control {
            by: operator(),
            control,
        })
        .map(|d| d.actions)
    }

    fn start(&mut self) -> Vec<Action> {
        self.control(Control::Start).expect("run starts")
    }

    fn status(&self, id: &str) -> &TaskStatus {
        &self.state.task(id).expect("task exists").status
    }

    fn attempt(&self, id: &str) -> u32 {
        match self.status(id) {
            TaskStatus::Running { attempt, .. } => *attempt,
            other => panic!("`{id}` is {other:?}, not running"),
        }
    }

    fn begin(&mut self, id: &str) -> Vec<Action> {
        let attempt = self.attempt(id);
        self.apply(Event::TaskStarted {
            task: id.to_string(),
            attempt,
        })
    }

    fn succeed(&mut self, id: &str) -> Vec<Action> {
        self.begin(id);
        let attempt = self.attempt(id);
        self.apply(Event::TaskSucceeded {
            task: id.to_string(),
            attempt,
        })
    }

    fn fail(&mut self, id: &str, retryable: bool) -> Vec<Action> {
        let attempt = self.attempt(id);
        self.apply(Event::TaskFailed {
            task: id.to_string(),
            attempt,
            error: "boom".to_string(),
            retryable,
        })
    }

    fn check_fails(&mut self, id: &str, phase: CheckPhase) -> Vec<Action> {
        let attempt = self.attempt(id);
        self.apply(Event::CheckFailed {
            task: id.to_string(),
            attempt,
            phase,
            reason: "error ratio 0.2 above 0.01".to_string(),
        })
    }
}

fn started(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartTask { task, .. } => Some(task.as_str()),
            _ => None,
        })
        .collect()
}

fn start_of(actions: &[Action], id: &str) -> (u32, u32, CheckSkips) {
    actions
        .iter()
        .find_map(|a| match a {
            Action::StartTask {
                task,
                attempt,
                from_step,
                skip_checks,
            } if task == id => Some((*attempt, *from_step, *skip_checks)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no StartTask for `{id}` in {actions:?}"))
}

fn notified(actions: &[Action], kind: NotifyKind) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Notify { kind: k, .. } if *k == kind))
}

fn wake_at(actions: &[Action]) -> Option<i64> {
    actions.iter().find_map(|a| match a {
        Action::WakeAt { at_ms } => Some(*at_ms),
        _ => None,
    })
}

fn task(id: &str) -> PlanTask {
    PlanTask::new(id, "shell")
}

/// a -> {b, c} -> d: the diamond.
fn diamond() -> Vec<PlanTask> {
    vec![
        task("a"),
        task("b").needs(&["a"]),
        task("c").needs(&["a"]),
        task("d").needs(&["b", "c"]),
    ]
}

// ---- plans ----

#[test]
fn a_plan_rejects_duplicate_ids_unknown_deps_and_bad_limits() {
    assert_eq!(
        RunPlan::new(vec![task("a"), task("a")]).unwrap_err(),
        PlanError::DuplicateId { id: "a".into() }
    );
    assert_eq!(
        RunPlan::new(vec![task("a").needs(&["nope"])]).unwrap_err(),
        PlanError::UnknownDep {
            task: "a".into(),
            dep: "nope".into()
        }
    );
    assert_eq!(
        RunPlan::new(vec![task("a"), task("b").needs(&["a"]).after(&["a"])]).unwrap_err(),
        PlanError::DuplicateDep {
            task: "b".into(),
            dep: "a".into()
        }
    );
    assert_eq!(RunPlan::new(Vec::new()).unwrap_err(), PlanError::Empty);
    let bad_retries = task("a").retries(RetryPolicy {
        max_attempts: 0,
        ..RetryPolicy::NONE
    });
    assert!(matches!(
        RunPlan::new(vec![bad_retries]).unwrap_err(),
        PlanError::BadRetries { .. }
    ));
    assert!(matches!(
        RunPlan::new(vec![task("a").timeout_ms(0)]).unwrap_err(),
        PlanError::BadTimeout { .. }
    ));
    assert!(matches!(
        RunPlan::new(vec![task("a").steps(0)]).unwrap_err(),
        PlanError::BadSteps { .. }
    ));
    let too_many: Vec<PlanTask> = (0..=MAX_TASKS_PER_RUN)
        .map(|i| task(&format!("t{i}")))
        .collect();
    assert_eq!(
        RunPlan::new(too_many).unwrap_err(),
        PlanError::TooManyTasks {
            count: MAX_TASKS_PER_RUN + 1,
            limit: MAX_TASKS_PER_RUN
        }
    );
    let plan = RunPlan::new(vec![task("a")]).unwrap();
    assert!(matches!(
        RunState::new(&plan, 0, 0).unwrap_err(),
        PlanError::BadParallelism { .. }
    ));
}

#[test]
fn a_cycle_is_reported_whole_in_dependency_order() {
    let err = RunPlan::new(vec![
        task("root"),
        task("a").needs(&["root", "b"]),
        task("b").after(&["c"]),
        task("c").needs(&["a"]),
        task("d").needs(&["c"]),
    ])
    .unwrap_err();
    assert_eq!(
        err,
        PlanError::Cycle {
            cycle: vec!["a".into(), "b".into(), "c".into()]
        }
    );
    assert_eq!(err.to_string(), "dependency cycle: a -> b -> c -> a");
    let own = RunPlan::new(vec![task("x").needs(&["x"])]).unwrap_err();
    assert_eq!(own.to_string(), "dependency cycle: x -> x");
}

#[test]
fn a_long_chain_is_validated_without_recursion() {
    let tasks: Vec<PlanTask> = (0..MAX_TASKS_PER_RUN)
        .map(|i| {
            let t = task(&format!("t{i}"));
            if i == 0 {
                t
            } else {
                t.needs(&[&format!("t{}", i - 1)])
            }
        })
        .collect();
    let plan = RunPlan::new(tasks).expect("a chain is a DAG");
    assert_eq!(plan_waves(&plan).len(), MAX_TASKS_PER_RUN);
}

#[test]
fn waves_are_topological_levels_in_plan_order() {
    let plan = RunPlan::new(vec![
        task("d").needs(&["b", "c"]),
        task("c").needs(&["a"]),
        task("a"),
        task("e"),
        task("b").after(&["a"]),
    ])
    .unwrap();
    assert_eq!(
        plan_waves(&plan),
        vec![vec!["a", "e"], vec!["c", "b"], vec!["d"]]
    );
}

#[test]
fn the_critical_path_of_a_known_dag_has_exact_numbers() {
    // a(10) -> b(30) -> d(5); a -> c(20) -> d; e(50) alone; f(1) after e.
    let plan = RunPlan::new(vec![
        task("a"),
        task("b").needs(&["a"]),
        task("c").needs(&["a"]),
        task("d").needs(&["b", "c"]),
        task("e"),
        task("f").after(&["e"]),
    ])
    .unwrap();
    let durations = |id: &str| match id {
        "a" => 10,
        "b" => 30,
        "c" => 20,
        "d" => 5,
        "e" => 50,
        "f" => 1,
        _ => unreachable!(),
    };
    let path = critical_path(&plan, &durations);
    assert_eq!(path.tasks, vec!["e", "f"]);
    assert_eq!(path.length_ms, 51);
    assert_eq!(path.sequential_ms, 116);
    assert!((path.speedup - 116.0 / 51.0).abs() < 1e-9);

    let longer_b = |id: &str| if id == "b" { 40 } else { durations(id) };
    let path = critical_path(&plan, &longer_b);
    assert_eq!(path.tasks, vec!["a", "b", "d"]);
    assert_eq!(path.length_ms, 55);
    assert_eq!(path.sequential_ms, 126);
}

#[test]
fn backoff_grows_exponentially_up_to_its_cap() {
    let policy = RetryPolicy {
        max_attempts: 10,
        backoff_initial_ms: 1_000,
        backoff_max_ms: 10_000,
        multiplier: 3,
    };
    let waits: Vec<u64> = (1..=5).map(|n| policy.backoff_ms(n)).collect();
    assert_eq!(waits, vec![1_000, 3_000, 9_000, 10_000, 10_000]);
    assert_eq!(RetryPolicy::NONE.backoff_ms(1), 0);
}

// ---- scheduling ----

#[test]
fn a_task_starts_only_after_its_strong_deps_succeed() {
    let mut run = Run::new(diamond());
    let actions = run.start();
    assert_eq!(started(&actions), vec!["a"]);
    assert_eq!(run.status("b"), &TaskStatus::Waiting);
    let actions = run.succeed("a");
    assert_eq!(started(&actions), vec!["b", "c"]);
    let actions = run.succeed("b");
    assert!(started(&actions).is_empty(), "d still needs c");
    let actions = run.succeed("c");
    assert_eq!(started(&actions), vec!["d"]);
    let actions = run.succeed("d");
    assert_eq!(run.state.run.status, RunStatus::Succeeded);
    assert!(actions.contains(&Action::RunFinished {
        status: RunStatus::Succeeded
    }));
    assert!(notified(&actions, NotifyKind::Finished));
}

#[test]
fn a_skipped_dependency_counts_as_done() {
    let mut run = Run::new(diamond());
    run.start();
    run.control(Control::Skip { task: "a".into() }).unwrap();
    assert_eq!(run.status("a"), &TaskStatus::Skipped);
    assert!(matches!(run.status("b"), TaskStatus::Running { .. }));
}

#[test]
fn a_task_planned_skipped_never_starts_and_its_dependents_go_on() {
    let mut run = Run::new(vec![
        task("a").skipped("not run: `when: false` is false"),
        task("b").needs(&["a"]),
        task("c").skipped("not run"),
    ]);
    assert_eq!(run.status("a"), &TaskStatus::Skipped);
    let actions = run.start();
    assert_eq!(started(&actions), vec!["b"]);
    run.succeed("b");
    assert_eq!(run.status("c"), &TaskStatus::Skipped);
    assert_eq!(run.state.run.status, RunStatus::Succeeded);
    // With nothing left to run, the run ends as it starts.
    let mut run = Run::new(vec![task("only").skipped("not run")]);
    let actions = run.start();
    assert!(started(&actions).is_empty());
    assert_eq!(run.state.run.status, RunStatus::Succeeded);
}

#[test]
fn a_failed_weak_dep_blocks_until_an_operator_overrides_it() {
    let mut run = Run::new(vec![task("a"), task("b").after(&["a"]), task("c")]);
    run.start();
    run.fail("a", false);
    assert_eq!(run.status("b"), &TaskStatus::Waiting);
    let refused = run
        .control(Control::OverrideWeakDep {
            task: "b".into(),
            dep: "c".into(),
        })
        .unwrap_err();
    assert_eq!(refused.code(), "not_a_weak_dep");
    let decision = run
        .try_apply(Event::Control {
            by: operator(),
            control: Control::OverrideWeakDep {
                task: "b".into(),
                dep: "a".into(),
            },
        })
        .unwrap();
    assert_eq!(started(&decision.actions), vec!["b"]);
    let entry = &decision.change.journal[0];
    assert_eq!(
        entry.kind,
        JournalKind::WeakDepOverridden { dep: "a".into() }
    );
    assert_eq!(
        (entry.actor.as_str(), entry.reason.as_deref()),
        ("alice", Some("testing"))
    );
    assert_eq!(
        run.control(Control::OverrideWeakDep {
            task: "b".into(),
            dep: "a".into(),
        })
        .unwrap_err()
        .code(),
        "already_overridden"
    );
}

#[test]
fn operator_controls_are_journaled_with_actor_and_reason() {
    let mut run = Run::new(diamond());
    run.start();
    let decision = run
        .try_apply(Event::Control {
            by: Operator {
                actor: "bob".into(),
                reason: "hold while the network team looks".into(),
            },
            control: Control::Pause,
        })
        .unwrap();
    let entry = &decision.change.journal[0];
    assert_eq!(entry.actor, "bob");
    assert_eq!(
        entry.reason.as_deref(),
        Some("hold while the network team looks")
    );
    assert_eq!(entry.kind, JournalKind::RunPaused);
    assert_eq!(entry.version, run.state.run.version);
    assert_eq!(
        decision.change.run.version, 3,
        "created 1, started 2, paused 3"
    );
}

#[test]
fn at_most_max_parallel_tasks_run_and_the_longest_chain_goes_first() {
    let mut run = Run::with_parallel(
        vec![
            task("x1"),
            task("x2"),
            task("x3"),
            task("chain1"),
            task("chain2").needs(&["chain1"]),
        ],
        2,
    );
    let actions = run.start();
    assert_eq!(started(&actions), vec!["chain1", "x1"]);
    let actions = run.succeed("x1");
    assert_eq!(started(&actions), vec!["x2"]);
    // chain2 and x3 both have nothing after them now: plan order breaks the tie.
    let actions = run.succeed("chain1");
    assert_eq!(started(&actions), vec!["x3"]);
    let actions = run.succeed("x2");
    assert_eq!(started(&actions), vec!["chain2"]);
    let running = run
        .state
        .tasks
        .iter()
        .filter(|t| matches!(t.status, TaskStatus::Running { .. }))
        .count();
    assert_eq!(running, 2);
}

#[test]
fn retryable_failures_back_off_exponentially_via_ticks_then_fail() {
    let policy = RetryPolicy {
        max_attempts: 3,
        backoff_initial_ms: 1_000,
        backoff_max_ms: 60_000,
        multiplier: 2,
    };
    let mut run = Run::new(vec![task("a").retries(policy), task("b").needs(&["a"])]);
    run.start();
    let actions = run.fail("a", true);
    assert!(matches!(
        run.status("a"),
        TaskStatus::Retrying {
            attempt: 1,
            not_before_ms: 1_000,
            ..
        }
    ));
    assert_eq!(wake_at(&actions), Some(1_000));
    run.now = 999;
    let tick = run.try_apply(Event::Tick).unwrap();
    assert!(tick.change.is_noop(), "nothing is due before the backoff");
    run.now = 1_000;
    let actions = run.apply(Event::Tick);
    assert_eq!(start_of(&actions, "a").0, 2);
    let actions = run.fail("a", true);
    assert_eq!(wake_at(&actions), Some(3_000), "second wait is doubled");
    run.now = 3_000;
    run.apply(Event::Tick);
    let actions = run.fail("a", true);
    assert!(matches!(run.status("a"), TaskStatus::Failed { .. }));
    assert_eq!(run.status("b"), &TaskStatus::Waiting);
    assert_eq!(run.state.run.status, RunStatus::Failed);
    assert!(
        run.state
            .run
            .outcome
            .as_deref()
            .is_some_and(|o| o.contains("`a` failed"))
    );
    assert!(actions.contains(&Action::RunFinished {
        status: RunStatus::Failed
    }));
}

#[test]
fn a_non_retryable_failure_fails_at_once() {
    let policy = RetryPolicy {
        max_attempts: 5,
        backoff_initial_ms: 1,
        backoff_max_ms: 1,
        multiplier: 1,
    };
    let mut run = Run::new(vec![task("a").retries(policy)]);
    run.start();
    let actions = run.fail("a", false);
    assert!(matches!(run.status("a"), TaskStatus::Failed { .. }));
    assert!(notified(&actions, NotifyKind::Failed));
}

#[test]
fn the_run_fails_only_when_nothing_else_can_progress() {
    let mut run = Run::new(vec![task("a"), task("b"), task("c").needs(&["a"])]);
    run.start();
    run.fail("a", false);
    assert_eq!(run.state.run.status, RunStatus::Running, "b still runs");
    run.succeed("b");
    assert_eq!(run.state.run.status, RunStatus::Failed);
    // An operator retry reopens it.
    let actions = run.control(Control::Retry { task: "a".into() }).unwrap();
    assert_eq!(run.state.run.status, RunStatus::Running);
    assert_eq!(started(&actions), vec!["a"]);
    run.succeed("a");
    run.succeed("c");
    assert_eq!(run.state.run.status, RunStatus::Succeeded);
}

#[test]
fn an_attempt_past_its_timeout_is_cancelled_and_retried_if_idempotent() {
    let policy = RetryPolicy {
        max_attempts: 2,
        backoff_initial_ms: 100,
        backoff_max_ms: 100,
        multiplier: 1,
    };
    let mut run = Run::new(vec![
        task("a").idempotent(true).timeout_ms(500).retries(policy),
    ]);
    let actions = run.start();
    assert_eq!(wake_at(&actions), Some(500));
    run.begin("a");
    run.now = 500;
    let actions = run.apply(Event::Tick);
    assert!(actions.contains(&Action::CancelTask {
        task: "a".into(),
        attempt: 1
    }));
    assert!(matches!(run.status("a"), TaskStatus::Retrying { .. }));
    // The cancelled attempt's late report is refused.
    let late = run
        .try_apply(Event::TaskSucceeded {
            task: "a".into(),
            attempt: 1,
        })
        .unwrap_err();
    assert_eq!(late.code(), "stale_attempt");
    run.now = 600;
    let actions = run.apply(Event::Tick);
    assert_eq!(start_of(&actions, "a").0, 2);
}

#[test]
fn a_non_idempotent_step_in_flight_at_its_timeout_stalls() {
    let mut run = Run::new(vec![task("a").timeout_ms(500)]);
    run.start();
    run.begin("a");
    run.now = 10;
    let attempt = run.attempt("a");
    let actions = run.apply(Event::TimedOut {
        task: "a".into(),
        attempt,
    });
    assert!(matches!(
        run.status("a"),
        TaskStatus::Stalled {
            cause: StallCause::TimedOut,
            ..
        }
    ));
    assert!(notified(&actions, NotifyKind::Stalled));
    assert_eq!(
        run.state.run.status,
        RunStatus::Running,
        "waits for a human"
    );
}

#[test]
fn no_task_starts_while_the_run_or_everything_is_paused() {
    let mut run = Run::new(diamond());
    run.start();
    run.control(Control::Pause).unwrap();
    assert_eq!(
        run.control(Control::Pause).unwrap_err().code(),
        "not_running"
    );
    let actions = run.succeed("a");
    assert!(started(&actions).is_empty(), "running tasks may finish");
    assert_eq!(run.status("b"), &TaskStatus::Ready);
    let actions = run.control(Control::Resume).unwrap();
    assert_eq!(started(&actions), vec!["b", "c"]);

    run.global_pause = true;
    run.succeed("b");
    let actions = run.succeed("c");
    assert!(started(&actions).is_empty());
    assert_eq!(run.state.run.status, RunStatus::Running);
    run.global_pause = false;
    let actions = run.apply(Event::Tick);
    assert_eq!(started(&actions), vec!["d"]);
}

#[test]
fn abort_cancels_running_tasks_and_everything_not_done() {
    let mut run = Run::new(diamond());
    run.start();
    run.succeed("a");
    run.fail("b", false);
    let actions = run.control(Control::Abort).unwrap();
    assert!(actions.contains(&Action::CancelTask {
        task: "c".into(),
        attempt: 1
    }));
    assert_eq!(run.state.run.status, RunStatus::Aborted);
    assert_eq!(run.status("a"), &TaskStatus::Succeeded);
    assert!(matches!(run.status("b"), TaskStatus::Failed { .. }));
    assert_eq!(run.status("c"), &TaskStatus::Cancelled);
    assert_eq!(run.status("d"), &TaskStatus::Cancelled);
    assert!(actions.contains(&Action::RunFinished {
        status: RunStatus::Aborted
    }));
    assert_eq!(run.control(Control::Abort).unwrap_err().code(), "run_ended");
    assert_eq!(
        run.control(Control::Retry { task: "b".into() })
            .unwrap_err()
            .code(),
        "run_ended"
    );
}

#[test]
fn skip_refuses_finished_tasks_and_cancels_a_running_one() {
    let mut run = Run::new(diamond());
    run.start();
    run.succeed("a");
    let refused = run.control(Control::Skip { task: "a".into() }).unwrap_err();
    assert_eq!(refused.code(), "not_skippable");
    let actions = run.control(Control::Skip { task: "b".into() }).unwrap();
    assert!(actions.contains(&Action::CancelTask {
        task: "b".into(),
        attempt: 1
    }));
    assert_eq!(
        run.control(Control::Skip { task: "zz".into() })
            .unwrap_err()
            .code(),
        "unknown_task"
    );
    run.succeed("c");
    run.succeed("d");
    assert_eq!(run.state.run.status, RunStatus::Succeeded);
}

#[test]
fn retry_continues_from_the_last_committed_step() {
    let mut run = Run::new(vec![task("shift").steps(10)]);
    run.start();
    assert_eq!(
        run.control(Control::Retry {
            task: "shift".into()
        })
        .unwrap_err()
        .code(),
        "not_retryable"
    );
    run.begin("shift");
    for step in 1..=4 {
        run.apply(Event::StepCommitted {
            task: "shift".into(),
            attempt: 1,
            step,
            state: serde_json::Value::Null,
        });
    }
    let beyond = run
        .try_apply(Event::StepCommitted {
            task: "shift".into(),
            attempt: 1,
            step: 11,
            state: serde_json::Value::Null,
        })
        .unwrap_err();
    assert_eq!(beyond.code(), "step_out_of_range");
    run.fail("shift", false);
    assert_eq!(run.state.run.status, RunStatus::Failed);
    let actions = run
        .control(Control::Retry {
            task: "shift".into(),
        })
        .unwrap();
    assert_eq!(start_of(&actions, "shift"), (2, 4, CheckSkips::default()));
}

#[test]
fn a_failed_check_stalls_the_task_and_its_dependents_until_overridden() {
    let mut run = Run::new(vec![task("a"), task("b").needs(&["a"])]);
    run.start();
    let actions = run.check_fails("a", CheckPhase::Pre);
    assert!(notified(&actions, NotifyKind::Stalled));
    assert!(matches!(
        run.status("a"),
        TaskStatus::Stalled {
            cause: StallCause::Check(CheckPhase::Pre),
            ..
        }
    ));
    assert_eq!(run.status("b"), &TaskStatus::Waiting);
    assert_eq!(run.state.run.status, RunStatus::Running);
    let actions = run
        .control(Control::OverrideCondition { task: "a".into() })
        .unwrap();
    let (_, _, skips) = start_of(&actions, "a");
    assert!(skips.pre && !skips.health);

    // A post-condition override accepts the task as done.
    run.begin("a");
    run.check_fails("a", CheckPhase::Post);
    let actions = run
        .control(Control::OverrideCondition { task: "a".into() })
        .unwrap();
    assert_eq!(run.status("a"), &TaskStatus::Succeeded);
    assert_eq!(started(&actions), vec!["b"]);
}

#[test]
fn a_health_override_resumes_from_the_committed_step_without_the_gate() {
    let mut run = Run::new(vec![task("shift").steps(5)]);
    run.start();
    run.begin("shift");
    run.apply(Event::StepCommitted {
        task: "shift".into(),
        attempt: 1,
        step: 2,
        state: serde_json::Value::Null,
    });
    run.check_fails("shift", CheckPhase::Health);
    let actions = run
        .control(Control::OverrideCondition {
            task: "shift".into(),
        })
        .unwrap();
    let (attempt, from_step, skips) = start_of(&actions, "shift");
    assert_eq!((attempt, from_step), (2, 2));
    assert!(skips.health);
    // A retry instead evaluates every check again.
    run.check_fails("shift", CheckPhase::Health);
    let actions = run
        .control(Control::Retry {
            task: "shift".into(),
        })
        .unwrap();
    assert_eq!(start_of(&actions, "shift").2, CheckSkips::default());
}

#[test]
fn only_a_check_stall_can_be_overridden() {
    let mut run = Run::new(vec![task("a")]);
    run.start();
    run.begin("a");
    run.apply(Event::Recovered);
    let refused = run
        .control(Control::OverrideCondition { task: "a".into() })
        .unwrap_err();
    assert_eq!(refused.code(), "not_overridable");
}

#[test]
fn recovery_requeues_idempotent_and_unstarted_tasks_and_stalls_the_rest() {
    let mut run = Run::new(vec![
        task("idem").idempotent(true),
        task("unsafe"),
        task("dispatched"),
    ]);
    run.start();
    run.begin("idem");
    run.begin("unsafe");
    let actions = run.apply(Event::Recovered);
    assert_eq!(start_of(&actions, "idem").0, 2);
    assert_eq!(start_of(&actions, "dispatched").0, 2);
    assert!(started(&actions).iter().all(|t| *t != "unsafe"));
    match run.status("unsafe") {
        TaskStatus::Stalled { cause, reason } => {
            assert_eq!(*cause, StallCause::InFlightAtRestart);
            assert_eq!(
                reason,
                "was in flight when the server stopped; check it and retry or skip"
            );
        }
        other => panic!("expected a stall, got {other:?}"),
    }
    assert!(notified(&actions, NotifyKind::Stalled));
    let record = run.state.task("idem").unwrap();
    assert_eq!(
        record.attempts - record.budget_from,
        1,
        "a restart does not use up the retry budget"
    );
    let actions = run
        .control(Control::Retry {
            task: "unsafe".into(),
        })
        .unwrap();
    assert_eq!(start_of(&actions, "unsafe").0, 2);
}

#[test]
fn duplicate_and_out_of_order_reports_change_nothing() {
    let mut run = Run::new(vec![task("a").steps(3)]);
    run.start();
    run.begin("a");
    let again = run
        .try_apply(Event::TaskStarted {
            task: "a".into(),
            attempt: 1,
        })
        .unwrap();
    assert!(again.change.is_noop());
    run.apply(Event::StepCommitted {
        task: "a".into(),
        attempt: 1,
        step: 2,
        state: serde_json::Value::Null,
    });
    let older = run
        .try_apply(Event::StepCommitted {
            task: "a".into(),
            attempt: 1,
            step: 1,
            state: serde_json::Value::Null,
        })
        .unwrap();
    assert!(older.change.is_noop());
    assert_eq!(run.state.task("a").unwrap().step, 2);
    let wrong = run
        .try_apply(Event::TaskSucceeded {
            task: "a".into(),
            attempt: 7,
        })
        .unwrap_err();
    assert_eq!(wrong.code(), "stale_attempt");
    assert_eq!(
        run.control(Control::Start).unwrap_err().code(),
        "already_started"
    );
}

#[test]
fn starting_an_approval_asks_for_one() {
    let mut run = Run::new(vec![PlanTask::new("confirm", APPROVAL_STAGE)]);
    let actions = run.start();
    assert!(notified(&actions, NotifyKind::ApprovalNeeded));
}

#[test]
fn a_state_from_another_plan_is_refused() {
    let run = Run::new(diamond());
    let other = RunPlan::new(vec![task("a")]).unwrap();
    let refused = apply(
        &other,
        &run.state,
        &Event::Tick,
        Context {
            now_ms: 0,
            global_pause: false,
        },
    )
    .unwrap_err();
    assert_eq!(refused.code(), "plan_mismatch");
}

// ---- analysis ----

#[test]
fn the_report_finds_the_actual_critical_path_and_speedup() {
    let mut run = Run::new(vec![
        task("a"),
        task("b").needs(&["a"]),
        task("c").needs(&["a"]),
        task("d").needs(&["b", "c"]),
        PlanTask::new("ok", APPROVAL_STAGE),
    ]);
    run.start(); // a and ok at 0
    run.now = 10;
    run.succeed("a"); // b, c at 10
    run.now = 15;
    run.succeed("ok");
    run.now = 30;
    run.succeed("c");
    run.now = 50;
    run.succeed("b"); // d at 50
    run.now = 55;
    run.succeed("d");
    let report = report(&run.state, &run.plan);
    assert_eq!(report.critical_path, vec!["a", "b", "d"]);
    assert_eq!(report.critical_path_ms, 10 + 40 + 5);
    assert_eq!(report.makespan_ms, 55);
    assert_eq!(report.sequential_ms, 10 + 40 + 20 + 5 + 15);
    assert!((report.speedup - 90.0 / 55.0).abs() < 1e-9);
    assert_eq!(report.approval_wait_ms, 15);
    let slowest: Vec<(&str, u64)> = report
        .slowest
        .iter()
        .map(|t| (t.task.as_str(), t.duration_ms))
        .collect();
    assert_eq!(
        slowest,
        vec![("b", 40), ("c", 20), ("ok", 15), ("a", 10), ("d", 5)]
    );
}

#[test]
fn stuck_detection_uses_the_75th_percentile_of_enough_history() {
    assert_eq!(stuck_threshold_ms(&[10, 20, 30, 40]), None);
    assert_eq!(stuck_threshold_ms(&[50, 10, 40, 20, 30]), Some(40));
    assert_eq!(stuck_threshold_ms(&[1, 2, 3, 4, 5, 6, 7, 8]), Some(6));
    let mut run = Run::new(vec![task("a")]);
    run.start();
    let record = run.state.task("a").unwrap().clone();
    assert!(!is_stuck(&record, 40, Some(40)));
    assert!(is_stuck(&record, 41, Some(40)));
    assert!(!is_stuck(&record, 1_000, None));
    run.succeed("a");
    let done = run.state.task("a").unwrap();
    assert!(!is_stuck(done, 1_000, Some(40)));
}

#[test]
fn an_approval_succeeds_the_waiting_task_and_names_the_approver() {
    let mut run = Run::new(vec![
        PlanTask::new("approve", APPROVAL_STAGE).idempotent(true),
        PlanTask::new("drain", "shell").needs(&["approve"]),
    ]);
    run.start();
    run.begin("approve");
    let attempt = run.attempt("approve");
    let actions = run
        .control(Control::Approve {
            task: "approve".to_string(),
        })
        .expect("approval accepted");
    assert_eq!(*run.status("approve"), TaskStatus::Succeeded);
    assert_eq!(started(&actions), vec!["drain"]);
    assert!(actions.contains(&Action::CancelTask {
        task: "approve".to_string(),
        attempt
    }));
    // The approval is journaled with who gave it and why, before the task's success.
    let decision = apply(
        &run.plan,
        &run.state,
        &Event::Control {
            by: operator(),
            control: Control::Approve {
                task: "drain".to_string(),
            },
        },
        Context {
            now_ms: 0,
            global_pause: false,
        },
    );
    assert!(matches!(
        decision,
        Err(Refusal::NotAwaitingApproval { ref stage, .. }) if stage == "shell"
    ));
}

#[test]
fn approving_a_task_that_is_not_running_is_refused() {
    let mut run = Run::new(vec![
        PlanTask::new("first", "shell"),
        PlanTask::new("approve", APPROVAL_STAGE).needs(&["first"]),
    ]);
    run.start();
    let refusal = run
        .control(Control::Approve {
            task: "approve".to_string(),
        })
        .unwrap_err();
    assert_eq!(refusal.code(), "not_awaiting_approval");
    assert_eq!(*run.status("approve"), TaskStatus::Waiting);
}

#[test]
fn a_stuck_task_is_journaled_and_notified_but_keeps_running() {
    let mut run = Run::new(vec![PlanTask::new("slow", "shell")]);
    run.start();
    run.begin("slow");
    let attempt = run.attempt("slow");
    let decision = run
        .try_apply(Event::TaskStuck {
            task: "slow".to_string(),
            attempt,
            running_ms: 90_000,
            threshold_ms: 60_000,
        })
        .expect("stuck alert accepted");
    assert!(matches!(run.status("slow"), TaskStatus::Running { .. }));
    assert!(matches!(
        decision.change.journal[0].kind,
        JournalKind::TaskStuck {
            running_ms: 90_000,
            threshold_ms: 60_000,
            ..
        }
    ));
    assert!(decision.actions.iter().any(|a| matches!(
        a,
        Action::Notify {
            kind: NotifyKind::Stuck,
            ..
        }
    )));
    // A late alert about an attempt that has ended changes nothing.
    run.apply(Event::TaskSucceeded {
        task: "slow".to_string(),
        attempt,
    });
    assert!(
        run.try_apply(Event::TaskStuck {
            task: "slow".to_string(),
            attempt,
            running_ms: 1,
            threshold_ms: 1,
        })
        .is_err()
    );
}

#[test]
fn a_pace_is_merged_journaled_and_handed_to_the_running_attempt() {
    let mut run = Run::new(vec![
        PlanTask::new("shift", "ramp"),
        PlanTask::new("after", "ramp").needs(&["shift"]),
    ]);
    run.start();
    // Set before the task starts: kept for when it does, nothing to hand over yet.
    let actions = run
        .control(Control::SetPace {
            task: "after".to_string(),
            pace: serde_json::json!({ "wait": "5s" }),
        })
        .expect("a waiting task may be re-paced");
    assert!(!actions.iter().any(|a| matches!(a, Action::SetPace { .. })));
    run.begin("shift");
    let attempt = run.attempt("shift");
    run.control(Control::SetPace {
        task: "shift".to_string(),
        pace: serde_json::json!({ "step": "10%" }),
    })
    .unwrap();
    let actions = run
        .control(Control::SetPace {
            task: "shift".to_string(),
            pace: serde_json::json!({ "wait": "1s" }),
        })
        .unwrap();
    let merged = serde_json::json!({ "step": "10%", "wait": "1s" });
    assert!(actions.contains(&Action::SetPace {
        task: "shift".to_string(),
        attempt,
        pace: merged.clone(),
    }));
    let i = run.plan.index_of("shift").unwrap();
    assert_eq!(run.state.tasks[i].pace, merged);
    run.succeed("shift");
    let refusal = run
        .control(Control::SetPace {
            task: "shift".to_string(),
            pace: serde_json::json!({ "wait": "2s" }),
        })
        .unwrap_err();
    assert_eq!(refusal.code(), "not_paceable");
}
