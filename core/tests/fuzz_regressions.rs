//! Fuzzing's findings, kept: every committed seed (`fuzz/seeds/<target>/`) and every input that
//! once crashed a fuzz target or broke one of its invariants (`fuzz/regressions/<target>/`) goes
//! through the same check function the libFuzzer target runs (`fuzz/src/lib.rs`, included here
//! as a module), in the normal test command. The fuzzing itself (`scripts/fuzz`, cargo-fuzz) is
//! not part of the test command; see fuzz/README.md.
//!
//! The bugs fuzzing found in the parsers also have a plain test here that says what was wrong.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};

use linkcast_core::http_upgrade::{percent_decode, RequestHead};

/// The files of `fuzz/<kind>/<target>/`, sorted (none if the directory does not exist).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz").join(kind).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs every seed and regression input of `target` through `check`, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let seeds = inputs("seeds", target);
    assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ has no seeds");
    for path in seeds.iter().chain(&inputs("regressions", target)) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("fuzz input {} fails its check (above)", path.display());
        }
    }
}

#[test]
fn frame_decode_seeds_and_regressions() {
    replay("frame_decode", checks::frame_decode);
}

#[test]
fn ws_read_seeds_and_regressions() {
    replay("ws_read", checks::ws_read);
}

#[test]
fn http_upgrade_seeds_and_regressions() {
    replay("http_upgrade", checks::http_upgrade);
}

#[test]
fn json_ops_seeds_and_regressions() {
    replay("json_ops", checks::json_ops);
}

/// Found by `http_upgrade` (fuzz/regressions/http_upgrade/percent_sign_taken_as_hex):
/// `percent_decode` read `%+4` as the byte 0x04, because `u8::from_str_radix` accepts a leading
/// `+`. A `%` takes exactly two hex digits; anything else stays as it is.
#[test]
fn percent_decode_takes_two_hex_digits_only() {
    assert_eq!(percent_decode("%+4"), "% 4");
    assert_eq!(percent_decode("%-1%+f"), "%-1% f");
    assert_eq!(percent_decode("%2b%2B%41"), "++A");
    let head = RequestHead::parse(b"GET /ws?token=a%+4b HTTP/1.1\r\nHost: x\r\n\r\n").expect("valid head");
    assert_eq!(head.query_param("token").as_deref(), Some("a% 4b"));
}

/// Found by `http_upgrade` (fuzz/regressions/http_upgrade/leading_empty_line_parsed_past_scanner_end):
/// a head starting with an empty line. The scanner ends the head at the first `\r\n\r\n` (the
/// empty line itself) while httparse skips leading empty lines and parsed a request beyond it,
/// so the request was refused or served depending on whether the rest came in the same read.
/// Such a head is now always refused (400 "malformed HTTP request").
#[test]
fn a_head_starting_with_an_empty_line_is_refused_however_it_is_read() {
    use linkcast_core::http_upgrade::HeadScanner;
    let request = b"\r\n\r\nGET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(HeadScanner::default().scan(request), Some(4));
    assert_eq!(RequestHead::parse(&request[..4]), None, "the first read alone");
    assert_eq!(RequestHead::parse(request), None, "everything in one read");
    assert_eq!(RequestHead::parse(b"\nGET /ws HTTP/1.1\r\n\r\n"), None);
    assert!(RequestHead::parse(&request[4..]).is_some(), "the same head without the empty line");
}
