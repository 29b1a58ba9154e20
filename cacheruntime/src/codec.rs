//! Turning values into bytes and back.
//!
//! The default codec is bincode 2.0.1 through its serde support: fast and
//! compact. It is pinned to `=2.0.1` because the registry's 3.0.0 is a
//! `compile_error!` tombstone. `postcard` (feature `postcard`) is the
//! maintained alternative. Both enforce a decode limit that is checked before
//! allocating, so a corrupt or forged length prefix cannot make the cache
//! allocate gigabytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

mod sealed {
    /// Only this crate's codecs implement [`Codec`](super::Codec).
    pub trait Sealed {}
    impl Sealed for super::BincodeCodec {}
    #[cfg(feature = "postcard")]
    impl Sealed for super::PostcardCodec {}
    impl Sealed for super::AnyCodec {}
}

/// A serialization format for cached values.
///
/// Sealed: the codecs are the ones listed here ([`BincodeCodec`],
/// [`PostcardCodec`], and [`AnyCodec`], which the builder accepts). A codec
/// is part of the stored format (its id is in every entry, and entries must
/// decode the same in every process sharing a store), and its methods are
/// generic over the value type, so the cache could not call a codec of the
/// user's through the builder anyway. Ask for a codec you need in an issue.
pub trait Codec: sealed::Sealed + Send + Sync + std::fmt::Debug {
    /// Stable one-byte id written into every envelope; entries written by
    /// another codec are misses, not garbage.
    fn id(&self) -> u8;
    /// Human name for errors.
    fn name(&self) -> &'static str;
    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error>;
    /// Decodes a whole value from `bytes`, refusing to allocate more than the
    /// codec's limit.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error>;
}

/// bincode 2 (serde mode, standard config: varint integers, little endian).
#[derive(Clone, Copy, Debug, Default)]
pub struct BincodeCodec;

/// Largest memory a decode may claim; beyond it the entry is rejected.
const MAX_DECODE_BYTES: usize = 256 << 20;

macro_rules! bincode_decode_with_limit {
    ($bytes:expr, $($limit:expr),+) => {{
        let bytes: &[u8] = $bytes;
        // Memory claimed by a decode can exceed the encoded size (a varint
        // u64 is 1 byte on the wire, 8 in memory; a String header is 24), so
        // the limit is a multiple of the input, rounded up to a bucket.
        let want = bytes.len().saturating_mul(32).max(64 << 10);
        $(
            if want <= $limit {
                return bincode::serde::decode_from_slice(
                    bytes,
                    bincode::config::standard().with_limit::<{ $limit }>(),
                )
                .map_err(|e| Error::decode(format!("bincode: {e}")))
                .and_then(|(v, read)| {
                    if read == bytes.len() {
                        Ok(v)
                    } else {
                        Err(Error::decode("bincode: trailing bytes after the value"))
                    }
                });
            }
        )+
        Err(Error::decode("entry larger than the decode limit"))
    }};
}

impl Codec for BincodeCodec {
    fn id(&self) -> u8 {
        1
    }

    fn name(&self) -> &'static str {
        "bincode"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(|_| ())
            .map_err(|e| Error::Encode {
                codec: "bincode",
                message: e.to_string(),
            })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error> {
        bincode_decode_with_limit!(
            bytes,
            64 << 10,
            1 << 20,
            16 << 20,
            64 << 20,
            MAX_DECODE_BYTES
        )
    }
}

/// postcard 1 (serde, varint, no schema). Feature `postcard`.
///
/// postcard never preallocates from a length prefix: a sequence grows as its
/// elements actually decode, so input size bounds memory.
#[cfg(feature = "postcard")]
#[derive(Clone, Copy, Debug, Default)]
pub struct PostcardCodec;

#[cfg(feature = "postcard")]
impl Codec for PostcardCodec {
    fn id(&self) -> u8 {
        2
    }

    fn name(&self) -> &'static str {
        "postcard"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
        let bytes = postcard::to_allocvec(value).map_err(|e| Error::Encode {
            codec: "postcard",
            message: e.to_string(),
        })?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error> {
        if bytes.len() > MAX_DECODE_BYTES {
            return Err(Error::decode("entry larger than the decode limit"));
        }
        match postcard::take_from_bytes(bytes) {
            Ok((v, [])) => Ok(v),
            Ok(_) => Err(Error::decode("postcard: trailing bytes after the value")),
            Err(e) => Err(Error::decode(format!("postcard: {e}"))),
        }
    }
}

/// One of the built-in codecs; what [`CacheBuilder::codec`](crate::CacheBuilder::codec) takes.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum AnyCodec {
    /// [`BincodeCodec`], the default.
    Bincode(BincodeCodec),
    /// [`PostcardCodec`].
    #[cfg(feature = "postcard")]
    Postcard(PostcardCodec),
}

impl Default for AnyCodec {
    fn default() -> Self {
        AnyCodec::Bincode(BincodeCodec)
    }
}

impl From<BincodeCodec> for AnyCodec {
    fn from(c: BincodeCodec) -> Self {
        AnyCodec::Bincode(c)
    }
}

