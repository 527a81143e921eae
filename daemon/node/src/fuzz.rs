//! Entry points for the cargo-fuzz targets (`fuzz/fuzz_targets/`): everything a peer can send,
//! from arbitrary bytes, through the same code a node runs. Not an API.

use std::io::Read;

use locus_grpc::v1 as pb;
use prost::Message;

use crate::peer::{file_from_pb, server, wire};

/// A chunk wire reader's view of a server's answer: the first 16 bytes pick the chunk's
/// length and offset, the rest is a sequence of frames (heartbeats, an error, a header) read
/// as the reader reads them, up to the chunk's bytes.
pub fn wire_frames(data: &[u8]) {
    let word = |i: usize| {
        let mut b = [0u8; 8];
        if let Some(s) = data.get(i..i + 8) {
            b.copy_from_slice(s);
        }
        u64::from_be_bytes(b)
    };
    let (len, offset) = (word(0), word(8));
    let mut c = std::io::Cursor::new(data.get(16..).unwrap_or_default());
    loop {
        let mut kind = [0u8; 1];
        if !matches!(c.read(&mut kind), Ok(1)) {
            return;
        }
        match wire::answer(kind[0], &mut c, "fuzz", len, offset) {
            Ok(None) => continue,
            Ok(Some(_)) | Err(_) => return,
        }
    }
}

/// Every protobuf message a peer can send, decoded from `data` and checked as a node checks
/// it before using it: listing entries (`file_from_pb`), a chunk request's file reference,
/// resolve, list and warm requests, and a member's answer on the chunks it holds.
pub fn peer_messages(data: &[u8]) {
    if let Ok(f) = pb::PeerFile::decode(data) {
        let _ = file_from_pb(f);
    }
    if let Ok(l) = pb::PeerListResponse::decode(data) {
        for f in l.files {
            let _ = file_from_pb(f);
        }
    }
    if let Ok(r) = pb::ChunkRequest::decode(data) {
        if let Some(f) = r.file {
            if let Ok((_, Some(ns))) = server::parse_ref(&f) {
                let _ = server::path_in(&ns, &f.uri);
            }
        }
    }
    if let Ok(r) = pb::ResolveRequest::decode(data) {
        let _ = server::namespace(&r.namespace);
        let _ = server::revision("revision", &r.revision);
    }
    if let Ok(r) = pb::PeerListRequest::decode(data) {
        let _ = server::namespace(&r.namespace);
        let _ = server::revision("revision_id", &r.revision_id);
    }
    if let Ok(r) = pb::HoldsResponse::decode(data) {
        let n = r.chunks.len();
        crate::coverage::merge(&mut vec![Vec::new(); n], &vec![1000; n], r.chunks);
    }
    if let Ok(r) = pb::PeerWarmRequest::decode(data) {
        for u in r.uris {
            let _ = locus_core::LocusUri::parse(&u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A header frame for a chunk of `len` bytes, with or without a hash step.
    fn header(len: u64, step: bool) -> Vec<u8> {
        let piece = pb::ChunkPiece {
            header: true,
            length: len,
            sha256_before: if step { vec![1; 32] } else { vec![] },
            sha256_after: if step { vec![2; 32] } else { vec![] },
            ..Default::default()
        };
        let body = piece.encode_to_vec();
        let mut f = vec![wire::HEADER];
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        f
    }

    proptest! {
        // The fuzz targets' code paths on every test run, from random and from nearly valid
        // inputs (a valid header with bytes flipped); cargo-fuzz goes deeper by hand.
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn no_peer_input_panics(data in proptest::collection::vec(any::<u8>(), 0..600),
                                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                                len in 0u64..1 << 24, step in any::<bool>()) {
            wire_frames(&data);
            peer_messages(&data);
            let mut near = len.to_be_bytes().to_vec();
            near.extend_from_slice(&0u64.to_be_bytes());
            near.push(wire::BEAT);
            near.extend_from_slice(&header(len, step));
            for (at, x) in flips {
                let n = near.len();
                near[at % n] ^= x;
            }
            wire_frames(&near);
            peer_messages(&near[17..]);
        }
    }
}
