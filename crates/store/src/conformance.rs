//! The behaviour every [`Store`] implementation must have, as runnable cases.
//!
//! Each case is a `pub async fn` that takes a fresh, empty store and panics on the first
//! difference. [`conformance_tests!`](crate::conformance_tests) turns all of them into
//! `#[tokio::test]`s for one constructor, so a new backend gets the whole suite with one line:
//!
//! ```no_run
//! use levee_store::SqliteStore;
//!
//! /// A fresh database, and whatever must live as long as it (a temp dir; `()` if nothing).
//! async fn fresh() -> (SqliteStore, tempfile::TempDir) {
//!     let dir = tempfile::tempdir().unwrap();
//!     (SqliteStore::open(&dir.path().join("levee.db")).await.unwrap(), dir)
//! }
//!
//! levee_store::conformance_tests!(fresh);
//! # fn main() {}
//! ```
//!
//! The cases share nothing, so each may run on its own database in parallel with the others.
//! They run on a multi-threaded runtime: the concurrency cases need real parallelism to find
//! lost updates.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use levee_engine::machine::{catch_up, new_instance, report};
use levee_engine::runbook::{
    Change as RunChange, Context, Control, Event, Operator, PlanTask, RunPlan, RunState, RunStatus,
    TaskStatus, apply,
};
use levee_engine::{Change, HistoryKind, MachineRecord, Refusal, Report};
use levee_model::{DEFAULT_EVENT, DefFormat, EventTransition, MachineDef, StateDef, Timer};
use serde_json::json;

use crate::{
    Admit, AuditEntry, AuditFilter, CreatedRun, DrainTestExecution, DrainTestFilter, Error, Lease,
    MachineFilter, MachineOp, MaintenanceFilter, MaintenanceRecord, NewDefinition, NewRun,
    OpOutcome, RunCommit, RunFilter, Scheduled, Store, StoredRun, TaskOutput, TokenRecord,
};

/// The clock every case uses: the store never reads the clock itself.
pub const NOW_MS: i64 = 1_700_000_000_000;

/// Concurrent callers in the lost-update cases, like a fleet of VMs reporting at once.
pub const CONCURRENT_TASKS: usize = 64;

/// Reports each concurrent caller sends in the lost-update cases.
pub const REPORTS_PER_TASK: usize = 200;

const STATE_MACHINE: &str = "StateMachine";

/// Tasks of the large run: as many as a big fleet drain has.
pub const LARGE_RUN_TASKS: usize = 10_000;

/// Tasks a test run runs at once.
pub const TEST_RUN_MAX_PARALLEL_TASKS: u32 = 32;

/// Runs committed to concurrently in the concurrent-commit case.
pub const CONCURRENT_RUNS: usize = 8;

/// Rounds of concurrent commits (some stale, some not) in the concurrent-commit case.
pub const CONCURRENT_COMMIT_ROUNDS: usize = 5;

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh store from `$make`:
/// an async fn returning `(store, guard)`, where `guard` is dropped after the case (a temp
/// dir, a database to drop; `()` if nothing). Needs `tokio` (with `macros`) in the test crate.
///
/// `conformance_tests!(optional: $make)` is for a store on a server that may not be there:
/// `$make` returns `Option<(store, guard)>`, and a case whose `$make` gives `None` returns at
/// once. `$make` decides when that is acceptable (never in CI) and says so.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@all required $make);
    };
    (optional: $make:path) => {
        $crate::conformance_tests!(@all optional $make);
    };
    (@all $mode:ident $make:path) => {
        $crate::conformance_tests!(@cases $mode $make;
            ping_and_backend,
            apply_versions_definitions_by_digest,
            apply_creates_machines_and_skips_existing,
            run_applies_refuses_noops_and_not_found,
            ops_in_one_call_see_each_other,
            concurrent_reports_on_one_machine_lose_nothing,
            concurrent_reports_on_many_machines_lose_nothing,
            history_is_ordered_and_pages,
            due_timers_are_earliest_first_and_limited,
            audit_log_pages_and_filters,
            tokens_create_look_up_and_revoke,
            machines_filter_and_page_by_id,
            panicking_decision_fails_only_its_call,
            large_writes_commit_whole,
            close_refuses_later_writes,
            runs_create_and_load_round_trip,
            runs_create_with_a_taken_name_returns_the_existing_run,
            commit_run_is_compare_and_set,
            concurrent_commit_runs_land_independently,
            run_journal_ascends_and_pages,
            task_outputs_are_kept_in_attempt_order,
            runs_list_newest_first_with_filters_and_counts,
            task_durations_are_newest_first_and_limited_per_task,
            settings_round_trip_with_audit,
            a_run_of_ten_thousand_tasks_creates_and_loads_whole,
            a_decision_that_breaks_the_version_rule_is_refused,
            ids_and_names_sort_by_their_bytes,
            json_round_trips_as_given,
            task_output_text_keeps_every_character,
            leases_claim_active_runs_once_each,
            a_commit_with_a_stale_epoch_is_fenced_and_changes_nothing,
            renewal_after_a_takeover_reports_the_lease_lost,
            released_leases_are_claimed_at_once,
            notices_announce_committed_changes,
            concurrent_claimers_never_share_a_run_at_one_epoch,
            replicas_list_their_heartbeats_and_leases,
            maintenances_schedule_update_and_list,
            concurrent_schedules_never_take_more_than_the_headroom,
            drain_test_slots_are_claimed_once_and_updated_by_version,
            concurrent_drain_test_claims_store_one,
        );
    };
    (@cases $mode:ident $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, guard) = $crate::conformance_tests!(@make $mode $make);
                $crate::conformance::$case(store).await;
                drop(guard);
            }
        )*
    };
    (@make required $make:path) => {
        $make().await
    };
    (@make optional $make:path) => {
        match $make().await {
            ::std::option::Option::Some(made) => made,
            ::std::option::Option::None => return,
        }
    };
}

fn state(name: &str, on: &[(&str, &str, u32)], timer: Option<Timer>, is_final: bool) -> StateDef {
    StateDef {
        name: name.to_string(),
        description: None,
        on: on
            .iter()
            .map(|(event, to, count)| EventTransition {
                event: (*event).to_string(),
                to: (*to).to_string(),
                count: *count,
            })
            .collect(),
        timer,
        guards: Vec::new(),
        is_final,
        compat_counter: None,
    }
}

fn machine_def(name: &str, states: Vec<StateDef>) -> MachineDef {
    MachineDef {
        name: name.to_string(),
        description: None,
        initial: states[0].name.clone(),
        states,
        instances: Vec::new(),
        format: DefFormat::Native,
    }
}

/// `a` → `b` → `c` (final), one report per step.
pub fn linear_def(name: &str) -> MachineDef {
    machine_def(
        name,
        vec![
            state("a", &[(DEFAULT_EVENT, "b", 1)], None, false),
            state("b", &[(DEFAULT_EVENT, "c", 1)], None, false),
            state("c", &[], None, true),
        ],
    )
}

/// `wait` → `open` (final) after `count` reports: a barrier, or with a huge count, a counter.
pub fn counting_def(name: &str, count: u32) -> MachineDef {
    machine_def(
        name,
        vec![
            state("wait", &[(DEFAULT_EVENT, "open", count)], None, false),
            state("open", &[], None, true),
        ],
    )
}

/// `sleeping` → `awake` (final) when its timer fires `duration_ms` after entry, or on a report.
pub fn timer_def(name: &str, duration_ms: u64) -> MachineDef {
    machine_def(
        name,
        vec![
            state(
                "sleeping",
                &[(DEFAULT_EVENT, "awake", 1)],
                Some(Timer::After {
                    duration_ms,
                    to: "awake".to_string(),
                }),
                false,
            ),
            state("awake", &[], None, true),
        ],
    )
}

/// A definition to apply; `digest` stands in for the real content hash.
pub fn new_definition(def: &MachineDef, digest: &str) -> NewDefinition {
    NewDefinition {
        kind: STATE_MACHINE.to_string(),
        name: def.name.clone(),
        compiled: serde_json::to_value(def).expect("a MachineDef encodes as JSON"),
        source: format!("kind: StateMachine\nname: {}\n", def.name),
        digest: digest.to_string(),
        created_at_ms: NOW_MS,
        created_by: "tester".to_string(),
    }
}

/// An audit entry whose outcome the store fills in.
pub fn audit_entry(actor: &str, action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        at_ms: NOW_MS,
        actor: actor.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        outcome: String::new(),
        detail: json!({ "remote": "127.0.0.1" }),
    }
}

/// A report of "the step of `state` is done" to `machine`, decided by the engine.
pub fn report_op(
    def: &Arc<MachineDef>,
    machine: &str,
    state: &str,
    reporter: Option<&str>,
    audit: Option<AuditEntry>,
) -> MachineOp {
    let def = Arc::clone(def);
    let state = state.to_string();
    let reporter = reporter.map(str::to_string);
    MachineOp {
        machine: machine.to_string(),
        peers: def.guarded_machines(),
        with_history: false,
        decide: Box::new(move |ctx| {
            let peers: HashMap<String, String> = ctx
                .peers
                .iter()
                .map(|(id, r)| (id.clone(), r.state.clone()))
                .collect();
            let request = Report {
                state: &state,
                event: DEFAULT_EVENT,
                reporter: reporter.as_deref(),
                actor: "tester",
                expect_version: None,
            };
            report(&def, ctx.record, &peers, &request, NOW_MS)
        }),
        audit,
    }
}

/// An op whose decision only looks: it hands what it saw to `inspect` and changes nothing.
fn inspect_op(
    machine: &str,
    peers: &[&str],
    with_history: bool,
    inspect: impl FnOnce(&crate::OpContext<'_>) + Send + 'static,
) -> MachineOp {
    MachineOp {
        machine: machine.to_string(),
        peers: peers.iter().map(|p| (*p).to_string()).collect(),
        with_history,
        decide: Box::new(move |ctx| {
            inspect(ctx);
            Ok(Change {
                record: ctx.record.clone(),
                history: Vec::new(),
            })
        }),
        audit: None,
    }
}

/// Stores `def` and creates its machines (ids with an optional group each).
pub async fn create_machines<S: Store>(
    store: &S,
    def: &MachineDef,
    machines: &[(&str, Option<&str>)],
) {
    let changes = machines
        .iter()
        .map(|(id, group)| new_instance(def, id, *group, NOW_MS, "tester"))
        .collect();
    store
        .apply(
            vec![new_definition(def, &format!("digest-of-{}", def.name))],
            changes,
            vec![],
        )
        .await
        .expect("apply a definition and its machines");
}

async fn run_one<S: Store>(store: &S, op: MachineOp) -> OpOutcome {
    let mut outcomes = store.run(vec![op]).await.expect("run one op");
    assert_eq!(outcomes.len(), 1, "one outcome per op");
    outcomes.remove(0)
}

async fn record<S: Store>(store: &S, id: &str) -> MachineRecord {
    store
        .machine(id)
        .await
        .expect("read a machine")
        .unwrap_or_else(|| panic!("machine `{id}` exists"))
}

async fn outcomes_for<S: Store>(store: &S, target: &str) -> Vec<String> {
    let filter = AuditFilter {
        target: Some(target.to_string()),
        ..AuditFilter::default()
    };
    let log = store.audit_log(&filter).await.expect("read the audit log");
    log.into_iter().map(|r| r.entry.outcome).collect()
}

fn applied(outcome: OpOutcome) -> Change {
    match outcome {
        OpOutcome::Applied(change) => change,
        other => panic!("expected Applied, got {other:?}"),
    }
}

pub async fn ping_and_backend<S: Store>(store: S) {
    store.ping().await.expect("a fresh store answers ping");
    assert!(
        ["sqlite", "postgres"].contains(&store.backend()),
        "backend {}",
        store.backend()
    );
    store.close().await;
}

pub async fn apply_versions_definitions_by_digest<S: Store>(store: S) {
    let web = linear_def("web");
    let first = store
        .apply(vec![new_definition(&web, "d1")], vec![], vec![])
        .await
        .unwrap();
    let (stored, new) = &first.definitions[0];
    assert!(*new);
    assert_eq!(stored.version, 1);
    assert_eq!(stored.compiled, serde_json::to_value(&web).unwrap());
    assert_eq!(stored.digest, "d1");

    let again = store
        .apply(vec![new_definition(&web, "d1")], vec![], vec![])
        .await
        .unwrap();
    assert_eq!(
        again.definitions,
        vec![(stored.clone(), false)],
        "same digest, same version"
    );

    let mut changed = web.clone();
    changed.description = Some("now with a description".to_string());
    let second = store
        .apply(vec![new_definition(&changed, "d2")], vec![], vec![])
        .await
        .unwrap();
    assert_eq!(
        (second.definitions[0].0.version, second.definitions[0].1),
        (2, true)
    );
    let latest = store
        .definition(STATE_MACHINE, "web")
        .await
        .unwrap()
        .expect("web is stored");
    assert_eq!(latest.version, 2);
    assert_eq!(latest.compiled, serde_json::to_value(&changed).unwrap());
    assert_eq!(latest, second.definitions[0].0);

    // Several versions in one apply chain up, and a repeat inside it is not a new version.
    let chained = store
        .apply(
            vec![
                new_definition(&web, "d3"),
                new_definition(&web, "d3"),
                new_definition(&web, "d4"),
            ],
            vec![],
            vec![],
        )
        .await
        .unwrap();
    let versions: Vec<(i64, bool)> = chained
        .definitions
        .iter()
        .map(|(d, new)| (d.version, *new))
        .collect();
    assert_eq!(versions, vec![(3, true), (3, false), (4, true)]);

    // Kinds are separate namespaces; listings show the latest version of each, by name.
    let mut runbook = new_definition(&web, "r1");
    runbook.kind = "Runbook".to_string();
    let api = linear_def("api");
    store
        .apply(vec![runbook, new_definition(&api, "a1")], vec![], vec![])
        .await
        .unwrap();
    let all = store.definitions(None).await.unwrap();
    let listed: Vec<(&str, &str, i64)> = all
        .iter()
        .map(|d| (d.name.as_str(), d.kind.as_str(), d.version))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("api", STATE_MACHINE, 1),
            ("web", "Runbook", 1),
            ("web", STATE_MACHINE, 4)
        ]
    );
    let machines_only = store.definitions(Some(STATE_MACHINE)).await.unwrap();
    assert_eq!(
        machines_only
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        vec!["api", "web"]
    );
    assert_eq!(
        store.definition(STATE_MACHINE, "missing").await.unwrap(),
        None
    );
    store.close().await;
}

