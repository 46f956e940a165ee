#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringrelay::fuzzing::search_query(data));
