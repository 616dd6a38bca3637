//! Chaos on real PostgreSQL: three `levee serve` replicas share one database; one of them is
//! killed with SIGKILL at random moments, again and again, and restarted each time, while a
//! 500-task run goes on. Then a replica is frozen with SIGSTOP past its lease, another takes
//! its run over, and it is thawed: its writes must be refused and it must give up.
//!
//! Everything is asserted from the store's own record (the journal and the lease columns),
//! never from timing. The server is the one at `LEVEE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, a user that may create databases); when it
//! cannot be reached the tests fail if `CI` is set and are skipped with a notice otherwise.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use levee_store::{JournalRecord, PostgresStore, Store};
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

const URL_ENV: &str = "LEVEE_TEST_POSTGRES_URL";
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long connecting to the server may take before it counts as unreachable.
const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Prefix of the databases these tests create; the rest is `<pid>_<nanos>`.
const TEST_DATABASE_PREFIX: &str = "levee_chaos_";

/// Replicas in the kill test.
const REPLICAS: usize = 3;
/// Tasks in the kill test's runbook.
const CHAOS_TASKS: usize = 500;
/// Tasks run at once: few, so the run outlasts the kills.
const CHAOS_MAX_PARALLEL: usize = 4;
/// Replicas killed with SIGKILL (and restarted) during the run, at least.
const CHAOS_KILLS: usize = 20;
/// Random pause between kills: from this ...
const KILL_GAP_MIN_MS: u64 = 150;
/// ... to this much more.
const KILL_GAP_SPREAD_MS: u64 = 600;
/// The lease time the replicas run with: short, so takeovers are quick.
const CHAOS_LEASE_TTL_MS: u64 = 1_500;
/// How long a replica may take to answer `/readyz`.
const SERVER_START_TIMEOUT_MS: u64 = 30_000;
/// Longest the run may take after the last kill: generous for a loaded 2-core machine.
const RUN_FINISH_TIMEOUT_MS: u64 = 240_000;
/// Longest a takeover (SIGSTOP test) may take to happen.
const TAKEOVER_TIMEOUT_MS: u64 = 60_000;
/// Pause between polls.
const POLL_INTERVAL_MS: u64 = 50;
/// Tasks of the SIGSTOP test's chain, and how long each waits.
const FREEZE_TASKS: usize = 12;
const FREEZE_TASK_WAIT_MS: u64 = 400;

fn server_url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_string())
}

fn database_url(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{base}/{database}{query}")
}

/// A database created for one test, dropped when this is dropped.
struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// A new, empty database, or `None` (outside CI) if there is no server.
    async fn create() -> Option<TestDatabase> {
        let url = server_url();
        let connected = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            PgConnection::connect(&url),
        )
        .await;
        let mut admin = match connected {
            Ok(Ok(conn)) => conn,
            other => {
                let error = match other {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {CONNECT_TIMEOUT_MS} ms"),
                };
                let help = format!(
                    "PostgreSQL is not reachable at {url} ({error}). Start it (`bash .ci/run` \
                     installs and starts it), or point {URL_ENV} at a server where this user \
                     may create databases."
                );
                if std::env::var_os("CI").is_some() {
                    panic!("{help} CI is set, so the chaos tests fail instead of being skipped.");
                }
                let _ = writeln!(std::io::stderr(), "SKIPPING the chaos tests: {help}");
                return None;
            }
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{TEST_DATABASE_PREFIX}{}_{nanos}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("create the test database {name}: {e}"));
        Some(TestDatabase {
            url: database_url(&url, &name),
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server_url()).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(&sql).execute(&mut admin).await.ok()
            })
        })
        .join();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

struct Replica {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Replica {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether a replica id (`hostname-pid-random`) is this process's.
    fn is(&self, replica_id: &str) -> bool {
        replica_id.contains(&format!("-{}-", self.pid()))
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid");
        // SAFETY: sending a signal to a child process this test started and has not reaped.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "signal {signal} to {pid}");
    }

