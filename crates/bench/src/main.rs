//! `levee-bench`: the load generator, the bare baseline server and the suite that compares Levee
//! with both. See the crate documentation of `levee_bench` for what each measures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use hyper::Method;
use levee_bench::load::{self, ConnectionMode, LoadConfig};
use levee_bench::suite::{self, SuiteConfig};
use levee_bench::target::UrlTemplate;
use levee_bench::{bare, report, runs};

/// The longest duration any option accepts, in seconds, so that a typo cannot start a run that
/// never ends.
const DURATION_S_MAX: f64 = 24.0 * 3_600.0;

#[derive(Debug, Parser)]
#[command(
    name = "levee-bench",
    version,
    about = "Measures Levee's HTTP server against baselines measured in the same run."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sends load to one URL on this machine and prints the request rate and latencies.
    Load(LoadArgs),
    /// Serves the bare baseline: 200 and `green_state` to every request. Prints the bound address
    /// on the first line of stdout.
    Bare(BareArgs),
    /// Measures Levee against the bare server and StateService's figures, and prints the ratios.
    Suite(SuiteArgs),
    /// Runs runbooks of no-op tasks (wide, deep, random DAG) end to end on SQLite in this
    /// process, next to a raw SQLite commit loop and the scheduler alone; prints tasks/s.
    Runs(RunsArgs),
    /// Levee replicas (1 and 3) on PostgreSQL: durable transitions/s and runbook tasks/s, next
    /// to `pgbench -N` on the same server in the same run.
    Replicas(ReplicasArgs),
    /// Plans evacuation runbooks from generated call graphs (1,000 services by default),
    /// next to the time to merely read the graph's JSON.
    Deps(DepsArgs),
    /// The generated evacuation of a simulated fleet in virtual time: its makespan next to
    /// the critical-path lower bound of the same DAG with the same task durations, planning
    /// a large graph, and (with `--levee`) the wall time of `levee demo --exit`.
    Evacuate(EvacuateArgs),
}

