//! A custom backend that implements only the required methods: the batched
//! ops work through the trait's defaults (one key after the other, same
//! answers, deletes still fencing), and the ops that need
//! `compare_and_set` say it is missing rather than guess.

use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Backend, BoxFuture, Lookup, Ticket};
use crate::backends::MemoryBackend;
use crate::{Cache, Error};

#[derive(Debug)]
struct Plain(MemoryBackend);

impl Backend for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }
    fn supports_locks(&self) -> bool {
        false
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        Backend::get(&self.0, key)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Backend::set(&self.0, key, value, ttl, ticket)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Backend::delete(&self.0, key)
    }
    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Backend::invalidate_prefix(&self.0, prefix)
    }
}

fn cache() -> Cache {
    Cache::builder()
        .backend(Plain(MemoryBackend::new(1 << 20)))
        .namespace("app")
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_backend_without_the_new_methods_gets_correct_batches() {
    let cache = cache();
    let ttl = Duration::from_secs(60);
    cache
        .set_many(&[("a:1", 1u32), ("a:2", 2), ("b:1", 3)], ttl)
        .await
        .unwrap();
    cache.invalidate_prefix("b:").await.unwrap();
    let got = cache
        .get_many::<u32>(&["a:1", "a:2", "b:1", "c:1"])
        .await
        .unwrap();
    assert_eq!(got, [Some(1), Some(2), None, None]);
    cache.delete_many(&["a:1"]).await.unwrap();
    assert_eq!(
        cache.get_many::<u32>(&["a:1", "a:2"]).await.unwrap(),
        [None, Some(2)]
    );
    assert!(cache.contains("a:2").await.unwrap());
    assert_eq!(cache.stats().calls(), 7);
}

#[tokio::test]
async fn a_backend_without_compare_and_set_refuses_the_ops_that_need_it() {
    let cache = cache();
    let ttl = Duration::from_secs(60);
    cache.set("k", &1u8, ttl).await.unwrap();
    for result in [
        cache.add("new", &1u8, ttl).await.map(|_| ()),
        cache.touch("k", ttl).await.map(|_| ()),
        cache.incr("n", 1, ttl).await.map(|_| ()),
    ] {
        match result {
            Err(
                e @ Error::Unsupported {
                    backend: "plain", ..
                },
            ) => {
                assert!(e.to_string().contains("compare_and_set"), "{e}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
    // Nothing was written by the refused ops.
    assert!(!cache.contains("new").await.unwrap());
}
