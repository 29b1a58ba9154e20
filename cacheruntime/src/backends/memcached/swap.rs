//! Compare-and-set of an entry, and the batched calls (`get_many`: one
//! multi-get per server for every key; `set_many`: one more exchange per
//! server for the writes; `delete_many` is in `bumps.rs`). Compare-and-set: the entry (with its CAS token) and its
//! counters read as a `get` reads them, the comparison made here, then the
//! write conditioned on the entry being unchanged since (Memcached's CAS,
//! or `add` when there was none), so two callers swapping from the same
//! state cannot both succeed.

use std::time::Duration;

use bytes::Bytes;
use memcache::exp::{Get, Op, OpResult, Set};

use super::counters::{current_entry, stamp, Layout};
use super::MemcachedBackend;
use crate::backend::{Lookup, Ticket};
use crate::backends::generations::wrap_entry;
use crate::Error;

impl MemcachedBackend {
    pub(super) async fn run_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Result<bool, Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        let mut read = self.read(pool, &layout, true).await?;
        let (values, servable) = self.values(pool, &layout, &mut read).await?;
        let now = stamp(&values);
        // A counter moved since the caller's read: an invalidation or a
        // delete reached the key, so what it read is not what a read
        // answers now.
        if ticket
            .and_then(Ticket::as_tag)
            .is_some_and(|seen| seen != now)
        {
            return Ok(false);
        }
        let live = match &read.stored {
            Some(stored) if servable => current_entry(stored.clone(), &values),
            _ => None,
        };
        let same = match (live.as_deref(), expected) {
            (None, None) => true,
            (Some(live), Some(expected)) => live == expected,
            _ => false,
        };
        if !same {
            return Ok(false);
        }
        let stored = wrap_entry(&now, &value);
        if stored.len() > self.config.max_item_bytes {
            return Err(Error::TooLarge {
                size: stored.len(),
                limit: self.config.max_item_bytes,
            });
        }
        let ttl = self.ttl(ttl);
        let set = Set::new(&layout.entry, stored).ttl(ttl);
        // Unchanged since the read: the same item (CAS), or still none.
        let set = match (&read.stored, read.stored_cas) {
            (Some(_), Some(cas)) => set.compare_cas(cas),
            (Some(_), None) => return Ok(false),
            (None, _) => set.add(),
        };
        // As `write`: the key's own counter lives as long as its entry.
        let own_life = ttl.max(self.life(true));
        let own = layout.own();
        let touch = || Op::from(Get::new(&own.key).touch(own_life).without_value());
        let mut batches: Vec<(usize, Vec<Op>)> = own
            .servers
            .iter()
            .map(|&server| (server, vec![touch()]))
            .collect();
        batches[0].1.insert(0, Op::from(set));
        let mut outcomes = pool.fan_out(batches).await.into_iter();
        match outcomes.next() {
            Some(Ok(results)) => Ok(matches!(
                results.first(),
                Some(OpResult::Mutation(m)) if m.applied()
            )),
            Some(Err(e)) => Err(e),
            None => Ok(false),
        }
    }
}

impl MemcachedBackend {
    /// Every key's entry and counters in one multi-get per server involved,
    /// the servers in parallel: one round trip, as for one key.
    pub(super) async fn run_get_many(&self, keys: &[&str]) -> Result<Vec<Lookup>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pool = self.pool().await?;
        let layouts: Vec<Layout> = keys.iter().map(|k| Layout::of(pool.ring(), k)).collect();
        let reads = self.read_many(pool, &layouts, true).await?;
        let mut out = Vec::with_capacity(keys.len());
        for (layout, mut read) in layouts.iter().zip(reads) {
            let (values, servable) = self.values(pool, layout, &mut read).await?;
            out.push(self.answer(pool, layout, &mut read, &values, servable));
        }
        Ok(out)
    }

    /// Two round trips whatever the number of keys: every key's counters
    /// read in one multi-get per server (what a write without a ticket is
    /// stamped with, as `set`'s), then every entry written, with its own
    /// counter's copies touched as `set` does, in one exchange per server.
    pub(super) async fn run_set_many(
        &self,
        entries: &[(&str, Bytes)],
        ttl: Duration,
    ) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let pool = self.pool().await?;
        let layouts: Vec<Layout> = entries
            .iter()
            .map(|(k, _)| Layout::of(pool.ring(), k))
            .collect();
        let reads = self.read_many(pool, &layouts, false).await?;
        let ttl = self.ttl(ttl);
        let own_life = ttl.max(self.life(true));
        let mut batches: Vec<(usize, Vec<Op>)> = Vec::new();
        let mut push = |server: usize, op: Op| match batches.iter_mut().find(|(s, _)| *s == server)
        {
            Some((_, ops)) => ops.push(op),
            None => batches.push((server, vec![op])),
        };
        for ((layout, mut read), (_, value)) in layouts.iter().zip(reads).zip(entries) {
            let (values, _) = self.values(pool, layout, &mut read).await?;
            let stored = wrap_entry(&stamp(&values), value);
            if stored.len() > self.config.max_item_bytes {
                return Err(Error::TooLarge {
                    size: stored.len(),
                    limit: self.config.max_item_bytes,
                });
            }
            push(
                layout.home,
                Op::from(Set::new(&layout.entry, stored).ttl(ttl)),
            );
            let own = layout.own();
            for &server in &own.servers {
                push(
                    server,
                    Op::from(Get::new(&own.key).touch(own_life).without_value()),
                );
            }
        }
        // A failed server holding entries fails the call (some of them may
        // be unwritten), as a failed `set` does; one holding only counter
        // copies to touch does not, as for `set`.
        let homes: Vec<usize> = layouts.iter().map(|l| l.home).collect();
        let servers: Vec<usize> = batches.iter().map(|(server, _)| *server).collect();
        for (server, outcome) in servers.into_iter().zip(pool.fan_out(batches).await) {
            if homes.contains(&server) {
                outcome?;
            }
        }
        Ok(())
    }
}
