//! Prometheus metrics. One recorder per process (the `metrics` facade is global); every
//! [`App`](crate::App) in the process shares it.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the process-wide recorder the first time; later calls share it.
    pub fn install() -> Metrics {
        let handle = HANDLE
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new().build_recorder();
                let handle = recorder.handle();
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
}

/// Middleware counting requests by matched route (never by raw path, which would let clients
/// create unbounded label values) and status.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("levee_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("levee_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
