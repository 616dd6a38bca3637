//! This process as one of several replicas sharing a store.
//!
//! Every replica is identical and keeps no state of its own: a run is executed by the replica
//! holding its lease (see `levee_store::Store::claim_runs`), and only there does the run have
//! an actor. A background loop ([`run`]) heartbeats, renews the leases this replica holds
//! every third of the lease time, stops the actor of every run whose lease it lost, claims
//! active runs nobody holds (takeover, with `Event::Recovered`), and re-reads server-wide
//! settings (the global pause) every [`GLOBAL_STATE_POLL_MS`]. Every commit of an actor
//! carries its lease epoch, so a replica that lost a run without noticing (paused past its
//! lease) has its writes refused and stops.
//!
//! A control for a run another replica holds is forwarded over HTTP to that replica's
//! announced address (see `http::runs::control_run`); a run nobody holds is claimed by the
//! replica the control reached.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use levee_engine::runbook::RunStatus;
use levee_store::{Lease, Notice};
use tokio::sync::broadcast;

use crate::machines::App;

/// How long a lease lasts unless renewed: a dead replica's runs are taken over within this
/// (plus one claim interval).
pub const LEASE_TTL_MS: u64 = 10_000;
/// Leases are renewed, and unowned runs claimed, this many times per lease time.
pub const LEASE_ROUNDS_PER_TTL: u64 = 3;
/// Longest a change to server-wide settings (the global pause) made on another replica takes
/// to reach this one.
pub const GLOBAL_STATE_POLL_MS: u64 = 1_000;
/// Most runs one claim takes; a replica claims again at once while it gets full batches.
pub const CLAIM_BATCH_RUNS: u32 = 64;
/// Replicas listed by `/api/v1/replicas`: those heard from within this many lease times.
pub const REPLICA_SEEN_WITHIN_TTLS: u64 = 3;
/// How long a control forwarded to the run's owner may take.
pub const FORWARD_TIMEOUT_MS: u64 = 25_000;
/// Header naming the replica that forwarded a request; a forwarded request is never
/// forwarded again.
pub const FORWARDED_BY_HEADER: &str = "x-levee-forwarded-by";

/// This replica: who it is, where it is reached, and the leases it holds.
pub struct Replica {
    /// `hostname-pid-random`: unique per process, even after a restart with the same pid.
    pub id: String,
    /// Where other replicas reach this one (`http://host:port`).
    pub address: String,
    pub started_at_ms: i64,
    pub lease_ttl_ms: u64,
    pub global_state_poll_ms: u64,
    /// How long running attempts get to finish on shutdown.
    pub shutdown_steps_grace_ms: u64,
    /// Ignore the store's notices and only poll (`levee serve --poll-only`).
    pub poll_only: bool,
    leases: std::sync::Mutex<HashMap<String, Lease>>,
    claiming: AtomicBool,
    pub(crate) client: reqwest::Client,
}

/// `hostname-pid-random`.
pub fn new_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "levee".to_string());
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0x00ff_ffff
    )
}

impl Replica {
    pub fn new(
        address: String,
        started_at_ms: i64,
        lease_ttl_ms: u64,
        global_state_poll_ms: u64,
        shutdown_steps_grace_ms: u64,
        poll_only: bool,
    ) -> Replica {
        Replica {
            id: new_replica_id(),
            address,
            started_at_ms,
            lease_ttl_ms: lease_ttl_ms.max(LEASE_ROUNDS_PER_TTL),
            global_state_poll_ms: global_state_poll_ms.max(1),
            shutdown_steps_grace_ms,
            poll_only,
            leases: std::sync::Mutex::new(HashMap::new()),
            claiming: AtomicBool::new(true),
            client: reqwest::Client::builder()
                .timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
                .build()
                .unwrap_or_default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl_ms).unwrap_or(i64::MAX)
    }

    /// How often leases are renewed and runs claimed.
    pub fn round_ms(&self) -> u64 {
        self.lease_ttl_ms / LEASE_ROUNDS_PER_TTL
    }

    pub(crate) fn hold(&self, lease: Lease) {
        self.lock().insert(lease.run_id.clone(), lease);
    }

