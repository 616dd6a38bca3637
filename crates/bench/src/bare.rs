//! The bare baseline: the least an HTTP/1.1 server on this machine can do, answering every request
//! with 200 and the body `green_state` (what a yes to a state check looks like). Levee's request
//! rate is reported as a fraction of this server's, measured in the same run.
//!
//! The suite runs it as a separate process, started from this same executable with the `bare`
//! subcommand, so that it is measured exactly as Levee's server process is: over loopback, with
//! its own runtime and threads, its CPU time read from `/proc`.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// The body of every answer.
pub const BODY: &[u8] = b"green_state";

/// How long a bare server process runs at most unless told otherwise, in seconds.
pub const LIFETIME_S_DEFAULT: u64 = 3_600;

/// How long the suite waits for a bare server process to print its address, in seconds.
const START_TIMEOUT_S: u64 = 10;

/// Serves the bare baseline on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Running out of file descriptors or a connection reset before accept is the
                // client's problem, not a reason to stop serving.
                Err(_) => continue,
            },
        };
        // Ignored: a client that has gone away cannot be told anything.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_request: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            // A client that breaks its connection ends only that connection.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The `bare` subcommand: binds `listen`, prints the bound address as the first line on stdout,
/// and serves until `lifetime` has passed or, with `exit_on_stdin_eof`, its standard input closes
/// (which is how the suite makes sure the server never outlives it).
pub async fn run_process(
    listen: SocketAddr,
    lifetime: Duration,
    exit_on_stdin_eof: bool,
) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("could not listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{addr}")?;
    stdout.flush()?;
    drop(stdout);

    let (stdin_closed_tx, stdin_closed_rx) = oneshot::channel::<()>();
    if exit_on_stdin_eof {
        // Blocking reads of stdin on a thread of their own: the loop ends at end of file or on
        // an error, both meaning the parent has gone.
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buffer = [0_u8; 256];
            while matches!(stdin.read(&mut buffer), Ok(n) if n > 0) {}
            let _ = stdin_closed_tx.send(());
        });
    }
    let shutdown = async move {
        let stdin_closed = async {
            if exit_on_stdin_eof {
                let _ = stdin_closed_rx.await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = tokio::time::sleep(lifetime) => {}
            () = stdin_closed => {}
        }
    };
    serve(listener, shutdown).await
}

/// A bare server running as a child process; it is killed when this is dropped.
pub struct BareProcess {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl BareProcess {
    /// Starts `executable bare --listen 127.0.0.1:0 --exit-on-stdin-eof` and reads its address.
    /// `executable` is this benchmark's own binary (or any binary with the same `bare`
    /// subcommand).
    pub async fn start(executable: &Path) -> Result<Self> {
        let mut child = Command::new(executable)
            .args(["bare", "--listen", "127.0.0.1:0", "--exit-on-stdin-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start the bare server {}", executable.display()))?;
        let pid = child.id().context("the bare server exited at once")?;
        let stdout = child
            .stdout
            .take()
            .context("the bare server's stdout is piped")?;
        let mut first_line = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut first_line);
        match tokio::time::timeout(Duration::from_secs(START_TIMEOUT_S), read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => bail!("the bare server exited before printing its address"),
            Ok(Err(error)) => {
                return Err(error).context("could not read the bare server's address");
            }
            Err(_) => bail!("the bare server printed no address within {START_TIMEOUT_S} s"),
        }
        let addr = first_line
            .trim()
            .parse()
            .with_context(|| format!("the bare server printed {first_line:?}, not an address"))?;
        Ok(Self { child, addr, pid })
    }

    /// Stops the server and waits for it to exit.
    pub async fn stop(mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .context("could not stop the bare server")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;
    use hyper::Method;

    #[tokio::test]
    async fn answers_every_request_with_green_state() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = stop_rx.await;
        }));
        for (method, path) in [(Method::GET, "/state?state=x"), (Method::PUT, "/anything")] {
            let answer = client::request(addr, method, path, None, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, BODY);
        }
        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