#[derive(Debug, clap::Args)]
struct EvacuateArgs {
    /// Services in the rehearsed fleet.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Services in the graph whose planning is timed.
    #[arg(long, default_value_t = 1_000)]
    plan_services: usize,
    /// Times the planning is repeated (the median is printed).
    #[arg(long, default_value_t = 9)]
    repeats: usize,
    /// A `levee` binary (`target/release/levee`) whose `levee demo --exit` is timed.
    #[arg(long)]
    levee: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// The URL, on a loopback address; `{i}` in it is replaced by each connection's index, so that
    /// each client can hit its own machine (`/machines/m{i}/state?state=s`).
    #[arg(long)]
    url: String,
    /// The request method.
    #[arg(long, default_value = "GET", value_parser = ["GET", "PUT"])]
    method: String,
    /// Concurrent connections, each sending its next request as soon as it has an answer.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The measured time, in seconds.
    #[arg(long, default_value_t = suite::DURATION_S_DEFAULT)]
    duration_s: f64,
    /// Load sent before the measured time and not measured, in seconds.
    #[arg(long, default_value_t = suite::WARMUP_S_DEFAULT)]
    warmup_s: f64,
    /// Open a new connection per request and send `Connection: close`, as StateService's
    /// server forces; without it, each connection is kept alive.
    #[arg(long)]
    close: bool,
    /// Statuses that count as answers, comma-separated; a state check's 200 and 406 both do.
    #[arg(long, value_delimiter = ',', default_value = "200")]
    expect: Vec<u16>,
    /// The most requests one connection sends.
    #[arg(long, default_value_t = load::REQUESTS_PER_CONNECTION_MAX_DEFAULT)]
    requests_per_connection_max: u64,
    /// How long one request may take before it counts as an error, in seconds.
    #[arg(long, default_value_t = load::REQUEST_TIMEOUT_S_DEFAULT as f64)]
    timeout_s: f64,
    /// Threads the connections are spread over, each with its own event loop [default: one per
    /// core].
    #[arg(long)]
    client_threads: Option<usize>,
    /// The server's process id, to report its CPU time per request.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BareArgs {
    /// The loopback address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = bare::LIFETIME_S_DEFAULT as f64)]
    lifetime_s: f64,
    /// Stop when standard input closes: the suite uses it so the server never outlives it.
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

#[derive(Debug, clap::Args)]
struct SuiteArgs {
    /// Levee's binary, normally target/release/levee.
    #[arg(long)]
    levee: Option<PathBuf>,
    /// The measured time per case, in seconds [default: 5, or 1 with --quick].
    #[arg(long)]
    duration_s: Option<f64>,
    /// The warm-up before each case, in seconds [default: 1, or 0.2 with --quick].
    #[arg(long)]
    warmup_s: Option<f64>,
    /// A short smoke run for CI: 1 s per case and fewer machines for the memory figures.
    #[arg(long)]
    quick: bool,
    /// Machines to create for the memory figures [default: 100000, or 10000 with --quick].
    #[arg(long)]
    memory_machines: Option<usize>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct DepsArgs {
    /// Services in the generated call graph.
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// Times each measurement is repeated (the median is printed).
    #[arg(long, default_value_t = 9)]
    repeats: usize,
}

#[derive(Debug, clap::Args)]
struct RunsArgs {
    /// Tasks per runbook (at most 10,000, the most one runbook may hold).
    #[arg(long, default_value_t = runs::TASKS_DEFAULT)]
    tasks: usize,
    /// The cases to run, comma-separated [default: all: wide, wide-1000, deep, random-dag].
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Single-row transactions in each raw SQLite commit loop (one before the cases, one after).
    #[arg(long, default_value_t = runs::BASELINE_COMMITS_DEFAULT)]
    baseline_commits: u64,
    /// Measure the scheduler alone and the raw commit loop only.
    #[arg(long)]
    engine_only: bool,
    /// Print the figures as JSON on stdout (the tables go to stderr), or with a file name, also
    /// write them to that file.
    #[arg(long, num_args = 0..=1, default_missing_value = JSON_TO_STDOUT)]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ReplicasArgs {
    /// The levee binary (`target/release/levee`).
    #[arg(long)]
    levee: PathBuf,
    /// A PostgreSQL URL on the server to measure; databases are created and dropped next to
    /// it, so the user must be allowed to create databases.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database: String,
    /// Clients of the transition load and of pgbench.
    #[arg(long, default_value_t = levee_bench::replicas::CONCURRENCY_DEFAULT)]
    concurrency: usize,
    /// Measured seconds of each load.
    #[arg(long, default_value_t = levee_bench::replicas::DURATION_S_DEFAULT)]
    duration_s: f64,
    /// Tasks of each run of the runbook measurement.
    #[arg(long, default_value_t = levee_bench::replicas::TASKS_DEFAULT)]
    tasks: usize,
    /// Replica counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    replicas: Vec<usize>,
    /// Print the figures as JSON on stdout too.
    #[arg(long)]
    json: bool,
}

/// The `--json` value that means standard output.
const JSON_TO_STDOUT: &str = "-";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The chain of causes, without a backtrace: these errors are for the person running
            // the benchmark, not for debugging it.
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Load(args) => run_load(args).await,
        Command::Bare(args) => {
            ensure!(
                args.listen.ip().is_loopback(),
                "the bare server listens on loopback addresses only"
            );
            bare::run_process(
                args.listen,
                seconds("--lifetime-s", args.lifetime_s)?,
                args.exit_on_stdin_eof,
            )
            .await
        }
        Command::Suite(args) => run_suite(args).await,
        Command::Runs(args) => run_runs(args).await,
        Command::Replicas(args) => {
            ensure!(args.concurrency > 0, "--concurrency must be at least 1");
            ensure!(
                args.replicas.iter().all(|&n| n > 0),
                "--replicas counts must be at least 1"
            );
            let config = levee_bench::replicas::Config {
                levee: args.levee,
                database: args.database,
                concurrency: args.concurrency,
                duration: seconds("--duration-s", args.duration_s)?,
                tasks: args.tasks,
                replica_counts: args.replicas,
            };
            let figures = levee_bench::replicas::run(&config).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            }
            Ok(())
        }
        Command::Deps(args) => {
            run_deps(&args);
            Ok(())
        }
        Command::Evacuate(args) => run_evacuate(args).await,
    }
}

/// Seed of the rehearsed fleet (the demo's).
const EVACUATE_SEED: u64 = 7;
/// The goal: makespan within this factor of the critical-path lower bound.
const MAKESPAN_GOAL_RATIO: f64 = 1.05;
/// The goal for planning the large graph, in milliseconds.
const PLAN_GOAL_MS: f64 = 1_000.0;

