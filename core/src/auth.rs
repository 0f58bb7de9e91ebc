//! Client authentication: JWT HS256 tokens and their claims.
//!
//! A browser or native client brings a token (`/ws?token=JWT` or the QUIC hello); the Link
//! verifies it here before it accepts the connection, and checks every `join`/`publish` against
//! the token's room rights. Tokens are signed by the business backend with the cluster's JWT
//! secret: claims `sub` (user id), `exp` (seconds since the epoch) and `rooms` (room names the
//! user may enter; `"*"` means any).
//!
//! A [`Verifier`] holds one or more secrets (rotation: any verifies) and optional `iss`/`aud`
//! requirements; `nbf` is checked whenever a token has one. Without a secret it is in dev mode:
//! any token-less client becomes an anonymous user with every right, and a token's signature
//! is not checked (the runtime says so loudly at start-up).
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
    /// Issued at, seconds since the Unix epoch (optional): an operator's revocation of a user's
    /// tokens (`POST /v1/users/{uid}/revoke {"before"}`) refuses tokens issued before it, and
    /// tokens without `iat` once the user has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
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
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("bad token issuer")]
    BadIssuer,
    /// `aud` does not name the configured audience.
    #[error("bad token audience")]
    BadAudience,
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
            AuthError::NotYetValid => "token not yet valid",
            AuthError::BadIssuer => "bad token issuer",
            AuthError::BadAudience => "bad token audience",
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

/// Seconds of clock difference forgiven on `nbf` (a backend whose clock runs a little ahead of
/// the Link's must not have its fresh tokens refused).
pub const NBF_LEEWAY_SECS: u64 = 30;