pub async fn apply_creates_machines_and_skips_existing<S: Store>(store: S) {
    let web = linear_def("web");
    let first = store
        .apply(
            vec![new_definition(&web, "d1")],
            vec![
                new_instance(&web, "m1", Some("g1"), NOW_MS, "tester"),
                new_instance(&web, "m2", Some("g1"), NOW_MS, "tester"),
            ],
            vec![audit_entry("admin", "definition.apply", "web")],
        )
        .await
        .unwrap();
    assert_eq!(
        first
            .created
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["m1", "m2"]
    );
    assert_eq!(record(&store, "m1").await, first.created[0]);
    let history = store.history("m1", 0, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].kind, HistoryKind::Created);
    assert!(history[0].seq > 0, "seq assigned: {}", history[0].seq);
    assert_eq!(history[0].version, 1);

    // An existing id is left alone, even if the new change differs; new ids are created.
    let second = store
        .apply(
            vec![new_definition(&web, "d1")],
            vec![
                new_instance(&web, "m2", Some("g2"), NOW_MS + 1, "tester"),
                new_instance(&web, "m3", None, NOW_MS, "tester"),
            ],
            vec![audit_entry("admin", "definition.apply", "web")],
        )
        .await
        .unwrap();
    assert!(!second.definitions[0].1);
    assert_eq!(
        second
            .created
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["m3"]
    );
    let m2 = record(&store, "m2").await;
    assert_eq!(
        (m2.group.as_deref(), m2.created_at_ms),
        (Some("g1"), NOW_MS)
    );
    assert_eq!(store.history("m2", 0, 10).await.unwrap().len(), 1);

    let third = store
        .apply(
            vec![new_definition(&web, "d1")],
            vec![new_instance(&web, "m1", None, NOW_MS, "tester")],
            vec![audit_entry("admin", "definition.apply", "web")],
        )
        .await
        .unwrap();
    assert!(third.created.is_empty());
    assert_eq!(outcomes_for(&store, "web").await, vec!["ok", "ok", "noop"]);

    // The same new id twice in one apply: the first wins.
    let twice = store
        .apply(
            vec![],
            vec![
                new_instance(&web, "m4", Some("first"), NOW_MS, "tester"),
                new_instance(&web, "m4", Some("second"), NOW_MS, "tester"),
            ],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(twice.created.len(), 1);
    assert_eq!(record(&store, "m4").await.group.as_deref(), Some("first"));
    store.close().await;
}

