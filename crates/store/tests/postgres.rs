//! The PostgreSQL store: the conformance suite, each case on a database of its own, plus what
//! only a shared server can show: two stores (two replicas) on one database, a deadlock with
//! another session, connections killed under the store, text PostgreSQL cannot hold.
//!
//! The server is the one at `LEVEE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, a superuser: the tests create and drop
//! databases and end sessions). When it cannot be reached, the tests fail if `CI` is set and
//! are skipped with a notice otherwise.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use levee_engine::runbook::{Control, Operator, RunStatus};
use levee_store::conformance::{
    NOW_MS, TestRun, audit_entry, control, counting_def, create_machines, create_test_run,
    diamond_plan, linear_def, report_op,
};
use levee_store::{AuditFilter, Error, OpOutcome, PostgresStore, Store};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

/// Where the server is, as a URL to a database the tests may connect to (not one they create).
const URL_ENV: &str = "LEVEE_TEST_POSTGRES_URL";
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long connecting to the server may take before it counts as unreachable.
const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Prefix of every database the tests create; the rest is `<pid>_<counter>_<nanos>`.
const TEST_DATABASE_PREFIX: &str = "levee_test_";

/// How long a test waits for something it expects the server to do soon (a session to start
/// waiting for a lock, say) before failing.
const EXPECTED_SOON_MS: u64 = 20_000;

fn server_url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// `url` with its database replaced by `database`.
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

/// A connection to the server's own database, or `None` (outside CI) if there is no server.
async fn admin() -> Option<PgConnection> {
    let url = server_url();
    let connected = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        PgConnection::connect(&url),
    )
    .await;
    let error = match connected {
        Ok(Ok(conn)) => return Some(conn),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no answer within {CONNECT_TIMEOUT_MS} ms"),
    };
    let help = format!(
        "PostgreSQL is not reachable at {url} ({error}). Start it, e.g. \
         `pg_ctlcluster --skip-systemctl-redirect 15 main start` (`bash .ci/run` installs and \
         starts it), or point {URL_ENV} at a server where this user may create databases."
    );
    if std::env::var_os("CI").is_some() {
        panic!("{help} CI is set, so the PostgreSQL tests fail instead of being skipped.");
    }
    static NOTICE: Once = Once::new();
    NOTICE.call_once(|| {
        // Straight to stderr: the test harness would capture `eprintln!` of a passing test,
        // and the skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPING the PostgreSQL store tests: {help}"
        );
    });
    None
}

