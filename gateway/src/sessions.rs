//! The gateway's own signed tokens: a valid service token is exchanged for a
//! short-lived JWT (ES256) that the client reuses as its `CF_Authorization`
//! cookie and that upstream applications receive in the assertion header.
//!
//! The public keys are published at `/cdn-cgi/access/certs` in the same
//! shape as Cloudflare's certs document, so upstreams, and other gateways
//! whose `[relay]` points here, verify these tokens like the relay's.
//!
//! Keys live in `key_dir` (PKCS#8, mode 0600, named `<created>-<kid>.p8`) so
//! a restart keeps sessions valid. A new key is made every `key_rotation`;
//! an old key stays published until every token it could have signed has
//! expired, then its file is removed.

use std::{
    collections::HashMap,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use aws_lc_rs::{
    digest,
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::{
    config::http::SessionsConfig,
    jwt::{Claims, Expectations, JwtError, KeySet},
};

/// Why the session keys could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The key directory or a key file.
    #[error("session key store {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file that does not hold a P-256 PKCS#8 key.
    #[error("session key {path} is not a P-256 PKCS#8 key")]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// The random generator failed.
    #[error("no randomness available for a new session key")]
    Random,
    /// Signing failed.
    #[error("cannot sign a session token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

struct Key {
    kid: String,
    created: u64,
    path: PathBuf,
    encoding: EncodingKey,
    public: Vec<u8>,
}

struct KeyRing {
    /// Newest first.
    keys: Vec<Key>,
    certs_json: String,
    key_set: KeySet,
}

/// A session already signed, handed out again while it is young.
struct Minted {
    token: String,
    exp: u64,
    kid: String,
}

/// Session issuing and verification for one gateway.
pub struct Sessions {
    config: SessionsConfig,
    ring: RwLock<Arc<KeyRing>>,
    /// By (audience, client id): a client that sends its service-token
    /// headers on every request, ignoring the cookie, gets the same session
    /// until half its lifetime is gone instead of a signature each time.
    minted: Mutex<HashMap<(String, String), Minted>>,
    /// Signed-out sessions by `jti`, with their expiry.
    revoked: RwLock<HashMap<String, u64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SessionError + '_ {
    move |source| SessionError::Io {
        path: path.to_owned(),
        source,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// Loads the keys in the key directory (creating it), making a first key
    /// or a rotated one when due.
    pub fn open(config: SessionsConfig, now: u64) -> Result<Self, SessionError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.key_dir)
            .map_err(io(&config.key_dir))?;
        let ring = build_ring(&config, load_keys(&config.key_dir)?, now)?;
        Ok(Self {
            config,
            ring: RwLock::new(Arc::new(ring)),
            minted: Mutex::new(HashMap::new()),
            revoked: RwLock::new(HashMap::new()),
        })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Makes a new key if the current one is due, and forgets keys that can
    /// no longer have signed a live token. Called periodically.
    pub fn rotate(&self, now: u64) -> Result<(), SessionError> {
        let current = self.ring.read().expect("session lock").clone();
        if !needs_change(&self.config, &current.keys, now) {
            return Ok(());
        }
        let ring = build_ring(&self.config, load_keys(&self.config.key_dir)?, now)?;
        *self.ring.write().expect("session lock") = Arc::new(ring);
        Ok(())
    }

    /// The public keys, in Cloudflare's certs-document shape.
    pub fn certs_json(&self) -> String {
        self.ring.read().expect("session lock").certs_json.clone()
    }

    /// Signs a session for service token `client_id` on an app whose tokens
    /// carry `audience` (or hands out the one signed for them recently).
    /// Returns the token and its expiry.
    pub fn issue(
        &self,
        audience: &str,
        client_id: &str,
        now: u64,
    ) -> Result<(String, u64), SessionError> {
        let ring = self.ring.read().expect("session lock").clone();
        let key = &ring.keys[0];
        let lifetime = self.config.lifetime.as_secs();
        let id = (audience.to_owned(), client_id.to_owned());
        let mut minted = self.minted.lock().expect("session lock");
        if let Some(m) = minted.get(&id)
            && m.kid == key.kid
            && m.exp > now + lifetime / 2
        {
            return Ok((m.token.clone(), m.exp));
        }
        let exp = now + lifetime;
        let claims = json!({
            "iss": self.config.issuer,
            "aud": [audience],
            "sub": "",
            "common_name": client_id,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "type": "app",
        });
        let token = sign(key, &claims)?;
        // Bounded by tokens × apps; forget what has expired now and then.
        if minted.len() >= 1024 {
            minted.retain(|_, m| m.exp > now);
        }
        minted.insert(
            id,
            Minted {
                token: token.clone(),
                exp,
                kid: key.kid.clone(),
            },
        );
        Ok((token, exp))
    }

    /// Signs a session for a person who signed in: `identity` holds `sub`,
    /// `email`, `groups` and the other mapped claims; the session fields
    /// (`iss`, `aud`, times, `type`, a fresh `jti`) are added here. Returns
    /// the token and its expiry.
    pub fn issue_user(
        &self,
        audience: &str,
        mut identity: serde_json::Map<String, serde_json::Value>,
        lifetime_secs: u64,
        now: u64,
    ) -> Result<(String, u64), SessionError> {
        let ring = self.ring.read().expect("session lock").clone();
        let exp = now + lifetime_secs;
        for (name, value) in [
            ("iss", json!(self.config.issuer)),
            ("aud", json!([audience])),
            ("iat", json!(now)),
            ("nbf", json!(now)),
            ("exp", json!(exp)),
            ("type", json!("app")),
            ("jti", json!(crate::random_token(16))),
        ] {
            identity.insert(name.to_owned(), value);
        }
        Ok((sign(&ring.keys[0], &identity)?, exp))
    }

    /// Ends a signed-in session before its expiry (sign-out): its `jti` is
    /// refused from now on. Kept in memory until `exp`, so a restart forgets
    /// it; the browser's cookie is cleared at the same time.
    pub fn revoke(&self, jti: &str, exp: u64, now: u64) {
        let mut revoked = self.revoked.write().expect("session lock");
        if revoked.len() >= 4096 {
            revoked.retain(|_, e| *e > now);
        }
        revoked.insert(jti.to_owned(), exp);
    }

    /// Whether the session with this `jti` was signed out.
    pub fn is_revoked(&self, jti: &str) -> bool {
        let revoked = self.revoked.read().expect("session lock");
        !revoked.is_empty() && revoked.contains_key(jti)
    }

    /// Verifies a token this gateway signed.
    pub fn verify(&self, token: &str, audience: &str) -> Result<Claims, JwtError> {
        let ring = self.ring.read().expect("session lock").clone();
        crate::jwt::verify(
            token,
            &ring.key_set,
            &Expectations::new(&self.config.issuer, audience, "app", 5),
        )
    }

    /// Session lifetime, for the cookie's Max-Age.
    pub fn lifetime_secs(&self) -> u64 {
        self.config.lifetime.as_secs()
    }
}

fn sign(key: &Key, claims: &impl serde::Serialize) -> Result<String, SessionError> {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).map_err(SessionError::Sign)
}

/// Whether the newest key is too old, or an old key has outlived its use.
fn needs_change(config: &SessionsConfig, keys: &[Key], now: u64) -> bool {
    let rotation = config.key_rotation.as_secs();
    let keep = rotation + config.longest_lifetime.as_secs();
    keys.first()
        .is_none_or(|newest| now >= newest.created + rotation)
        || keys.iter().skip(1).any(|k| now >= k.created + keep)
}

fn load_keys(dir: &Path) -> Result<Vec<Key>, SessionError> {
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((created, _)) = name
            .strip_suffix(".p8")
            .and_then(|stem| stem.split_once('-'))
        else {
            continue;
        };
        let Ok(created) = created.parse::<u64>() else {
            continue;
        };
        let pkcs8 = std::fs::read(&path).map_err(io(&path))?;
        keys.push(key_from_pkcs8(&pkcs8, created, path)?);
    }
    keys.sort_by_key(|k| std::cmp::Reverse(k.created));
    Ok(keys)
}

