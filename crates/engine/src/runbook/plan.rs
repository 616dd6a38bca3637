//! The resolved DAG a run executes, its validation, and the analyses that need no run at all:
//! waves (topological levels) and the predicted critical path.
//!
//! A [`RunPlan`] only exists validated: every dependency names a task of the plan and the
//! graph has no cycle, so the scheduler never meets "unknown task" or "waits for itself" at
//! run time.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A task's id, unique within its run.
pub type TaskId = String;

/// Most tasks in one run. A datacenter evacuation composed of service runbooks has hundreds;
/// the bound keeps one definition from exhausting the store or the scheduler.
pub const MAX_TASKS_PER_RUN: usize = 100_000;
/// Most dependencies (strong and weak together) of one task; a final "join" task of a large
/// evacuation may wait for many tasks, but not for more than a run can hold.
pub const MAX_DEPS_PER_TASK: usize = 10_000;
/// Longest task id, in bytes: ids appear in URLs, logs and audit entries.
pub const MAX_TASK_ID_BYTES: usize = 200;
/// Most attempts a retry policy may allow; beyond this, retrying hides a broken stage.
pub const MAX_ATTEMPTS_PER_TASK: u32 = 100;
/// Longest backoff between two attempts, in milliseconds (one day).
pub const MAX_BACKOFF_MS: u64 = 24 * 60 * 60 * 1_000;
/// Largest backoff multiplier; larger ones reach `backoff_max_ms` after one failure anyway.
pub const MAX_BACKOFF_MULTIPLIER: u32 = 16;
/// Longest timeout of one attempt, in milliseconds (one week).
pub const MAX_TASK_TIMEOUT_MS: u64 = 7 * 24 * 60 * 60 * 1_000;
/// Most steps of one paced stage (a traffic shift in 1% steps has 100).
pub const MAX_STEPS_PER_TASK: u32 = 100_000;

/// How often, and how patiently, a task is attempted again after a retryable failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in total, the first included: 1 means "never retry by itself".
    pub max_attempts: u32,
    /// Wait before the second attempt.
    pub backoff_initial_ms: u64,
    /// The wait never grows beyond this.
    pub backoff_max_ms: u64,
    /// Each further wait is the previous one times this (an integer, so plans compare exactly).
    pub multiplier: u32,
}

impl RetryPolicy {
    /// One attempt and no retry: the safe default for a stage nobody thought about.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        backoff_initial_ms: 0,
        backoff_max_ms: 0,
        multiplier: 1,
    };

    /// The wait after the `failures`-th failed attempt (1 for the first): exponential from
    /// `backoff_initial_ms`, capped at `backoff_max_ms`.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        let mut wait = self.backoff_initial_ms.min(self.backoff_max_ms);
        for _ in 1..failures {
            wait = wait.saturating_mul(u64::from(self.multiplier));
            if wait >= self.backoff_max_ms {
                return self.backoff_max_ms;
            }
        }
        wait
    }

    fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_PER_TASK {
            return Err(format!(
                "max_attempts is {}; it must be between 1 and {MAX_ATTEMPTS_PER_TASK}",
                self.max_attempts
            ));
        }
        if self.multiplier == 0 || self.multiplier > MAX_BACKOFF_MULTIPLIER {
            return Err(format!(
                "multiplier is {}; it must be between 1 and {MAX_BACKOFF_MULTIPLIER}",
                self.multiplier
            ));
        }
        if self.backoff_max_ms > MAX_BACKOFF_MS {
            return Err(format!(
                "backoff_max_ms is {}; it must be at most {MAX_BACKOFF_MS}",
                self.backoff_max_ms
            ));
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            return Err(format!(
                "backoff_initial_ms ({}) is larger than backoff_max_ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            ));
        }
        Ok(())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::NONE
    }
}

/// How many checks of each phase a task declares. The executor evaluates them; the engine
/// only needs to know they exist to plan and to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckCounts {
    pub pre: u32,
    pub post: u32,
    pub health: u32,
}

/// One task of a resolved runbook: templates expanded, parameters substituted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanTask {
    pub id: TaskId,
    /// The stage that runs it (`shell`, `traffic_shift`, `approval`, ...).
    pub stage: String,
    /// Strong dependencies: the task never starts before each has succeeded or been skipped.
    pub needs: Vec<TaskId>,
    /// Weak dependencies: like `needs`, but an operator may override one that blocks.
    pub after: Vec<TaskId>,
    /// Whether running the stage again after an interruption is safe. A non-idempotent task
    /// that was in flight when the server stopped waits for an operator.
    pub idempotent: bool,
    pub retries: RetryPolicy,
    /// Longest one attempt may run before it is timed out.
    pub timeout_ms: Option<u64>,
    pub checks: CheckCounts,
    /// Number of steps of a paced stage, if known when planning.
    pub steps: Option<u32>,
    /// Why the task does not run at all (its `when` was false at the start): it starts
    /// skipped, and its dependents go on as after an operator's skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
}

