#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringrelay::fuzzing::framed_records(data));
