//! The SQLite store: the conformance suite on temporary files, plus what only a real file can
//! show: acknowledged writes surviving `kill -9`, reopening, failed commits, and refusing a
//! file that is not a database.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_engine::machine::new_instance;
use levee_engine::runbook::{Change as RunChange, Control, Event, RunStatus};
use levee_store::conformance::{
    LARGE_RUN_TASKS, NOW_MS, TestRun, audit_entry, control, counting_def, create_machines,
    create_test_run, diamond_plan, linear_def, new_definition, output, report_op, wide_plan,
};
use levee_store::{AuditFilter, CreatedRun, Error, OpOutcome, RunFilter, SqliteStore, Store};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};

/// A fresh store on a file in its own temporary directory, removed after the test.
async fn fresh() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = SqliteStore::open(&dir.path().join("levee.db"))
        .await
        .expect("open a new database");
    (store, dir)
}

mod conformance {
    levee_store::conformance_tests!(super::fresh);
}

/// A plain connection to the file, bypassing the store, for what tests must inspect or break.
async fn raw_connection(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
        .await
        .expect("open a raw connection")
}

async fn integrity_check(path: &Path) -> Vec<String> {
    let mut conn = raw_connection(path).await;
    let rows = sqlx::query("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter().map(|row| row.get::<String, _>(0)).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a runtime")
}

/// Set in the child process of the crash test: the database it writes to.
const CRASH_CHILD_DB_ENV: &str = "LEVEE_STORE_CRASH_CHILD_DB";
/// Times the crash test starts a writer and kills it.
const CRASH_ROUNDS: usize = 3;
/// How long the child writes, after its first acknowledgement, before it is killed.
const CRASH_WRITE_MS: u64 = 1_000;
/// How long the parent waits for the child's first acknowledgement (it may be compiling
/// nothing, but a loaded CI machine can be slow to start a process).
const CRASH_FIRST_ACK_TIMEOUT_MS: u64 = 60_000;
/// The child stops by itself after this long, in case its parent died without killing it.
const CRASH_CHILD_LIFETIME_MS: u64 = 120_000;
const CRASH_MACHINES: usize = 8;
const CRASH_CHILD_TASKS: usize = 32;

fn crash_machine(index: usize) -> String {
    format!("crash-{index}")
}

