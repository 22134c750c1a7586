//! Service tokens: client id + secret pairs that machines present instead of
//! a user sign-in (`CF-Access-Client-Id` / `CF-Access-Client-Secret`).
//!
//! The store is a JSON file holding, per token, only the SHA-256 of each
//! secret (secrets are 288 random bits, so a fast hash is the right one: there
//! is nothing to brute-force). Secrets are shown once, at creation or
//! rotation. Verification compares hashes in constant time, and an unknown
//! client id costs the same comparison as a wrong secret, so the two cannot be
//! told apart from outside. Writes go to a temporary file that is fsynced and
//! renamed over the store, so a crash never leaves a half-written store.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use aws_lc_rs::{
    digest,
    rand::{SecureRandom as _, SystemRandom},
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// Default lifetime of a new token: one year, as in Cloudflare Access.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(8760 * 3600);
/// Prefix of every secret, so secret scanners can recognise leaked ones.
pub const SECRET_PREFIX: &str = "gwsec_";
/// Suffix of every client id (Cloudflare's shape: `<hex>.access`).
pub const CLIENT_ID_SUFFIX: &str = ".access";

/// A token-store error.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing the store.
    #[error("token store {path}")]
    Io {
        /// The store.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store is not valid JSON of the expected shape.
    #[error("token store {path} is damaged")]
    Damaged {
        /// The store.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// No token with that name or client id.
    #[error("no service token named or with client id `{0}`")]
    NotFound(String),
    /// Names identify tokens in the CLI and in audit records.
    #[error("a service token named `{0}` already exists")]
    NameTaken(String),
    /// Name rules: 1-64 of letters, digits, `-`, `_`, `.`.
    #[error("`{0}` is not a valid token name (1-64 letters, digits, '-', '_', '.')")]
    BadName(String),
    /// The system random generator failed.
    #[error("no randomness available for a new secret")]
    Random,
}

/// Why a presented token was refused. Clients get the same answer for all
/// of them; the audit log gets the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token has this client id.
    UnknownId,
    /// The secret does not match.
    WrongSecret,
    /// The token is past its expiry.
    Expired,
    /// The token was revoked.
    Revoked,
}

/// A token as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// Public identifier, sent as `CF-Access-Client-Id`.
    pub client_id: String,
    /// Human name, unique in the store.
    pub name: String,
    /// Accepted secrets (the newest first), by hash.
    pub secrets: Vec<StoredSecret>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Revocation time, Unix seconds.
    pub revoked_at: Option<u64>,
    /// Last successful use, Unix seconds (updated by the gateway).
    #[serde(default)]
    pub last_used_at: Option<u64>,
}

/// One accepted secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    /// After a rotation, the old secret stays valid until this time.
    pub valid_until: Option<u64>,
}

/// A newly created or rotated token: the only time its secret is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// `CF-Access-Client-Id`.
    pub client_id: String,
    /// `CF-Access-Client-Secret`.
    pub client_secret: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    tokens: Vec<StoredToken>,
}

/// The token store, loaded from and saved to one file.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    tokens: Vec<StoredToken>,
}

