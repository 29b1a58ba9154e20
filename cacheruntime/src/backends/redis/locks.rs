//! The Redis backend's locks: taken alone, with a read of the entry, or by
//! a get-or-compute read itself; released alone or with the write that ends
//! a cold miss. One script each, so a cold miss costs two round trips: the
//! read that takes the lock, and the write that releases it.

use std::time::Duration;

use bytes::Bytes;

use super::keys::lock_key;
use super::scripts::{LOCK_GET, READ_LOCK, RELEASE, WRITE_UNLOCK};
use super::{lookup, RedisBackend, NAME, VANISHED};
use crate::backend::Lookup;
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
        let (taken, found): (i64, Vec<Option<Vec<u8>>>) = call
            .arg(&token[..])
            .arg(self.ttl_ms(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        // As `run_get`, without creating missing counters: this read only
        // looks for a value, and nothing is served under a missing counter.
        let lookup = lookup(found, &layout, "the lock script")?.unwrap_or(Lookup::new(None));
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
            .arg(self.key_notice(key))
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
        // As `run_get`: under a counter just created, nothing recorded
        // before is served.
        if created == 1 {
            if let Some(entry) = found.first_mut() {
                *entry = None;
            }
        }
        let lookup = lookup(found, &layout, "the read script")?
            .ok_or_else(|| Error::backend(NAME, VANISHED))?;
        Ok((lookup, locked == 1))
    }
}
