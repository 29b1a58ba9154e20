//! The batched direct ops on [`Cache`]: `get_many`, `set_many`,
//! `delete_many`. Each answers per key exactly what the single-key op
//! would, in one store call: one round trip where the store allows it
//! (Redis: one `MGET`, one pipeline per hash tag for writes; SQL: one
//! statement, one transaction for deletes; Memcached: one multi-get per
//! server for reads, then one more exchange per server for `set_many` and
//! `delete_many`), one key after the other through a custom
//! [`Backend`](crate::Backend) that does not override them.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Lookup;
use crate::cache::Cache;
use crate::engine::Answer;
use crate::entry::{Accept, Source, UNTYPED};
use crate::reader::Reader;
use crate::{envelope, key, Error};

impl Cache {
    /// Reads several keys at once: for each key, in order, what
    /// [`get`](Self::get) would answer (`None` for a key never set,
    /// expired, deleted, under an invalidated prefix, or holding another
    /// type). One store call for all of them; each key counts one hit or
    /// miss, like `get`. A bad key refuses the whole call before any I/O.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// let ttl = Duration::from_secs(60);
    /// cache.set_many(&[("user:1:name", "ada"), ("user:2:name", "alan")], ttl).await?;
    /// let names = cache.get_many::<String>(&["user:1:name", "user:3:name", "user:2:name"]).await?;
    /// assert_eq!(names, [Some("ada".to_string()), None, Some("alan".to_string())]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<T>>, Error> {
        for key in keys {
            key::check_key(key)?;
        }
        let engine = &self.engine;
        if !engine.enabled() {
            for _ in keys {
                engine.tally(None, Answer::Miss);
            }
            return Ok(keys.iter().map(|_| None).collect());
        }
        let full: Vec<Cow<'_, str>> = keys.iter().map(|k| engine.full_key(k)).collect();
        let found: Result<Vec<Lookup>, Error> = match engine.store.memory() {
            Some(memory) => Ok(full.iter().map(|k| memory.lookup(k)).collect()),
            None => {
                let refs: Vec<&str> = full.iter().map(|k| &**k).collect();
                let backend = engine.store.backend();
                engine.guarded("get_many", || backend.get_many(&refs)).await
            }
        };
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                for _ in keys {
                    engine.tally(None, Answer::Miss);
                }
                engine.failed("get_many", &e);
                return Err(e);
            }
        };
        // Entries with tags are served only while their tokens are current.
        let values: Vec<Option<&[u8]>> = found.iter().map(|l| l.value.as_deref()).collect();
        let hold = match engine.tags_hold_many(&values, Reader::App).await {
            Ok(hold) => hold,
            Err(e) => {
                for _ in keys {
                    engine.tally(None, Answer::Miss);
                }
                engine.failed("get_many", &e);
                return Err(e);
            }
        };
        let typed = Accept::Direct(envelope::fingerprint(std::any::type_name::<T>(), 0));
        let mut out = Vec::with_capacity(keys.len());
        for ((key, lookup), hold) in full.iter().zip(found).zip(hold) {
            let value = lookup.value.filter(|_| hold).and_then(|bytes| {
                match engine
                    .sealer
                    .open_checked::<T>(&bytes, typed, None, Source::Store(key))
                {
                    Ok(found) => found.map(|(v, _)| v),
                    Err(e) => {
                        engine.failed("decode", &e);
                        None
                    }
                }
            });
            engine.tally(
                None,
                if value.is_some() {
                    Answer::Hit
                } else {
                    Answer::Miss
                },
            );
            out.push(value);
        }
        Ok(out)
    }

    /// Stores each `(key, value)` for `ttl`, as [`set`](Self::set) does
    /// (a plain write, the last one wins; a key given twice keeps its last
    /// value). Every key is checked and every value encoded before anything
    /// is written, so bad input writes nothing. One store call for all.
    pub async fn set_many<T: Serialize>(
        &self,
        entries: &[(&str, T)],
        ttl: Duration,
    ) -> Result<(), Error> {
        for (key, _) in entries {
            key::check_key(key)?;
        }
        let engine = &self.engine;
        if !engine.enabled() {
            return Ok(());
        }
        let mut sealed: Vec<(Cow<'_, str>, Bytes)> = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let full = engine.full_key(key);
            let bytes = engine.sealer.seal_with(
                &full,
                value,
                crate::entry::Windows::ttl(ttl),
                UNTYPED,
                0,
                None,
            )?;
            if bytes.len() > engine.max_entry_bytes {
                return Err(Error::TooLarge {
                    size: bytes.len(),
                    limit: engine.max_entry_bytes,
                });
            }
            sealed.push((full, bytes));
        }
        if let Some(memory) = engine.store.memory() {
            for (key, bytes) in sealed {
                memory.store(&key, bytes, ttl, None)?;
            }
            return Ok(());
        }
        let pairs: Vec<(&str, Bytes)> = sealed.iter().map(|(k, b)| (&**k, b.clone())).collect();
        let backend = engine.store.backend();
        engine
            .guarded("set_many", || backend.set_many(&pairs, ttl))
            .await
    }

    /// Deletes each key, as [`delete`](Self::delete) does: after it
    /// returns, no caller in any process sharing the store is answered with
    /// a value of one of them computed before it. One store call for all
    /// (SQL: one transaction, one epoch for every key).
    pub async fn delete_many(&self, keys: &[&str]) -> Result<(), Error> {
        for key in keys {
            key::check_key(key)?;
        }
        let engine = &self.engine;
        if !engine.enabled() {
            return Ok(());
        }
        let full: Vec<Cow<'_, str>> = keys.iter().map(|k| engine.full_key(k)).collect();
        let refs: Vec<&str> = full.iter().map(|k| &**k).collect();
        let backend = engine.store.backend();
        engine
            .guarded("delete_many", || backend.delete_many(&refs))
            .await?;
        // After the store: nobody may join a computation of one of the keys
        // that started before the delete.
        for key in &refs {
            engine.flights.detach_key(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
