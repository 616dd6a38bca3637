//! Test doubles for the traffic stages: an in-memory backend that records what it was told,
//! and metric sources computed from it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::check::{MetricError, MetricSource};
use crate::context::{StageContext, Step, StepReporter};
use crate::traffic::{Replication, ServerStatus, TrafficBackend};

/// One server of [`MemoryBackend`].
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub weight: u32,
    pub state: String,
    pub sessions: u64,
    pub replication: Option<Replication>,
    pub primary: bool,
}

/// A traffic backend in memory. Every change is logged as `TARGET op value`.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    pub servers: Arc<Mutex<BTreeMap<String, Server>>>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl MemoryBackend {
    pub fn with(targets: &[(&str, u32, u64)]) -> MemoryBackend {
        let backend = MemoryBackend::default();
        for (target, weight, sessions) in targets {
            backend.servers.lock().unwrap().insert(
                target.to_string(),
                Server {
                    weight: *weight,
                    state: "ready".to_string(),
                    sessions: *sessions,
                    replication: None,
                    primary: false,
                },
            );
        }
        backend
    }

    pub fn server(&self, target: &str) -> Server {
        self.servers.lock().unwrap()[target].clone()
    }

    pub fn weight(&self, target: &str) -> u32 {
        self.server(target).weight
    }

    pub fn set_sessions(&self, target: &str, sessions: u64) {
        self.servers
            .lock()
            .unwrap()
            .get_mut(target)
            .unwrap()
            .sessions = sessions;
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn change(&self, target: &str, f: impl FnOnce(&mut Server) -> String) -> Result<(), String> {
        let mut servers = self.servers.lock().unwrap();
        let server = servers
            .get_mut(target)
            .ok_or_else(|| format!("no server `{target}`"))?;
        let entry = f(server);
        self.log.lock().unwrap().push(format!("{target} {entry}"));
        Ok(())
    }
}

#[async_trait]
impl TrafficBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn status(&self, target: &str) -> Result<ServerStatus, String> {
        let server = self
            .servers
            .lock()
            .unwrap()
            .get(target)
            .cloned()
            .ok_or_else(|| format!("no server `{target}`"))?;
        Ok(ServerStatus {
            weight: server.weight,
            initial_weight: 100,
            maintenance: server.state == "maint",
            draining: server.state == "drain",
            up: true,
            sessions: server.sessions,
        })
    }

    async fn set_weight(&self, target: &str, weight: u32) -> Result<(), String> {
        self.change(target, |server| {
            server.weight = weight;
            format!("weight {weight}")
        })
    }

    async fn set_state(&self, target: &str, state: &str) -> Result<(), String> {
        self.change(target, |server| {
            server.state = state.to_string();
            format!("state {state}")
        })
    }

    async fn end_sessions(&self, target: &str, fraction: f64) -> Result<u64, String> {
        let mut ended = 0;
        self.change(target, |server| {
            ended = (server.sessions as f64 * fraction).round() as u64;
            server.sessions -= ended.min(server.sessions);
            format!("end_sessions {fraction:.2}")
        })?;
        Ok(ended)
    }

    async fn set_replication(&self, target: &str, replication: Replication) -> Result<(), String> {
        self.change(target, |server| {
            server.replication = Some(replication);
            format!("replication {replication:?}")
        })
    }

    async fn promote(&self, target: &str) -> Result<(), String> {
        self.change(target, |server| {
            server.primary = true;
            "promote".to_string()
        })
    }
}

/// A metric computed from the backend each time it is read.
pub struct FnMetrics<F: Fn(&MemoryBackend) -> Result<f64, MetricError> + Send + Sync> {
    pub backend: MemoryBackend,
    pub f: F,
}

#[async_trait]
impl<F: Fn(&MemoryBackend) -> Result<f64, MetricError> + Send + Sync> MetricSource
    for FnMetrics<F>
{
    async fn query(&self, _query: &str) -> Result<f64, MetricError> {
        (self.f)(&self.backend)
    }
}

/// A context whose steps are journaled (acknowledged) into the returned list.
pub fn journaled(ctx: &mut StageContext) -> Arc<Mutex<Vec<Step>>> {
    let (reporter, mut receiver): (StepReporter, mpsc::Receiver<_>) = StepReporter::channel();
    ctx.steps = reporter;
    let steps = Arc::new(Mutex::new(Vec::new()));
    let kept = steps.clone();
    tokio::spawn(async move {
        while let Some(commit) = receiver.recv().await {
            kept.lock().unwrap().push(commit.step.clone());
            let _ = commit.ack.send(Ok(()));
        }
    });
    steps
}
