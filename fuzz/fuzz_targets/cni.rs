//! Arbitrary bytes as a CNI plugin's stdout; see `keelson_fuzz::check_cni`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_cni(data));
