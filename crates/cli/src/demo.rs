//! `levee demo`: Levee's main job on the embedded database, in one command. It takes a
//! generated simulated fleet (three datacenters, about 100 services of the four traffic
//! kinds, a layered call graph), generates the evacuation and restore runbooks from the call
//! graph (`levee deps plan`), stores them with the templates of
//! `examples/demo/evacuate.yaml`, evacuates `east` and restores it (each service by the stage
//! its kind of traffic needs: closed-loop traffic shifts, sticky drains, replication stopped
//! and caught up within a bandwidth budget, primaries promoted elsewhere; all gated on the
//! simulated error ratios), prints each report (critical path, speedup) and the time per
//! phase, and keeps serving so the runs can be looked at.
//!
//! By default the runs are a rehearsal in virtual time (`levee_sim::rehearsal`): the same
//! server and engine on a paused clock, at a production pace (a minute per weight step,
//! sessions that take minutes to end), so an hour of evacuation takes seconds; progress is
//! printed in virtual time. `--real-time` runs them live at a quick pace instead, through a
//! server on a socket, as `levee run --wait` would. `levee sim evacuate` is the rehearsal
//! alone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use levee_server::{App, AppOptions, SystemClock};
use levee_sim::rehearsal::{
    EVACUATE_RUNBOOK, Pace, Progress, RESTORE_RUNBOOK, Scenario, critical_path_bound_ms,
    rehearse_blocking,
};
use levee_sim::{Sim, SimHandle, SimSpec, deps};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::commands::{Output, OutputArgs, ServerArgs};
use crate::runs::{RunArgs, RunIdArgs};

use levee_sim::rehearsal::{DEMO_FILE, DEMO_YAML};

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
    /// Run live, in real time at a quick pace (seconds per step), instead of rehearsing in
    /// virtual time at a production pace.
    #[arg(long)]
    pub real_time: bool,
    /// A storm test: after the evacuation, also stop every stateful service's replication
    /// into the datacenter and hold it cut off for `--storm-hold` while every service's
    /// errors must stay low (in virtual time only).
    #[arg(long, conflicts_with = "real_time")]
    pub storm: bool,
    /// How long a storm test holds the datacenter cut off.
    #[arg(
        long,
        default_value = "30m",
        value_name = "DURATION",
        requires = "storm",
        value_parser = storm_hold
    )]
    pub storm_hold: String,
}

/// `--storm-hold`: a duration longer than zero, kept as written for the runbook parameter.
fn storm_hold(text: &str) -> Result<String, String> {
    match levee_model::parse_duration_ms(text)? {
        0 => Err("the hold must be longer than 0".to_string()),
        _ => Ok(text.to_string()),
    }
}

/// `levee sim ...`: the simulated fleet.
#[derive(clap::Subcommand, Debug)]
pub enum SimCommand {
    /// Rehearses the generated evacuation and restore of a datacenter in virtual time (the
    /// server and engine on a paused clock) and prints the reports; exits 0 only if both
    /// runs succeeded.
    Evacuate(EvacuateArgs),
}

#[derive(clap::Args, Debug)]
pub struct EvacuateArgs {
    /// The store: a SQLite file, created if missing.
    #[arg(long, default_value = "sqlite://levee-sim.db")]
    pub database: String,
    /// The datacenter to evacuate (and then restore): `east`, `west` or `central`.
    #[arg(long, default_value = "east")]
    pub dc: String,
    /// Services in the generated fleet.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(4..=2_000))]
    pub services: u64,
    /// Seed of the generated fleet and call graph.
    #[arg(long, default_value_t = DEMO_SEED)]
    pub seed: u64,
    /// Watched time after each weight step, in virtual time.
    #[arg(long, default_value = "1m")]
    pub wait: String,
}

pub async fn sim(command: SimCommand) -> anyhow::Result<u8> {
    match command {
        SimCommand::Evacuate(args) => {
            sqlite_path(&args.database)?;
            let pace = Pace {
                wait: args.wait.clone(),
                ..Pace::production()
            };
            let scenario = Scenario::generated(
                args.services as usize,
                &DEMO_DATACENTERS,
                &args.dc,
                args.seed,
                &pace,
            )?;
            print_fleet(&scenario, &args.database);
            let (code, _) = rehearse_and_print(scenario, &args.database).await?;
            Ok(code)
        }
    }
}

