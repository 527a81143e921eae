//! Arbitrary bytes as a safetensors file: the header parser must return Ok or Err, never panic,
//! and every range it accepts must lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = locus_loader::parse_header(data) {
        for (_, t) in &h.tensors {
            assert!(t.range.start <= t.range.end && t.range.end <= data.len());
            assert!(t.range.start >= h.data_start);
        }
    }
});
