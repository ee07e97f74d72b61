//! Arbitrary bytes as a protobuf request body; see `keelson_fuzz::check_protobuf`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_fuzz::check_protobuf(data));