/// A database created for one test, dropped (best effort) when this is dropped.
struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// A new, empty database, or `None` (outside CI) if there is no server.
    async fn create() -> Option<TestDatabase> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        static CLEANED_UP: AtomicBool = AtomicBool::new(false);
        let mut admin = admin().await?;
        if !CLEANED_UP.swap(true, Ordering::Relaxed) {
            drop_leftover_databases(&mut admin).await;
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{TEST_DATABASE_PREFIX}{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // A collation that does not sort by bytes, where the server has ICU, so the cases
        // show that the store sorts ids as bytes whatever the database's locale.
        let icu = format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu \
             ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        );
        if sqlx::query(&icu).execute(&mut admin).await.is_err() {
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("create the test database {name}: {e}"));
        }
        Some(TestDatabase {
            url: database_url(&server_url(), &name),
            name,
        })
    }

    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect a store to {}: {e}", self.name))
    }

    async fn connection(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context it could use: a thread of its own does the
        // async work, and the test waits for it so the database is gone when the test ends.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
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
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// Drops test databases whose test process is gone (killed before its databases were
/// dropped), so they do not pile up on a developer's server.
async fn drop_leftover_databases(admin: &mut PgConnection) {
    if !std::path::Path::new("/proc/self").exists() {
        return; // No way to tell which processes are alive.
    }
    let pattern = format!("{TEST_DATABASE_PREFIX}%");
    let Ok(names) =
        sqlx::query_scalar::<_, String>("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(&pattern)
            .fetch_all(&mut *admin)
            .await
    else {
        return;
    };
    for name in names {
        let pid = name[TEST_DATABASE_PREFIX.len()..].split('_').next();
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            let _ = sqlx::query(&sql).execute(&mut *admin).await;
        }
    }
}

/// A store on a fresh database, and the database, dropped after the case.
async fn fresh() -> Option<(PostgresStore, TestDatabase)> {
    let database = TestDatabase::create().await?;
    Some((database.store().await, database))
}

mod conformance {
    levee_store::conformance_tests!(optional: super::fresh);
}

/// Several stores on one database, as several replicas have.
async fn replicas(count: usize) -> Option<(Vec<PostgresStore>, TestDatabase)> {
    let database = TestDatabase::create().await?;
    let mut stores = Vec::with_capacity(count);
    for _ in 0..count {
        stores.push(database.store().await);
    }
    Some((stores, database))
}

/// Reporters per replica in the two-replica case, each sending [`REPORTS_PER_REPORTER`].
const REPORTERS_PER_REPLICA: usize = 16;
const REPORTS_PER_REPORTER: usize = 40;

/// Two stores, each with its own pool and writer, report to one machine at once: each report
/// is decided on the latest record whichever replica committed it, so nothing is lost, and the
/// machine's history has every version once, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_reporting_to_one_machine_lose_nothing() {
    let Some((stores, _database)) = replicas(2).await else {
        return;
    };
    let def = Arc::new(counting_def("hot", levee_model::MAX_TRANSITION_COUNT));
    create_machines(&stores[0], &def, &[("hot", None)]).await;
    let mut tasks = Vec::new();
    for store in &stores {
        for _ in 0..REPORTERS_PER_REPLICA {
            let (store, def) = (store.clone(), Arc::clone(&def));
            tasks.push(tokio::spawn(async move {
                for _ in 0..REPORTS_PER_REPORTER {
                    let op = report_op(&def, "hot", "wait", None, None);
                    let outcome = store.run(vec![op]).await.expect("a report commits");
                    assert!(matches!(outcome[0], OpOutcome::Applied(_)), "{outcome:?}");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("a reporter finished");
    }
    let total = (stores.len() * REPORTERS_PER_REPLICA * REPORTS_PER_REPORTER) as u32;
    for store in &stores {
        let record = store.machine("hot").await.unwrap().unwrap();
        assert_eq!(record.counter, total, "every report counted");
        assert_eq!(record.version, 1 + i64::from(total));
    }
    let history = stores[1].history("hot", 0, 0).await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=1 + i64::from(total)).collect::<Vec<_>>(),
        "every version once, in seq order"
    );
    assert!(history.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        history.iter().skip(1).zip(1..).all(|(e, n)| e.counter == n),
        "each report counted on the one before it"
    );
    for store in &stores {
        store.close().await;
    }
}

/// Rounds in which two replicas commit two different changes decided on the same version of
/// one run: exactly one lands each time, and the run is what the winner made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_from_two_replicas_land_once() {
    const ROUNDS: usize = 10;
    let Some((stores, _database)) = replicas(2).await else {
        return;
    };
    let mut run = TestRun::new("run-1", diamond_plan(), NOW_MS);
    create_test_run(&stores[0], &run, None, "deploy").await;
    run.step(&stores[0], control(Control::Start), NOW_MS + 1)
        .await;
    for round in 0..ROUNDS {
        let now = NOW_MS + 10 + round as i64;
        let toggle = if run.state.run.status == RunStatus::Paused {
            Control::Resume
        } else {
            Control::Pause
        };
        // Two changes decided on the same version, at different times.
        let a = run.commit_of(run.decide(&control(toggle.clone()), now));
        let b = run.commit_of(run.decide(&control(toggle), now + 1));
        let (ra, rb) = tokio::join!(
            stores[0].commit_run(a.clone()),
            stores[1].commit_run(b.clone())
        );
        let landed = match (&ra, &rb) {
            (Ok(()), Err(Error::Conflict(_))) => a.change,
            (Err(Error::Conflict(_)), Ok(())) => b.change,
            other => panic!("round {round}: exactly one racing commit lands: {other:?}"),
        };
        run.state.commit(&landed);
        for store in &stores {
            let stored = store.load_run("run-1").await.unwrap().unwrap();
            assert_eq!(stored.state, run.state, "round {round}");
        }
    }
    let journal = stores[1].run_journal("run-1", 0, 0).await.unwrap();
    assert!(journal.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        journal.last().map(|r| r.entry.version),
        Some(run.state.run.version),
        "the journal ends at the run's version"
    );
    for store in &stores {
        store.close().await;
    }
}

/// Waits until a session of the store (application `levee`) on `database` waits for a lock.
async fn wait_for_a_lock_wait(database: &TestDatabase) {
    let mut admin = admin().await.expect("the server is there");
    let deadline = Instant::now() + Duration::from_millis(EXPECTED_SOON_MS);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'levee' AND wait_event_type = 'Lock'",
        )
        .bind(&database.name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store's batch never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Another session holds machine `m2` and then asks for `m1`, which the store's batch holds
/// while it waits for `m2`: a deadlock. PostgreSQL ends the store's transaction (its session
/// waited first, and the other session checks for deadlocks only after 10 s); the store runs
/// the batch again once `m2` is free, and the call succeeds as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_chosen_as_deadlock_victim_is_run_again() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let store = database.store().await;
    let web = Arc::new(linear_def("web"));
    create_machines(&store, &web, &[("m1", None), ("m2", None)]).await;

    let mut other = database.connection().await;
    for sql in [
        "SET deadlock_timeout = '10s'",
        "BEGIN",
        "SELECT id FROM machines WHERE id = 'm2' FOR UPDATE",
    ] {
        sqlx::query(sql).execute(&mut other).await.unwrap();
    }
    let mut op = report_op(&web, "m1", "a", None, None);
    op.peers = vec!["m2".to_string()];
    let call = {
        let store = store.clone();
        tokio::spawn(async move { store.run(vec![op]).await })
    };
    wait_for_a_lock_wait(&database).await;
    // Granted only once PostgreSQL has rolled back the store's transaction, which held m1.
    let took_m1 = tokio::time::timeout(
        Duration::from_millis(EXPECTED_SOON_MS),
        sqlx::query("SELECT id FROM machines WHERE id = 'm1' FOR UPDATE").execute(&mut other),
    )
    .await;
    assert!(
        matches!(took_m1, Ok(Ok(_))),
        "the other session got m1: {took_m1:?}"
    );
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    let outcome = call.await.unwrap().expect("the call survives the deadlock");
    assert!(matches!(outcome[0], OpOutcome::Applied(_)), "{outcome:?}");
    assert_eq!(store.machine("m1").await.unwrap().unwrap().state, "b");
    assert_eq!(store.history("m1", 0, 0).await.unwrap().len(), 2);
    store.close().await;
}

/// Ends every session on the test database, and waits until they are gone; returns how many
/// it ended.
async fn kill_sessions(database: &TestDatabase) -> usize {
    let mut admin = admin().await.expect("the server is there");
    // The sessions first, then the kill, each its own statement: in one `WHERE` the planner
    // may call `pg_terminate_backend` before it filters, on every session of the server.
    let ended: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&database.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
        .bind(&ended)
        .execute(&mut admin)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_millis(EXPECTED_SOON_MS);
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&ended)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        if left == 0 {
            return ended.len();
        }
        assert!(Instant::now() < deadline, "{left} ended sessions linger");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The server ends the store's connections (a restart, an administrator, a failover): the
/// next reads and writes open new ones and succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_replaced() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let store = database.store().await;
    let def = Arc::new(counting_def("c", 1_000));
    create_machines(&store, &def, &[("c", None)]).await;
    for round in 1..=3 {
        // Both the pool's readers and the writer's connection are in use before each kill.
        store.ping().await.unwrap();
        assert!(kill_sessions(&database).await > 0, "round {round}");
        store.ping().await.expect("ping after the kill");
        let outcome = store
            .run(vec![report_op(&def, "c", "wait", None, None)])
            .await
            .expect("a write after the kill");
        assert!(matches!(outcome[0], OpOutcome::Applied(_)));
        let record = store.machine("c").await.expect("a read after the kill");
        assert_eq!(record.unwrap().counter, round);
    }
    store.close().await;
}

/// Sessions killed again and again while reporters write: every acknowledged report is
/// counted once, a report answered `Unavailable` is counted only if its commit's outcome was
/// unknown (the connection died during the commit), and the store keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_are_exactly_counted_while_sessions_are_killed() {
    const REPORTERS: usize = 8;
    const KILLS: usize = 5;
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let store = database.store().await;
    let def = Arc::new(counting_def("c", levee_model::MAX_TRANSITION_COUNT));
    create_machines(&store, &def, &[("c", None)]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut reporters = Vec::new();
    for _ in 0..REPORTERS {
        let (store, def, stop) = (store.clone(), Arc::clone(&def), Arc::clone(&stop));
        reporters.push(tokio::spawn(async move {
            let (mut acknowledged, mut unknown) = (0_u32, 0_u32);
            while !stop.load(Ordering::Relaxed) {
                match store
                    .run(vec![report_op(&def, "c", "wait", None, None)])
                    .await
                {
                    Ok(_) => acknowledged += 1,
                    Err(Error::Unavailable(message)) => {
                        if message.contains("is unknown") {
                            unknown += 1;
                        }
                    }
                    Err(other) => panic!("a report failed with {other}"),
                }
            }
            (acknowledged, unknown)
        }));
    }
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(100)).await;
        kill_sessions(&database).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acknowledged, mut unknown) = (0, 0);
    for reporter in reporters {
        let (a, u) = reporter.await.unwrap();
        acknowledged += a;
        unknown += u;
    }
    assert!(acknowledged > 0, "reports got through between the kills");
    let counter = store.machine("c").await.unwrap().unwrap().counter;
    assert!(
        (acknowledged..=acknowledged + unknown).contains(&counter),
        "counted {counter}, acknowledged {acknowledged}, {unknown} of unknown outcome"
    );
    store.close().await;
}