    /// Stops renewing the lease on `run_id` if it is still at `epoch`.
    pub(crate) fn forget(&self, run_id: &str, epoch: i64) {
        let mut leases = self.lock();
        if leases.get(run_id).is_some_and(|l| l.epoch == epoch) {
            leases.remove(run_id);
        }
    }

    pub fn held(&self) -> Vec<Lease> {
        let mut held: Vec<Lease> = self.lock().values().cloned().collect();
        held.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        held
    }

    /// Whether this replica claims runs (it stops when it shuts down).
    pub fn is_claiming(&self) -> bool {
        self.claiming.load(Ordering::SeqCst)
    }

    pub fn stop_claiming(&self) {
        self.claiming.store(false, Ordering::SeqCst);
    }
}

/// Runs the replica's loops until `stop` resolves: lease rounds and global-state polls on
/// their intervals, and (unless `poll_only`) the store's notices, which wake the same work at
/// once.
pub async fn run(app: Arc<App>, stop: impl std::future::Future<Output = ()>) {
    let mut leases = tokio::time::interval(Duration::from_millis(app.replica.round_ms().max(1)));
    leases.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut global = tokio::time::interval(Duration::from_millis(app.replica.global_state_poll_ms));
    global.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Notices are followed on a task of their own, so refreshing caches never delays a
    // lease renewal.
    let notices = (!app.replica.poll_only).then(|| {
        let receiver = app.store.notices();
        tokio::spawn(follow_notices(Arc::clone(&app), receiver))
    });
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = leases.tick() => app.lease_round().await,
            _ = global.tick() => app.poll_global_state().await,
        }
    }
    if let Some(notices) = notices {
        notices.abort();
    }
}

/// Acts on the store's notices: claims released runs at once, re-reads the global pause and
/// the definitions when another replica changed them, and refreshes cached machines another
/// replica moved on. After a gap (`Resync`, or this receiver lagging) it re-reads all of it.
async fn follow_notices(app: Arc<App>, mut notices: broadcast::Receiver<Notice>) {
    loop {
        let notice = match notices.recv().await {
            Ok(notice) => notice,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "notices lagged; re-reading everything");
                Notice::Resync
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        app.on_notice(notice).await;
    }
}

impl App {
    /// One round: heartbeat, renew, stop what was lost, claim what nobody holds.
    pub async fn lease_round(self: &Arc<Self>) {
        let replica = &self.replica;
        let now = self.now_ms();
        if let Err(error) = self
            .store
            .heartbeat(&replica.id, &replica.address, replica.started_at_ms, now)
            .await
        {
            tracing::warn!(%error, "replica heartbeat failed");
        }
        let held = replica.held();
        if !held.is_empty() {
            match self
                .store
                .renew_leases(&replica.id, &held, now, replica.ttl_ms())
                .await
            {
                Ok(renewed) => {
                    let kept: HashMap<&str, &Lease> =
                        renewed.iter().map(|l| (l.run_id.as_str(), l)).collect();
                    for lease in &held {
                        match kept.get(lease.run_id.as_str()) {
                            Some(renewed) => replica.hold((*renewed).clone()),
                            None => {
                                tracing::warn!(run = %lease.run_id, epoch = lease.epoch, "lease lost to another replica; stopping the run's actor");
                                replica.forget(&lease.run_id, lease.epoch);
                                self.runs.lose(&lease.run_id, lease.epoch);
                            }
                        }
                    }
                }
                Err(error) => {
                    // The leases may expire meanwhile; if another replica takes a run over,
                    // its epoch fences this one's writes.
                    tracing::warn!(%error, "cannot renew leases");
                }
            }
        }
        if replica.is_claiming() {
            self.claim_unowned(now, replica.ttl_ms()).await;
        }
    }