pub async fn run_applies_refuses_noops_and_not_found<S: Store>(store: S) {
    let web = Arc::new(linear_def("web"));
    let gate = Arc::new(counting_def("gate", 3));
    create_machines(&store, &web, &[("m1", None)]).await;
    create_machines(&store, &gate, &[("barrier", None)]).await;
    let created_seq = store.history("m1", 0, 1).await.unwrap()[0].seq;

    let audit = |target: &str| Some(audit_entry("ops", "machine.report", target));
    let outcomes = store
        .run(vec![
            report_op(&web, "m1", "a", None, audit("m1")),
            report_op(&web, "m1", "c", None, audit("m1")),
            report_op(&gate, "barrier", "wait", Some("vm1"), audit("barrier")),
            report_op(&gate, "barrier", "wait", Some("vm1"), audit("barrier")),
            report_op(&web, "ghost", "a", None, audit("ghost")),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 5);
    let mut outcomes = outcomes.into_iter();

    let moved = applied(outcomes.next().unwrap());
    assert_eq!(
        (moved.record.state.as_str(), moved.record.version),
        ("b", 2)
    );
    assert_eq!(moved.history.len(), 1);
    assert!(
        moved.history[0].seq > created_seq,
        "seq assigned after the created entry"
    );
    assert_eq!(record(&store, "m1").await, moved.record);
    assert_eq!(
        store.history("m1", created_seq, 10).await.unwrap(),
        moved.history
    );

    match outcomes.next().unwrap() {
        OpOutcome::Refused(refusal, current) => {
            assert_eq!(
                refusal,
                Refusal::NotCurrent {
                    state: "c".to_string(),
                    current: "b".to_string()
                }
            );
            assert_eq!(
                current, moved.record,
                "a refusal returns the current record"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let counted = applied(outcomes.next().unwrap());
    assert_eq!(counted.record.counter, 1);
    match outcomes.next().unwrap() {
        OpOutcome::Unchanged(current) => assert_eq!(current, counted.record),
        other => panic!("a duplicate report is a no-op, got {other:?}"),
    }
    assert_eq!(outcomes.next().unwrap(), OpOutcome::NotFound);

    assert_eq!(record(&store, "barrier").await, counted.record);
    assert_eq!(outcomes_for(&store, "m1").await, vec!["ok", "not_current"]);
    assert_eq!(outcomes_for(&store, "barrier").await, vec!["ok", "noop"]);
    assert_eq!(outcomes_for(&store, "ghost").await, vec!["not_found"]);
    store.close().await;
}

pub async fn ops_in_one_call_see_each_other<S: Store>(store: S) {
    let web = Arc::new(linear_def("web"));
    let counter = Arc::new(counting_def("counter", 1_000));
    create_machines(&store, &web, &[("m1", None), ("p", None)]).await;
    create_machines(&store, &counter, &[("c1", None)]).await;

    let outcomes = store
        .run(vec![
            report_op(&web, "m1", "a", None, None),
            report_op(&web, "m1", "b", None, None),
        ])
        .await
        .unwrap();
    let last = applied(outcomes.into_iter().nth(1).unwrap());
    assert_eq!((last.record.state.as_str(), last.record.version), ("c", 3));

    let ops = (0..10)
        .map(|_| report_op(&counter, "c1", "wait", None, None))
        .collect();
    let changes: Vec<Change> = store
        .run(ops)
        .await
        .unwrap()
        .into_iter()
        .map(applied)
        .collect();
    let counters: Vec<u32> = changes.iter().map(|c| c.record.counter).collect();
    assert_eq!(counters, (1..=10).collect::<Vec<u32>>());
    let versions: Vec<i64> = changes.iter().map(|c| c.record.version).collect();
    assert_eq!(versions, (2..=11).collect::<Vec<i64>>());
    let seqs: Vec<i64> = changes.iter().map(|c| c.history[0].seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs ascend: {seqs:?}"
    );

    // A later op sees an earlier op's peer change and its history, with final seqs.
    let seen_peers = Arc::new(Mutex::new(None));
    let seen_history = Arc::new(Mutex::new(None));
    let (peers_out, history_out) = (Arc::clone(&seen_peers), Arc::clone(&seen_history));
    let outcomes = store
        .run(vec![
            report_op(&web, "p", "a", None, None),
            report_op(&web, "m1", "c", None, None),
            inspect_op("m1", &["p", "nobody"], true, move |ctx| {
                let peers: BTreeMap<String, String> = ctx
                    .peers
                    .iter()
                    .map(|(id, r)| (id.clone(), r.state.clone()))
                    .collect();
                *peers_out.lock().unwrap() = Some(peers);
                *history_out.lock().unwrap() = ctx.history.map(<[_]>::to_vec);
            }),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], OpOutcome::Applied(_)));
    assert!(matches!(
        outcomes[1],
        OpOutcome::Refused(Refusal::Final { .. }, _)
    ));
    assert!(matches!(outcomes[2], OpOutcome::Unchanged(_)));
    let peers = seen_peers.lock().unwrap().take().expect("the decision ran");
    assert_eq!(
        peers,
        BTreeMap::from([("p".to_string(), "b".to_string())]),
        "missing peers left out"
    );
    let history = seen_history
        .lock()
        .unwrap()
        .take()
        .expect("history was asked for");
    assert_eq!(history, store.history("m1", 0, 100).await.unwrap());
    let kinds: Vec<HistoryKind> = history.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            HistoryKind::Created,
            HistoryKind::Transition,
            HistoryKind::Transition
        ]
    );
    store.close().await;
}

/// Sends `REPORTS_PER_TASK` single-op calls from each of `CONCURRENT_TASKS` tasks; task `t`'s
/// report `n` goes to `machines[(t + n) % len]`. Returns acknowledged reports per machine.
async fn report_concurrently<S: Store>(
    store: Arc<S>,
    def: Arc<MachineDef>,
    machines: Vec<String>,
) -> Vec<u64> {
    let acknowledged: Arc<Vec<AtomicU64>> =
        Arc::new(machines.iter().map(|_| AtomicU64::new(0)).collect());
    let machines = Arc::new(machines);
    let mut tasks = Vec::new();
    for task in 0..CONCURRENT_TASKS {
        let (store, def, machines, acknowledged) = (
            Arc::clone(&store),
            Arc::clone(&def),
            Arc::clone(&machines),
            Arc::clone(&acknowledged),
        );
        tasks.push(tokio::spawn(async move {
            for n in 0..REPORTS_PER_TASK {
                let index = (task + n) % machines.len();
                let op = report_op(&def, &machines[index], "wait", None, None);
                match store.run(vec![op]).await {
                    Ok(outcomes) => {
                        applied(outcomes.into_iter().next().expect("one outcome"));
                        acknowledged[index].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => panic!("report {n} of task {task} failed: {error}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a reporting task finished");
    }
    acknowledged
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect()
}

pub async fn concurrent_reports_on_one_machine_lose_nothing<S: Store>(store: S) {
    let def = Arc::new(counting_def("hot", levee_model::MAX_TRANSITION_COUNT));
    create_machines(&store, &def, &[("hot", None)]).await;
    let store = Arc::new(store);
    let acknowledged = report_concurrently(Arc::clone(&store), def, vec!["hot".to_string()]).await;
    let stored = record(&*store, "hot").await;
    assert_eq!(
        u64::from(stored.counter),
        acknowledged[0],
        "every acknowledged report counted"
    );
    assert_eq!(
        acknowledged[0],
        (CONCURRENT_TASKS * REPORTS_PER_TASK) as u64
    );
    assert_eq!(stored.version, 1 + acknowledged[0] as i64);
    store.close().await;
}

pub async fn concurrent_reports_on_many_machines_lose_nothing<S: Store>(store: S) {
    let def = Arc::new(counting_def("fleet", levee_model::MAX_TRANSITION_COUNT));
    let ids: Vec<String> = (0..CONCURRENT_TASKS)
        .map(|i| format!("vm-{i:02}"))
        .collect();
    let machines: Vec<(&str, Option<&str>)> = ids.iter().map(|id| (id.as_str(), None)).collect();
    create_machines(&store, &def, &machines).await;
    let store = Arc::new(store);
    let acknowledged = report_concurrently(Arc::clone(&store), def, ids.clone()).await;
    for (id, acknowledged) in ids.iter().zip(acknowledged) {
        let stored = record(&*store, id).await;
        assert_eq!(u64::from(stored.counter), acknowledged, "machine {id}");
        assert_eq!(acknowledged, REPORTS_PER_TASK as u64, "machine {id}");
        assert_eq!(stored.version, 1 + acknowledged as i64, "machine {id}");
    }
    store.close().await;
}

pub async fn history_is_ordered_and_pages<S: Store>(store: S) {
    let def = Arc::new(counting_def("counter", 1_000));
    create_machines(&store, &def, &[("c", None), ("d", None)]).await;
    for _ in 0..25 {
        store
            .run(vec![
                report_op(&def, "c", "wait", None, None),
                report_op(&def, "d", "wait", None, None),
            ])
            .await
            .unwrap();
    }
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = store.history("c", after, 10).await.unwrap();
        assert!(page.len() <= 10, "limit respected");
        let Some(last) = page.last() else { break };
        after = last.seq;
        pages.push(page);
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 6]
    );
    let all: Vec<_> = pages.into_iter().flatten().collect();
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "seq ascending");
    assert!(all.iter().all(|e| e.machine == "c"));
    assert_eq!(
        all.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=26).collect::<Vec<_>>()
    );
    assert_eq!(all.last().unwrap().counter, 25);
    assert_eq!(
        store.history("c", 0, 0).await.unwrap(),
        all,
        "limit 0 means the maximum page"
    );
    assert!(store.history("ghost", 0, 10).await.unwrap().is_empty());
    store.close().await;
}

pub async fn due_timers_are_earliest_first_and_limited<S: Store>(store: S) {
    let sleepy = Arc::new(timer_def("sleepy", 1_000));
    let plain = linear_def("plain");
    let at = |id: &str, created: i64| new_instance(&sleepy, id, None, created, "tester");
    store
        .apply(
            vec![new_definition(&sleepy, "s1"), new_definition(&plain, "p1")],
            vec![
                at("t3", NOW_MS),
                at("t1", NOW_MS - 2_000),
                at("t2b", NOW_MS - 1_000),
                at("t2", NOW_MS - 1_000),
                at("later", NOW_MS + 5_000),
                new_instance(&plain, "no-timer", None, NOW_MS - 10_000, "tester"),
            ],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        store.due_timers(NOW_MS, 100).await.unwrap(),
        vec!["t1", "t2", "t2b"]
    );
    assert_eq!(store.due_timers(NOW_MS, 2).await.unwrap(), vec!["t1", "t2"]);
    assert!(
        store
            .due_timers(NOW_MS - 1_001, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.due_timers(NOW_MS + 1_000, 10).await.unwrap(),
        vec!["t1", "t2", "t2b", "t3"]
    );

    // Firing a timer (as the timer worker does) takes the machine off the list.
    let def = Arc::clone(&sleepy);
    let fire = MachineOp {
        machine: "t1".to_string(),
        peers: Vec::new(),
        with_history: false,
        decide: Box::new(move |ctx| {
            Ok(
                catch_up(&def, ctx.record, NOW_MS).unwrap_or_else(|| Change {
                    record: ctx.record.clone(),
                    history: Vec::new(),
                }),
            )
        }),
        audit: None,
    };
    let fired = applied(run_one(&store, fire).await);
    assert_eq!(
        (fired.record.state.as_str(), fired.record.timer_due_ms),
        ("awake", None)
    );
    assert_eq!(
        store.due_timers(NOW_MS, 100).await.unwrap(),
        vec!["t2", "t2b"]
    );
    store.close().await;
}

pub async fn audit_log_pages_and_filters<S: Store>(store: S) {
    let entry = |i: usize| AuditEntry {
        at_ms: NOW_MS + i as i64,
        actor: if i.is_multiple_of(2) { "alice" } else { "bob" }.to_string(),
        action: "machine.report".to_string(),
        target: format!("t{}", i % 3),
        outcome: "ok".to_string(),
        detail: json!({ "i": i, "nested": { "list": [1, 2, 3] } }),
    };
    for i in 0..30 {
        store.audit(entry(i)).await.unwrap();
    }
    let mut all = Vec::new();
    let mut after_seq = None;
    loop {
        let filter = AuditFilter {
            after_seq,
            limit: 7,
            ..AuditFilter::default()
        };
        let page = store.audit_log(&filter).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after_seq = Some(last.seq);
        all.extend(page);
    }
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "seq ascending");
    assert_eq!(
        all.iter().map(|r| r.entry.clone()).collect::<Vec<_>>(),
        (0..30).map(entry).collect::<Vec<_>>()
    );

    let count = |actor: Option<&str>, target: Option<&str>, after_seq: Option<i64>| {
        let filter = AuditFilter {
            after_seq,
            actor: actor.map(str::to_string),
            target: target.map(str::to_string),
            limit: 0,
        };
        let store = &store;
        async move { store.audit_log(&filter).await.unwrap() }
    };
    let alice = count(Some("alice"), None, None).await;
    assert_eq!(alice.len(), 15);
    assert!(alice.iter().all(|r| r.entry.actor == "alice"));
    assert_eq!(count(None, Some("t1"), None).await.len(), 10);
    let both = count(Some("alice"), Some("t0"), None).await;
    assert_eq!(
        both.iter()
            .map(|r| r.entry.detail["i"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 6, 12, 18, 24]
    );
    let after = count(Some("alice"), Some("t0"), Some(both[2].seq)).await;
    assert_eq!(after, both[3..].to_vec());
    store.close().await;
}

pub async fn tokens_create_look_up_and_revoke<S: Store>(store: S) {
    let token = |name: &str, hash: &str| TokenRecord {
        name: name.to_string(),
        role: "operator".to_string(),
        scope: Some("group:web".to_string()),
        hash: hash.to_string(),
        created_at_ms: NOW_MS,
        created_by: "admin".to_string(),
        revoked_at_ms: None,
    };
    let audit = |name: &str| Some(audit_entry("admin", "token.create", name));
    store
        .create_token(token("ops", "h1"), audit("ops"))
        .await
        .unwrap();
    assert_eq!(store.tokens().await.unwrap(), vec![token("ops", "h1")]);

    let same_name = store.create_token(token("ops", "h2"), audit("ops")).await;
    assert!(
        matches!(same_name, Err(Error::Conflict(_))),
        "{same_name:?}"
    );
    let same_hash = store
        .create_token(token("other", "h1"), audit("other"))
        .await;
    assert!(
        matches!(same_hash, Err(Error::Conflict(_))),
        "{same_hash:?}"
    );
    assert_eq!(
        store.token_by_hash("h1").await.unwrap(),
        Some(token("ops", "h1"))
    );
    assert_eq!(store.token_by_hash("h2").await.unwrap(), None);

    let mut admin = token("admin", "h3");
    (admin.role, admin.scope) = ("admin".to_string(), None);
    store.create_token(admin.clone(), None).await.unwrap();
    assert_eq!(
        store.tokens().await.unwrap(),
        vec![admin, token("ops", "h1")]
    );

    let revoke_audit = |name: &str| Some(audit_entry("admin", "token.revoke", name));
    assert!(
        store
            .revoke_token("ops", NOW_MS + 5, revoke_audit("ops"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_token("ops", NOW_MS + 6, revoke_audit("ops"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_token("ghost", NOW_MS, revoke_audit("ghost"))
            .await
            .unwrap()
    );
    let revoked = store
        .token_by_hash("h1")
        .await
        .unwrap()
        .expect("a revoked token is still found");
    assert_eq!(
        revoked.revoked_at_ms,
        Some(NOW_MS + 5),
        "the first revocation's time is kept"
    );

    let reused = store.create_token(token("ops", "h4"), audit("ops")).await;
    assert!(
        matches!(reused, Err(Error::Conflict(_))),
        "a revoked name stays taken: {reused:?}"
    );
    assert_eq!(
        outcomes_for(&store, "ops").await,
        vec!["ok", "conflict", "ok", "not_found", "conflict"]
    );
    assert_eq!(outcomes_for(&store, "other").await, vec!["conflict"]);
    assert_eq!(outcomes_for(&store, "ghost").await, vec!["not_found"]);
    store.close().await;
}

pub async fn machines_filter_and_page_by_id<S: Store>(store: S) {
    let web = linear_def("web");
    let db = linear_def("db");
    create_machines(
        &store,
        &web,
        &[
            ("w05", Some("g2")),
            ("w01", Some("g1")),
            ("w03", Some("g1")),
            ("w02", Some("g1")),
            ("w04", Some("g2")),
        ],
    )
    .await;
    create_machines(&store, &db, &[("d02", None), ("d01", Some("g1"))]).await;
    let ids = |records: Vec<MachineRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let list =
        |definition: Option<&str>, group: Option<&str>, after_id: Option<&str>, limit: u32| {
            let filter = MachineFilter {
                definition: definition.map(str::to_string),
                group: group.map(str::to_string),
                after_id: after_id.map(str::to_string),
                limit,
            };
            let store = &store;
            async move { ids(store.machines(&filter).await.unwrap()) }
        };
    assert_eq!(
        list(None, None, None, 0).await,
        vec!["d01", "d02", "w01", "w02", "w03", "w04", "w05"]
    );
    assert_eq!(
        list(Some("web"), None, None, 100).await,
        vec!["w01", "w02", "w03", "w04", "w05"]
    );
    assert_eq!(
        list(None, Some("g1"), None, 100).await,
        vec!["d01", "w01", "w02", "w03"]
    );
    assert_eq!(
        list(Some("web"), Some("g1"), Some("w01"), 100).await,
        vec!["w02", "w03"]
    );
    assert_eq!(
        list(Some("nothing"), None, None, 100).await,
        Vec::<String>::new()
    );

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = list(Some("web"), None, after.as_deref(), 2).await;
        assert!(page.len() <= 2);
        let Some(last) = page.last().cloned() else {
            break;
        };
        paged.extend(page);
        after = Some(last);
    }
    assert_eq!(paged, vec!["w01", "w02", "w03", "w04", "w05"]);
    store.close().await;
}

pub async fn panicking_decision_fails_only_its_call<S: Store>(store: S) {
    let web = Arc::new(linear_def("web"));
    let counter = Arc::new(counting_def("counter", 100_000));
    create_machines(&store, &web, &[("m1", None), ("m2", None)]).await;
    create_machines(&store, &counter, &[("c", None)]).await;
    let store = Arc::new(store);

    let panicking = |machine: &str| MachineOp {
        machine: machine.to_string(),
        peers: Vec::new(),
        with_history: false,
        decide: Box::new(|_| panic!("conformance: a decision that panics")),
        audit: Some(audit_entry("ops", "machine.report", "panicking-call")),
    };
    // Calls that succeed, racing calls that panic, so they likely share commits.
    let mut good = Vec::new();
    for _ in 0..20 {
        let (store, counter) = (Arc::clone(&store), Arc::clone(&counter));
        good.push(tokio::spawn(async move {
            store
                .run(vec![report_op(&counter, "c", "wait", None, None)])
                .await
        }));
    }
    let mut bad = Vec::new();
    for _ in 0..5 {
        let (store, counter, op) = (Arc::clone(&store), Arc::clone(&counter), panicking("m1"));
        bad.push(tokio::spawn(async move {
            // The call's first op is valid; it must be taken back with the panicking one.
            let first = report_op(
                &counter,
                "c",
                "wait",
                None,
                Some(audit_entry("ops", "machine.report", "panicking-call")),
            );
            store.run(vec![first, op]).await
        }));
    }
    for task in bad {
        let result = task.await.expect("the caller itself does not panic");
        assert!(
            matches!(result, Err(Error::Corrupt(_))),
            "a panicking call fails: {result:?}"
        );
    }
    for task in good {
        let outcomes = task
            .await
            .unwrap()
            .expect("a call without a panic succeeds");
        applied(outcomes.into_iter().next().unwrap());
    }
    assert_eq!(
        record(&*store, "c").await.counter,
        20,
        "nothing of a failed call is kept"
    );
    assert_eq!(record(&*store, "m1").await.version, 1);
    assert!(
        outcomes_for(&*store, "panicking-call").await.is_empty(),
        "no audit from a failed call"
    );

    // The writer survived.
    let after = run_one(&*store, report_op(&web, "m2", "a", None, None)).await;
    assert_eq!(applied(after).record.state, "b");
    store.close().await;
}

/// Writes bigger than any one statement may carry (SQLite caps parameters per statement,
/// PostgreSQL too): an apply of many machines, a call of many ops, many audit entries.
pub async fn large_writes_commit_whole<S: Store>(store: S) {
    const MACHINES: usize = 3_000;
    let def = Arc::new(counting_def("big", levee_model::MAX_TRANSITION_COUNT));
    let ids: Vec<String> = (0..MACHINES).map(|i| format!("big-{i:05}")).collect();
    let changes = ids
        .iter()
        .map(|id| new_instance(&def, id, Some("big"), NOW_MS, "tester"))
        .collect();
    let applied_machines = store
        .apply(vec![new_definition(&def, "big-1")], changes, vec![])
        .await
        .expect("a large apply");
    assert_eq!(applied_machines.created.len(), MACHINES);
    let filter = MachineFilter {
        group: Some("big".to_string()),
        ..MachineFilter::default()
    };
    assert_eq!(store.machines(&filter).await.unwrap().len(), MACHINES);

    // One call touching every machine once, and one machine many times.
    let mut ops: Vec<MachineOp> = ids
        .iter()
        .map(|id| {
            let audit = Some(audit_entry("ops", "machine.report", "big-call"));
            report_op(&def, id, "wait", None, audit)
        })
        .collect();
    ops.extend((0..MACHINES).map(|_| report_op(&def, &ids[0], "wait", None, None)));
    let outcomes = store.run(ops).await.expect("a large call");
    assert_eq!(outcomes.len(), 2 * MACHINES);
    let last = applied(outcomes.into_iter().last().unwrap());
    assert_eq!(last.record.counter, 1 + MACHINES as u32);
    assert_eq!(record(&store, &ids[MACHINES - 1]).await.counter, 1);
    assert_eq!(record(&store, &ids[0]).await, last.record);
    let history = store.history(&ids[0], 0, 0).await.unwrap();
    assert_eq!(history.len(), 2 + MACHINES);
    assert!(history.windows(2).all(|w| w[0].seq < w[1].seq));
    let filter = AuditFilter {
        target: Some("big-call".to_string()),
        ..AuditFilter::default()
    };
    assert_eq!(store.audit_log(&filter).await.unwrap().len(), MACHINES);
    store.close().await;
}

pub async fn close_refuses_later_writes<S: Store>(store: S) {
    let web = Arc::new(linear_def("web"));
    create_machines(&store, &web, &[("m1", None)]).await;
    let store = Arc::new(store);
    // Writes queued before close are committed; close waits for them.
    let mut queued = Vec::new();
    for _ in 0..10 {
        let store = Arc::clone(&store);
        queued.push(tokio::spawn(async move {
            store
                .audit(audit_entry("ops", "test.queued", "queue"))
                .await
        }));
    }
    tokio::task::yield_now().await;
    store.close().await;
    let mut committed = 0;
    for task in queued {
        match task.await.unwrap() {
            Ok(()) => committed += 1,
            Err(error) => assert!(matches!(error, Error::Unavailable(_)), "{error}"),
        }
    }
    assert!(committed <= 10);
    let late = store
        .run(vec![report_op(&web, "m1", "a", None, None)])
        .await;
    assert!(
        matches!(late, Err(Error::Unavailable(_))),
        "a write after close: {late:?}"
    );
    // Closing again is harmless.
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Runs

/// `a` → {`b`, `c`} → `d`: the diamond.
pub fn diamond_plan() -> RunPlan {
    RunPlan::new(vec![
        PlanTask::new("a", "shell"),
        PlanTask::new("b", "shell").needs(&["a"]),
        PlanTask::new("c", "shell").needs(&["a"]),
        PlanTask::new("d", "shell").needs(&["b", "c"]),
    ])
    .expect("the diamond is a valid plan")
}

/// `tasks` independent tasks, `t00000`, `t00001`, ...
pub fn wide_plan(tasks: usize) -> RunPlan {
    RunPlan::new(
        (0..tasks)
            .map(|i| PlanTask::new(format!("t{i:05}"), "shell"))
            .collect(),
    )
    .expect("independent tasks are a valid plan")
}

/// An operator control, as the server would pass it to the engine.
pub fn control(control: Control) -> Event {
    Event::Control {
        by: Operator {
            actor: "tester".to_string(),
            reason: "conformance".to_string(),
        },
        control,
    }
}

/// A run driven by the engine: its plan, and the state the store should now hold.
pub struct TestRun {
    pub id: String,
    pub plan: RunPlan,
    pub state: RunState,
}

impl TestRun {
    pub fn new(id: &str, plan: RunPlan, created_at_ms: i64) -> TestRun {
        let state = RunState::new(&plan, TEST_RUN_MAX_PARALLEL_TASKS, created_at_ms)
            .expect("a valid parallelism");
        TestRun {
            id: id.to_string(),
            plan,
            state,
        }
    }

    /// The run to create; its audit entry targets the run id.
    pub fn new_run(&self, name: Option<&str>, runbook: &str) -> NewRun {
        NewRun {
            id: self.id.clone(),
            name: name.map(str::to_string),
            runbook: runbook.to_string(),
            runbook_version: 3,
            params: json!({ "region": "eu-west", "batch": 2 }),
            spec: json!({ "tasks": self.plan.tasks().iter().map(|t| &t.id).collect::<Vec<_>>() }),
            created_by: "tester".to_string(),
            state: self.state.clone(),
        }
    }

    /// What the store returns for the run created with [`TestRun::new_run`], in its current
    /// state.
    pub fn stored(&self, name: Option<&str>, runbook: &str) -> StoredRun {
        let new = self.new_run(name, runbook);
        StoredRun {
            id: new.id,
            name: new.name,
            runbook: new.runbook,
            runbook_version: new.runbook_version,
            params: new.params,
            spec: new.spec,
            created_by: new.created_by,
            state: self.state.clone(),
        }
    }

    /// The engine's change for `event` at `now_ms`, against the current state.
    pub fn decide(&self, event: &Event, now_ms: i64) -> RunChange {
        let ctx = Context {
            now_ms,
            global_pause: false,
        };
        apply(&self.plan, &self.state, event, ctx)
            .unwrap_or_else(|refusal| panic!("run `{}`: {event:?} refused: {refusal}", self.id))
            .change
    }

    /// A commit of `change`, decided against the current state.
    pub fn commit_of(&self, change: RunChange) -> RunCommit {
        RunCommit {
            run_id: self.id.clone(),
            expected_version: self.state.run.version,
            change,
            outputs: Vec::new(),
            audits: Vec::new(),
            epoch: None,
        }
    }

    /// Decides `event`, commits the change, and applies it to the local state.
    pub async fn step<S: Store>(&mut self, store: &S, event: Event, now_ms: i64) -> RunChange {
        let change = self.decide(&event, now_ms);
        store
            .commit_run(self.commit_of(change.clone()))
            .await
            .unwrap_or_else(|e| panic!("run `{}`: commit {event:?}: {e}", self.id));
        self.state.commit(&change);
        change
    }

    /// The attempt `task` is running.
    pub fn attempt(&self, task: &str) -> u32 {
        match self.state.task(task).map(|t| &t.status) {
            Some(TaskStatus::Running { attempt, .. }) => *attempt,
            other => panic!("run `{}`: task `{task}` is not running: {other:?}", self.id),
        }
    }

    /// Reports `task`'s running attempt started and then succeeded at `now_ms`.
    pub async fn succeed<S: Store>(&mut self, store: &S, task: &str, now_ms: i64) {
        let attempt = self.attempt(task);
        let started = Event::TaskStarted {
            task: task.to_string(),
            attempt,
        };
        self.step(store, started, now_ms).await;
        let succeeded = Event::TaskSucceeded {
            task: task.to_string(),
            attempt,
        };
        self.step(store, succeeded, now_ms).await;
    }

    /// Reports `task`'s running attempt failed for good at `now_ms`.
    pub async fn fail<S: Store>(&mut self, store: &S, task: &str, now_ms: i64) {
        let event = Event::TaskFailed {
            task: task.to_string(),
            attempt: self.attempt(task),
            error: "exit status 1".to_string(),
            retryable: false,
        };
        self.step(store, event, now_ms).await;
    }
}

/// Creates the run, expecting it to be new.
pub async fn create_test_run<S: Store>(
    store: &S,
    run: &TestRun,
    name: Option<&str>,
    runbook: &str,
) -> StoredRun {
    let audit = Some(audit_entry("tester", "run.create", &run.id));
    match store.create_run(run.new_run(name, runbook), audit).await {
        Ok(CreatedRun::Created(stored)) => stored,
        other => panic!("create run `{}`: {other:?}", run.id),
    }
}

async fn loaded<S: Store>(store: &S, id: &str) -> StoredRun {
    store
        .load_run(id)
        .await
        .expect("load a run")
        .unwrap_or_else(|| panic!("run `{id}` exists"))
}

async fn whole_journal<S: Store>(store: &S, id: &str) -> Vec<crate::JournalRecord> {
    store.run_journal(id, 0, 0).await.expect("read a journal")
}

fn run_ids(summaries: &[crate::RunSummary]) -> Vec<&str> {
    summaries.iter().map(|s| s.id.as_str()).collect()
}

fn is_conflict<T: std::fmt::Debug>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::Conflict(_)))
}

pub async fn runs_create_and_load_round_trip<S: Store>(store: S) {
    let mut run = TestRun::new("run-1", diamond_plan(), NOW_MS);
    let created = create_test_run(&store, &run, None, "deploy").await;
    assert_eq!(created, run.stored(None, "deploy"));
    assert_eq!(loaded(&store, "run-1").await, created);
    assert_eq!(store.load_run("ghost").await.unwrap(), None);

    // Real engine changes: start (dispatches `a`), then `a` succeeds (dispatches `b`, `c`).
    let start = run.step(&store, control(Control::Start), NOW_MS + 10).await;
    assert_eq!(start.run.status, RunStatus::Running);
    assert_eq!(loaded(&store, "run-1").await.state, run.state);
    run.succeed(&store, "a", NOW_MS + 20).await;
    let stored = loaded(&store, "run-1").await;
    assert_eq!(stored, run.stored(None, "deploy"));
    assert_eq!(stored.state.run.version, 4);
    assert_eq!(
        stored
            .state
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), t.status.name()))
            .collect::<Vec<_>>(),
        vec![
            ("a", "succeeded"),
            ("b", "running"),
            ("c", "running"),
            ("d", "waiting")
        ],
        "tasks in plan order"
    );
    let list = store.runs(&RunFilter::default()).await.unwrap();
    assert_eq!(list.len(), 1);
    let summary = &list[0];
    assert_eq!(
        (
            summary.status,
            summary.version,
            summary.started_at_ms,
            summary.runbook_version
        ),
        (RunStatus::Running, 4, Some(NOW_MS + 10), 3)
    );
    assert_eq!(
        (
            summary.tasks_total,
            summary.tasks_done,
            summary.tasks_running,
            summary.tasks_failed
        ),
        (4, 1, 2, 0)
    );
    assert_eq!(outcomes_for(&store, "run-1").await, vec!["ok"]);
    store.close().await;
}

pub async fn runs_create_with_a_taken_name_returns_the_existing_run<S: Store>(store: S) {
    let mut first = TestRun::new("run-1", diamond_plan(), NOW_MS);
    create_test_run(&store, &first, Some("nightly"), "deploy").await;
    first
        .step(&store, control(Control::Start), NOW_MS + 1)
        .await;
    let journal = whole_journal(&store, "run-1").await;

    // Same name, another id: the first run comes back as it is now, nothing else is written.
    let second = TestRun::new("run-2", wide_plan(3), NOW_MS + 5);
    let audit = Some(audit_entry("tester", "run.create", "run-2"));
    let again = store
        .create_run(second.new_run(Some("nightly"), "other"), audit)
        .await
        .unwrap();
    assert_eq!(
        again,
        CreatedRun::Existing(first.stored(Some("nightly"), "deploy"))
    );
    assert_eq!(store.load_run("run-2").await.unwrap(), None);
    assert_eq!(
        whole_journal(&store, "run-1").await,
        journal,
        "the existing run's journal is untouched"
    );
    assert_eq!(outcomes_for(&store, "run-2").await, vec!["noop"]);

    // The same id again is a conflict, audited as such.
    let clash = TestRun::new("run-1", wide_plan(2), NOW_MS + 6);
    let audit = Some(audit_entry("tester", "run.create", "run-1"));
    let result = store.create_run(clash.new_run(None, "deploy"), audit).await;
    assert!(is_conflict(&result), "{result:?}");
    assert_eq!(outcomes_for(&store, "run-1").await, vec!["ok", "conflict"]);
    assert_eq!(
        loaded(&store, "run-1").await,
        first.stored(Some("nightly"), "deploy")
    );

    // Two concurrent creates with one name: one run is created, the other call gets it.
    let (a, b) = (
        TestRun::new("run-3", wide_plan(2), NOW_MS + 7),
        TestRun::new("run-4", wide_plan(2), NOW_MS + 7),
    );
    let (ra, rb) = tokio::join!(
        store.create_run(a.new_run(Some("weekly"), "deploy"), None),
        store.create_run(b.new_run(Some("weekly"), "deploy"), None),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let winner = match (&ra, &rb) {
        (CreatedRun::Created(x), CreatedRun::Existing(y))
        | (CreatedRun::Existing(y), CreatedRun::Created(x)) => {
            assert_eq!(x, y);
            x.id.clone()
        }
        other => panic!("one create wins: {other:?}"),
    };
    let all = store.runs(&RunFilter::default()).await.unwrap();
    assert_eq!(run_ids(&all), vec![winner.as_str(), "run-1"]);
    store.close().await;
}

pub async fn commit_run_is_compare_and_set<S: Store>(store: S) {
    let mut run = TestRun::new("run-1", diamond_plan(), NOW_MS);
    create_test_run(&store, &run, None, "deploy").await;
    let before = run.state.clone();
    let start = run.decide(&control(Control::Start), NOW_MS + 1);
    store
        .commit_run(run.commit_of(start.clone()))
        .await
        .unwrap();
    run.state.commit(&start);
    let journal = whole_journal(&store, "run-1").await;
    assert_eq!(journal.len(), start.journal.len());

    // A change decided against the old state, with outputs and audits: refused, nothing kept.
    let stale_run = TestRun {
        id: "run-1".to_string(),
        plan: diamond_plan(),
        state: before,
    };
    let mut stale = stale_run.commit_of(stale_run.decide(&control(Control::Start), NOW_MS + 2));
    stale.outputs.push(output("a", 1, "stale"));
    stale
        .audits
        .push(audit_entry("tester", "run.control", "stale-commit"));
    let result = store.commit_run(stale).await;
    let Err(Error::Conflict(message)) = &result else {
        panic!("a stale commit conflicts: {result:?}");
    };
    assert!(message.contains("run-1"), "names the run: {message}");
    assert_eq!(loaded(&store, "run-1").await.state, run.state);
    assert_eq!(whole_journal(&store, "run-1").await, journal);
    assert!(store.task_outputs("run-1", "a").await.unwrap().is_empty());
    assert!(outcomes_for(&store, "stale-commit").await.is_empty());

    // A run that does not exist.
    let mut ghost = run.commit_of(run.decide(&control(Control::Pause), NOW_MS + 3));
    ghost.run_id = "ghost".to_string();
    let result = store.commit_run(ghost).await;
    assert!(is_conflict(&result), "{result:?}");
    assert_eq!(store.load_run("ghost").await.unwrap(), None);

    // Two commits decided against the same version, racing: exactly one lands.
    let pause = run.commit_of(run.decide(&control(Control::Pause), NOW_MS + 4));
    let abort = run.commit_of(run.decide(&control(Control::Abort), NOW_MS + 4));
    let (rp, ra) = tokio::join!(
        store.commit_run(pause.clone()),
        store.commit_run(abort.clone())
    );
    let landed = match (&rp, &ra) {
        (Ok(()), Err(Error::Conflict(_))) => pause.change,
        (Err(Error::Conflict(_)), Ok(())) => abort.change,
        other => panic!("exactly one of two racing commits lands: {other:?}"),
    };
    run.state.commit(&landed);
    assert_eq!(loaded(&store, "run-1").await.state, run.state);
    assert_eq!(
        whole_journal(&store, "run-1").await.len(),
        journal.len() + landed.journal.len()
    );
    store.close().await;
}

/// An output of `task`'s `attempt`.
pub fn output(task: &str, attempt: u32, text: &str) -> TaskOutput {
    TaskOutput {
        task: task.to_string(),
        attempt,
        at_ms: NOW_MS + i64::from(attempt),
        outcome: "failed".to_string(),
        text: text.to_string(),
        cut_bytes: 17,
        data: json!({ "exit_code": 1, "attempt": attempt }),
    }
}

pub async fn concurrent_commit_runs_land_independently<S: Store>(store: S) {
    let store = Arc::new(store);
    let mut runs = Vec::new();
    for i in 0..CONCURRENT_RUNS {
        let run = TestRun::new(
            &format!("run-{i}"),
            wide_plan(CONCURRENT_COMMIT_ROUNDS),
            NOW_MS + i as i64,
        );
        create_test_run(&*store, &run, None, "deploy").await;
        runs.push(run);
    }
    // Every run started at once: all land.
    let mut tasks = Vec::new();
    for run in &runs {
        let (store, change) = (
            Arc::clone(&store),
            run.decide(&control(Control::Start), NOW_MS + 100),
        );
        let commit = run.commit_of(change.clone());
        tasks.push(tokio::spawn(async move {
            store.commit_run(commit).await.map(|()| change)
        }));
    }
    for (run, task) in runs.iter_mut().zip(tasks) {
        let change = task.await.unwrap().expect("a fresh commit lands");
        run.state.commit(&change);
    }

    // Rounds in which half the runs get a stale commit and the other half a fresh one, all
    // at once: the stale ones fail alone, however they are batched.
    for round in 0..CONCURRENT_COMMIT_ROUNDS {
        let now = NOW_MS + 200 + round as i64;
        let mut tasks = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let task = format!("t{round:05}");
            let event = Event::TaskStarted {
                attempt: run.attempt(&task),
                task,
            };
            let change = run.decide(&event, now);
            let mut commit = run.commit_of(change.clone());
            let stale = (i + round) % 2 == 0;
            if stale {
                commit.expected_version -= 1;
            }
            commit.audits.push(audit_entry(
                "tester",
                "run.report",
                &format!("round-{round}"),
            ));
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                (stale, change, store.commit_run(commit).await)
            }));
        }
        let mut landed = 0;
        for (run, task) in runs.iter_mut().zip(tasks) {
            let (stale, change, result) = task.await.unwrap();
            if stale {
                assert!(is_conflict(&result), "stale: {result:?}");
            } else {
                result.expect("a fresh commit lands beside stale ones");
                run.state.commit(&change);
                landed += 1;
            }
        }
        assert_eq!(
            outcomes_for(&*store, &format!("round-{round}")).await.len(),
            landed
        );
    }
    for run in &runs {
        assert_eq!(
            loaded(&*store, &run.id).await.state,
            run.state,
            "{}",
            run.id
        );
    }

    // tokio::join! of a commit that fails its check and one that does not.
    let (good, bad) = (&runs[0], &runs[1]);
    let good_change = good.decide(&control(Control::Pause), NOW_MS + 300);
    let mut bad_commit = bad.commit_of(bad.decide(&control(Control::Pause), NOW_MS + 300));
    bad_commit.expected_version += 1;
    let (rg, rb) = tokio::join!(
        store.commit_run(good.commit_of(good_change.clone())),
        store.commit_run(bad_commit)
    );
    rg.expect("the good commit lands");
    assert!(is_conflict(&rb), "{rb:?}");
    assert_eq!(
        loaded(&*store, &runs[0].id).await.state.run.status,
        RunStatus::Paused
    );
    assert_eq!(
        loaded(&*store, &runs[1].id).await.state,
        runs[1].state,
        "the failed commit changed nothing"
    );
    store.close().await;
}