/// PostgreSQL cannot store U+0000 in `text`. A request carrying it fails alone, with
/// `Corrupt`, before anything is written; the requests it shares a batch with commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_with_a_nul_character_fails_only_its_request() {
    let Some((store, _database)) = fresh().await else {
        return;
    };
    let web = Arc::new(linear_def("web"));
    create_machines(&store, &web, &[("m1", None), ("m2", None)]).await;
    let mut run = TestRun::new("run-1", diamond_plan(), NOW_MS);
    create_test_run(&store, &run, None, "deploy").await;
    run.step(&store, control(Control::Start), NOW_MS + 1).await;

    let abort = levee_engine::runbook::Event::Control {
        by: Operator {
            actor: "tester".to_string(),
            reason: "pasted from a binary: \0".to_string(),
        },
        control: Control::Abort,
    };
    let bad_commit = run.commit_of(run.decide(&abort, NOW_MS + 2));
    let bad_report = report_op(&web, "m1", "a", Some("vm\0one"), None);
    let mut bad_audit = audit_entry("ops", "test.nul", "target\0");
    bad_audit.outcome = "ok".to_string();
    let (commit, report, audit, good) = tokio::join!(
        store.commit_run(bad_commit),
        store.run(vec![bad_report]),
        store.audit(bad_audit),
        store.run(vec![report_op(&web, "m2", "a", None, None)]),
    );
    for (what, result) in [
        ("commit", commit.map(|_| ())),
        ("report", report.map(|_| ())),
        ("audit", audit),
    ] {
        let Err(Error::Corrupt(message)) = &result else {
            panic!("{what}: {result:?}");
        };
        assert!(message.contains("U+0000"), "{what}: {message}");
    }
    assert!(matches!(good.unwrap()[0], OpOutcome::Applied(_)));
    assert_eq!(store.machine("m1").await.unwrap().unwrap().version, 1);
    assert_eq!(
        store.load_run("run-1").await.unwrap().unwrap().state,
        run.state
    );
    let filter = AuditFilter {
        actor: Some("ops".to_string()),
        ..AuditFilter::default()
    };
    assert!(store.audit_log(&filter).await.unwrap().is_empty());
    store.close().await;
}

