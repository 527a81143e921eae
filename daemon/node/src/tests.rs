//! The read path in-process, over an in-memory origin wrapped in a fault injector.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use locus_core::{LocusUri, Namespace, RemoteFile};
use locus_origin::faulty::FaultyOrigin;
use locus_origin::{ByteStream, Origin, OriginError, RetryPolicy};
use locus_store::Store;

use crate::{Node, NodeConfig, WarmProgress};

#[derive(Default)]
struct MemOrigin {
    files: HashMap<String, Bytes>,
    /// Reads wait for a permit here, when set.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    /// The second half of each read waits for a permit here, when set.
    hold: Option<Arc<tokio::sync::Semaphore>>,
    /// Each resolve takes a permit for good here, when set.
    resolve_gate: Option<Arc<tokio::sync::Semaphore>>,
    /// The digests listed, by path (none for the rest).
    digests: HashMap<String, locus_core::Digest>,
}

#[async_trait]
impl Origin for MemOrigin {
    async fn resolve(&self, _ns: &Namespace, _rev: &str) -> Result<String, OriginError> {
        if let Some(g) = &self.resolve_gate {
            if let Ok(p) = g.acquire().await {
                p.forget();
            }
        }
        Ok("c".repeat(40))
    }

    async fn list(&self, ns: &Namespace, rev: &str) -> Result<locus_core::Listing, OriginError> {
        Ok(self
            .files
            .iter()
            .map(|(p, b)| RemoteFile {
                uri: format!("{ns}@{rev}/{p}"),
                path: p.clone(),
                size: b.len() as u64,
                key: format!("mem:{p}"),
                locator: p.clone(),
                digest: self.digests.get(p).cloned(),
                listed: None,
            })
            .collect::<locus_core::Listing>())
    }

    async fn read(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, OriginError> {
        if let Some(g) = &self.gate {
            let _ = g.acquire().await;
        }
        let b = self.files[&file.locator].slice(range.start as usize..range.end as usize);
        // Two pieces, so a write batch spans several network reads.
        let mid = b.len() / 2;
        let (first, second) = (b.slice(..mid), b.slice(mid..));
        let hold = self.hold.clone();
        let second = futures::stream::once(async move {
            if let Some(h) = hold {
                let _ = h.acquire().await;
            }
            Ok(second)
        });
        Ok(futures::stream::iter([Ok(first)]).chain(second).boxed())
    }
}

fn node(data: Bytes, fail: u32) -> (Arc<Node>, Arc<FaultyOrigin<MemOrigin>>, tempfile::TempDir) {
    gated_node(data, fail, None)
}

fn gated_node(
    data: Bytes,
    fail: u32,
    gate: Option<Arc<tokio::sync::Semaphore>>,
) -> (Arc<Node>, Arc<FaultyOrigin<MemOrigin>>, tempfile::TempDir) {
    origin_node(
        MemOrigin {
            files: [("w.bin".to_string(), data)].into(),
            gate,
            hold: None,
            resolve_gate: None,
            digests: HashMap::new(),
        },
        fail,
    )
}

fn origin_node(
    origin: MemOrigin,
    fail: u32,
) -> (Arc<Node>, Arc<FaultyOrigin<MemOrigin>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let origin = FaultyOrigin::new(origin);
    origin.fail_reads.store(fail, Ordering::SeqCst);
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let cfg = NodeConfig {
        chunk_size: 64 << 10,
        retry: RetryPolicy {
            attempts: 4,
            base: std::time::Duration::from_millis(1),
            cap: std::time::Duration::from_millis(5),
        },
        ..NodeConfig::default()
    };
    (Node::new(origin.clone(), store, cfg), origin, dir)
}

/// A node over `origin` whose metadata TTL is `ttl`.
fn ttl_node(
    origin: Arc<FaultyOrigin<MemOrigin>>,
    ttl: std::time::Duration,
) -> (Arc<Node>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        metadata_ttl: ttl,
        ..NodeConfig::default()
    };
    let node = Node::new(origin, Store::open(dir.path(), 1 << 30).unwrap(), cfg);
    (node, dir)
}

