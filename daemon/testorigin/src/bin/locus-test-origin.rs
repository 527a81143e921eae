//! `locus-test-origin`: the simulated Hub as a process, for tests in other languages and for
//! benchmarks against other clients (`huggingface_hub`, `hf_transfer`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use locus_testorigin::{model, Faults, HubSim, SimOptions};

#[derive(Parser)]
#[command(about = "A local Hugging Face Hub for tests and benchmarks")]
struct Args {
    /// Address of the Hub.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// A repo from a folder: ORG/NAME=DIR (datasets: datasets/ORG/NAME=DIR).
    #[arg(long)]
    repo: Vec<String>,
    /// A repo of random files: ORG/NAME=COUNTxSIZE, e.g. bench/model=3x128MiB.
    #[arg(long)]
    random: Vec<String>,
    /// A generated safetensors model: ORG/NAME=SIZE[xSHARDS], e.g. demo/tiny=64MiBx2.
    #[arg(long)]
    model: Vec<String>,
    /// A synthetic dataset whose bytes are made as they are read (any size, no memory held):
    /// ORG/NAME=COUNTxSIZE[-SIZE], e.g. datasets/bench/images=100000x10KiB-100KiB.
    #[arg(long)]
    generated: Vec<String>,
    /// Per-response bandwidth cap, e.g. 12MB (per second).
    #[arg(long)]
    throttle: Option<String>,
    /// Delay before answering each request, in milliseconds (a far-away origin's latency).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Require this token on the Hub (on every repo, or on the `--gated` ones).
    #[arg(long)]
    token: Option<String>,
    /// Another token the Hub accepts (another user's).
    #[arg(long)]
    also_token: Vec<String>,
    /// A gated repo (ORG/NAME or datasets/ORG/NAME): its files need a token, its info and
    /// tree are public, and every repo not named is public.
    #[arg(long)]
    gated: Vec<String>,
    /// Files at least this large go through LFS.
    #[arg(long, default_value = "64KiB")]
    lfs_threshold: String,
}

fn size(s: &str) -> anyhow::Result<u64> {
    locus_core::parse_size(s).map_err(anyhow::Error::msg)
}

fn split_repo(spec: &str) -> anyhow::Result<(&'static str, String, String)> {
    let (repo, rest) = spec.split_once('=').context("expected ORG/NAME=…")?;
    match repo.strip_prefix("datasets/") {
        Some(r) => Ok(("dataset", r.to_string(), rest.to_string())),
        None => Ok(("model", repo.to_string(), rest.to_string())),
    }
}

fn read_dir(root: &Path, dir: &Path, out: &mut Vec<(String, Bytes)>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let p: PathBuf = e.path();
        if e.file_type()?.is_dir() {
            read_dir(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root)?.to_string_lossy().replace('\\', "/");
            out.push((rel, Bytes::from(std::fs::read(&p)?)));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let faults = Faults {
        throttle_bps: a.throttle.as_deref().map(size).transpose()?.unwrap_or(0),
        token: a.token.clone(),
        tokens: a.also_token.clone(),
        gated: a.gated.clone(),
        delay_ms: a.delay_ms,
        ..Faults::default()
    };
    let sim = HubSim::start(SimOptions {
        listen: a.listen,
        lfs_threshold: size(&a.lfs_threshold)?,
        faults,
        ..SimOptions::default()
    })
    .await?;
    for spec in &a.repo {
        let (kind, repo, dir) = split_repo(spec)?;
        let mut files = Vec::new();
        read_dir(Path::new(&dir), Path::new(&dir), &mut files)?;
        sim.commit(kind, &repo, files);
    }
    for (i, spec) in a.random.iter().enumerate() {
        let (kind, repo, rest) = split_repo(spec)?;
        let (n, sz) = rest.split_once('x').context("expected COUNTxSIZE")?;
        let n: usize = n.parse()?;
        let sz = size(sz)? as usize;
        let files = (0..n)
            .map(|k| {
                (
                    format!("shard-{k:05}.bin"),
                    model::random_bytes((i * 1000 + k) as u64, sz),
                )
            })
            .collect();
        sim.commit(kind, &repo, files);
    }
    for spec in &a.model {
        let (kind, repo, rest) = split_repo(spec)?;
        let (sz, shards) = rest.split_once('x').unwrap_or((&rest, "2"));
        let shards: usize = shards.parse()?;
        if shards == 0 {
            bail!("a model needs at least one shard");
        }
        sim.commit(kind, &repo, model::generate_model(size(sz)?, shards, 1));
    }
    for (i, spec) in a.generated.iter().enumerate() {
        let (kind, repo, rest) = split_repo(spec)?;
        let (n, sizes) = rest.split_once('x').context("expected COUNTxSIZE[-SIZE]")?;
        let (lo, hi) = sizes.split_once('-').unwrap_or((sizes, sizes));
        sim.commit_generated(kind, &repo, n.parse()?, size(lo)?..=size(hi)?, i as u64);
    }
    println!("ready {}", sim.url());
    // The same repos over S3 (bucket ORG, keys NAME/PATH), on a line of its own.
    println!("s3 {}", sim.s3_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
