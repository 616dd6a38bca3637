//! `kill -9` during a 500-task run: the real `levee serve` process is killed mid-run several
//! times and restarted on the same SQLite file; the run must finish with every task done
//! exactly once, none started before its dependencies, according to the store's own record.

use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Tasks in the crash test's runbook.
const CRASH_TASKS: usize = 500;
/// Times the server is killed with SIGKILL during the run.
const CRASH_KILLS: usize = 3;
/// How long a server may take to answer `/healthz`.
const SERVER_START_TIMEOUT_MS: u64 = 15_000;
/// Longest the whole run may take after the last restart.
const RUN_FINISH_TIMEOUT_MS: u64 = 120_000;
/// Pause between polls of the run.
const POLL_INTERVAL_MS: u64 = 10;

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
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

async fn start(dir: &Path, log_name: &str) -> Server {
    let port = free_port();
    let log = std::fs::File::create(dir.join(log_name)).expect("create the server log");
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
            &format!("sqlite://{}", dir.join("levee.db").display()),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log"))
        .stderr(log)
        .spawn()
        .expect("start levee serve");
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_millis(SERVER_START_TIMEOUT_MS);
    let client = client();
    loop {
        if let Ok(answer) = client.get(format!("{}/readyz", server.url)).send().await
            && answer.status().is_success()
        {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "levee serve did not start:\n{}",
            std::fs::read_to_string(dir.join(log_name)).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A DAG of `CRASH_TASKS` idempotent tasks (waits of 20 to 60 ms and log lines), each needing
/// up to three earlier tasks picked by a fixed linear congruential sequence.
fn runbook_yaml() -> String {
    let mut yaml = String::from("kind: Runbook\nname: big\nmax_parallel: 16\ntasks:\n");
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        seed >> 33
    };
    for i in 0..CRASH_TASKS {
        yaml.push_str(&format!("  - id: t{i:03}\n"));
        if i % 5 == 0 {
            yaml.push_str("    stage: log\n    with: { message: checkpoint }\n");
        } else {
            yaml.push_str(&format!(
                "    stage: wait\n    with: {{ duration: {}ms }}\n",
                20 + next() % 41
            ));
        }
        if i > 0 {
            let mut needs: Vec<usize> = (0..(next() % 4)).map(|_| (next() as usize) % i).collect();
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

async fn run_state(client: &reqwest::Client, server: &Server, id: &str) -> Value {
    client
        .get(format!("{}/api/v1/runs/{id}", server.url))
        .send()
        .await
        .expect("get the run")
        .json()
        .await
        .expect("run JSON")
}

fn sigkill(child: &mut Child) {
    // SAFETY-free: `Child::kill` sends SIGKILL on Unix.
    child.kill().expect("kill -9 the server");
    child.wait().expect("reap the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_during_a_500_task_run_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_path: PathBuf = dir.path().to_path_buf();
    let client = client();
    let mut server = start(&dir_path, "server-0.log").await;
    let applied = client
        .post(format!("{}/api/v1/definitions", server.url))
        .json(&json!({ "files": [{ "name": "big.yaml", "content": runbook_yaml() }] }))
        .send()
        .await
        .expect("apply");
    assert!(
        applied.status().is_success(),
        "{}",
        applied.text().await.unwrap()
    );
    let started: Value = client
        .post(format!("{}/api/v1/runbooks/big/runs", server.url))
        .json(&json!({}))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("run JSON");
    let id = started["id"].as_str().expect("run id").to_string();

    for kill in 0..CRASH_KILLS {
        // Kill at different depths of the run: after about 15%, 40% and 65% of the tasks.
        let target = CRASH_TASKS * (15 + 25 * kill) / 100;
        let deadline = Instant::now() + Duration::from_millis(RUN_FINISH_TIMEOUT_MS);
        loop {
            let run = run_state(&client, &server, &id).await;
            let done = run["counts"]["succeeded"].as_u64().unwrap_or(0) as usize;
            if done >= target {
                break;
            }
            assert_ne!(
                run["status"], "succeeded",
                "the run ended before kill {kill}"
            );
            assert!(
                Instant::now() < deadline,
                "no progress before kill {kill}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        sigkill(&mut server.child);
        server = start(&dir_path, &format!("server-{}.log", kill + 1)).await;
    }

    let deadline = Instant::now() + Duration::from_millis(RUN_FINISH_TIMEOUT_MS);
    let finished = loop {
        let run = run_state(&client, &server, &id).await;
        if run["status"] != "running" {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {}",
            run["counts"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(finished["status"], "succeeded", "{}", finished["outcome"]);
    assert_eq!(finished["counts"]["succeeded"], CRASH_TASKS);
    drop(server);

    // The store's own record, read directly from the file.
    let store = levee_store::SqliteStore::open(&dir_path.join("levee.db"))
        .await
        .expect("open the store");
    use levee_store::Store;
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .run_journal(&id, after, 10_000)
            .await
            .expect("journal");
        let Some(last) = page.last() else { break };
        after = last.seq;
        entries.extend(page);
    }
    let stored = store.load_run(&id).await.expect("load").expect("the run");
    let deps: HashMap<String, Vec<String>> = serde_json::from_value::<Value>(stored.spec.clone())
        .expect("spec")["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            let plan = &t["plan"];
            let mut deps: Vec<String> = plan["needs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_string())
                .collect();
            deps.extend(
                plan["after"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap().to_string()),
            );
            (plan["id"].as_str().unwrap().to_string(), deps)
        })
        .collect();
    let mut succeeded: HashMap<String, (usize, i64)> = HashMap::new();
    let mut first_start: HashMap<String, i64> = HashMap::new();
    let mut recoveries = 0;
    for entry in &entries {
        let kind = serde_json::to_value(&entry.entry).unwrap()["kind"]
            .as_str()
            .unwrap()
            .to_string();
        let task = entry.entry.task.clone().unwrap_or_default();
        match kind.as_str() {
            "task_succeeded" => {
                let slot = succeeded.entry(task).or_insert((0, entry.seq));
                slot.0 += 1;
            }
            "task_started" => {
                first_start.entry(task).or_insert(entry.seq);
            }
            "recovered" => recoveries += 1,
            _ => {}
        }
    }
    assert_eq!(recoveries, CRASH_KILLS, "one recovery per restart");
    assert_eq!(succeeded.len(), CRASH_TASKS, "every task succeeded");
    let repeated: Vec<_> = succeeded.iter().filter(|(_, (n, _))| *n != 1).collect();
    assert!(
        repeated.is_empty(),
        "tasks done more than once: {repeated:?}"
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
    store.close().await;
}
