//! A Hugging Face Hub that runs in-process (or as `locus-test-origin`), for the demo, tests and
//! benchmarks.
//!
//! It speaks the parts of the Hub's HTTP API that clients use (`/api/{models,datasets}/…`,
//! `revision/`, `tree/` with pagination, `resolve/` with `Range`, `X-Repo-Commit`, `ETag`,
//! `X-Linked-Etag`, `X-Linked-Size`, `X-Error-Code`), and sends LFS files through a redirect to a
//! "CDN" on a second loopback address, as the real Hub does. On demand it throttles each response
//! (the Hub's CDN caps each connection), fails requests with a status (and `Retry-After`), cuts
//! bodies short, corrupts bytes, delays, and asks for a token; it counts requests and bytes by
//! kind so that tests can prove what they claim. Control over HTTP: `GET /_sim/stats`,
//! `POST /_sim/faults`, `POST /_sim/reset`.
//!
//! The same repos are served over S3 on a third address ([`HubSim::s3_url`]): bucket `ORG`,
//! keys `NAME/PATH`, for tests and benchmarks of `s3://` at any size (see `s3.rs`).

pub mod model;
mod s3;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha1::Digest as _;

pub use server::HubSim;

/// One file in a commit.
#[derive(Debug)]
pub struct SimFile {
    /// Content, when stored (empty for a generated file).
    pub data: Bytes,
    /// A generated file: its seed and size; its bytes are made when read (no memory held).
    pub generated: Option<(u64, u64)>,
    /// SHA-256 of the content (the LFS oid).
    pub sha256: String,
    /// Git blob id.
    pub git_oid: String,
    /// Served through the LFS redirect.
    pub lfs: bool,
}

impl SimFile {
    /// A file; stored in LFS when at least `lfs_threshold` bytes.
    pub fn new(data: Bytes, lfs_threshold: u64) -> SimFile {
        let sha256 = hex::encode(sha2::Sha256::digest(&data));
        let lfs = data.len() as u64 >= lfs_threshold;
        SimFile {
            git_oid: locus_core::git_blob_id(&data),
            data,
            generated: None,
            sha256,
            lfs,
        }
    }

    /// A file of `size` bytes generated from `seed` ([`model::generated_bytes`]), hashed once
    /// here and never held in memory.
    pub fn generated(seed: u64, size: u64, lfs_threshold: u64) -> SimFile {
        let mut sha256 = sha2::Sha256::new();
        let mut sha1 = sha1::Sha1::new();
        sha1.update(format!("blob {size}\0").as_bytes());
        let mut at = 0;
        while at < size {
            let piece = model::generated_bytes(seed, at..(at + (1 << 20)).min(size));
            sha256.update(&piece);
            sha1.update(&piece);
            at += piece.len() as u64;
        }
        SimFile {
            data: Bytes::new(),
            generated: Some((seed, size)),
            sha256: hex::encode(sha256.finalize()),
            git_oid: hex::encode(sha1.finalize()),
            lfs: size >= lfs_threshold,
        }
    }

    /// The `oid` and `pointerSize` the Hub's tree lists for it: the git blob id of its
    /// content, or for an LFS file that of its pointer (what git holds).
    pub fn tree_oid(&self) -> (String, Option<usize>) {
        match self.lfs {
            true => {
                let p = locus_core::lfs_pointer(&self.sha256, self.size());
                (locus_core::git_blob_id(p.as_bytes()), Some(p.len()))
            }
            false => (self.git_oid.clone(), None),
        }
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        match self.generated {
            Some((_, size)) => size,
            None => self.data.len() as u64,
        }
    }

    /// Bytes `range` of its content (`range` within the size).
    pub fn slice(&self, range: std::ops::Range<u64>) -> Bytes {
        match self.generated {
            Some((seed, _)) => model::generated_bytes(seed, range),
            None => self.data.slice(range.start as usize..range.end as usize),
        }
    }
}