pub async fn run_journal_ascends_and_pages<S: Store>(store: S) {
    let mut run = TestRun::new("run-1", diamond_plan(), NOW_MS);
    let mut other = TestRun::new("run-2", diamond_plan(), NOW_MS);
    create_test_run(&store, &run, None, "deploy").await;
    create_test_run(&store, &other, None, "deploy").await;
    let mut expected = Vec::new();
    expected.extend(
        run.step(&store, control(Control::Start), NOW_MS + 1)
            .await
            .journal,
    );
    other
        .step(&store, control(Control::Start), NOW_MS + 1)
        .await;
    for (task, now) in [("a", 10), ("b", 20), ("c", 30), ("d", 40)] {
        let attempt = run.attempt(task);
        let started = Event::TaskStarted {
            task: task.to_string(),
            attempt,
        };
        expected.extend(run.step(&store, started, NOW_MS + now).await.journal);
        let done = Event::TaskSucceeded {
            task: task.to_string(),
            attempt,
        };
        expected.extend(run.step(&store, done, NOW_MS + now + 1).await.journal);
        if task == "a" {
            other.succeed(&store, "a", NOW_MS + now).await;
        }
    }
    assert_eq!(run.state.run.status, RunStatus::Succeeded);
    assert!(expected.len() > 10, "{} entries", expected.len());

    let all = whole_journal(&store, "run-1").await;
    assert_eq!(
        all.iter().map(|r| r.entry.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "seq ascending");
    assert!(all.iter().all(|r| r.seq > 0));

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.run_journal("run-1", after, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert_eq!(
        store.run_journal("run-1", all[4].seq, 0).await.unwrap(),
        all[5..].to_vec()
    );
    let others = whole_journal(&store, "run-2").await;
    assert!(!others.is_empty());
    assert!(
        others.iter().all(|r| !all.contains(r)),
        "journals do not mix"
    );
    assert!(store.run_journal("ghost", 0, 10).await.unwrap().is_empty());
    store.close().await;
}

pub async fn task_outputs_are_kept_in_attempt_order<S: Store>(store: S) {
    let mut run = TestRun::new("run-1", diamond_plan(), NOW_MS);
    let other = TestRun::new("run-2", diamond_plan(), NOW_MS);
    create_test_run(&store, &run, None, "deploy").await;
    create_test_run(&store, &other, None, "deploy").await;
    run.step(&store, control(Control::Start), NOW_MS + 1).await;

    // Attempt 2's output is committed first; attempt 1 has two outputs (a check, the stage).
    let change = run.decide(
        &Event::TaskStarted {
            task: "a".to_string(),
            attempt: 1,
        },
        NOW_MS + 2,
    );
    let mut commit = run.commit_of(change.clone());
    commit.outputs = vec![output("a", 2, "second attempt")];
    store.commit_run(commit).await.unwrap();
    run.state.commit(&change);
    let change = run.decide(
        &Event::TaskSucceeded {
            task: "a".to_string(),
            attempt: 1,
        },
        NOW_MS + 3,
    );
    let mut commit = run.commit_of(change.clone());
    let mut big = output("a", 1, &"é and more text\n".repeat(1_000));
    big.cut_bytes = u64::from(u32::MAX) + 1;
    commit.outputs = vec![output("a", 1, "pre-check"), big.clone()];
    store.commit_run(commit).await.unwrap();
    run.state.commit(&change);

    assert_eq!(
        store.task_outputs("run-1", "a").await.unwrap(),
        vec![
            output("a", 1, "pre-check"),
            big,
            output("a", 2, "second attempt")
        ]
    );
    assert!(store.task_outputs("run-1", "b").await.unwrap().is_empty());
    assert!(store.task_outputs("run-2", "a").await.unwrap().is_empty());
    assert!(store.task_outputs("ghost", "a").await.unwrap().is_empty());
    store.close().await;
}

pub async fn runs_list_newest_first_with_filters_and_counts<S: Store>(store: S) {
    // (id, runbook, created): r6 and r7 share a creation time, so the id breaks the tie.
    let specs = [
        ("r1", "deploy", 1),
        ("r2", "deploy", 2),
        ("r3", "drain", 3),
        ("r4", "deploy", 4),
        ("r5", "drain", 5),
        ("r6", "deploy", 10),
        ("r7", "deploy", 10),
    ];
    let mut runs = BTreeMap::new();
    for (id, runbook, created) in specs {
        let run = TestRun::new(id, diamond_plan(), NOW_MS + created);
        create_test_run(&store, &run, None, runbook).await;
        runs.insert(id, run);
    }
    let r2 = runs.get_mut("r2").unwrap();
    r2.step(&store, control(Control::Start), NOW_MS + 20).await;
    r2.succeed(&store, "a", NOW_MS + 30).await;
    let r3 = runs.get_mut("r3").unwrap();
    r3.step(&store, control(Control::Start), NOW_MS + 20).await;
    r3.fail(&store, "a", NOW_MS + 25).await;
    assert_eq!(r3.state.run.status, RunStatus::Failed);

    let list = |statuses: Vec<RunStatus>, runbook: Option<&str>, before: Option<&str>, limit| {
        let filter = RunFilter {
            statuses,
            runbook: runbook.map(str::to_string),
            before_id: before.map(str::to_string),
            limit,
        };
        let store = &store;
        async move { store.runs(&filter).await.unwrap() }
    };
    let all = list(vec![], None, None, 0).await;
    assert_eq!(
        run_ids(&all),
        vec!["r7", "r6", "r5", "r4", "r3", "r2", "r1"]
    );
    let by_id: HashMap<&str, &crate::RunSummary> = all.iter().map(|s| (s.id.as_str(), s)).collect();
    let counts =
        |s: &crate::RunSummary| (s.tasks_total, s.tasks_done, s.tasks_running, s.tasks_failed);
    assert_eq!(counts(by_id["r1"]), (4, 0, 0, 0));
    assert_eq!(counts(by_id["r2"]), (4, 1, 2, 0));
    assert_eq!(counts(by_id["r3"]), (4, 0, 0, 1));
    let r3 = by_id["r3"];
    assert_eq!(r3.status, RunStatus::Failed);
    assert_eq!(r3.finished_at_ms, Some(NOW_MS + 25));
    assert!(
        r3.outcome.as_deref().is_some_and(|o| o.contains("`a`")),
        "{:?}",
        r3.outcome
    );
    assert_eq!(by_id["r2"].version, runs["r2"].state.run.version);
    assert_eq!(
        (by_id["r1"].status, by_id["r1"].created_at_ms),
        (RunStatus::Pending, NOW_MS + 1)
    );

    assert_eq!(
        run_ids(&list(vec![RunStatus::Running], None, None, 0).await),
        vec!["r2"]
    );
    assert_eq!(
        run_ids(&list(vec![RunStatus::Failed, RunStatus::Running], None, None, 0).await),
        vec!["r3", "r2"]
    );
    assert_eq!(
        run_ids(&list(vec![RunStatus::Pending], Some("deploy"), None, 0).await),
        vec!["r7", "r6", "r4", "r1"]
    );
    assert_eq!(
        run_ids(&list(vec![], Some("drain"), None, 0).await),
        vec!["r5", "r3"]
    );
    assert_eq!(
        run_ids(&list(vec![], None, Some("r5"), 0).await),
        vec!["r4", "r3", "r2", "r1"]
    );
    assert_eq!(
        run_ids(&list(vec![], None, Some("r7"), 1).await),
        vec!["r6"],
        "the cursor steps past a tie on time"
    );
    assert!(list(vec![], Some("nothing"), None, 0).await.is_empty());

    let mut paged = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = list(vec![], None, before.as_deref(), 2).await;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        paged.extend(page);
    }
    assert_eq!(paged, all);
    store.close().await;
}

pub async fn task_durations_are_newest_first_and_limited_per_task<S: Store>(store: S) {
    let two = || {
        RunPlan::new(vec![
            PlanTask::new("x", "shell"),
            PlanTask::new("y", "shell"),
        ])
        .expect("a valid plan")
    };
    // (run, runbook, start, x's duration, y's duration or None if it fails)
    let runs = [
        ("run-1", "deploy", NOW_MS, 100, Some(200)),
        ("run-2", "deploy", NOW_MS + 1_000, 110, None),
        ("run-3", "deploy", NOW_MS + 2_000, 120, Some(220)),
        ("run-4", "other", NOW_MS + 3_000, 5, Some(5)),
    ];
    for (id, runbook, start, x, y) in runs {
        let mut run = TestRun::new(id, two(), start - 1);
        create_test_run(&store, &run, None, runbook).await;
        run.step(&store, control(Control::Start), start).await;
        run.succeed(&store, "x", start + x).await;
        match y {
            Some(y) => run.succeed(&store, "y", start + y).await,
            None => run.fail(&store, "y", start + 50).await,
        }
    }
    let durations = |per_task| {
        let store = &store;
        async move {
            let all = store.task_durations("deploy", per_task).await.unwrap();
            let of = |task: &str| -> Vec<(String, u64, i64)> {
                all.iter()
                    .filter(|d| d.task == task)
                    .map(|d| (d.run_id.clone(), d.duration_ms, d.finished_at_ms))
                    .collect()
            };
            (all.len(), of("x"), of("y"))
        }
    };
    let at = |run: &str, start: i64, ms: u64| (run.to_string(), ms, start + ms as i64);
    let (count, x, y) = durations(2).await;
    assert_eq!(count, 4);
    assert_eq!(
        x,
        vec![
            at("run-3", NOW_MS + 2_000, 120),
            at("run-2", NOW_MS + 1_000, 110)
        ]
    );
    assert_eq!(
        y,
        vec![at("run-3", NOW_MS + 2_000, 220), at("run-1", NOW_MS, 200)],
        "a failed task is no success"
    );
    let (count, x, y) = durations(1).await;
    assert_eq!(count, 2);
    assert_eq!(x, vec![at("run-3", NOW_MS + 2_000, 120)]);
    assert_eq!(y, vec![at("run-3", NOW_MS + 2_000, 220)]);
    let (count, x, _) = durations(10).await;
    assert_eq!((count, x.len()), (5, 3));
    assert!(
        store
            .task_durations("missing", 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
}

pub async fn settings_round_trip_with_audit<S: Store>(store: S) {
    const PAUSE: &str = "global_pause";
    assert_eq!(store.setting(PAUSE).await.unwrap(), None);
    let paused = json!({ "paused": true, "by": "alice", "reason": "incident 42" });
    let audit = |target: &str| Some(audit_entry("alice", "runs.pause", target));
    store
        .set_setting(PAUSE, paused.clone(), audit(PAUSE))
        .await
        .unwrap();
    assert_eq!(store.setting(PAUSE).await.unwrap(), Some(paused));
    store
        .set_setting(PAUSE, json!(false), audit(PAUSE))
        .await
        .unwrap();
    assert_eq!(store.setting(PAUSE).await.unwrap(), Some(json!(false)));
    store
        .set_setting("other", json!([1, "two", null]), None)
        .await
        .unwrap();
    assert_eq!(
        store.setting("other").await.unwrap(),
        Some(json!([1, "two", null]))
    );
    assert_eq!(store.setting(PAUSE).await.unwrap(), Some(json!(false)));
    assert_eq!(outcomes_for(&store, PAUSE).await, vec!["ok", "ok"]);
    store.close().await;
}

pub async fn a_run_of_ten_thousand_tasks_creates_and_loads_whole<S: Store>(store: S) {
    let mut run = TestRun::new("huge", wide_plan(LARGE_RUN_TASKS), NOW_MS);
    let created = create_test_run(&store, &run, Some("huge-run"), "fleet").await;
    assert_eq!(created.state.tasks.len(), LARGE_RUN_TASKS);
    assert_eq!(loaded(&store, "huge").await, created);

    run.step(&store, control(Control::Start), NOW_MS + 1).await;
    run.succeed(&store, "t00000", NOW_MS + 2).await;
    let stored = loaded(&store, "huge").await;
    assert_eq!(stored.state, run.state);
    let summary = store.runs(&RunFilter::default()).await.unwrap();
    let parallel = TEST_RUN_MAX_PARALLEL_TASKS;
    assert_eq!(
        (
            summary[0].tasks_total,
            summary[0].tasks_done,
            summary[0].tasks_running
        ),
        (LARGE_RUN_TASKS as u32, 1, parallel)
    );
    // The same name again answers the whole run.
    let again = store
        .create_run(run.new_run(Some("huge-run"), "fleet"), None)
        .await
        .unwrap();
    assert_eq!(again, CreatedRun::Existing(stored));
    store.close().await;
}

/// Changes that would corrupt the record's compare-and-set version, or land on another
/// machine, are bugs in the decision: the call fails and nothing is written.
pub async fn a_decision_that_breaks_the_version_rule_is_refused<S: Store>(store: S) {
    let web = Arc::new(linear_def("web"));
    create_machines(&store, &web, &[("m1", None), ("m2", None)]).await;
    // A real report's change, then tampered with.
    let tampered = |tamper: fn(&mut Change)| -> MachineOp {
        let mut op = report_op(&web, "m1", "a", None, None);
        let decide = op.decide;
        op.decide = Box::new(move |ctx| {
            let mut change = decide(ctx)?;
            tamper(&mut change);
            Ok(change)
        });
        op
    };
    let skips_a_version = tampered(|change| change.record.version += 1);
    let result = store.run(vec![skips_a_version]).await;
    assert!(matches!(result, Err(Error::Corrupt(_))), "{result:?}");
    let other_machine = tampered(|change| change.record.id = "m2".to_string());
    let result = store.run(vec![other_machine]).await;
    assert!(matches!(result, Err(Error::Corrupt(_))), "{result:?}");
    let other_history = tampered(|change| change.history[0].machine = "m2".to_string());
    let result = store.run(vec![other_history]).await;
    assert!(matches!(result, Err(Error::Corrupt(_))), "{result:?}");
    for id in ["m1", "m2"] {
        assert_eq!(record(&store, id).await.version, 1);
        assert_eq!(store.history(id, 0, 10).await.unwrap().len(), 1);
    }
    // Untampered, the same report goes through.
    let fine = store.run(vec![tampered(|_| {})]).await.unwrap();
    assert!(matches!(fine[0], OpOutcome::Applied(_)), "{fine:?}");
    store.close().await;
}

/// Ids and names are compared as bytes, the way Rust compares strings, whatever the
/// database's locale would do with case, punctuation or accents: listings and their cursors
/// agree between stores and with the server's own sorting.
pub async fn ids_and_names_sort_by_their_bytes<S: Store>(store: S) {
    let ids = [
        "b",
        "B",
        "a-1",
        "a_1",
        "a1",
        "A",
        "a",
        "a.1",
        "\u{e9}t\u{e9}",
        "Z9",
    ];
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable();

    let sleepy = timer_def("sleepy", 1_000);
    let changes = ids
        .iter()
        .map(|id| new_instance(&sleepy, id, Some("g"), NOW_MS, "tester"))
        .collect();
    let mut definitions: Vec<NewDefinition> = ["b", "B", "a-1", "a_1"]
        .iter()
        .map(|name| new_definition(&timer_def(name, 1_000), name))
        .collect();
    definitions.push(new_definition(&sleepy, "s1"));
    store
        .apply(definitions, changes, vec![])
        .await
        .expect("apply machines with every kind of id");

    let listed: Vec<String> = store
        .machines(&MachineFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, sorted, "machines by id, as bytes");
    let after_upper_a: Vec<String> = store
        .machines(&MachineFilter {
            after_id: Some("A".to_string()),
            limit: 3,
            ..MachineFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        after_upper_a,
        sorted[1..4].to_vec(),
        "the cursor compares bytes too"
    );
    // Every timer is due at the same time: ties break by id, as bytes.
    assert_eq!(
        store.due_timers(NOW_MS + 1_000, 100).await.unwrap(),
        sorted,
        "due timers, ties by id"
    );
    let names: Vec<String> = store
        .definitions(Some(STATE_MACHINE))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, vec!["B", "a-1", "a_1", "b", "sleepy"]);

    // Runs created at one time are listed by id, descending, as bytes.
    for id in ["r-b", "r-B", "r_a", "r-a"] {
        create_test_run(
            &store,
            &TestRun::new(id, wide_plan(1), NOW_MS),
            None,
            "deploy",
        )
        .await;
    }
    let runs = store.runs(&RunFilter::default()).await.unwrap();
    assert_eq!(run_ids(&runs), vec!["r_a", "r-b", "r-a", "r-B"]);
    store.close().await;
}

/// JSON the store keeps comes back equal to what was given: numbers of every kind, nesting,
/// escapes and key order that a database's own JSON type would normalise.
pub async fn json_round_trips_as_given<S: Store>(store: S) {
    let awkward = json!({
        "zeta": 1,
        "alpha": [0.1, 1e-7, -2.5e300, 18_446_744_073_709_551_615_u64, i64::MIN, 0, -0.0],
        "quote\"and\\slash": "tab\tnew\nline \u{1f30a} \u{0} nul",
        "nested": { "b": null, "a": [true, false, {}, []] },
        "": ""
    });
    let mut def = new_definition(&linear_def("web"), "d1");
    def.compiled = awkward.clone();
    let applied = store.apply(vec![def], vec![], vec![]).await.unwrap();
    assert_eq!(applied.definitions[0].0.compiled, awkward);
    let stored = store
        .definition(STATE_MACHINE, "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.compiled, awkward, "a definition's compiled JSON");

    let mut entry = audit_entry("ops", "test.json", "json");
    entry.detail = awkward.clone();
    entry.outcome = "ok".to_string();
    store.audit(entry.clone()).await.unwrap();
    let filter = AuditFilter {
        target: Some("json".to_string()),
        ..AuditFilter::default()
    };
    assert_eq!(store.audit_log(&filter).await.unwrap()[0].entry, entry);

    store
        .set_setting("json", awkward.clone(), None)
        .await
        .unwrap();
    assert_eq!(store.setting("json").await.unwrap(), Some(awkward.clone()));

    let run = TestRun::new("run-json", diamond_plan(), NOW_MS);
    let mut new = run.new_run(None, "deploy");
    new.params = awkward.clone();
    new.spec = json!({ "tasks": awkward });
    store.create_run(new.clone(), None).await.unwrap();
    let loaded = loaded(&store, "run-json").await;
    assert_eq!((loaded.params, loaded.spec), (new.params, new.spec));
    store.close().await;
}

/// A task's output is whatever the program printed: control characters, U+0000 and all.
pub async fn task_output_text_keeps_every_character<S: Store>(store: S) {
    let mut run = TestRun::new("run-1", diamond_plan(), NOW_MS);
    create_test_run(&store, &run, None, "deploy").await;
    run.step(&store, control(Control::Start), NOW_MS + 1).await;
    let change = run.decide(
        &Event::TaskStarted {
            task: "a".to_string(),
            attempt: 1,
        },
        NOW_MS + 2,
    );
    let mut commit = run.commit_of(change.clone());
    let printed = output(
        "a",
        1,
        "find -print0: a\0b\0\r\n\u{1b}[31mred\u{1b}[0m \u{7f} \u{fffd} \u{1f30a}\n",
    );
    commit.outputs = vec![printed.clone()];
    store.commit_run(commit).await.unwrap();
    assert_eq!(
        store.task_outputs("run-1", "a").await.unwrap(),
        vec![printed]
    );
    store.close().await;
}

/// The lease time the lease cases give: long against the cases' own steps, so a lease only
/// expires when a case moves its clock past it.
pub const TEST_LEASE_TTL_MS: i64 = 10_000;

/// Replicas claiming at once in the concurrent-claim case.
pub const CONCURRENT_CLAIMERS: usize = 8;

/// Runs the concurrent-claim case claims, and its rounds (each past the previous leases).
pub const CLAIMED_RUNS: usize = 24;
pub const CLAIM_ROUNDS: i64 = 4;

/// Creates run `id` (a diamond) and starts it, so it is active.
pub async fn started_test_run<S: Store>(store: &S, id: &str) -> TestRun {
    let mut run = TestRun::new(id, diamond_plan(), NOW_MS);
    create_test_run(store, &run, None, "deploy").await;
    run.step(store, control(Control::Start), NOW_MS).await;
    run
}

fn lease_runs(leases: &[Lease]) -> Vec<(&str, i64)> {
    leases
        .iter()
        .map(|l| (l.run_id.as_str(), l.epoch))
        .collect()
}

pub async fn leases_claim_active_runs_once_each<S: Store>(store: S) {
    started_test_run(&store, "run-b").await;
    started_test_run(&store, "run-a").await;
    // Pending and never started: nobody executes it yet.
    let pending = TestRun::new("run-p", diamond_plan(), NOW_MS);
    create_test_run(&store, &pending, None, "deploy").await;
    // Ended: nothing left to execute.
    let mut aborted = started_test_run(&store, "run-x").await;
    aborted.step(&store, control(Control::Abort), NOW_MS).await;
    let owner = store.run_owner("run-a").await.unwrap().unwrap();
    assert_eq!(
        owner,
        crate::RunOwner {
            owner: None,
            epoch: 0,
            expires_ms: None
        }
    );
    assert_eq!(store.run_owner("ghost").await.unwrap(), None);

    assert!(
        store
            .claim_runs("r1", NOW_MS, TEST_LEASE_TTL_MS, 0)
            .await
            .unwrap()
            .is_empty()
    );
    let first = store
        .claim_runs("r1", NOW_MS, TEST_LEASE_TTL_MS, 1)
        .await
        .unwrap();
    assert_eq!(
        first,
        vec![Lease {
            run_id: "run-a".to_string(),
            epoch: 1,
            expires_ms: NOW_MS + TEST_LEASE_TTL_MS
        }],
        "claims in id order, up to the limit"
    );
    let rest = store
        .claim_runs("r1", NOW_MS, TEST_LEASE_TTL_MS, 10)
        .await
        .unwrap();
    assert_eq!(
        lease_runs(&rest),
        vec![("run-b", 1)],
        "only active, unowned runs"
    );
    // Live leases are nobody else's to claim, whether in bulk or one by one.
    let later = NOW_MS + TEST_LEASE_TTL_MS - 1;
    assert!(
        store
            .claim_runs("r2", later, TEST_LEASE_TTL_MS, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .claim_run("run-a", "r2", later, TEST_LEASE_TTL_MS)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .claim_run("run-a", "r1", later, TEST_LEASE_TTL_MS)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .claim_run("ghost", "r2", later, TEST_LEASE_TTL_MS)
            .await
            .unwrap(),
        None
    );
    // One run by id is claimed whatever its status.
    let one = store
        .claim_run("run-p", "r2", later, TEST_LEASE_TTL_MS)
        .await
        .unwrap();
    assert_eq!(
        one.map(|l| (l.run_id, l.epoch, l.expires_ms)),
        Some(("run-p".to_string(), 1, later + TEST_LEASE_TTL_MS))
    );
    let owner = store.run_owner("run-a").await.unwrap().unwrap();
    assert_eq!(owner.owner.as_deref(), Some("r1"));
    assert_eq!(
        (owner.epoch, owner.expires_ms),
        (1, Some(NOW_MS + TEST_LEASE_TTL_MS))
    );
    // At expiry another replica takes the active ones over, each one epoch on.
    let expired = NOW_MS + TEST_LEASE_TTL_MS;
    let taken = store
        .claim_runs("r2", expired, TEST_LEASE_TTL_MS, 10)
        .await
        .unwrap();
    assert_eq!(lease_runs(&taken), vec![("run-a", 2), ("run-b", 2)]);
    assert_eq!(store.run_owner("run-x").await.unwrap().unwrap().epoch, 0);
    store.close().await;
}

pub async fn a_commit_with_a_stale_epoch_is_fenced_and_changes_nothing<S: Store>(store: S) {
    let mut run = started_test_run(&store, "run-1").await;
    let first = store
        .claim_runs("r1", NOW_MS, TEST_LEASE_TTL_MS, 10)
        .await
        .unwrap();
    assert_eq!(lease_runs(&first), vec![("run-1", 1)]);
    // The holder commits at its epoch.
    let change = run.decide(&control(Control::Pause), NOW_MS + 1);
    let mut commit = run.commit_of(change.clone());
    commit.epoch = Some(1);
    store.commit_run(commit).await.unwrap();
    run.state.commit(&change);
    let journal = whole_journal(&store, "run-1").await;

    // r1 stalls past its lease; r2 takes the run over.
    let taken = store
        .claim_runs("r2", NOW_MS + TEST_LEASE_TTL_MS, TEST_LEASE_TTL_MS, 10)
        .await
        .unwrap();
    assert_eq!(lease_runs(&taken), vec![("run-1", 2)]);
    // r1 wakes and writes a change decided on the latest version, at its old epoch: fenced,
    // with its outputs and audits, and the fencing is not a version conflict.
    let mut stale = run.commit_of(run.decide(&control(Control::Resume), NOW_MS + 2));
    stale.epoch = Some(1);
    stale.outputs.push(output("a", 1, "from a fenced replica"));
    stale
        .audits
        .push(audit_entry("tester", "run.control", "fenced-commit"));
    let result = store.commit_run(stale).await;
    let Err(Error::Fenced(message)) = &result else {
        panic!("a commit at a stale epoch is fenced: {result:?}");
    };
    assert!(message.contains("run-1"), "names the run: {message}");
    assert_eq!(loaded(&store, "run-1").await.state, run.state);
    assert_eq!(whole_journal(&store, "run-1").await, journal);
    assert!(store.task_outputs("run-1", "a").await.unwrap().is_empty());
    assert!(outcomes_for(&store, "fenced-commit").await.is_empty());
    // An epoch from the future is as wrong as an old one.
    let mut future = run.commit_of(run.decide(&control(Control::Resume), NOW_MS + 3));
    future.epoch = Some(3);
    let result = store.commit_run(future).await;
    assert!(matches!(result, Err(Error::Fenced(_))), "{result:?}");
    // A stale epoch is refused even alongside a good commit of another run in one batch.
    let mut other = started_test_run(&store, "run-2").await;
    let other_lease = store
        .claim_run("run-2", "r1", NOW_MS, TEST_LEASE_TTL_MS)
        .await
        .unwrap();
    assert_eq!(other_lease.map(|l| l.epoch), Some(1));
    let mut stale = run.commit_of(run.decide(&control(Control::Resume), NOW_MS + 4));
    stale.epoch = Some(1);
    let other_change = other.decide(&control(Control::Pause), NOW_MS + 4);
    let mut good = other.commit_of(other_change.clone());
    good.epoch = Some(1);
    let (stale_result, good_result) = tokio::join!(store.commit_run(stale), store.commit_run(good));
    assert!(
        matches!(stale_result, Err(Error::Fenced(_))),
        "{stale_result:?}"
    );
    good_result.unwrap();
    other.state.commit(&other_change);
    assert_eq!(loaded(&store, "run-2").await.state, other.state);
    // The new holder commits at its epoch.
    let change = run.decide(&control(Control::Resume), NOW_MS + 5);
    let mut current = run.commit_of(change.clone());
    current.epoch = Some(2);
    store.commit_run(current).await.unwrap();
    run.state.commit(&change);
    assert_eq!(loaded(&store, "run-1").await.state, run.state);
    store.close().await;
}

pub async fn renewal_after_a_takeover_reports_the_lease_lost<S: Store>(store: S) {
    started_test_run(&store, "run-1").await;
    started_test_run(&store, "run-2").await;
    let held = store
        .claim_runs("r1", NOW_MS, TEST_LEASE_TTL_MS, 10)
        .await
        .unwrap();
    assert_eq!(lease_runs(&held), vec![("run-1", 1), ("run-2", 1)]);
    // Renewed in time: both still held, until a new expiry.
    let renewed_at = NOW_MS + TEST_LEASE_TTL_MS / 2;
    let renewed = store
        .renew_leases("r1", &held, renewed_at, TEST_LEASE_TTL_MS)
        .await
        .unwrap();
    assert_eq!(lease_runs(&renewed), vec![("run-1", 1), ("run-2", 1)]);
    assert!(
        renewed
            .iter()
            .all(|l| l.expires_ms == renewed_at + TEST_LEASE_TTL_MS)
    );
    // Someone else renewing r1's leases renews nothing.
    assert!(
        store
            .renew_leases("r2", &held, renewed_at, TEST_LEASE_TTL_MS)
            .await
            .unwrap()
            .is_empty()
    );
    // The old expiry no longer lets anyone in.
    let old_expiry = NOW_MS + TEST_LEASE_TTL_MS;
    assert!(
        store
            .claim_runs("r2", old_expiry, TEST_LEASE_TTL_MS, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Past the new expiry, r2 takes run-1 only; r1's renewal then holds run-2 alone. A lease
    // that expired but was not taken over is still the holder's to renew.
    let expired = renewed_at + TEST_LEASE_TTL_MS;
    let taken = store
        .claim_runs("r2", expired, TEST_LEASE_TTL_MS, 1)
        .await
        .unwrap();
    assert_eq!(lease_runs(&taken), vec![("run-1", 2)]);
    let renewed = store
        .renew_leases("r1", &held, expired + 1, TEST_LEASE_TTL_MS)
        .await
        .unwrap();
    assert_eq!(lease_runs(&renewed), vec![("run-2", 1)], "run-1 is lost");
    let owner = store.run_owner("run-1").await.unwrap().unwrap();
    assert_eq!((owner.owner.as_deref(), owner.epoch), (Some("r2"), 2));
    // Releasing a lost lease leaves the new holder alone.
    assert_eq!(
        store.release_leases("r1", &held).await.unwrap(),
        1,
        "run-2 only"
    );
    let owner = store.run_owner("run-1").await.unwrap().unwrap();
    assert_eq!((owner.owner.as_deref(), owner.epoch), (Some("r2"), 2));
    store.close().await;
}

pub async fn released_leases_are_claimed_at_once<S: Store>(store: S) {
    started_test_run(&store, "run-1").await;
    let held = store
        .claim_runs("r1", NOW_MS, TEST_LEASE_TTL_MS, 10)
        .await
        .unwrap();
    assert_eq!(store.release_leases("r1", &held).await.unwrap(), 1);
    assert_eq!(
        store.run_owner("run-1").await.unwrap().unwrap(),
        crate::RunOwner {
            owner: None,
            epoch: 1,
            expires_ms: None
        },
        "released, the epoch kept"
    );
    assert!(
        store
            .renew_leases("r1", &held, NOW_MS + 1, TEST_LEASE_TTL_MS)
            .await
            .unwrap()
            .is_empty()
    );
    // Long before the lease would have expired, another replica claims it, one epoch on.
    let taken = store
        .claim_runs("r2", NOW_MS + 1, TEST_LEASE_TTL_MS, 10)
        .await
        .unwrap();
    assert_eq!(lease_runs(&taken), vec![("run-1", 2)]);
    store.close().await;
}

pub async fn concurrent_claimers_never_share_a_run_at_one_epoch<S: Store>(store: S) {
    let store = Arc::new(store);
    for i in 0..CLAIMED_RUNS {
        started_test_run(&*store, &format!("run-{i:03}")).await;
    }
    let mut seen: HashMap<(String, i64), String> = HashMap::new();
    for round in 0..CLAIM_ROUNDS {
        // Every lease of the previous round has expired.
        let now = NOW_MS + round * TEST_LEASE_TTL_MS;
        let mut tasks = Vec::new();
        for claimer in 0..CONCURRENT_CLAIMERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("replica-{claimer}");
                let mut got = Vec::new();
                // Small bites, so the claimers interleave; single claims race bulk ones.
                for i in 0..CLAIMED_RUNS {
                    if claimer % 2 == 0 {
                        got.extend(
                            store
                                .claim_runs(&owner, now, TEST_LEASE_TTL_MS, 3)
                                .await
                                .unwrap(),
                        );
                    } else {
                        let id = format!("run-{i:03}");
                        got.extend(
                            store
                                .claim_run(&id, &owner, now, TEST_LEASE_TTL_MS)
                                .await
                                .unwrap(),
                        );
                    }
                }
                (owner, got)
            }));
        }
        let mut claimed_this_round = 0;
        for task in tasks {
            let (owner, got) = task.await.expect("a claimer panicked");
            for lease in got {
                claimed_this_round += 1;
                let key = (lease.run_id.clone(), lease.epoch);
                if let Some(other) = seen.insert(key.clone(), owner.clone()) {
                    panic!("{other} and {owner} both claimed {key:?}");
                }
                let stored = store.run_owner(&lease.run_id).await.unwrap().unwrap();
                assert!(stored.epoch >= lease.epoch);
            }
        }
        // Each run was claimed exactly once this round: its lease was live after that.
        assert_eq!(claimed_this_round, CLAIMED_RUNS, "round {round}");
    }
    for i in 0..CLAIMED_RUNS {
        let owner = store
            .run_owner(&format!("run-{i:03}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(owner.epoch, CLAIM_ROUNDS, "one epoch per claim");
    }
    store.close().await;
}

pub async fn replicas_list_their_heartbeats_and_leases<S: Store>(store: S) {
    started_test_run(&store, "run-1").await;
    started_test_run(&store, "run-2").await;
    store
        .heartbeat("r1", "http://r1:7400", NOW_MS - 5, NOW_MS)
        .await
        .unwrap();
    store
        .heartbeat("r2", "http://old:7400", NOW_MS - 5, NOW_MS - 1_000)
        .await
        .unwrap();
    store
        .heartbeat("r2", "http://r2:7400", NOW_MS - 5, NOW_MS + 10)
        .await
        .unwrap();
    // A late heartbeat never moves the time seen backwards.
    store
        .heartbeat("r2", "http://r2:7400", NOW_MS - 5, NOW_MS + 5)
        .await
        .unwrap();
    store
        .heartbeat("gone", "http://gone:7400", NOW_MS - 9_000, NOW_MS - 8_000)
        .await
        .unwrap();
    store
        .claim_run("run-2", "r1", NOW_MS, TEST_LEASE_TTL_MS)
        .await
        .unwrap();
    store
        .claim_run("run-1", "r1", NOW_MS, TEST_LEASE_TTL_MS)
        .await
        .unwrap();
    let replicas = store.replicas(NOW_MS - 1_000).await.unwrap();
    type Seen<'a> = (&'a str, &'a str, i64, i64, Vec<(&'a str, i64)>);
    let view: Vec<Seen<'_>> = replicas
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.address.as_str(),
                r.started_at_ms,
                r.seen_at_ms,
                lease_runs(&r.leases),
            )
        })
        .collect();
    assert_eq!(
        view,
        vec![
            (
                "r1",
                "http://r1:7400",
                NOW_MS - 5,
                NOW_MS,
                vec![("run-1", 1), ("run-2", 1)]
            ),
            ("r2", "http://r2:7400", NOW_MS - 5, NOW_MS + 10, vec![]),
        ]
    );
    store.close().await;
}

