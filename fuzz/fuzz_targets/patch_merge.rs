//! Arbitrary bytes as a target object and a merge patch; see `keelson_fuzz::check`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check(keelson_fuzz::Kind::Merge, data));
