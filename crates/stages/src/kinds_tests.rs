//! Tests of the sticky, replication and stateful traffic stages against an in-memory backend
//! on a paused clock (the simulator's own tests are in `levee-sim`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::check::StaticMetrics;
use crate::context::{CancelToken, StageContext, StageOutcome, Step};
use crate::testing::{MemoryBackend, journaled};
use crate::traffic::{Budgets, Replication, TrafficKit};
use crate::{PromotePrimaryStage, Registry, ReplicationStage, Stage, StickyDrainStage};

fn kit(backend: &MemoryBackend, metrics: Arc<StaticMetrics>) -> TrafficKit {
    TrafficKit::new(metrics, Arc::new(Budgets::default())).with_backend(Arc::new(backend.clone()))
}

fn context() -> StageContext {
    StageContext::new(
        "task",
        "run",
        Duration::from_secs(24 * 3_600),
        CancelToken::never(),
    )
}

fn phases(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| s.state["phase"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn sticky_args() -> Value {
    json!({ "backend": "memory", "servers": ["chat/east"], "sessions_below": 20,
            "session_timeout": "10m", "batches": 4, "wait": "1m" })
}

#[tokio::test(start_paused = true)]
async fn sticky_drain_waits_for_sessions_then_tears_down_the_rest_in_paced_batches() {
    let backend = MemoryBackend::with(&[("chat/east", 100, 400)]);
    let stage = StickyDrainStage::new(kit(&backend, Arc::new(StaticMetrics::new())));
    let mut ctx = context();
    let steps = journaled(&mut ctx);
    let ending = {
        let backend = backend.clone();
        tokio::spawn(async move {
            // Sessions end by themselves, slowly.
            tokio::time::sleep(Duration::from_secs(3 * 60)).await;
            backend.set_sessions("chat/east", 16);
        })
    };
    let started = tokio::time::Instant::now();
    let outcome = stage.run(ctx.clone(), &sticky_args()).await;
    ending.await.unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        backend.log(),
        [
            "chat/east weight 0",
            "chat/east state drain",
            "chat/east end_sessions 0.25",
            "chat/east end_sessions 0.33",
            "chat/east end_sessions 0.50",
            "chat/east end_sessions 1.00",
            "chat/east state maint",
        ]
    );
    let steps = steps.lock().unwrap().clone();
    assert_eq!(
        phases(&steps),
        [
            "weights", "drain", "teardown", "teardown", "teardown", "teardown", "maint"
        ]
    );
    assert_eq!(steps[2].state["batch"], 1);
    // Three minutes for sessions to fall (polled), then three waits between four batches.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(6 * 60) && took < Duration::from_secs(6 * 60 + 2),
        "{took:?}"
    );
    let output = ctx.output.snapshot().text;
    assert!(
        output.contains("tearing down the rest in 4 batches"),
        "{output}"
    );
}

/// The complaint: "the drain killed thousands of live sessions": sessions that do not fall
/// below the threshold are never torn down; the task fails and says how many are left.
#[tokio::test(start_paused = true)]
async fn sticky_drain_never_tears_down_sessions_that_stay_above_the_threshold() {
    let backend = MemoryBackend::with(&[("chat/east", 100, 400)]);
    let stage = StickyDrainStage::new(kit(&backend, Arc::new(StaticMetrics::new())));
    let outcome = stage.run(context(), &sticky_args()).await;
    let StageOutcome::Failed { error, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        error.contains("400 sessions still open on chat/east"),
        "{error}"
    );
    assert!(
        !backend
            .log()
            .iter()
            .any(|l| l.contains("end_sessions") || l.contains("maint"))
    );
    assert_eq!(backend.server("chat/east").sessions, 400);
}

#[tokio::test(start_paused = true)]
async fn a_resumed_sticky_drain_restarts_no_batch_it_committed() {
    let backend = MemoryBackend::with(&[("chat/east", 0, 10)]);
    backend
        .servers
        .lock()
        .unwrap()
        .get_mut("chat/east")
        .unwrap()
        .state = "drain".into();
    let stage = StickyDrainStage::new(kit(&backend, Arc::new(StaticMetrics::new())));
    let mut ctx = context();
    ctx.resume_from = Some(Step {
        index: 3,
        state: json!({ "phase": "teardown", "batch": 2, "batches": 4 }),
    });
    let steps = journaled(&mut ctx);
    let outcome = stage.run(ctx, &sticky_args()).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        backend.log(),
        [
            "chat/east end_sessions 0.50",
            "chat/east end_sessions 1.00",
            "chat/east state maint"
        ]
    );
    let steps = steps.lock().unwrap().clone();
    assert_eq!(steps[0].index, 4);
    assert_eq!(steps[0].state["batch"], 3);
}

