//! What a sign-in keeps between the redirect to the provider and the
//! callback, and the checks that need no network.
//!
//! - [`LoginState`]: `state`, `nonce` and the PKCE verifier, with the app,
//!   the provider, the host and where to return. It travels sealed
//!   (AES-256-GCM, a key made at start-up) in a short-lived, HttpOnly cookie
//!   scoped to `/cdn-cgi/access/`: the callback is accepted only from the
//!   browser that started the sign-in, with the `state` the provider returns
//!   equal to the sealed one, within [`LOGIN_TTL_SECS`]. Nothing is stored
//!   on the server, so a flood of sign-in starts costs no memory.
//! - [`safe_return_path`]: where a browser may be sent after signing in: a
//!   path on the same host, never another origin (`//evil`, `/\evil`,
//!   encoded slashes or controls, schemes and userinfo are all refused).

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest,
    rand::{SecureRandom as _, SystemRandom},
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The cookie carrying the sealed [`LoginState`].
pub const LOGIN_COOKIE: &str = "CF_Access_Login";
/// How long a browser has to come back from the provider.
pub const LOGIN_TTL_SECS: u64 = 600;
/// The longest return path kept (longer ones return to the app's root).
const MAX_RETURN_PATH: usize = 4096;

/// Why a login cookie was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginStateError {
    /// Not sealed by this gateway process, or altered.
    #[error("the sign-in state is not ours or was altered")]
    Unreadable,
    /// Older than [`LOGIN_TTL_SECS`].
    #[error("the sign-in took too long")]
    Expired,
}

/// One sign-in in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// Sent to the provider and returned by it.
    pub state: String,
    /// Must come back inside the ID token.
    pub nonce: String,
    /// PKCE code verifier; its S256 challenge goes to the provider.
    pub verifier: String,
    /// The app signed in to.
    pub app: String,
    /// The provider chosen.
    pub provider: String,
    /// The `Host` the browser used (with any port): the callback URL is
    /// built from it, and must be the same at both ends.
    pub host: String,
    /// Where the browser goes afterwards (checked by [`safe_return_path`]).
    pub return_to: String,
    /// Unix seconds after which the callback is refused.
    pub expires: u64,
}

impl LoginState {
    /// A fresh sign-in with random `state`, `nonce` and verifier.
    pub fn new(app: &str, provider: &str, host: &str, return_to: &str, now: u64) -> Self {
        Self {
            state: crate::random_token(32),
            nonce: crate::random_token(32),
            verifier: crate::random_token(32),
            app: app.to_owned(),
            provider: provider.to_owned(),
            host: host.to_owned(),
            return_to: return_to.to_owned(),
            expires: now + LOGIN_TTL_SECS,
        }
    }

    /// The PKCE S256 challenge of the verifier.
    pub fn challenge(&self) -> String {
        let hash = digest::digest(&digest::SHA256, self.verifier.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.as_ref())
    }
}

/// Seals and opens login states with a key that never leaves the process.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Default for Sealer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sealer {
    /// A sealer with a new random key.
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let mut key = [0u8; 32];
        rng.fill(&mut key)
            .expect("the system random generator failed");
        let key = UnboundKey::new(&AES_256_GCM, &key).expect("a 256-bit AES key");
        Self {
            key: LessSafeKey::new(key),
            rng,
        }
    }

    /// The cookie value: base64url of nonce, ciphertext and tag.
    pub fn seal(&self, state: &LoginState) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system random generator failed");
        let mut data = serde_json::to_vec(state).expect("a login state serializes");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(LOGIN_COOKIE.as_bytes()),
                &mut data,
            )
            .expect("sealing a small buffer");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// The state in a cookie value, if this process sealed it, unaltered,
    /// and it has not expired.
    pub fn open(&self, text: &str, now: u64) -> Result<LoginState, LoginStateError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| LoginStateError::Unreadable)?;
        if bytes.len() <= NONCE_LEN {
            return Err(LoginStateError::Unreadable);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| LoginStateError::Unreadable)?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(LOGIN_COOKIE.as_bytes()), &mut sealed)
            .map_err(|_| LoginStateError::Unreadable)?;
        let state: LoginState =
            serde_json::from_slice(plain).map_err(|_| LoginStateError::Unreadable)?;
        if now >= state.expires {
            return Err(LoginStateError::Expired);
        }
        Ok(state)
    }
}

