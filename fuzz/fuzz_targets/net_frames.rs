//! The p2p wire: length-prefixed frames as a peer's stream delivers them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let frames = faultline_net::read_frames(data, 1 << 20);
    assert!(frames.iter().all(|f| f.len() <= 1 << 20));
});