/// Not a test of its own: the child process of `acknowledged_writes_survive_kill_9`. It does
/// nothing unless the parent set `LEVEE_STORE_CRASH_CHILD_DB`. It reports concurrently, and
/// prints `ack MACHINE VERSION` for each acknowledged report, flushed at once, until killed.
#[test]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CRASH_CHILD_DB_ENV) else {
        return;
    };
    runtime().block_on(async move {
        let store = Arc::new(
            SqliteStore::open(Path::new(&path))
                .await
                .expect("child opens the database"),
        );
        let def = Arc::new(counting_def("crash", levee_model::MAX_TRANSITION_COUNT));
        let deadline = Instant::now() + Duration::from_millis(CRASH_CHILD_LIFETIME_MS);
        let mut tasks = Vec::new();
        for task in 0..CRASH_CHILD_TASKS {
            let (store, def) = (Arc::clone(&store), Arc::clone(&def));
            tasks.push(tokio::spawn(async move {
                let mut n = task;
                while Instant::now() < deadline {
                    let machine = crash_machine(n % CRASH_MACHINES);
                    n += 1;
                    let op = report_op(&def, &machine, "wait", None, None);
                    if let Ok(outcomes) = store.run(vec![op]).await
                        && let Some(OpOutcome::Applied(change)) = outcomes.first()
                    {
                        // One write per line, so the parent never sees half of one.
                        use std::io::Write as _;
                        let line = format!("ack {} {}\n", change.record.id, change.record.version);
                        let mut out = std::io::stdout().lock();
                        out.write_all(line.as_bytes()).expect("write an ack");
                        out.flush().expect("flush an ack");
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("a child task");
        }
    });
}

/// Kills the child if the parent test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn parse_ack(line: &str) -> Option<(String, i64)> {
    let mut words = line.trim_end().split(' ');
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("ack"), Some(machine), Some(version), None) => {
            Some((machine.to_string(), version.parse().ok()?))
        }
        _ => None,
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let rt = runtime();
    let def = counting_def("crash", levee_model::MAX_TRANSITION_COUNT);
    for round in 0..CRASH_ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.db");
        rt.block_on(async {
            let store = SqliteStore::open(&path).await.unwrap();
            let ids: Vec<String> = (0..CRASH_MACHINES).map(crash_machine).collect();
            let machines: Vec<(&str, Option<&str>)> =
                ids.iter().map(|id| (id.as_str(), None)).collect();
            create_machines(&store, &def, &machines).await;
            store.close().await;
        });

        let mut child = KillOnDrop(
            Command::new(&exe)
                .args([
                    "crash_child_writer",
                    "--exact",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CRASH_CHILD_DB_ENV, &path)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the writer child"),
        );
        let stdout = child.0.stdout.take().expect("the child's stdout");
        let (acks_tx, acks) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    // A line cut short by the kill has no newline and proves nothing.
                    Ok(_) if line.ends_with('\n') => {
                        if let Some(ack) = parse_ack(&line) {
                            let _ = acks_tx.send(ack);
                        }
                    }
                    Ok(_) => {}
                }
            }
        });
        let first = acks
            .recv_timeout(Duration::from_millis(CRASH_FIRST_ACK_TIMEOUT_MS))
            .expect("the child acknowledged a write");
        std::thread::sleep(Duration::from_millis(CRASH_WRITE_MS));
        child.0.kill().expect("kill -9 the child"); // SIGKILL on Unix
        child.0.wait().expect("reap the child");
        reader.join().expect("the reader thread");
        let mut acked: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (machine, version) in std::iter::once(first).chain(acks.try_iter()) {
            acked.entry(machine).or_default().push(version);
        }
        let total: usize = acked.values().map(Vec::len).sum();
        assert!(
            total > 10,
            "round {round}: only {total} acknowledged writes before the kill"
        );

        rt.block_on(async {
            let store = SqliteStore::open(&path)
                .await
                .expect("reopen after kill -9");
            for (machine, versions) in &acked {
                let record = store
                    .machine(machine)
                    .await
                    .unwrap()
                    .expect("the machine exists");
                let max = versions.iter().copied().max().unwrap();
                assert!(
                    record.version >= max,
                    "round {round}: {machine} at {} < acked {max}",
                    record.version
                );
                let mut history = Vec::new();
                let mut after = 0;
                loop {
                    let page = store.history(machine, after, 0).await.unwrap();
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    history.extend(page);
                }
                let stored: std::collections::HashSet<i64> =
                    history.iter().map(|e| e.version).collect();
                for version in versions {
                    assert!(
                        stored.contains(version),
                        "round {round}: {machine} lost acked version {version}"
                    );
                }
                // The record and its history agree: nothing half-written.
                assert_eq!(
                    history.len() as i64,
                    record.version,
                    "round {round}: {machine}"
                );
                assert_eq!(
                    i64::from(record.counter),
                    record.version - 1,
                    "round {round}: {machine}"
                );
            }
            store.close().await;
        });
        assert_eq!(
            rt.block_on(integrity_check(&path)),
            vec!["ok"],
            "round {round}"
        );
        eprintln!("crash round {round}: {total} acknowledged writes, all present");
    }
}

