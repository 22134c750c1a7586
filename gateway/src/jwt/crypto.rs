//! Signature checks with parsed keys, as jsonwebtoken's process-wide
//! crypto provider.
//!
//! jsonwebtoken's own aws-lc-rs provider parses the public key on every
//! verification: for RSA that means building the modulus's Montgomery
//! context each time, about a sixth of an RS256 check. Every token an
//! attacker sends with a known `kid` costs one check, so that time is
//! also the price of a flood of forged tokens. This provider keeps the
//! parsed keys (aws-lc-rs [`ParsedPublicKey`]) and is otherwise the same
//! one: the same aws-lc-rs algorithms (RS256 with 2048–8192-bit keys,
//! ES256 with fixed-size signatures, Ed25519), the same key-family checks,
//! and aws-lc-rs's own provider for signing and for every other algorithm.
//!
//! The provider sees only a [`DecodingKey`], so the parsed keys sit in one
//! process-wide table keyed by the key's bytes. Only keys the gateway
//! loaded itself reach it (the relay's, the OIDC provider's, its own
//! session keys: a token only chooses among them by `kid`), and the table
//! is emptied when it holds [`MAX_KEYS`], so rotations over a long uptime
//! cannot grow it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use aws_lc_rs::{
    encoding::AsDer,
    rsa::{PublicEncryptingKey, PublicKeyComponents},
    signature::{
        ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
        VerificationAlgorithm,
    },
};
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind,
    crypto::{CryptoProvider, JwtVerifier, KeyUtils, aws_lc},
    errors::{Error, ErrorKind},
    signature,
};

use aws_lc::DEFAULT_PROVIDER as AWS_LC;

/// Parsed keys kept at most (a few per issuer is the usual count).
pub const MAX_KEYS: usize = 64;

/// aws-lc-rs's provider with [`verifier`] in place of its verifier.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: AWS_LC.signer_factory,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: AWS_LC.key_utils.rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key: AWS_LC.key_utils.rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key: AWS_LC.key_utils.ec_pub_components_from_private_key,
        ed_pub_components_from_private_key: AWS_LC.key_utils.ed_pub_components_from_private_key,
        compute_digest: AWS_LC.key_utils.compute_digest,
    },
};

/// Makes this module jsonwebtoken's provider. Must run before the process
/// signs or checks any token: jsonwebtoken settles on its default at first
/// use, and this is then a no-op.
pub fn install() {
    let _ = PROVIDER.install_default();
}

static PARSED: Mutex<Option<HashMap<Vec<u8>, Arc<ParsedPublicKey>>>> = Mutex::new(None);

/// The verifier for `algorithm` with `key`: a parsed-key verifier for the
/// algorithms the gateway pins keys to, aws-lc-rs's own for the rest.
pub fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let (family, verification): (_, &'static dyn VerificationAlgorithm) = match algorithm {
        Algorithm::RS256 => (AlgorithmFamily::Rsa, &RSA_PKCS1_2048_8192_SHA256),
        Algorithm::ES256 => (AlgorithmFamily::Ec, &ECDSA_P256_SHA256_FIXED),
        Algorithm::EdDSA => (AlgorithmFamily::Ed, &ED25519),
        _ => return (AWS_LC.verifier_factory)(algorithm, key),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(ParsedVerifier {
        algorithm: *algorithm,
        key: parsed(*algorithm, verification, key)?,
    }))
}

