//! Relay-signed JWTs (Cloudflare Access compatible): the key set from a
//! certs document, and the validation of a token against it.
//!
//! Rules, each one a known way tokens get forged:
//! - the key is chosen by `kid` only from keys we fetched ourselves; `jku`,
//!   `x5u`, `jwk` and `x5c` headers are refused, never followed;
//! - every key has one algorithm, pinned when the key set is loaded (from the
//!   JWK's `alg`, or its type: RSA → RS256, P-256 → ES256, Ed25519 → EdDSA);
//!   a token whose header names another algorithm is refused, so `none`,
//!   HMAC-with-the-public-key and RSA/EC confusion cannot happen; symmetric
//!   (`oct`) keys are never loaded;
//! - `iss` must equal the team issuer exactly, `aud` must contain the app's
//!   AUD tag, `exp`, `nbf` and `iat` must be present and numeric, with an
//!   explicit small leeway; `type` must be the expected token type.
//!
//! The certs document is Cloudflare's `/cdn-cgi/access/certs` shape: `keys`
//! holds JWKs (used here); `public_cert` / `public_certs` hold the same keys
//! as PEM certificates and are not needed. [`certs`] fetches and refreshes it;
//! [`verified`] remembers tokens already checked; [`crypto`] keeps the keys
//! parsed for the signature checks.

pub mod certs;
pub mod crypto;
pub mod verified;

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
};

use analytics::Label;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm},
};
use serde::{Deserialize, de::IgnoredAny};

/// Why a key set or a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The certs document is not JSON of the expected shape.
    #[error("certs document is not a JWK set")]
    CertsFormat(#[source] serde_json::Error),
    /// The certs document holds no usable key.
    #[error("certs document holds no usable signing key")]
    NoKeys,
    /// The token is not a JWT.
    #[error("malformed token")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    /// A header that would make us fetch or trust a key from the token.
    #[error("token header carries `{0}`, which is never trusted")]
    ForbiddenHeader(&'static str),
    /// No `kid` in the header.
    #[error("token header has no kid")]
    NoKid,
    /// The `kid` is not in the key set (a refresh may find it).
    #[error("unknown key id `{0}`")]
    UnknownKid(String),
    /// The header's algorithm is not the key's.
    #[error("token algorithm {token:?} does not match the key's {key:?}")]
    AlgorithmMismatch {
        /// In the token header.
        token: Algorithm,
        /// Pinned for the key.
        key: Algorithm,
    },
    /// Signature, expiry, not-before, issuer, audience or claim types.
    #[error("token rejected")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    /// The `type` claim is not the expected one.
    #[error("token type `{found}`, expected `{expected}`")]
    WrongType {
        /// Found.
        found: String,
        /// Expected.
        expected: String,
    },
}

/// Keys by id, each with its pinned algorithm.
#[derive(Clone)]
pub struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.keys.iter().map(|(k, (a, _))| (k, a)).collect();
        ids.sort_by(|a, b| a.0.cmp(b.0));
        f.debug_struct("KeySet").field("keys", &ids).finish()
    }
}

#[derive(Deserialize)]
struct Certs {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Loads the JWKs of a certs document. Keys that cannot be used safely
    /// (symmetric, no `kid`, unsupported type or algorithm) are skipped; a
    /// document with no usable key is an error.
    pub fn from_certs_json(text: &str) -> Result<Self, JwtError> {
        let certs: Certs = serde_json::from_str(text).map_err(JwtError::CertsFormat)?;
        let mut keys = HashMap::new();
        for value in certs.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let Some(algorithm) = pinned_algorithm(&jwk) else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(&jwk) {
                keys.insert(kid, (algorithm, key));
            }
        }
        if keys.is_empty() {
            return Err(JwtError::NoKeys);
        }
        Ok(Self { keys })
    }

    /// The key ids, sorted.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }
}

/// The one algorithm a key may verify.
fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) if by_type == Algorithm::EdDSA => Some(Algorithm::EdDSA),
        Some(_) => None,
    }
}

/// What a valid token must say. Made once for each issuer and audience,
/// not for each token: it holds jsonwebtoken's rules already built.
#[derive(Clone, Debug)]
pub struct Expectations {
    token_type: String,
    rules: Rules,
}

