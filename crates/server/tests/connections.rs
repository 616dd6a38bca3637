//! Connections as clients really make them: StateService's single-threaded server let one
//! half-open connection stall every other request; Levee must not. Also `Connection: close`
//! (what StateService's own server did after every answer) and slow clients being cut off.

mod common;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests sent while the half-open connections are held.
const REQUESTS_WHILE_HELD: usize = 100;

/// The longest any one of those requests may take, in milliseconds: far above a normal answer
/// on loopback (well under 10 ms), far below the server's header timeout, which is what a
/// stalled server would make them wait for.
const MAX_ANSWER_WHILE_HELD_MS: u128 = 2_000;

/// Slack on top of the server's header timeout before a test decides a slow client was never
/// cut off, in milliseconds.
const HEADER_TIMEOUT_SLACK_MS: u64 = 5_000;

/// Opens connections that send nothing, half a request line, or headers without their end,
/// and keeps them open.
async fn hold_half_open_connections(addr: std::net::SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for partial in [
        "",
        "",
        "GET /sta",
        "PUT /state?state=gre",
        "GET /state?state=green_state HTTP/1.1\r\nHost: 127",
    ] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(partial.as_bytes())
            .await
            .expect("send a partial request");
        held.push(stream);
    }
    held
}

#[tokio::test]
async fn half_open_connections_do_not_stall_other_requests() {
    let server = common::start_readme().await;
    let held = hold_half_open_connections(server.addr).await;

    for n in 0..REQUESTS_WHILE_HELD {
        // A fresh client each time, so no answer can ride on a connection opened earlier.
        let client = if n % 2 == 0 {
            server.client.clone()
        } else {
            common::client()
        };
        let started = Instant::now();
        let answer = client
            .get(server.url("/state?state=green_state"))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("request {n} failed while half-open connections were held: {e}")
            });
        assert_eq!(answer.status(), StatusCode::OK);
        let took_ms = started.elapsed().as_millis();
        assert!(
            took_ms < MAX_ANSWER_WHILE_HELD_MS,
            "request {n} took {took_ms} ms"
        );
    }
    let answer = server.put("/state?state=green_state").await;
    assert_eq!(answer.status, StatusCode::OK, "writes go through too");
    drop(held);
}

#[tokio::test]
async fn connection_close_is_answered_and_closed() {
    let server = common::start_readme().await;
    for _ in 0..3 {
        let answer = common::raw_request(
            server.addr,
            "GET /state?state=green_state HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(common::raw_status(&answer), 200, "{answer:?}");
        assert_eq!(common::raw_body(&answer), "green_state");
    }
    // HTTP/1.0 without keep-alive, as old clients send it.
    let answer =
        common::raw_request(server.addr, "GET /state?state=red_state HTTP/1.0\r\n\r\n").await;
    assert_eq!(common::raw_status(&answer), 406, "{answer:?}");
    assert_eq!(common::raw_body(&answer), "");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let server = common::start_readme().await;
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /state?state=green_state HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("send");
    let limit = Duration::from_millis(
        levee_server::serve::HEADER_READ_TIMEOUT_MS + HEADER_TIMEOUT_SLACK_MS,
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(limit, slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the server kept a connection with unfinished headers open for {limit:?}"
    );
    let answer = String::from_utf8_lossy(&rest);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "unfinished headers were answered as a request: {answer:?}"
    );
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_is_cut_off() {
    let server = common::start_readme().await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let limit = Duration::from_millis(
        levee_server::serve::HEADER_READ_TIMEOUT_MS + HEADER_TIMEOUT_SLACK_MS,
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(limit, silent.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the server kept a silent connection open for {limit:?}"
    );
}
