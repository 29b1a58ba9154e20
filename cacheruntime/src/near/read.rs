//! The near tier's part of the synchronous hit path.

use serde::de::DeserializeOwned;

use super::Near;
use crate::engine::{Answer, Engine};
use crate::entry::{Accept, Due};
use crate::memo::Memo;
use crate::policy::Policy;
use crate::read::Fast;
use crate::site::Site;

impl Engine {
    /// [`local_read`](Engine::local_read) on a shared store with a near
    /// tier: a fresh entry of the near tier is a hit; anything else (a
    /// miss, an entry due for a refresh, one kept for `stale_if_error`) is
    /// the shared store's to answer, under its own ticket.
    #[inline]
    pub(crate) fn near_read<V: DeserializeOwned, const HIT_IS_ANSWER: bool>(
        &self,
        near: &Near,
        key: &str,
        fp: Accept,
        site: Option<&'static Site>,
        memo: Memo<V>,
        policy: Option<&Policy>,
    ) -> Fast<V> {
        if !near.serving() {
            return Fast::Remote;
        }
        let Some(entry) = near.memory().local(key).entry else {
            return Fast::Remote;
        };
        match self.sealer.open_local(&entry, fp, memo, policy) {
            Ok(Some((v, Due::No))) => {
                if HIT_IS_ANSWER {
                    self.tally(site, Answer::Hit);
                }
                near.hits.incr();
                Fast::Hit(v)
            }
            Ok(_) => Fast::Remote,
            Err(e) => {
                self.failed("decode", &e);
                Fast::Remote
            }
        }
    }
}
