//! Restart PostgreSQL under load: two replicas on a PRIVATE PostgreSQL cluster (initdb and
//! pg_ctl from `/usr/lib/postgresql/*/bin`, in a temp dir, on a free port; as the `postgres`
//! user when the test runs as root), a runbook in flight and machines being reported to, then
//! `pg_ctl restart -m fast`. The replicas reconnect, the run completes with every task run
//! once, and every report a replica acknowledged is in the database afterwards.
//!
//! The shared server at 127.0.0.1:5432 is never touched. Without the PostgreSQL binaries the
//! test is skipped with a notice, and fails when `CI` is set.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use levee_store::{PostgresStore, Store};
use serde_json::json;

/// Replicas sharing the private cluster.
const REPLICAS: usize = 2;
/// Tasks of the runbook in flight, each a wait of [`TASK_WAIT_MS`], one after the other.
const TASKS: usize = 40;
const TASK_WAIT_MS: u64 = 100;
/// Machines reported to during the restart, one report each.
const MACHINES: usize = 300;
/// Lease time of the replicas.
const LEASE_TTL_MS: u64 = 2_000;
/// How long after the run starts the cluster is restarted.
const RESTART_AFTER_MS: u64 = 1_000;
/// Bounds on each phase; the whole test stays well under two minutes.
const INITDB_TIMEOUT_MS: u64 = 30_000;
const CLUSTER_START_TIMEOUT_SECS: u64 = 20;
const SERVER_START_TIMEOUT_MS: u64 = 30_000;
const RUN_FINISH_TIMEOUT_MS: u64 = 60_000;
const REPORTS_TIMEOUT_MS: u64 = 60_000;
const POLL_INTERVAL_MS: u64 = 50;
/// Pause between two reports, so reports go on before, during and after the restart.
const REPORT_GAP_MS: u64 = 10;
/// A report that failed (the database was down) is sent again after this.
const REPORT_RETRY_MS: u64 = 50;
/// One HTTP request to a replica may take this long.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

const DEPLOY_YAML: &str = "\
kind: StateMachine
name: deploy
states:
  - name: installing
    on: { done: configured }
  - name: configured
    final: true
