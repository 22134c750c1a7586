//! TLS for the HTTPS listeners: rustls with HTTP/2 and HTTP/1.1 offered by
//! ALPN, and a certificate that is reloaded from its files when they change
//! (checked periodically and on SIGHUP), without a restart and without
//! touching open connections. A reload that fails keeps the certificate in
//! use.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("cannot load {path}: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The key does not match the certificate, or is of an unsupported type.
    #[error("the key in {path} cannot be used with its certificate: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration")]
    Config(#[from] rustls::Error),
}

/// A listener's certificate, reloaded when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    watch: super::FileWatch,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let load_error = |path: &Path, message: String| TlsError::Load {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| load_error(cert_path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_error(cert_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(load_error(cert_path, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| load_error(key_path, e.to_string()))?;
    let key_error = |message: String| TlsError::Key {
        path: key_path.to_owned(),
        message,
    };
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| key_error(e.to_string()))?;
    Ok(certified)
}

impl ReloadingCert {
    /// Loads the certificate chain and key (PEM).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let watch = super::FileWatch::new(&[cert_path, key_path]);
        let certified = load(cert_path, key_path)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(certified),
            watch,
        })
    }

    /// Reloads if either file changed since the last load. `Ok(true)` when a
    /// new certificate is in use; on error the old one stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        // A change is taken as seen even if loading fails, so a broken file
        // is reported once, not on every check.
        if !self.watch.changed() {
            return Ok(false);
        }
        let certified = load(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(certified));
        Ok(true)
    }

    /// The certificate file, for logs.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A server configuration serving `cert`, offering h2 and http/1.1.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