// Real time: the hooks are real processes, which a paused clock would time out.
#[tokio::test]
async fn sticky_restart_hooks_run_once_per_batch_and_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("restarts");
    let backend = MemoryBackend::with(&[("chat/east", 100, 0), ("chat/east2", 100, 0)]);
    let stage = StickyDrainStage::new(kit(&backend, Arc::new(StaticMetrics::new())));
    let args = json!({ "backend": "memory", "servers": ["chat/east", "chat/east2"],
        "sessions_below": 1, "batches": 2,
        "restart": ["/bin/sh", "-c", format!("echo {{server}} {{batch}}/{{batches}} >> {}", file.display())] });
    assert!(
        !stage.idempotent_for(&args),
        "a restart command is not assumed repeatable"
    );
    let outcome = stage.run(context(), &args).await;
    assert!(outcome.is_success(), "{outcome:?}");
    let restarts = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        restarts,
        "chat/east 1/2\nchat/east2 1/2\nchat/east 2/2\nchat/east2 2/2\n"
    );
    // HAProxy ends sessions only all at once: batches need a restart command.
    let error = stage
        .validate(&json!({ "haproxy": "/run/h.sock", "servers": ["chat/s1"], "sessions_below": 5, "batches": 3 }))
        .unwrap_err();
    assert_eq!(error.argument(), Some("batches"));
    let error = stage
        .validate(&json!({ "backend": "memory", "servers": ["chat/east"], "restore": true, "sessions_below": 5 }))
        .unwrap_err();
    assert_eq!(error.argument(), Some("sessions_below"));
}

#[tokio::test(start_paused = true)]
async fn sticky_restore_sets_ready_then_raises_weights_in_steps() {
    let backend = MemoryBackend::with(&[("chat/east", 0, 0)]);
    backend
        .servers
        .lock()
        .unwrap()
        .get_mut("chat/east")
        .unwrap()
        .state = "maint".into();
    let stage = StickyDrainStage::new(kit(&backend, Arc::new(StaticMetrics::new())));
    let outcome = stage
        .run(
            context(),
            &json!({ "backend": "memory", "servers": ["chat/east"], "restore": true,
                                 "to_weight": 100, "first_step": 10, "step": "30%", "wait": "1m" }),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        backend.log(),
        [
            "chat/east state ready",
            "chat/east weight 10",
            "chat/east weight 40",
            "chat/east weight 70",
            "chat/east weight 100"
        ]
    );
}

const LAG: &str = "levee_sim_replication_lag_seconds{service=\"cache\",dc=\"east\"}";

fn restore_args() -> Value {
    json!({ "backend": "memory", "servers": ["cache/east"], "direction": "restore",
            "bandwidth_mbps": 4, "lag_query": LAG, "lag_below": 5, "to_weight": 100,
            "step": "50%", "catchup_timeout": "30m" })
}

#[tokio::test(start_paused = true)]
async fn replication_drain_moves_reads_then_stops_replication() {
    let backend = MemoryBackend::with(&[("cache/east", 100, 0)]);
    let stage = ReplicationStage::new(kit(&backend, Arc::new(StaticMetrics::new())));
    let mut ctx = context();
    let steps = journaled(&mut ctx);
    let outcome = stage
        .run(ctx, &json!({ "backend": "memory", "servers": ["cache/east"], "direction": "drain", "step": "50%" }))
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        backend.log(),
        [
            "cache/east weight 50",
            "cache/east weight 0",
            "cache/east replication Stopped"
        ]
    );
    assert_eq!(
        phases(&steps.lock().unwrap()),
        ["reads", "reads", "stopped"]
    );
}

/// The complaint: "the restore saturated the network and sent reads to a replica hours
/// behind": the catch-up is capped and reads wait for the lag.
#[tokio::test(start_paused = true)]
async fn replication_restore_is_throttled_and_reads_wait_for_the_lag() {
    let backend = MemoryBackend::with(&[("cache/east", 0, 0)]);
    let metrics = Arc::new(StaticMetrics::new());
    metrics.set(LAG, 3_600.0);
    let stage = ReplicationStage::new(kit(&backend, metrics.clone()));
    let run = {
        let args = restore_args();
        tokio::spawn(async move { stage.run(context(), &args).await })
    };
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    assert_eq!(
        backend.weight("cache/east"),
        0,
        "no reads before catching up"
    );
    assert_eq!(
        backend.server("cache/east").replication,
        Some(Replication::Running {
            bandwidth_mbps: Some(4.0)
        })
    );
    metrics.set(LAG, 2.0);
    let outcome = run.await.unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(backend.weight("cache/east"), 100);
    // An unthrottled catch-up is refused outright.
    let mut unthrottled = restore_args();
    unthrottled
        .as_object_mut()
        .unwrap()
        .remove("bandwidth_mbps");
    let error = ReplicationStage::new(kit(&backend, metrics))
        .validate(&unthrottled)
        .unwrap_err();
    assert_eq!(error.argument(), Some("bandwidth_mbps"));
}

