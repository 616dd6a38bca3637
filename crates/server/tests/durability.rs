//! What StateService lost, Levee keeps: no update is lost under 64 concurrent clients, and a
//! timer that comes due while the server is down fires exactly once after it restarts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

/// Concurrent clients, as in StateService's slowest measured column.
const CLIENTS: usize = 64;

/// How long the clients keep reporting, in milliseconds.
const LOAD_DURATION_MS: u64 = 3_000;

/// Most reports one client sends, whatever the duration: a bound on the loop.
const MAX_REPORTS_PER_CLIENT: u64 = 100_000;

/// The machine every client also reports to.
const SHARED_MACHINE: &str = "shared";

/// A machine that soaks for 2 seconds, then moves on by itself.
const SOAK_DEFINITION_YAML: &str = "\
kind: StateMachine
name: soak
instances: [soak-1]
states:
  - name: soaking
    timer: { after: 2s, to: done }
  - name: done
    final: true
";

/// 64 clients, each reporting to its own counter machine and to one shared machine for about
/// three seconds: every machine's counter equals the number of 200 answers it gave, so no
/// acknowledged report was lost and none was counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reports_lose_no_update() {
    let server = common::start().await;
    server
        .apply("counter.yaml", common::COUNTER_DEFINITION_YAML)
        .await;
    let own_ids: Vec<String> = (0..CLIENTS).map(|n| format!("client-{n:02}")).collect();
    let mut specs: Vec<(&str, &str, Option<&str>)> = own_ids
        .iter()
        .map(|id| (id.as_str(), "counter", None))
        .collect();
    specs.push((SHARED_MACHINE, "counter", None));
    server.create_machines(&specs).await;

    let shared_oks = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_millis(LOAD_DURATION_MS);
    let mut clients = Vec::with_capacity(CLIENTS);
    for id in own_ids.clone() {
        let client = common::client();
        let own_url = server.url(&format!("/machines/{id}/state?state=counting"));
        let shared_url = server.url(&format!("/machines/{SHARED_MACHINE}/state?state=counting"));
        let shared_oks = shared_oks.clone();
        clients.push(tokio::spawn(async move {
            let mut own_oks = 0u64;
            for _ in 0..MAX_REPORTS_PER_CLIENT {
                if Instant::now() >= deadline {
                    break;
                }
                // A failed request (none is expected) simply is not acknowledged.
                if matches!(client.put(&own_url).send().await, Ok(a) if a.status() == StatusCode::OK) {
                    own_oks += 1;
                }
                if matches!(client.put(&shared_url).send().await, Ok(a) if a.status() == StatusCode::OK) {
                    shared_oks.fetch_add(1, Ordering::SeqCst);
                }
            }
            (id, own_oks)
        }));
    }
    let mut acknowledged_total = 0;
    let mut counted_total = 0;
    for client in clients {
        let (id, own_oks) = client.await.expect("a client panicked");
        let counter = server.machine(&id).await["counter"]
            .as_u64()
            .expect("a counter");
        assert_eq!(
            counter, own_oks,
            "machine {id}: counter against 200 answers"
        );
        assert!(
            own_oks > 0,
            "client {id} got no report through in {LOAD_DURATION_MS} ms"
        );
        acknowledged_total += own_oks;
        counted_total += counter;
    }
    assert_eq!(counted_total, acknowledged_total);
    let shared = server.machine(SHARED_MACHINE).await["counter"]
        .as_u64()
        .expect("a counter");
    assert_eq!(
        shared,
        shared_oks.load(Ordering::SeqCst),
        "the shared machine: counter against 200 answers"
    );
    assert!(
        shared >= CLIENTS as u64,
        "every client reached the shared machine at least once"
    );

    // The counts are what the store holds, not only what this process remembers.
    let server = server.restart(common::START_MS, None).await;
    assert_eq!(
        server.machine(SHARED_MACHINE).await["counter"].as_u64(),
        Some(shared),
        "after a restart"
    );
}

/// A timer set 2 s ahead, with the server stopped before it is due and restarted after:
/// the restarted server fires it, once.
#[tokio::test]
async fn a_timer_due_while_the_server_was_down_fires_exactly_once_after_restart() {
    let server = common::start().await;
    server.apply("soak.yaml", SOAK_DEFINITION_YAML).await;
    server.clock.advance_ms(1_000);
    assert_eq!(server.stored_state("soak-1").await, "soaking");
    let server = server.restart(common::START_MS + 3_000, None).await;

    server.wait_for_stored_state("soak-1", "done").await;
    let timer_entries = |history: &[Value]| {
        history
            .iter()
            .filter(|e| e["kind"] == "timer")
            .cloned()
            .collect::<Vec<_>>()
    };
    let timers = timer_entries(&server.history("soak-1").await);
    assert_eq!(timers.len(), 1, "{timers:?}");
    assert_eq!(
        timers[0]["at_ms"],
        common::START_MS + 2_000,
        "dated at its due time, not at the restart"
    );

    // More passes of the worker, and another restart, change nothing.
    server.clock.advance_ms(10_000);
    tokio::time::sleep(Duration::from_millis(
        3 * levee_server::timers::TIMER_POLL_INTERVAL_MS,
    ))
    .await;
    let server = server.restart(common::START_MS + 20_000, None).await;
    tokio::time::sleep(Duration::from_millis(
        3 * levee_server::timers::TIMER_POLL_INTERVAL_MS,
    ))
    .await;
    let history = server.history("soak-1").await;
    assert_eq!(
        timer_entries(&history).len(),
        1,
        "still exactly one timer entry: {history:?}"
    );
    assert_eq!(
        server.machine("soak-1").await["timer_due_at"],
        Value::Null,
        "no timer left armed"
    );
}
