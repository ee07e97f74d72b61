//! Arbitrary bytes as a `--datastore-endpoint` value, with each `--datastore-tls` setting; see
//! `keelson_fuzz::check_endpoint`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_endpoint(data));
