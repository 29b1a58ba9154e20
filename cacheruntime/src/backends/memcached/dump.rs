//! What operators ask of Memcached (`Cache::keys`, `Cache::store_info`,
//! `cachectl`), in the text protocol on a connection of their own: the
//! LRU crawler's dump of every item's name, one server per page, and
//! `stats`.
//!
//! The dump walks the hash table (`lru_crawler metadump hash`, Memcached
//! 1.6): `metadump all` walks the LRU queues, and items the LRU maintainer
//! moves between them meanwhile (every item read lately) are missed, a
//! different few on each dump (measured: 2 of 6 items listed after reads).

use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{MemcachedBackend, NAME};
use crate::backend::{ScanPage, StoreInfo};
use crate::backends::generations::Kind;
use crate::Error;

/// How long one command may take (a dump of a large server included).
const PATIENCE: Duration = Duration::from_secs(30);

/// Sends `command` to `addr` and reads the lines of its answer up to `END`.
async fn lines(addr: &str, shown: &str, command: &str) -> Result<Vec<String>, Error> {
    let fail = |what: String| Error::backend(NAME, format!("Memcached server `{shown}`: {what}"));
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await?;
        let mut reader = BufReader::new(stream);
        let mut out = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::other("the server closed the connection"));
            }
            let text = line.trim_end();
            if text == "END" {
                return Ok(out);
            }
            if text.starts_with("ERROR")
                || text.starts_with("CLIENT_ERROR")
                || text.starts_with("SERVER_ERROR")
                || text.starts_with("BUSY")
            {
                return Err(std::io::Error::other(format!(
                    "`{command}` answered {text:?} (listing keys needs Memcached 1.6 with its \
                     LRU crawler enabled, not busy with another dump)"
                )));
            }
            out.push(text.to_owned());
        }
    };
    match tokio::time::timeout(PATIENCE, exchange).await {
        Ok(Ok(lines)) => Ok(lines),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail(format!("`{command}` took over {PATIENCE:?}"))),
    }
}

/// The key of the entry named `name` in a dump (`key=<url-encoded>`), when
/// it is an entry's (`keys.rs`: `v:<key>`).
fn key_of(line: &str) -> Option<String> {
    let encoded = line.split(' ').find_map(|f| f.strip_prefix("key="))?;
    let name = percent_decode_str(encoded).decode_utf8().ok()?;
    let key = name.strip_prefix(Kind::Entry.letter())?.strip_prefix(':')?;
    Some(key.to_owned())
}

impl MemcachedBackend {
    /// Server `cursor` (0 first): every entry's key on it starting with
    /// `prefix`, then the next server.
    pub(super) async fn dump_server(
        &self,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<ScanPage, Error> {
        let pool = self.pool().await?;
        let server = match cursor {
            None => 0,
            Some(c) => c
                .parse::<usize>()
                .map_err(|_| Error::Config(format!("{c:?} is not a cursor this store gave")))?,
        };
        if server >= pool.len() {
            return Ok(ScanPage::default());
        }
        let (addr, shown) = pool.addr(server);
        let dumped = lines(addr, shown, "lru_crawler metadump hash").await?;
        let keys = dumped
            .iter()
            .filter_map(|line| key_of(line))
            .filter(|key| key.starts_with(prefix))
            .collect();
        let next = (server + 1 < pool.len()).then(|| (server + 1).to_string());
        Ok(ScanPage::new(keys, next, dumped.len() as u64))
    }

    /// Version, memory and eviction of every server (`stats`, `stats
    /// settings`), with a warning for a server that cannot evict (`-M`).
    pub(super) async fn describe_servers(&self) -> Result<StoreInfo, Error> {
        let pool = self.pool().await?;
        let mut info = StoreInfo::new(NAME);
        info.tls = Some(false);
        let mut memory = Vec::new();
        for server in 0..pool.len() {
            let (addr, shown) = pool.addr(server);
            let stats = lines(addr, shown, "stats").await?;
            let settings = lines(addr, shown, "stats settings").await?;
            let stat = |lines: &[String], name: &str| {
                lines.iter().find_map(|l| {
                    let mut parts = l.split(' ');
                    (parts.next() == Some("STAT") && parts.next() == Some(name))
                        .then(|| parts.next().unwrap_or("").to_owned())
                })
            };
            if info.version.is_none() {
                info.version = stat(&stats, "version");
            }
            memory.push(format!(
                "{shown}: {} of {} bytes, {} items, {} evictions",
                stat(&stats, "bytes").unwrap_or_default(),
                stat(&stats, "limit_maxbytes").unwrap_or_default(),
                stat(&stats, "curr_items").unwrap_or_default(),
                stat(&stats, "evictions").unwrap_or_default(),
            ));
            if stat(&settings, "evictions").as_deref() == Some("off") {
                info.warnings.push(format!(
                    "Memcached server `{shown}` runs with evictions off (-M): once full it \
                     refuses writes instead of evicting; run it without -M"
                ));
            }
        }
        info.eviction = Some("LRU (segmented), per slab class".into());
        info.memory = Some(memory.join("; "));
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumped_entry_names_read_back_as_their_keys() {
        let line = "key=v%3Aauthor%3A42%3Atop exp=1700000000 la=1 cas=7 fetch=no cls=1 size=90";
        assert_eq!(key_of(line).as_deref(), Some("author:42:top"));
        assert_eq!(
            key_of("key=g%3Aauthor%3A exp=-1 la=1 cas=1 fetch=no cls=1 size=70"),
            None
        );
        assert_eq!(
            key_of("key=l%3Ax exp=1 la=1 cas=1 fetch=no cls=1 size=70"),
            None
        );
    }
}
