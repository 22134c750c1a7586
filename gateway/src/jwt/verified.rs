//! A bounded cache of tokens already verified, so that a session's later
//! requests cost a hash and a lookup instead of a signature check.
//!
//! Entries are keyed by the SHA-256 of the whole token (a token is never
//! kept) and are served only while the token's `exp` is in the future, with
//! no leeway; once the cache holds `capacity` entries, quick_cache evicts.

use std::sync::Arc;

use aws_lc_rs::digest;

use super::Claims;

/// Verified tokens by hash.
pub struct VerifiedTokens {
    cache: quick_cache::sync::Cache<[u8; 32], Arc<Claims>>,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("len", &self.cache.len())
            .finish()
    }
}

fn key(token: &str) -> [u8; 32] {
    let hash = digest::digest(&digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(hash.as_ref());
    key
}

impl VerifiedTokens {
    /// A cache holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The claims of `token` if it was verified before and has not expired
    /// at `now` (Unix seconds).
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<Claims>> {
        let key = key(token);
        let claims = self.cache.get(&key)?;
        if now >= claims.exp {
            self.cache.remove(&key);
            return None;
        }
        Some(claims)
    }

    /// Remembers a token that just verified.
    pub fn insert(&self, token: &str, claims: Arc<Claims>) {
        self.cache.insert(key(token), claims);
    }

    /// Entries held (expired ones included until looked up or evicted).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn claims(exp: u64) -> Arc<Claims> {
        Arc::new(Claims {
            iss: "https://team.example".into(),
            sub: "u".into(),
            email: Some("alice@corp.example".into()),
            exp,
            iat: 0,
            nbf: 0,
            token_type: Some("app".into()),
            country: None,
            common_name: None,
            other: BTreeMap::new(),
        })
    }

    #[test]
    fn hits_until_expiry_only() {
        let cache = VerifiedTokens::new(16);
        cache.insert("token-a", claims(1000));
        assert_eq!(cache.get("token-a", 999).unwrap().exp, 1000);
        assert!(cache.get("token-a", 1000).is_none(), "expired at exp");
        assert!(cache.get("token-a", 999).is_none(), "and removed");
        assert!(cache.get("token-b", 1).is_none());
    }

    #[test]
    fn a_different_token_with_the_same_claims_is_not_a_hit() {
        let cache = VerifiedTokens::new(16);
        cache.insert("header.payload.signature", claims(1000));
        assert!(cache.get("header.payload.signaturf", 1).is_none());
    }

    #[test]
    fn capacity_is_bounded() {
        let cache = VerifiedTokens::new(100);
        for i in 0..10_000 {
            cache.insert(&format!("token-{i}"), claims(u64::MAX));
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
        assert!(!cache.is_empty());
    }
}