/// Hosts of the pool in the concurrent-schedule case.
pub const SCHEDULE_POOL_HOSTS: usize = 10;

/// Hosts of that pool that may be out at once (size minus floor).
pub const SCHEDULE_POOL_HEADROOM_HOSTS: usize = 4;

/// Concurrent schedules in the concurrent-schedule case, each asking for one host.
pub const CONCURRENT_SCHEDULES: usize = 48;

/// A maintenance of `hosts` during `[start_ms, end_ms)`, freshly scheduled.
pub fn maintenance(id: &str, hosts: &[&str], start_ms: i64, end_ms: i64) -> MaintenanceRecord {
    MaintenanceRecord {
        id: id.to_string(),
        fleet: "row-a".to_string(),
        selector: format!("host in ({})", hosts.join(", ")),
        hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
        kind: "power".to_string(),
        start_ms,
        end_ms,
        owner: "dc-ops".to_string(),
        state: "scheduled".to_string(),
        why: "waiting for its start".to_string(),
        unblock: String::new(),
        created_by: "alice".to_string(),
        created_at_ms: NOW_MS,
        updated_at_ms: NOW_MS,
        version: 1,
        details: json!({ "actions": [{ "service": "web", "action": "drain_and_wait" }] }),
    }
}

/// A toy admission rule standing in for the fleet's preflight: the hosts reserved by
/// maintenances overlapping the candidate, with the candidate's, may number at most
/// `headroom`, and the candidate may not share a host with one of them.
pub fn admit_within(candidate: &MaintenanceRecord, headroom: usize) -> Admit {
    let candidate = candidate.clone();
    Box::new(move |reserving: &[MaintenanceRecord]| {
        let mut held: Vec<&str> = Vec::new();
        for other in reserving.iter().filter(|m| {
            m.reserves() && m.start_ms < candidate.end_ms && candidate.start_ms < m.end_ms
        }) {
            for host in &other.hosts {
                if candidate.hosts.contains(host) {
                    return Err(json!({ "overlaps": other.id, "host": host }));
                }
                held.push(host);
            }
        }
        held.sort_unstable();
        held.dedup();
        if held.len() + candidate.hosts.len() > headroom {
            return Err(json!({ "held": held.len(), "headroom": headroom }));
        }
        Ok(())
    })
}