#[cfg(feature = "postcard")]
impl From<PostcardCodec> for AnyCodec {
    fn from(c: PostcardCodec) -> Self {
        AnyCodec::Postcard(c)
    }
}

impl Codec for AnyCodec {
    fn id(&self) -> u8 {
        match self {
            AnyCodec::Bincode(c) => c.id(),
            #[cfg(feature = "postcard")]
            AnyCodec::Postcard(c) => c.id(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            AnyCodec::Bincode(c) => c.name(),
            #[cfg(feature = "postcard")]
            AnyCodec::Postcard(c) => c.name(),
        }
    }

    #[inline]
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
        match self {
            AnyCodec::Bincode(c) => c.encode(value, out),
            #[cfg(feature = "postcard")]
            AnyCodec::Postcard(c) => c.encode(value, out),
        }
    }

    #[inline]
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error> {
        match self {
            AnyCodec::Bincode(c) => c.decode(bytes),
            #[cfg(feature = "postcard")]
            AnyCodec::Postcard(c) => c.decode(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bincode_round_trips_and_rejects_trailing_bytes() {
        let c = BincodeCodec;
        let mut out = Vec::new();
        c.encode(&vec![1i64, 2, 3], &mut out).unwrap();
        assert_eq!(c.decode::<Vec<i64>>(&out).unwrap(), vec![1, 2, 3]);
        out.push(0);
        assert!(c.decode::<Vec<i64>>(&out).is_err());
    }

    #[test]
    fn bincode_refuses_a_forged_huge_length_without_allocating_it() {
        // A Vec<u64> claiming 2^40 elements in a 9-byte input.
        let forged = [0xFDu8, 0, 0, 0, 0, 0, 1, 0, 0];
        assert!(BincodeCodec.decode::<Vec<u64>>(&forged).is_err());
    }

    mod shapes {
        use serde::{Deserialize, Serialize};

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        #[serde(untagged)]
        pub enum Untagged {
            N(u32),
            S(String),
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        #[serde(tag = "kind")]
        pub enum Internal {
            A { x: u32 },
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        #[serde(tag = "t", content = "c")]
        pub enum Adjacent {
            A(u32),
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        pub struct Inner {
            pub b: u32,
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        pub struct Flattened {
            pub a: u32,
            #[serde(flatten)]
            pub inner: Inner,
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        pub struct Skipping {
            #[serde(skip_serializing_if = "Option::is_none")]
            pub a: Option<u32>,
            pub b: u32,
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        pub struct Plain {
            pub a: Option<u32>,
            pub tags: Vec<String>,
            pub e: Internal2,
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        pub enum Internal2 {
            A(u32),
            B { s: String },
        }
    }

    /// Whether `value` survives `codec`.
    fn survives<C: Codec, T>(codec: &C, value: &T) -> bool
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq,
    {
        let mut out = Vec::new();
        codec.encode(value, &mut out).is_ok()
            && codec.decode::<T>(&out).ok().as_ref() == Some(value)
    }

    /// The serde shapes the README lists as unreadable: each codec is
    /// checked against the list, so the list stays true.
    fn unreadable_shapes<C: Codec>(codec: &C) -> Vec<&'static str> {
        use shapes::*;
        let mut out = Vec::new();
        let json: serde_json::Value = serde_json::json!({"a": [1, "x"]});
        let checks: [(&'static str, bool); 7] = [
            ("serde_json::Value", survives(codec, &json)),
            ("untagged", survives(codec, &Untagged::S("x".into()))),
            ("internally tagged", survives(codec, &Internal::A { x: 1 })),
            ("adjacently tagged", survives(codec, &Adjacent::A(1))),
            (
                "flatten",
                survives(
                    codec,
                    &Flattened {
                        a: 1,
                        inner: Inner { b: 2 },
                    },
                ),
            ),
            (
                "skip_serializing_if",
                survives(codec, &Skipping { a: None, b: 2 }),
            ),
            (
                "plain",
                survives(
                    codec,
                    &Plain {
                        a: None,
                        tags: vec!["t".into()],
                        e: Internal2::B { s: "s".into() },
                    },
                ),
            ),
        ];
        for (name, ok) in checks {
            if !ok {
                out.push(name);
            }
        }
        out
    }

    #[test]
    fn bincode_cannot_read_the_shapes_the_readme_lists() {
        assert_eq!(
            unreadable_shapes(&BincodeCodec),
            [
                "serde_json::Value",
                "untagged",
                "internally tagged",
                "adjacently tagged",
                "flatten",
                "skip_serializing_if"
            ]
        );
    }

    #[cfg(feature = "postcard")]
    #[test]
    fn postcard_cannot_read_the_shapes_the_readme_lists() {
        assert_eq!(
            unreadable_shapes(&PostcardCodec),
            [
                "serde_json::Value",
                "untagged",
                "internally tagged",
                "adjacently tagged",
                "flatten",
                "skip_serializing_if"
            ]
        );
    }
}
