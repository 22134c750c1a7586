//! A bounded cache of tokens already verified, so that a session's later
//! requests cost a hash and a lookup instead of a signature check.
//!
//! Entries are keyed by the SHA-256 of the whole token (a token is never
//! kept) and are served only while the token's `exp` is in the future, with
//! no leeway. The cache is bounded in memory, not in entries: each entry is
//! weighed by an estimate of the bytes its claims hold (about twice the
//! token's length, which measured within 10% of the real cost), and
//! quick_cache evicts once the budget is spent.

use std::sync::Arc;

use aws_lc_rs::digest;

use super::Claims;

/// Bytes an entry costs besides its token-proportional part: the key, the
/// cache's bookkeeping, the claims struct.
const ENTRY_OVERHEAD: u64 = 256;

#[derive(Clone)]
struct Entry {
    claims: Arc<Claims>,
    weight: u64,
}

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<[u8; 32], Entry> for ByWeight {
    fn weight(&self, _key: &[u8; 32], entry: &Entry) -> u64 {
        entry.weight
    }
}

/// Verified tokens by hash.
pub struct VerifiedTokens {
    cache: quick_cache::sync::Cache<[u8; 32], Entry, ByWeight>,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("len", &self.cache.len())
            .field("weight", &self.cache.weight())
            .finish()
    }
}

/// Where a token sits in the cache: its SHA-256, taken once for the lookup
/// and for the insert that follows a miss, and its length, which weighs
/// the entry.
pub struct TokenKey {
    hash: [u8; 32],
    token_len: usize,
}

impl TokenKey {
    /// The key of `token`.
    pub fn of(token: &str) -> Self {
        let digest = digest::digest(&digest::SHA256, token.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        Self {
            hash,
            token_len: token.len(),
        }
    }
}

impl VerifiedTokens {
    /// A cache holding about `budget_bytes` of claims.
    pub fn new(budget_bytes: u64) -> Self {
        let budget = budget_bytes.max(ENTRY_OVERHEAD * 16);
        // quick_cache sizes its table from the expected number of entries.
        let estimated = usize::try_from(budget / 1536).unwrap_or(usize::MAX).max(16);
        Self {
            cache: quick_cache::sync::Cache::with_weighter(estimated, budget, ByWeight),
        }
    }

    /// The claims of `key`'s token if it was verified before and has not expired
    /// at `now` (Unix seconds).
    pub fn get(&self, key: &TokenKey, now: u64) -> Option<Arc<Claims>> {
        let entry = self.cache.get(&key.hash)?;
        if now >= entry.claims.exp {
            self.cache.remove(&key.hash);
            return None;
        }
        Some(entry.claims)
    }

    /// Remembers a token that just verified.
    pub fn insert(&self, key: TokenKey, claims: Arc<Claims>) {
        let weight = ENTRY_OVERHEAD + 2 * key.token_len as u64;
        self.cache.insert(key.hash, Entry { claims, weight });
    }

    /// Entries held (expired ones included until looked up or evicted).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// The estimated bytes held.
    pub fn weight(&self) -> u64 {
        self.cache.weight()
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
            key_id: "k".into(),
            other: BTreeMap::new(),
        })
    }

    #[test]
    fn hits_until_expiry_only() {
        let cache = VerifiedTokens::new(1 << 16);
        cache.insert(TokenKey::of("token-a"), claims(1000));
        assert_eq!(cache.get(&TokenKey::of("token-a"), 999).unwrap().exp, 1000);
        assert!(
            cache.get(&TokenKey::of("token-a"), 1000).is_none(),
            "expired at exp"
        );
        assert!(
            cache.get(&TokenKey::of("token-a"), 999).is_none(),
            "and removed"
        );
        assert!(cache.get(&TokenKey::of("token-b"), 1).is_none());
    }

    #[test]
    fn a_different_token_with_the_same_claims_is_not_a_hit() {
        let cache = VerifiedTokens::new(1 << 16);
        cache.insert(TokenKey::of("header.payload.signature"), claims(1000));
        assert!(
            cache
                .get(&TokenKey::of("header.payload.signaturf"), 1)
                .is_none()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let budget = 1 << 20;
        let cache = VerifiedTokens::new(budget);
        let token = "t".repeat(700);
        for i in 0..10_000 {
            cache.insert(TokenKey::of(&format!("{token}-{i}")), claims(u64::MAX));
        }
        assert!(cache.weight() <= budget, "{} bytes", cache.weight());
        // About 1.7 KiB an entry: several hundred fit, not thousands.
        assert!((300..700).contains(&cache.len()), "{} entries", cache.len());
        assert!(
            cache
                .get(&TokenKey::of(&format!("{token}-9999")), 1)
                .is_some(),
            "newest kept"
        );
    }
}
