//! Arbitrary bytes as a tunnel frame, to a server or to an agent; see
//! `keelson_fuzz::check_tunnel`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_tunnel(data));
