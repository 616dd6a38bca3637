//! `levee`: the server, and the command-line client that talks to it.

mod client;
mod commands;
mod demo;
mod deps;
mod drain_tests;
mod maint;
mod runs;
mod serve;
mod sse;
mod terminal;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc: a request allocates a few small buffers, and glibc's allocator was a tenth of
/// the server's CPU time in the state-check benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEVEE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(commands::run(cli))
}