    /// Claims active runs nobody holds (or whose holder's lease expired, as of `as_of_ms`) and
    /// starts their actors with `Recovered`.
    pub(crate) async fn claim_unowned(self: &Arc<Self>, as_of_ms: i64, ttl_ms: i64) -> usize {
        let mut claimed = 0;
        loop {
            let leases = match self
                .store
                .claim_runs(&self.replica.id, as_of_ms, ttl_ms, CLAIM_BATCH_RUNS)
                .await
            {
                Ok(leases) => leases,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim runs");
                    return claimed;
                }
            };
            let full = leases.len() >= CLAIM_BATCH_RUNS as usize;
            for lease in leases {
                tracing::info!(run = %lease.run_id, epoch = lease.epoch, "took the run over");
                if self.take_over(lease).await {
                    claimed += 1;
                }
            }
            if !full || !self.replica.is_claiming() {
                return claimed;
            }
        }
    }

    /// Starts the actor of a run this replica just claimed; gives the lease back if it cannot.
    async fn take_over(self: &Arc<Self>, lease: Lease) -> bool {
        let stored = match self.store.load_run(&lease.run_id).await {
            Ok(Some(stored)) => stored,
            other => {
                tracing::error!(run = %lease.run_id, ?other, "cannot load a claimed run; releasing it");
                self.release(&[lease]).await;
                return false;
            }
        };
        // An actor of an older epoch (this replica lost the run and won it back) stops first.
        self.runs.lose(&lease.run_id, lease.epoch);
        let recover = matches!(
            stored.state.run.status,
            RunStatus::Running | RunStatus::Paused
        );
        match self.spawn_actor(stored, recover, lease.clone()) {
            Ok(_) => true,
            Err(error) => {
                tracing::error!(run = %lease.run_id, error = %error.message, "cannot start a claimed run; releasing it");
                self.release(&[lease]).await;
                false
            }
        }
    }

    pub(crate) async fn release(&self, leases: &[Lease]) {
        for lease in leases {
            self.replica.forget(&lease.run_id, lease.epoch);
        }
        if let Err(error) = self.store.release_leases(&self.replica.id, leases).await {
            tracing::warn!(%error, "cannot release leases; they expire on their own");
        }
    }

    /// What one notice from the store asks this replica to do.
    pub async fn on_notice(self: &Arc<Self>, notice: Notice) {
        match notice {
            Notice::RunsClaimable => {
                if self.replica.is_claiming() {
                    self.claim_unowned(self.now_ms(), self.replica.ttl_ms())
                        .await;
                }
            }
            Notice::Setting { key } => {
                if key == crate::runs::GLOBAL_PAUSE_SETTING {
                    self.poll_global_state().await;
                }
            }
            Notice::Definitions => {
                if let Err(error) = self.reload_definitions().await {
                    tracing::warn!(%error, "cannot re-read definitions another replica stored");
                }
            }
            Notice::Machines { versions } => self.refresh_machines(&versions).await,
            Notice::Resync => {
                self.poll_global_state().await;
                if let Err(error) = self.reload().await {
                    tracing::warn!(%error, "cannot re-read definitions and machines");
                }
                if self.replica.is_claiming() {
                    self.claim_unowned(self.now_ms(), self.replica.ttl_ms())
                        .await;
                }
            }
        }
    }

    /// Drops the cached machines older than the versions another writer committed; each is
    /// read from the store on its next use. Dropping, not re-reading: re-reading every
    /// machine another replica moved cost two reads per transition with three replicas and
    /// halved their throughput (`levee-bench replicas`).
    async fn refresh_machines(&self, versions: &[(String, i64)]) {
        self.forget_older_machines(versions);
    }

    /// Re-reads server-wide settings another replica may have changed.
    pub async fn poll_global_state(&self) {
        match crate::runs::load_global_pause(&self.store).await {
            Ok(paused) => self.runs.apply_global_pause(paused),
            Err(error) => tracing::warn!(%error, "cannot read the global pause"),
        }
    }

    /// Stops claiming, stops every actor (cancelling its attempts) and releases every lease,
    /// so other replicas take the runs over at once.
    pub async fn release_all(&self) {
        self.replica.stop_claiming();
        let held = self.replica.held();
        for lease in &held {
            self.runs.lose(&lease.run_id, lease.epoch);
        }
        self.release(&held).await;
        tracing::info!(runs = held.len(), "released every lease");
    }
}
