//! `levee demo`: Levee's main job on the embedded database, in one command. It starts a
//! server on a SQLite file with a generated simulated fleet (three datacenters, about 100
//! services of the four traffic kinds, a layered call graph), generates the evacuation and
//! restore runbooks from the call graph (`levee deps plan`), stores them with the templates
//! of `examples/demo/evacuate.yaml`, evacuates `east` and restores it live in the terminal
//! (paced traffic shifts gated on the simulated error ratios), prints each report (critical
//! path, speedup) and the time per phase, and keeps serving so the runs can be looked at.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use levee_server::{App, AppOptions, SystemClock};
use levee_sim::{Sim, SimHandle, SimSpec, deps};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::commands::{Output, OutputArgs, ServerArgs};
use crate::runs::{RunArgs, RunIdArgs};

/// The runbooks the demo runs; the file a reader opens is the file that runs.
const DEMO_YAML: &str = include_str!("../../../examples/demo/evacuate.yaml");
/// The file name the demo's definitions are stored under.
const DEMO_FILE: &str = "examples/demo/evacuate.yaml";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Address to serve on while the demo runs (and after, until Ctrl-C).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// The store: a SQLite file, created if missing.
    #[arg(long, default_value = "sqlite://levee-demo.db")]
    pub database: String,
    /// The datacenter to evacuate (and then restore): `east`, `west` or `central`.
    #[arg(long, default_value = "east")]
    pub dc: String,
    /// Exit when the runs end instead of serving on until Ctrl-C (exit 0 only if both
    /// succeeded).
    #[arg(long)]
    pub exit: bool,
    /// Services in the generated fleet.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(4..=2_000))]
    pub services: u64,
}

/// Datacenters of the generated fleet.
const DEMO_DATACENTERS: [&str; 3] = ["east", "west", "central"];
/// Seed of the generated fleet and call graph: the same demo every time.
const DEMO_SEED: u64 = 7;
/// The error ratio each service's shift must stay under.
const DEMO_ERROR_RATIO_LIMIT: f64 = 0.05;

