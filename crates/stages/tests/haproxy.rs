//! The traffic stages on a real HAProxy (Debian's 2.6) in TCP mode in front of servers that
//! hold every connection open, as chat or messaging servers hold sessions:
//! - `sticky_drain`: the drained server takes no new session, its remaining sessions are
//!   torn down (`shutdown sessions server`), it ends in maintenance, and the other server's
//!   sessions are untouched; the restore brings it back;
//! - `traffic_shift` in a closed loop on a real Prometheus (2.42) scraping an error ratio
//!   that rises as the server's weight falls: the shift slows near the limit and stops at it.
//!
//! Without an `haproxy` or `prometheus` binary the tests fail when `CI` is set and say why
//! they are skipped otherwise.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::sync::Arc;

use levee_stages::{
    CancelToken, Haproxy, HaproxySocket, PrometheusSource, Registry, StageContext, StageOutcome,
    TrafficBackend,
};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Longest the test waits for HAProxy to start or sessions to show.
const WAIT_MS: u64 = 30_000;

/// How often Prometheus scrapes the error ratio, in milliseconds.
const SCRAPE_INTERVAL_MS: u64 = 200;

fn haproxy_available(test: &str) -> bool {
    available(test, "haproxy", "-v")
}

fn available(test: &str, program: &str, version_flag: &str) -> bool {
    let found = Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
            panic!("{test}: `{program}` is not installed and CI must run this test");
        }
        eprintln!("SKIPPED {test}: `{program}` is not installed (apt-get install {program})");
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

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_prometheus(target_port: u16) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL_MS}ms\n  scrape_timeout: {SCRAPE_INTERVAL_MS}ms\n\
             scrape_configs:\n  - job_name: chat\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let ready = client
            .get(format!("{}/-/ready", prometheus.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return prometheus;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The complaint: "the shift kept going while errors rose". The error ratio Prometheus
/// scrapes rises by 0.002 for every unit of weight s1 loses (its share lands on a server
/// that cannot take it); with a limit of 0.05 the shift must slow down past 0.025 and stop
/// before taking a step at 0.05 or more, leaving s1 at weight 75 or more.
#[tokio::test]
async fn a_closed_loop_shift_on_haproxy_stops_when_prometheus_sees_errors_rise() {
    let test = "a_closed_loop_shift_on_haproxy_stops_when_prometheus_sees_errors_rise";
    if !haproxy_available(test) || !available(test, "prometheus", "--version") {
        return;
    }
    let balancer = start_haproxy().await;
    let socket = balancer.socket.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let api = Haproxy::new(HaproxySocket::parse(&socket).unwrap());
            async move {
                let weight = api.status("chat/s1").await.map_or(0, |s| s.weight);
                let errors = 0.001 + f64::from(100_u32.saturating_sub(weight)) * 0.002;
                format!("# TYPE chat_error_ratio gauge\nchat_error_ratio {errors}\n")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let prometheus = start_prometheus(metrics_port).await;
    let source = PrometheusSource::new(&prometheus.url).unwrap();
    let query = "max(chat_error_ratio)";
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while !matches!(levee_stages::MetricSource::query(&source, query).await, Ok(v) if v < 0.01) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus never scraped the ratio"
        );
        tokio::time::sleep(Duration::from_millis(SCRAPE_INTERVAL_MS)).await;
    }
    let registry = Registry::with_metric_source(Arc::new(source));
    let args = json!({
        "haproxy": balancer.socket, "servers": ["chat/s1"], "to_weight": 0,
        "first_step": 5, "step": 10, "wait": "2s",
        "health_query": query, "health_below": 0.05,
    });
    registry.validate_stage("traffic_shift", &args).unwrap();
    let ctx = StageContext::new(
        "shift",
        "run",
        Duration::from_secs(120),
        CancelToken::never(),
    );
    let output = ctx.output.clone();
    let outcome = registry
        .stage("traffic_shift")
        .unwrap()
        .run(ctx, &args)
        .await;
    let output = output.snapshot().text;
    let StageOutcome::Failed { error, .. } = outcome else {
        panic!("the shift went on: {outcome:?}\n{output}");
    };
    assert!(
        error.contains("at or above its limit 0.05"),
        "{error}\n{output}"
    );
    let weight = Haproxy::new(HaproxySocket::parse(&balancer.socket).unwrap())
        .status("chat/s1")
        .await
        .unwrap()
        .weight;
    assert!(
        (75..=80).contains(&weight),
        "stopped at {weight}:\n{output}"
    );
    assert!(output.contains("near the limit"), "{output}");
}
