#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringrelay::fuzzing::compressed_message(data));