async fn migrations(path: &Path) -> Vec<(i64, String, String, Vec<u8>, bool)> {
    let mut conn = raw_connection(path).await;
    let rows = sqlx::query(
        "SELECT version, description, installed_on, checksum, success FROM _sqlx_migrations \
         ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_data_and_runs_no_migration_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.db");
    let web = Arc::new(linear_def("web"));
    let store = SqliteStore::open(&path).await.unwrap();
    create_machines(&store, &web, &[("m1", Some("g1"))]).await;
    store
        .run(vec![report_op(&web, "m1", "a", None, None)])
        .await
        .unwrap();
    store.close().await;
    let before = migrations(&path).await;
    assert!(
        !before.is_empty() && before.iter().all(|m| m.4),
        "migrations applied: {before:?}"
    );

    let store = SqliteStore::open(&path).await.expect("reopen");
    let m1 = store.machine("m1").await.unwrap().expect("m1 kept");
    assert_eq!(
        (m1.state.as_str(), m1.version, m1.group.as_deref()),
        ("b", 2, Some("g1"))
    );
    assert_eq!(store.history("m1", 0, 10).await.unwrap().len(), 2);
    assert_eq!(
        store
            .definition("StateMachine", "web")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    // Writes continue the history where it left off.
    let next = store
        .run(vec![report_op(&web, "m1", "b", None, None)])
        .await
        .unwrap();
    let OpOutcome::Applied(change) = &next[0] else {
        panic!("{next:?}")
    };
    assert_eq!(change.record.version, 3);
    store.close().await;
    // Identical rows, `installed_on` included: nothing ran again.
    assert_eq!(migrations(&path).await, before);
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    let content = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &content).unwrap();
    let error = SqliteStore::open(&path).await.expect_err("not a database");
    let text = error.to_string();
    assert!(matches!(error, Error::Corrupt(_)), "{text}");
    assert!(
        text.contains(&path.display().to_string()),
        "names the path: {text}"
    );
    assert!(
        text.contains("not a SQLite database"),
        "says what is wrong: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        content,
        "the file is left alone"
    );
}

#[tokio::test]
async fn a_database_in_a_missing_directory_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("levee.db");
    let error = SqliteStore::open(&path)
        .await
        .expect_err("the directory does not exist");
    let text = error.to_string();
    assert!(matches!(error, Error::Unavailable(_)), "{text}");
    assert!(
        text.contains(&path.display().to_string()),
        "names the path: {text}"
    );
}

#[tokio::test]
async fn open_url_takes_an_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("by-url.db");
    assert!(path.is_absolute());
    let url = format!("sqlite://{}", path.display());
    assert!(url.starts_with("sqlite:///"));
    let store = SqliteStore::open_url(&url).await.expect("open by URL");
    assert_eq!(store.path(), path);
    store.ping().await.unwrap();
    store.close().await;
    assert!(path.exists());
}