/// A SQLite URL's file.
fn sqlite_path(url: &str) -> anyhow::Result<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "a rehearsal runs on the embedded database: give --database sqlite://PATH, \
                 not `{url}` (or use --real-time)"
            )
        })?;
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() {
        anyhow::bail!("the database URL `{url}` names no file: use sqlite://PATH");
    }
    Ok(PathBuf::from(path))
}

fn print_fleet(scenario: &Scenario, database: &str) {
    let kinds = scenario.kinds();
    println!(
        "Levee demo: a simulated fleet of {} services ({} stateless, {} sticky, {} replicated, \
         {} stateful) in {}, {} call edges; stored in {}",
        scenario.plan.drain_after.len(),
        kinds[0],
        kinds[1],
        kinds[2],
        kinds[3],
        DEMO_DATACENTERS.join(", "),
        scenario.edges.len(),
        database
    );
    println!(
        "  drain order from the call graph: {} user-facing entry points first, {} shared \
         components after all their callers; longest chain {} services",
        scenario.plan.entry_points.len(),
        scenario.plan.shared.len(),
        scenario.plan.critical_path.len()
    );
}

/// Rehearses `scenario` in virtual time on the SQLite file of `database`, printing progress,
/// each run's summary and report, and the time per phase. The exit code is 0 only if both
/// runs succeeded.
async fn rehearse_and_print(scenario: Scenario, database: &str) -> anyhow::Result<(u8, Scenario)> {
    let path = sqlite_path(database)?;
    let dc = scenario.params.get("dc").cloned().unwrap_or_default();
    let wait = scenario.params.get("wait").cloned().unwrap_or_default();
    println!(
        "Rehearsing in virtual time (a paused clock; {wait} per weight step); progress in \
         virtual time:"
    );
    for runbook in [EVACUATE_RUNBOOK, RESTORE_RUNBOOK] {
        let extra: String = if runbook == EVACUATE_RUNBOOK {
            scenario
                .evacuate_params
                .iter()
                .map(|(param, value)| format!(" -p {param}={value}"))
                .collect()
        } else {
            String::new()
        };
        println!("  {runbook}: levee run {runbook} -p dc={dc}{extra} --wait (in virtual time)");
    }
    let start_ms = jiff::Timestamp::now().as_millisecond();
    let (scenario, rehearsal) = tokio::task::spawn_blocking(move || {
        let mut progress = |p: &Progress| {
            println!(
                "  [{:>9}] {:<15} {} of {} done, {} running{}",
                crate::runs::human_s(p.virtual_ms),
                p.runbook,
                p.done,
                p.total,
                p.running,
                if p.stalled > 0 {
                    format!(", {} stalled or failed", p.stalled)
                } else {
                    String::new()
                }
            );
        };
        let rehearsal = rehearse_blocking(&scenario, path, start_ms, &mut progress);
        (scenario, rehearsal)
    })
    .await?;
    let rehearsal = rehearsal?;
    println!();
    let mut outcome = 0;
    let mut phases = Vec::new();
    for run in &rehearsal.runs {
        print!("{}", crate::runs::final_summary(&run.view, run.read_at_ms));
        let report: crate::runs::ReportView = serde_json::from_value(run.report.clone())?;
        let durations: HashMap<String, u64> = run
            .view
            .tasks
            .iter()
            .filter_map(|t| {
                let ms = t.finished_at_ms? - t.started_at_ms?;
                Some((t.id.clone(), u64::try_from(ms).ok()?))
            })
            .collect();
        println!();
        print!("{}", crate::runs::report_text(&report, &durations));
        let bound = critical_path_bound_ms(&run.view);
        println!(
            "Critical-path lower bound: {} (makespan / bound: {:.3})",
            crate::runs::human_s(bound),
            report.makespan_ms as f64 / bound.max(1) as f64
        );
        println!();
        phases.extend(scenario.phase_times(&run.runbook, &run.view));
        if !run.succeeded() {
            outcome = 1;
        }
    }
    if rehearsal.runs.len() < 2 {
        outcome = 1;
    }
    print_phases(&phases);
    println!(
        "Rehearsed {} of virtual time in {:.1}s of wall time.",
        crate::runs::human_s(rehearsal.runs.iter().map(|r| r.makespan_ms()).sum::<u64>()),
        rehearsal.wall_ms as f64 / 1_000.0
    );
    Ok((outcome, scenario))
}

