//! Arbitrary bytes as a SPDY connection's input; see `keelson_fuzz::check_spdy`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_spdy(data));
