//! The pool: one client per server, each with its connection cap and its
//! circuit breaker, and the fan-out of one call's commands to the servers
//! they are for.
//!
//! One client per server (rather than the `memcache` crate's own routing)
//! so that placement is ours (`ring.rs`: stable, documented, the same in
//! every process), a dead server is skipped by its own breaker while the
//! others serve, and a burst of calls queues for a bounded set of
//! connections per server instead of opening one per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::Instant;

use memcache::exp::{AsyncMetaClient, MetaClientBuilder, Op, OpResult};
use tokio::sync::Semaphore;

use super::config::MemcachedConfig;
use super::ring::{identity, with_port, Ring};
use super::NAME;
use crate::breaker::Breaker;
use crate::secrets::{redact, Secrets};
use crate::Error;

struct Server {
    /// `host:port` as configured, for errors and logs.
    shown: String,
    /// `host:port` to connect to (operators' commands, `dump.rs`).
    addr: String,
    client: AsyncMetaClient,
    /// One permit per connection this process may have open to the server.
    slots: Semaphore,
    breaker: Breaker,
}

/// The servers of a pool and where names go.
pub(super) struct Pool {
    servers: Vec<Server>,
    ring: Ring,
    /// The secrets of the servers as configured, scrubbed from every
    /// message of the client library, as the other backends do.
    secrets: Secrets,
}

