//! Client authentication: JWT HS256 tokens and their claims.
//!
//! A browser or native client brings a token (`/ws?token=JWT` or the QUIC hello); the Link
//! verifies it here before it accepts the connection, and checks every `join`/`publish` against
//! the token's room rights. Tokens are signed by the business backend with the cluster's JWT
//! secret: claims `sub` (user id), `exp` (seconds since the epoch) and `rooms` (room names the
//! user may enter; `"*"` means any).
//!
//! [`Verifier::Dev`] is the embedded default without a secret: any token-less client becomes an
//! anonymous user with every right (the runtime says so loudly at start-up).
//!
//! Sans-IO: the current time is an argument; the MAC comparison is constant-time
//! (`hmac::Mac::verify_slice`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in bytes (checked before any decoding).
pub const MAX_TOKEN_LEN: usize = 4096;

/// The claims linkcast reads from a token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// User id; becomes the `from` of the user's messages.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Rooms the user may join and publish to; `"*"` = any.
    #[serde(default)]
    pub rooms: Vec<String>,
}

impl Claims {
    /// Whether these claims allow `room`.
    pub fn allows(&self, room: &str) -> bool {
        self.rooms.iter().any(|allowed| allowed == "*" || allowed == room)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, and the Link is not in dev mode.
    #[error("token required")]
    Missing,
    /// Not three base64url parts, bad JSON, or too long.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not HS256.
    #[error("unsupported token algorithm")]
    UnsupportedAlgorithm,
    /// The signature does not match.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// The user id is empty or too long.
    #[error("invalid subject")]
    BadSubject,
    /// The token does not grant the room.
    #[error("room not allowed by token")]
    RoomNotAllowed,
}

impl AuthError {
    /// Static reason for an HTTP body, error op or close frame.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "token required",
            AuthError::Malformed => "malformed token",
            AuthError::UnsupportedAlgorithm => "unsupported token algorithm",
            AuthError::BadSignature => "bad token signature",
            AuthError::Expired => "token expired",
            AuthError::BadSubject => "invalid subject",
            AuthError::RoomNotAllowed => "room not allowed by token",
        }
    }

    /// HTTP status: 401 for identity problems, 403 for rights.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::RoomNotAllowed => 403,
            _ => 401,
        }
    }
}

/// Verifies tokens (or, in dev mode, admits anonymous users).
#[derive(Clone)]
pub enum Verifier {
    /// No secret configured: token-less clients are anonymous with every right; a token, if
    /// given, is decoded but its signature is not checked.
    Dev,
    /// HS256 with this secret.
    Hs256(HmacSha256),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verifier::Dev => f.write_str("Verifier::Dev"),
            Verifier::Hs256(_) => f.write_str("Verifier::Hs256(<secret>)"),
        }
    }
}

impl Verifier {
    /// A verifier for `secret`, or dev mode when it is `None` or empty.
    pub fn new(secret: Option<&str>) -> Self {
        match secret {
            Some(secret) if !secret.is_empty() => {
                // HMAC accepts keys of any length; this cannot fail.
                match HmacSha256::new_from_slice(secret.as_bytes()) {
                    Ok(mac) => Verifier::Hs256(mac),
                    Err(_) => Verifier::Dev,
                }
            }
            _ => Verifier::Dev,
        }
    }

    /// True in dev mode.
    pub fn is_dev(&self) -> bool {
        matches!(self, Verifier::Dev)
    }

    /// Checks `token` at `now_secs`. `anonymous_id` names a token-less dev-mode user.
    pub fn verify(&self, token: Option<&str>, now_secs: u64, anonymous_id: &str) -> Result<Claims, AuthError> {
        let token = match (token.filter(|t| !t.is_empty()), self) {
            (None, Verifier::Dev) => {
                return Ok(Claims { sub: anonymous_id.to_owned(), exp: u64::MAX, rooms: vec!["*".into()] })
            }
            (None, Verifier::Hs256(_)) => return Err(AuthError::Missing),
            (Some(token), _) => token,
        };
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: serde_json::Value = decode_json(header)?;
        if header.get("alg").and_then(|alg| alg.as_str()) != Some("HS256") {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        if let Verifier::Hs256(mac) = self {
            let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::Malformed)?;
            let mut mac = mac.clone();
            mac.update(&token.as_bytes()[..header_and_payload_len(token)]);
            mac.verify_slice(&signature).map_err(|_| AuthError::BadSignature)?;
        }
        let claims: Claims = decode_json(payload)?;
        if claims.exp <= now_secs {
            return Err(AuthError::Expired);
        }
        if claims.sub.is_empty() || claims.sub.len() > crate::frame::MAX_SENDER_LEN {
            return Err(AuthError::BadSubject);
        }
        Ok(claims)
    }
}

fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let raw = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&raw).map_err(|_| AuthError::Malformed)
}

/// Signs `claims` with `secret` (HS256). For backends, tests, `bench` and the client library.
pub fn sign(claims: &Claims, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // Serializing a struct of strings and integers cannot fail.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return signing_input,
    };
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Compares two secrets (API keys, the cluster secret) in time that depends only on their
/// lengths, not on where they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_exactly() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
        assert!(super::constant_time_eq(b"", b""));
    }

    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims { sub: "alice".into(), exp, rooms: vec!["lobby".into()] }
    }

    #[test]
    fn valid_token_round_trips() {
        let token = sign(&claims(2_000), "s3cret");
        let verifier = Verifier::new(Some("s3cret"));
        let got = verifier.verify(Some(&token), 1_000, "anon").expect("valid");
        assert_eq!(got, claims(2_000));
        assert!(got.allows("lobby"));
        assert!(!got.allows("other"));
    }

    #[test]
    fn refusals_are_typed() {
        let verifier = Verifier::new(Some("s3cret"));
        let token = sign(&claims(2_000), "s3cret");
        assert_eq!(verifier.verify(Some(&token), 2_000, "a"), Err(AuthError::Expired));
        assert_eq!(verifier.verify(Some(&sign(&claims(2_000), "other")), 1, "a"), Err(AuthError::BadSignature));
        assert_eq!(verifier.verify(None, 1, "a"), Err(AuthError::Missing));
        assert_eq!(verifier.verify(Some("a.b"), 1, "a"), Err(AuthError::Malformed));
        assert_eq!(verifier.verify(Some("!!.!!.!!"), 1, "a"), Err(AuthError::Malformed));
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(2_000)).unwrap_or_default())
        );
        assert_eq!(verifier.verify(Some(&none_alg), 1, "a"), Err(AuthError::UnsupportedAlgorithm));
        // A tampered payload fails the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory","exp":9999999999,"rooms":["*"]}"#);
        assert_eq!(verifier.verify(Some(&parts.join(".")), 1, "a"), Err(AuthError::BadSignature));
        assert_eq!(verifier.verify(Some(&"x".repeat(MAX_TOKEN_LEN + 1)), 1, "a"), Err(AuthError::Malformed));
    }

    #[test]
    fn dev_mode_admits_anonymous_users() {
        let verifier = Verifier::new(None);
        assert!(verifier.is_dev());
        let got = verifier.verify(None, 1, "anon-7").expect("dev");
        assert_eq!(got.sub, "anon-7");
        assert!(got.allows("anything"));
        assert!(Verifier::new(Some("")).is_dev());
    }
}
