//! Store I/O under the cache's guards: every call bounded by the op timeout
//! (or what is left of a call's [`Budget`]) and skipped while the circuit
//! breaker is open, failures counted and logged (rate-limited), writes
//! checked against the entry size limit.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{BoxFuture, Ticket};
use crate::clock::monotonic_ms;
use crate::engine::Engine;
use crate::Error;

/// What one call may spend in store operations, all together: the op
/// timeout, so the cache adds at most that much to a call however slow the
/// store. The write comes first: the lock (and the look at the store that
/// follows it) is taken only when what is left also covers the write, at
/// the pace the call's read showed; the write gets what is left, and a call
/// whose read used it all skips both. Waiting for another process's
/// computation is not charged (it takes the place of computing), and a call
/// that waited
/// gets a fresh budget for what follows.
pub(crate) struct Budget {
    total: Duration,
    left: Duration,
    /// How long one store call took: the first one's duration.
    pace: Option<Duration>,
}

impl Budget {
    pub(crate) fn new(total: Duration) -> Self {
        Budget {
            total,
            left: total,
            pace: None,
        }
    }

    /// What is left, or `None` when nothing is.
    pub(crate) fn left(&self) -> Option<Duration> {
        (!self.left.is_zero()).then_some(self.left)
    }

    /// Takes the time since `started` off what is left.
    pub(crate) fn spend(&mut self, started: Instant) {
        let took = started.elapsed();
        self.pace.get_or_insert(took);
        self.left = self.left.saturating_sub(took);
    }

    /// Whether what is left covers `calls` more store calls at the pace
    /// seen so far.
    pub(crate) fn affords(&self, calls: u32) -> bool {
        let pace = self.pace.unwrap_or(Duration::ZERO);
        !self.left.is_zero() && self.left >= pace.saturating_mul(calls)
    }

    /// A fresh budget, after waiting for another process's computation.
    pub(crate) fn refill(&mut self) {
        self.left = self.total;
    }
}

