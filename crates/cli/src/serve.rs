//! `levee serve`: opens the store, loads the app, binds, and serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use levee_server::{App, AppOptions, SystemClock};
use levee_store::postgres::redact_url;
use levee_store::{DynStore, PostgresStore, SqliteStore};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback requires tokens to exist.
    #[arg(long, env = "LEVEE_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// `sqlite://PATH` (a file, created if missing) or `postgres://USER@HOST:PORT/DATABASE`.
    #[arg(
        long,
        env = "LEVEE_DATABASE",
        default_value = "sqlite://levee.db",
        hide_env_values = true
    )]
    pub database: String,
    /// Serve this state machine file at `/state` (StateService's format or `kind: StateMachine`).
    #[arg(long)]
    pub machine: Option<PathBuf>,
    /// POST run notifications (stalled, failed, approval needed, stuck, finished) as JSON to
    /// this `http://` URL; repeat for several.
    #[arg(long = "webhook", env = "LEVEE_WEBHOOKS", value_delimiter = ',')]
    pub webhooks: Vec<String>,
    /// Sign webhook bodies with HMAC-SHA256 of this secret (`X-Levee-Signature: sha256=...`).
    #[arg(long, env = "LEVEE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Ask this Prometheus (`http://127.0.0.1:9090`) for `metric` checks and health gates;
    /// without it every metric check fails closed.
    #[arg(long, env = "LEVEE_PROMETHEUS_URL", value_name = "URL")]
    pub prometheus: Option<String>,
    /// Where other replicas reach this one, to forward controls of the runs it executes
    /// (`http://host:port`). Default: `http://` and the address it listens on.
    #[arg(long, env = "LEVEE_ADVERTISE")]
    pub advertise: Option<String>,
    /// How long a run lease lasts unless renewed, in milliseconds: a dead replica's runs are
    /// taken over after about this long. Renewed every third of it.
    #[arg(long, env = "LEVEE_LEASE_TTL_MS", default_value_t = levee_server::replica::LEASE_TTL_MS)]
    pub lease_ttl_ms: u64,
    /// Ignore the database's notices (PostgreSQL LISTEN/NOTIFY) and only poll: takeovers
    /// after a graceful release and the global pause then reach this replica at the next
    /// lease round or settings poll instead of at once. For measuring, or behind a
    /// connection pooler that does not pass LISTEN through.
    #[arg(long, env = "LEVEE_POLL_ONLY")]
    pub poll_only: bool,
    /// Most hosts maintenance automation takes out of one pool within `--removal-window`,
    /// over every maintenance (`0`: no limit).
    #[arg(long, env = "LEVEE_MAX_REMOVALS_PER_POOL",
        default_value_t = levee_server::maint::flow::DEFAULT_MAX_REMOVALS_PER_POOL)]
    pub max_removals_per_pool: u64,
    /// Most hosts maintenance automation takes out within `--removal-window`, over every
    /// maintenance and fleet (`0`: no limit).
    #[arg(long, env = "LEVEE_MAX_REMOVALS",
        default_value_t = levee_server::maint::flow::DEFAULT_MAX_REMOVALS_OVERALL)]
    pub max_removals: u64,
    /// The sliding window the removal limits count over (`10m`, `1h`).
    #[arg(long, env = "LEVEE_REMOVAL_WINDOW", default_value = "10m",
        value_parser = parse_window_ms)]
    pub removal_window: u64,
}

/// Longest `--removal-window`.
pub const MAX_REMOVAL_WINDOW_MS: u64 = 7 * 24 * 3_600 * 1_000;

fn parse_window_ms(text: &str) -> Result<u64, String> {
    let ms = levee_model::parse_duration_ms(text)?;
    if ms == 0 || ms > MAX_REMOVAL_WINDOW_MS {
        return Err(format!(
            "must be more than 0 and at most {} days",
            MAX_REMOVAL_WINDOW_MS / 86_400_000
        ));
    }
    Ok(ms)
}

/// Shortest lease time `levee serve` accepts: renewals every third of it must fit between
/// the store's round trips.
pub const MIN_LEASE_TTL_MS: u64 = 300;

pub async fn open_store(url: &str) -> anyhow::Result<DynStore> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open_url(url)
            .await
            .with_context(|| format!("cannot open the store at {url}"))?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(url)
            .await
            .with_context(|| format!("cannot open the store at {}", redact_url(url)))?;
        Ok(Arc::new(store))
    } else {
        anyhow::bail!(
            "unknown database URL `{}`: use sqlite://PATH or postgres://...",
            redact_url(url)
        )
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let store = open_store(&args.database).await?;
    // The URL as messages show it: a PostgreSQL URL may carry a password.
    let database = redact_url(&args.database);
    let webhooks = levee_server::webhooks::WebhookConfig {
        urls: args.webhooks.clone(),
        secret: args.webhook_secret.clone(),
        ..Default::default()
    };
    webhooks
        .validate()
        .context("invalid --webhook or --webhook-secret")?;
    let metric_source = match &args.prometheus {
        Some(url) => {
            let source = levee_stages::PrometheusSource::new(url)
                .map_err(|error| anyhow::anyhow!("invalid --prometheus: {error}"))?;
            Some(Arc::new(source) as Arc<dyn levee_stages::MetricSource>)
        }
        None => None,
    };
    if args.lease_ttl_ms < MIN_LEASE_TTL_MS {
        anyhow::bail!(
            "--lease-ttl-ms {} is too short: at least {MIN_LEASE_TTL_MS} ms",
            args.lease_ttl_ms
        );
    }
    // Bound before the app opens, so the replica announces the address it really has.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let options = AppOptions {
        webhooks,
        lease_ttl_ms: Some(args.lease_ttl_ms),
        poll_only: args.poll_only,
        address: args
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{local}")),
        metric_source,
        removal_limits: Some(levee_server::maint::RemovalLimits {
            window_ms: args.removal_window,
            max_per_pool: (args.max_removals_per_pool > 0).then_some(args.max_removals_per_pool),
            max_overall: (args.max_removals > 0).then_some(args.max_removals),
        }),
        ..AppOptions::default()
    };
    let app = App::open(store, Arc::new(SystemClock), options).await?;
    if let Some(path) = &args.machine {
        let file = path.display().to_string();
        let content = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the machine file {file}"))?;
        let id = app.serve_machine_file(&file, &content).await?;
        tracing::info!(machine = %id, file = %file, "serving the machine at /state");
    }
    if !app.auth.required() {
        if !args.listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to serve on {} without authentication: anyone who can reach it could \
                 change state. Create an admin token first:\n  levee token create admin --role \
                 admin --database {}\nthen restart, or listen on 127.0.0.1 for a local trial",
                args.listen,
                database
            );
        }
        tracing::warn!(
            "authentication is off (no tokens exist): anyone on this machine can change state; \
             create one with `levee token create NAME --role admin --database {}`",
            database
        );
    }
    tracing::info!(
        address = %format!("http://{local}"),
        ui = %format!("http://{local}/ui/"),
        store = %database,
        machines = app.cached_count(),
        "Levee is serving"
    );
    levee_server::serve(listener, app, shutdown_signal()).await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
