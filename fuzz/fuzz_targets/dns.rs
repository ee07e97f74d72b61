//! Arbitrary bytes as a datagram to the cluster DNS; see `keelson_fuzz::check_dns`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_dns(data));
