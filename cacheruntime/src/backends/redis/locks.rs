//! The Redis backend's locks: taken alone, with a read of the entry, or by
//! a get-or-compute read itself; released alone or with the write that ends
//! a cold miss. One script each, so a cold miss costs two round trips: the
//! read that takes the lock, and the write that releases it.

use std::time::Duration;

use bytes::Bytes;

use super::keys::lock_key;
use super::scripts::{LOCK_GET, READ_LOCK, RELEASE, WRITE_UNLOCK};
use super::{RedisBackend, NAME};
use crate::backend::{Lookup, Ticket};
use crate::backends::generations::{generations, unwrap_entry};
use crate::Error;

impl RedisBackend {
    pub(super) async fn run_set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let done: Option<String> = redis::cmd("SET")
            .arg(lock_key(key))
            .arg(&value[..])
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms(ttl))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(done.is_some())
    }

    pub(super) async fn run_lock_get(
        &self,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> Result<(bool, Option<Lookup>), Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let layout = self.layout(key);
        let mut call = LOCK_GET.key(lock_key(key));
        call.key(layout.entry());
        for c in layout.counters() {
            call.key(c);
        }
        let (taken, mut found): (i64, Vec<Option<Vec<u8>>>) = call
            .arg(&token[..])
            .arg(self.ttl_ms(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if found.len() != layout.counters.len() + 1 {
            return Err(Error::backend(
                NAME,
                "the lock script answered with the wrong number of values",
            ));
        }
        // As `run_get`, without creating missing counters: this read only
        // looks for a value, and nothing is served under a missing counter.
        let stored = found[0].take();
        let lookup = match generations(&found[1..]) {
            Some(current) => Lookup::new(stored.and_then(|s| unwrap_entry(s, &found[1..])))
                .with_ticket(Ticket::tag(current)),
            None => Lookup::new(None),
        };
        Ok((taken == 1, Some(lookup)))
    }

    pub(super) async fn run_write_unlock(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        expected: &str,
        token: &[u8],
    ) -> Result<bool, Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let layout = self.layout(key);
        let mut call = WRITE_UNLOCK.key(layout.entry());
        for c in layout.counters() {
            call.key(c);
        }
        call.key(lock_key(key));
        let _: i64 = call
            .arg(value)
            .arg(self.ttl_ms(ttl))
            .arg(expected)
            .arg(token)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(true)
    }

    pub(super) async fn run_delete_if_equals(
        &self,
        key: &str,
        value: &[u8],
    ) -> Result<bool, Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let n: i64 = RELEASE
            .key(lock_key(key))
            .arg(value)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    pub(super) async fn run_get_or_lock(
        &self,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> Result<(Lookup, bool), Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let layout = self.layout(key);
        let mut call = READ_LOCK.key(layout.entry());
        for c in layout.counters() {
            call.key(c);
        }
        call.key(lock_key(key));
        let (locked, created, mut found): (i64, i64, Vec<Option<Vec<u8>>>) = call
            .arg(&token[..])
            .arg(self.ttl_ms(ttl))
            .arg(self.idle_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        self.check_config_once(&conn);
        if found.len() != layout.counters.len() + 1 {
            return Err(Error::backend(
                NAME,
                "the read script answered with the wrong number of values",
            ));
        }
        let Some(current) = generations(&found[1..]) else {
            return Err(Error::backend(
                NAME,
                "generation counters vanished as they were created (is the server out of memory?)",
            ));
        };
        // As `run_get`: under a counter just created, nothing recorded
        // before is served.
        let stored = found[0].take().filter(|_| created == 0);
        let value = stored.and_then(|stored| unwrap_entry(stored, &found[1..]));
        Ok((
            Lookup::new(value).with_ticket(Ticket::tag(current)),
            locked == 1,
        ))
    }
}
