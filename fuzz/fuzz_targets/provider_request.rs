#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acr_helper::fuzz::provider_request(data));
