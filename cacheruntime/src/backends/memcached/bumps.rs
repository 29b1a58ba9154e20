//! Moving generation counters: a delete bumps the key's own counter, an
//! invalidation its prefix's, each by reading the copies and setting every
//! copy it can reach above the greatest read, succeeding only when a
//! majority took it (`counters.rs` says why that is enough).

use memcache::exp::{Delete, Get, Op, OpResult, Set};

use super::counters::{
    bumped, greatest, reading as reading_of, Counter, Layout, Quorum, Reading, Seen,
};
use super::keys::prefix_counter_key;
use super::servers::Pool;
use super::{cause, MemcachedBackend, NAME};
use crate::Error;

impl MemcachedBackend {
    /// Bumps `counter` (`what` says which, for errors): reads its copies,
    /// then sets every copy to a value above the greatest read and at
    /// least a fresh seed, the servers in parallel each time. `first` runs
    /// on the first copy's server just before its read.
    ///
    /// Succeeds when at least `W` copies took the new value: every read
    /// quorum contains one of them. Otherwise the error says the bump may
    /// have partly happened and to retry it: a read that hears only from
    /// copies it missed still sees the old value.
    async fn bump(
        &self,
        pool: &Pool,
        quorum: Quorum,
        counter: &Counter,
        mut first: Option<Op>,
        what: &str,
    ) -> Result<(), Error> {
        let batches: Vec<(usize, Vec<Op>)> = counter
            .servers
            .iter()
            .map(|&server| {
                let read = Op::from(Get::new(&counter.key));
                (server, first.take().into_iter().chain([read]).collect())
            })
            .collect();
        let mut seen = Vec::with_capacity(counter.servers.len());
        let mut failure = None;
        for outcome in pool.fan_out(batches).await {
            seen.push(match outcome {
                Ok(results) => match results.last() {
                    Some(OpResult::Get(got)) => Seen::of(got.value.as_deref()),
                    _ => Seen::Absent,
                },
                Err(e) => {
                    failure.get_or_insert(e);
                    Seen::Unread
                }
            });
        }
        if let Reading::Unknown { answered } = reading_of(&seen, quorum) {
            return Err(Error::backend(
                NAME,
                format!(
                    "{what} did not happen: {answered} of the {n} servers holding its generation \
                     counter answered, {r} needed to know its value; retry it{}",
                    cause(failure.as_ref()),
                    n = quorum.copies,
                    r = quorum.read,
                ),
            ));
        }
        let next = bumped(greatest(&seen), self.fresh_seed(0)).to_string();
        let set = Set::new(&counter.key, next).ttl(self.life(counter.own));
        let batches = counter
            .servers
            .iter()
            .map(|&server| (server, vec![Op::from(set.clone())]))
            .collect();
        let outcomes = pool.fan_out(batches).await;
        let took = outcomes
            .iter()
            .filter(|outcome| {
                matches!(outcome, Ok(results)
                    if matches!(results.first(), Some(OpResult::Mutation(m)) if m.applied()))
            })
            .count();
        let mut failure = None;
        for (&server, outcome) in counter.servers.iter().zip(outcomes) {
            if let Err(e) = outcome {
                if took >= quorum.write {
                    tracing::warn!(
                        server = pool.shown(server),
                        error = %e,
                        "an invalidation reached a majority of a Memcached counter's copies \
                         but not this server's (readers take the greatest of a majority; the \
                         next read with every server up brings it level)"
                    );
                }
                failure.get_or_insert(e);
            }
        }
        if took >= quorum.write {
            return Ok(());
        }
        Err(Error::backend(
            NAME,
            format!(
                "{what} may have partly happened: {took} of the {n} copies of its generation \
                 counter took the new value, {w} needed, so some readers may still see the old \
                 one; retry it until it succeeds{}",
                cause(failure.as_ref()),
                n = quorum.copies,
                w = quorum.write,
            ),
        ))
    }

    pub(super) async fn run_delete(&self, key: &str) -> Result<(), Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        // The entry first, on its server (its own counter's first copy's):
        // a write stamped before the bump stays hidden either way; this
        // only frees its memory.
        let entry = Op::from(Delete::new(&layout.entry));
        let what = format!("the delete of `{key}`");
        self.bump(pool, layout.quorum, layout.own(), Some(entry), &what)
            .await
    }

    pub(super) async fn run_invalidate(&self, prefix: &str) -> Result<(), Error> {
        // Whole segments only, as the cache checks (a store used directly
        // must not bump a counter no read consults).
        crate::key::check_prefix(prefix)?;
        if prefix.is_empty() {
            return Err(Error::InvalidPrefix {
                prefix: prefix.to_owned(),
                reason: "on Memcached, invalidating everything needs a namespace: give the cache \
                         one (`?namespace=app` or `.namespace(\"app\")`) and invalidate \"\" within it",
            });
        }
        let pool = self.pool().await?;
        let quorum = Quorum::of(pool.ring().len());
        let counter = Counter {
            key: prefix_counter_key(prefix),
            own: false,
            servers: pool.ring().top(prefix, quorum.copies),
        };
        let what = format!("the invalidation of `{prefix}`");
        self.bump(pool, quorum, &counter, None, &what).await
    }
}