type Tree = Arc<BTreeMap<String, Arc<SimFile>>>;

#[derive(Default)]
struct Repo {
    branches: HashMap<String, String>,
    commits: HashMap<String, Tree>,
}

/// What to get wrong, and how often. Counts go down as faults fire.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fail the next `count` requests of `kind` with `status`.
    pub fail: Vec<FailRule>,
    /// Cut the next `count` data bodies (CDN or resolve) after `after_bytes`.
    pub cut: Option<CutRule>,
    /// Flip one byte in the next `n` data bodies.
    pub corrupt: u32,
    /// Delay every request by this many milliseconds.
    pub delay_ms: u64,
    /// Per-response bandwidth cap in bytes per second (0 = none).
    pub throttle_bps: u64,
    /// Require `Authorization: Bearer <token>` on the Hub (not the CDN): on every repo, or
    /// only on those in `gated`.
    pub token: Option<String>,
    /// More tokens the Hub accepts where it asks for one (other users').
    pub tokens: Vec<String>,
    /// Repos that are gated (`ORG/NAME`, or `datasets/ORG/NAME`): their info and tree are
    /// public (`"gated": "auto"`), their files and `auth-check` need a token. When empty, a
    /// `token` guards every repo and every call.
    pub gated: Vec<String>,
}

/// A failure rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailRule {
    /// `api`, `resolve`, `cdn`, `s3` or `any`.
    pub kind: String,
    /// HTTP status to answer.
    pub status: u16,
    /// How many requests.
    pub count: u32,
    /// `Retry-After` seconds.
    #[serde(default)]
    pub retry_after: Option<u32>,
}

/// A body-cutting rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CutRule {
    /// How many bodies.
    pub count: u32,
    /// Bytes sent before the cut.
    pub after_bytes: u64,
}

/// Counters, by kind of request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Requests by kind: `api_info`, `api_revision`, `api_tree`, `resolve` (GETs answered
    /// with bytes or an error), `resolve_redirect` (GETs answered with the CDN redirect),
    /// `resolve_head`, `cdn`, `cdn_head`, `failed`.
    pub requests: BTreeMap<String, u64>,
    /// Body bytes sent by `resolve` and `cdn` GETs.
    pub data_bytes: u64,
    /// Body bytes of API answers, by kind (`api_info`, `api_revision`, `api_tree`, ...): what
    /// metadata costs the Hub.
    #[serde(default)]
    pub api_bytes: BTreeMap<String, u64>,
    /// Requests to the CDN that carried an `Authorization` header (must stay 0).
    pub cdn_authorized: u64,
    /// Requests that presented the right token.
    pub authorized: u64,
}

impl Stats {
    /// Requests of one kind.
    pub fn get(&self, kind: &str) -> u64 {
        self.requests.get(kind).copied().unwrap_or(0)
    }

    /// Data requests (GETs that send file bytes).
    pub fn data_requests(&self) -> u64 {
        self.get("resolve") + self.get("cdn")
    }
}

struct State {
    repos: RwLock<HashMap<(String, String), Repo>>,
    faults: Mutex<Faults>,
    stats: Arc<Mutex<Stats>>,
    lfs_threshold: u64,
    page_size: usize,
    hub_url: String,
    cdn_url: String,
}

/// Settings of a simulated Hub.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Address of the Hub (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
    /// Files at least this large go through LFS and the CDN.
    pub lfs_threshold: u64,
    /// Entries per `tree` page.
    pub page_size: usize,
    /// Faults from the start.
    pub faults: Faults,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            lfs_threshold: 64 << 10,
            page_size: 1000,
            faults: Faults::default(),
        }
    }
}

/// The path of file `i` of a synthetic dataset ([`HubSim::commit_generated`]).
pub fn generated_name(i: u64) -> String {
    format!("{:04}/{i:08}.bin", i / 1000)
}