fn key_from_pkcs8(pkcs8: &[u8], created: u64, path: PathBuf) -> Result<Key, SessionError> {
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
        .map_err(|_| SessionError::BadKey { path: path.clone() })?;
    let public = pair.public_key().as_ref().to_vec();
    let hash = digest::digest(&digest::SHA256, &public);
    let kid = hash.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Key {
        kid,
        created,
        path,
        encoding: EncodingKey::from_ec_der(pkcs8),
        public,
    })
}

fn build_ring(
    config: &SessionsConfig,
    mut keys: Vec<Key>,
    now: u64,
) -> Result<KeyRing, SessionError> {
    let rotation = config.key_rotation.as_secs();
    let keep = rotation + config.longest_lifetime.as_secs();
    if keys
        .first()
        .is_none_or(|newest| now >= newest.created + rotation)
    {
        keys.insert(0, new_key(&config.key_dir, now)?);
    }
    // Keys past any token's lifetime are removed (the newest is always kept).
    let mut live = Vec::with_capacity(keys.len());
    for (i, key) in keys.into_iter().enumerate() {
        if i == 0 || now < key.created + keep {
            live.push(key);
        } else {
            std::fs::remove_file(&key.path).map_err(io(&key.path))?;
        }
    }
    let jwks: Vec<_> = live
        .iter()
        .map(|k| {
            json!({"kid": k.kid, "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                   "x": b64(&k.public[1..33]), "y": b64(&k.public[33..65])})
        })
        .collect();
    let certs_json = json!({ "keys": jwks, "public_certs": [] }).to_string();
    let key_set = KeySet::from_certs_json(&certs_json).map_err(|_| SessionError::BadKey {
        path: live[0].path.clone(),
    })?;
    Ok(KeyRing {
        keys: live,
        certs_json,
        key_set,
    })
}

fn new_key(dir: &Path, now: u64) -> Result<Key, SessionError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| SessionError::Random)?;
    let probe = key_from_pkcs8(pkcs8.as_ref(), now, dir.join("new"))?;
    let path = dir.join(format!("{now}-{}.p8", probe.kid));
    let temp = dir.join(format!(".{now}-{}.tmp", probe.kid));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io(&temp))?;
    file.write_all(pkcs8.as_ref()).map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    std::fs::rename(&temp, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(Key { path, ..probe })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(dir: &Path) -> SessionsConfig {
        SessionsConfig {
            issuer: "https://gw.example".into(),
            key_dir: dir.to_owned(),
            lifetime: Duration::from_secs(100),
            key_rotation: Duration::from_secs(1000),
            longest_lifetime: Duration::from_secs(100),
        }
    }

    #[test]
    fn tokens_verify_across_restarts_and_rotations_until_their_key_is_retired() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::unix_now();
        let sessions = Sessions::open(config(dir.path()), now).unwrap();
        let (token, exp) = sessions.issue("app-aud", "client-1", now).unwrap();
        assert_eq!(exp, now + 100);
        // The same session while it is young, a new one after half its life.
        assert_eq!(
            sessions.issue("app-aud", "client-1", now + 49).unwrap().0,
            token
        );
        assert_ne!(
            sessions.issue("app-aud", "client-1", now + 50).unwrap().0,
            token
        );
        assert_ne!(
            sessions.issue("other-aud", "client-1", now).unwrap().0,
            token
        );
        assert_ne!(sessions.issue("app-aud", "client-2", now).unwrap().0, token);
        let claims = sessions.verify(&token, "app-aud").unwrap();
        assert_eq!(claims.common_name.as_deref(), Some("client-1"));
        assert!(sessions.verify(&token, "other-aud").is_err());

        // A restart finds the same key.
        let again = Sessions::open(config(dir.path()), now).unwrap();
        assert!(again.verify(&token, "app-aud").is_ok());
        assert_eq!(again.certs_json(), sessions.certs_json());

        // Rotation: a second key, both published; the old token still verifies.
        sessions.rotate(now + 1000).unwrap();
        let certs: serde_json::Value = serde_json::from_str(&sessions.certs_json()).unwrap();
        assert_eq!(certs["keys"].as_array().unwrap().len(), 2);
        assert!(sessions.verify(&token, "app-aud").is_ok());
        let (newer, _) = sessions.issue("app-aud", "client-1", now + 1000).unwrap();
        assert_ne!(
            jsonwebtoken::decode_header(&newer).unwrap().kid,
            jsonwebtoken::decode_header(&token).unwrap().kid
        );

        // Past rotation + lifetime the old key is gone, file and all.
        sessions.rotate(now + 1100).unwrap();
        let certs: serde_json::Value = serde_json::from_str(&sessions.certs_json()).unwrap();
        assert_eq!(certs["keys"].as_array().unwrap().len(), 1);
        assert!(matches!(
            sessions.verify(&token, "app-aud"),
            Err(JwtError::UnknownKid(_))
        ));
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1);
    }
}