impl Engine {
    /// Runs one store call under the circuit breaker and the op timeout.
    pub(crate) async fn guarded<'b, T>(
        &self,
        op: &'static str,
        call: impl FnOnce() -> BoxFuture<'b, Result<T, Error>>,
    ) -> Result<T, Error> {
        self.guarded_for(op, self.op_timeout, call).await
    }

    /// [`guarded`](Self::guarded) with a shorter bound: what is left of a
    /// call's budget (see `fetch::Budget`).
    pub(crate) async fn guarded_for<'b, T>(
        &self,
        op: &'static str,
        timeout: Duration,
        call: impl FnOnce() -> BoxFuture<'b, Result<T, Error>>,
    ) -> Result<T, Error> {
        let inner = self;
        let backend = inner.store.backend().name();
        if !inner.breaker.allow(monotonic_ms()) {
            inner.counters.circuit_skips.incr();
            return Err(Error::CircuitOpen { backend });
        }
        // The call is made only now, so an open circuit costs no store work.
        let result = self.bounded(op, timeout, call).await;
        match &result {
            Ok(_) => inner.breaker.success(),
            // Skipped by one of the backend's own breakers.
            Err(Error::CircuitOpen { .. }) => inner.counters.circuit_skips.incr(),
            // A backend that isolates failures (per server) keeps them from
            // opening the whole store's circuit.
            // ... and a timeout shorter than the op timeout (what was left
            // of a call's budget) is the call's limit, not the store's
            // failure.
            Err(e)
                if e.is_store_failure()
                    && !inner.store.backend().isolates_failures()
                    && !(matches!(e, Error::Timeout { .. }) && timeout < inner.op_timeout) =>
            {
                if inner.breaker.failure(monotonic_ms()) {
                    tracing::warn!(
                        backend,
                        op,
                        "cache store failing repeatedly; circuit open, calls skip it for a cool-down"
                    );
                }
            }
            Err(_) => {}
        }
        result
    }

    /// One store call bounded by `timeout`: timed (the `metrics` feature)
    /// and spanned (`spans`), and nothing else (no breaker).
    async fn bounded<'b, T>(
        &self,
        op: &'static str,
        timeout: Duration,
        call: impl FnOnce() -> BoxFuture<'b, Result<T, Error>>,
    ) -> Result<T, Error> {
        let backend = self.store.backend().name();
        #[cfg(feature = "metrics")]
        let started = Instant::now();
        let bounded = tokio::time::timeout(timeout, call());
        #[cfg(feature = "spans")]
        let span = crate::spans::store(self, op);
        #[cfg(feature = "spans")]
        let bounded = tracing::Instrument::instrument(bounded, span.clone());
        let result = match bounded.await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { backend, timeout }),
        };
        #[cfg(feature = "metrics")]
        self.store_timed(op, started.elapsed());
        #[cfg(feature = "spans")]
        if let Err(e) = &result {
            span.record("error", tracing::field::display(e));
        }
        let _ = op;
        result
    }

    /// An operator's store call (`Cache::keys`, `inspect`, `store_info`,
    /// `ping`: `inspect.rs`), bounded by `timeout` but outside the circuit
    /// breaker: an operator's slow scan, or a command an ACL refuses, says
    /// nothing of the store's health for cached calls, and must not open
    /// (nor close) the breaker they rely on. Not counted in the stats.
    pub(crate) async fn operator_call<'b, T>(
        &self,
        op: &'static str,
        timeout: Duration,
        call: impl FnOnce() -> BoxFuture<'b, Result<T, Error>>,
    ) -> Result<T, Error> {
        self.bounded(op, timeout, call).await
    }

    /// Writes an entry through the store (no type check), bounded by
    /// `timeout`.
    pub(crate) async fn write(
        &self,
        key: &str,
        bytes: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
        timeout: Duration,
    ) -> Result<(), Error> {
        // The memory store cannot block: no timer for it.
        if let Some(memory) = self.store.memory() {
            self.check_size(bytes.len())?;
            return memory.store(key, bytes, ttl, ticket.as_ref());
        }
        let backend = self.store.backend();
        self.sized_set(bytes.len(), timeout, || {
            backend.set(key, bytes, ttl, ticket.as_ref())
        })
        .await
    }

    /// As [`write`](Self::write), then the release of the lock `token`
    /// holds on `key`, in one store call where the store allows
    /// ([`Backend::set_and_unlock`]): whether the release is done. Only
    /// shared stores take locks.
    ///
    /// [`Backend::set_and_unlock`]: crate::Backend::set_and_unlock
    pub(crate) async fn write_unlocking(
        &self,
        key: &str,
        bytes: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
        timeout: Duration,
        token: &[u8],
    ) -> Result<bool, Error> {
        let backend = self.store.backend();
        self.sized_set(bytes.len(), timeout, || {
            backend.set_and_unlock(key, bytes, ttl, ticket.as_ref(), token)
        })
        .await
    }

    /// A write of `size` bytes (the store call `call` makes): refused over
    /// the entry size limit, else guarded as a `set`.
    async fn sized_set<'b, T>(
        &self,
        size: usize,
        timeout: Duration,
        call: impl FnOnce() -> BoxFuture<'b, Result<T, Error>>,
    ) -> Result<T, Error> {
        self.check_size(size)?;
        self.guarded_for("set", timeout, call).await
    }

    fn check_size(&self, size: usize) -> Result<(), Error> {
        if size > self.max_entry_bytes {
            return Err(Error::TooLarge {
                size,
                limit: self.max_entry_bytes,
            });
        }
        Ok(())
    }

    /// Stores an encoded entry within `timeout`, counting (never returning)
    /// failures.
    pub(crate) async fn store(
        &self,
        key: &str,
        bytes: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
        timeout: Duration,
    ) {
        if let Err(e) = self.write(key, bytes, ttl, ticket, timeout).await {
            self.store_failed(key, e, timeout);
        }
    }

    /// Counts a failed write of `store` (or a cold miss's write with its
    /// unlock) with the timeout it had.
    pub(crate) fn store_failed(&self, key: &str, e: Error, timeout: Duration) {
        match e {
            // The call's budget ran out, not the store: the value is simply
            // not stored this time.
            Error::Timeout { .. } if timeout < self.op_timeout => {
                tracing::debug!(key, "value not stored: the call's store budget ran out");
            }
            e => self.failed("set", &e),
        }
    }
}
