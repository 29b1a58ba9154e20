//! A key that uses one argument whose bounds name another generic
//! parameter: the helpers keep that parameter (and its where-clause) so
//! they compile; callers name it with a turbofish when no argument does.

use std::fmt::Display;

use cacheruntime::cached;

#[cached(key = "conv:{a}", ttl = 60, skip = [b])]
async fn convert<A: Display + From<B> + Send, B: Send>(a: A, b: B) -> String {
    let _ = A::from(b);
    a.to_string()
}

#[cached(key = "wrap:{a}", ttl = 60, skip = [b, c])]
async fn wrap<A, B, C: Send>(a: A, b: B, c: C) -> String
where
    A: Display + From<B> + Send,
    B: Clone + Send,
{
    let _ = (A::from(b.clone()), c);
    a.to_string()
}

fn main() {
    assert_eq!(convert_cache_key::<String, &str>(String::from("x")), "conv:x");
    assert_eq!(wrap_cache_key::<String, &str>(String::from("y")), "wrap:y");
    let _ = convert_invalidate::<String, &str>(String::from("x"));
    let _ = wrap_invalidate::<String, &str>(String::from("y"));
}