pub async fn maintenances_schedule_update_and_list<S: Store>(store: S) {
    let first = maintenance("m-1", &["h1", "h2"], NOW_MS + 1_000, NOW_MS + 5_000);
    let scheduled = store
        .schedule_maintenance(
            first.clone(),
            admit_within(&first, 3),
            Some(audit_entry("alice", "maintenance.schedule", "m-1")),
        )
        .await
        .expect("schedule m-1");
    assert_eq!(scheduled, Scheduled::Stored(Box::new(first.clone())));
    assert_eq!(store.maintenance("m-1").await.unwrap(), Some(first.clone()));

    // Sharing h2 with m-1 during an overlapping window: refused, nothing stored.
    let clash = maintenance("m-2", &["h2"], NOW_MS + 4_000, NOW_MS + 6_000);
    let refused = store
        .schedule_maintenance(
            clash.clone(),
            admit_within(&clash, 3),
            Some(audit_entry("bob", "maintenance.schedule", "m-2")),
        )
        .await
        .expect("schedule m-2");
    assert_eq!(
        refused,
        Scheduled::Refused(json!({ "overlaps": "m-1", "host": "h2" }))
    );
    assert_eq!(store.maintenance("m-2").await.unwrap(), None);
    assert_eq!(outcomes_for(&store, "m-1").await, vec!["ok"]);
    assert_eq!(outcomes_for(&store, "m-2").await, vec!["refused"]);

    // After m-1's window, the same host is free.
    let later = maintenance("m-3", &["h2"], NOW_MS + 5_000, NOW_MS + 9_000);
    let stored = store
        .schedule_maintenance(later.clone(), admit_within(&later, 3), None)
        .await
        .unwrap();
    assert_eq!(stored, Scheduled::Stored(Box::new(later.clone())));

    // The same id again is a conflict, whatever the decision says.
    let again = store
        .schedule_maintenance(later.clone(), Box::new(|_| Ok(())), None)
        .await;
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");

    // Updates are compare-and-set on the version.
    let mut cancelled = first.clone();
    cancelled.version = 2;
    cancelled.state = "cancelled".to_string();
    cancelled.why = "cancelled by alice: the vendor postponed".to_string();
    cancelled.updated_at_ms = NOW_MS + 10;
    store
        .update_maintenance(
            cancelled.clone(),
            Some(audit_entry("alice", "maintenance.cancel", "m-1")),
        )
        .await
        .expect("cancel m-1");
    let stale = store.update_maintenance(cancelled.clone(), None).await;
    assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
    let mut missing = maintenance("nope", &["h9"], NOW_MS, NOW_MS + 1);
    missing.version = 2;
    let missing = store.update_maintenance(missing, None).await;
    assert!(matches!(missing, Err(Error::Conflict(_))), "{missing:?}");
    assert_eq!(
        store.maintenance("m-1").await.unwrap(),
        Some(cancelled.clone())
    );
    assert_eq!(outcomes_for(&store, "m-1").await, vec!["ok", "ok"]);

    let all = store
        .maintenances(&MaintenanceFilter::default())
        .await
        .unwrap();
    assert_eq!(all, vec![cancelled, later.clone()], "by start time");
    let reserving = store
        .maintenances(&MaintenanceFilter {
            reserving_only: true,
            ..MaintenanceFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        reserving,
        vec![later.clone()],
        "a cancelled one reserves nothing"
    );

    // A cancelled maintenance no longer holds h2: an overlapping one may take it.
    let retry = maintenance("m-4", &["h1", "h2"], NOW_MS + 1_000, NOW_MS + 5_000);
    let stored = store
        .schedule_maintenance(retry.clone(), admit_within(&retry, 3), None)
        .await
        .unwrap();
    assert_eq!(stored, Scheduled::Stored(Box::new(retry)));

    // A window that ends before it starts is never stored.
    let backwards = maintenance("m-5", &["h7"], NOW_MS + 10, NOW_MS);
    let answer = store
        .schedule_maintenance(backwards, Box::new(|_| Ok(())), None)
        .await;
    assert!(matches!(answer, Err(Error::Corrupt(_))), "{answer:?}");
    assert_eq!(store.maintenance("m-5").await.unwrap(), None);
}

/// Many clients schedule overlapping maintenances of one pool at once, through `stores` (one
/// store, or several replicas on one database): the accepted ones together never take more
/// than the headroom, and every one the headroom allows is accepted.
pub async fn concurrent_schedules_keep_the_headroom(stores: Vec<Arc<dyn Store>>) {
    let mut tasks = Vec::with_capacity(CONCURRENT_SCHEDULES);
    for i in 0..CONCURRENT_SCHEDULES {
        let store = stores[i % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            let host = format!("h{}", i % SCHEDULE_POOL_HOSTS);
            // Windows overlap pairwise: all contain NOW_MS + 10_000.
            let start = NOW_MS + (i as i64) * 100;
            let candidate = maintenance(&format!("c-{i:02}"), &[&host], start, NOW_MS + 20_000);
            loop {
                let admit = admit_within(&candidate, SCHEDULE_POOL_HEADROOM_HOSTS);
                match store
                    .schedule_maintenance(candidate.clone(), admit, None)
                    .await
                {
                    // A PostgreSQL batch retried after a deadlock answers the calls whose
                    // decisions already ran `Unavailable`; the client asks again.
                    Err(Error::Unavailable(_)) => continue,
                    other => return other.expect("schedule"),
                }
            }
        }));
    }
    let mut stored = 0;
    for task in tasks {
        if let Scheduled::Stored(_) = task.await.expect("a scheduling task") {
            stored += 1;
        }
    }
    let reserving = stores[0]
        .maintenances(&MaintenanceFilter {
            reserving_only: true,
            ..MaintenanceFilter::default()
        })
        .await
        .unwrap();
    let mut hosts: Vec<&str> = reserving
        .iter()
        .flat_map(|m| m.hosts.iter().map(String::as_str))
        .collect();
    let held = hosts.len();
    hosts.sort_unstable();
    hosts.dedup();
    assert_eq!(hosts.len(), held, "no host is held twice: {reserving:?}");
    assert_eq!(
        held, SCHEDULE_POOL_HEADROOM_HOSTS,
        "exactly the headroom is taken, never more: {reserving:?}"
    );
    assert_eq!(stored, SCHEDULE_POOL_HEADROOM_HOSTS);
}

