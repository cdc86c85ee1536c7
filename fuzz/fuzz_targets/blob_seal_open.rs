#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lifeboat_fuzz::blob_seal_open(data));
