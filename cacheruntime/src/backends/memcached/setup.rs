//! Setting the pool up (resolving every server, preparing a client for
//! each) in a background task that no caller's op timeout cancels.
//!
//! Placement needs every server's address, so nothing can be served before
//! the lookups end, and a lookup cannot be cancelled (it blocks a thread).
//! Were the setup run by the calls themselves, each call's op timeout would
//! drop it half-way: a lookup slower than the op timeout would then be
//! started again by every call, each call would wait out its op timeout,
//! and no failure would ever be recorded. So:
//! - **one setup at a time**, in a spawned task, whatever the callers do;
//! - calls **wait for it** (within their op timeout) until one caller has
//!   given up waiting: from then on the setup is known to be slow, and
//!   calls **fail at once** (the cache computes) until it ends;
//! - a **failed setup is recorded**: its first waiters get its error, and
//!   calls fail at once ([`Error::CircuitOpen`]) for the breaker's
//!   cool-down, after which one call starts another setup.

use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

use super::config::MemcachedConfig;
use super::servers::{now_ms, Pool};
use super::NAME;
use crate::breaker::Breaker;
use crate::Error;

/// The pool, once set up, and the setup under way or failed.
pub(super) struct Setup {
    shared: Arc<Shared>,
}

struct Shared {
    config: MemcachedConfig,
    pool: OnceLock<Arc<Pool>>,
    /// Open for a cool-down after a failed setup.
    breaker: Breaker,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Counts setups, so that a caller giving up on one marks that one.
    attempt: u64,
    /// The setup under way: its receiver turns `true` when it ends.
    running: Option<watch::Receiver<bool>>,
    /// A caller gave up waiting on the setup under way: calls fail at once
    /// until it ends.
    slow: bool,
    /// Why the last setup failed, for the callers that waited on it.
    failure: Option<Error>,
}

impl Setup {
    pub(super) fn new(config: MemcachedConfig) -> Setup {
        Setup {
            shared: Arc::new(Shared {
                breaker: Breaker::new(1, config.breaker_cool_down),
                config,
                pool: OnceLock::new(),
                state: Mutex::default(),
            }),
        }
    }

    /// The pool, set up by a background task started by the first call
    /// (or the first after a failure's cool-down); see the module docs.
    pub(super) async fn pool(&self) -> Result<&Arc<Pool>, Error> {
        if let Some(pool) = self.shared.pool.get() {
            return Ok(pool);
        }
        let (attempt, mut done) = {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pool) = self.shared.pool.get() {
                return Ok(pool);
            }
            if state
                .running
                .as_ref()
                .is_some_and(|r| r.has_changed().is_err())
            {
                // The task ended without a word (it panicked, or the
                // runtime is shutting down): another may start.
                state.running = None;
            }
            match &state.running {
                Some(_) if state.slow => return Err(still_setting_up()),
                Some(running) => (state.attempt, running.clone()),
                None => {
                    if !self.shared.breaker.allow(now_ms()) {
                        return Err(Error::CircuitOpen { backend: NAME });
                    }
                    let (sender, receiver) = watch::channel(false);
                    state.attempt += 1;
                    state.running = Some(receiver.clone());
                    state.slow = false;
                    tokio::spawn(set_up(self.shared.clone(), sender));
                    (state.attempt, receiver)
                }
            }
        };
        let mut waiting = Waiting {
            shared: &self.shared,
            attempt,
            ended: false,
        };
        // An error here means the task is gone (the runtime is shutting
        // down): the state below says what happened.
        let _ = done.wait_for(|ended| *ended).await;
        waiting.ended = true;
        if let Some(pool) = self.shared.pool.get() {
            return Ok(pool);
        }
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        Err(match &state.failure {
            Some(e) => copy(e),
            None => Error::backend(NAME, "setting the Memcached pool up did not finish"),
        })
    }
}

/// The setup itself: records the pool or the failure, then wakes the
/// callers waiting on it.
async fn set_up(shared: Arc<Shared>, done: watch::Sender<bool>) {
    let outcome = Pool::connect(&shared.config).await;
    {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(pool) => {
                let _ = shared.pool.set(Arc::new(pool));
                shared.breaker.success();
                state.failure = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "setting the Memcached pool up failed; calls skip the \
                    cache for a cool-down, then it is tried again");
                shared.breaker.failure(now_ms());
                state.failure = Some(e);
            }
        }
        state.running = None;
        state.slow = false;
    }
    let _ = done.send(true);
}

/// A caller waiting on a setup: dropped before it ended (the caller's op
/// timeout ran out), it marks that setup slow.
struct Waiting<'a> {
    shared: &'a Shared,
    attempt: u64,
    ended: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.attempt == self.attempt && state.running.is_some() {
            state.slow = true;
        }
    }
}

fn still_setting_up() -> Error {
    Error::backend(
        NAME,
        "the Memcached pool is still being set up (looking its servers' names up takes longer \
         than the op timeout): calls skip the cache until it is ready",
    )
}

/// The errors a setup ends with, for each caller that waited on it.
fn copy(e: &Error) -> Error {
    match e {
        Error::Config(message) => Error::Config(message.clone()),
        Error::Backend { message, .. } => Error::backend(NAME, message.clone()),
        other => Error::backend(NAME, other.to_string()),
    }
}
