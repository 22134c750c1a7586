//! HTTPS requests for small documents (range lists, certs documents, OpenID
//! Connect discovery and token responses), over rustls with the Mozilla root
//! store plus an optional CA file, bounded in time and size. Errors are one
//! line with their causes, for logs and reports.

use std::{path::Path, time::Duration};

use rustls::pki_types::{CertificateDer, pem::PemObject as _};

/// A fetch that takes longer than this fails; the last good list stays.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Range lists are a few kB; anything much larger is not one.
const MAX_BODY: usize = 16 << 20;

/// GETs `url` and returns the body as text.
pub async fn fetch(url: &str, ca_file: Option<&Path>) -> Result<String, String> {
    fetch_with(&client(ca_file)?, url).await
}

/// [`fetch`] with a client kept by the caller.
pub async fn fetch_with(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| crate::error_chain(&e))?;
    if !response.status().is_success() {
        return Err(format!("HTTP status {}", response.status()));
    }
    body_text(response).await
}

/// The body of `response` as text, at most [`MAX_BODY`] bytes.
pub async fn body_text(mut response: reqwest::Response) -> Result<String, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| crate::error_chain(&e))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(format!("body larger than {MAX_BODY} bytes"));
        }
    }
    String::from_utf8(body).map_err(|_| "body is not UTF-8".into())
}

/// The certificates of a PEM CA file: at least one, or an error naming
/// the file (also `check-config`'s check of `ca_file` keys).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in CA file {}", path.display()));
    }
    Ok(certs)
}

/// A client trusting the Mozilla roots and `ca_file`, https only, with the
/// fetch timeout (shared by the fetches and the OpenID Connect calls).
pub fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(TIMEOUT)
        .https_only(true)
        .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| crate::error_chain(&e))
}