    fn kill_nine(&mut self) {
        self.child.kill().expect("kill -9 a replica");
        self.child.wait().expect("reap a replica");
    }

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
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn start_replica(dir: &Path, database: &str, log_name: &str) -> Replica {
    start_replica_with(dir, database, log_name, CHAOS_LEASE_TTL_MS, false).await
}

async fn start_replica_with(
    dir: &Path,
    database: &str,
    log_name: &str,
    lease_ttl_ms: u64,
    poll_only: bool,
) -> Replica {
    let port = free_port();
    let log = dir.join(log_name);
    let file = std::fs::File::create(&log).expect("create a replica log");
    let child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .current_dir(dir)
        .env_remove("LEVEE_SERVER")
        .env_remove("LEVEE_TOKEN")
        .env("LEVEE_LOG", "warn")
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            database,
            "--lease-ttl-ms",
            &lease_ttl_ms.to_string(),
        ])
        .args(poll_only.then_some("--poll-only"))
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

/// A small deterministic generator, seeded per run and printed, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// `CHAOS_TASKS` idempotent tasks (waits of 30 to 90 ms and log lines), each needing up to
/// three earlier tasks.
fn chaos_runbook() -> String {
    let mut yaml =
        format!("kind: Runbook\nname: chaos\nmax_parallel: {CHAOS_MAX_PARALLEL}\ntasks:\n");
    let mut lcg = Lcg(0x5eed);
    for i in 0..CHAOS_TASKS {
        yaml.push_str(&format!("  - id: t{i:03}\n"));
        if i % 5 == 0 {
            yaml.push_str("    stage: log\n    with: { message: checkpoint }\n");
        } else {
            yaml.push_str(&format!(
                "    stage: wait\n    with: {{ duration: {}ms }}\n",
                30 + lcg.next() % 61
            ));
        }
        if i > 0 {
            let mut needs: Vec<usize> = (0..(lcg.next() % 4))
                .map(|_| (lcg.next() as usize) % i)
                .collect();
            needs.sort_unstable();
            needs.dedup();
            if !needs.is_empty() {
                let names: Vec<String> = needs.iter().map(|n| format!("t{n:03}")).collect();
                yaml.push_str(&format!("    needs: [{}]\n", names.join(", ")));
            }
        }
    }
    yaml
}

async fn apply_and_start(
    client: &reqwest::Client,
    replica: &Replica,
    yaml: &str,
    name: &str,
) -> String {
    let applied = client
        .post(format!("{}/api/v1/definitions", replica.url))
        .json(&json!({ "files": [{ "name": format!("{name}.yaml"), "content": yaml }] }))
        .send()
        .await
        .expect("apply");
    assert!(
        applied.status().is_success(),
        "{}",
        applied.text().await.unwrap()
    );
    let started = client
        .post(format!("{}/api/v1/runbooks/{name}/runs", replica.url))
        .json(&json!({}))
        .send()
        .await
        .expect("start");
    assert!(
        started.status().is_success(),
        "{}",
        started.text().await.unwrap()
    );
    let started: Value = started.json().await.expect("run JSON");
    started["id"].as_str().expect("run id").to_string()
}

async fn whole_journal(store: &PostgresStore, id: &str) -> Vec<JournalRecord> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = store.run_journal(id, after, 10_000).await.expect("journal");
        let Some(last) = page.last() else { break };
        after = last.seq;
        entries.extend(page);
    }
    entries
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn kind_of(entry: &JournalRecord) -> String {
    serde_json::to_value(&entry.entry).unwrap()["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Checks the store's record of a finished run: every task succeeded exactly once and none
/// started before its dependencies succeeded. Returns how many tasks started more than once.
async fn check_record(store: &PostgresStore, id: &str, tasks: usize) -> usize {
    let stored = store.load_run(id).await.expect("load").expect("the run");
    assert_eq!(
        stored.state.run.status.name(),
        "succeeded",
        "{:?}",
        stored.state.run
    );
    let entries = whole_journal(store, id).await;
    let deps: HashMap<String, Vec<String>> = serde_json::from_value::<Value>(stored.spec.clone())
        .expect("spec")["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            let plan = &t["plan"];
            let mut deps: Vec<String> = Vec::new();
            for key in ["needs", "after"] {
                deps.extend(
                    plan[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|d| d.as_str().unwrap().to_string()),
                );
            }
            (plan["id"].as_str().unwrap().to_string(), deps)
        })
        .collect();
    let mut succeeded: HashMap<String, (usize, i64)> = HashMap::new();
    let mut first_start: HashMap<String, i64> = HashMap::new();
    let mut starts: HashMap<String, usize> = HashMap::new();
    for entry in &entries {
        let task = entry.entry.task.clone().unwrap_or_default();
        match kind_of(entry).as_str() {
            "task_succeeded" => succeeded.entry(task).or_insert((0, entry.seq)).0 += 1,
            "task_started" => {
                first_start.entry(task.clone()).or_insert(entry.seq);
                *starts.entry(task).or_default() += 1;
            }
            _ => {}
        }
    }
    assert_eq!(
        succeeded.len(),
        tasks,
        "every task succeeded (tasks lost: {})",
        tasks - succeeded.len()
    );
    let repeated: Vec<_> = succeeded.iter().filter(|(_, (n, _))| *n != 1).collect();
    assert!(
        repeated.is_empty(),
        "tasks that succeeded more than once: {repeated:?}"
    );
    let mut early = Vec::new();
    for (task, parents) in &deps {
        let started = first_start[task];
        for parent in parents {
            if succeeded[parent].1 > started {
                early.push((task.clone(), parent.clone()));
            }
        }
    }
    assert!(
        early.is_empty(),
        "tasks started before a dependency succeeded: {early:?}"
    );
    starts.values().filter(|n| **n > 1).count()
}

/// Fenced commits, and leases a renewal found lost, that a replica's log reports.
fn refusals(log: &str) -> (usize, usize) {
    (
        log.matches("commit fenced").count(),
        log.matches("lease lost to another replica").count(),
    )
}

fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_survive_twenty_kill_nines_during_a_500_task_run() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let client = client();
    let store = PostgresStore::connect(&database.url)
        .await
        .expect("connect the test's store");
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        replicas
            .push(start_replica(dir.path(), &database.url, &format!("replica-{i}-0.log")).await);
    }
    let id = apply_and_start(&client, &replicas[0], &chaos_runbook(), "chaos").await;

    let seed = now_ms() as u64;
    println!("chaos seed {seed}");
    let mut lcg = Lcg(seed);
    let mut logs: Vec<std::path::PathBuf> = Vec::new();
    // (kill time, last journal seq after the kill) of every kill of the run's owner.
    let mut owner_kills: Vec<(i64, i64)> = Vec::new();
    let mut kills = 0;
    let mut kills_while_running = 0;
    while kills < CHAOS_KILLS {
        tokio::time::sleep(Duration::from_millis(
            KILL_GAP_MIN_MS + lcg.next() % KILL_GAP_SPREAD_MS,
        ))
        .await;
        let victim = (lcg.next() as usize) % REPLICAS;
        let owner = store
            .run_owner(&id)
            .await
            .expect("run owner")
            .expect("the run");
        let status = store
            .load_run(&id)
            .await
            .expect("load")
            .expect("run")
            .state
            .run
            .status;
        let owned = owner
            .owner
            .as_deref()
            .is_some_and(|o| replicas[victim].is(o));
        replicas[victim].kill_nine();
        let killed_at = now_ms();
        kills += 1;
        if !status.is_ended() {
            kills_while_running += 1;
            if owned {
                // Everything the dead owner committed is in; what comes next is the taker's.
                let after = whole_journal(&store, &id).await.last().map_or(0, |e| e.seq);
                owner_kills.push((killed_at, after));
            }
        }
        logs.push(replicas[victim].log.clone());
        let restarted = start_replica(
            dir.path(),
            &database.url,
            &format!("replica-{victim}-{kills}.log"),
        )
        .await;
        replicas[victim] = restarted;
    }

    let deadline = Instant::now() + Duration::from_millis(RUN_FINISH_TIMEOUT_MS);
    loop {
        let run = store.load_run(&id).await.expect("load").expect("run");
        if run.state.run.status.is_ended() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {:?}",
            run.state.run
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    let repeated_starts = check_record(&store, &id, CHAOS_TASKS).await;

    let entries = whole_journal(&store, &id).await;
    let mut latencies: Vec<i64> = owner_kills
        .iter()
        .filter_map(|(killed_at, after)| {
            entries
                .iter()
                .find(|e| e.seq > *after)
                .map(|e| e.entry.at_ms - killed_at)
        })
        .collect();
    latencies.sort_unstable();
    logs.extend(replicas.iter().map(|r| r.log.clone()));
    let (mut fenced, mut lost) = (0, 0);
    for log in &logs {
        let (f, l) = refusals(&std::fs::read_to_string(log).unwrap_or_default());
        fenced += f;
        lost += l;
    }
    println!(
        "chaos: {kills} kill -9s ({kills_while_running} while the run ran, {} of its owner); \
         takeover latency (kill to the run's next journal entry) p50 {} ms, max {} ms, lease \
         TTL {CHAOS_LEASE_TTL_MS} ms; stale-epoch commits refused {fenced}, leases found lost \
         {lost}; tasks started more than once (idempotent waits and logs only) {repeated_starts}",
        owner_kills.len(),
        percentile(&latencies, 50),
        latencies.last().copied().unwrap_or(0),
    );
    assert!(
        kills_while_running >= CHAOS_KILLS / 2,
        "most kills hit the running run: {kills_while_running}"
    );
    drop(replicas);
    store.close().await;
    drop(database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_past_its_lease_is_fenced_and_gives_up() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let client = client();
    let store = PostgresStore::connect(&database.url)
        .await
        .expect("connect the test's store");
    let a = start_replica(dir.path(), &database.url, "a.log").await;
    let mut yaml = String::from("kind: Runbook\nname: chain\nmax_parallel: 1\ntasks:\n");
    for i in 0..FREEZE_TASKS {
        yaml.push_str(&format!(
            "  - id: c{i:02}\n    stage: wait\n    with: {{ duration: {FREEZE_TASK_WAIT_MS}ms }}\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("    needs: [c{:02}]\n", i - 1));
        }
    }
    // Started on A, before B exists: A holds the run.
    let id = apply_and_start(&client, &a, &yaml, "chain").await;
    let b = start_replica(dir.path(), &database.url, "b.log").await;
    let before = store.run_owner(&id).await.unwrap().unwrap();
    assert!(
        before.owner.as_deref().is_some_and(|o| a.is(o)),
        "A holds the run: {before:?}"
    );

    a.signal(libc::SIGSTOP);
    // B takes the run over once A's lease expires, and moves it on.
    let deadline = Instant::now() + Duration::from_millis(TAKEOVER_TIMEOUT_MS);
    let taken = loop {
        let owner = store.run_owner(&id).await.unwrap().unwrap();
        if owner.owner.as_deref().is_some_and(|o| b.is(o)) {
            break owner;
        }
        assert!(
            Instant::now() < deadline,
            "B did not take the run over: {owner:?}"
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    };
    assert!(taken.epoch > before.epoch);
    let seq_at_takeover = whole_journal(&store, &id).await.last().map_or(0, |e| e.seq);
    let deadline = Instant::now() + Duration::from_millis(TAKEOVER_TIMEOUT_MS);
    while whole_journal(&store, &id).await.last().map_or(0, |e| e.seq) == seq_at_takeover {
        assert!(Instant::now() < deadline, "B did not move the run on");
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }

    a.signal(libc::SIGCONT);
    // A notices: a commit of its old epoch is refused, or its renewal finds the lease lost.
    let deadline = Instant::now() + Duration::from_millis(TAKEOVER_TIMEOUT_MS);
    loop {
        let log = a.log_text();
        if log.contains("commit fenced") || log.contains("lease lost") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never noticed it lost the run:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    // A lives on, holds nothing, and B finishes the run with every task done exactly once:
    // nothing A tried to write after the takeover was accepted.
    let replicas: Value = client
        .get(format!("{}/api/v1/replicas", a.url))
        .send()
        .await
        .expect("A answers")
        .json()
        .await
        .expect("replicas JSON");
    let mine = replicas["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .find(|r| r["this"] == true)
        .expect("A lists itself");
    assert_eq!(mine["leases"], json!([]), "A gave the run up: {replicas}");
    let deadline = Instant::now() + Duration::from_millis(RUN_FINISH_TIMEOUT_MS);
    loop {
        let run = store.load_run(&id).await.unwrap().unwrap();
        if run.state.run.status.is_ended() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {:?}",
            run.state.run
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    check_record(&store, &id, FREEZE_TASKS).await;
    let owner = store.run_owner(&id).await.unwrap().unwrap();
    assert!(
        !owner.owner.as_deref().is_some_and(|o| a.is(o)),
        "A never got the run back: {owner:?}"
    );
    let (fenced, lost) = refusals(&a.log_text());
    println!("frozen replica: stale-epoch commits refused {fenced}, leases found lost {lost}");
    drop(a);
    drop(b);
    store.close().await;
    drop(database);
}

/// The SIGTERM test waits this long for the replica to exit.
const SHUTDOWN_TIMEOUT_MS: u64 = 60_000;

async fn control(
    client: &reqwest::Client,
    replica: &Replica,
    id: &str,
    control: &str,
) -> (u16, String) {
    let answer = client
        .post(format!("{}/api/v1/runs/{id}/controls", replica.url))
        .json(&json!({ "control": control, "reason": "chaos test" }))
        .send()
        .await
        .expect("send a control");
    (
        answer.status().as_u16(),
        answer.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_reach_the_owner_and_sigterm_hands_its_runs_over() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let client = client();
    let store = PostgresStore::connect(&database.url)
        .await
        .expect("connect the test's store");
    let mut a = start_replica(dir.path(), &database.url, "a.log").await;
    let mut yaml = String::from("kind: Runbook\nname: handover\nmax_parallel: 1\ntasks:\n");
    for i in 0..FREEZE_TASKS {
        yaml.push_str(&format!(
            "  - id: h{i:02}\n    stage: wait\n    with: {{ duration: {FREEZE_TASK_WAIT_MS}ms }}\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("    needs: [h{:02}]\n", i - 1));
        }
    }
    let id = apply_and_start(&client, &a, &yaml, "handover").await;
    let b = start_replica(dir.path(), &database.url, "b.log").await;
    let owner = store.run_owner(&id).await.unwrap().unwrap();
    assert!(
        owner.owner.as_deref().is_some_and(|o| a.is(o)),
        "A holds the run: {owner:?}"
    );

    // A control sent to B is decided by A, the owner.
    let (status, body) = control(&client, &b, &id, "pause").await;
    assert_eq!(status, 200, "{body}");
    let run = store.load_run(&id).await.unwrap().unwrap();
    assert_eq!(run.state.run.status.name(), "paused");
    let owner = store.run_owner(&id).await.unwrap().unwrap();
    assert!(
        owner.owner.as_deref().is_some_and(|o| a.is(o)),
        "still A's: {owner:?}"
    );
    let (status, body) = control(&client, &b, &id, "resume").await;
    assert_eq!(status, 200, "{body}");

    // SIGTERM: A finishes, releases the run, and exits 0; B takes the run over and ends it.
    a.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_TIMEOUT_MS);
    let exit = loop {
        if let Some(exit) = a.child.try_wait().expect("wait for A") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "A did not exit:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    };
    assert!(
        exit.success(),
        "A exits 0 on SIGTERM: {exit:?}\n{}",
        a.log_text()
    );
    let deadline = Instant::now() + Duration::from_millis(RUN_FINISH_TIMEOUT_MS);
    loop {
        let run = store.load_run(&id).await.unwrap().unwrap();
        if run.state.run.status.is_ended() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {:?}",
            run.state.run
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    check_record(&store, &id, FREEZE_TASKS).await;
    let owner = store.run_owner(&id).await.unwrap().unwrap();
    assert!(
        owner.owner.as_deref().is_some_and(|o| b.is(o)),
        "B took the run over: {owner:?}"
    );
    drop(b);
    store.close().await;
    drop(database);
}

/// Lease time of the wake-up measurement: long, so a takeover found by polling (every third
/// of it) and one woken by a notice are far apart.
const WAKE_LEASE_TTL_MS: u64 = 6_000;
/// Tasks of the wake-up measurement's runs, each a wait of [`WAKE_TASK_WAIT_MS`].
const WAKE_TASKS: usize = 400;
const WAKE_TASK_WAIT_MS: u64 = 20;
/// How often the measurement samples the run's owner.
const WAKE_SAMPLE_MS: u64 = 2;
/// How long the measurement waits after pausing before it reads when the last task started.
const PAUSE_SETTLE_MS: u64 = 2_500;
/// A takeover after a graceful release woken by a notice must take less than this.
const NOTICE_TAKEOVER_BOUND_MS: i64 = 1_000;
/// The global pause reaches another replica by notice within this.
const NOTICE_PAUSE_BOUND_MS: i64 = 500;

fn wake_runbook() -> String {
    let mut yaml = String::from("kind: Runbook\nname: wake\nmax_parallel: 1\ntasks:\n");
    for i in 0..WAKE_TASKS {
        yaml.push_str(&format!(
            "  - id: w{i:03}\n    stage: wait\n    with: {{ duration: {WAKE_TASK_WAIT_MS}ms }}\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("    needs: [w{:03}]\n", i - 1));
        }
    }
    yaml
}

/// (takeover after a graceful release, global pause propagation), in ms, with notices or
/// polling only.
async fn measure_wake_ups(poll_only: bool) -> (i64, i64) {
    let database = TestDatabase::create().await.expect("the server is there");
    let dir = tempfile::tempdir().expect("temp dir");
    let client = client();
    let store = PostgresStore::connect(&database.url)
        .await
        .expect("connect the test's store");
    let start = |name: &'static str| {
        start_replica_with(
            dir.path(),
            &database.url,
            name,
            WAKE_LEASE_TTL_MS,
            poll_only,
        )
    };
    let mut a = start("a.log").await;
    let id = apply_and_start(&client, &a, &wake_runbook(), "wake").await;
    let b = start("b.log").await;
    // A graceful release: from the moment the run has no owner to B's claim.
    a.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_millis(TAKEOVER_TIMEOUT_MS);
    let mut released_at = None;
    let takeover_ms = loop {
        let owner = store.run_owner(&id).await.unwrap().unwrap().owner;
        match owner.as_deref() {
            Some(o) if b.is(o) => {
                let released = released_at.unwrap_or_else(Instant::now);
                break i64::try_from(released.elapsed().as_millis()).unwrap();
            }
            None if released_at.is_none() => released_at = Some(Instant::now()),
            _ => {}
        }
        assert!(Instant::now() < deadline, "B never took the run over");
        tokio::time::sleep(Duration::from_millis(WAKE_SAMPLE_MS)).await;
    };
    let _ = a.child.wait();
    // The global pause, set through A's successor C while B runs the run: the last task B
    // starts after the pause committed shows when B learnt of it.
    let c = start("c.log").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paused_at = now_ms();
    let answer = client
        .put(format!("{}/api/v1/pause", c.url))
        .json(&json!({ "paused": true, "reason": "wake-up measurement" }))
        .send()
        .await
        .expect("pause");
    assert!(
        answer.status().is_success(),
        "{}",
        answer.text().await.unwrap()
    );
    tokio::time::sleep(Duration::from_millis(PAUSE_SETTLE_MS)).await;
    let last_start = whole_journal(&store, &id)
        .await
        .iter()
        .filter(|e| kind_of(e) == "task_started")
        .map(|e| e.entry.at_ms)
        .max()
        .expect("tasks started");
    let pause_ms = (last_start - paused_at).max(0);
    assert!(
        !store
            .load_run(&id)
            .await
            .unwrap()
            .unwrap()
            .state
            .run
            .status
            .is_ended(),
        "the run was still going when paused"
    );
    drop((b, c));
    store.close().await;
    drop(database);
    (takeover_ms, pause_ms)
}

/// Notices wake a replica at once: a run released on SIGTERM is claimed by another replica,
/// and the global pause set on one replica stops another's dispatching, far sooner than the
/// polling fallback (a third of the lease time; `GLOBAL_STATE_POLL_MS`). Prints both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_wake_replicas_sooner_than_polling() {
    if TestDatabase::create().await.is_none() {
        return;
    }
    let (notify_takeover, notify_pause) = measure_wake_ups(false).await;
    let (poll_takeover, poll_pause) = measure_wake_ups(true).await;
    eprintln!(
        "wake-ups (lease TTL {WAKE_LEASE_TTL_MS} ms): takeover after a graceful release \
         {notify_takeover} ms by notice, {poll_takeover} ms polling; global pause reached \
         another replica within {notify_pause} ms by notice, {poll_pause} ms polling \
         (upper bounds: one {WAKE_TASK_WAIT_MS} ms task)"
    );
    assert!(
        notify_takeover < NOTICE_TAKEOVER_BOUND_MS,
        "takeover by notice took {notify_takeover} ms"
    );
    assert!(
        notify_pause < NOTICE_PAUSE_BOUND_MS,
        "pause by notice took {notify_pause} ms"
    );
}

/// How long the fencing-token test waits for its run.
const FENCING_RUN_TIMEOUT_MS: u64 = 30_000;

/// A real HTTP target on 127.0.0.1 that records the `Levee-Fencing-Token` header of every
/// request and answers 200.
async fn fencing_recorder() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/fence", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                for line in text.lines() {
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("levee-fencing-token")
                    {
                        record.lock().unwrap().push(value.trim().to_string());
                    }
                }
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (url, seen)
}

/// Stages get the run's lease epoch as a fencing token: an `http` stage sends it to a real
/// target as `Levee-Fencing-Token`, a `shell` stage's program finds it in
/// `LEVEE_FENCING_TOKEN`; both equal the epoch the store holds for the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_get_the_runs_lease_epoch_as_fencing_token() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let client = client();
    let store = PostgresStore::connect(&database.url)
        .await
        .expect("connect the test's store");
    let (url, seen) = fencing_recorder().await;
    let token_file = dir.path().join("token");
    let yaml = format!(
        "kind: Runbook\nname: fenced\ntasks:\n  - id: call\n    stage: http\n    with: {{ url: \"{url}\" }}\n  - id: script\n    stage: shell\n    needs: [call]\n    with:\n      command: [sh, -c, 'printf %s \"$LEVEE_FENCING_TOKEN\" > \"$0\"', \"{}\"]\n",
        token_file.display()
    );
    let a = start_replica(dir.path(), &database.url, "a.log").await;
    let id = apply_and_start(&client, &a, &yaml, "fenced").await;
    let deadline = Instant::now() + Duration::from_millis(FENCING_RUN_TIMEOUT_MS);
    loop {
        let run = store.load_run(&id).await.unwrap().unwrap();
        if run.state.run.status.is_ended() {
            assert_eq!(
                run.state.run.status.name(),
                "succeeded",
                "{:?}",
                run.state.run
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    let epoch = store.run_owner(&id).await.unwrap().unwrap().epoch;
    assert!(epoch >= 1);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![epoch.to_string()],
        "the http target's header"
    );
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        epoch.to_string(),
        "the shell program's environment"
    );
    drop(a);
    store.close().await;
    drop(database);
}