async fn run_evacuate(args: EvacuateArgs) -> Result<()> {
    use levee_sim::rehearsal::{Pace, Scenario, critical_path_bound_ms, rehearse_blocking};
    let datacenters = ["east", "west", "central"];
    let scenario = Scenario::generated(
        args.services,
        &datacenters,
        "east",
        EVACUATE_SEED,
        &Pace::production(),
    )?;
    let dir = tempfile::tempdir()?;
    let database = dir.path().join("rehearsal.db");
    let rehearsal =
        tokio::task::spawn_blocking(move || rehearse_blocking(&scenario, database, 0, &mut |_| {}))
            .await??;
    println!(
        "Evacuation rehearsal in virtual time: {} services, production pace, seed {EVACUATE_SEED}",
        args.services
    );
    for run in &rehearsal.runs {
        let makespan = run.makespan_ms();
        let bound = critical_path_bound_ms(&run.view);
        let ratio = makespan as f64 / bound.max(1) as f64;
        println!(
            "  {:<15} {}: makespan {:.1} min, critical-path bound {:.1} min, ratio {ratio:.4} \
             (goal <= {MAKESPAN_GOAL_RATIO}: {})",
            run.runbook,
            run.view.status,
            makespan as f64 / 60_000.0,
            bound as f64 / 60_000.0,
            if ratio <= MAKESPAN_GOAL_RATIO {
                "ok"
            } else {
                "MISS"
            }
        );
    }
    let virtual_ms: u64 = rehearsal.runs.iter().map(|r| r.makespan_ms()).sum();
    println!(
        "  wall time {:.2} s for {:.1} min of virtual time ({:.0}x faster than real time)",
        rehearsal.wall_ms as f64 / 1_000.0,
        virtual_ms as f64 / 60_000.0,
        virtual_ms as f64 / rehearsal.wall_ms.max(1) as f64
    );
    let edges = levee_sim::deps::generated_graph(args.plan_services, 42);
    let plan_ms = median_ms(args.repeats, || {
        let plan = levee_sim::deps::plan_drain(&edges, &[]).expect("the generated graph plans");
        std::hint::black_box(levee_sim::deps::runbook_yaml(
            &plan,
            "evacuate",
            "shift-out",
            levee_sim::deps::Direction::Evacuate,
        ));
    });
    println!(
        "Planning a {}-service graph into an evacuation runbook: {plan_ms:.2} ms (goal < \
         {PLAN_GOAL_MS} ms: {}; {:.4} of the goal)",
        args.plan_services,
        if plan_ms < PLAN_GOAL_MS { "ok" } else { "MISS" },
        plan_ms / PLAN_GOAL_MS
    );
    if let Some(levee) = &args.levee {
        let levee = std::fs::canonicalize(levee)
            .with_context(|| format!("no levee binary at {}", levee.display()))?;
        let dir = tempfile::tempdir()?;
        let started = std::time::Instant::now();
        let output = std::process::Command::new(&levee)
            .args(["demo", "--exit", "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env("LEVEE_LOG", "warn")
            .output()?;
        let wall = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            output.status.success(),
            "levee demo --exit failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        println!(
            "levee demo --exit (evacuate and restore {} services in virtual time, from a fresh \
             directory): {wall:.2} s wall",
            100
        );
    }
    Ok(())
}

/// Median wall time of `repeats` runs of `f`, in milliseconds.
fn median_ms(repeats: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let started = std::time::Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1_000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn run_deps(args: &DepsArgs) {
    use levee_sim::deps;
    let edges = deps::generated_graph(args.services, 42);
    let json = serde_json::to_string(&edges).expect("edges serialise");
    let read_ms = median_ms(args.repeats, || {
        std::hint::black_box(deps::parse_jaeger(&json).expect("the generated graph parses"));
    });
    let mut tasks = 0;
    let plan_ms = median_ms(args.repeats, || {
        let plan = deps::plan_drain(&edges, &[]).expect("the generated graph plans");
        let yaml = deps::runbook_yaml(&plan, "evacuate", "shift-out", deps::Direction::Evacuate);
        tasks = plan.drain_after.len();
        std::hint::black_box(yaml);
    });
    println!(
        "Dependency planning: {} services, {} edges, {tasks} tasks generated",
        args.services,
        edges.len()
    );
    println!("  read the Jaeger JSON (baseline): {read_ms:.2} ms");
    println!(
        "  plan + generate the runbook:     {plan_ms:.2} ms ({:.1}x the read; goal < 1,000 ms: {})",
        plan_ms / read_ms.max(f64::MIN_POSITIVE),
        if plan_ms < 1_000.0 { "ok" } else { "MISS" }
    );
}

async fn run_load(args: LoadArgs) -> Result<()> {
    let method = match args.method.as_str() {
        "PUT" => Method::PUT,
        _ => Method::GET,
    };
    let config = LoadConfig {
        connection_mode: if args.close {
            ConnectionMode::Close
        } else {
            ConnectionMode::KeepAlive
        },
        warmup: seconds_or_zero("--warmup-s", args.warmup_s)?,
        expected_statuses: args.expect.clone(),
        requests_per_connection_max: args.requests_per_connection_max,
        request_timeout: seconds("--timeout-s", args.timeout_s)?,
        server_pid: args.server_pid,
        client_threads: args
            .client_threads
            .unwrap_or_else(load::client_threads_default),
        ..LoadConfig::new(
            UrlTemplate::parse(&args.url)?,
            method,
            args.concurrency,
            seconds("--duration-s", args.duration_s)?,
        )
    };
    let result = load::run(&config).await?;
    print!("{}", report::load_summary(&result, &args.expect));
    if let Some(path) = &args.json {
        write_json(path, &result)?;
    }
    Ok(())
}

async fn run_suite(args: SuiteArgs) -> Result<()> {
    let (duration_s_default, warmup_s_default, memory_machines_default) = if args.quick {
        (
            suite::QUICK_DURATION_S,
            suite::QUICK_WARMUP_S,
            suite::QUICK_MEMORY_MACHINES,
        )
    } else {
        (
            suite::DURATION_S_DEFAULT,
            suite::WARMUP_S_DEFAULT,
            suite::MEMORY_MACHINES_DEFAULT,
        )
    };
    let config = SuiteConfig {
        levee_binary: args.levee,
        bare_executable: std::env::current_exe()
            .context("could not find this benchmark's own executable")?,
        duration: seconds(
            "--duration-s",
            args.duration_s.unwrap_or(duration_s_default),
        )?,
        warmup: seconds_or_zero("--warmup-s", args.warmup_s.unwrap_or(warmup_s_default))?,
        memory_machines: args.memory_machines.unwrap_or(memory_machines_default),
    };
    let report = suite::run(&config).await?;
    print!("{}", report::suite_tables(&report));
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if !report.problems.is_empty() {
        bail!(
            "the suite met {} problem(s), listed above",
            report.problems.len()
        );
    }
    Ok(())
}

async fn run_runs(args: RunsArgs) -> Result<()> {
    let all = runs::default_cases();
    let cases = if args.cases.is_empty() {
        all
    } else {
        args.cases
            .iter()
            .map(|name| {
                all.iter()
                    .find(|case| case.name == *name)
                    .cloned()
                    .with_context(|| {
                        let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
                        format!("no case `{name}`; the cases are {}", names.join(", "))
                    })
            })
            .collect::<Result<Vec<_>>>()?
    };
    let config = runs::RunsConfig {
        tasks: args.tasks,
        cases,
        baseline_commits: args.baseline_commits,
        skip_end_to_end: args.engine_only,
        ..runs::RunsConfig::default()
    };
    let report = runs::run(&config).await?;
    let tables = report::runs_tables(&report);
    match &args.json {
        Some(path) if path.as_os_str() == JSON_TO_STDOUT => {
            eprint!("{tables}");
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Some(path) => {
            print!("{tables}");
            write_json(path, &report)?;
        }
        None => print!("{tables}"),
    }
    if !report.problems.is_empty() {
        bail!(
            "the benchmark met {} problem(s), listed above",
            report.problems.len()
        );
    }
    Ok(())
}

fn write_json(path: &PathBuf, value: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("could not write {}", path.display()))
}

/// A positive duration of at most [`DURATION_S_MAX`] seconds.
fn seconds(option: &str, value_s: f64) -> Result<Duration> {
    ensure!(
        value_s > 0.0 && value_s <= DURATION_S_MAX,
        "{option} must be more than 0 and at most {DURATION_S_MAX} seconds, not {value_s}"
    );
    Ok(Duration::from_secs_f64(value_s))
}

/// Like [`seconds`], but zero is allowed.
fn seconds_or_zero(option: &str, value_s: f64) -> Result<Duration> {
    if value_s == 0.0 {
        Ok(Duration::ZERO)
    } else {
        seconds(option, value_s)
    }
}
