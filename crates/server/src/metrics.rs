//! Prometheus metrics. One recorder per process (the `metrics` facade is global); every
//! [`App`](crate::App) in the process shares it.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::SharedString;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often recorded histogram samples are folded into their buckets. The exporter keeps
/// raw samples until then, so without this upkeep its memory grows with every request.
pub const METRICS_UPKEEP_INTERVAL_MS: u64 = 5_000;
/// Upper bounds of the request-duration histogram, in seconds: from a cached yes/no answer
/// (tens of microseconds) to a slow page of the JSON API.
const REQUEST_DURATION_BUCKETS_S: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the process-wide recorder the first time; later calls share it.
    pub fn install() -> Metrics {
        let handle = HANDLE
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets(REQUEST_DURATION_BUCKETS_S)
                    .expect("the bucket list is not empty")
                    .build_recorder();
                let handle = recorder.handle();
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(
                    move || loop {
                        std::thread::sleep(std::time::Duration::from_millis(
                            METRICS_UPKEEP_INTERVAL_MS,
                        ));
                        upkeep.run_upkeep();
                    },
                );
                if let Err(error) = spawned {
                    tracing::warn!(%error, "no metrics upkeep thread: histograms grow until scraped");
                }
                // Another recorder may already be installed (an embedding program's); ours
                // then still renders what we record through it.
                let _ = metrics::set_global_recorder(recorder);
                metrics::describe_counter!(
                    "levee_http_requests_total",
                    "HTTP requests answered, by route and status"
                );
                metrics::describe_histogram!(
                    "levee_http_request_duration_seconds",
                    "Time to answer an HTTP request, by route"
                );
                metrics::describe_counter!(
                    "levee_machine_history_entries_total",
                    "Committed machine history entries (reports counted and transitions)"
                );
                metrics::describe_gauge!(
                    "levee_machines",
                    "Machine instances known to this replica"
                );
                metrics::describe_counter!("levee_runs_created_total", "Runbook runs created");
                metrics::describe_counter!(
                    "levee_runs_finished_total",
                    "Runbook runs that reached an end state, by status"
                );
                metrics::describe_counter!(
                    "levee_run_tasks_ended_total",
                    "Task attempts that ended, by outcome"
                );
                metrics::describe_counter!(
                    "levee_run_notifications_total",
                    "Run notifications raised (stalls, failures, approvals needed, stuck tasks), \
                     by kind"
                );
                metrics::describe_counter!(
                    "levee_webhook_deliveries_total",
                    "Webhook notifications, by outcome (ok, failed, dropped)"
                );
                metrics::describe_counter!(
                    "levee_stuck_tasks_total",
                    "Stuck alerts: a task ran past the 75th percentile of its history"
                );
                handle
            })
            .clone();
        Metrics { handle }
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }

    pub fn transitions(&self, entries: usize) {
        metrics::counter!("levee_machine_history_entries_total").increment(entries as u64);
    }

    pub fn set_machines(&self, count: usize) {
        metrics::gauge!("levee_machines").set(count as f64);
    }

    pub fn run_created(&self) {
        metrics::counter!("levee_runs_created_total").increment(1);
    }

    /// A run commit the store refused because this replica's lease epoch was stale.
    pub fn fenced_commit(&self) {
        metrics::counter!("levee_run_commits_fenced_total").increment(1);
    }

    pub fn run_finished(&self, status: levee_engine::runbook::RunStatus) {
        metrics::counter!("levee_runs_finished_total", "status" => status.name()).increment(1);
    }

    /// `outcome` is one of a few static names (`succeeded`, `failed`, ...).
    pub fn task_ended(&self, outcome: &'static str) {
        metrics::counter!("levee_run_tasks_ended_total", "outcome" => outcome).increment(1);
    }

    pub fn run_notification(&self, kind: levee_engine::runbook::NotifyKind) {
        use levee_engine::runbook::NotifyKind;
        let name = match kind {
            NotifyKind::Stalled => "stalled",
            NotifyKind::Failed => "failed",
            NotifyKind::ApprovalNeeded => "approval_needed",
            NotifyKind::Stuck => "stuck",
            NotifyKind::Finished => "finished",
        };
        metrics::counter!("levee_run_notifications_total", "kind" => name).increment(1);
        if kind == NotifyKind::Stuck {
            metrics::counter!("levee_stuck_tasks_total").increment(1);
        }
    }
}

/// Middleware counting requests by matched route (never by raw path, which would let clients
/// create unbounded label values) and status. Labels are static strings so the hot path
/// allocates nothing for them.
pub async fn track(request: Request, next: Next) -> Response {
    let route: SharedString = match request.extensions().get::<MatchedPath>() {
        Some(path) => match path.as_str() {
            // The hot routes, without an allocation.
            "/state" => SharedString::const_str("/state"),
            "/machines/{id}/state" => SharedString::const_str("/machines/{id}/state"),
            other => SharedString::from(other.to_string()),
        },
        None => SharedString::const_str("unmatched"),
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = SharedString::const_str(status_label(response.status().as_u16()));
    metrics::counter!("levee_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("levee_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        409 => "409",
        413 => "413",
        422 => "422",
        500 => "500",
        503 => "503",
        other if other < 200 => "1xx",
        other if other < 300 => "2xx",
        other if other < 400 => "3xx",
        other if other < 500 => "4xx",
        _ => "5xx",
    }
}
