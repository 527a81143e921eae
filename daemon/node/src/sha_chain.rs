//! SHA-256 in steps that can be checked apart: the hash state at chunk boundaries.
//!
//! SHA-256 runs its compression function over 64-byte blocks from a fixed initial state; the
//! state after the blocks of chunk k is where chunk k+1 starts. A node that checked a whole file
//! against its published digest knows the state at every chunk boundary and sends each chunk
//! (but the last) with the states before and after it. A reader checks each chunk's step on the
//! bytes as they arrive, in any order and on any core; the whole-file check then only confirms
//! that the steps chain from the initial state and hashes the last chunk to the end, where the
//! result must equal the published digest. Bytes that pass without being the origin's would
//! need a SHA-256 collision: the check is as strong as hashing the file in one pass, and runs
//! in parallel.

use sha2::digest::generic_array::GenericArray;

/// The eight words of a SHA-256 state.
pub type State = [u32; 8];

/// A chunk's step: the state before its bytes and the state after them.
pub type Step = [State; 2];

/// The initial state (FIPS 180-4, 5.3.3).
pub const IV: State = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Runs the compression function over `blocks` (whole 64-byte blocks; a partial tail is a bug
/// of the caller and is left out).
pub fn advance(state: &mut State, blocks: &[u8]) {
    let n = blocks.len() / 64;
    debug_assert_eq!(blocks.len() % 64, 0);
    // SAFETY: `GenericArray<u8, U64>` is `repr(transparent)` over `[u8; 64]` (alignment 1), and
    // the first `n * 64` bytes of `blocks` are in bounds and live as long as the borrow.
    let blocks: &[GenericArray<u8, sha2::digest::consts::U64>] =
        unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), n) };
    sha2::compress256(state, blocks);
}

/// A state as 32 bytes (big-endian words), for the wire.
pub fn to_bytes(s: &State) -> Vec<u8> {
    s.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// A state from the wire: exactly 32 bytes, else `None`.
pub fn from_bytes(b: &[u8]) -> Option<State> {
    if b.len() != 32 {
        return None;
    }
    let mut s = [0u32; 8];
    for (w, c) in s.iter_mut().zip(b.chunks_exact(4)) {
        *w = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    }
    Some(s)
}

/// SHA-256 of a byte stream whose state can be read at block boundaries and set from a
/// checked step.
#[derive(Clone)]
pub struct Chain {
    state: State,
    len: u64,
    buf: [u8; 64],
    buffered: usize,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            state: IV,
            len: 0,
            buf: [0; 64],
            buffered: 0,
        }
    }
}

impl Chain {
    /// Hashes `data` after the bytes so far.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buffered > 0 {
            let take = (64 - self.buffered).min(data.len());
            self.buf[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < 64 {
                return;
            }
            let block = self.buf;
            advance(&mut self.state, &block);
            self.buffered = 0;
        }
        let whole = data.len() / 64 * 64;
        advance(&mut self.state, &data[..whole]);
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// The state, when the bytes so far fill whole blocks.
    pub fn state(&self) -> Option<State> {
        (self.buffered == 0).then_some(self.state)
    }

    /// Takes a checked step of `n` bytes: the state becomes `step[1]`. Only when the state now
    /// is `step[0]` at a block boundary; returns whether it was taken.
    pub fn take_step(&mut self, step: &Step, n: u64) -> bool {
        if self.state() != Some(step[0]) || !n.is_multiple_of(64) {
            return false;
        }
        self.state = step[1];
        self.len += n;
        true
    }

    /// The digest (the stream's padding and length, FIPS 180-4, 5.1.1).
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let zeros = (119 - self.len % 64) % 64;
        let mut pad = [0u8; 64];
        pad[0] = 0x80;
        self.update(&pad[..1 + zeros as usize]);
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn equals_sha256_for_every_length_and_split() {
        for n in (0..300).chain([1000, 4095, 4096, 65_536, 100_003]) {
            let d = data(n, n as u64 + 1);
            let want: [u8; 32] = sha2::Sha256::digest(&d).into();
            for split in [0, 1, 63, 64, 65, n / 2, n] {
                let split = split.min(n);
                let mut c = Chain::default();
                c.update(&d[..split]);
                c.update(&d[split..]);
                assert_eq!(c.finish(), want, "length {n}, split {split}");
            }
        }
    }

    #[test]
    fn checked_steps_chain_to_the_digest_and_wrong_bytes_do_not() {
        let chunk = 4096;
        let d = data(chunk * 5 + 1234, 7);
        let want: [u8; 32] = sha2::Sha256::digest(&d).into();
        // The steps a node that hashed the whole file records.
        let mut c = Chain::default();
        let mut bounds = vec![c.state().unwrap()];
        for part in d.chunks(chunk).take(5) {
            c.update(part);
            bounds.push(c.state().unwrap());
        }
        let steps: Vec<Step> = bounds.windows(2).map(|w| [w[0], w[1]]).collect();
        // A reader checks each step on its own bytes, in any order.
        for (k, step) in steps.iter().enumerate().rev() {
            let mut s = step[0];
            advance(&mut s, &d[k * chunk..(k + 1) * chunk]);
            assert_eq!(s, step[1]);
        }
        // Then chains them and hashes the tail.
        let mut r = Chain::default();
        for s in &steps {
            assert!(r.take_step(s, chunk as u64));
        }
        r.update(&d[5 * chunk..]);
        assert_eq!(r.finish(), want);
        // A flipped byte changes the step's end; a step that does not start where the chain
        // stands is refused.
        let mut bad = d[..chunk].to_vec();
        bad[100] ^= 1;
        let mut s = steps[0][0];
        advance(&mut s, &bad);
        assert_ne!(s, steps[0][1]);
        let mut r = Chain::default();
        assert!(!r.take_step(&steps[1], chunk as u64));
        assert_eq!(from_bytes(&to_bytes(&steps[2][1])), Some(steps[2][1]));
        assert_eq!(from_bytes(&[0u8; 31]), None);
    }
}