/// The parsed form of `key`, from the table or parsed now.
fn parsed(
    algorithm: Algorithm,
    verification: &'static dyn VerificationAlgorithm,
    key: &DecodingKey,
) -> Result<Arc<ParsedPublicKey>, Error> {
    // The algorithm's name, then the key's bytes (RSA: n and e, each with
    // its length, so no two keys share an id).
    let mut id = format!("{algorithm:?}").into_bytes();
    match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => id.extend_from_slice(bytes),
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            for part in [n, e] {
                id.extend_from_slice(&(part.len() as u64).to_be_bytes());
                id.extend_from_slice(part);
            }
        }
    }
    let mut table = PARSED.lock().unwrap_or_else(PoisonError::into_inner);
    let table = table.get_or_insert_with(HashMap::new);
    if let Some(found) = table.get(&id) {
        return Ok(found.clone());
    }
    let parsed = Arc::new(
        match key.kind() {
            DecodingKeyKind::SecretOrDer(bytes) => ParsedPublicKey::new(verification, bytes),
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                let public: PublicEncryptingKey = PublicKeyComponents { n, e }
                    .try_into()
                    .map_err(|_| rsa_key_error())?;
                let der = public.as_der().map_err(|_| rsa_key_error())?;
                ParsedPublicKey::new(verification, der.as_ref())
            }
        }
        .map_err(|e| match algorithm {
            Algorithm::RS256 => ErrorKind::InvalidRsaKey(e.to_string()),
            Algorithm::ES256 => ErrorKind::InvalidEcdsaKey,
            _ => ErrorKind::InvalidEddsaKey,
        })?,
    );
    if table.len() >= MAX_KEYS {
        table.clear();
    }
    table.insert(id, parsed.clone());
    Ok(parsed)
}

fn rsa_key_error() -> ErrorKind {
    ErrorKind::InvalidRsaKey("modulus and exponent do not form a key".into())
}

/// One algorithm, one parsed key.
struct ParsedVerifier {
    algorithm: Algorithm,
    key: Arc<ParsedPublicKey>,
}

impl signature::Verifier<Vec<u8>> for ParsedVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        self.key
            .verify_sig(message, signature)
            .map_err(signature::Error::from_source)
    }
}

impl JwtVerifier for ParsedVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;
    use crate::jwt::tests::{Signer, ec, ed, rsa};

    const MESSAGE: &[u8] = b"header.claims";

    /// `signer`'s public key as the key sets load it (from its JWK), and
    /// its signature of [`MESSAGE`].
    fn loaded(signer: &Signer) -> (DecodingKey, Vec<u8>) {
        let jwk = serde_json::from_value(signer.jwk.clone()).expect("JWK");
        let key = DecodingKey::from_jwk(&jwk).expect("key");
        let signature = jsonwebtoken::crypto::sign(MESSAGE, &signer.key, signer.alg).expect("sign");
        (key, URL_SAFE_NO_PAD.decode(signature).expect("base64"))
    }

    #[test]
    fn parsed_keys_verify_what_their_algorithm_signed_and_nothing_else() {
        let keys: Vec<_> = [rsa(), ec(), ed()]
            .iter()
            .map(|signer| {
                let (key, signature) = loaded(signer);
                (signer.alg, key, signature)
            })
            .collect();
        for (algorithm, key, signature) in &keys {
            let check = verifier(algorithm, key).expect("verifier");
            assert_eq!(check.algorithm(), *algorithm);
            assert!(check.verify(MESSAGE, signature).is_ok(), "{algorithm:?}");
            assert!(
                check.verify(b"header.claimz", signature).is_err(),
                "{algorithm:?}"
            );
            let mut forged = signature.clone();
            forged[10] ^= 1;
            assert!(check.verify(MESSAGE, &forged).is_err(), "{algorithm:?}");
            // Another algorithm's key is refused, never tried.
            for (other, other_key, other_signature) in &keys {
                if other != algorithm {
                    assert!(verifier(algorithm, other_key).is_err(), "{algorithm:?}");
                    assert!(check.verify(MESSAGE, other_signature).is_err());
                }
            }
        }
        // HMAC goes to aws-lc-rs's own verifier, which needs a secret.
        assert!(verifier(&Algorithm::HS256, &keys[0].1).is_err());
    }

    #[test]
    fn a_key_is_parsed_once_and_the_table_stays_bounded() {
        let (key, _) = loaded(&ed());
        let first = parsed(Algorithm::EdDSA, &ED25519, &key).expect("parse");
        let again = parsed(Algorithm::EdDSA, &ED25519, &key).expect("parse");
        assert!(Arc::ptr_eq(&first, &again));
        for _ in 0..=MAX_KEYS {
            parsed(Algorithm::EdDSA, &ED25519, &loaded(&ed()).0).expect("parse");
        }
        let table = PARSED.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(table.as_ref().expect("table").len() <= MAX_KEYS);
    }
}