/// Verifies tokens (or, in dev mode, admits anonymous users).
///
/// Several secrets may be accepted at once (rotation: add the new secret, move the backends to
/// it, drop the old one); a token is accepted if any of them verifies it. Optional `iss` and
/// `aud` checks; `nbf` is always checked when the token has one (with [`NBF_LEEWAY_SECS`]).
#[derive(Clone, Default)]
pub struct Verifier {
    /// One MAC per accepted secret; empty = dev mode.
    keys: Vec<HmacSha256>,
    /// Required `iss` claim, if any.
    issuer: Option<String>,
    /// Required `aud` claim (a string, or one entry of an array), if any.
    audience: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.keys.is_empty() {
            return f.write_str("Verifier::Dev");
        }
        f.debug_struct("Verifier::Hs256")
            .field("secrets", &format_args!("<{} secret(s)>", self.keys.len()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// What the verifier reads from a token besides [`Claims`].
#[derive(serde::Deserialize)]
struct Registered {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    nbf: Option<u64>,
}

impl Verifier {
    /// A verifier for `secret`, or dev mode when it is `None` or empty.
    pub fn new(secret: Option<&str>) -> Self {
        Verifier::with_secrets(secret)
    }

    /// A verifier accepting any of `secrets` (empty ones are skipped); dev mode when none is left.
    pub fn with_secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let keys = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            // HMAC accepts keys of any length; this cannot fail.
            .filter_map(|s| HmacSha256::new_from_slice(s.as_bytes()).ok())
            .collect();
        Verifier { keys, issuer: None, audience: None }
    }

    /// Also requires `iss == issuer` (no check when `None` or empty).
    pub fn issuer(mut self, issuer: Option<&str>) -> Self {
        self.issuer = issuer.filter(|i| !i.is_empty()).map(str::to_owned);
        self
    }

    /// Also requires `aud` to be `audience` or an array holding it (no check when `None` or empty).
    pub fn audience(mut self, audience: Option<&str>) -> Self {
        self.audience = audience.filter(|a| !a.is_empty()).map(str::to_owned);
        self
    }

    /// True in dev mode (no secret: token-less clients are anonymous, and a token's signature
    /// is **not** checked — an unsigned token is accepted as it claims).
    pub fn is_dev(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `token` at `now_secs`. `anonymous_id` names a token-less dev-mode user.
    pub fn verify(&self, token: Option<&str>, now_secs: u64, anonymous_id: &str) -> Result<Claims, AuthError> {
        let token = match token.filter(|t| !t.is_empty()) {
            None if self.is_dev() => {
                return Ok(Claims { sub: anonymous_id.to_owned(), exp: u64::MAX, rooms: vec!["*".into()], iat: None })
            }
            None => return Err(AuthError::Missing),
            Some(token) => token,
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
        if !self.is_dev() {
            let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::Malformed)?;
            let signed = &token.as_bytes()[..header_and_payload_len(token)];
            let verified = self.keys.iter().any(|key| {
                let mut mac = key.clone();
                mac.update(signed);
                mac.verify_slice(&signature).is_ok()
            });
            if !verified {
                return Err(AuthError::BadSignature);
            }
        }
        let claims: Claims = decode_json(payload)?;
        if claims.exp <= now_secs {
            return Err(AuthError::Expired);
        }
        if claims.sub.is_empty() || claims.sub.len() > crate::frame::MAX_SENDER_LEN {
            return Err(AuthError::BadSubject);
        }
        let registered: Registered = decode_json(payload)?;
        if registered.nbf.is_some_and(|nbf| nbf > now_secs.saturating_add(NBF_LEEWAY_SECS)) {
            return Err(AuthError::NotYetValid);
        }
        if let Some(issuer) = &self.issuer {
            if registered.iss.as_deref() != Some(issuer.as_str()) {
                return Err(AuthError::BadIssuer);
            }
        }
        if let Some(audience) = &self.audience {
            let ok = match &registered.aud {
                Some(serde_json::Value::String(aud)) => aud == audience,
                Some(serde_json::Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience.as_str())),
                _ => false,
            };
            if !ok {
                return Err(AuthError::BadAudience);
            }
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
        Claims { sub: "alice".into(), exp, rooms: vec!["lobby".into()], iat: None }
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
    fn any_of_several_secrets_verifies_for_rotation() {
        let verifier = Verifier::with_secrets(["new", "old"]);
        assert!(!verifier.is_dev());
        assert!(verifier.verify(Some(&sign(&claims(2_000), "new")), 1, "a").is_ok());
        assert!(verifier.verify(Some(&sign(&claims(2_000), "old")), 1, "a").is_ok());
        assert_eq!(verifier.verify(Some(&sign(&claims(2_000), "gone")), 1, "a"), Err(AuthError::BadSignature));
        assert!(Verifier::with_secrets(["", ""]).is_dev());
    }

    /// A token with extra registered claims, signed with `secret`.
    fn token_with(extra: serde_json::Value, secret: &str) -> String {
        let mut payload = serde_json::json!({"sub": "alice", "exp": 2_000, "rooms": ["lobby"]});
        if let (Some(payload), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
            payload.extend(extra.clone());
        }
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(payload.to_string());
        let input = format!("{header}.{body}");
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn issuer_audience_and_not_before_are_checked() {
        let verifier = Verifier::new(Some("s")).issuer(Some("backend")).audience(Some("linkcast"));
        let good = token_with(serde_json::json!({"iss": "backend", "aud": "linkcast"}), "s");
        assert!(verifier.verify(Some(&good), 1_000, "a").is_ok());
        let in_list = token_with(serde_json::json!({"iss": "backend", "aud": ["other", "linkcast"]}), "s");
        assert!(verifier.verify(Some(&in_list), 1_000, "a").is_ok());
        let wrong_iss = token_with(serde_json::json!({"iss": "mallory", "aud": "linkcast"}), "s");
        assert_eq!(verifier.verify(Some(&wrong_iss), 1_000, "a"), Err(AuthError::BadIssuer));
        let no_aud = token_with(serde_json::json!({"iss": "backend"}), "s");
        assert_eq!(verifier.verify(Some(&no_aud), 1_000, "a"), Err(AuthError::BadAudience));
        // nbf: always checked, with a small leeway; no iss/aud required by default.
        let plain = Verifier::new(Some("s"));
        let early = token_with(serde_json::json!({"nbf": 1_000 + NBF_LEEWAY_SECS + 1}), "s");
        assert_eq!(plain.verify(Some(&early), 1_000, "a"), Err(AuthError::NotYetValid));
        let within_leeway = token_with(serde_json::json!({"nbf": 1_000 + NBF_LEEWAY_SECS}), "s");
        assert!(plain.verify(Some(&within_leeway), 1_000, "a").is_ok());
        assert!(plain.verify(Some(&no_aud), 1_000, "a").is_ok());
    }

    #[test]
    fn dev_mode_admits_anonymous_users() {
        let verifier = Verifier::new(None);
        assert!(verifier.is_dev());
        let got = verifier.verify(None, 1, "anon-7").expect("dev");
        assert_eq!(got.sub, "anon-7");
        assert!(got.allows("anything"));
        assert!(Verifier::new(Some("")).is_dev());
        // Dev mode does not check signatures: an unsigned (or wrongly signed) token is taken at
        // its word. docs/protocol.md says so.
        let unsigned = format!("{}.", sign(&claims(2_000), "x").rsplit_once('.').map_or("", |(head, _)| head));
        assert_eq!(verifier.verify(Some(&unsigned), 1, "a").map(|c| c.sub), Ok("alice".into()));
    }
}