pub async fn concurrent_schedules_never_take_more_than_the_headroom<S: Store>(store: S) {
    concurrent_schedules_keep_the_headroom(vec![Arc::new(store)]).await;
}

/// Longest a case waits for a notice it expects.
pub const NOTICE_WAIT_MS: u64 = 10_000;

/// The next notice `wanted` accepts, skipping others (a listener's `Resync`, say); panics
/// after [`NOTICE_WAIT_MS`].
pub async fn next_notice(
    notices: &mut tokio::sync::broadcast::Receiver<crate::Notice>,
    what: &str,
    wanted: impl Fn(&crate::Notice) -> bool,
) -> crate::Notice {
    let wait = async {
        loop {
            match notices.recv().await {
                Ok(notice) if wanted(&notice) => return notice,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    panic!("the notices closed while waiting for {what}")
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_millis(NOTICE_WAIT_MS), wait)
        .await
        .unwrap_or_else(|_| panic!("no notice of {what} within {NOTICE_WAIT_MS} ms"))
}

/// A committed setting, new definitions and released leases are announced to subscribers.
pub async fn notices_announce_committed_changes<S: Store>(store: S) {
    let mut notices = store.notices();
    // On PostgreSQL the listener announces itself with a resync once it listens; a notice
    // sent before that would be missed, which is what the resync says.
    if store.backend() == "postgres" {
        next_notice(&mut notices, "the listener's resync", |n| {
            *n == crate::Notice::Resync
        })
        .await;
    }
    store
        .set_setting("global_pause", json!({ "paused": true }), None)
        .await
        .unwrap();
    let key = "global_pause".to_string();
    next_notice(&mut notices, "the setting", |n| {
        *n == crate::Notice::Setting { key: key.clone() }
    })
    .await;
    let def = linear_def("web");
    store
        .apply(vec![new_definition(&def, "d1")], vec![], vec![])
        .await
        .unwrap();
    next_notice(&mut notices, "the definitions", |n| {
        *n == crate::Notice::Definitions
    })
    .await;
    started_test_run(&store, "run-1").await;
    let held = store
        .claim_runs("r1", NOW_MS, TEST_LEASE_TTL_MS, 10)
        .await
        .unwrap();
    assert_eq!(store.release_leases("r1", &held).await.unwrap(), 1);
    next_notice(&mut notices, "the released lease", |n| {
        *n == crate::Notice::RunsClaimable
    })
    .await;
    store.close().await;
}

/// Claims of one drain test slot racing in the concurrent case.
pub const CONCURRENT_DRAIN_TEST_CLAIMS: usize = 16;

/// A new drain test execution for the slot `scheduled_ms`.
pub fn drain_test_execution(test: &str, scheduled_ms: i64, state: &str) -> DrainTestExecution {
    DrainTestExecution {
        id: format!("dt-{test}-{scheduled_ms}"),
        drain_test: test.to_string(),
        scheduled_ms,
        trigger: "schedule".to_string(),
        target: "east".to_string(),
        state: state.to_string(),
        reason: String::new(),
        drain_run: None,
        restore_run: None,
        created_by: "scheduler".to_string(),
        created_at_ms: NOW_MS,
        updated_at_ms: NOW_MS,
        finished_ms: None,
        version: 1,
        report: serde_json::json!({}),
    }
}

pub async fn drain_test_slots_are_claimed_once_and_updated_by_version<S: Store>(store: S) {
    let first = drain_test_execution("weekly", NOW_MS, "draining");
    assert!(store.claim_drain_test_slot(&first).await.unwrap());
    // The same id again, and another id for the same slot: both lose.
    assert!(!store.claim_drain_test_slot(&first).await.unwrap());
    let mut same_slot = drain_test_execution("weekly", NOW_MS, "skipped");
    same_slot.id = "dt-weekly-other".to_string();
    assert!(!store.claim_drain_test_slot(&same_slot).await.unwrap());
    // Another test may take the same time.
    assert!(
        store
            .claim_drain_test_slot(&drain_test_execution("storm", NOW_MS, "skipped"))
            .await
            .unwrap()
    );
    let older = drain_test_execution("weekly", NOW_MS - 1_000, "skipped");
    assert!(store.claim_drain_test_slot(&older).await.unwrap());
    // A new execution must start at version 1.
    let mut wrong = drain_test_execution("weekly", NOW_MS + 5, "draining");
    wrong.version = 2;
    assert!(matches!(
        store.claim_drain_test_slot(&wrong).await,
        Err(Error::Corrupt(_))
    ));

    let mut next = first.clone();
    next.version = 2;
    next.state = "restoring".to_string();
    next.drain_run = Some("r-1".to_string());
    next.report = serde_json::json!({ "phases": [{ "name": "drain", "ms": 1500 }] });
    store.update_drain_test_execution(&next).await.unwrap();
    // A stale update (version 2 again) changes nothing.
    let mut stale = first.clone();
    stale.version = 2;
    stale.state = "failed".to_string();
    assert!(matches!(
        store.update_drain_test_execution(&stale).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        store.drain_test_execution(&first.id).await.unwrap(),
        Some(next.clone())
    );
    assert_eq!(store.drain_test_execution("dt-none").await.unwrap(), None);

    let weekly = store
        .drain_test_executions(&DrainTestFilter {
            drain_test: Some("weekly".to_string()),
            ..DrainTestFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = weekly.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [first.id.as_str(), older.id.as_str()], "newest first");
    let active = store
        .drain_test_executions(&DrainTestFilter {
            active_only: true,
            ..DrainTestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(active, [next]);
    let limited = store
        .drain_test_executions(&DrainTestFilter {
            limit: 1,
            ..DrainTestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
}

/// Claims of one slot from many tasks (on several stores: replicas) store exactly one.
pub async fn concurrent_drain_test_claims_land_once(stores: Vec<Arc<dyn Store>>) {
    let mut tasks = Vec::with_capacity(CONCURRENT_DRAIN_TEST_CLAIMS);
    for i in 0..CONCURRENT_DRAIN_TEST_CLAIMS {
        let store = stores[i % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut execution = drain_test_execution("race", NOW_MS, "draining");
            execution.created_by = format!("replica-{i}");
            loop {
                match store.claim_drain_test_slot(&execution).await {
                    Err(Error::Unavailable(_)) => continue,
                    other => return other.expect("claim"),
                }
            }
        }));
    }
    let mut won = 0;
    for task in tasks {
        if task.await.expect("a claiming task") {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one claim stores the slot");
    let stored = stores[0]
        .drain_test_executions(&DrainTestFilter::default())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
}

pub async fn concurrent_drain_test_claims_store_one<S: Store>(store: S) {
    concurrent_drain_test_claims_land_once(vec![Arc::new(store)]).await;
}
