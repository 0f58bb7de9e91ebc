//! TLS for every role: the certificate servers present, and how whoever dials checks the server.
//!
//! - **Servers** (the hub's HTTP port as `https://`, the Link's WebSocket port as `wss://`, and
//!   every QUIC endpoint) present one [`ServerCert`]: the `[tls] cert_file` / `key_file` pair,
//!   or, when none is configured, a self-signed certificate for `localhost` / 127.0.0.1 made at
//!   start-up (QUIC only; the TCP ports then stay plain `http://` / `ws://`). A configured pair
//!   is reloaded from its files on SIGHUP: new handshakes get the new certificate, connections
//!   already up keep theirs ([`ServerCert::shared`] registers it with the one SIGHUP watcher).
//! - **Dialers** (a Link dialling its hubs, a hub forwarding to the owner hub, the client
//!   library) check the server with a [`Trust`]: the CAs of `[tls] ca_file`, or the SHA-256
//!   fingerprints of `pin_sha256`, or — the dev convenience — nothing at all, which
//!   [`Trust::check_target`] allows only for a loopback server (a network attacker cannot stand
//!   between two processes on one host). A Link or hub whose configuration would dial a
//!   non-loopback server unverified refuses to start (`Config::check_node`).
//!
//! Only TLS 1.3 is offered, with rustls' `ring` provider (the same one quinn uses).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;

use crate::config::TlsConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Making the self-signed certificate failed.
    #[error("self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// A pin is not 64 hex digits.
    #[error("tls.pin_sha256: {0:?} is not a SHA-256 fingerprint (64 hex digits)")]
    BadPin(String),
    /// Dialling a non-loopback server with nothing to verify it against.
    #[error("refusing to dial {0} without verifying its certificate: set tls.ca_file or tls.pin_sha256")]
    Unverifiable(SocketAddr),
}

/// The crypto provider of every TLS setup here.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate a node's servers present (see the module docs).
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
    /// `(cert_file, key_file)` when configured (reloadable); `None` = self-signed.
    files: Option<(PathBuf, PathBuf)>,
}

impl ServerCert {
    /// The configured certificate (one per file pair in the process, watched for SIGHUP) or a
    /// new self-signed one.
    pub fn shared(tls: &TlsConfig) -> Result<Arc<ServerCert>, TlsError> {
        let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else { return ServerCert::self_signed().map(Arc::new) };
        /// Certificates loaded so far, by (certificate file, key file).
        type Loaded = Mutex<HashMap<(PathBuf, PathBuf), Arc<ServerCert>>>;
        static LOADED: OnceLock<Loaded> = OnceLock::new();
        let files = (cert.clone(), key.clone());
        let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = loaded.get(&files) {
            return Ok(existing.clone());
        }
        let certified = load_certified(cert, key)?;
        let server_cert = Arc::new(ServerCert { current: RwLock::new(Arc::new(certified)), files: Some(files.clone()) });
        loaded.insert(files, server_cert.clone());
        reload_on_sighup(server_cert.clone());
        Ok(server_cert)
    }

    /// A fresh self-signed certificate for `localhost` and 127.0.0.1.
    pub fn self_signed() -> Result<ServerCert, TlsError> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let key = provider().key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(vec![certified.cert.der().clone()], key);
        Ok(ServerCert { current: RwLock::new(Arc::new(certified)), files: None })
    }

    /// True when the certificate came from `[tls]` files (the TCP ports then serve TLS).
    pub fn is_configured(&self) -> bool {
        self.files.is_some()
    }

    /// The certificate presented right now (the chain's first), DER.
    pub(crate) fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).cert.first().cloned()
    }

    /// Reads the files again; on any error the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some((cert, key)) = &self.files else { return Ok(()) };
        let certified = load_certified(cert, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

pub(crate) fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), reason: reason.to_string() }
}

pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn load_certified(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let signing = provider().key_provider.load_private_key(key_der).map_err(|e| file_error(key, e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| file_error(key, format!("does not match {}: {e}", cert.display())))?;
    Ok(certified)
}

/// Reloads `cert` whenever the process gets SIGHUP (one watcher thread per certificate pair).
fn reload_on_sighup(cert: Arc<ServerCert>) {
    #[cfg(unix)]
    {
        let spawned = std::thread::Builder::new().name("linkcast-sighup".into()).spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
                while hangups.recv().await.is_some() {
                    match cert.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                        Err(e) => tracing::error!("SIGHUP: TLS certificate not reloaded, keeping the current one: {e}"),
                    }
                }
            });
        });
        if let Err(e) = spawned {
            tracing::warn!("no SIGHUP certificate reload: {e}");
        }
    }
}

