//! Arbitrary bytes as a `?labelSelector=` and `?fieldSelector=` pair, and as `--node-label` and
//! `--node-taint` values; see `keelson_fuzz::check_selector`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_selector(data));
