//! The Rust loader over a real daemon: a URI is made local, mapped, and every tensor equals what
//! the official `safetensors` crate reads from the origin's bytes.

mod common;

use common::*;
use locus_loader::{Checkpoint, ErrorKind, OpenOptions};

#[test]
fn checkpoint_from_a_uri_equals_the_origin() {
    let env = Env::new();
    let files = locus_testorigin::model::generate_model(3 << 20, 3, 8);
    env.sim.commit("model", "acme/llm", files.clone());
    let d = env.daemon("n", &[], &[]);
    let opts = OpenOptions {
        socket: Some(d.socket.clone()),
    };
    let ckpt = Checkpoint::open_with("hf://acme/llm", &opts).unwrap();
    let mut seen = 0;
    for (path, bytes) in files.iter().filter(|(p, _)| p.ends_with(".safetensors")) {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        for (name, view) in st.tensors() {
            let t = ckpt.tensor(&name).unwrap();
            assert_eq!(t.dtype(), view.dtype(), "{path}/{name}");
            assert_eq!(t.shape(), view.shape());
            assert_eq!(t.data(), view.data());
            seen += 1;
        }
    }
    assert_eq!(seen, ckpt.names().count());
    // A tensor keeps its mapping alive after the checkpoint is gone.
    let name = ckpt.names().next().unwrap().to_string();
    let t = ckpt.tensor(&name).unwrap();
    let copy = t.data().to_vec();
    drop(ckpt);
    assert_eq!(t.data(), copy.as_slice());

    let e = Checkpoint::open_with("hf://acme/none", &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = Checkpoint::open_with("hf://acme/llm/..", &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    let e = Checkpoint::open_with(
        "hf://acme/llm",
        &OpenOptions {
            socket: Some(env.path("none.sock")),
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[test]
fn checkpoint_from_a_folder_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = locus_testorigin::model::generate_model(1 << 20, 2, 9);
    for (p, b) in &files {
        std::fs::write(dir.path().join(p), b).unwrap();
    }
    let ckpt = Checkpoint::open(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(ckpt.files().len(), 2);
    assert!(ckpt.tensor("model.rope_theta").unwrap().shape().is_empty());
    assert_eq!(ckpt.tensor("model.empty").unwrap().data().len(), 0);
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\0\0\0\0\0\0\0{\"a\":1}").unwrap();
    let e = Checkpoint::open(bad.to_str().unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
}
