//! The four traffic stages against the simulated fleet, on a paused clock: the stage library
//! as `levee demo` runs it (`backend: sim`, metrics from the simulator).

use std::sync::Arc;
use std::time::Duration;

use levee_sim::{Sim, SimHandle, SimSpec};
use levee_stages::{CancelToken, Registry, StageContext, StageOutcome};
use serde_json::{Value, json};

fn registry(sim: &SimHandle) -> Registry {
    let mut registry = Registry::with_metric_source(Arc::new(sim.clone()));
    registry.add_traffic_backend(Arc::new(sim.clone()));
    registry
}

async fn run(registry: &Registry, stage: &str, args: Value) -> (StageOutcome, String) {
    registry
        .validate_stage(stage, &args)
        .expect("valid arguments");
    let mut ctx = StageContext::new(
        "task",
        "run",
        Duration::from_secs(24 * 3_600),
        CancelToken::never(),
    );
    ctx.checks = Arc::new(registry.clone());
    let output = ctx.output.clone();
    let outcome = registry.stage(stage).unwrap().run(ctx, &args).await;
    (outcome, output.snapshot().text)
}

fn query(sim: &SimHandle, query: &str) -> f64 {
    sim.with(|sim| sim.query(query)).unwrap()
}

/// The complaint: "the shift kept going while errors rose". West cannot carry all of web:
/// the closed loop stops the shift at the first step that pushes west's errors past the
/// limit, and says so.
#[tokio::test(start_paused = true)]
async fn the_closed_loop_stops_a_shift_that_overloads_the_other_datacenter() {
    let mut spec = SimSpec::demo();
    spec.services[0].capacity_rps.insert("west".into(), 600.0);
    let sim = SimHandle::on_tokio_clock(Sim::new(spec).unwrap());
    let args = json!({
        "backend": "sim", "servers": ["web/east"], "to_weight": 0,
        "first_step": "10%", "step": "20%", "wait": "1m",
        "health_query": "max(levee_sim_error_ratio{service=\"web\"})", "health_below": 0.05,
    });
    let (outcome, output) = run(&registry(&sim), "traffic_shift", args).await;
    let StageOutcome::Failed { error, .. } = outcome else {
        panic!("the shift went on: {outcome:?}\n{output}");
    };
    assert!(error.contains("at or above its limit 0.05"), "{error}");
    let weight = query(&sim, "levee_sim_weight{service=\"web\",dc=\"east\"}");
    assert_eq!(weight, 90.0, "one small step, then stopped:\n{output}");
}

#[tokio::test(start_paused = true)]
async fn the_closed_loop_drains_a_healthy_service_in_growing_steps() {
    let sim = SimHandle::on_tokio_clock(Sim::new(SimSpec::demo()).unwrap());
    let args = json!({
        "backend": "sim", "servers": ["web/east"], "to_weight": 0,
        "first_step": "10%", "step": "10%", "max_step": "40%", "wait": "1m",
        "health_query": "max(levee_sim_error_ratio{service=\"web\"})", "health_below": 0.05,
        "then_maint": true,
    });
    let started = tokio::time::Instant::now();
    let (outcome, output) = run(&registry(&sim), "traffic_shift", args).await;
    assert!(outcome.is_success(), "{outcome:?}\n{output}");
    // 10, 10, 20, 40, 20: five steps, four waits, instead of ten steps at 10%.
    assert_eq!(started.elapsed(), Duration::from_secs(4 * 60), "{output}");
    assert!(output.contains("step grows to 40"), "{output}");
    assert!(query(&sim, "max(levee_sim_error_ratio)") < 0.01);
}

