//! What operators ask of the memory store (`Cache::keys`,
//! `Cache::store_info`): its keys, and its size.

use super::MemoryBackend;
use crate::backend::{ScanPage, StoreInfo};

impl MemoryBackend {
    /// Every key starting with `prefix`, in one page (the entries are in
    /// process: one pass over them).
    pub(super) fn listing(&self, prefix: &str) -> ScanPage {
        let mut examined = 0;
        let keys = self
            .entries
            .iter()
            .inspect(|_| examined += 1)
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.into_string())
            .collect();
        ScanPage::new(keys, None, examined)
    }

    /// Its bound, what it holds, and how it evicts.
    pub(super) fn info(&self) -> StoreInfo {
        let mut info = StoreInfo::new("memory");
        info.eviction = Some("S3-FIFO (quick_cache), weighed in bytes".into());
        info.memory = Some(format!(
            "{} of {} bytes, {} entries",
            self.used_bytes(),
            self.max_bytes(),
            self.len()
        ));
        info
    }
}