impl Expectations {
    /// `iss` must be `issuer` exactly (e.g.
    /// `https://team.cloudflareaccess.com`), `aud` must contain `audience`
    /// (the app's AUD tag), the `type` claim must be `token_type` (`app` for
    /// Cloudflare application tokens); `exp`, `nbf` and `iat` are checked
    /// with `leeway_secs` of clock skew.
    pub fn new(issuer: &str, audience: &str, token_type: &str, leeway_secs: u64) -> Self {
        Self {
            token_type: token_type.to_owned(),
            rules: Rules::new(
                issuer,
                audience,
                leeway_secs,
                &["exp", "nbf", "iat", "iss", "aud"],
            ),
        }
    }
}

/// jsonwebtoken's validation for one issuer and audience, one for each
/// algorithm a key can be pinned to (a `Validation` names the algorithms
/// it accepts).
#[derive(Clone, Debug)]
struct Rules {
    /// In the order of [`PINNABLE`]; all alike but for the algorithm.
    validations: [Validation; 3],
}

/// The algorithms [`pinned_algorithm`] pins keys to.
const PINNABLE: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

impl Rules {
    fn new(issuer: &str, audience: &str, leeway_secs: u64, required: &[&str]) -> Self {
        let validations = PINNABLE.map(|algorithm| {
            let mut validation = Validation::new(algorithm);
            validation.set_issuer(&[issuer]);
            validation.set_audience(&[audience]);
            validation.set_required_spec_claims(required);
            validation.validate_nbf = true;
            validation.leeway = leeway_secs;
            validation
        });
        Self { validations }
    }

    /// The clock skew allowed, the same in every validation.
    fn leeway_secs(&self) -> u64 {
        self.validations[0].leeway
    }

    fn validation(&self, algorithm: Algorithm) -> Option<&Validation> {
        let at = PINNABLE.iter().position(|a| *a == algorithm)?;
        Some(&self.validations[at])
    }
}

/// The claims policies and audit records use.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Claims {
    /// Issuer (a [`label`](analytics::label) once verified).
    pub iss: Label,
    /// Subject (empty for service-token sessions).
    #[serde(default)]
    pub sub: String,
    /// Email, when the identity provider verified one.
    pub email: Option<String>,
    /// Expiry.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before (required in relay and session tokens, optional in ID
    /// tokens).
    #[serde(default)]
    pub nbf: u64,
    /// `app` or `org`.
    #[serde(rename = "type")]
    pub token_type: Option<String>,
    /// Where the user authenticated (ISO country code).
    pub country: Option<Label>,
    /// Service-token sessions: the client id (a label once verified).
    pub common_name: Option<Label>,
    /// The `kid` of the key that verified the token (from its header; a
    /// label).
    #[serde(skip)]
    pub key_id: Label,
    /// Every other claim, for claim selectors.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Validates `token` against `keys` and `expect`.
pub fn verify(token: &str, keys: &KeySet, expect: &Expectations) -> Result<Claims, JwtError> {
    let claims = check(token, keys, &expect.rules)?;
    let found = claims.token_type.clone().unwrap_or_default();
    if found != expect.token_type {
        return Err(JwtError::WrongType {
            found,
            expected: expect.token_type.clone(),
        });
    }
    Ok(claims)
}

/// Validates an OpenID Connect ID token: the same header, key and
/// algorithm rules, issuer exact, `client_id` in `aud`, `exp` and `iat`
/// required (`nbf` checked when present), a non-empty `sub`. The caller
/// checks `nonce` and `azp`, which depend on the sign-in.
pub fn verify_id_token(
    token: &str,
    keys: &KeySet,
    issuer: &str,
    client_id: &str,
    leeway_secs: u64,
) -> Result<Claims, JwtError> {
    let rules = Rules::new(
        issuer,
        client_id,
        leeway_secs,
        &["exp", "iat", "iss", "aud", "sub"],
    );
    let claims = check(token, keys, &rules)?;
    if claims.sub.is_empty() {
        return Err(JwtError::Invalid(
            ErrorKind::MissingRequiredClaim("sub".into()).into(),
        ));
    }
    Ok(claims)
}

