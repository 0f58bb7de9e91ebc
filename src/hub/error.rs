//! HTTP API errors: every refusal is JSON `{"error": code, "reason": text}` with its status.
//!
//! [`ApiError`] is the one error type of the HTTP handlers. Each variant maps, by
//! [`ApiError::status`], to a status and a short machine code; the reason is human text. axum's
//! own rejections (a path that does not decode, a query that does not parse, a body above the
//! limit) are converted with [`ApiError::rejected`], and unknown routes / methods get the same
//! JSON shape from the router's fallbacks, so no plain-text error leaves the hub.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use linkcast_core::room_table::PublishError;

/// Why an HTTP request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The room name is not valid (docs/protocol.md, "Names and limits").
    #[error("invalid room name")]
    BadRoom,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(&'static str),
    /// No or a wrong API key.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The credentials are valid but do not allow this (key scope, token rooms).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The request did not finish within `hub.http_request_timeout_secs`.
    #[error("request timed out (a publish may still be sequenced: retry it with the same Idempotency-Key)")]
    Timeout,
    /// The room or route does not exist.
    #[error("{0}")]
    NotFound(&'static str),
    /// The method is not allowed on this route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body exceeds `hub.max_payload`.
    #[error("payload too large")]
    TooLarge,
    /// The API key's publish rate is exceeded.
    #[error("rate limited")]
    RateLimited,
    /// The hub cannot serve this now (no Links, owner unreachable, too many rooms).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The room table refused a publish.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// axum refused the request before a handler ran; its status and text are kept.
    #[error("{reason}")]
    Rejected {
        /// Status chosen by axum.
        status: StatusCode,
        /// axum's explanation.
        reason: String,
    },
}

impl ApiError {
    /// Converts an axum rejection (anything with a status and a text).
    pub fn rejected(rejection: impl IntoResponse + std::fmt::Display) -> ApiError {
        let reason = rejection.to_string();
        let status = rejection.into_response().status();
        // A body above the limit surfaces as a failed buffer; give it its own variant.
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::TooLarge;
        }
        ApiError::Rejected { status, reason }
    }

    /// Status and short machine code.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRoom | ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Timeout => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Publish(e) => {
                let (code, _) = e.status();
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
                (status, code_name(status))
            }
            ApiError::Rejected { status, .. } => (*status, code_name(*status)),
        }
    }
}

fn code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "bad_request",
        429 => "rate_limited",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "bad_request",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let reason = match &self {
            ApiError::Publish(e) => e.status().1.to_owned(),
            other => other.to_string(),
        };
        let mut response = (status, Json(serde_json::json!({ "error": code, "reason": reason }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 is worth retrying (owner unreachable, room moving between hubs, store
            // down): say when.
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}
