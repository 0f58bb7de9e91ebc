//! Mutual TLS between Links and hubs: the hub's Link port verifying client certificates, and
//! the certificate a Link presents.
//!
//! - A hub with `[tls] client_ca_file` builds its Link QUIC port's TLS with rustls'
//!   `WebPkiClientVerifier` over that CA ([`link_port_tls`]): every handshake must present a
//!   certificate chained to it, or it fails before any frame is read (counted in
//!   `linkcast_hub_link_tls_refused_total`). Such a hub then also accepts Link ids that are not
//!   in `[[links]]` (src/hub/links.rs): holding the cluster secret *and* a certificate of the
//!   cluster's CA is what makes a Link added at run time a member.
//! - A Link with `[tls] client_cert_file` / `client_key_file` loads them once
//!   ([`ClientIdentity::from_config`]) and presents them on every dial to a hub
//!   (`Trust::client_config_as`).
//!
//! Data flow: config paths → PEM files read at start → rustls configs; nothing here runs per
//! connection. A certificate is not reloaded on SIGHUP (restart the Link to rotate it).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::config::TlsConfig;
use crate::tls::{file_error, load_certs, provider, ServerCert, TlsError};

/// The client certificate chain and key a Link presents to hubs.
pub struct ClientIdentity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("chain", &self.chain.len()).finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// `tls.client_cert_file` + `tls.client_key_file`, if configured (the key is checked to
    /// load; rustls checks it matches the certificate when the config is built).
    pub fn from_config(tls: &TlsConfig) -> Result<Option<ClientIdentity>, TlsError> {
        let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) else { return Ok(None) };
        ClientIdentity::from_files(cert, key).map(Some)
    }

    /// Reads a PEM certificate chain and its PEM private key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ClientIdentity, TlsError> {
        let chain = load_certs(cert)?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
        provider().key_provider.load_private_key(key_der.clone_key()).map_err(|e| file_error(key, e))?;
        Ok(ClientIdentity { chain, key: key_der })
    }
}

/// The TLS of a hub's Link port presenting `cert` on `alpns` and requiring a client certificate
/// chained to the CAs in `client_ca` (PEM).
pub fn link_port_tls(cert: Arc<ServerCert>, client_ca: &Path, alpns: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca)? {
        roots.add(ca).map_err(|e| file_error(client_ca, e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| file_error(client_ca, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let tls = TlsConfig {
            client_cert_file: Some("/nonexistent/link.pem".into()),
            client_key_file: Some("/nonexistent/link.key".into()),
            ..TlsConfig::default()
        };
        let error = ClientIdentity::from_config(&tls).expect_err("no such file");
        assert!(error.to_string().contains("/nonexistent/link.pem"), "{error}");
        assert!(ClientIdentity::from_config(&TlsConfig::default()).expect("none configured").is_none());
        let cert = Arc::new(ServerCert::self_signed().expect("cert"));
        let error = link_port_tls(cert, Path::new("/nonexistent/ca.pem"), &[b"x"]).expect_err("no CA file");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }
}