impl PlanTask {
    /// A non-idempotent task without dependencies, retries, timeout or checks.
    pub fn new(id: impl Into<TaskId>, stage: impl Into<String>) -> PlanTask {
        PlanTask {
            id: id.into(),
            stage: stage.into(),
            needs: Vec::new(),
            after: Vec::new(),
            idempotent: false,
            retries: RetryPolicy::NONE,
            timeout_ms: None,
            checks: CheckCounts::default(),
            steps: None,
            skip: None,
        }
    }

    pub fn skipped(mut self, reason: impl Into<String>) -> PlanTask {
        self.skip = Some(reason.into());
        self
    }

    pub fn needs(mut self, deps: &[&str]) -> PlanTask {
        self.needs.extend(deps.iter().map(|d| d.to_string()));
        self
    }

    pub fn after(mut self, deps: &[&str]) -> PlanTask {
        self.after.extend(deps.iter().map(|d| d.to_string()));
        self
    }

    pub fn idempotent(mut self, idempotent: bool) -> PlanTask {
        self.idempotent = idempotent;
        self
    }

    pub fn retries(mut self, retries: RetryPolicy) -> PlanTask {
        self.retries = retries;
        self
    }

    pub fn timeout_ms(mut self, timeout_ms: u64) -> PlanTask {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    pub fn steps(mut self, steps: u32) -> PlanTask {
        self.steps = Some(steps);
        self
    }
}

/// Why a plan cannot run. Each names the task at fault so a lint can point at it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum PlanError {
    #[error("a run needs at least one task")]
    Empty,
    #[error("{count} tasks; a run holds at most {limit}")]
    TooManyTasks { count: usize, limit: usize },
    #[error("task id `{id}` is empty or longer than {limit} bytes")]
    BadId { id: String, limit: usize },
    #[error("task id `{id}` is used twice")]
    DuplicateId { id: TaskId },
    #[error("task `{task}` depends on `{dep}`, which is not a task of this run")]
    UnknownDep { task: TaskId, dep: TaskId },
    #[error("task `{task}` lists `{dep}` twice among its dependencies")]
    DuplicateDep { task: TaskId, dep: TaskId },
    #[error("task `{task}` has {count} dependencies; at most {limit} are allowed")]
    TooManyDeps {
        task: TaskId,
        count: usize,
        limit: usize,
    },
    #[error("dependency cycle: {}", cycle_text(.cycle))]
    Cycle {
        /// Every task of the cycle in dependency order: each needs the next, the last needs
        /// the first.
        cycle: Vec<TaskId>,
    },
    #[error("task `{task}`: retries: {why}")]
    BadRetries { task: TaskId, why: String },
    #[error("task `{task}`: timeout must be between 1 and {limit} ms")]
    BadTimeout { task: TaskId, limit: u64 },
    #[error("task `{task}`: steps must be between 1 and {limit}")]
    BadSteps { task: TaskId, limit: u32 },
    #[error("max_parallel is {requested}; it must be between 1 and {limit}")]
    BadParallelism { requested: u32, limit: u32 },
}

fn cycle_text(cycle: &[TaskId]) -> String {
    let mut text = cycle.join(" -> ");
    if let Some(first) = cycle.first() {
        text.push_str(" -> ");
        text.push_str(first);
    }
    text
}

/// A validated runbook DAG, with the indexes the scheduler needs precomputed.
#[derive(Clone, Debug)]
pub struct RunPlan {
    tasks: Vec<PlanTask>,
    index: HashMap<TaskId, usize>,
    needs: Vec<Vec<usize>>,
    after: Vec<Vec<usize>>,
    /// For each task, the tasks that depend on it (strongly or weakly).
    dependents: Vec<Vec<usize>>,
    /// Dependencies first: every task comes after all it depends on.
    topo: Vec<usize>,
    /// The order in which ready tasks get free slots: longest chain of dependents first (so
    /// the critical path is never kept waiting by tasks that have slack), then plan order.
    start_order: Vec<usize>,
    /// Each task's position in `start_order`.
    start_rank: Vec<usize>,
}

