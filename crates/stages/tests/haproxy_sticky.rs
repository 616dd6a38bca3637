//! `sticky_drain` on a real HAProxy (Debian's 2.6) in TCP mode in front of servers that hold
//! every connection open, as chat or messaging servers hold sessions: the drained server
//! takes no new session, its remaining sessions are torn down (`shutdown sessions server`),
//! it ends in maintenance, and the other server's sessions are untouched; the restore brings
//! it back.
//!
//! Without an `haproxy` binary the test fails when `CI` is set and says why it is skipped
//! otherwise.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use levee_stages::{CancelToken, Haproxy, HaproxySocket, Registry, StageContext, TrafficBackend};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Longest the test waits for HAProxy to start or sessions to show.
const WAIT_MS: u64 = 30_000;

fn haproxy_available(test: &str) -> bool {
    let found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
            panic!("{test}: `haproxy` is not installed and CI must run this test");
        }
        eprintln!("SKIPPED {test}: `haproxy` is not installed (apt-get install haproxy)");
    }
    found
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A server that accepts connections and keeps them open until the other side closes.
async fn holding_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0_u8; 64];
                while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

struct Balancer {
    child: Child,
    socket: String,
    front: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_haproxy() -> Balancer {
    let s1 = holding_server().await;
    let s2 = holding_server().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock").display().to_string();
    let front = free_port();
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  stats socket {socket} level admin\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
             frontend fe\n  bind 127.0.0.1:{front}\n  default_backend chat\n\
             backend chat\n  balance roundrobin\n\
             \x20 server s1 127.0.0.1:{s1} weight 100\n  server s2 127.0.0.1:{s2} weight 100\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let balancer = Balancer {
        child,
        socket,
        front,
        _dir: dir,
    };
    let api = Haproxy::new(HaproxySocket::parse(&balancer.socket).unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while api.status("chat/s1").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "haproxy never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    balancer
}

async fn sessions(api: &Haproxy, server: &str) -> u64 {
    api.status(server).await.unwrap().sessions
}

/// Whether the balancer closed this client connection (read gives EOF or an error).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buffer = [0_u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn sticky_drain_tears_down_a_real_haproxy_servers_sessions_and_restores_it() {
    if !haproxy_available("sticky_drain_tears_down_a_real_haproxy_servers_sessions") {
        return;
    }
    let balancer = start_haproxy().await;
    let api = Haproxy::new(HaproxySocket::parse(&balancer.socket).unwrap());
    // Four sessions, two on each server (round robin).
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(
            TcpStream::connect(("127.0.0.1", balancer.front))
                .await
                .unwrap(),
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while sessions(&api, "chat/s1").await + sessions(&api, "chat/s2").await < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sessions never showed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sessions(&api, "chat/s1").await, 2);
    let registry = Registry::builtin();
    let stage = registry.stage("sticky_drain").unwrap();
    let drain = json!({ "haproxy": balancer.socket, "servers": ["chat/s1"],
                        "sessions_below": 5, "session_timeout": "10s" });
    registry.validate_stage("sticky_drain", &drain).unwrap();
    let ctx = StageContext::new("chat", "run", Duration::from_secs(60), CancelToken::never());
    let output = ctx.output.clone();
    let outcome = stage.run(ctx, &drain).await;
    assert!(outcome.is_success(), "{outcome:?}");
    let status = api.status("chat/s1").await.unwrap();
    assert!(status.maintenance && status.weight == 0, "{status:?}");
    assert_eq!(status.sessions, 0);
    assert!(output.snapshot().text.contains("teardown batch 1 of 1"));
    // s1's two sessions were torn down; s2's two go on.
    let mut torn = 0;
    for client in &mut clients {
        if closed(client).await {
            torn += 1;
        }
    }
    assert_eq!(torn, 2);
    assert_eq!(sessions(&api, "chat/s2").await, 2);
    // New sessions all land on s2.
    let _more = TcpStream::connect(("127.0.0.1", balancer.front))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sessions(&api, "chat/s1").await, 0);

    let restore = json!({ "haproxy": balancer.socket, "servers": ["chat/s1"], "restore": true,
                          "to_weight": 100, "first_step": 20, "step": "40%" });
    let ctx = StageContext::new("chat", "run", Duration::from_secs(60), CancelToken::never());
    let outcome = stage.run(ctx, &restore).await;
    assert!(outcome.is_success(), "{outcome:?}");
    let status = api.status("chat/s1").await.unwrap();
    assert!(
        !status.maintenance && !status.draining && status.weight == 100,
        "{status:?}"
    );
}
