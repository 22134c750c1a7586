//! `gateway check-config`: everything about a configuration that can be
//! checked without side effects, beyond what parsing checks: the files it
//! names exist and hold what they should (certificates and keys, CA files,
//! range lists, the token store, sign-in client secrets). Nothing is written, bound, fetched or
//! attached. Errors name the key, like the parser's.

use crate::{
    config::{Config, ConfigError, Source},
    fetch::read_ca_file,
    proxy::tls::ReloadingCert,
    tokens::TokenStore,
    xdp::sources::parse_list,
};

/// Checks the files `config` names.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
    if let Some(xdp) = &config.xdp {
        for (section, sources) in [
            ("xdp.relay", &xdp.relay),
            ("xdp.management", &xdp.management),
        ] {
            for (i, source) in sources.iter().enumerate() {
                let key = format!("{section}[{i}]");
                match source {
                    Source::Inline(_) => {}
                    Source::File { path, .. } => {
                        let text = std::fs::read_to_string(path).map_err(|e| {
                            invalid(
                                format!("{key}.file"),
                                format!("cannot read {}: {e}", path.display()),
                            )
                        })?;
                        parse_list(&path.display().to_string(), &text, xdp.allow_any)
                            .map_err(|e| invalid(format!("{key}.file"), crate::error_chain(&e)))?;
                    }
                    Source::Url { ca_file, .. } => {
                        if let Some(path) = ca_file {
                            read_ca_file(path).map_err(|m| invalid(format!("{key}.ca_file"), m))?;
                        }
                    }
                }
            }
        }
    }
    if let Some(http) = &config.http {
        for (i, listener) in http.https.iter().enumerate() {
            ReloadingCert::load(&listener.cert, &listener.key)
                .map_err(|e| invalid(format!("http.https[{i}].cert"), crate::error_chain(&e)))?;
        }
        if let Some(path) = http.relay.as_ref().and_then(|r| r.ca_file.as_ref()) {
            read_ca_file(path).map_err(|m| invalid("relay.ca_file".into(), m))?;
        }
        for (i, provider) in http.oidc.iter().enumerate() {
            if let Some(path) = &provider.ca_file {
                read_ca_file(path).map_err(|m| invalid(format!("oidc[{i}].ca_file"), m))?;
            }
            crate::oidc::Provider::new(provider.clone()).map_err(|e| {
                invalid(
                    format!("oidc[{i}].client_secret_file"),
                    crate::error_chain(&e),
                )
            })?;
        }
        TokenStore::open(&http.token_store)
            .map_err(|e| invalid("tokens.store".into(), crate::error_chain(&e)))?;
    }
    Ok(())
}
