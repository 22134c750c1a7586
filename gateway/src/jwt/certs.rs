//! The relay's signing keys, fetched from its certs URL and kept fresh.
//!
//! - A refresh that fails or returns no usable key keeps the last good set.
//! - Before any key set was ever loaded, every token is refused (fail closed).
//! - A token with an unknown `kid` triggers a refresh (the relay may have
//!   rotated its keys), but at most one per cooldown, however many tokens
//!   with random `kid`s arrive: a flood cannot turn into a fetch storm.

use std::{
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Mutex, time::Instant};

use super::{Claims, Expectations, JwtError, KeySet, verify};

/// Why a token could not be checked or was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// No key set has ever been loaded: nothing can be verified.
    #[error("no signing keys loaded yet from {url}")]
    NoKeys {
        /// The certs URL.
        url: String,
    },
    /// The certs document could not be fetched.
    #[error("cannot fetch {url}: {message}")]
    Fetch {
        /// The certs URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The certs document is unusable.
    #[error("bad certs document from {url}")]
    Document {
        /// The certs URL.
        url: String,
        /// Why.
        #[source]
        source: JwtError,
    },
    /// The token itself was refused.
    #[error(transparent)]
    Token(#[from] JwtError),
}

/// The key set of one issuer, refreshed from its certs URL.
#[derive(Debug)]
pub struct CertsCache {
    url: String,
    ca_file: Option<PathBuf>,
    cooldown: Duration,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// When the key set in use was fetched (Unix seconds; 0: never), for
    /// status and metrics.
    loaded_at: AtomicU64,
    /// Held while fetching; remembers when the last fetch started.
    last_fetch: Mutex<Option<Instant>>,
}

impl CertsCache {
    /// A cache for `url`; nothing is fetched until [`CertsCache::refresh`]
    /// or the first token.
    pub fn new(url: impl Into<String>, ca_file: Option<PathBuf>, cooldown: Duration) -> Self {
        Self {
            url: url.into(),
            ca_file,
            cooldown,
            keys: RwLock::new(None),
            loaded_at: AtomicU64::new(0),
            last_fetch: Mutex::new(None),
        }
    }

    /// The key set in use, if any.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().expect("certs lock").clone()
    }

    /// The certs URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// When the key set in use was fetched (Unix seconds), if ever.
    pub fn loaded_at(&self) -> Option<u64> {
        Some(self.loaded_at.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Fetches the certs now (the periodic refresh). A failure keeps the
    /// current keys and is returned for the log.
    pub async fn refresh(&self) -> Result<(), CertsError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch().await
    }

    /// Fetches unless one started within the cooldown. Concurrent callers
    /// wait for the fetch in progress instead of starting their own.
    async fn refresh_rate_limited(&self) -> Result<(), CertsError> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.cooldown) {
            return Ok(());
        }
        *last = Some(Instant::now());
        self.fetch().await
    }

    async fn fetch(&self) -> Result<(), CertsError> {
        let text = crate::fetch::fetch(&self.url, self.ca_file.as_deref())
            .await
            .map_err(|message| CertsError::Fetch {
                url: self.url.clone(),
                message,
            })?;
        let keys = KeySet::from_certs_json(&text).map_err(|source| CertsError::Document {
            url: self.url.clone(),
            source,
        })?;
        *self.keys.write().expect("certs lock") = Some(Arc::new(keys));
        self.loaded_at.store(crate::unix_now(), Ordering::Relaxed);
        Ok(())
    }

    /// Verifies `token`, fetching keys first if none are loaded and again
    /// (rate-limited) when the token names an unknown key.
    pub async fn verify(&self, token: &str, expect: &Expectations) -> Result<Claims, CertsError> {
        self.verify_with(|keys| verify(token, keys, expect)).await
    }

    /// [`CertsCache::verify`] with the rules of `check` (an ID token's, say).
    pub async fn verify_with(
        &self,
        check: impl Fn(&KeySet) -> Result<Claims, JwtError>,
    ) -> Result<Claims, CertsError> {
        if self.keys().is_none() {
            // Fail closed, but try to get keys first.
            let _ = self.refresh_rate_limited().await;
        }
        let keys = self.keys().ok_or_else(|| CertsError::NoKeys {
            url: self.url.clone(),
        })?;
        match check(&keys) {
            Err(JwtError::UnknownKid(_)) => {
                let _ = self.refresh_rate_limited().await;
                let keys = self.keys().ok_or_else(|| CertsError::NoKeys {
                    url: self.url.clone(),
                })?;
                Ok(check(&keys)?)
            }
            other => Ok(other?),
        }
    }
}