/// A trigger makes every insert of machine `poison` fail, standing in for a full disk: the
/// commit of any batch that holds it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_its_whole_batch_and_keeps_nothing() {
    let (store, dir) = fresh().await;
    let path = dir.path().join("levee.db");
    let web = linear_def("web");
    let counter = Arc::new(counting_def("counter", 100_000));
    create_machines(&store, &web, &[("m1", None)]).await;
    create_machines(&store, &counter, &[("c", None)]).await;
    let mut raw = raw_connection(&path).await;
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON machines WHEN NEW.id = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&mut raw)
    .await
    .unwrap();

    let store = Arc::new(store);
    let mut reports = Vec::new();
    for _ in 0..40 {
        let (store, counter) = (Arc::clone(&store), Arc::clone(&counter));
        reports.push(tokio::spawn(async move {
            store
                .run(vec![report_op(&counter, "c", "wait", None, None)])
                .await
        }));
    }
    let mut changed = web.clone();
    changed.description = Some("version 2".to_string());
    let apply = store
        .apply(
            vec![new_definition(&changed, "digest-2")],
            vec![new_instance(&web, "poison", None, NOW_MS, "tester")],
            vec![audit_entry("admin", "definition.apply", "poisoned-apply")],
        )
        .await;
    assert!(matches!(apply, Err(Error::Unavailable(_))), "{apply:?}");

    let mut acknowledged = 0;
    for task in reports {
        match task.await.unwrap() {
            Ok(outcomes) => {
                assert!(matches!(outcomes[0], OpOutcome::Applied(_)));
                acknowledged += 1;
            }
            Err(error) => assert!(matches!(error, Error::Unavailable(_)), "{error}"),
        }
    }
    assert_eq!(
        store.machine("c").await.unwrap().unwrap().counter,
        acknowledged
    );
    assert_eq!(
        store
            .definition("StateMachine", "web")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert_eq!(store.machine("poison").await.unwrap(), None);
    let filter = AuditFilter {
        target: Some("poisoned-apply".to_string()),
        ..AuditFilter::default()
    };
    assert!(store.audit_log(&filter).await.unwrap().is_empty());

    // Once the cause is gone, the same writer carries on.
    sqlx::query("DROP TRIGGER poison")
        .execute(&mut raw)
        .await
        .unwrap();
    let retry = store
        .apply(
            vec![new_definition(&changed, "digest-2")],
            vec![new_instance(&web, "poison", None, NOW_MS, "tester")],
            vec![],
        )
        .await
        .expect("the retry commits");
    assert_eq!(
        (retry.definitions[0].0.version, retry.created.len()),
        (2, 1)
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_commits_then_closes_the_file_cleanly() {
    let (store, dir) = fresh().await;
    let wal = dir.path().join("levee.db-wal");
    store
        .audit(audit_entry("ops", "test.write", "x"))
        .await
        .unwrap();
    assert!(wal.exists(), "WAL mode is on");
    store.close().await;
    // SQLite removes the write-ahead log when the last connection closes cleanly.
    assert!(!wal.exists(), "the WAL was checkpointed and removed");
    let store = SqliteStore::open(&dir.path().join("levee.db"))
        .await
        .unwrap();
    assert_eq!(
        store
            .audit_log(&AuditFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_stops_the_writer() {
    let (store, dir) = fresh().await;
    let wal = dir.path().join("levee.db-wal");
    let clone = store.clone();
    clone
        .audit(audit_entry("ops", "test.write", "x"))
        .await
        .unwrap();
    drop(store);
    clone
        .audit(audit_entry("ops", "test.write", "y"))
        .await
        .expect("a clone keeps the writer");
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !wal.exists(),
        "every connection closed once the last handle was dropped"
    );
}

/// Run changes, outputs and settings are in the file: found after a clean close and after the
/// last handle is simply dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_changes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let mut run = TestRun::new("run-1", diamond_plan(), NOW_MS);
    create_test_run(&store, &run, Some("nightly"), "deploy").await;
    run.step(&store, control(Control::Start), NOW_MS + 1).await;
    let change = run.decide(
        &Event::TaskStarted {
            task: "a".to_string(),
            attempt: 1,
        },
        NOW_MS + 2,
    );
    let mut commit = run.commit_of(change.clone());
    commit.outputs.push(output("a", 1, "hello"));
    commit
        .audits
        .push(audit_entry("tester", "run.report", "run-1"));
    store.commit_run(commit).await.unwrap();
    run.state.commit(&change);
    store
        .set_setting("global_pause", serde_json::json!(true), None)
        .await
        .unwrap();
    let journal = store.run_journal("run-1", 0, 0).await.unwrap();
    store.close().await;

    let store = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(
        store.load_run("run-1").await.unwrap().unwrap(),
        run.stored(Some("nightly"), "deploy")
    );
    assert_eq!(store.run_journal("run-1", 0, 0).await.unwrap(), journal);
    assert_eq!(
        store.task_outputs("run-1", "a").await.unwrap(),
        vec![output("a", 1, "hello")]
    );
    assert_eq!(
        store.setting("global_pause").await.unwrap(),
        Some(serde_json::json!(true))
    );
    // The counters and the cursor carry on where they were.
    run.succeed(&store, "a", NOW_MS + 3).await;
    let after = store.run_journal("run-1", 0, 0).await.unwrap();
    assert!(after.len() > journal.len());
    assert!(after.windows(2).all(|w| w[0].seq < w[1].seq));
    drop(store);

    let store = SqliteStore::open(&path).await.expect("reopen after drop");
    assert_eq!(
        store.load_run("run-1").await.unwrap().unwrap().state,
        run.state
    );
    let summary = &store.runs(&RunFilter::default()).await.unwrap()[0];
    assert_eq!(
        (summary.tasks_done, summary.tasks_running, summary.version),
        (1, 2, run.state.run.version)
    );
    store.close().await;
    assert_eq!(integrity_check(&path).await, vec!["ok"]);
}

/// Commits queued behind a large write share the next batch: a chain of commits of one run
/// (each decided on the one before) all land, a stale commit among them fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_queued_together_see_each_other() {
    let (store, _dir) = fresh().await;
    let store = Arc::new(store);
    let mut run = TestRun::new("run-1", wide_plan(4), NOW_MS);
    let other = TestRun::new("run-2", wide_plan(4), NOW_MS);
    create_test_run(&*store, &run, None, "deploy").await;
    create_test_run(&*store, &other, None, "deploy").await;
    // The chain, decided ahead: start, then each running task reported started.
    let mut chain: Vec<RunChange> = Vec::new();
    let mut commits = Vec::new();
    let mut events = vec![control(Control::Start)];
    events.extend((0..4).map(|i| Event::TaskStarted {
        task: format!("t{i:05}"),
        attempt: 1,
    }));
    for (i, event) in events.iter().enumerate() {
        let change = run.decide(event, NOW_MS + i as i64);
        commits.push(run.commit_of(change.clone()));
        run.state.commit(&change);
        chain.push(change);
    }
    let stale = other.commit_of(other.decide(&control(Control::Start), NOW_MS));
    let mut stale_twice = stale.clone();
    stale_twice.expected_version = 7;

    // Hold the writer with a large create, then queue everything behind it.
    let big = TestRun::new("big", wide_plan(LARGE_RUN_TASKS), NOW_MS);
    let big_store = Arc::clone(&store);
    let big_run = big.new_run(None, "fleet");
    let blocker = tokio::spawn(async move { big_store.create_run(big_run, None).await });
    tokio::time::sleep(Duration::from_millis(1)).await;
    // `join!` polls in order, so the commits queue in order: each depends on the one before.
    let [c0, c1, c2, c3, c4]: [_; 5] = commits.try_into().expect("five commits");
    let (r0, r1, r2, r3, r4, good, bad) = tokio::join!(
        store.commit_run(c0),
        store.commit_run(c1),
        store.commit_run(c2),
        store.commit_run(c3),
        store.commit_run(c4),
        store.commit_run(stale),
        store.commit_run(stale_twice),
    );
    for result in [r0, r1, r2, r3, r4] {
        result.expect("every commit of the chain lands");
    }
    assert!(
        matches!(blocker.await.unwrap(), Ok(CreatedRun::Created(_))),
        "the large create"
    );
    good.expect("the first start of run-2 lands");
    assert!(matches!(bad, Err(Error::Conflict(_))), "{bad:?}");
    assert_eq!(
        store.load_run("run-1").await.unwrap().unwrap().state,
        run.state
    );
    let journal = store.run_journal("run-1", 0, 0).await.unwrap();
    assert_eq!(
        journal.len(),
        chain.iter().map(|c| c.journal.len()).sum::<usize>()
    );
    assert_eq!(
        store
            .load_run("run-2")
            .await
            .unwrap()
            .unwrap()
            .state
            .run
            .status,
        RunStatus::Running
    );
    store.close().await;
}
