//! `levee-bench runs` on small runbooks: every case must run to `succeeded` with every task
//! dispatched, started and succeeded exactly once, so the benchmark can never report the speed
//! of a run that did not do its work.

use std::time::Duration;

use levee_bench::runs::{self, RunsConfig};

/// Tasks per runbook: enough for many turns of the run's actor, small enough for a debug build.
const TASKS: usize = 200;
/// Commits in each raw commit loop.
const BASELINE_COMMITS: u64 = 50;
/// Longest one small run may take before the test fails, in seconds: a broken run that stalls
/// fails the test quickly instead of waiting for the benchmark's own limit.
const RUN_TIME_LIMIT_S: u64 = 30;
/// Journal entries of a run that went well: a dispatch, a start and a success per task, and the
/// run's start and finish.
const JOURNAL_ENTRIES: usize = 3 * TASKS + 2;
/// Decisions of such a run: the start, then a `task_started` and a `task_succeeded` per task.
const DECISIONS: u64 = 2 * TASKS as u64 + 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_runs_every_task_exactly_once() {
    let config = RunsConfig {
        tasks: TASKS,
        baseline_commits: BASELINE_COMMITS,
        run_time_limit: Duration::from_secs(RUN_TIME_LIMIT_S),
        ..RunsConfig::default()
    };
    let report = runs::run(&config).await.expect("the benchmark runs");
    assert!(report.problems.is_empty(), "{:#?}", report.problems);

    assert_eq!(
        report.baselines.len(),
        2,
        "a raw commit loop before and after"
    );
    for baseline in &report.baselines {
        assert_eq!(baseline.commits, BASELINE_COMMITS);
        assert!(baseline.commits_per_s > 0.0);
    }
    let baseline = report.baseline_commits_per_s.expect("a baseline rate");

    let names: Vec<&str> = report.cases.iter().map(|c| c.case.name.as_str()).collect();
    assert_eq!(names, ["wide", "wide-1000", "deep", "random-dag"]);
    for case in &report.cases {
        let name = &case.case.name;
        let run = case
            .end_to_end
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no end-to-end figures"));
        assert_eq!(run.status, "succeeded", "{name}");
        assert!(run.verification.ok, "{name}: {:?}", run.verification);
        assert_eq!(run.verification.tasks_succeeded, TASKS, "{name}");
        assert_eq!(run.verification.tasks_done_exactly_once, TASKS, "{name}");
        assert_eq!(
            run.verification.journal_entries_read, JOURNAL_ENTRIES,
            "{name}"
        );
        assert_eq!(run.decisions, DECISIONS as i64, "{name}");
        assert_eq!(run.journal_entries, JOURNAL_ENTRIES as u64, "{name}");
        assert_eq!(
            run.outputs_written, TASKS as u64,
            "{name}: one log output per task"
        );
        assert!(
            run.run_commits >= 1 && run.run_commits <= DECISIONS,
            "{name}: {} commits for {DECISIONS} decisions",
            run.run_commits
        );
        assert!(run.tasks_per_s > 0.0 && run.duration_s > 0.0, "{name}");
        let per_raw_commit = run.tasks_per_raw_commit.expect("a ratio to the baseline");
        assert!(
            (per_raw_commit - run.tasks_per_s / baseline).abs() < 1e-9,
            "{name}"
        );

        let engine = case
            .engine_alone
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no engine-alone figures"));
        assert_eq!(engine.decisions, DECISIONS, "{name}");
        assert!(engine.tasks_per_s > 0.0, "{name}");
    }
    let wide = &report.cases[0];
    let wide_high = &report.cases[1];
    assert_eq!(wide.max_parallel, 32);
    assert_eq!(wide_high.max_parallel, runs::WIDE_MAX_PARALLEL_HIGH);
    assert_eq!(wide.edges, 0);
    assert_eq!(report.cases[2].edges, TASKS - 1, "deep is a chain");
}
