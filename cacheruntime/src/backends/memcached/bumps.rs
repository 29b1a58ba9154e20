//! Moving generation counters: a delete bumps the key's own counter, an
//! invalidation its prefix's, each by reading the copies and setting every
//! copy it can reach above the greatest read, succeeding only when a
//! majority took it (`counters.rs` says why that is enough). `delete_many`
//! does the same for many keys in the same two round trips.

use memcache::exp::{Delete, Get, Op, OpResult, Set};

use super::counters::{
    bumped, greatest, reading as reading_of, Counter, Layout, Quorum, Reading, Seen,
};
use super::keys::prefix_counter_key;
use super::servers::{batches, Pool};
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

    /// Deletes several keys as [`run_delete`](Self::run_delete) does each,
    /// in two round trips whatever their number: every entry deleted and
    /// every own counter's copies read in one exchange per server, then
    /// every counter's copies set above the greatest read in one more. Each
    /// counter must reach its write quorum, as for one delete; the first
    /// that does not fails the call (retry it).
    pub(super) async fn run_delete_many(&self, keys: &[&str]) -> Result<(), Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let pool = self.pool().await?;
        let layouts: Vec<Layout> = keys.iter().map(|k| Layout::of(pool.ring(), k)).collect();
        // Per server: which key each op is for, and which copy of its own
        // counter it reads (`None`: the key's entry delete, first, on the
        // counter's first copy's server).
        let mut slots: Vec<Vec<(usize, Option<usize>)>> = vec![Vec::new(); pool.ring().len()];
        for (l, layout) in layouts.iter().enumerate() {
            for (k, &server) in layout.own().servers.iter().enumerate() {
                if k == 0 {
                    slots[server].push((l, None));
                }
                slots[server].push((l, Some(k)));
            }
        }
        let (groups, batches) = batches(slots, |&(l, copy), ops| {
            ops.push(match copy {
                None => Op::from(Delete::new(&layouts[l].entry)),
                Some(_) => Op::from(Get::new(&layouts[l].own().key)),
            });
        });
        let mut seen: Vec<Vec<Seen>> = layouts
            .iter()
            .map(|l| vec![Seen::Unread; l.own().servers.len()])
            .collect();
        let mut failures: Vec<Option<Error>> = layouts.iter().map(|_| None).collect();
        for (group, outcome) in groups.into_iter().zip(pool.fan_out(batches).await) {
            match outcome {
                Ok(results) => {
                    for ((l, copy), result) in group.into_iter().zip(results) {
                        if let Some(k) = copy {
                            seen[l][k] = match result {
                                OpResult::Get(got) => Seen::of(got.value.as_deref()),
                                _ => Seen::Absent,
                            };
                        }
                    }
                }
                Err(e) => {
                    for (l, _) in group {
                        if failures[l].is_none() {
                            failures[l] = Some(Error::backend(NAME, e.to_string()));
                        }
                    }
                }
            }
        }
        // Every counter known to a read quorum before anything is set.
        for (l, layout) in layouts.iter().enumerate() {
            if let Reading::Unknown { answered } = reading_of(&seen[l], layout.quorum) {
                return Err(Error::backend(
                    NAME,
                    format!(
                        "the delete of `{}` did not happen: {answered} of the {n} servers \
                         holding its generation counter answered, {r} needed to know its \
                         value; retry it{}",
                        keys[l],
                        cause(failures[l].as_ref()),
                        n = layout.quorum.copies,
                        r = layout.quorum.read,
                    ),
                ));
            }
        }
        let mut batches: Vec<(usize, Vec<Op>)> = Vec::new();
        let mut placed: Vec<Vec<usize>> = Vec::new();
        for (l, layout) in layouts.iter().enumerate() {
            let own = layout.own();
            let next = bumped(greatest(&seen[l]), self.fresh_seed(l)).to_string();
            let set = Set::new(&own.key, next).ttl(self.life(own.own));
            for &server in &own.servers {
                match batches.iter().position(|(s, _)| *s == server) {
                    Some(i) => {
                        batches[i].1.push(Op::from(set.clone()));
                        placed[i].push(l);
                    }
                    None => {
                        batches.push((server, vec![Op::from(set.clone())]));
                        placed.push(vec![l]);
                    }
                }
            }
        }
        let mut took = vec![0usize; layouts.len()];
        for (keys_here, outcome) in placed.into_iter().zip(pool.fan_out(batches).await) {
            match outcome {
                Ok(results) => {
                    for (l, result) in keys_here.into_iter().zip(results) {
                        if matches!(result, OpResult::Mutation(m) if m.applied()) {
                            took[l] += 1;
                        }
                    }
                }
                Err(e) => {
                    for l in keys_here {
                        if failures[l].is_none() {
                            failures[l] = Some(Error::backend(NAME, e.to_string()));
                        }
                    }
                }
            }
        }
        for (l, layout) in layouts.iter().enumerate() {
            if took[l] < layout.quorum.write {
                return Err(Error::backend(
                    NAME,
                    format!(
                        "the delete of `{}` may have partly happened: {} of the {n} copies of \
                         its generation counter took the new value, {w} needed, so some readers \
                         may still see the old one; retry it until it succeeds{}",
                        keys[l],
                        took[l],
                        cause(failures[l].as_ref()),
                        n = layout.quorum.copies,
                        w = layout.quorum.write,
                    ),
                ));
            }
        }
        Ok(())
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