/// `raw` if it is a path on this host to return to after signing in: it
/// starts with exactly one `/`, its path is already normalized (no dot
/// segments, doubled or backward slashes, encoded slashes, controls or
/// spaces, raw or encoded), and its query is visible ASCII. Anything else
/// could leave the origin in some browser, and is refused.
pub fn safe_return_path(raw: &str) -> Option<&str> {
    if raw.len() > MAX_RETURN_PATH || !raw.starts_with('/') || raw[1..].starts_with(['/', '\\']) {
        return None;
    }
    let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
    if !query.bytes().all(|b| b.is_ascii_graphic()) || path.contains('#') || query.contains('#') {
        return None;
    }
    match crate::proxy::request::normalize_path(path) {
        Ok(normalized) if normalized == path => Some(raw),
        _ => None,
    }
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_never_leave_the_origin() {
        for ok in [
            "/",
            "/wiki/page",
            "/wiki/page?x=1&y=%2F",
            "/a/b/",
            "/search?q=a:b@c",
        ] {
            assert_eq!(safe_return_path(ok), Some(ok), "{ok}");
        }
        // reliability.md REDIR-01, and the encoded and dotted forms.
        for bad in [
            "",
            "//evil.com",
            "/\\evil.com",
            "\\/evil.com",
            "/%09/evil.com",
            "/%2F%2Fevil.com",
            "/%2f%2fevil.com",
            "/%5Cevil.com",
            "https:evil.com",
            "https://evil.com",
            "javascript:alert(1)",
            "https://ours@evil.com",
            "//ours.example.com@evil.com",
            "/./evil",
            "/a/../../evil",
            "/a//b",
            "/a b",
            "/a\tb",
            "/a\r\nLocation: https://evil.com",
            "/a?x=\r\n",
            "/a#frag",
            "/\u{FF0F}evil.com",
            "evil.com",
        ] {
            assert_eq!(safe_return_path(bad), None, "{bad:?}");
        }
        assert_eq!(safe_return_path(&format!("/{}", "a".repeat(5000))), None);
    }

    #[test]
    fn sealed_states_open_only_unaltered_in_time_and_in_the_same_process() {
        let sealer = Sealer::new();
        let state = LoginState::new("wiki", "corp", "wiki.example:8443", "/page", 1000);
        let sealed = sealer.seal(&state);
        assert_eq!(sealer.open(&sealed, 1000), Ok(state.clone()));
        assert_eq!(
            sealer.open(&sealed, 1000 + LOGIN_TTL_SECS),
            Err(LoginStateError::Expired)
        );
        // One flipped character anywhere, another process's key, garbage.
        let mut bytes = sealed.clone().into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            sealer.open(&altered, 1000),
            Err(LoginStateError::Unreadable)
        );
        assert_eq!(
            Sealer::new().open(&sealed, 1000),
            Err(LoginStateError::Unreadable)
        );
        for junk in ["", "x", "AAAA", &"A".repeat(200)] {
            assert_eq!(sealer.open(junk, 1000), Err(LoginStateError::Unreadable));
        }
        // Each seal is different (fresh nonce), states are random.
        assert_ne!(sealer.seal(&state), sealed);
        let other = LoginState::new("wiki", "corp", "wiki.example", "/", 0);
        assert_ne!(other.state, state.state);
        assert_ne!(other.nonce, other.state);
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636s() {
        // RFC 7636, appendix B.
        let mut state = LoginState::new("a", "p", "h", "/", 0);
        state.verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into();
        assert_eq!(
            state.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