impl RunPlan {
    /// Validates `tasks` and builds the plan. Tasks keep their order, which breaks ties
    /// everywhere so that the same plan is always scheduled the same way.
    pub fn new(tasks: Vec<PlanTask>) -> Result<RunPlan, PlanError> {
        if tasks.is_empty() {
            return Err(PlanError::Empty);
        }
        if tasks.len() > MAX_TASKS_PER_RUN {
            return Err(PlanError::TooManyTasks {
                count: tasks.len(),
                limit: MAX_TASKS_PER_RUN,
            });
        }
        let mut index = HashMap::with_capacity(tasks.len());
        for (i, task) in tasks.iter().enumerate() {
            if task.id.is_empty() || task.id.len() > MAX_TASK_ID_BYTES {
                return Err(PlanError::BadId {
                    id: task.id.clone(),
                    limit: MAX_TASK_ID_BYTES,
                });
            }
            if index.insert(task.id.clone(), i).is_some() {
                return Err(PlanError::DuplicateId {
                    id: task.id.clone(),
                });
            }
        }
        let mut needs = Vec::with_capacity(tasks.len());
        let mut after = Vec::with_capacity(tasks.len());
        for task in &tasks {
            check_task(task)?;
            let count = task.needs.len() + task.after.len();
            if count > MAX_DEPS_PER_TASK {
                return Err(PlanError::TooManyDeps {
                    task: task.id.clone(),
                    count,
                    limit: MAX_DEPS_PER_TASK,
                });
            }
            let mut seen = std::collections::HashSet::with_capacity(count);
            let mut resolve = |deps: &'_ [TaskId]| -> Result<Vec<usize>, PlanError> {
                deps.iter()
                    .map(|dep| {
                        let &i = index.get(dep).ok_or_else(|| PlanError::UnknownDep {
                            task: task.id.clone(),
                            dep: dep.clone(),
                        })?;
                        if !seen.insert(i) {
                            return Err(PlanError::DuplicateDep {
                                task: task.id.clone(),
                                dep: dep.clone(),
                            });
                        }
                        Ok(i)
                    })
                    .collect()
            };
            needs.push(resolve(&task.needs)?);
            after.push(resolve(&task.after)?);
        }
        let topo = topological_order(&tasks, &needs, &after)?;
        let mut dependents = vec![Vec::new(); tasks.len()];
        for i in 0..tasks.len() {
            for &d in needs[i].iter().chain(&after[i]) {
                dependents[d].push(i);
            }
        }
        let mut plan = RunPlan {
            tasks,
            index,
            needs,
            after,
            dependents,
            topo,
            start_order: Vec::new(),
            start_rank: Vec::new(),
        };
        let mut height = vec![1_u32; plan.len()];
        for &i in plan.topo.iter().rev() {
            // Reverse topological order visits dependents before their dependencies.
            let below = height[i];
            for d in plan.deps(i) {
                height[d] = height[d].max(below + 1);
            }
        }
        let mut order: Vec<usize> = (0..plan.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(height[i]), i));
        let mut rank = vec![0; plan.len()];
        for (position, &i) in order.iter().enumerate() {
            rank[i] = position;
        }
        plan.start_order = order;
        plan.start_rank = rank;
        Ok(plan)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Always false: a plan has at least one task. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn tasks(&self) -> &[PlanTask] {
        &self.tasks
    }

    pub fn task(&self, index: usize) -> &PlanTask {
        &self.tasks[index]
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Indexes of the strong dependencies of task `index`.
    pub fn needs_of(&self, index: usize) -> &[usize] {
        &self.needs[index]
    }

    /// Indexes of the weak dependencies of task `index`.
    pub fn after_of(&self, index: usize) -> &[usize] {
        &self.after[index]
    }

    /// Every dependency, strong then weak.
    pub fn deps(&self, index: usize) -> impl Iterator<Item = usize> + '_ {
        self.needs[index].iter().chain(&self.after[index]).copied()
    }

    /// Indexes of the tasks that depend on task `index`.
    pub fn dependents_of(&self, index: usize) -> &[usize] {
        &self.dependents[index]
    }

    /// Task `index`'s position in [`RunPlan::start_order`]: lower starts first.
    pub fn start_rank(&self, index: usize) -> usize {
        self.start_rank[index]
    }

    /// Task indexes with every dependency before its dependents.
    pub fn topological_order(&self) -> &[usize] {
        &self.topo
    }

    /// The order in which ready tasks are offered free slots.
    pub fn start_order(&self) -> &[usize] {
        &self.start_order
    }
}

fn check_task(task: &PlanTask) -> Result<(), PlanError> {
    task.retries.check().map_err(|why| PlanError::BadRetries {
        task: task.id.clone(),
        why,
    })?;
    if task
        .timeout_ms
        .is_some_and(|t| t == 0 || t > MAX_TASK_TIMEOUT_MS)
    {
        return Err(PlanError::BadTimeout {
            task: task.id.clone(),
            limit: MAX_TASK_TIMEOUT_MS,
        });
    }
    if task.steps.is_some_and(|s| s == 0 || s > MAX_STEPS_PER_TASK) {
        return Err(PlanError::BadSteps {
            task: task.id.clone(),
            limit: MAX_STEPS_PER_TASK,
        });
    }
    Ok(())
}