#[tokio::test(start_paused = true)]
async fn replication_restore_fails_closed_without_a_lag() {
    let backend = MemoryBackend::with(&[("cache/east", 0, 0)]);
    let stage = ReplicationStage::new(kit(&backend, Arc::new(StaticMetrics::new())));
    let outcome = stage.run(context(), &restore_args()).await;
    let StageOutcome::Failed { error, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(error.contains("failing closed"), "{error}");
    assert_eq!(backend.weight("cache/east"), 0);
}

const PRIMARY: &str = "levee_sim_primary{service=\"db\",dc=\"west\"}";

fn promote_args() -> Value {
    // Whichever datacenter is drained, the first other candidate is promoted.
    json!({ "backend": "memory", "promote": ["db/east", "db/west"], "away_from": ["db/east"],
            "then_maint": true, "step": "50%", "verify_timeout": "1m",
            "verify": { "name": "the replica is primary",
                        "metric": { "query": "levee_sim_primary{service=\"db\",dc=\"{promoted_server}\"}", "above": 0.5 } } })
}

fn promote_context(metrics: Arc<StaticMetrics>) -> StageContext {
    let mut ctx = context();
    ctx.checks = Arc::new(Registry::with_metric_source(metrics));
    ctx
}

#[tokio::test(start_paused = true)]
async fn promote_primary_verifies_before_moving_traffic() {
    let backend = MemoryBackend::with(&[("db/east", 100, 0), ("db/west", 100, 0)]);
    let metrics = Arc::new(StaticMetrics::new());
    metrics.set(PRIMARY, 1.0);
    let stage = PromotePrimaryStage::new(kit(&backend, metrics.clone()));
    let mut ctx = promote_context(metrics);
    let steps = journaled(&mut ctx);
    let outcome = stage.run(ctx, &promote_args()).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        backend.log(),
        [
            "db/west promote",
            "db/east weight 50",
            "db/east weight 0",
            "db/east state drain",
            "db/east state maint"
        ]
    );
    assert_eq!(
        phases(&steps.lock().unwrap()),
        ["promoted", "verified", "away", "away", "maint"]
    );
}

/// The complaint: "draining west moved the primary out of east for nothing".
#[tokio::test(start_paused = true)]
async fn a_primary_outside_the_drained_datacenter_stays_where_it_is() {
    let backend = MemoryBackend::with(&[
        ("db/east", 100, 0),
        ("db/west", 100, 0),
        ("db/central", 100, 0),
    ]);
    let metrics = Arc::new(StaticMetrics::new());
    metrics.set("levee_sim_primary{service=\"db\",dc=\"central\"}", 0.0);
    metrics.set("levee_sim_primary{service=\"db\",dc=\"east\"}", 1.0);
    let stage = PromotePrimaryStage::new(kit(&backend, metrics.clone()));
    let mut args = promote_args();
    args["promote"] = json!(["db/west", "db/central", "db/east"]);
    args["away_from"] = json!(["db/west"]);
    let ctx = promote_context(metrics);
    let output = ctx.output.clone();
    let outcome = stage.run(ctx, &args).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert!(
        output
            .snapshot()
            .text
            .contains("db/east is already primary; keeping it")
    );
    assert!(!backend.server("db/central").primary);
    assert_eq!(backend.server("db/west").state, "maint");
}

/// The complaint: "traffic moved to a replica that never became primary".
#[tokio::test(start_paused = true)]
async fn traffic_never_moves_to_a_replica_nobody_saw_become_primary() {
    let backend = MemoryBackend::with(&[("db/east", 100, 0), ("db/west", 100, 0)]);
    let metrics = Arc::new(StaticMetrics::new());
    metrics.set(PRIMARY, 0.0);
    let stage = PromotePrimaryStage::new(kit(&backend, metrics.clone()));
    let outcome = stage.run(promote_context(metrics), &promote_args()).await;
    let StageOutcome::Failed { error, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(error.contains("no traffic was moved"), "{error}");
    assert_eq!(backend.log(), ["db/west promote"]);
    // A resumed attempt that had promoted does not promote again.
    let backend = MemoryBackend::with(&[("db/east", 100, 0), ("db/west", 100, 0)]);
    let metrics = Arc::new(StaticMetrics::new());
    metrics.set(PRIMARY, 1.0);
    let stage = PromotePrimaryStage::new(kit(&backend, metrics.clone()));
    let mut ctx = promote_context(metrics);
    ctx.resume_from = Some(Step {
        index: 0,
        state: json!({ "phase": "promoted" }),
    });
    assert!(stage.run(ctx, &promote_args()).await.is_success());
    assert!(!backend.log().iter().any(|l| l.contains("promote")));
    let error = stage
        .validate(
            &json!({ "backend": "memory", "promote": "db/west", "away_from": ["db/west"],
                           "verify": { "metric": { "query": PRIMARY, "above": 0.5 } } }),
        )
        .unwrap_err();
    assert_eq!(error.argument(), Some("away_from"));
}
