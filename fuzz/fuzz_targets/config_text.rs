//! cluster.toml, node.toml and key file text.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| faultline_node::fuzzing::config_text(data));