/// Replicas starting together against a new database: each migration runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let (a, b, c) = tokio::join!(database.store(), database.store(), database.store());
    let mut conn = database.connection().await;
    let rows = sqlx::query("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let applied: Vec<(i64, bool)> = rows
        .iter()
        .map(|row| (row.get("version"), row.get("success")))
        .collect();
    // One row per migration file, each applied successfully.
    let mut expected: Vec<(i64, bool)> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
            .expect("list the migrations")
            .map(|entry| {
                let name = entry.expect("a migration file").file_name();
                let name = name.to_string_lossy();
                let version = name.split('_').next().and_then(|v| v.parse().ok());
                (version.expect("a migration named NNNN_name.sql"), true)
            })
            .collect();
    expected.sort_unstable();
    assert_eq!(applied, expected);
    for store in [a, b, c] {
        assert!(store.database().ends_with(&database.name), "{store:?}");
        store.ping().await.unwrap();
        store.close().await;
    }
}

/// Closing commits what was queued; afterwards reads fail as well as writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_close_reads_fail_too() {
    let Some((store, _database)) = fresh().await else {
        return;
    };
    store
        .audit(audit_entry("ops", "test.write", "x"))
        .await
        .unwrap();
    store.close().await;
    let read = store.audit_log(&AuditFilter::default()).await;
    assert!(matches!(read, Err(Error::Unavailable(_))), "{read:?}");
    let ping = store.ping().await;
    assert!(matches!(ping, Err(Error::Unavailable(_))), "{ping:?}");
}