#[tokio::test(start_paused = true)]
async fn sticky_sessions_fall_then_the_rest_are_torn_down_in_batches() {
    let sim = SimHandle::on_tokio_clock(Sim::new(SimSpec::demo()).unwrap());
    let sessions = "levee_sim_sessions{service=\"sessions\",dc=\"east\"}";
    assert!(query(&sim, sessions) > 300.0);
    let args = json!({
        "backend": "sim", "servers": ["sessions/east"], "sessions_below": 40,
        "batches": 3, "wait": "2s", "session_timeout": "1m",
    });
    let (outcome, output) = run(&registry(&sim), "sticky_drain", args).await;
    assert!(outcome.is_success(), "{outcome:?}\n{output}");
    assert_eq!(query(&sim, sessions), 0.0);
    assert!(output.contains("teardown batch 3 of 3"), "{output}");
    let status = sim.with(|sim| sim.query("levee_sim_weight{service=\"sessions\",dc=\"east\"}"));
    assert_eq!(status, Ok(0.0));
    let restore = json!({ "backend": "sim", "servers": ["sessions/east"], "restore": true,
                          "to_weight": 100, "step": "50%" });
    let (outcome, _) = run(&registry(&sim), "sticky_drain", restore).await;
    assert!(outcome.is_success(), "{outcome:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(query(&sim, sessions) > 300.0, "sessions came back");
}

#[tokio::test(start_paused = true)]
async fn a_replica_catches_up_within_its_budget_before_reads_come_back() {
    let sim = SimHandle::on_tokio_clock(Sim::new(SimSpec::demo()).unwrap());
    let registry = registry(&sim);
    let lag = "levee_sim_replication_lag_seconds{service=\"db\",dc=\"west\"}";
    let drain =
        json!({ "backend": "sim", "servers": ["db/west"], "direction": "drain", "step": "50%" });
    let (outcome, output) = run(&registry, "replication", drain).await;
    assert!(outcome.is_success(), "{outcome:?}\n{output}");
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(
        (query(&sim, lag) - 600.0).abs() < 1.0,
        "{}",
        query(&sim, lag)
    );
    let restore = json!({
        "backend": "sim", "servers": ["db/west"], "direction": "restore",
        "bandwidth_mbps": 2, "lag_query": lag, "lag_below": 5, "to_weight": 100, "step": "50%",
    });
    let started = tokio::time::Instant::now();
    let (outcome, output) = run(&registry, "replication", restore).await;
    assert!(outcome.is_success(), "{outcome:?}\n{output}");
    // 480 MB behind, caught up at 2 - 0.8 MB/s: about 400 s, polled every 5 s.
    let took = started.elapsed().as_secs();
    assert!((395..=405).contains(&took), "{took} s\n{output}");
    assert!(
        query(
            &sim,
            "levee_sim_replication_mbps{service=\"db\",dc=\"west\"}"
        ) <= 2.0
    );
    assert_eq!(
        query(&sim, "levee_sim_weight{service=\"db\",dc=\"west\"}"),
        100.0
    );
    assert!(query(&sim, "levee_sim_network_utilisation{dc=\"west\"}") < 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_stateful_service_is_promoted_elsewhere_before_its_datacenter_goes() {
    let sim = SimHandle::on_tokio_clock(Sim::new(SimSpec::demo()).unwrap());
    // Its callers leave east first, as the generated runbook orders it.
    for caller in ["web/east", "api/east", "sessions/east"] {
        sim.with(|sim| sim.set_weight(caller, 0)).unwrap();
    }
    let args = json!({
        "backend": "sim", "promote": "db/west", "away_from": ["db/east"], "then_maint": true,
        "step": "50%", "wait": "1m",
        "verify": { "name": "db/west is primary",
                    "metric": { "query": "levee_sim_primary{service=\"db\",dc=\"west\"}", "above": 0.5 } },
        "health_query": "max(levee_sim_error_ratio{service=\"db\"})", "health_below": 0.05,
    });
    let (outcome, output) = run(&registry(&sim), "promote_primary", args).await;
    assert!(outcome.is_success(), "{outcome:?}\n{output}");
    assert_eq!(
        sim.with(|sim| sim.primary("db").map(str::to_string)),
        Some("west".into())
    );
    assert!(
        query(&sim, "max(levee_sim_error_ratio{service=\"db\"})") < 0.01,
        "{output}"
    );
    // Promoting a replica that is behind is refused, and nothing moves.
    let back = json!({
        "backend": "sim", "promote": "db/east", "ready_first": true, "to_weight": 100,
        "verify": { "metric": { "query": "levee_sim_primary{service=\"db\",dc=\"east\"}", "above": 0.5 } },
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (outcome, _) = run(&registry(&sim), "promote_primary", back).await;
    assert!(
        matches!(&outcome, StageOutcome::Failed { error, .. } if error.contains("would lose writes")),
        "{outcome:?}"
    );
    assert_eq!(
        query(&sim, "levee_sim_weight{service=\"db\",dc=\"east\"}"),
        0.0
    );
}
