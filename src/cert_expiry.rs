//! `linkcast_tls_cert_expiry_timestamp_seconds{role}`: when the certificate a node serves
//! expires, for the "certificate expires in < 14 days" alert.
//!
//! [`export`] registers a scrape-time gauge (`telemetry::on_scrape`) that reads the certificate
//! the node presents right now ([`ServerCert::leaf`], so a SIGHUP reload shows at the next
//! scrape) and sets the gauge to its `notAfter` in Unix seconds. Only configured certificates
//! (`[tls] cert_file`) are exported; the self-signed QUIC certificate of a dev node is not.
//!
//! [`not_after`] walks just enough DER to reach `tbsCertificate.validity.notAfter` (RFC 5280
//! §4.1): no crate in the dependency tree exposes a certificate's validity (rustls-webpki keeps
//! it private), and this is a few dozen lines over a local file the node already parsed.

use std::sync::{Arc, Weak};

use crate::tls::ServerCert;

/// Exports the expiry of `cert` under `role` (`hub`, `link`) if it came from `[tls]` files.
pub(crate) fn export(role: &'static str, cert: &Arc<ServerCert>) {
    if !cert.is_configured() {
        return;
    }
    let gauge = metrics::gauge!("linkcast_tls_cert_expiry_timestamp_seconds", "role" => role);
    let cert: Weak<ServerCert> = Arc::downgrade(cert);
    let set = move || {
        let Some(cert) = cert.upgrade() else { return false };
        if let Some(seconds) = cert.leaf().and_then(|leaf| not_after(&leaf)) {
            gauge.set(seconds as f64);
        }
        true
    };
    set();
    crate::telemetry::on_scrape(set);
}

/// One DER element: (tag, contents, the bytes after it).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `notAfter` of an X.509 certificate (DER), seconds since the Unix epoch.
pub(crate) fn not_after(der: &[u8]) -> Option<u64> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = element(der)? else { return None };
    let (SEQUENCE, tbs, _) = element(certificate)? else { return None };
    let mut rest = tbs;
    // [0] EXPLICIT version (absent in v1 certificates).
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature algorithm, issuer.
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, validity, _) = element(rest)? else { return None };
    let after_not_before = element(validity)?.2;
    let (tag, time, _) = element(after_not_before)?;
    parse_time(tag, time)
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18).
fn parse_time(tag: u8, text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: u64 = text.get(..2)?.parse().ok()?;
            // RFC 5280: 50..99 are 19YY, 00..49 are 20YY.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (text.get(..4)?.parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |at: usize| -> Option<u64> { rest.get(at..at + 2)?.parse().ok() };
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm); `None` before 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 { year.checked_sub(1)? } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_of_an_rcgen_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2024, 1, 2);
        // 2049: UTCTime; 2051: GeneralizedTime (RFC 5280 switches at 2050).
        for (year, expected) in [(2049, 2_493_244_800u64), (2051, 2_556_316_800u64)] {
            params.not_after = rcgen::date_time_ymd(year, 1, 3);
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.clone().self_signed(&key).expect("cert");
            assert_eq!(not_after(cert.der()), Some(expected), "{year}-01-03T00:00:00Z");
        }
    }

    #[test]
    fn times_and_malformed_input() {
        assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(0x18, b"20000301120000Z"), Some(951_912_000));
        assert_eq!(parse_time(0x17, b"701301000000Z"), None, "month 13");
        assert_eq!(parse_time(0x17, b"7001010000Z"), None, "short");
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None, "length beyond the input");
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x02]), None, "truncated");
    }
}
