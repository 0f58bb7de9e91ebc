//! The signature of every hook request: `X-Linkcast-Signature: sha256=<hex>`, the lowercase hex
//! HMAC-SHA256 of the exact request body under `hooks.secret` (as GitHub's webhooks sign). The
//! backend recomputes it over the raw body before parsing, and compares in constant time.
//!
//! Pure functions, no I/O; used by `backend.rs` for both hooks.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub(crate) const SIGNATURE_HEADER: &str = "x-linkcast-signature";

/// `sha256=` followed by the lowercase hex HMAC-SHA256 of `body` keyed with `secret`.
pub(crate) fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_rfc_4231_test_vectors() {
        // RFC 4231, test case 2 (HMAC-SHA256).
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 4231, test case 1: a 20-byte key of 0x0b.
        assert_eq!(sign(&[0x0b; 20], b"Hi There"), "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        // RFC 4231, test case 6: a key longer than the block size is hashed first.
        assert_eq!(
            sign(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First"),
            "sha256=60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
