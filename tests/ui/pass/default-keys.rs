//! Default keys (no `key = ...`) wherever a function can sit, and methods
//! taking `&self` with a key template. The helpers keep every generic
//! parameter of a function with a default key, so a type that no argument
//! names is given by turbofish.
use std::fmt::Display;
use std::marker::PhantomData;

use cacheruntime::cached;
use serde::{de::DeserializeOwned, Serialize};

pub struct Users;

impl Users {
    #[cached(ttl = 60)]
    pub async fn count(team: u64) -> u64 {
        team
    }
}

pub struct Repo<T> {
    id: u64,
    _t: PhantomData<T>,
}

impl<T: Default + Serialize + DeserializeOwned> Repo<T> {
    /// Associated, in a generic impl: the instantiation is in the key.
    #[cached(ttl = 60)]
    pub async fn load(id: u64) -> T {
        let _ = id;
        T::default()
    }

    /// A method: its key names what the result depends on in `self`.
    #[cached(key = "repo:{self.id}:row:{row}", ttl = 60)]
    pub async fn row(&self, row: u32) -> T {
        let _ = (self.id, row);
        T::default()
    }
}

pub trait Table {
    const ROWS: u64;
}

pub struct Books;

impl Table for Books {
    const ROWS: u64 = 3;
}

#[cached(ttl = 60)]
async fn row_count<T: Table>(shard: u32) -> u64 {
    T::ROWS + u64::from(shard)
}

#[cached(ttl = 60)]
async fn bounded<'a, T: Display + 'a, const N: usize>(name: &'a str, extra: T) -> String
where
    T: Send,
{
    format!("{name}{extra}{N}")
}

#[cached(ttl = 60)]
async fn any_display(x: impl Display + Send) -> String {
    x.to_string()
}

fn nested(x: u32) -> impl std::future::Future<Output = u32> {
    #[cached(ttl = 60)]
    async fn inner(x: u32) -> u32 {
        x
    }
    let _: String = inner_cache_key(x);
    inner(x)
}

async fn use_all() {
    let _ = Users::count(1).await;
    let _: String = Users::count_cache_key(1);
    let _ = Users::count_invalidate(1).await;

    let _: u8 = Repo::<u8>::load(1).await;
    let _: String = Repo::<String>::load_cache_key(1);
    let _ = Repo::<u8>::load_invalidate(1).await;
    let repo = Repo::<u8> {
        id: 1,
        _t: PhantomData,
    };
    let _ = repo.row(2).await;
    let _: String = repo.row_cache_key(2);

    let _ = row_count::<Books>(1).await;
    let _: String = row_count_cache_key::<Books>(1);
    let _ = row_count_invalidate::<Books>(1).await;

    let _ = bounded::<u8, 2>("a", 1).await;
    let _: String = bounded_cache_key::<u8, 2>("a", 1);

    let _ = any_display(5).await;
    let _: String = any_display_cache_key("five");

    let _ = nested(1).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(use_all());
}
