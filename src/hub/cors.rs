//! CORS for the hub's HTTP API: which other origins' pages may call it from a browser.
//!
//! Owns `hub.cors_origins` at run time. One axum middleware wraps every route (and the 404 /
//! 405 fallbacks): a request whose `Origin` is allowed gets `Access-Control-Allow-Origin: <that
//! origin>` and `Vary: Origin` on its answer, whatever the status; a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) from an allowed origin is answered here, 204 with the
//! methods, headers and max-age below, and never reaches a handler. A request from any other
//! origin, or without `Origin`, passes through untouched: no CORS header at all, so the browser
//! blocks the page from reading the answer (a preflight of such an origin gets the route's own
//! 404/405 JSON). `[]` (the default) allows no origin, `["*"]` every origin; the allowed origin
//! is echoed rather than answered `*`, so the answer is the same for both.
//!
//! Data flow: request → [`Cors::allows`] on its `Origin` → (preflight: 204 here) → the router →
//! headers added to the response.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Methods the API answers cross-origin.
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// Request headers a cross-origin page may send (credentials, JSON bodies, idempotency keys).
const ALLOW_HEADERS: &str = "authorization, content-type, idempotency-key";
/// Seconds a browser may cache a preflight answer.
const MAX_AGE: &str = "600";

/// The allowed origins (`hub.cors_origins`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    /// From `hub.cors_origins`: `"*"` anywhere in the list allows every origin. Origins are
    /// compared exactly, without a trailing slash (`https://app.example:8443`).
    pub(crate) fn new(origins: &[String]) -> Cors {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").map(|o| o.trim_end_matches('/').to_owned()).collect(),
        }
    }

    /// Whether no origin is allowed (the middleware is then left out).
    pub(crate) fn is_off(&self) -> bool {
        !self.any && self.origins.is_empty()
    }

    /// Whether a page of `origin` may read the API's answers.
    pub(crate) fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o == origin)
    }
}

/// The middleware (see the module docs).
pub(crate) async fn cors(cors: Arc<Cors>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .filter(|o| o.to_str().is_ok_and(|o| cors.allows(o)))
        .cloned();
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact_or_any() {
        let cors = Cors::new(&["https://app.example/".to_owned(), "http://localhost:3000".to_owned()]);
        assert!(cors.allows("https://app.example") && cors.allows("http://localhost:3000"));
        assert!(!cors.allows("https://app.example.evil") && !cors.allows("http://localhost:3001") && !cors.allows("null"));
        assert!(Cors::new(&[]).is_off());
        let any = Cors::new(&["*".to_owned()]);
        assert!(!any.is_off() && any.allows("https://anything.example"));
    }
}
