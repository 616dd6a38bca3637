//! `levee demo`: Levee's main job on the embedded database, in one command. It starts a
//! server on a SQLite file with a simulated fleet (two datacenters, four services of the
//! four traffic kinds), stores `examples/demo/evacuate.yaml`, evacuates `east` live in the
//! terminal (paced traffic shifts gated on the simulated error ratios), prints the report
//! (critical path, speedup), and keeps serving so the run can be looked at.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use levee_server::{App, AppOptions, SystemClock};
use levee_sim::{Sim, SimHandle, SimSpec};
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
    /// The datacenter to evacuate: `east` or `west`.
    #[arg(long, default_value = "east")]
    pub dc: String,
    /// Exit when the run ends instead of serving on until Ctrl-C (exit 0 only if it
    /// succeeded).
    #[arg(long)]
    pub exit: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<u8> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!("the demo serves without authentication, so only on loopback (127.0.0.1)");
    }
    let sim = SimHandle::new(Sim::new(SimSpec::demo()).map_err(anyhow::Error::msg)?);
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
        "Levee demo: a simulated fleet (east and west; web, sessions, api, db), stored in {}",
        args.database
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
            Some(&json!({ "files": [{ "name": DEMO_FILE, "content": DEMO_YAML }] })),
        )
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    if reply.status != StatusCode::OK && reply.status != StatusCode::CREATED {
        return Err(anyhow::anyhow!("{}", client.failure(&reply).message));
    }
    println!(
        "Evacuating `{}`: levee run evacuate-dc -p dc={} --wait",
        args.dc, args.dc
    );
    let outcome = crate::runs::run(&RunArgs {
        runbook: "evacuate-dc".to_string(),
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
    let latest: Value = client
        .get(
            &["api", "v1", "runs"],
            &[
                ("runbook", "evacuate-dc".to_string()),
                ("limit", "1".to_string()),
            ],
        )
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    if let Some(id) = latest["runs"][0]["id"].as_str() {
        println!();
        crate::runs::report_of(&RunIdArgs {
            id: id.to_string(),
            server: server_args.clone(),
            output: OutputArgs {
                output: Output::Table,
            },
        })
        .await
        .map_err(|error| anyhow::anyhow!("{}", error.0))?;
        println!();
        println!(
            "Undo it with: levee run restore-dc -p dc={} --wait --server {base}",
            args.dc
        );
    }
    if !args.exit {
        println!("Levee is still serving at {base}; Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(outcome)
}
