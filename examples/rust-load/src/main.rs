//! Opens a checkpoint with the `locus-loader` crate and prints every tensor's name, dtype, shape,
//! byte length and a checksum, then the totals.
//!
//! ```text
//! locus-example-rust-load TARGET [--socket PATH]
//!   TARGET: a .safetensors file, a checkpoint folder, or a URI such as hf://ORG/NAME@REV
//! ```
//!
//! A URI is made local by the node's daemon (fetched, verified, cached) and the cache files are
//! mapped as they are: `Tensor::data()` is a slice of that mapping, so nothing is copied and a
//! page is read only when the checksum touches it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use locus_loader::{Checkpoint, OpenOptions};

const USAGE: &str = "usage: locus-example-rust-load TARGET [--socket PATH]";

fn main() {
    if let Err(e) = run() {
        // One line a person can act on, as the `locus` CLI does.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Bad usage exits 2, as `locus` does.
fn usage_error(msg: &str) -> ! {
    eprintln!("error: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn run() -> Result<()> {
    let mut target = None;
    let mut opts = OpenOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--socket" {
            let Some(s) = args.next() else {
                usage_error("--socket needs a PATH");
            };
            opts.socket = Some(PathBuf::from(s));
        } else if let Some(s) = a.strip_prefix("--socket=") {
            opts.socket = Some(PathBuf::from(s));
        } else if a == "-h" || a == "--help" {
            println!("{USAGE}");
            return Ok(());
        } else if a.starts_with('-') {
            usage_error(&format!("unknown flag {a}"));
        } else if target.replace(a).is_some() {
            usage_error("more than one TARGET");
        }
    }
    let Some(target) = target else {
        usage_error("no TARGET");
    };

    let ckpt =
        Checkpoint::open_with(&target, &opts).with_context(|| format!("opening {target}"))?;
    for f in ckpt.files() {
        println!("shard {}", f.path().display());
    }
    let (mut count, mut total) = (0usize, 0u64);
    for name in ckpt.names() {
        let t = ckpt.tensor(name)?;
        // A view of the file's mapping, not a copy.
        let data: &[u8] = t.data();
        // Sum of the bytes mod 2^32: cheap, touches every page, and easy to check from Python.
        let sum = data
            .iter()
            .fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)));
        println!(
            "tensor {name} {} {:?} {} sum32={sum:08x}",
            t.dtype(),
            t.shape(),
            data.len()
        );
        count += 1;
        total += data.len() as u64;
    }
    println!(
        "total {count} tensors, {total} bytes in {} shards",
        ckpt.files().len()
    );
    Ok(())
}
