//! Arbitrary bytes as the server's config file; see `keelson_fuzz::check_config`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_config(data));
