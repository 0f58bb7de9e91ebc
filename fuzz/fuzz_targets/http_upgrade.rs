//! libFuzzer target: `linkcast_fuzz::http_upgrade` (the checks live in ../src/lib.rs, shared with
//! core/tests/fuzz_regressions.rs, which replays seeds and past crashes through the same function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| linkcast_fuzz::http_upgrade(data));
