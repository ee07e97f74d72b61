//! Arbitrary bytes as a node's connection to a monitor's attach socket; see
//! `keelson_fuzz::check_attach`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_attach(data));
