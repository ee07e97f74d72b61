//! Arbitrary bytes as a join token (`--token`, a token file); see `keelson_fuzz::check_token`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_token(data));
