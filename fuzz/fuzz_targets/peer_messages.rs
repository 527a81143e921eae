//! Fuzzes `locus_node::fuzz::peer_messages`: no input a peer sends may panic a node.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    locus_node::fuzz::peer_messages(data);
});
