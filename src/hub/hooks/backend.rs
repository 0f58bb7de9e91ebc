//! One hook endpoint of the business backend, as the hub's hook tasks call it: a signed JSON
//! `POST` over one keep-alive HTTP/1.1 connection ([`HttpApi`], the client library's hyper
//! client), with a timeout.
//!
//! Every request carries `Content-Type: application/json` and, when `hooks.secret` is set,
//! `X-Linkcast-Signature` (`signature.rs`). A request that times out or breaks drops its
//! connection (a late answer must not be read as the next request's), and the next request
//! dials again. Answers other than 2xx, and bodies over the client's 1 MiB cap, are failures.
//! `https://` URLs are verified by `[tls] ca_file` / `pin_sha256` (without either, only a
//! loopback backend is accepted, at start), as the hub's other TLS clients are.

use std::time::Duration;

use bytes::Bytes;

use super::signature::{sign, SIGNATURE_HEADER};
use crate::client::http::{HttpApi, HttpError};
use crate::config::split_hook_url;
use crate::tls::Trust;

/// A hook endpoint.
pub(crate) struct Backend {
    /// `http://host:port` (what the client dials).
    base: String,
    /// Path and query of the URL.
    path: String,
    /// HMAC key; `None` = requests go unsigned (dev mode without `hooks.secret`).
    secret: Option<Vec<u8>>,
    trust: Trust,
    api: HttpApi,
    timeout: Duration,
}

impl Backend {
    /// A client for `url` (checked by `Config::validate`), resolving its host now.
    pub(crate) fn new(url: &str, secret: &str, trust: Trust, timeout: Duration) -> std::io::Result<Backend> {
        let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
        let (base, path) = split_hook_url(url).ok_or_else(|| invalid(format!("hooks: bad URL {url:?}")))?;
        let api = HttpApi::with_trust(base, None, trust.clone()).map_err(|e| invalid(format!("hooks: {e}")))?;
        if let Some(authority) = base.strip_prefix("https://") {
            // Refused now rather than at every request: an unverifiable https backend.
            if let Some(addr) = crate::client::http::resolve(authority) {
                trust.check_target(addr).map_err(|e| invalid(format!("hooks: {url}: {e} (set tls.ca_file or tls.pin_sha256)")))?;
            }
        }
        let secret = (!secret.is_empty()).then(|| secret.as_bytes().to_vec());
        Ok(Backend { base: base.to_owned(), path: path.to_owned(), secret, trust, api, timeout: timeout.max(Duration::from_millis(1)) })
    }

    /// POSTs `body`; the answer's body if 2xx within the timeout, else why not.
    pub(crate) async fn post(&mut self, body: Bytes) -> Result<Bytes, String> {
        let signature = self.secret.as_deref().map(|secret| sign(secret, &body));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(signature) = &signature {
            headers.push((SIGNATURE_HEADER, signature.as_str()));
        }
        let outcome = tokio::time::timeout(self.timeout, self.api.post(&self.path, body, &headers)).await;
        match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(HttpError::Status { status, body, .. })) => Err(format!("HTTP {status}: {}", truncate(&body, 200))),
            Ok(Err(error)) => {
                self.reconnect();
                Err(error.to_string())
            }
            Err(_) => {
                self.reconnect();
                Err(format!("no answer within {} ms", self.timeout.as_millis()))
            }
        }
    }

    /// Drops the connection; the next request dials again.
    fn reconnect(&mut self) {
        if let Ok(api) = HttpApi::with_trust(&self.base, None, self.trust.clone()) {
            self.api = api;
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unverifiable_https_backend_is_refused_at_start() {
        let timeout = Duration::from_secs(1);
        assert!(Backend::new("https://10.0.0.1:8443/hooks", "s", Trust::LoopbackDev, timeout).is_err());
        assert!(Backend::new("https://127.0.0.1:8443/hooks", "s", Trust::LoopbackDev, timeout).is_ok());
        let pinned = Trust::Pins(std::sync::Arc::new(vec![[0; 32]]));
        assert!(Backend::new("https://10.0.0.1:8443/hooks", "s", pinned, timeout).is_ok());
        assert!(Backend::new("http://10.0.0.1:8080/hooks", "s", Trust::LoopbackDev, timeout).is_ok(), "http:// is the operator's call");
        assert_eq!(truncate("héllo", 2), "h");
    }
}