/// A server that is not there: connecting fails with `Unavailable`, naming the database but
/// never the password, within the pool's acquire timeout.
#[tokio::test]
async fn connecting_to_no_server_fails_with_unavailable() {
    let started = Instant::now();
    let result = PostgresStore::connect("postgres://levee:s3cret@127.0.0.1:1/levee").await;
    let Err(Error::Unavailable(message)) = &result else {
        panic!("{result:?}");
    };
    assert!(message.contains("127.0.0.1:1/levee"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
    let bound = Duration::from_millis(levee_store::postgres::ACQUIRE_TIMEOUT_MS + 5_000);
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
}

#[test]
fn test_database_urls_keep_everything_but_the_database() {
    assert_eq!(
        database_url("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        database_url("postgres://u:p@host/db?sslmode=disable", "t2"),
        "postgres://u:p@host/t2?sslmode=disable"
    );
    assert_eq!(database_url("postgres://host", "t3"), "postgres://host/t3");
}

/// Clients of three replicas scheduling overlapping maintenances of one pool at once: the
/// replicas take turns on `fleet_lock`, so together they never take more than the headroom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_scheduling_at_once_never_take_more_than_the_headroom() {
    let Some((stores, _database)) = replicas(3).await else {
        return;
    };
    let stores: Vec<std::sync::Arc<dyn levee_store::Store>> = stores
        .into_iter()
        .map(|store| std::sync::Arc::new(store) as std::sync::Arc<dyn levee_store::Store>)
        .collect();
    levee_store::conformance::concurrent_schedules_keep_the_headroom(stores).await;
}

/// One replica's commits reach another replica's notices: machines with their new versions,
/// settings; when the server ends the listening session, the listener reconnects, says
/// `Resync` (notices may have been missed), and delivers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_other_replicas_and_survive_killed_sessions() {
    use levee_store::Notice;
    use levee_store::conformance::next_notice;
    let Some((stores, database)) = replicas(2).await else {
        return;
    };
    let (writer, listener) = (&stores[0], &stores[1]);
    let mut notices = listener.notices();
    next_notice(&mut notices, "the first resync", |n| *n == Notice::Resync).await;
    let def = Arc::new(counting_def("c", 1_000));
    create_machines(writer, &def, &[("c", None)]).await;
    for round in 1..=2 {
        let outcome = writer
            .run(vec![report_op(&def, "c", "wait", None, None)])
            .await
            .unwrap();
        let OpOutcome::Applied(change) = &outcome[0] else {
            panic!("{outcome:?}");
        };
        let version = change.record.version;
        next_notice(&mut notices, "the machine's new version", |n| {
            matches!(n, Notice::Machines { versions } if versions.contains(&("c".to_string(), version)))
        })
        .await;
        writer
            .set_setting("global_pause", serde_json::json!(round), None)
            .await
            .unwrap();
        next_notice(
            &mut notices,
            "the setting",
            |n| matches!(n, Notice::Setting { key } if key == "global_pause"),
        )
        .await;
        assert!(kill_sessions(&database).await > 0, "round {round}");
        next_notice(&mut notices, "the resync after the kill", |n| {
            *n == Notice::Resync
        })
        .await;
    }
    for store in &stores {
        store.close().await;
    }
}

/// Three replicas' schedulers claiming one drain test firing at once: exactly one stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_claiming_one_drain_test_firing_store_it_once() {
    let Some((stores, _database)) = replicas(3).await else {
        return;
    };
    let stores: Vec<std::sync::Arc<dyn levee_store::Store>> = stores
        .into_iter()
        .map(|store| std::sync::Arc::new(store) as std::sync::Arc<dyn levee_store::Store>)
        .collect();
    levee_store::conformance::concurrent_drain_test_claims_land_once(stores).await;
}