/// A rustls server config presenting `cert`, offering `alpns`.
pub fn server_config(cert: Arc<ServerCert>, alpns: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// How a dialer checks the server it reached (see the module docs).
#[derive(Clone, Debug)]
pub enum Trust {
    /// The server's chain must lead to one of these CAs and name the dialled host.
    Ca(Arc<RootCertStore>),
    /// The server's certificate must have one of these SHA-256 fingerprints.
    Pins(Arc<Vec<[u8; 32]>>),
    /// Nothing is checked: loopback servers only ([`Trust::check_target`]).
    LoopbackDev,
}

impl Trust {
    /// From `[tls] ca_file` / `pin_sha256`; neither = [`Trust::LoopbackDev`].
    pub fn from_config(tls: &TlsConfig) -> Result<Trust, TlsError> {
        if let Some(path) = &tls.ca_file {
            return Trust::from_ca_pem(path);
        }
        if !tls.pin_sha256.is_empty() {
            return tls.pin_sha256.iter().map(|pin| parse_pin(pin)).collect::<Result<Vec<_>, _>>().map(|p| Trust::Pins(Arc::new(p)));
        }
        Ok(Trust::LoopbackDev)
    }

    /// Trust the CAs in the PEM file at `path`.
    pub fn from_ca_pem(path: &Path) -> Result<Trust, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| file_error(path, e))?;
        }
        Ok(Trust::Ca(Arc::new(roots)))
    }

    /// Trust exactly the certificate with this DER encoding (tests, pinning a known server).
    pub fn pin_der(cert: &CertificateDer<'_>) -> Trust {
        Trust::Pins(Arc::new(vec![sha2::Sha256::digest(cert.as_ref()).into()]))
    }

    /// Refuses to dial a non-loopback `target` without verification.
    pub fn check_target(&self, target: SocketAddr) -> Result<(), TlsError> {
        match self {
            Trust::LoopbackDev if !target.ip().is_loopback() => Err(TlsError::Unverifiable(target)),
            _ => Ok(()),
        }
    }

    /// A rustls client config verifying by this trust, offering `alpns`.
    pub fn client_config(&self, alpns: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config_as(alpns, None)
    }

    /// [`Trust::client_config`] presenting `identity` as client certificate when given (a Link
    /// dialling hubs that require mutual TLS: `mtls.rs`).
    pub fn client_config_as(&self, alpns: &[&[u8]], identity: Option<&crate::mtls::ClientIdentity>) -> Result<rustls::ClientConfig, TlsError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(&[&rustls::version::TLS13])?;
        let wants_client_cert = match self {
            Trust::Ca(roots) => {
                let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
                    .build()
                    .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
                builder.with_webpki_verifier(verifier)
            }
            Trust::Pins(pins) => builder.dangerous().with_custom_certificate_verifier(Arc::new(Pinned { pins: pins.clone(), provider })),
            Trust::LoopbackDev => {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(Pinned { pins: Arc::new(Vec::new()), provider }))
            }
        };
        let mut config = match identity {
            None => wants_client_cert.with_no_client_auth(),
            Some(identity) => wants_client_cert.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?,
        };
        config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        Ok(config)
    }
}

/// The name to check a server certificate against: `name` if given, else the IP dialled.
pub fn server_name(name: Option<&str>, target: SocketAddr) -> ServerName<'static> {
    name.and_then(|n| ServerName::try_from(n.to_owned()).ok()).unwrap_or_else(|| ServerName::IpAddress(target.ip().into()))
}

fn parse_pin(text: &str) -> Result<[u8; 32], TlsError> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let mut pin = [0u8; 32];
    if hex.len() != 64 {
        return Err(TlsError::BadPin(text.to_owned()));
    }
    for (i, byte) in pin.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| TlsError::BadPin(text.to_owned()))?;
    }
    Ok(pin)
}

/// Checks pins (no pins = accept any certificate: [`Trust::LoopbackDev`]); signatures are
/// always checked, so the peer holds the key of the certificate it showed.
#[derive(Debug)]
struct Pinned {
    pins: Arc<Vec<[u8; 32]>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pins.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        let fingerprint: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if self.pins.iter().any(|pin| linkcast_core::auth::constant_time_eq(pin, &fingerprint)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_pin(&hex).expect("valid"), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_pin(&colons).expect("valid"), [0xab; 32]);
        assert!(matches!(parse_pin("abc"), Err(TlsError::BadPin(_))));
        assert!(matches!(parse_pin(&"zz".repeat(32)), Err(TlsError::BadPin(_))));
    }

    #[test]
    fn unverified_dialling_is_for_loopback_only() {
        let trust = Trust::LoopbackDev;
        assert!(trust.check_target("127.0.0.1:1".parse().expect("addr")).is_ok());
        assert!(trust.check_target("[::1]:1".parse().expect("addr")).is_ok());
        assert!(matches!(trust.check_target("10.0.0.1:1".parse().expect("addr")), Err(TlsError::Unverifiable(_))));
        let pinned = Trust::Pins(Arc::new(vec![[0; 32]]));
        assert!(pinned.check_target("10.0.0.1:1".parse().expect("addr")).is_ok());
    }

    #[test]
    fn missing_files_are_named() {
        let tls = TlsConfig { cert_file: Some("/nonexistent/c.pem".into()), key_file: Some("/nonexistent/k.pem".into()), ..TlsConfig::default() };
        let error = ServerCert::shared(&tls).expect_err("no such file");
        assert!(error.to_string().contains("/nonexistent/c.pem"), "{error}");
    }
}
