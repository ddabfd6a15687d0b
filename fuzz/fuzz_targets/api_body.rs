//! A `POST /v1/tx` or `/v1/txs` body.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| faultline_node::fuzzing::api_body(data));