impl TokenStore {
    /// Loads the store at `path`; a missing file is an empty store.
    pub fn open(path: &Path) -> Result<Self, TokenError> {
        let tokens = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<StoreFile>(&bytes)
                    .map_err(|source| TokenError::Damaged {
                        path: path.to_owned(),
                        source,
                    })?
                    .tokens
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(TokenError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            tokens,
        })
    }

    /// Every token, revoked and expired ones included.
    pub fn tokens(&self) -> &[StoredToken] {
        &self.tokens
    }

    /// Creates a token valid for `lifetime` from `now` (Unix seconds).
    pub fn create(
        &mut self,
        name: &str,
        lifetime: Duration,
        now: u64,
    ) -> Result<IssuedToken, TokenError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(TokenError::BadName(name.into()));
        }
        if self
            .tokens
            .iter()
            .any(|t| t.name == name && t.revoked_at.is_none())
        {
            return Err(TokenError::NameTaken(name.into()));
        }
        let client_id = format!("{}{CLIENT_ID_SUFFIX}", hex(&random::<16>()?));
        let secret = new_secret()?;
        let expires_at = now.saturating_add(lifetime.as_secs());
        self.tokens.push(StoredToken {
            client_id: client_id.clone(),
            name: name.into(),
            secrets: vec![StoredSecret {
                sha256: sha256_hex(&secret),
                valid_until: None,
            }],
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        });
        Ok(IssuedToken {
            client_id,
            client_secret: secret,
            expires_at,
        })
    }

    /// Issues a new secret; the current ones stay valid for `grace` (zero:
    /// they stop working at once). Expired grace secrets are dropped.
    pub fn rotate(
        &mut self,
        name_or_id: &str,
        grace: Duration,
        now: u64,
    ) -> Result<IssuedToken, TokenError> {
        let token = self.find_mut(name_or_id)?;
        let secret = new_secret()?;
        let until = now.saturating_add(grace.as_secs());
        for old in &mut token.secrets {
            old.valid_until = Some(old.valid_until.map_or(until, |u| u.min(until)));
        }
        token
            .secrets
            .retain(|s| s.valid_until.is_none_or(|u| u > now));
        token.secrets.insert(
            0,
            StoredSecret {
                sha256: sha256_hex(&secret),
                valid_until: None,
            },
        );
        Ok(IssuedToken {
            client_id: token.client_id.clone(),
            client_secret: secret,
            expires_at: token.expires_at,
        })
    }

    /// Revokes a token at `now`.
    pub fn revoke(&mut self, name_or_id: &str, now: u64) -> Result<(), TokenError> {
        let token = self.find_mut(name_or_id)?;
        token.revoked_at.get_or_insert(now);
        Ok(())
    }

    fn find_mut(&mut self, name_or_id: &str) -> Result<&mut StoredToken, TokenError> {
        self.tokens
            .iter_mut()
            .find(|t| (t.name == name_or_id || t.client_id == name_or_id) && t.revoked_at.is_none())
            .ok_or_else(|| TokenError::NotFound(name_or_id.into()))
    }

    /// Checks a presented id and secret at `now`.
    pub fn verify(&self, client_id: &str, secret: &str, now: u64) -> Result<&StoredToken, Refusal> {
        let presented = digest::digest(&digest::SHA256, secret.as_bytes());
        let Some(token) = self.tokens.iter().find(|t| t.client_id == client_id) else {
            // Same work as a real comparison, so timing does not tell.
            let _ = presented.as_ref().ct_eq(&[0u8; 32]);
            return Err(Refusal::UnknownId);
        };
        let mut matched = false;
        for stored in &token.secrets {
            let Some(expected) = unhex(&stored.sha256) else {
                continue;
            };
            let equal: bool = presented.as_ref().ct_eq(&expected).into();
            if equal && stored.valid_until.is_none_or(|u| now < u) {
                matched = true;
            }
        }
        if !matched {
            return Err(Refusal::WrongSecret);
        }
        if token.revoked_at.is_some() {
            return Err(Refusal::Revoked);
        }
        if now >= token.expires_at {
            return Err(Refusal::Expired);
        }
        Ok(token)
    }

    /// Whether the token `client_id` is still usable at `now` (neither
    /// revoked nor expired): a session made from it ends when it does.
    pub fn still_valid(&self, client_id: &str, now: u64) -> Result<&StoredToken, Refusal> {
        let token = self
            .tokens
            .iter()
            .find(|t| t.client_id == client_id)
            .ok_or(Refusal::UnknownId)?;
        if token.revoked_at.is_some() {
            return Err(Refusal::Revoked);
        }
        if now >= token.expires_at {
            return Err(Refusal::Expired);
        }
        Ok(token)
    }

    /// Writes the store: temporary file, fsync, rename, fsync of the
    /// directory. Mode 0600: hashes are not secrets, but token names and ids
    /// are nobody else's business.
    pub fn save(&self) -> Result<(), TokenError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| TokenError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&StoreFile {
            version: 1,
            tokens: self.tokens.clone(),
        })
        .expect("token store serializes");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(&body).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }
}

fn random<const N: usize>() -> Result<[u8; N], TokenError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokenError::Random)?;
    Ok(bytes)
}

fn new_secret() -> Result<String, TokenError> {
    Ok(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<36>()?)
    ))
}