fn data() -> Bytes {
    Bytes::from(
        (0..1_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_share_fetches_and_failures_are_retried() {
    let (node, origin, _dir) = node(data(), 3);
    let uri = LocusUri::parse("hf://o/n/w.bin").unwrap();
    let file = node.resolve_file(&uri).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let node = node.clone();
            let file = file.clone();
            tokio::spawn(async move {
                let p = WarmProgress::default();
                let h = node.ensure_file(&file, &p).await.unwrap();
                let mut out = Vec::new();
                for idx in 0..h.layout().count() {
                    let buf = h
                        .checked_bytes(idx, std::time::Duration::ZERO)
                        .unwrap()
                        .expect("chunk stored and right");
                    out.extend_from_slice(&buf);
                }
                out
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), data().to_vec());
    }
    let chunks = 1_000_000u64.div_ceil(64 << 10);
    // Each chunk read once, plus the three injected failures.
    assert_eq!(origin.reads.load(Ordering::SeqCst), chunks + 3);
    assert_eq!(
        node.counters().origin_bytes.load(Ordering::SeqCst),
        1_000_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_say_whether_every_chunk_asked_for_was_stored_before() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (node, origin, _dir) = gated_node(data(), 0, Some(gate.clone()));
    let uri = LocusUri::parse("hf://o/n/w.bin").unwrap();
    let file = node.resolve_file(&uri).await.unwrap();
    let seen = |range: Range<u32>| {
        let (node, file) = (node.clone(), file.clone());
        tokio::spawn(async move { node.ensure_chunks_seen(&file, range).await.unwrap().1 })
    };
    // Two readers of a chunk being fetched: one fetches, the other joins; neither hit.
    let (a, b) = (seen(5..6), seen(5..6));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    gate.add_permits(1000);
    assert!(!a.await.unwrap() && !b.await.unwrap());
    assert_eq!(origin.reads.load(Ordering::SeqCst), 1);
    assert!(seen(5..6).await.unwrap(), "stored before");
    assert!(!seen(4..6).await.unwrap(), "chunk 4 fetched now");
    assert!(seen(4..6).await.unwrap());
    // 16 chunks: a range past the end is clamped; one wholly past it asks for nothing.
    assert!(!seen(15..40).await.unwrap());
    assert!(seen(15..40).await.unwrap());
    assert!(!seen(40..50).await.unwrap());
    assert!(!seen(5..5).await.unwrap(), "nothing asked for");
}

#[tokio::test]
async fn persistent_failures_surface_as_errors() {
    let (node, _origin, _dir) = node(data(), 100);
    let uri = LocusUri::parse("hf://o/n/w.bin").unwrap();
    let file = node.resolve_file(&uri).await.unwrap();
    let err = node
        .ensure_file(&file, &WarmProgress::default())
        .await
        .err()
        .expect("fails");
    assert!(err.to_string().contains("injected fault"), "{err}");
    // Fetches of other chunks may still be failing in the background; each gives its
    // reservation back when it ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.store().stats().used != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "failed chunks give back their reservation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(matches!(
        node.resolve(&LocusUri::parse("hf://o/n/nope").unwrap())
            .await,
        Err(crate::NodeError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_peer_cannot_make_a_node_ask_the_origin_more_than_once_per_relist_age() {
    use locus_grpc::v1 as pb;
    use locus_grpc::v1::peer_server::Peer;
    let (n, origin, _dir) = node(data(), 0);
    let svc = crate::peer::server::PeerService::new(n);
    // A peer asks for an answer 1 ms fresh, every 2 ms.
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        svc.resolve(tonic::Request::new(pb::ResolveRequest {
            namespace: "hf://acme/m".into(),
            revision: "main".into(),
            max_age_ms: 1,
        }))
        .await
        .unwrap();
    }
    assert_eq!(origin.resolves.load(Ordering::SeqCst), 1);
}

/// A branch in use is resolved again in the background before its TTL runs out: a reader
/// past the TTL finds the new answer and does not wait on the origin (here, a resolve that
/// hangs until the test lets it through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_in_use_is_asked_again_before_its_ttl_and_no_reader_waits_for_it() {
    use std::time::Duration;
    use tokio::time::{sleep_until, timeout, Instant};
    // One resolve goes through; each after it waits for the test.
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    let origin = FaultyOrigin::new(MemOrigin {
        files: [("w.bin".to_string(), data())].into(),
        resolve_gate: Some(gate.clone()),
        ..Default::default()
    });
    // Long enough that a loaded machine's pauses do not move a step out of its window.
    let ttl = Duration::from_secs(20);
    let (node, _dir) = ttl_node(origin.clone(), ttl);
    let uri = LocusUri::parse("hf://o/n/w.bin").unwrap();
    let resolves = || origin.resolves.load(Ordering::SeqCst);
    let t0 = Instant::now();
    node.resolve_file(&uri).await.unwrap();
    assert_eq!(resolves(), 1);
    // Within the TTL's last tenth (the answer took no time): answered at once, from the answer
    // held, and asked for again in the background, where it waits on the origin.
    sleep_until(t0 + ttl - Duration::from_millis(1500)).await;
    timeout(Duration::from_secs(2), node.resolve_file(&uri))
        .await
        .expect("a reader within the TTL does not wait on the origin")
        .unwrap();
    let asked = Instant::now() + Duration::from_secs(5);
    while resolves() < 2 {
        assert!(
            Instant::now() < asked,
            "the branch was not asked for again before its TTL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.add_permits(1);
    // Past the first answer's TTL: the refreshed answer serves, and no reader asks the origin
    // (it would hang: the gate is shut again).
    sleep_until(t0 + ttl + Duration::from_millis(400)).await;
    timeout(Duration::from_secs(2), node.resolve_file(&uri))
        .await
        .expect("the answer was refreshed before its TTL ran out")
        .unwrap();
    assert_eq!(resolves(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_fails_is_not_tried_again_before_the_ttl_and_the_next_reader_asks() {
    use std::time::Duration;
    use tokio::time::{sleep_until, timeout, Instant};
    let origin = FaultyOrigin::new(MemOrigin {
        files: [("w.bin".to_string(), data())].into(),
        ..Default::default()
    });
    // Long enough that a loaded machine's pauses do not move a step out of its window.
    let ttl = Duration::from_secs(20);
    let (node, _dir) = ttl_node(origin.clone(), ttl);
    let uri = LocusUri::parse("hf://o/n/w.bin").unwrap();
    let resolves = || origin.resolves.load(Ordering::SeqCst);
    let read = || async {
        timeout(Duration::from_secs(2), node.resolve_file(&uri))
            .await
            .expect("a reader within the TTL does not wait on the origin")
            .unwrap()
    };
    let t0 = Instant::now();
    read().await;
    assert_eq!(resolves(), 1);
    // In the TTL's last tenth: the refresh asks the origin, which fails it.
    origin.fail_resolves.store(1, Ordering::SeqCst);
    sleep_until(t0 + ttl - Duration::from_millis(1500)).await;
    read().await;
    let asked = Instant::now() + Duration::from_secs(1);
    while resolves() < 2 {
        assert!(Instant::now() < asked, "no refresh was asked for");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A reader before the TTL ends keeps the answer and asks nothing more.
    sleep_until(t0 + ttl - Duration::from_millis(1000)).await;
    read().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        resolves(),
        2,
        "a failed refresh was tried again before the TTL"
    );
    // Past it, the next reader asks (the origin is back).
    sleep_until(t0 + ttl + Duration::from_millis(400)).await;
    read().await;
    assert_eq!(resolves(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_behind_a_failed_origin_request_share_its_failure() {
    use std::time::Duration;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let origin = FaultyOrigin::new(MemOrigin {
        files: [("w.bin".to_string(), data())].into(),
        resolve_gate: Some(gate.clone()),
        ..Default::default()
    });
    origin.fail_resolves.store(u32::MAX, Ordering::SeqCst);
    let ttl = Duration::from_secs(60);
    let (node, _dir) = ttl_node(origin.clone(), ttl);
    let ns = LocusUri::parse("hf://o/n").unwrap().namespace;
    let resolves = || origin.resolves.load(Ordering::SeqCst);
    let asks: Vec<_> = (0..5)
        .map(|_| {
            let (node, ns) = (node.clone(), ns.clone());
            tokio::spawn(async move { node.revision_local(&ns, "main", ttl).await })
        })
        .collect();
    // One asks the origin (which holds its answer); the other four wait behind it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while resolves() == 0 {
        assert!(std::time::Instant::now() < deadline, "nobody asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(resolves(), 1);
    gate.add_permits(100);
    for a in asks {
        assert!(a.await.unwrap().is_err());
    }
    assert_eq!(resolves(), 1, "the waiters shared the one failure");
    // A caller that comes after it asks again.
    assert!(node.revision_local(&ns, "main", ttl).await.is_err());
    assert_eq!(resolves(), 2);
}

/// A "local only" request for chunk `index` of `file`, as a less loaded candidate (hops 1).
fn ask_req(file: &RemoteFile, index: u32) -> locus_grpc::v1::ChunkRequest {
    locus_grpc::v1::ChunkRequest {
        file: Some(locus_grpc::v1::FileRef {
            uri: file.uri.clone(),
            key: file.key.clone(),
            size: file.size,
            namespace: String::new(),
            revision: String::new(),
        }),
        chunk_size: 64 << 10,
        index,
        hops: 1,
        header_only: false,
        local_only: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_cannot_queue_unbounded_background_copies() {
    // 200 chunks of 64 KiB, and an origin that never answers.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (n, _origin, _dir) = gated_node(Bytes::from(vec![7u8; 200 << 16]), 0, Some(gate));
    let uri = LocusUri::parse("hf://acme/m").unwrap();
    let file = n.resolve(&uri).await.unwrap().files.first().unwrap();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let ask = |index: u32, peer: [u8; 4]| {
        n.prepare_chunk(ask_req(&file, index), Some(std::net::IpAddr::from(peer)))
    };
    // Asked only what it holds (hops 0): a miss starts nothing and adds no entry.
    let mut req = ask_req(&file, 0);
    req.hops = 0;
    let r = n.prepare_chunk(req, Some([10, 0, 0, 9].into())).await;
    assert!(matches!(r, Err(s) if s.code() == tonic::Code::NotFound));
    assert!(
        n.store().held(&file.key).is_none(),
        "a question registered the file"
    );
    let before = tasks();
    // One peer asks each chunk "local only" as a less loaded candidate: each miss may start a
    // background copy for the next reader, but one peer gets only its share.
    for index in 0..100 {
        let r = ask(index, [10, 0, 0, 1]).await;
        assert!(matches!(r, Err(s) if s.code() == tonic::Code::NotFound));
    }
    let one = tasks() - before;
    assert!(
        one <= 2 * crate::MAX_BACKGROUND_COPIES_PER_PEER + 8,
        "{one} background copies queued for one peer's 100 requests"
    );
    assert!(one >= 8, "copies do start ({one})");
    // Other peers still get theirs; all together stay within the node's bound.
    for index in 100..200 {
        let r = ask(index, [10, 0, 0, 2 + (index % 6) as u8]).await;
        assert!(matches!(r, Err(s) if s.code() == tonic::Code::NotFound));
    }
    let all = tasks() - before;
    assert!(
        all > one + 8,
        "another peer's copies start too ({one} then {all})"
    );
    // Each copy and its single-flight fetch task: at most 128 with the node's bound, 215 and
    // more without it.
    assert!(
        all <= 2 * crate::MAX_BACKGROUND_COPIES + 8,
        "{all} background copies queued for 200 requests"
    );
}

/// A peer transport test double: a member that lies. Every chunk comes with the right CRC in
/// its header and wrong bytes after it; metadata calls find it unreachable. Counts its calls.
#[derive(Default)]
struct LyingPeer {
    data: Bytes,
    chunk_calls: std::sync::atomic::AtomicUsize,
    meta_calls: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl crate::peer::PeerTransport for LyingPeer {
    async fn get_chunk(
        &self,
        _addr: &str,
        req: locus_grpc::v1::ChunkRequest,
    ) -> Result<crate::peer::PieceStream, crate::peer::PeerError> {
        use locus_grpc::v1::ChunkPiece;
        self.chunk_calls.fetch_add(1, Ordering::SeqCst);
        let cs = req.chunk_size as usize;
        let start = req.index as usize * cs;
        let right = self.data.slice(start..(start + cs).min(self.data.len()));
        let mut wrong = right.to_vec();
        wrong[0] ^= 1;
        let header = ChunkPiece {
            header: true,
            length: right.len() as u64,
            crc32c: crc32c::crc32c(&right),
            ..Default::default()
        };
        let body = ChunkPiece {
            data: wrong.into(),
            ..Default::default()
        };
        Ok(futures::stream::iter([Ok(header), Ok(body)]).boxed())
    }

    async fn resolve(
        &self,
        addr: &str,
        _req: locus_grpc::v1::ResolveRequest,
    ) -> Result<locus_grpc::v1::ResolveResponse, crate::peer::PeerError> {
        self.meta_calls.fetch_add(1, Ordering::SeqCst);
        Err(crate::peer::PeerError::unreachable(addr, "test double"))
    }

    async fn list(
        &self,
        addr: &str,
        _req: locus_grpc::v1::PeerListRequest,
    ) -> Result<locus_core::Listing, crate::peer::PeerError> {
        self.meta_calls.fetch_add(1, Ordering::SeqCst);
        Err(crate::peer::PeerError::unreachable(addr, "test double"))
    }

    async fn warm(
        &self,
        addr: &str,
        _req: locus_grpc::v1::PeerWarmRequest,
    ) -> Result<crate::peer::ProgressStream, crate::peer::PeerError> {
        Err(crate::peer::PeerError::unreachable(addr, "test double"))
    }

    async fn health(
        &self,
        addr: &str,
    ) -> Result<locus_grpc::v1::HealthResponse, crate::peer::PeerError> {
        Err(crate::peer::PeerError::unreachable(addr, "test double"))
    }

    /// Claims chunks far past the end of every file, and none of them.
    async fn holds(
        &self,
        _addr: &str,
        req: locus_grpc::v1::HoldsRequest,
    ) -> Result<locus_grpc::v1::HoldsResponse, crate::peer::PeerError> {
        let mut bits = vec![0u8; 4096];
        bits[64..].fill(0xff);
        Ok(locus_grpc::v1::HoldsResponse {
            chunks: req.keys.iter().map(|_| bits.clone()).collect(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_wrong_bytes_is_passed_over_and_nothing_wrong_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Arc::new(MemOrigin {
        files: [("w.bin".to_string(), data())].into(),
        gate: None,
        hold: None,
        resolve_gate: None,
        digests: HashMap::new(),
    });
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let cluster = locus_cluster::Cluster::new(locus_cluster::ClusterConfig::solo("me:1"));
    cluster.set_members(["me:1".to_string(), "liar:1".to_string()]);
    let peer = Arc::new(LyingPeer {
        data: data(),
        ..LyingPeer::default()
    });
    let cfg = NodeConfig {
        chunk_size: 64 << 10,
        ..NodeConfig::default()
    };
    let node = Node::with_cluster(origin, store, cfg, cluster.clone(), Some(peer.clone()));
    let file = node
        .resolve_file(&LocusUri::parse("hf://o/n/w.bin").unwrap())
        .await
        .unwrap();
    // Metadata: the owner did not answer, so it was marked down and the origin asked.
    assert!(peer.meta_calls.load(Ordering::SeqCst) > 0);
    assert!(!cluster.is_up("liar:1"));
    // It answers health checks again: now for its chunks.
    cluster.mark_up("liar:1", 0.0);
    // What it claims to hold past the file's chunks counts for nothing.
    let c = node.coverage(&locus_core::Files::one(file.clone())).await;
    assert_eq!(c.fractions, vec![0.0]);
    assert!(c.unanswered.is_empty(), "{c:?}");
    let h = node
        .ensure_file(&file, &WarmProgress::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    for idx in 0..h.layout().count() {
        let b = h.checked_bytes(idx, std::time::Duration::ZERO).unwrap();
        out.extend_from_slice(&b.expect("chunk stored and right"));
    }
    assert!(out == data().to_vec(), "the origin's bytes, not the peer's");
    assert!(
        peer.chunk_calls.load(Ordering::SeqCst) > 0,
        "the peer was asked"
    );
    assert!(!cluster.is_up("liar:1"), "and marked down");
    assert_eq!(
        node.counters().origin_bytes.load(Ordering::SeqCst),
        1_000_000,
        "every chunk came from the origin in the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_report_counts_a_chunk_still_arriving_and_names_the_retry_it_waited_on() {
    // One 64 KiB chunk whose second half waits; its first two requests fail.
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let data = data().slice(..64 << 10);
    let (node, origin, _dir) = origin_node(
        MemOrigin {
            files: [("w.bin".to_string(), data.clone())].into(),
            gate: None,
            hold: Some(hold.clone()),
            resolve_gate: None,
            digests: HashMap::new(),
        },
        2,
    );
    let file = node
        .resolve_file(&LocusUri::parse("hf://o/n/w.bin").unwrap())
        .await
        .unwrap();
    let progress = Arc::new(WarmProgress::of(&locus_core::Listing::new([file.clone()])));
    let work = {
        let (node, p) = (node.clone(), progress.clone());
        tokio::spawn(async move {
            node.warm_in(
                crate::Scope::Node,
                locus_core::Listing::new([file]),
                false,
                p,
            )
            .await
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = node.report(&progress);
        if r.done_bytes > 0 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    // Half the chunk is in: the report says so before the chunk completes.
    assert_eq!(r.done_bytes, 32 << 10, "{r:?}");
    assert_eq!((r.total_bytes, r.done_files), (64 << 10, 0), "{r:?}");
    assert!(r.note.starts_with("origin: retry 2/4, "), "{r:?}");
    assert!(r.note.contains("injected fault"), "{r:?}");
    assert_eq!(origin.reads.load(Ordering::SeqCst), 3);
    hold.add_permits(1);
    work.await.unwrap().unwrap();
    let r = node.report(&progress);
    assert_eq!((r.done_bytes, r.done_files), (64 << 10, 1), "{r:?}");
    // Nothing under way: no note.
    assert_eq!(r.note, "", "{r:?}");
    // Bytes of other files' fetches do not count.
    assert_eq!(
        node.report(&WarmProgress::of(&locus_core::Listing::default()))
            .done_bytes,
        0
    );
}

/// Polls `done` every 10 ms for up to 20 s.
async fn eventually(done: impl Fn() -> bool) -> bool {
    for _ in 0..2000 {
        if done() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_read_chunk_by_chunk_is_checked_whole_in_the_background() {
    use sha2::Digest as _;
    let right = locus_core::Digest::Sha256(hex::encode(sha2::Sha256::digest(data())));
    let wrong = locus_core::Digest::Sha256("0".repeat(64));
    let (node, origin, _dir) = origin_node(
        MemOrigin {
            files: [
                ("w.bin".to_string(), data()),
                ("bad.bin".to_string(), data()),
            ]
            .into(),
            digests: [("w.bin".to_string(), right), ("bad.bin".to_string(), wrong)].into(),
            ..Default::default()
        },
        0,
    );
    let read = |name: &str| {
        let (node, uri) = (
            node.clone(),
            LocusUri::parse(&format!("hf://o/n/{name}")).unwrap(),
        );
        async move {
            let file = node.resolve_file(&uri).await.unwrap();
            // Two readers' ranges, as a mount asks: neither is the whole file.
            let h = node.ensure_chunks(&file, 0..8).await.unwrap();
            assert!(!h.verified(), "half the chunks cannot be checked whole");
            let count = h.layout().count();
            // The last range completes the file; its background check may start at once (and,
            // for a file that fails it, drop chunks), so what is missing is asserted per file.
            node.ensure_chunks(&file, 8..count).await.unwrap()
        }
    };
    let good = read("w.bin").await;
    assert!(
        good.missing().is_empty(),
        "every chunk of a good file stays"
    );
    assert!(
        eventually(|| good.verified()).await,
        "the complete file is checked against its digest in the background"
    );
    let count = good.layout().count() as u64;
    assert_eq!(
        origin.reads.load(Ordering::SeqCst),
        count,
        "read back, not fetched again"
    );

    // A file whose bytes do not match the digest: the check fetches it again from the origin,
    // fails again, and leaves nothing of it stored to be taken for checked.
    let bad = read("bad.bin").await;
    let reads = || origin.reads.load(Ordering::SeqCst);
    assert!(
        eventually(|| reads() == 3 * count && bad.missing().len() as u64 == count).await,
        "a file that fails its digest is fetched once more, then dropped: {} reads, {} missing",
        reads(),
        bad.missing().len()
    );
    assert!(!bad.verified());
}

/// A member that owns chunks (answers header-only asks, and sends them right but slowly) and
/// whose own full copy fails at once.
struct NoRoomPeer {
    data: Bytes,
}

#[async_trait]
impl crate::peer::PeerTransport for NoRoomPeer {
    async fn get_chunk(
        &self,
        _addr: &str,
        req: locus_grpc::v1::ChunkRequest,
    ) -> Result<crate::peer::PieceStream, crate::peer::PeerError> {
        use locus_grpc::v1::{ChunkPiece, ChunkSource};
        let cs = req.chunk_size as usize;
        let start = req.index as usize * cs;
        let right = self.data.slice(start..(start + cs).min(self.data.len()));
        let header = ChunkPiece {
            header: true,
            length: right.len() as u64,
            crc32c: crc32c::crc32c(&right),
            source: ChunkSource::Origin as i32,
            ..Default::default()
        };
        if req.header_only {
            return Ok(futures::stream::iter([Ok(header)]).boxed());
        }
        // Slow: this node's own copy is still under way when the member's copy has failed.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let body = ChunkPiece {
            data: right,
            ..Default::default()
        };
        Ok(futures::stream::iter([Ok(header), Ok(body)]).boxed())
    }

    async fn resolve(
        &self,
        addr: &str,
        _req: locus_grpc::v1::ResolveRequest,
    ) -> Result<locus_grpc::v1::ResolveResponse, crate::peer::PeerError> {
        Err(crate::peer::PeerError::unreachable(addr, "test double"))
    }

    async fn list(
        &self,
        addr: &str,
        _req: locus_grpc::v1::PeerListRequest,
    ) -> Result<locus_core::Listing, crate::peer::PeerError> {
        Err(crate::peer::PeerError::unreachable(addr, "test double"))
    }

    async fn warm(
        &self,
        addr: &str,
        _req: locus_grpc::v1::PeerWarmRequest,
    ) -> Result<crate::peer::ProgressStream, crate::peer::PeerError> {
        Err(crate::peer::PeerError::Status {
            addr: addr.into(),
            code: tonic::Code::ResourceExhausted,
            message: "no room: the cache is smaller".into(),
        })
    }

    async fn health(
        &self,
        addr: &str,
    ) -> Result<locus_grpc::v1::HealthResponse, crate::peer::PeerError> {
        Err(crate::peer::PeerError::unreachable(addr, "test double"))
    }

    async fn holds(
        &self,
        _addr: &str,
        req: locus_grpc::v1::HoldsRequest,
    ) -> Result<locus_grpc::v1::HoldsResponse, crate::peer::PeerError> {
        Ok(locus_grpc::v1::HoldsResponse {
            chunks: req.keys.iter().map(|_| Vec::new()).collect(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_nodes_warm_runs_every_copy_to_its_end_and_names_the_member_whose_copy_failed() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Arc::new(MemOrigin {
        files: [("w.bin".to_string(), data())].into(),
        ..Default::default()
    });
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let cluster = locus_cluster::Cluster::new(locus_cluster::ClusterConfig::solo("me:1"));
    cluster.set_members(["me:1".to_string(), "small:1".to_string()]);
    let cfg = NodeConfig {
        chunk_size: 64 << 10,
        ..NodeConfig::default()
    };
    let node = Node::with_cluster(
        origin,
        store,
        cfg,
        cluster.clone(),
        Some(Arc::new(NoRoomPeer { data: data() })),
    );
    let file = node
        .resolve_file(&LocusUri::parse("hf://o/n/w.bin").unwrap())
        .await
        .unwrap();
    // The metadata ask above marked it down; it answers again.
    cluster.mark_up("small:1", 0.0);
    let progress = Arc::new(WarmProgress::default());
    let r = node
        .warm_all_nodes(vec![file.clone()], false, progress.clone())
        .await;
    // This node's copy ran to its end although the other member's failed at once.
    assert_eq!(node.store().cached_fraction(&file.key), 1.0, "{r:?}");
    match &r {
        Err(crate::NodeError::MembersFailed(v)) => {
            let names: Vec<&str> = v.iter().map(|(m, _)| m.as_str()).collect();
            assert_eq!(names, ["small:1"], "{r:?}");
        }
        other => panic!("not a members' failure: {other:?}"),
    }
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("small:1") && msg.contains("no room"), "{msg}");
    let rep = node.report(&progress);
    let row = |a: &str| {
        rep.nodes
            .iter()
            .find(|n| n.addr == a)
            .cloned()
            .unwrap_or_else(|| panic!("{a}: {rep:?}"))
    };
    assert!(row("small:1").error.contains("no room"), "{rep:?}");
    assert!(row("me:1").error.is_empty(), "{rep:?}");
}

/// A member from before `ListPages`: the node's peer API less that method, answered as tonic
/// answers a method it does not know. Records the paths asked.
#[derive(Clone)]
struct NoPages {
    inner: locus_grpc::v1::peer_server::PeerServer<crate::peer::server::PeerService>,
    asked: Arc<std::sync::Mutex<Vec<String>>>,
}

impl tonic::server::NamedService for NoPages {
    const NAME: &'static str = "locus.v1.Peer";
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for NoPages {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        self.asked.lock().unwrap().push(path.clone());
        if path == "/locus.v1.Peer/ListPages" {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        self.inner.call(req)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_pages_is_asked_for_one_message() {
    use crate::peer::PeerTransport;
    let files: HashMap<String, Bytes> = (0..50usize)
        .map(|i| (format!("d/{i:03}.bin"), Bytes::from(vec![i as u8; 100 + i])))
        .collect();
    let (owner, _origin, _dir) = origin_node(
        MemOrigin {
            files: files.clone(),
            ..Default::default()
        },
        0,
    );
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let svc = NoPages {
        inner: locus_grpc::v1::peer_server::PeerServer::new(crate::peer::server::PeerService::new(
            owner.clone(),
        )),
        asked: asked.clone(),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let peers = crate::peer::GrpcPeers::new(&Default::default()).unwrap();
    let rev = "c".repeat(40);
    let req = locus_grpc::v1::PeerListRequest {
        namespace: "hf://o/n".into(),
        revision_id: rev.clone(),
    };
    let got = peers.list(&addr, req).await.expect("listed in one message");
    assert_eq!(
        *asked.lock().unwrap(),
        ["/locus.v1.Peer/ListPages", "/locus.v1.Peer/List"]
    );
    let ns = LocusUri::parse("hf://o/n").unwrap().namespace;
    let want = owner.listing(&ns, &rev, true).await.unwrap();
    assert_eq!(got.len(), files.len());
    let key = |f: locus_core::RemoteFile| (f.path, f.size, f.key);
    assert_eq!(
        got.iter().map(key).collect::<Vec<_>>(),
        want.iter().map(key).collect::<Vec<_>>()
    );
}

/// An owner that is still asking a slow origin when a member's metadata deadline passes is not
/// taken for down (health checks find an owner that is gone): the member asks the origin itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_slower_than_the_metadata_deadline_is_not_marked_down() {
    use crate::peer::PeerTransport;
    // Every resolve at the owner's origin waits (for good).
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (owner, _origin, _dir) = origin_node(
        MemOrigin {
            files: [("w.bin".to_string(), data())].into(),
            resolve_gate: Some(gate),
            ..Default::default()
        },
        0,
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(locus_grpc::v1::peer_server::PeerServer::new(
                crate::peer::server::PeerService::new(owner.clone()),
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let peers =
        crate::peer::GrpcPeers::with_metadata_timeout(std::time::Duration::from_millis(300));
    let req = locus_grpc::v1::ResolveRequest {
        namespace: "hf://o/n".into(),
        revision: "main".into(),
        max_age_ms: 0,
    };
    let e = peers
        .resolve(&addr, req)
        .await
        .expect_err("no answer in time");
    assert!(!e.marks_down() && !e.settles(), "{e:?}");
    assert!(e.to_string().contains("deadline"), "{e}");
}
