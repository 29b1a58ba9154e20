//! The batched calls: `get_many` is one `MGET` of every entry and every
//! counter they record (on a Cluster, redis-rs splits it by slot and asks
//! the nodes in parallel); `set_many` and `delete_many` are one pipeline
//! of the single-key scripts per hash tag (one pipeline in all with a
//! cache namespace, or on a standalone server), since a Cluster pipeline
//! must stay in one slot.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use super::keys::Layout;
use super::scripts::{DELETE, WRITE};
use super::{RedisBackend, NAME};
use crate::backend::{Lookup, Ticket};
use crate::backends::generations::{generations, unwrap_entry};
use crate::Error;

/// The hash tag of a physical key (`v:{author}:42` → `author`), which
/// decides its Cluster slot.
fn tag(physical: &str) -> &str {
    physical
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(physical, |(tag, _)| tag)
}

impl RedisBackend {
    /// The layouts of `keys` in groups that may share a pipeline: one group
    /// on a standalone server, one per hash tag on a Cluster.
    fn groups<'k>(&self, layouts: &'k [Layout]) -> Vec<Vec<usize>> {
        if !self.cluster {
            return vec![(0..layouts.len()).collect()];
        }
        let mut by_tag: HashMap<&'k str, Vec<usize>> = HashMap::new();
        let mut order = Vec::new();
        for (i, layout) in layouts.iter().enumerate() {
            let t = tag(layout.entry());
            by_tag
                .entry(t)
                .or_insert_with(|| {
                    order.push(t);
                    Vec::new()
                })
                .push(i);
        }
        order
            .into_iter()
            .map(|t| by_tag.remove(t).unwrap_or_default())
            .collect()
    }

    pub(super) async fn run_get_many(&self, keys: &[&str]) -> Result<Vec<Lookup>, Error> {
        for key in keys {
            self.validate_key(key)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let layouts: Vec<Layout> = keys.iter().map(|k| Layout::of(k)).collect();
        // Every name once: keys under one prefix share its counter.
        let mut names: Vec<&str> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        let mut slots: Vec<(usize, Vec<usize>)> = Vec::with_capacity(keys.len());
        for layout in &layouts {
            let mut place = |name| {
                *at.entry(name).or_insert_with(|| {
                    names.push(name);
                    names.len() - 1
                })
            };
            let entry = place(layout.entry());
            let counters = layout.counters().map(&mut place).collect();
            slots.push((entry, counters));
        }
        let mut conn = self.connection().await?;
        let mut mget = redis::cmd("MGET");
        for name in &names {
            mget.arg(*name);
        }
        let found: Vec<Option<Vec<u8>>> = mget
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if found.len() != names.len() {
            return Err(Error::backend(
                NAME,
                "MGET answered with the wrong number of values",
            ));
        }
        let mut out = Vec::with_capacity(keys.len());
        for (key, (entry, counters)) in keys.iter().zip(slots) {
            let current: Vec<Option<Vec<u8>>> =
                counters.iter().map(|&i| found[i].clone()).collect();
            match generations(&current) {
                Some(gens) => {
                    let value = found[entry]
                        .clone()
                        .and_then(|stored| unwrap_entry(stored, &current));
                    out.push(Lookup::new(value).with_ticket(Ticket::tag(gens)));
                }
                // A counter is missing: the single read creates it, as a
                // `get` would (rare: a key never read, or evicted counters).
                None => out.push(self.run_get(key).await?),
            }
        }
        Ok(out)
    }

    pub(super) async fn run_set_many(
        &self,
        entries: &[(&str, Bytes)],
        ttl: Duration,
    ) -> Result<(), Error> {
        for (key, _) in entries {
            self.validate_key(key)?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        let layouts: Vec<Layout> = entries.iter().map(|(k, _)| Layout::of(k)).collect();
        let ttl = self.ttl_ms(ttl);
        let mut conn = self.connection().await?;
        for group in self.groups(&layouts) {
            let mut pipe = redis::pipe();
            pipe.load_script(&WRITE).ignore();
            for &i in &group {
                let layout = &layouts[i];
                let mut call = WRITE.key(layout.entry());
                for c in layout.counters() {
                    call.key(c);
                }
                // `*`: under the current generations, as a direct `set`.
                call.arg(&entries[i].1[..])
                    .arg(ttl)
                    .arg("*")
                    .arg(self.key_notice(entries[i].0));
                pipe.invoke_script(&call).ignore();
            }
            let () = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    pub(super) async fn run_delete_many(&self, keys: &[&str]) -> Result<(), Error> {
        for key in keys {
            self.validate_key(key)?;
        }
        if keys.is_empty() {
            return Ok(());
        }
        let layouts: Vec<Layout> = keys.iter().map(|k| Layout::of(k)).collect();
        let mut conn = self.connection().await?;
        for group in self.groups(&layouts) {
            let mut pipe = redis::pipe();
            pipe.load_script(&DELETE).ignore();
            for &i in &group {
                let layout = &layouts[i];
                let mut call = DELETE.key(layout.entry());
                call.key(layout.own_counter())
                    .arg(self.idle_ms())
                    .arg(self.key_notice(keys[i]));
                pipe.invoke_script(&call).ignore();
            }
            let () = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_are_what_cluster_hashes() {
        assert_eq!(super::tag("v:{author}:42:top"), "author");
        assert_eq!(super::tag("g:{~0a1b}!:x"), "~0a1b");
    }
}
