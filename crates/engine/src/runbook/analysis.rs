//! What a run did, from its recorded times: the actual critical path, the speedup of the
//! parallel schedule (Maelstrom's Table 5), the slowest tasks, and whether a running task
//! looks stuck compared with its history.

use serde::Serialize;

use super::plan::ratio;
use super::{APPROVAL_STAGE, RunPlan, RunState, TaskId, TaskRecord, TaskStatus};

/// Fewest past durations of a task before it can be called stuck: with fewer, the 75th
/// percentile is one noisy run and would page people for nothing.
pub const MIN_HISTORY_FOR_STUCK: usize = 5;
/// Slowest tasks listed in a run report.
pub const REPORT_SLOWEST_TASKS: usize = 5;

/// One task's time, first dispatch to end (retries and backoffs included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskTime {
    pub task: TaskId,
    pub duration_ms: u64,
}

/// The post-run report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    /// The chain that decided when the run ended, first task first: from the last task to
    /// finish, each step back goes to the dependency that finished last.
    pub critical_path: Vec<TaskId>,
    /// Time spent in the tasks of the critical path.
    pub critical_path_ms: u64,
    /// From the run's start to its end (or to the last task's end while it is not over).
    pub makespan_ms: u64,
    /// The run's time had every task run one after another.
    pub sequential_ms: u64,
    /// `sequential_ms / makespan_ms`.
    pub speedup: f64,
    /// Longest tasks first, at most [`REPORT_SLOWEST_TASKS`].
    pub slowest: Vec<TaskTime>,
    /// Time spent in approval tasks: people, not machines.
    pub approval_wait_ms: u64,
}

fn duration_ms(record: &TaskRecord) -> Option<u64> {
    let (start, end) = (record.started_at_ms?, record.finished_at_ms?);
    u64::try_from(end.saturating_sub(start)).ok()
}

/// The report of a run from its recorded start and finish times. Tasks that never ran
/// (skipped before starting, cancelled while waiting) take no time and are left out.
pub fn report(state: &RunState, plan: &RunPlan) -> RunReport {
    let n = plan.len().min(state.tasks.len());
    let durations: Vec<Option<u64>> = state.tasks[..n].iter().map(duration_ms).collect();
    let sequential_ms = durations
        .iter()
        .flatten()
        .fold(0_u64, |s, d| s.saturating_add(*d));
    let approval_wait_ms = (0..n)
        .filter(|&i| plan.task(i).stage == APPROVAL_STAGE)
        .filter_map(|i| durations[i])
        .fold(0_u64, |s, d| s.saturating_add(d));
    let finish = |i: usize| {
        state.tasks[i]
            .finished_at_ms
            .filter(|_| durations[i].is_some())
    };
    let last = (0..n)
        .filter_map(|i| finish(i).map(|f| (f, std::cmp::Reverse(i))))
        .max()
        .map(|(_, std::cmp::Reverse(i))| i);
    let mut chain = Vec::new();
    let mut at = last;
    while let Some(i) = at {
        chain.push(i);
        at = plan
            .deps(i)
            .filter_map(|d| finish(d).map(|f| (f, std::cmp::Reverse(d))))
            .max()
            .map(|(_, std::cmp::Reverse(d))| d);
    }
    chain.reverse();
    let critical_path_ms = chain
        .iter()
        .filter_map(|&i| durations[i])
        .fold(0_u64, |s, d| s.saturating_add(d));
    let first_start = state.tasks[..n]
        .iter()
        .filter_map(|t| t.started_at_ms)
        .min();
    let start = state.run.started_at_ms.or(first_start);
    let end = state.run.finished_at_ms.or_else(|| {
        state.tasks[..n]
            .iter()
            .filter_map(|t| t.finished_at_ms)
            .max()
    });
    let makespan_ms = match (start, end) {
        (Some(s), Some(e)) => u64::try_from(e.saturating_sub(s)).unwrap_or(0),
        _ => 0,
    };
    let mut slowest: Vec<TaskTime> = (0..n)
        .filter_map(|i| {
            durations[i].map(|duration_ms| TaskTime {
                task: plan.task(i).id.clone(),
                duration_ms,
            })
        })
        .collect();
    // Stable sort: equal durations keep plan order.
    slowest.sort_by_key(|t| std::cmp::Reverse(t.duration_ms));
    slowest.truncate(REPORT_SLOWEST_TASKS);
    RunReport {
        critical_path: chain.iter().map(|&i| plan.task(i).id.clone()).collect(),
        critical_path_ms,
        makespan_ms,
        sequential_ms,
        speedup: ratio(sequential_ms, makespan_ms),
        slowest,
        approval_wait_ms,
    }
}

/// How long a task may run before it is called stuck: the 75th percentile (nearest rank) of
/// its past durations, as Maelstrom does, once there are at least [`MIN_HISTORY_FOR_STUCK`].
pub fn stuck_threshold_ms(history_durations: &[u64]) -> Option<u64> {
    if history_durations.len() < MIN_HISTORY_FOR_STUCK {
        return None;
    }
    let mut sorted = history_durations.to_vec();
    sorted.sort_unstable();
    // Nearest rank: the smallest value with at least 75% of the samples at or below it.
    let rank = (sorted.len() * 3).div_ceil(4);
    Some(sorted[rank - 1])
}

/// Whether a running task has been going longer than `threshold_ms` (from
/// [`stuck_threshold_ms`]) at `now_ms`. Its time counts from its first dispatch, as the
/// history does.
pub fn is_stuck(task: &TaskRecord, now_ms: i64, threshold_ms: Option<u64>) -> bool {
    let (Some(threshold), Some(started)) = (threshold_ms, task.started_at_ms) else {
        return false;
    };
    matches!(task.status, TaskStatus::Running { .. })
        && u64::try_from(now_ms.saturating_sub(started)).is_ok_and(|ran| ran > threshold)
}