fn print_phases(phases: &[(String, i64)]) {
    if !phases.is_empty() {
        println!("Time per phase");
        let width = phases
            .iter()
            .map(|(phase, _)| phase.len())
            .max()
            .unwrap_or(0);
        for (phase, ms) in phases {
            println!(
                "  {phase:<width$} {:>10}",
                crate::runs::human_s(u64::try_from(*ms).unwrap_or(0))
            );
        }
    }
}

/// Datacenters of the generated fleet.
const DEMO_DATACENTERS: [&str; 3] = ["east", "west", "central"];
/// Seed of the generated fleet and call graph: the same demo every time.
const DEMO_SEED: u64 = 7;

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
    if !args.real_time {
        return run_virtual(args).await;
    }
    let (spec, edges) = SimSpec::generated(args.services as usize, &DEMO_DATACENTERS, DEMO_SEED);
    let plan = deps::plan_drain(&edges, &[]).map_err(anyhow::Error::msg)?;
    // The same runbooks as the rehearsal: each service's kind of traffic picks its stage.
    let generated = levee_sim::rehearsal::generated_runbooks(&spec, &plan, None);
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

/// The demo in virtual time: the rehearsal and (without `--exit`) a real-time server on the
/// same file, started first, so the runs can be watched in the UI and API while they run and
/// looked at afterwards.
async fn run_virtual(args: DemoArgs) -> anyhow::Result<u8> {
    let mut scenario = Scenario::generated(
        args.services as usize,
        &DEMO_DATACENTERS,
        &args.dc,
        DEMO_SEED,
        &Pace::production(),
    )?;
    if args.storm {
        scenario.storm(&args.storm_hold);
    }
    print_fleet(&scenario, &args.database);
    // Bind first: a taken address is better found before the rehearsal than after it.
    let listener = if args.exit {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} (is a Levee already serving there?); pick another \
                         address with --listen 127.0.0.1:PORT",
                        args.listen
                    )
                })?,
        )
    };
    // Without --exit a real-time server on the same file shows the rehearsal while it runs
    // (the UI follows another process's writes to the store) and serves on afterwards.
    let server = match listener {
        None => None,
        Some(listener) => {
            let store = crate::serve::open_store(&args.database).await?;
            let sim = SimHandle::on_tokio_clock(
                Sim::new(scenario.spec.clone()).map_err(anyhow::Error::msg)?,
            );
            let options = AppOptions {
                metric_source: Some(Arc::new(sim.clone())),
                traffic_backends: vec![Arc::new(sim)],
                ..AppOptions::default()
            };
            let app = App::open(store, Arc::new(SystemClock), options).await?;
            let base = format!("http://{}", listener.local_addr()?);
            println!();
            println!("Levee is serving at {base}; watch the rehearsal there as it runs:");
            println!("  UI:       {base}/ui/");
            println!("  API:      {base}/api/v1/runs");
            Some((
                base,
                tokio::spawn(levee_server::serve(listener, app, async {
                    let _ = tokio::signal::ctrl_c().await;
                })),
            ))
        }
    };
    println!();
    let (outcome, _) = rehearse_and_print(scenario, &args.database).await?;
    let Some((base, server)) = server else {
        return Ok(outcome);
    };
    println!();
    println!("Levee is serving the rehearsed runs at {base}; Ctrl-C to stop.");
    println!("  UI:       {base}/ui/");
    println!("  API:      {base}/api/v1/runs");
    server.await??;
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
