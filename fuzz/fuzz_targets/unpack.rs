//! Arbitrary bytes as a layer blob (tar, gzip or zstd); see `keelson_fuzz::check_unpack`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_unpack(data));
