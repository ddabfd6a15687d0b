//! A Raft peer's message as the engine receives it (first byte: the sender).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    faultline_node::fuzzing::engine_message(faultline_node::config::Protocol::Raft, data);
});
