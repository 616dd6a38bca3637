//! The timer worker: commits every timer that is due. Reads do not wait for it (answers use
//! the engine's effective state), but history, webhooks and other replicas do.

use std::sync::Arc;
use std::time::Duration;

use crate::App;

/// How often the worker looks for due timers.
pub const TIMER_POLL_INTERVAL_MS: u64 = 200;
/// Most machines moved per pass; the next pass takes the rest.
pub const TIMER_BATCH_LIMIT: u32 = 1_000;
/// How often tokens are reloaded from the store, so a token created or revoked by the CLI
/// (`levee token create --database`) or another replica takes effect without a restart.
pub const TOKEN_REFRESH_INTERVAL_MS: u64 = 5_000;

/// Reloads tokens every [`TOKEN_REFRESH_INTERVAL_MS`] until `shutdown` resolves.
pub async fn refresh_tokens(app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(Duration::from_millis(TOKEN_REFRESH_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = interval.tick() => {}
        }
        if let Err(error) = app.auth.refresh(&app.store).await {
            tracing::warn!(%error, "reloading tokens failed; keeping the ones loaded");
        }
    }
}

/// Runs until `shutdown` resolves. Errors are logged and retried on the next pass: a store
/// that is down for a while delays timers, it never loses them (they are rows, not threads).
pub async fn run(app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(Duration::from_millis(TIMER_POLL_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = interval.tick() => {}
        }
        loop {
            match app.fire_due_timers(TIMER_BATCH_LIMIT).await {
                Ok(moved) if moved as u32 == TIMER_BATCH_LIMIT => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "firing timers failed; retrying");
                    break;
                }
            }
        }
    }
}
