//! A throwaway certificate authority for tests: server certificates for the
//! gateway's listeners and the test HTTPS servers, and client trust in it.

use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};

/// A CA able to issue server certificates.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: rcgen::Certificate,
}

/// A certificate and its key.
pub struct Issued {
    /// PEM chain (just the leaf).
    pub cert_pem: String,
    /// PEM PKCS#8 key.
    pub key_pem: String,
    /// DER leaf.
    pub cert_der: CertificateDer<'static>,
    /// DER key.
    pub key_der: PrivateKeyDer<'static>,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gateway test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        Self {
            issuer: rcgen::Issuer::new(params, key),
            cert,
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names or IP literals).
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: CertificateDer::from(cert.der().to_vec()),
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A rustls client trusting this CA only, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.der().to_vec()))
            .expect("CA into roots");
        let mut config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