/// What of a token's header chooses its key, and the members that would
/// make us fetch or trust a key from the token. Read before the key is
/// known, borrowing from the decoded header; jsonwebtoken reads the whole
/// header again as it verifies.
#[derive(Deserialize)]
struct KeyChoice<'a> {
    alg: Algorithm,
    #[serde(borrow)]
    kid: Option<Cow<'a, str>>,
    jku: Option<IgnoredAny>,
    x5u: Option<IgnoredAny>,
    jwk: Option<IgnoredAny>,
    x5c: Option<IgnoredAny>,
}

/// The decoded header of `token` (the part before its last two dots, as
/// jsonwebtoken splits it).
fn decoded_header(token: &str) -> Result<Vec<u8>, JwtError> {
    let malformed = |kind: ErrorKind| JwtError::Malformed(kind.into());
    let header = token
        .rsplit_once('.')
        .and_then(|(message, _)| message.rsplit_once('.'))
        .map(|(header, _)| header)
        .ok_or_else(|| malformed(ErrorKind::InvalidToken))?;
    URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|e| malformed(ErrorKind::Base64(e)))
}

/// Header, key, algorithm, signature, issuer, audience and times.
fn check(token: &str, keys: &KeySet, rules: &Rules) -> Result<Claims, JwtError> {
    let decoded = decoded_header(token)?;
    let header: KeyChoice = serde_json::from_slice(&decoded)
        .map_err(|e| JwtError::Malformed(ErrorKind::Json(e.into()).into()))?;
    if header.jku.is_some() {
        return Err(JwtError::ForbiddenHeader("jku"));
    }
    if header.x5u.is_some() {
        return Err(JwtError::ForbiddenHeader("x5u"));
    }
    if header.jwk.is_some() {
        return Err(JwtError::ForbiddenHeader("jwk"));
    }
    if header.x5c.is_some() {
        return Err(JwtError::ForbiddenHeader("x5c"));
    }
    let kid = header.kid.ok_or(JwtError::NoKid)?;
    let (algorithm, key) = keys
        .keys
        .get(&*kid)
        .ok_or_else(|| JwtError::UnknownKid(kid.clone().into_owned()))?;
    if header.alg != *algorithm {
        return Err(JwtError::AlgorithmMismatch {
            token: header.alg,
            key: *algorithm,
        });
    }
    // Keys are only pinned to algorithms the rules cover.
    let validation = rules
        .validation(*algorithm)
        .ok_or_else(|| JwtError::Invalid(ErrorKind::InvalidAlgorithm.into()))?;
    let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(JwtError::Invalid)?;
    let mut claims = data.claims;
    // `iat` in the future (beyond the leeway) is a forged or broken token.
    if claims.iat > crate::unix_now() + rules.leeway_secs() {
        return Err(JwtError::Invalid(ErrorKind::ImmatureSignature.into()));
    }
    // Verified: the issuer is the expected one and the key one of the
    // set's, so each is kept once for the process and every audit event of
    // the session carries it without a copy.
    claims.iss = analytics::label(&claims.iss);
    claims.key_id = analytics::label(&kid);
    claims.common_name = claims.common_name.as_deref().map(analytics::label);
    claims.country = claims.country.as_deref().map(analytics::country_label);
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;
    use crate::unix_now as now;

    const ISS: &str = "https://team.cloudflareaccess.example";
    const AUD: &str = "aud-tag-1";

    pub(super) fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A key of each algorithm the gateway pins, for the tests of this
    /// module and of [`super::crypto`].
    pub(super) struct Signer {
        kid: &'static str,
        pub(super) alg: Algorithm,
        pub(super) key: EncodingKey,
        pub(super) jwk: serde_json::Value,
    }

    pub(super) fn rsa() -> Signer {
        // A throwaway 2048-bit key made for these tests (PKCS#1 DER) and its
        // modulus, base64url.
        let der = include_bytes!("../../testdata/rsa-test-key.der");
        let n = include_str!("../../testdata/rsa-test-key.n").trim();
        Signer {
            kid: "rsa-1",
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_der(der),
            jwk: json!({"kid": "rsa-1", "kty": "RSA", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"}),
        }
    }

    pub(super) fn ec() -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = pair.public_key_raw();
        Signer {
            kid: "ec-1",
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kid": "ec-1", "kty": "EC", "crv": "P-256", "x": b64(&public[1..33]), "y": b64(&public[33..65])}),
        }
    }

    pub(super) fn ed() -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Signer {
            kid: "ed-1",
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({"kid": "ed-1", "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key_raw())}),
        }
    }

    fn claims() -> serde_json::Value {
        let now = now();
        json!({"iss": ISS, "aud": [AUD], "sub": "u-1", "email": "alice@corp.example",
               "iat": now, "nbf": now, "exp": now + 300, "type": "app", "country": "PT",
               "groups": ["engineering"]})
    }

    fn sign(signer: &Signer, claims: &serde_json::Value) -> String {
        let mut header = Header::new(signer.alg);
        header.kid = Some(signer.kid.into());
        encode(&header, claims, &signer.key).unwrap()
    }

    fn expect() -> Expectations {
        Expectations::new(ISS, AUD, "app", 30)
    }

    fn key_set(signers: &[&Signer]) -> KeySet {
        let keys: Vec<_> = signers.iter().map(|s| s.jwk.clone()).collect();
        KeySet::from_certs_json(&json!({"keys": keys, "public_cert": {"kid": "x", "cert": "-----BEGIN CERTIFICATE-----"}}).to_string()).unwrap()
    }

    #[test]
    fn valid_tokens_of_each_algorithm_verify() {
        let (r, e, d) = (rsa(), ec(), ed());
        let keys = key_set(&[&r, &e, &d]);
        assert_eq!(keys.ids(), vec!["ec-1", "ed-1", "rsa-1"]);
        for signer in [&r, &e, &d] {
            let c = verify(&sign(signer, &claims()), &keys, &expect()).unwrap();
            assert_eq!(c.email.as_deref(), Some("alice@corp.example"));
            assert_eq!(c.other.get("groups"), Some(&json!(["engineering"])));
        }
    }

    #[test]
    fn forged_and_invalid_tokens_are_refused() {
        let (r, e) = (rsa(), ec());
        let keys = key_set(&[&r, &e]);
        let good = sign(&r, &claims());
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims();
            f(&mut c);
            sign(&r, &c)
        };
        let now = now();
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "wrong issuer",
                with(&|c| c["iss"] = json!("https://evil.example")),
                "rejected",
            ),
            (
                "issuer prefix",
                with(&|c| c["iss"] = json!(format!("{ISS}.evil"))),
                "rejected",
            ),
            (
                "other audience",
                with(&|c| c["aud"] = json!(["aud-tag-2"])),
                "rejected",
            ),
            (
                "expired",
                with(&|c| c["exp"] = json!(now - 120)),
                "rejected",
            ),
            (
                "not yet valid",
                with(&|c| c["nbf"] = json!(now + 120)),
                "rejected",
            ),
            (
                "issued in the future",
                with(&|c| c["iat"] = json!(now + 600)),
                "rejected",
            ),
            (
                "no exp",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                "rejected",
            ),
            (
                "no nbf",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("nbf");
                }),
                "rejected",
            ),
            (
                "no iat",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("iat");
                }),
                "rejected",
            ),
            (
                "exp as a string",
                with(&|c| c["exp"] = json!((now + 300).to_string())),
                "rejected",
            ),
            ("org token", with(&|c| c["type"] = json!("org")), "type"),
            (
                "tampered payload",
                {
                    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
                    let mut c = claims();
                    c["email"] = json!("mallory@corp.example");
                    parts[1] = b64(c.to_string().as_bytes());
                    parts.join(".")
                },
                "rejected",
            ),
            (
                "alg none",
                {
                    let header = b64(json!({"alg": "none", "kid": "rsa-1"})
                        .to_string()
                        .as_bytes());
                    format!("{header}.{}.", b64(claims().to_string().as_bytes()))
                },
                "malformed",
            ),
            (
                "HS256 with the public key",
                {
                    let header = Header {
                        kid: Some("rsa-1".into()),
                        ..Header::new(Algorithm::HS256)
                    };
                    encode(
                        &header,
                        &claims(),
                        &EncodingKey::from_secret(r.jwk["n"].as_str().unwrap().as_bytes()),
                    )
                    .unwrap()
                },
                "does not match",
            ),
            (
                "RS256 header on the EC key",
                {
                    let header = Header {
                        kid: Some("ec-1".into()),
                        ..Header::new(Algorithm::RS256)
                    };
                    encode(&header, &claims(), &r.key).unwrap()
                },
                "does not match",
            ),
            (
                "unknown kid",
                {
                    let header = Header {
                        kid: Some("rsa-9".into()),
                        ..Header::new(Algorithm::RS256)
                    };
                    encode(&header, &claims(), &r.key).unwrap()
                },
                "unknown key id",
            ),
            (
                "no kid",
                encode(&Header::new(Algorithm::RS256), &claims(), &r.key).unwrap(),
                "no kid",
            ),
            (
                "jku header",
                {
                    let header = Header {
                        kid: Some("rsa-1".into()),
                        jku: Some("https://evil.example/jwks".into()),
                        ..Header::new(Algorithm::RS256)
                    };
                    encode(&header, &claims(), &r.key).unwrap()
                },
                "jku",
            ),
            (
                "x5u header",
                {
                    let header = Header {
                        kid: Some("rsa-1".into()),
                        x5u: Some("https://evil.example/cert".into()),
                        ..Header::new(Algorithm::RS256)
                    };
                    encode(&header, &claims(), &r.key).unwrap()
                },
                "x5u",
            ),
            (
                "jwk header",
                {
                    let header = Header {
                        kid: Some("rsa-1".into()),
                        jwk: Some(serde_json::from_value(r.jwk.clone()).unwrap()),
                        ..Header::new(Algorithm::RS256)
                    };
                    encode(&header, &claims(), &r.key).unwrap()
                },
                "jwk",
            ),
            (
                "x5c header",
                {
                    let header = Header {
                        kid: Some("rsa-1".into()),
                        x5c: Some(vec!["MIIB".into()]),
                        ..Header::new(Algorithm::RS256)
                    };
                    encode(&header, &claims(), &r.key).unwrap()
                },
                "x5c",
            ),
            ("garbage", "not.a.jwt".into(), "malformed"),
            ("no dots", "notajwt".into(), "malformed"),
        ];
        for (name, token, needle) in cases {
            let error = verify(&token, &keys, &expect()).unwrap_err();
            let message = crate::error_chain(&error);
            assert!(message.contains(needle), "{name}: {message}");
        }
        assert!(
            verify(&good, &keys, &expect()).is_ok(),
            "the untouched token still verifies"
        );
        // A `kid` written with a JSON escape names the same key.
        let escaped = format!(
            "{}.{}",
            b64(r#"{"alg":"RS256","kid":"rsa\u002d1"}"#.as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        let signature = jsonwebtoken::crypto::sign(escaped.as_bytes(), &r.key, r.alg).unwrap();
        assert!(verify(&format!("{escaped}.{signature}"), &keys, &expect()).is_ok());
    }

    #[test]
    fn leeway_is_explicit() {
        let r = rsa();
        let keys = key_set(&[&r]);
        let mut c = claims();
        c["exp"] = json!(now() - 10);
        let token = sign(&r, &c);
        assert!(
            verify(&token, &keys, &expect()).is_ok(),
            "10 s late is inside 30 s of leeway"
        );
        let strict = Expectations::new(ISS, AUD, "app", 0);
        assert!(verify(&token, &keys, &strict).is_err());
    }

    #[test]
    fn unusable_keys_are_skipped_and_an_empty_set_is_an_error() {
        let only_bad = json!({"keys": [
            {"kid": "h", "kty": "oct", "k": "c2VjcmV0"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kid": "mismatch", "kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB"}
        ]});
        assert!(matches!(
            KeySet::from_certs_json(&only_bad.to_string()),
            Err(JwtError::NoKeys)
        ));
        assert!(matches!(
            KeySet::from_certs_json("<html>"),
            Err(JwtError::CertsFormat(_))
        ));
    }
}