/// Depth-first search without recursion (a 100,000-task chain would overflow the stack).
/// Returns the post-order, which lists dependencies first, or the first cycle met in plan
/// order, whole.
fn topological_order(
    tasks: &[PlanTask],
    needs: &[Vec<usize>],
    after: &[Vec<usize>],
) -> Result<Vec<usize>, PlanError> {
    const UNSEEN: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let n = tasks.len();
    let mut mark = vec![UNSEEN; n];
    let mut order = Vec::with_capacity(n);
    // The current path: (task, how many of its dependencies were visited).
    let mut path: Vec<(usize, usize)> = Vec::new();
    let dep = |i: usize, k: usize| -> Option<usize> {
        match k.checked_sub(needs[i].len()) {
            None => Some(needs[i][k]),
            Some(weak) => after[i].get(weak).copied(),
        }
    };
    for root in 0..n {
        if mark[root] != UNSEEN {
            continue;
        }
        mark[root] = ON_PATH;
        path.push((root, 0));
        while let Some(top) = path.len().checked_sub(1) {
            let (i, k) = path[top];
            let Some(d) = dep(i, k) else {
                mark[i] = DONE;
                order.push(i);
                path.pop();
                continue;
            };
            path[top].1 += 1;
            match mark[d] {
                UNSEEN => {
                    mark[d] = ON_PATH;
                    path.push((d, 0));
                }
                ON_PATH => {
                    let start = path
                        .iter()
                        .position(|&(p, _)| p == d)
                        .expect("a task on the path is in the path");
                    let cycle = path[start..]
                        .iter()
                        .map(|&(p, _)| tasks[p].id.clone())
                        .collect();
                    return Err(PlanError::Cycle { cycle });
                }
                _ => {}
            }
        }
    }
    Ok(order)
}

/// The plan in waves: wave 0 holds the tasks without dependencies, wave k the tasks whose
/// deepest dependency is in wave k-1. With unlimited parallelism and equal durations, each
/// wave runs at once; `levee plan` shows them as the order of the run.
pub fn plan_waves(plan: &RunPlan) -> Vec<Vec<TaskId>> {
    let mut level = vec![0_usize; plan.len()];
    for &i in plan.topological_order() {
        level[i] = plan.deps(i).map(|d| level[d] + 1).max().unwrap_or(0);
    }
    let depth = level.iter().max().map_or(0, |m| m + 1);
    let mut waves = vec![Vec::new(); depth];
    for (i, task) in plan.tasks().iter().enumerate() {
        waves[level[i]].push(task.id.clone());
    }
    waves
}

/// The longest chain of dependent work: no schedule, however parallel, finishes sooner.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CriticalPath {
    /// The tasks of the chain, first to last.
    pub tasks: Vec<TaskId>,
    /// Earliest finish of the whole plan with unlimited parallelism: the makespan's lower
    /// bound.
    pub length_ms: u64,
    /// Time to run every task one after another.
    pub sequential_ms: u64,
    /// `sequential_ms / length_ms`: the best speedup parallelism can give this plan.
    pub speedup: f64,
}

/// The predicted critical path, given a duration for each task (from the history of past
/// runs, or a stage's own estimate). Ties go to the task earlier in the plan.
pub fn critical_path(plan: &RunPlan, durations: &dyn Fn(&str) -> u64) -> CriticalPath {
    let n = plan.len();
    let duration: Vec<u64> = plan.tasks().iter().map(|t| durations(&t.id)).collect();
    let mut start = vec![0_u64; n];
    let mut finish = vec![0_u64; n];
    let mut before: Vec<Option<usize>> = vec![None; n];
    for &i in plan.topological_order() {
        before[i] = plan
            .deps(i)
            .max_by_key(|&d| (finish[d], std::cmp::Reverse(d)));
        start[i] = before[i].map_or(0, |b| finish[b]);
        finish[i] = start[i].saturating_add(duration[i]);
    }
    let last = (0..n)
        .max_by_key(|&i| (finish[i], std::cmp::Reverse(i)))
        .expect("a plan has at least one task");
    let mut chain = vec![last];
    while let Some(b) = before[*chain.last().expect("chain starts non-empty")] {
        chain.push(b);
    }
    chain.reverse();
    let sequential_ms = duration.iter().fold(0_u64, |sum, d| sum.saturating_add(*d));
    let length_ms = finish[last];
    CriticalPath {
        tasks: chain.iter().map(|&i| plan.task(i).id.clone()).collect(),
        length_ms,
        sequential_ms,
        speedup: ratio(sequential_ms, length_ms),
    }
}

/// `numerator / denominator`, and 1 when there is nothing to divide: a plan of zero-length
/// tasks gains nothing from parallelism.
pub(crate) fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        1.0
    } else {
        numerator as f64 / denominator as f64
    }
}