";

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// The newest `/usr/lib/postgresql/VERSION/bin` with `initdb` and `pg_ctl`.
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// A private cluster in a temp dir, stopped (immediately) when dropped.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        command(&self.bin, program, self.as_postgres)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.parent().expect("the temp dir").display()
        )
    }

    fn pg_ctl(&self, args: &[&str]) {
        let status = self
            .command("pg_ctl")
            .args([
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                self.log.to_str().unwrap(),
            ])
            .args(["-t", &CLUSTER_START_TIMEOUT_SECS.to_string(), "-w"])
            .args(["-o", &self.options()])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(
            status.success(),
            "pg_ctl {args:?} failed: {status}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    let path = bin.join(program);
    if as_postgres {
        // PostgreSQL refuses to run as root.
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

/// Starts a private cluster, or `None` (outside CI) without the PostgreSQL binaries.
fn start_cluster() -> Option<Cluster> {
    let Some(bin) = postgres_bin() else {
        let help = "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (initdb, pg_ctl); \
                    install the Debian `postgresql` package";
        if std::env::var_os("CI").is_some() {
            panic!("{help}. CI is set, so the restart test fails instead of being skipped.");
        }
        eprintln!("SKIPPING the PostgreSQL restart test: {help}");
        return None;
    };
    // SAFETY: getuid has no preconditions.
    let as_postgres = unsafe { libc::getuid() } == 0;
    let dir = tempfile::tempdir().expect("temp dir");
    if as_postgres {
        let status = Command::new("chown")
            .args(["-R", "postgres", dir.path().to_str().unwrap()])
            .status()
            .expect("chown the temp dir");
        assert!(status.success(), "chown the cluster's dir to postgres");
    }
    let data = dir.path().join("data");
    let log = dir.path().join("postgres.log");
    let mut initdb = command(&bin, "initdb", as_postgres)
        .args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
        ])
        .args(["-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run initdb");
    let deadline = Instant::now() + Duration::from_millis(INITDB_TIMEOUT_MS);
    loop {
        if let Some(status) = initdb.try_wait().expect("wait for initdb") {
            assert!(status.success(), "initdb failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = initdb.kill();
            panic!("initdb took more than {INITDB_TIMEOUT_MS} ms");
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
    let cluster = Cluster {
        bin,
        data,
        port: free_port(),
        as_postgres,
        log,
        _dir: dir,
    };
    cluster.pg_ctl(&["start"]);
    Some(cluster)
}

struct Replica {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Replica {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build()
        .expect("client")
}

async fn start_replica(dir: &Path, database: &str, log_name: &str) -> Replica {
    let port = free_port();
    let log = dir.join(log_name);
    let file = std::fs::File::create(&log).expect("create a replica log");
    let child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .current_dir(dir)
        .env_remove("LEVEE_SERVER")
        .env_remove("LEVEE_TOKEN")
        .env("LEVEE_LOG", "warn")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database", database])
        .args(["--lease-ttl-ms", &LEASE_TTL_MS.to_string()])
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone the log"))
        .stderr(file)
        .spawn()
        .expect("start levee serve");
    let replica = Replica {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    };
    let deadline = Instant::now() + Duration::from_millis(SERVER_START_TIMEOUT_MS);
    let client = client();
    loop {
        if let Ok(answer) = client.get(format!("{}/readyz", replica.url)).send().await
            && answer.status().is_success()
        {
            return replica;
        }
        assert!(
            Instant::now() < deadline,
            "levee serve did not start:\n{}",
            replica.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn post(client: &reqwest::Client, url: String, body: serde_json::Value) -> serde_json::Value {
    let answer = client.post(&url).json(&body).send().await.expect(&url);
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// Reports `done` to every machine once, through the replicas in turn, retrying what failed
/// while the database was down. Returns the machines whose report was acknowledged (200).
async fn report_all(urls: Vec<String>) -> (Vec<String>, usize) {
    let client = client();
    let mut acknowledged = Vec::new();
    let mut failures = 0;
    let deadline = Instant::now() + Duration::from_millis(REPORTS_TIMEOUT_MS);
    for i in 0..MACHINES {
        let id = format!("m{i:03}");
        let mut failed_before = false;
        loop {
            let url = format!(
                "{}/machines/{id}/state?state=installing",
                urls[i % urls.len()]
            );
            match client.put(&url).send().await.map(|a| a.status().as_u16()) {
                Ok(200) => {
                    acknowledged.push(id.clone());
                    break;
                }
                // An earlier attempt committed although its answer was lost: not counted
                // as acknowledged, and not an error.
                Ok(406 | 409) if failed_before => break,
                Ok(status) if status >= 500 => failed_before = true,
                Ok(status) => panic!("{url}: unexpected {status}"),
                Err(_) => failed_before = true,
            }
            failures += 1;
            assert!(Instant::now() < deadline, "reports did not get through");
            tokio::time::sleep(Duration::from_millis(REPORT_RETRY_MS)).await;
        }
        tokio::time::sleep(Duration::from_millis(REPORT_GAP_MS)).await;
    }
    (acknowledged, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reconnect_after_a_postgres_restart_and_lose_nothing_acknowledged() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let database = cluster.url();
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        replicas.push(start_replica(dir.path(), &database, &format!("r{i}.log")).await);
    }
    let client = client();
    let mut runbook = String::from("kind: Runbook\nname: steady\nmax_parallel: 1\ntasks:\n");
    for i in 0..TASKS {
        runbook.push_str(&format!(
            "  - id: s{i:02}\n    stage: wait\n    with: {{ duration: {TASK_WAIT_MS}ms }}\n"
        ));
        if i > 0 {
            runbook.push_str(&format!("    needs: [s{:02}]\n", i - 1));
        }
    }
    let mut deploy = DEPLOY_YAML.to_string();
    deploy.push_str(&format!(
        "instances: [{}]\n",
        (0..MACHINES)
            .map(|i| format!("m{i:03}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    post(
        &client,
        format!("{}/api/v1/definitions", replicas[0].url),
        json!({ "files": [
            { "name": "steady.yaml", "content": runbook },
            { "name": "deploy.yaml", "content": deploy },
        ] }),
    )
    .await;
    let started = post(
        &client,
        format!("{}/api/v1/runbooks/steady/runs", replicas[0].url),
        json!({}),
    )
    .await;
    let id = started["id"].as_str().expect("run id").to_string();

    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let reports = tokio::spawn(report_all(urls));
    tokio::time::sleep(Duration::from_millis(RESTART_AFTER_MS)).await;
    assert!(
        !reports.is_finished(),
        "the reports must still be going when PostgreSQL restarts"
    );
    let restarted = Instant::now();
    cluster.pg_ctl(&["-m", "fast", "restart"]);
    eprintln!(
        "PostgreSQL restarted (fast) in {} ms",
        restarted.elapsed().as_millis()
    );
    let (acknowledged, failures) = reports.await.expect("the reporter");

    let store = PostgresStore::connect(&database)
        .await
        .expect("connect after the restart");
    let deadline = Instant::now() + Duration::from_millis(RUN_FINISH_TIMEOUT_MS);
    let run = loop {
        let run = store.load_run(&id).await.unwrap().unwrap();
        if run.state.run.status.is_ended() {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish after the restart: {:?}\n{}",
            run.state.run,
            replicas[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    };
    assert_eq!(
        run.state.run.status.name(),
        "succeeded",
        "{:?}",
        run.state.run
    );
    for machine in &acknowledged {
        let record = store.machine(machine).await.unwrap().expect("the machine");
        assert_eq!(
            record.state, "configured",
            "acknowledged report to {machine} lost"
        );
    }
    for replica in &mut replicas {
        assert!(
            replica.child.try_wait().unwrap().is_none(),
            "a replica died:\n{}",
            replica.log_text()
        );
        let ready = client
            .get(format!("{}/readyz", replica.url))
            .send()
            .await
            .expect("readyz");
        assert!(
            ready.status().is_success(),
            "a replica is not ready after the restart"
        );
    }
    eprintln!(
        "after the restart: run {id} succeeded; {} of {MACHINES} reports acknowledged and \
         kept; {failures} attempts failed during the restart and were retried",
        acknowledged.len()
    );
    store.close().await;
}
