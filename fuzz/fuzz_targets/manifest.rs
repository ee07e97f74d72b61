//! Arbitrary bytes as a registry's manifest or index answer; see `keelson_fuzz::check_manifest`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_manifest(data));
