//! API keys: `leaky_<user id as 32 hex digits>_<secret>`. Only the sha256 of the whole key is
//! stored: the secret is 256 random bits, so a fast hash is safe (unlike a password).

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A newly generated key, shown to its owner once.
pub struct ApiKeySecret {
    /// The whole key.
    pub key: String,
    /// The first characters, kept to recognise the key in lists.
    pub prefix: String,
    /// What is stored.
    pub hash: String,
}

impl ApiKeySecret {
    /// Generates a key for `user`.
    pub fn generate(user: Uuid) -> Self {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let key = format!("leaky_{}_{}", user.simple(), hex::encode(secret));
        let prefix = key.chars().take(14).collect();
        let hash = hash_secret(&key);
        Self { key, prefix, hash }
    }
}

/// The stored form of a key.
pub fn hash_secret(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The user id a key claims to belong to, when it has the key's shape.
pub fn parse_key(key: &str) -> Option<Uuid> {
    let rest = key.strip_prefix("leaky_")?;
    let (user, secret) = rest.split_once('_')?;
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Uuid::try_parse(user).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let user = Uuid::now_v7();
        let k = ApiKeySecret::generate(user);
        assert!(k.key.starts_with(&format!("leaky_{}_", user.simple())));
        assert_eq!(parse_key(&k.key), Some(user));
        assert_eq!(k.hash, hash_secret(&k.key));
        assert_eq!(parse_key("leaky_nothex_abc"), None);
    }
}
