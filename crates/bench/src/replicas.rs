//! `levee-bench replicas`: Levee replicas on PostgreSQL next to `pgbench -N` on the same server
//! in the same run.
//!
//! For 1 and 3 replicas (each a `levee serve` process on a fresh database of the server):
//! - durable state transitions/s: `concurrency` clients, each with its own two-state machine
//!   (`a` ⇄ `b`), report as fast as they get answers, spread over the replicas; only 200s count,
//!   and each is a committed change (fsync'd) with its history entry;
//! - runbook tasks/s: one run of `tasks` `log` tasks (`max_parallel` 32) started on each
//!   replica at once, from start to the last run's success.
//!
//! `pgbench -N` (simple-update: three updates and an insert per transaction) runs with the same
//! number of clients on a database of its own. The ratios printed are transitions/s over
//! pgbench's TPS, and 3 replicas over 1.
//!
//! With each load it prints where the CPU went (Linux, from `/proc`): each replica's, every
//! `postgres` process's together (other users of the server included), the benchmark's own
//! (the load generator), and the whole machine's busy time out of its cores, so a reader sees
//! when replicas, PostgreSQL and the load generator share too few cores.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Clients of both the transition load and pgbench, by default.
pub const CONCURRENCY_DEFAULT: usize = 16;
/// Measured seconds of each load, by default.
pub const DURATION_S_DEFAULT: f64 = 10.0;
/// Tasks of each run in the runbook measurement, by default.
pub const TASKS_DEFAULT: usize = 1_000;
/// Parallel tasks of one run.
pub const RUN_MAX_PARALLEL: usize = 32;
/// How long a replica may take to become ready.
pub const REPLICA_START_TIMEOUT_MS: u64 = 30_000;
/// How long the runs of the runbook measurement may take.
pub const RUNS_TIMEOUT_MS: u64 = 300_000;
/// One HTTP request's bound.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How often run status is polled.
pub const POLL_INTERVAL_MS: u64 = 20;
/// `pgbench -i` scale: 100,000 accounts, enough that `-N` clients rarely meet on a row.
pub const PGBENCH_SCALE: u32 = 10;
/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`, 100 on Linux's every
/// architecture).
pub const PROC_CLOCK_TICKS_PER_S: f64 = 100.0;

pub struct Config {
    pub levee: PathBuf,
    /// A database URL on the server; the benchmark creates and drops databases next to it.
    pub database: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub tasks: usize,
    pub replica_counts: Vec<usize>,
}

/// One replica count's figures.
#[derive(Debug, serde::Serialize)]
pub struct ReplicaFigures {
    pub replicas: usize,
    pub transitions_per_s: f64,
    pub tasks_per_s: f64,
    /// Where the CPU went during the transitions; `None` without `/proc`.
    pub transitions_cpu: Option<CpuUse>,
    /// Where the CPU went during the runbook runs; `None` without `/proc`.
    pub tasks_cpu: Option<CpuUse>,
}

/// CPU used during one load, in cores (CPU seconds per second of the load).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuUse {
    /// Each replica's process, in start order.
    pub replicas_cores: Vec<f64>,
    /// Every process named `postgres` (the server's backends, including other clients').
    pub postgres_cores: f64,
    /// This benchmark process: the HTTP load generator.
    pub load_generator_cores: f64,
    /// The whole machine's busy time (everything but idle and I/O wait).
    pub machine_busy_cores: f64,
    /// Cores the machine has.
    pub machine_cores: usize,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let replicas: Vec<String> = self
            .replicas_cores
            .iter()
            .map(|cores| format!("{cores:.2}"))
            .collect();
        write!(
            f,
            "CPU in cores: replicas [{}] (sum {:.2}), postgres {:.2}, load generator {:.2}; \
             machine busy {:.2} of {}",
            replicas.join(", "),
            self.replicas_cores.iter().sum::<f64>(),
            self.postgres_cores,
            self.load_generator_cores,
            self.machine_busy_cores,
            self.machine_cores
        )
    }
}

/// CPU ticks used so far (user + system) by one process, from `/proc/PID/stat`.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (in parentheses) may hold spaces: fields are counted after it.
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based, `man 5 proc`).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks used so far by every process named `postgres`.
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            pid.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim_end() == "postgres").then(|| process_ticks(&pid))?
        })
        .sum()
}

/// The machine's busy ticks so far (all CPUs), from `/proc/stat`.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    let total: u64 = fields.iter().take(8).sum();
    Some(total - fields.get(3)? - fields.get(4)?)
}

/// CPU counters at one moment.
struct CpuSnapshot {
    at: Instant,
    replicas: Vec<Option<u64>>,
    postgres: u64,
    own: Option<u64>,
    machine: Option<u64>,
}

impl CpuSnapshot {
    fn take(replicas: &[Replica]) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            replicas: replicas
                .iter()
                .map(|r| process_ticks(&r.child.id().to_string()))
                .collect(),
            postgres: postgres_ticks(),
            own: process_ticks("self"),
            machine: machine_busy_ticks(),
        }
    }

    /// What was used from `self` to `later`; `None` without `/proc`.
    fn until(&self, later: &CpuSnapshot) -> Option<CpuUse> {
        let seconds = later.at.duration_since(self.at).as_secs_f64();
        let cores =
            |from: u64, to: u64| to.saturating_sub(from) as f64 / PROC_CLOCK_TICKS_PER_S / seconds;
        let replicas_cores = self
            .replicas
            .iter()
            .zip(&later.replicas)
            .map(|(from, to)| Some(cores((*from)?, (*to)?)))
            .collect::<Option<Vec<f64>>>()?;
        Some(CpuUse {
            replicas_cores,
            postgres_cores: cores(self.postgres, later.postgres),
            load_generator_cores: cores(self.own?, later.own?),
            machine_busy_cores: cores(self.machine?, later.machine?),
            machine_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Figures {
    pub pgbench_tps: f64,
    pub cases: Vec<ReplicaFigures>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let base = match url[authority_start..].find('/') {
        Some(slash) => &url[..authority_start + slash],
        None => url,
    };
    format!("{base}/{database}")
}

async fn recreate_database(url: &str, name: &str) -> Result<String> {
    let mut admin = PgConnection::connect(url).await.with_context(|| {
        format!(
            "cannot connect to {}",
            levee_store::postgres::redact_url(url)
        )
    })?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await?;
    Ok(with_database(url, name))
}

async fn drop_database(url: &str, name: &str) {
    if let Ok(mut admin) = PgConnection::connect(url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

/// `pgbench -N` with `clients` clients for `duration` on a database of its own; its TPS.
async fn pgbench(url: &str, clients: usize, duration: Duration) -> Result<f64> {
    let name = "levee_bench_pgbench";
    let db = recreate_database(url, name).await?;
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", &PGBENCH_SCALE.to_string(), &db])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run pgbench (install postgresql-contrib / postgresql client tools)")?;
    ensure!(init.success(), "pgbench -i failed: {init}");
    let out = Command::new("pgbench")
        .args(["-N", "-n", "-c", &clients.to_string(), "-j", "2"])
        .args(["-T", &duration.as_secs().max(1).to_string(), &db])
        .output()
        .context("cannot run pgbench")?;
    drop_database(url, name).await;
    ensure!(
        out.status.success(),
        "pgbench -N failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .with_context(|| format!("no `tps = ` line in pgbench's output:\n{text}"))
}

struct Replica {
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_replicas(levee: &Path, db: &str, count: usize, dir: &Path) -> Result<Vec<Replica>> {
    let client = client()?;
    let mut replicas = Vec::new();
    for i in 0..count {
        let port = free_port()?;
        let log = std::fs::File::create(dir.join(format!("replica-{i}.log")))?;
        let child = Command::new(levee)
            .current_dir(dir)
            .env("LEVEE_LOG", "warn")
            .env_remove("LEVEE_SERVER")
            .env_remove("LEVEE_TOKEN")
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database",
                db,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", levee.display()))?;
        replicas.push(Replica {
            child,
            url: format!("http://127.0.0.1:{port}"),
        });
    }
    let deadline = Instant::now() + Duration::from_millis(REPLICA_START_TIMEOUT_MS);
    for replica in &replicas {
        loop {
            if let Ok(answer) = client.get(format!("{}/readyz", replica.url)).send().await
                && answer.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("a replica did not become ready; see {}", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }
    Ok(replicas)
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build()?)
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value> {
    let answer = client.post(url).json(&body).send().await?;
    let status = answer.status();
    let text = answer.text().await?;
    ensure!(status.is_success(), "{url}: {status} {text}");
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

fn definitions(concurrency: usize, tasks: usize) -> serde_json::Value {
    let machines: Vec<String> = (0..concurrency).map(|i| format!("m{i:04}")).collect();
    let flip = format!(
        "kind: StateMachine\nname: flip\ninstances: [{}]\nstates:\n  - name: a\n    on: {{ done: b }}\n  - name: b\n    on: {{ done: a }}\n",
        machines.join(", ")
    );
    let mut runbook =
        format!("kind: Runbook\nname: wide\nmax_parallel: {RUN_MAX_PARALLEL}\ntasks:\n");
    for i in 0..tasks {
        runbook.push_str(&format!(
            "  - id: t{i:05}\n    stage: log\n    with: {{ message: task }}\n"
        ));
    }
    json!({ "files": [
        { "name": "flip.yaml", "content": flip },
        { "name": "wide.yaml", "content": runbook },
    ] })
}

/// Transitions/s: each client flips its own machine through the replicas in turn.
async fn transitions(urls: &[String], concurrency: usize, duration: Duration) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let mut clients = Vec::new();
    for i in 0..concurrency {
        let base = urls[i % urls.len()].clone();
        let done = Arc::clone(&done);
        let client = client()?;
        clients.push(tokio::spawn(async move {
            let mut state = "a";
            while Instant::now() < end {
                let url = format!("{base}/machines/m{i:04}/state?state={state}");
                match client.put(&url).send().await {
                    Ok(answer) if answer.status().as_u16() == 200 => {
                        done.fetch_add(1, Ordering::Relaxed);
                        state = if state == "a" { "b" } else { "a" };
                    }
                    Ok(answer) => {
                        return Err(anyhow::anyhow!("{url}: {}", answer.status()));
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            Ok(())
        }));
    }
    let started = Instant::now();
    for client in clients {
        client.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Tasks/s: one run per replica, started at once, until every one succeeded.
async fn runbook_tasks(urls: &[String], tasks: usize) -> Result<f64> {
    let client = client()?;
    let started = Instant::now();
    let mut ids = Vec::new();
    for url in urls {
        let run = post(
            &client,
            &format!("{url}/api/v1/runbooks/wide/runs"),
            json!({}),
        )
        .await?;
        ids.push(run["id"].as_str().context("no run id")?.to_string());
    }
    let deadline = started + Duration::from_millis(RUNS_TIMEOUT_MS);
    for id in &ids {
        loop {
            let run: serde_json::Value = client
                .get(format!("{}/api/v1/runs/{id}", urls[0]))
                .send()
                .await?
                .json()
                .await?;
            let status = run["status"].as_str().unwrap_or_default().to_string();
            if status == "succeeded" {
                break;
            }
            ensure!(
                !matches!(status.as_str(), "failed" | "aborted"),
                "run {id} ended {status}"
            );
            ensure!(Instant::now() < deadline, "run {id} did not finish");
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }
    Ok((tasks * ids.len()) as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(config: &Config) -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    // The replicas run in the temp dir, so a relative path must be resolved first.
    let levee = std::fs::canonicalize(&config.levee)
        .with_context(|| format!("no levee binary at {}", config.levee.display()))?;
    let before_pgbench = CpuSnapshot::take(&[]);
    let pgbench_tps = pgbench(&config.database, config.concurrency, config.duration).await?;
    let pgbench_cpu = before_pgbench.until(&CpuSnapshot::take(&[]));
    eprintln!(
        "pgbench -N, {} clients: {pgbench_tps:.0} TPS",
        config.concurrency
    );
    if let Some(cpu) = &pgbench_cpu {
        eprintln!(
            "  during pgbench (with its setup): postgres {:.2} cores; machine busy {:.2} of {}",
            cpu.postgres_cores, cpu.machine_busy_cores, cpu.machine_cores
        );
    }
    let mut cases = Vec::new();
    for &count in &config.replica_counts {
        let name = format!("levee_bench_replicas_{count}");
        let db = recreate_database(&config.database, &name).await?;
        let replicas = start_replicas(&levee, &db, count, dir.path()).await?;
        let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
        post(
            &client()?,
            &format!("{}/api/v1/definitions", urls[0]),
            definitions(config.concurrency, config.tasks),
        )
        .await?;
        let before = CpuSnapshot::take(&replicas);
        let transitions_per_s = transitions(&urls, config.concurrency, config.duration).await?;
        let between = CpuSnapshot::take(&replicas);
        let tasks_per_s = runbook_tasks(&urls, config.tasks).await?;
        let after = CpuSnapshot::take(&replicas);
        let transitions_cpu = before.until(&between);
        let tasks_cpu = between.until(&after);
        eprintln!(
            "{count} replica(s): {transitions_per_s:.0} transitions/s ({:.2}x pgbench), \
             {tasks_per_s:.0} runbook tasks/s",
            transitions_per_s / pgbench_tps
        );
        if let Some(cpu) = &transitions_cpu {
            eprintln!("  during transitions: {cpu}");
        }
        if let Some(cpu) = &tasks_cpu {
            eprintln!("  during runbook tasks: {cpu}");
        }
        drop(replicas);
        drop_database(&config.database, &name).await;
        cases.push(ReplicaFigures {
            replicas: count,
            transitions_per_s,
            tasks_per_s,
            transitions_cpu,
            tasks_cpu,
        });
    }
    if let (Some(one), Some(three)) = (
        cases.iter().find(|c| c.replicas == 1),
        cases.iter().find(|c| c.replicas == 3),
    ) {
        eprintln!(
            "3 replicas / 1: transitions {:.2}x, runbook tasks {:.2}x",
            three.transitions_per_s / one.transitions_per_s,
            three.tasks_per_s / one.tasks_per_s
        );
    }
    Ok(Figures { pgbench_tps, cases })
}
