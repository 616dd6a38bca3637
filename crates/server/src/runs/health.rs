//! Recent health-check observations of task attempts, kept in this process's memory so that
//! the UI can chart each health metric against its thresholds while a task runs.
//!
//! Why memory, not the store: a health check is evaluated every few seconds for as long as a
//! task runs; journaling each observation would multiply the journal of a long run by
//! orders of magnitude, and only a failing observation changes what the run does (that one
//! is journaled, with the check's report, as the task's stall). The charts are therefore of
//! the attempts this replica ran since it started; bounded per check and in tasks tracked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Observations kept per check of a task (the oldest are dropped first).
pub const HEALTH_SAMPLES_PER_CHECK: usize = 120;
/// Tasks whose observations are kept (the task observed least recently is dropped first).
pub const HEALTH_TRACKED_TASKS: usize = 4_096;
/// Longest `observed` text kept per observation, in bytes.
pub const HEALTH_OBSERVED_MAX_BYTES: usize = 200;

/// One evaluation of one health check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthSample {
    pub at_ms: i64,
    pub ok: bool,
    /// The observed value when it is a number (a `metric` check's value, an exit code).
    pub value: Option<f64>,
    pub observed: String,
}

type TaskKey = (String, String);

#[derive(Default)]
struct Inner {
    by_task: HashMap<TaskKey, BTreeMap<String, VecDeque<HealthSample>>>,
    /// Tasks in the order they were first observed, for eviction.
    order: VecDeque<TaskKey>,
}

/// The health observations of this process's task attempts.
#[derive(Default)]
pub struct HealthSamples {
    inner: Mutex<Inner>,
}

impl HealthSamples {
    /// Records one evaluation of `check` for `task` of `run`.
    pub fn record(&self, run: &str, task: &str, check: &str, at_ms: i64, ok: bool, observed: &str) {
        let mut cut = observed.trim();
        if cut.len() > HEALTH_OBSERVED_MAX_BYTES {
            let mut end = HEALTH_OBSERVED_MAX_BYTES;
            while !cut.is_char_boundary(end) {
                end -= 1;
            }
            cut = &cut[..end];
        }
        let sample = HealthSample {
            at_ms,
            ok,
            value: cut.parse::<f64>().ok().filter(|v| v.is_finite()),
            observed: cut.to_string(),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (run.to_string(), task.to_string());
        if !inner.by_task.contains_key(&key) {
            while inner.order.len() >= HEALTH_TRACKED_TASKS {
                if let Some(old) = inner.order.pop_front() {
                    inner.by_task.remove(&old);
                }
            }
            inner.order.push_back(key.clone());
        }
        let samples = inner
            .by_task
            .entry(key)
            .or_default()
            .entry(check.to_string())
            .or_default();
        if samples.len() >= HEALTH_SAMPLES_PER_CHECK {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Every check's observations for `task` of `run`, oldest first, by check name.
    pub fn of(&self, run: &str, task: &str) -> BTreeMap<String, Vec<HealthSample>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_task
            .get(&(run.to_string(), task.to_string()))
            .map(|checks| {
                checks
                    .iter()
                    .map(|(name, samples)| (name.clone(), samples.iter().cloned().collect()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_samples_of_the_latest_tasks() {
        let samples = HealthSamples::default();
        for i in 0..(HEALTH_SAMPLES_PER_CHECK + 5) {
            samples.record("r", "t", "errors", i as i64, true, &format!("{i}"));
        }
        samples.record("r", "t", "probe", 1, false, "exit status 1");
        let kept = samples.of("r", "t");
        assert_eq!(kept["errors"].len(), HEALTH_SAMPLES_PER_CHECK);
        assert_eq!(kept["errors"][0].value, Some(5.0));
        assert_eq!(kept["probe"][0].value, None);
        for i in 0..HEALTH_TRACKED_TASKS {
            samples.record("other", &i.to_string(), "c", 0, true, "1");
        }
        assert!(
            samples.of("r", "t").is_empty(),
            "the oldest task is dropped"
        );
        assert_eq!(samples.of("other", "0")["c"].len(), 1);
    }
}