fn fake_commit(repo: &str, files: &BTreeMap<String, Arc<SimFile>>, n: usize) -> String {
    let mut s = sha1::Sha1::new();
    s.update(repo.as_bytes());
    s.update(n.to_le_bytes());
    for (p, f) in files {
        s.update(p.as_bytes());
        s.update(f.git_oid.as_bytes());
    }
    hex::encode(s.finalize())
}

impl HubSim {
    /// Commits `files` (path → content) as the whole tree of `repo_id` on branch `main` and
    /// returns the new commit. `kind` is `model` or `dataset`.
    pub fn commit(&self, kind: &str, repo_id: &str, files: Vec<(String, Bytes)>) -> String {
        self.commit_to(kind, repo_id, "main", files)
    }

    /// Commits to `branch` (or moves a tag name).
    pub fn commit_to(
        &self,
        kind: &str,
        repo_id: &str,
        branch: &str,
        files: Vec<(String, Bytes)>,
    ) -> String {
        let st = self.state();
        let tree: BTreeMap<_, _> = files
            .into_iter()
            .map(|(p, d)| (p, Arc::new(SimFile::new(d, st.lfs_threshold))))
            .collect();
        self.commit_tree(kind, repo_id, branch, tree)
    }

    /// Commits a synthetic dataset of `count` files to `main`: `NNNN/NNNNNNNN.bin`, a thousand
    /// per folder, each of a size in `sizes` and with bytes generated from the seed and its
    /// number, so that no byte is held in memory ([`SimFile::generated`]).
    pub fn commit_generated(
        &self,
        kind: &str,
        repo_id: &str,
        count: u64,
        sizes: std::ops::RangeInclusive<u64>,
        seed: u64,
    ) -> String {
        let lfs = self.state().lfs_threshold;
        let (lo, hi) = (*sizes.start(), (*sizes.end()).max(*sizes.start()));
        let tree: BTreeMap<_, _> = (0..count)
            .map(|i| {
                let file_seed = seed.wrapping_mul(1_000_003).wrapping_add(i);
                let span = hi - lo + 1;
                let size = lo
                    + model::generated_bytes(file_seed ^ 0x5bd1_e995, 0..8)
                        .iter()
                        .fold(0u64, |a, b| a << 8 | *b as u64)
                        % span;
                let name = generated_name(i);
                (name, Arc::new(SimFile::generated(file_seed, size, lfs)))
            })
            .collect();
        self.commit_tree(kind, repo_id, "main", tree)
    }

    fn commit_tree(
        &self,
        kind: &str,
        repo_id: &str,
        branch: &str,
        tree: BTreeMap<String, Arc<SimFile>>,
    ) -> String {
        let st = self.state();
        let mut repos = st.repos.write().unwrap_or_else(|p| p.into_inner());
        let repo = repos
            .entry((kind.to_string(), repo_id.to_string()))
            .or_default();
        let sha = fake_commit(repo_id, &tree, repo.commits.len());
        repo.commits.insert(sha.clone(), Arc::new(tree));
        repo.branches.insert(branch.to_string(), sha.clone());
        sha
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.state()
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        *self.state().stats.lock().unwrap_or_else(|p| p.into_inner()) = Stats::default();
    }

    /// Replaces the faults.
    pub fn set_faults(&self, f: Faults) {
        *self
            .state()
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = f;
    }

    /// The faults still armed.
    pub fn faults(&self) -> Faults {
        self.state()
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Content of a file at a branch or commit, for comparisons.
    pub fn file(&self, kind: &str, repo_id: &str, rev: &str, path: &str) -> Option<Bytes> {
        let st = self.state();
        let repos = st.repos.read().unwrap_or_else(|p| p.into_inner());
        let repo = repos.get(&(kind.to_string(), repo_id.to_string()))?;
        let sha = repo.branches.get(rev).cloned().unwrap_or(rev.to_string());
        repo.commits
            .get(&sha)?
            .get(path)
            .map(|f| f.slice(0..f.size()))
    }
}