/// Machines of the concurrent-notices case, and reports to each.
const NOTICE_CASE_MACHINES: usize = 8;
const NOTICE_CASE_REPORTS_PER_MACHINE: u32 = 20;

/// Notices go out after each batch commits, merged while one is being sent and for
/// `NOTICE_SEND_INTERVAL_MS` after: with many concurrent reports, another replica still hears
/// every machine's final version, from at most one notification per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_sent_after_commits_announce_every_final_version() {
    use levee_store::Notice;
    use levee_store::conformance::next_notice;
    let Some((stores, _database)) = replicas(2).await else {
        return;
    };
    let (writer, listener) = (&stores[0], &stores[1]);
    let mut notices = listener.notices();
    next_notice(&mut notices, "the first resync", |n| *n == Notice::Resync).await;
    let def = Arc::new(counting_def("c", 1_000));
    let ids: Vec<String> = (0..NOTICE_CASE_MACHINES).map(|i| format!("c{i}")).collect();
    let machines: Vec<(&str, Option<&str>)> = ids.iter().map(|id| (id.as_str(), None)).collect();
    create_machines(writer, &def, &machines).await;
    let started = Instant::now();
    let mut reporters = Vec::new();
    for id in &ids {
        let (writer, def, id) = (writer.clone(), Arc::clone(&def), id.clone());
        reporters.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..NOTICE_CASE_REPORTS_PER_MACHINE {
                let outcome = writer
                    .run(vec![report_op(&def, &id, "wait", None, None)])
                    .await
                    .unwrap();
                let OpOutcome::Applied(change) = &outcome[0] else {
                    panic!("{outcome:?}");
                };
                last = change.record.version;
            }
            (id, last)
        }));
    }
    let mut finals = std::collections::BTreeMap::new();
    for reporter in reporters {
        let (id, version) = reporter.await.unwrap();
        finals.insert(id, version);
    }
    let mut heard = std::collections::BTreeMap::<String, i64>::new();
    let mut received = 0u64;
    while finals.iter().any(|(id, v)| heard.get(id) != Some(v)) {
        let notice = next_notice(&mut notices, "machine versions", |n| {
            matches!(n, Notice::Machines { .. })
        })
        .await;
        let Notice::Machines { versions } = notice else {
            unreachable!()
        };
        received += 1;
        for (id, version) in versions {
            // Only committed versions are announced: none past the last acknowledged one.
            assert!(version <= finals[&id], "{id} announced at {version}");
            let highest = heard.entry(id).or_insert(version);
            *highest = (*highest).max(version);
        }
    }
    // The machines' creation may come as one more.
    let most =
        started.elapsed().as_millis() as u64 / levee_store::postgres::NOTICE_SEND_INTERVAL_MS + 2;
    let reports = u64::from(NOTICE_CASE_REPORTS_PER_MACHINE) * NOTICE_CASE_MACHINES as u64;
    assert!(
        received <= most,
        "{received} machine notices for {reports} reports in {:?}",
        started.elapsed()
    );
    for store in &stores {
        store.close().await;
    }
}