pub async fn run(args: DemoArgs) -> anyhow::Result<u8> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!("the demo serves without authentication, so only on loopback (127.0.0.1)");
    }
    if !DEMO_DATACENTERS.contains(&args.dc.as_str()) {
        anyhow::bail!(
            "the simulated fleet's datacenters are {}; `{}` is not one",
            DEMO_DATACENTERS.join(", "),
            args.dc
        );
    }
    let (spec, edges) = SimSpec::generated(args.services as usize, &DEMO_DATACENTERS, DEMO_SEED);
    let plan = deps::plan_drain(&edges, &[]).map_err(anyhow::Error::msg)?;
    let health = Some(("levee_sim_error_ratio", DEMO_ERROR_RATIO_LIMIT));
    let generated = format!(
        "{}---\n{}",
        deps::runbook_yaml_with_health(
            &plan,
            "evacuate-fleet",
            "shift-out",
            deps::Direction::Evacuate,
            health
        ),
        deps::runbook_yaml_with_health(
            &plan,
            "restore-fleet",
            "shift-in",
            deps::Direction::Restore,
            health
        )
    );
    let kinds = spec.services.iter().fold([0_usize; 4], |mut n, s| {
        n[s.kind as usize] += 1;
        n
    });
    let sim = SimHandle::new(Sim::new(spec).map_err(anyhow::Error::msg)?);
    tokio::spawn(sim.clone().run_real_time());
    let store = crate::serve::open_store(&args.database).await?;
    let options = AppOptions {
        metric_source: Some(Arc::new(sim.clone())),
        traffic_backends: vec![Arc::new(sim.clone())],
        ..AppOptions::default()
    };
    let app = App::open(store, Arc::new(SystemClock), options).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is a Levee already serving there?); pick another address \
                 with --listen 127.0.0.1:PORT",
                args.listen
            )
        })?;
    let local = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(levee_server::serve(listener, app, async {
        let _ = stopped.await;
    }));
    let base = format!("http://{local}");
    let server_args = ServerArgs {
        server: base.clone(),
        token: None,
    };
    println!(
        "Levee demo: a simulated fleet of {} services ({} stateless, {} sticky, {} replicated, \
         {} stateful) in {}, {} call edges; stored in {}",
        plan.drain_after.len(),
        kinds[0],
        kinds[1],
        kinds[2],
        kinds[3],
        DEMO_DATACENTERS.join(", "),
        edges.len(),
        args.database
    );
    println!(
        "  drain order from the call graph: {} user-facing entry points first, {} shared \
         components after all their callers; longest chain {} services",
        plan.entry_points.len(),
        plan.shared.len(),
        plan.critical_path.len()
    );
    println!("  API:      {base}/api/v1/runs");
    // The web UI, when this build has one.
    let ui = reqwest::get(format!("{base}/ui/")).await;
    if ui.is_ok_and(|answer| answer.status().is_success()) {
        println!("  UI:       {base}/ui/");
    }
    println!();
    let client = server_args
        .client()
        .map_err(|error| anyhow::anyhow!("{}", error.0))?;
    let reply = client
        .send(
            Method::POST,
            &["api", "v1", "definitions"],
            &[],
            &[],
            Some(&json!({ "files": [
                { "name": DEMO_FILE, "content": DEMO_YAML },
                { "name": "generated/fleet.yaml", "content": generated },
            ] })),
        )
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    if reply.status != StatusCode::OK && reply.status != StatusCode::CREATED {
        return Err(anyhow::anyhow!("{}", client.failure(&reply).message));
    }
    let mut outcome = 0;
    let mut phases = Vec::new();
    for runbook in ["evacuate-fleet", "restore-fleet"] {
        println!("{runbook}: levee run {runbook} -p dc={} --wait", args.dc);
        let code = crate::runs::run(&RunArgs {
            runbook: runbook.to_string(),
            params: vec![("dc".to_string(), args.dc.clone())],
            name: None,
            max_parallel: None,
            no_start: false,
            wait: true,
            server: server_args.clone(),
            output: OutputArgs {
                output: Output::Table,
            },
        })
        .await
        .map_err(|error| anyhow::anyhow!("{}", error.0))?;
        outcome = outcome.max(code);
        let latest: Value = client
            .get(
                &["api", "v1", "runs"],
                &[("runbook", runbook.to_string()), ("limit", "1".to_string())],
            )
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        let Some(id) = latest["runs"][0]["id"].as_str().map(str::to_string) else {
            break;
        };
        println!();
        crate::runs::report_of(&RunIdArgs {
            id: id.clone(),
            server: server_args.clone(),
            output: OutputArgs {
                output: Output::Table,
            },
        })
        .await
        .map_err(|error| anyhow::anyhow!("{}", error.0))?;
        println!();
        let view: Value = client
            .get(&["api", "v1", "runs", &id], &[])
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        phases.extend(phase_times(runbook, &view, &plan));
        if code != 0 {
            break;
        }
    }
    if !phases.is_empty() {
        println!("Time per phase");
        for (phase, ms) in &phases {
            println!("  {phase:<42} {:>8.1}s", *ms as f64 / 1_000.0);
        }
    }
    if !args.exit {
        println!("Levee is still serving at {base}; Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(outcome)
}

/// When each phase of a run ended, from its start: the user-facing services, then everything.
fn phase_times(runbook: &str, view: &Value, plan: &deps::DrainPlan) -> Vec<(String, i64)> {
    let Some(started) = view["started_at_ms"].as_i64() else {
        return Vec::new();
    };
    let finished = |ids: &mut dyn Iterator<Item = &str>| -> Option<i64> {
        let tasks = view["tasks"].as_array()?;
        ids.map(|id| {
            tasks
                .iter()
                .filter(|t| {
                    t["id"]
                        .as_str()
                        .is_some_and(|t| t == id || t.starts_with(&format!("{id}/")))
                })
                .filter_map(|t| t["finished_at_ms"].as_i64())
                .max()
        })
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .max()
    };
    let mut phases = Vec::new();
    if let Some(at) = finished(&mut plan.entry_points.iter().map(String::as_str)) {
        phases.push((format!("{runbook}: user-facing services"), at - started));
    }
    if let Some(at) = view["finished_at_ms"].as_i64() {
        phases.push((format!("{runbook}: all services"), at - started));
    }
    phases
}
