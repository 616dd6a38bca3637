//! Benchmarks of Levee's HTTP server against baselines measured in the same run.
//!
//! Speed goals are checked here, by a program that prints ratios, and not by timed tests: a ratio
//! against a bare HTTP server measured a moment earlier on the same machine means the same thing
//! on a fast laptop and on a contended 2-core CI runner, where an absolute threshold means
//! nothing. All traffic goes to loopback addresses, and every loop stops by itself after a bounded
//! time and a bounded number of iterations.
//!
//! - [`load`] is the load generator: concurrent HTTP/1.1 clients with latency histograms.
//! - [`bare`] is the baseline: the least an HTTP server can do, run as a separate process.
//! - [`levee`] starts Levee's server and sets up machines through its JSON API.
//! - [`suite`] measures both servers case by case; [`report`] prints the tables.
//! - [`stateservice`] holds StateService's figures and Levee's goals.
//! - [`runs`] is the runbook engine-overhead benchmark: runbooks of no-op tasks run end to end on
//!   SQLite in this process, next to a raw SQLite commit loop and the pure scheduler alone.

pub mod bare;
pub mod client;
pub mod levee;
pub mod load;
pub mod procfs;
pub mod replicas;
pub mod report;
pub mod runs;
pub mod stateservice;
pub mod suite;
pub mod target;
