//! StateService's figures and Levee's speed goals.
//!
//! StateService cannot be run by this benchmark (it is a Python service that is not installed
//! here), so its figures are the ones measured on this kind of machine and written down in
//! `design/stateservice-compat.md`, "Figures measured on this machine": the median of three 20 s
//! `wrk` runs on 2 contended cores. Its development server closes the connection after every
//! response, so those figures hold whether or not the client asks for keep-alive.

use serde::Serialize;

/// What StateService sustained at one concurrency.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Figure {
    pub concurrency: usize,
    pub requests_per_s: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
}

/// `GET /state?state=S` at concurrency 1, 16 and 64.
pub const GET_FIGURES: [Figure; 3] = [
    Figure {
        concurrency: 1,
        requests_per_s: 1_009.0,
        latency_us_p50: 680,
        latency_us_p99: 5_700,
    },
    Figure {
        concurrency: 16,
        requests_per_s: 1_459.0,
        latency_us_p50: 10_400,
        latency_us_p99: 28_600,
    },
    Figure {
        concurrency: 64,
        requests_per_s: 1_270.0,
        latency_us_p50: 46_900,
        latency_us_p99: 101_000,
    },
];

/// `PUT /state?state=S` at concurrency 1, 16 and 64. StateService does not make them durable: it
/// rewrites its state file in place with no fsync.
pub const PUT_FIGURES: [Figure; 3] = [
    Figure {
        concurrency: 1,
        requests_per_s: 112.0,
        latency_us_p50: 8_000,
        latency_us_p99: 17_300,
    },
    Figure {
        concurrency: 16,
        requests_per_s: 121.0,
        latency_us_p50: 129_000,
        latency_us_p99: 200_000,
    },
    Figure {
        concurrency: 64,
        requests_per_s: 118.0,
        latency_us_p50: 540_000,
        latency_us_p99: 671_000,
    },
];

/// The concurrencies StateService was measured at, which the suite measures Levee at too.
pub const CONCURRENCIES: [usize; 3] = [1, 16, 64];

/// Goal: Levee's state checks reach at least this fraction of the bare server's request rate.
pub const GOAL_FRACTION_OF_BARE_MIN: f64 = 0.70;

/// Goal: Levee's state checks reach at least this multiple of StateService's request rate.
pub const GOAL_TIMES_STATESERVICE_MIN: f64 = 50.0;

/// Goal: durable transitions per second at [`GOAL_DURABLE_TRANSITIONS_CONCURRENCY`].
pub const GOAL_DURABLE_TRANSITIONS_PER_S_MIN: f64 = 10_000.0;

/// The concurrency at which the durable-transition goal applies.
pub const GOAL_DURABLE_TRANSITIONS_CONCURRENCY: usize = 64;

/// StateService's figure at `concurrency` among `figures`, if it was measured there.
pub fn figure_at(figures: &[Figure], concurrency: usize) -> Option<Figure> {
    figures
        .iter()
        .copied()
        .find(|figure| figure.concurrency == concurrency)
}
