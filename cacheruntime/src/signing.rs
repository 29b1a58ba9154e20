//! Signed entries: HMAC-SHA256 over the key and the envelope.
//!
//! Cached text is rendered back to users, so whoever can write to a shared
//! store must not be able to put content on the site. With signing keys set
//! every entry carries a tag over its full key (so an entry cannot be moved
//! to another key) and its envelope; a read from a shared store verifies it
//! in constant time and treats a missing or wrong tag as a miss, counted in
//! `Stats::signature_failures`. Several keys may verify (rotation); the
//! first one signs. The in-process memory store is not verified: nothing
//! outside the process can write to it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Error;

/// Length of the tag appended to signed envelopes.
pub const TAG_LEN: usize = 32;

/// Signing keys, as [`CacheBuilder::signing_keys`](crate::CacheBuilder::signing_keys)
/// takes them; `Debug` never shows them.
#[derive(Clone, Default)]
pub(crate) struct SigningKeys(pub(crate) Vec<Vec<u8>>);

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeys([redacted; {} keys])", self.0.len())
    }
}

pub(crate) struct Signer {
    keys: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer([redacted; {} keys])", self.keys.len())
    }
}

impl Signer {
    /// `None` without keys; an error for a key too short to resist guessing.
    pub(crate) fn new(keys: &SigningKeys) -> Result<Option<Signer>, Error> {
        if keys.0.is_empty() {
            return Ok(None);
        }
        let mut macs = Vec::with_capacity(keys.0.len());
        for (i, key) in keys.0.iter().enumerate() {
            if key.len() < 16 {
                return Err(Error::Config(format!(
                    "signing key #{} is {} bytes; use at least 16 random bytes (32 recommended)",
                    i + 1,
                    key.len()
                )));
            }
            macs.push(
                Hmac::<Sha256>::new_from_slice(key)
                    .map_err(|_| Error::Config("unusable signing key".into()))?,
            );
        }
        Ok(Some(Signer { keys: macs }))
    }

    fn mac(base: &Hmac<Sha256>, key: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = base.clone();
        mac.update(&(key.len() as u64).to_le_bytes());
        mac.update(key.as_bytes());
        mac.update(body);
        mac
    }

    /// The tag of `body` stored under `key`, with the first key.
    pub(crate) fn sign(&self, key: &str, body: &[u8]) -> [u8; TAG_LEN] {
        Self::mac(&self.keys[0], key, body)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether any key produced `tag` (each comparison in constant time).
    pub(crate) fn verify(&self, key: &str, body: &[u8], tag: &[u8]) -> bool {
        self.keys
            .iter()
            .any(|k| Self::mac(k, key, body).verify_slice(tag).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(keys: &[&str]) -> Signer {
        let keys = SigningKeys(keys.iter().map(|k| k.as_bytes().to_vec()).collect());
        Signer::new(&keys).unwrap().unwrap()
    }

    #[test]
    fn tags_bind_key_and_body_and_survive_rotation() {
        let old = signer(&["old-key-0123456789"]);
        let tag = old.sign("a:1", b"body");
        assert!(old.verify("a:1", b"body", &tag));
        assert!(!old.verify("a:2", b"body", &tag), "moved to another key");
        assert!(!old.verify("a:1", b"bodY", &tag), "tampered");
        let rotated = signer(&["new-key-0123456789", "old-key-0123456789"]);
        assert!(
            rotated.verify("a:1", b"body", &tag),
            "old tags still verify"
        );
        let retired = signer(&["new-key-0123456789"]);
        assert!(!retired.verify("a:1", b"body", &tag));
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_print() {
        let short = SigningKeys(vec![b"short".to_vec()]);
        assert!(Signer::new(&short).is_err());
        let keys = SigningKeys(vec![b"super-secret-signing-key".to_vec()]);
        assert!(!format!("{keys:?}").contains("super-secret"));
        let s = Signer::new(&keys).unwrap().unwrap();
        assert!(!format!("{s:?}").contains("super-secret"));
    }
}