/// Milliseconds on a monotonic clock, for the breakers.
pub(super) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Pool {
    /// Resolves every server (placement needs them all) and prepares a
    /// client for each; connections are opened by the calls that need
    /// them.
    pub(super) async fn connect(config: &MemcachedConfig) -> Result<Pool, Error> {
        let secrets = Secrets::of(&config.servers);
        let mut servers: Vec<Server> = Vec::with_capacity(config.servers.len());
        let mut identities: Vec<String> = Vec::with_capacity(config.servers.len());
        for written in &config.servers {
            let addr = with_port(written);
            let shown = redact(&addr);
            let fail = |what: String| Error::backend(NAME, secrets.scrub(&what));
            let id = identity(&addr, config.resolver.as_ref())
                .await
                .map_err(|e| {
                    fail(format!(
                        "cannot resolve the Memcached server `{shown}` ({e}): every server's \
                     address is needed to place keys alike in every process; fix the name or \
                     its DNS record"
                    ))
                })?;
            if let Some(same) = identities.iter().position(|other| *other == id) {
                return Err(Error::Config(format!(
                    "the Memcached servers `{}` and `{shown}` are one server ({id}): list each \
                     server once",
                    servers[same].shown
                )));
            }
            let client = MetaClientBuilder::new()
                .connect_timeout(Some(config.connect_timeout))
                .max_connections(Some(config.max_connections))
                .max_idle(config.max_connections)
                .connect_async(addr.as_str())
                .await
                .map_err(|e| fail(format!("Memcached server `{shown}`: {e}")))?;
            servers.push(Server {
                shown,
                addr: addr.clone(),
                client,
                slots: Semaphore::new(config.max_connections),
                breaker: Breaker::new(config.breaker_threshold, config.breaker_cool_down),
            });
            identities.push(id);
        }
        Ok(Pool {
            ring: Ring::new(&identities),
            servers,
            secrets,
        })
    }

    pub(super) fn ring(&self) -> &Ring {
        &self.ring
    }

    /// How many servers there are.
    pub(super) fn len(&self) -> usize {
        self.servers.len()
    }

    /// Where server `i` is reached (`host:port`), and how it is shown.
    pub(super) fn addr(&self, i: usize) -> (&str, &str) {
        (&self.servers[i].addr, &self.servers[i].shown)
    }

    /// Server `i` as configured (`host:port`), for logs.
    pub(super) fn shown(&self, i: usize) -> &str {
        &self.servers[i].shown
    }

    /// Runs `ops` on server `i`, pipelined on one connection, in order.
    ///
    /// Under the server's breaker: while it is open the call fails at
    /// once with [`Error::CircuitOpen`]. Under its connection cap: a call
    /// finding every connection busy waits for one (the cache's op timeout
    /// bounds the wait). An error, or an exchange abandoned before the
    /// server answered (the op timeout), counts as a failure of the server;
    /// any answer resets the count.
    pub(super) async fn run(&self, i: usize, ops: Vec<Op>) -> Result<Vec<OpResult>, Error> {
        let server = &self.servers[i];
        if !server.breaker.allow(now_ms()) {
            return Err(Error::CircuitOpen { backend: NAME });
        }
        let Ok(_slot) = server.slots.acquire().await else {
            return Err(Error::backend(NAME, "the connection pool was closed"));
        };
        let mut exchange = Exchange {
            server,
            answered: false,
        };
        let outcome = server.client.run_batch(ops).await;
        exchange.answered = true;
        let failure = match outcome {
            Ok(results) => match results.into_iter().collect::<Result<Vec<_>, _>>() {
                Ok(results) => {
                    server.breaker.success();
                    return Ok(results);
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        if says_server_failed(&failure) {
            server.failed();
        }
        Err(Error::backend(
            NAME,
            format!(
                "server `{}`: {}",
                server.shown,
                self.secrets.scrub(&failure.to_string())
            ),
        ))
    }

    /// Runs each server's ops ([`run`](Self::run)), the servers
    /// concurrently: one round trip in all. Outcomes in the order given.
    pub(super) async fn fan_out(
        &self,
        batches: Vec<(usize, Vec<Op>)>,
    ) -> Vec<Result<Vec<OpResult>, Error>> {
        if batches.len() == 1 {
            let mut outcomes = Vec::with_capacity(1);
            for (i, ops) in batches {
                outcomes.push(self.run(i, ops).await);
            }
            return outcomes;
        }
        join_all(
            batches
                .into_iter()
                .map(|(i, ops)| self.run(i, ops))
                .collect(),
        )
        .await
    }
}

/// Ops for several servers, as [`Pool::fan_out`] takes them.
pub(super) type Batches = Vec<(usize, Vec<Op>)>;

/// The batches for [`Pool::fan_out`] of ops placed per server: `slots[i]`
/// are what server `i` is asked, each slot pushing its ops with `ops`.
/// Servers with no slot are left out; the slots come back grouped as the
/// batches are, to read the outcomes by.
pub(super) fn batches<S>(
    slots: Vec<Vec<S>>,
    mut ops: impl FnMut(&S, &mut Vec<Op>),
) -> (Vec<Vec<S>>, Batches) {
    let mut groups = Vec::new();
    let mut batches = Vec::new();
    for (server, group) in slots.into_iter().enumerate() {
        if group.is_empty() {
            continue;
        }
        let mut batch = Vec::with_capacity(group.len());
        for slot in &group {
            ops(slot, &mut batch);
        }
        batches.push((server, batch));
        groups.push(group);
    }
    (groups, batches)
}

impl Server {
    fn failed(&self) {
        if self.breaker.failure(now_ms()) {
            tracing::warn!(
                server = %self.shown,
                "Memcached server failing repeatedly; calls that need it skip it for a \
                 cool-down, the other servers keep serving"
            );
        }
    }
}

/// Whether an error says the server (or the way to it) is unhealthy, as
/// opposed to a command it refused.
fn says_server_failed(e: &memcache::exp::Error) -> bool {
    use memcache::exp::Error as E;
    !matches!(
        e,
        E::Rejected(_)
            | E::Usage(_)
            | E::EmptyValue
            | E::Encode(_)
            | E::Decode(_)
            | E::Conflict
            | E::Callback(_)
    )
}

/// An exchange in flight: dropped unanswered (the op timeout gave up on
/// it), it counts as a failure of its server, so a server that hangs opens
/// its breaker as one that refuses does.
struct Exchange<'a> {
    server: &'a Server,
    answered: bool,
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.server.failed();
        }
    }
}

/// Awaits every future, concurrently; their outputs in order. (A few
/// per-server exchanges: no need for a crate.)
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