fn sha256_hex(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn store() -> (tempfile::TempDir, TokenStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(&dir.path().join("tokens.json")).unwrap();
        (dir, store)
    }

    #[test]
    fn created_tokens_verify_and_keep_only_hashes() {
        let (dir, mut store) = store();
        let issued = store.create("ci", DEFAULT_LIFETIME, NOW).unwrap();
        assert!(issued.client_id.ends_with(CLIENT_ID_SUFFIX));
        assert!(issued.client_secret.starts_with(SECRET_PREFIX));
        assert_eq!(issued.expires_at, NOW + 365 * 86400);
        store.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(
            !text.contains(&issued.client_secret),
            "the secret is never stored"
        );
        let reopened = TokenStore::open(&dir.path().join("tokens.json")).unwrap();
        let token = reopened
            .verify(&issued.client_id, &issued.client_secret, NOW + 1)
            .unwrap();
        assert_eq!(token.name, "ci");
    }

    #[test]
    fn refusals_carry_their_reason() {
        let (_dir, mut store) = store();
        let issued = store.create("ci", Duration::from_secs(60), NOW).unwrap();
        let id = issued.client_id.as_str();
        let secret = issued.client_secret.as_str();
        assert_eq!(
            store.verify("nope.access", secret, NOW).unwrap_err(),
            Refusal::UnknownId
        );
        assert_eq!(
            store.verify(id, "gwsec_wrong", NOW).unwrap_err(),
            Refusal::WrongSecret
        );
        assert_eq!(
            store.verify(id, secret, NOW + 60).unwrap_err(),
            Refusal::Expired
        );
        store.revoke("ci", NOW + 1).unwrap();
        assert_eq!(
            store.verify(id, secret, NOW + 2).unwrap_err(),
            Refusal::Revoked
        );
        // A wrong secret on a revoked token says "wrong secret", not "revoked":
        // nothing is revealed about a token without its secret.
        assert_eq!(
            store.verify(id, "x", NOW + 2).unwrap_err(),
            Refusal::WrongSecret
        );
    }

    #[test]
    fn rotation_keeps_the_old_secret_for_the_grace_period() {
        let (_dir, mut store) = store();
        let first = store.create("ci", DEFAULT_LIFETIME, NOW).unwrap();
        let second = store.rotate("ci", Duration::from_secs(3600), NOW).unwrap();
        assert_eq!(first.client_id, second.client_id);
        assert_ne!(first.client_secret, second.client_secret);
        assert!(
            store
                .verify(&first.client_id, &first.client_secret, NOW + 3599)
                .is_ok()
        );
        assert_eq!(
            store
                .verify(&first.client_id, &first.client_secret, NOW + 3600)
                .unwrap_err(),
            Refusal::WrongSecret
        );
        assert!(
            store
                .verify(&second.client_id, &second.client_secret, NOW + 3600)
                .is_ok()
        );
        // Rotating again without grace retires every older secret at once.
        let third = store
            .rotate(&first.client_id, Duration::ZERO, NOW + 10)
            .unwrap();
        assert!(
            store
                .verify(&first.client_id, &second.client_secret, NOW + 10)
                .is_err()
        );
        assert!(
            store
                .verify(&first.client_id, &third.client_secret, NOW + 10)
                .is_ok()
        );
        assert_eq!(
            store.tokens()[0].secrets.len(),
            1,
            "retired secrets are dropped"
        );
    }

    #[test]
    fn names_are_validated_and_unique_among_live_tokens() {
        let (_dir, mut store) = store();
        store.create("ci", DEFAULT_LIFETIME, NOW).unwrap();
        assert!(matches!(
            store.create("ci", DEFAULT_LIFETIME, NOW),
            Err(TokenError::NameTaken(_))
        ));
        for bad in ["", "has space", "slash/", &"x".repeat(65)] {
            assert!(
                matches!(
                    store.create(bad, DEFAULT_LIFETIME, NOW),
                    Err(TokenError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        store.revoke("ci", NOW).unwrap();
        assert!(
            store.create("ci", DEFAULT_LIFETIME, NOW).is_ok(),
            "a revoked name can be reused"
        );
        assert!(matches!(
            store.revoke("nobody", NOW),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn a_damaged_store_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, "{ not json").unwrap();
        assert!(matches!(
            TokenStore::open(&path),
            Err(TokenError::Damaged { .. })
        ));
    }
}