/// A batch's machines, history and audit rows are written in one statement, each table only
/// when the batch has rows for it: a call mixing an audited change, an unaudited change and a
/// refusal (audit only) stores each as it would alone, audit entries in call order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_writes_machines_history_and_audit_of_a_batch() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let store = database.store().await;
    let def = Arc::new(counting_def("c", 1));
    create_machines(&store, &def, &[("a", None), ("b", None)]).await;
    let outcomes = store
        .run(vec![
            report_op(
                &def,
                "a",
                "wait",
                None,
                Some(audit_entry("ops", "t.first", "a")),
            ),
            report_op(&def, "b", "wait", None, None),
            // `a` is `open` now, so this one is refused and only audited.
            report_op(
                &def,
                "a",
                "wait",
                None,
                Some(audit_entry("ops", "t.second", "a")),
            ),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], OpOutcome::Applied(_)), "{outcomes:?}");
    assert!(matches!(outcomes[1], OpOutcome::Applied(_)), "{outcomes:?}");
    assert!(
        matches!(outcomes[2], OpOutcome::Refused(..)),
        "{outcomes:?}"
    );
    for id in ["a", "b"] {
        let record = store.machine(id).await.unwrap().unwrap();
        assert_eq!(record.state, "open", "{id}");
        let history = store.history(id, 0, 0).await.unwrap();
        assert_eq!(history.last().map(|e| e.to_state.as_str()), Some("open"));
        assert_eq!(history.last().map(|e| e.version), Some(record.version));
    }
    let audit = store
        .audit_log(&AuditFilter {
            actor: Some("ops".to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|r| (r.entry.action.as_str(), r.entry.outcome.as_str()))
        .collect();
    assert_eq!(actions[0], ("t.first", "ok"));
    assert_eq!(actions[1].0, "t.second");
    assert_ne!(actions[1].1, "ok");
    // A call that only refuses writes audit rows alone.
    let refused = store
        .run(vec![report_op(
            &def,
            "b",
            "wait",
            None,
            Some(audit_entry("ops", "t.third", "b")),
        )])
        .await
        .unwrap();
    assert!(matches!(refused[0], OpOutcome::Refused(..)), "{refused:?}");
    let audit = store
        .audit_log(&AuditFilter {
            actor: Some("ops".to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 3);
    assert_eq!(audit[2].entry.action, "t.third");
    store.close().await;
}
