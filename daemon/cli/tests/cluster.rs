//! Several real daemons on loopback, talking gRPC, against a simulated Hub. Every read is
//! compared with the origin's bytes; origin traffic is counted by the simulator.

mod common;

use std::time::{Duration, Instant};

use common::*;
use locus_testorigin::{Faults, SimOptions};
use nix::sys::signal::Signal;

const REPO: &str = "acme/model";
const CHUNK: &str = "256KiB";

/// Starts `n` daemons that know each other statically.
fn static_cluster(env: &Env, n: usize, extra: &[&str]) -> (Vec<Daemon>, Vec<String>) {
    let addrs: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = addrs.join(",");
    let ds: Vec<Daemon> = (0..n)
        .map(|i| {
            let mut args = vec![
                "--chunk-size",
                CHUNK,
                "--listen",
                &addrs[i],
                "--peers",
                &peers,
            ];
            args.extend_from_slice(extra);
            env.daemon(&format!("n{i}"), &args, &[])
        })
        .collect();
    converge(&ds);
    (ds, addrs)
}

/// Waits until every node sees every member up.
fn converge(ds: &[Daemon]) {
    for d in ds {
        wait_for("every member up", 20, || {
            let m = members(d);
            m.len() == ds.len() && m.iter().all(|(_, s)| s == "up")
        });
    }
}

fn api_calls(env: &Env) -> u64 {
    let s = env.sim.stats();
    s.requests
        .iter()
        .filter(|(k, _)| k.starts_with("api_"))
        .map(|(_, v)| v)
        .sum()
}

fn members(d: &Daemon) -> Vec<(String, String)> {
    let st = d.json(&["status", "--json"]);
    st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["addr"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn total(files: &[(String, bytes::Bytes)]) -> u64 {
    files.iter().map(|(_, b)| b.len() as u64).sum()
}

#[test]
fn a_cluster_warm_reads_the_origin_once_and_every_node_reads_from_peers() {
    let env = Env::new();
    let files = random_files(4, 3 << 20, 11);
    env.sim.commit("model", REPO, files.clone());
    let (ds, addrs) = static_cluster(&env, 3, &[]);

    let out = ds[0].ok(&["warm", "hf://acme/model", "--scope", "cluster"]);
    let summary = String::from_utf8_lossy(&out);
    assert!(summary.contains("warmed 4 files"), "{summary}");
    let after_warm = env.sim.stats();
    assert_eq!(
        after_warm.data_bytes,
        total(&files),
        "each byte from the origin once"
    );
    let api_after_warm = api_calls(&env);

    // Each node holds part of each file; `ls --cluster` shows the cluster holds all of it,
    // asking the members, not the origin.
    let fractions = |d: &Daemon, key: &str| -> Vec<f64> {
        let args: &[&str] = match key {
            "cluster_fraction" => &["ls", "hf://acme/model", "--cluster", "--json"],
            _ => &["ls", "hf://acme/model", "--json"],
        };
        let ls = d.json(args);
        ls["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[key].as_f64().unwrap())
            .collect()
    };
    let partial = ds
        .iter()
        .flat_map(|d| fractions(d, "cached_fraction"))
        .filter(|f| *f < 1.0)
        .count();
    assert!(partial > 0, "some node holds part of a file only");
    for d in &ds {
        assert_eq!(fractions(d, "cluster_fraction"), vec![1.0; 4]);
        let ls = d.json(&["ls", "hf://acme/model", "--cluster", "--json"]);
        assert_eq!(ls["unanswered"], serde_json::json!([]), "{ls}");
    }
    let table =
        String::from_utf8_lossy(&ds[1].ok(&["ls", "hf://acme/model", "--cluster"])).to_string();
    assert!(
        table.starts_with("        SIZE    NODE  CLUSTER  PATH"),
        "{table}"
    );
    assert_eq!(api_calls(&env), api_after_warm);

    // The other nodes read everything from the owners: no origin bytes, no origin API call.
    for d in &ds[1..] {
        for (path, want) in &files {
            let got = d.ok(&["cat", &format!("hf://acme/model/{path}")]);
            assert!(got == want.to_vec(), "{path} differs");
        }
    }
    assert_eq!(env.sim.stats().data_bytes, total(&files));
    assert_eq!(
        api_calls(&env),
        api_after_warm,
        "metadata came from its owner"
    );

    let st = ds[1].json(&["status", "--json"]);
    assert!(st["peer_bytes"].as_u64().unwrap() > 0, "{st}");
    let from_origin: u64 = ds
        .iter()
        .map(|d| {
            d.json(&["status", "--json"])["origin_bytes"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        from_origin,
        total(&files),
        "the owners' origin bytes add up to the repo"
    );
    let m = members(&ds[1]);
    assert_eq!(m.len(), 3, "{m:?}");
    for a in &addrs {
        let state = &m.iter().find(|(x, _)| x == a).unwrap().1;
        assert!(state == "up", "{a} {state}");
    }
    // Ownership is spread: every node served some chunks.
    for d in &ds {
        let st = d.json(&["status", "--json"]);
        assert!(st["peer_bytes_sent"].as_u64().unwrap() > 0, "{st}");
    }
    // Node 1 read nothing itself: what it sent came from its cache, and counts as local.
    let st = ds[0].json(&["status", "--json"]);
    assert_eq!(st["local_bytes"], st["peer_bytes_sent"], "{st}");
    // The others found their own chunks in their cache too.
    assert!(
        ds[1].json(&["status", "--json"])["local_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn simultaneous_cold_reads_on_three_nodes_fetch_once() {
    let env = Env::with(SimOptions {
        faults: Faults {
            throttle_bps: 8 << 20,
            ..Faults::default()
        },
        ..SimOptions::default()
    });
    let files = random_files(1, 6 << 20, 21);
    env.sim.commit("model", REPO, files.clone());
    let (ds, _) = static_cluster(&env, 3, &[]);
    let uri = format!("hf://acme/model/{}", files[0].0);
    std::thread::scope(|s| {
        let hs: Vec<_> = ds
            .iter()
            .map(|d| {
                let uri = uri.clone();
                s.spawn(move || d.ok(&["cat", &uri]))
            })
            .collect();
        for h in hs {
            assert!(h.join().unwrap() == files[0].1.to_vec());
        }
    });
    let got = env.sim.stats().data_bytes;
    assert!(
        got as f64 <= 1.02 * files[0].1.len() as f64,
        "origin sent {got} bytes for a {}-byte file",
        files[0].1.len()
    );
}

#[test]
fn a_peer_killed_mid_read_never_fails_the_read() {
    let env = Env::with(SimOptions {
        faults: Faults {
            throttle_bps: 1 << 20,
            ..Faults::default()
        },
        ..SimOptions::default()
    });
    let files = random_files(1, 8 << 20, 31);
    env.sim.commit("model", REPO, files.clone());
    let (mut ds, addrs) = static_cluster(&env, 3, &[]);
    let uri = format!("hf://acme/model/{}", files[0].0);
    let (first, rest) = ds.split_at_mut(1);
    let got = std::thread::scope(|s| {
        let d0 = &first[0];
        let reader = s.spawn(|| d0.ok(&["cat", &uri]));
        std::thread::sleep(Duration::from_millis(400));
        rest[0].signal(Signal::SIGKILL);
        reader.join().unwrap()
    });
    assert!(got == files[0].1.to_vec(), "bytes differ after a peer died");
    let m = members(&ds[0]);
    let state = &m.iter().find(|(a, _)| *a == addrs[1]).unwrap().1;
    assert_eq!(state, "down", "{m:?}");
    // The survivors keep serving each other.
    let again = ds[2].ok(&["cat", &uri]);
    assert!(again == files[0].1.to_vec());
}

#[test]
fn all_nodes_scope_leaves_a_full_copy_everywhere() {
    let env = Env::new();
    let files = random_files(3, 1 << 20, 41);
    env.sim.commit("model", REPO, files.clone());
    let (ds, addrs) = static_cluster(&env, 3, &[]);
    // One member has its copy already: its row says so, the others' say they came from peers.
    ds[1].ok(&["warm", "hf://acme/model"]);
    let out = ds[2].ok(&["warm", "hf://acme/model", "--scope", "all-nodes"]);
    let out = String::from_utf8_lossy(&out).to_string();
    eprintln!("{out}");
    assert!(
        out.contains("warmed 3 files (3.00 MiB) on each of 3 nodes"),
        "{out}"
    );
    for (i, a) in addrs.iter().enumerate() {
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with(a.as_str()))
            .unwrap_or_else(|| panic!("no row for {a}: {out}"))
            .split_whitespace()
            .collect();
        // NODE FILES BYTES(2) FROM-PEERS(2) ALREADY-THERE(2)
        assert_eq!(row[1..4], ["3/3", "3.00", "MiB"], "{out}");
        let mib = |v: &[&str]| {
            let n: f64 = v[0].parse().unwrap();
            match v[1] {
                "B" => n / 1048576.0,
                "KiB" => n / 1024.0,
                "MiB" => n,
                u => panic!("unit {u}"),
            }
        };
        let (peers, there) = (mib(&row[4..6]), mib(&row[6..8]));
        match i {
            1 => assert_eq!((peers, there), (0.0, 3.0), "{out}"),
            // Chunks it took as an owner in the cluster pass were there; the rest from peers.
            _ => assert!(peers > 0.0 && (peers + there - 3.0).abs() < 0.02, "{out}"),
        }
    }
    assert_eq!(env.sim.stats().data_bytes, total(&files));
    for d in &ds {
        let ls = d.json(&["ls", "hf://acme/model", "--json"]);
        for e in ls["files"].as_array().unwrap() {
            assert_eq!(e["cached_fraction"], 1.0, "{e}");
        }
    }
    // Node scope on a fresh member of the same cluster reads from peers, not the origin.
    let st = ds[0].json(&["status", "--json"]);
    assert!(st["peer_bytes"].as_u64().unwrap() > 0, "{st}");
    let bad = ds[0].locus(&["warm", "hf://acme/model", "--scope", "everywhere"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

/// A member that misbehaves: garbles every answer, or records what it is sent and refuses.
mod fake {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use futures::{Stream, StreamExt};
    use locus_grpc::v1 as pb;
    use tonic::{Request, Response, Status};

    pub struct FakePeer {
        pub garble: bool,
        pub calls: AtomicU64,
        /// Debug renderings of every request (metadata and message).
        pub seen: Mutex<Vec<String>>,
        pub chunk_size: u64,
    }

    type S<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    pub struct Shared(pub Arc<FakePeer>);

    impl std::ops::Deref for Shared {
        type Target = FakePeer;
        fn deref(&self) -> &FakePeer {
            &self.0
        }
    }

    impl FakePeer {
        fn record<T: std::fmt::Debug>(&self, r: &Request<T>) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.seen
                .lock()
                .unwrap()
                .push(format!("{:?} {:?}", r.metadata(), r.get_ref()));
        }
    }

    fn header(length: u64, crc32c: u32) -> pb::ChunkPiece {
        pb::ChunkPiece {
            header: true,
            length,
            crc32c,
            ..Default::default()
        }
    }

    fn data(d: Vec<u8>) -> pb::ChunkPiece {
        pb::ChunkPiece {
            data: d.into(),
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl pb::peer_server::Peer for Shared {
        type GetChunkStream = S<pb::ChunkPiece>;
        type WarmStream = S<pb::WarmProgress>;

        async fn get_chunk(
            &self,
            r: Request<pb::ChunkRequest>,
        ) -> Result<Response<Self::GetChunkStream>, Status> {
            self.record(&r);
            if !self.garble {
                return Err(Status::unavailable("recorder"));
            }
            let req = r.into_inner();
            let size = req.file.map(|f| f.size).unwrap_or(0);
            let start = req.index as u64 * self.chunk_size;
            let len = self.chunk_size.min(size.saturating_sub(start)) as usize;
            let wrong = vec![0x5au8; len];
            let crc = crc32c::crc32c(&wrong);
            let pieces = match self.calls.load(Ordering::SeqCst) % 5 {
                // Wrong bytes that match their own CRC: only the file digest can tell.
                0 => vec![header(len as u64, crc), data(wrong)],
                1 => vec![header(len as u64, crc ^ 1), data(wrong)],
                2 => vec![header(len as u64 + 7, crc), data(wrong)],
                3 => vec![data(wrong)],
                _ => vec![header(len as u64, crc), data(vec![1u8; 3 * len + 1])],
            };
            Ok(Response::new(
                futures::stream::iter(pieces.into_iter().map(Ok)).boxed(),
            ))
        }

        async fn resolve(
            &self,
            r: Request<pb::ResolveRequest>,
        ) -> Result<Response<pb::ResolveResponse>, Status> {
            self.record(&r);
            if !self.garble {
                return Err(Status::unavailable("recorder"));
            }
            Ok(Response::new(pb::ResolveResponse {
                id: String::new(),
                age_ms: u64::MAX,
            }))
        }

        async fn list(
            &self,
            r: Request<pb::PeerListRequest>,
        ) -> Result<Response<pb::PeerListResponse>, Status> {
            self.record(&r);
            if !self.garble {
                return Err(Status::unavailable("recorder"));
            }
            Ok(Response::new(pb::PeerListResponse {
                files: vec![pb::PeerFile {
                    uri: "hf://acme/model@main/../../etc/passwd".into(),
                    path: "../../etc/passwd".into(),
                    size: u64::MAX,
                    key: "x".into(),
                    locator: "/etc/passwd".into(),
                    digest_kind: "sha256".into(),
                    digest_hex: "zz".into(),
                }],
            }))
        }

        type ListPagesStream = S<pb::PeerListResponse>;

        /// The garbled listing as a page; the recorder has no pages (its callers fall back to
        /// `list`).
        async fn list_pages(
            &self,
            r: Request<pb::PeerListRequest>,
        ) -> Result<Response<Self::ListPagesStream>, Status> {
            if !self.garble {
                self.record(&r);
                return Err(Status::unimplemented("recorder"));
            }
            let page = self.list(r).await?.into_inner();
            Ok(Response::new(futures::stream::iter([Ok(page)]).boxed()))
        }

        async fn warm(
            &self,
            r: Request<pb::PeerWarmRequest>,
        ) -> Result<Response<Self::WarmStream>, Status> {
            self.record(&r);
            Err(Status::internal("no"))
        }

        async fn holds(
            &self,
            r: Request<pb::HoldsRequest>,
        ) -> Result<Response<pb::HoldsResponse>, Status> {
            self.record(&r);
            if !self.garble {
                return Err(Status::unavailable("recorder"));
            }
            // A different number of answers than keys asked.
            Ok(Response::new(pb::HoldsResponse {
                chunks: vec![vec![0xff; 1 << 20]; r.into_inner().keys.len() + 1],
            }))
        }

        async fn health(
            &self,
            _r: Request<pb::HealthRequest>,
        ) -> Result<Response<pb::HealthResponse>, Status> {
            Ok(Response::new(pb::HealthResponse {
                addr: String::new(),
                load: 0,
                chunk_size: self.chunk_size,
                version: "fake".into(),
            }))
        }
    }

    /// Serves `peer` on a loopback port in `rt`; returns its address.
    pub fn serve(rt: &tokio::runtime::Runtime, peer: Arc<FakePeer>) -> String {
        let l = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = l.local_addr().unwrap().to_string();
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(pb::peer_server::PeerServer::new(Shared(peer)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        addr
    }
}

fn fake_peer(garble: bool) -> std::sync::Arc<fake::FakePeer> {
    std::sync::Arc::new(fake::FakePeer {
        garble,
        calls: Default::default(),
        seen: Default::default(),
        chunk_size: 256 << 10,
    })
}

#[test]
fn a_garbled_peer_costs_time_never_bytes() {
    let env = Env::new();
    let files = random_files(6, 1 << 20, 51);
    env.sim.commit("model", REPO, files.clone());
    let peer = fake_peer(true);
    let fake_addr = fake::serve(&env.rt, peer.clone());
    let me = format!("127.0.0.1:{}", free_port());
    let d = env.daemon(
        "n0",
        &[
            "--chunk-size",
            CHUNK,
            "--listen",
            &me,
            "--peers",
            &format!("{me},{fake_addr}"),
        ],
        &[],
    );
    for (path, want) in &files {
        let got = d.ok(&["cat", &format!("hf://acme/model/{path}")]);
        assert!(got == want.to_vec(), "{path} differs");
    }
    assert!(
        peer.calls.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the garbled peer was never asked"
    );
    let log = d.log_text();
    assert!(log.contains("peer marked down"), "{log}");
    // What it holds is not counted, and `ls --cluster` says so.
    let ls = d.json(&["ls", "hf://acme/model", "--cluster", "--json"]);
    assert_eq!(ls["unanswered"], serde_json::json!([fake_addr]), "{ls}");
    assert!(ls["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["cluster_fraction"] == e["cached_fraction"]));
    let out = d.locus(&["ls", "hf://acme/model", "--cluster"]);
    assert!(
        stderr(&out).contains(&format!("not counted: {fake_addr} (down or did not answer")),
        "{}",
        stderr(&out)
    );
}

/// A node that checked a whole file sends its chunks with their SHA-256 steps and, having read
/// them a moment ago, without reading them again. Its copy rotting on disk since must still
/// never reach a reader: the reader checks each step on the bytes it receives.
#[test]
fn a_peer_copy_changed_since_it_was_checked_is_caught_by_the_hash_steps() {
    use std::os::unix::fs::FileExt;
    let env = Env::new();
    let files = random_files(1, 2 << 20, 81);
    env.sim.commit("model", REPO, files.clone());
    let (ds, _) = static_cluster(&env, 2, &[]);
    let uri = format!("hf://acme/model/{}", files[0].0);
    // Node 0 holds the whole file, checked against its digest (with steps); node 1 the chunks
    // it owns.
    ds[0].ok(&["warm", &uri]);
    let data = data_files(&ds[0].cache)
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() == 2 << 20)
        .expect("node 0's data file");
    // Every chunk but the last, which goes without a step and so is always checked by its
    // sender (one failed check there would make node 0 stop sending steps at all).
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    for k in 0..7u64 {
        f.write_all_at(&[files[0].1[(k << 18) as usize] ^ 0xff], k << 18)
            .unwrap();
    }
    drop(f);
    let got = ds[1].ok(&["cat", &uri]);
    assert!(got == files[0].1.to_vec(), "wrong bytes reached the reader");
    let log = ds[1].log_text();
    assert!(log.contains("do not match their hash step"), "{log}");
    // A copy gone bad is no reason to mark its node down.
    assert!(
        members(&ds[1]).iter().all(|(_, s)| s == "up"),
        "{:?}",
        members(&ds[1])
    );
}

#[test]
fn hostile_peer_requests_get_errors_and_the_daemon_keeps_serving() {
    use locus_grpc::v1 as pb;
    use sha2::Digest as _;
    let env = Env::new();
    let files = random_files(1, 1 << 20, 61);
    env.sim.commit("model", REPO, files.clone());
    let (ds, addrs) = static_cluster(&env, 1, &[]);
    let uri = format!("hf://acme/model/{}", files[0].0);
    let file = ds[0].json(&["ls", &uri, "--json"])["files"][0].clone();
    let file_uri = file["uri"].as_str().unwrap().to_string();
    let listed = ds[0].json(&["ls", &uri, "--json"]);
    assert!(listed["files"].as_array().unwrap().len() == 1);
    let good = |size: u64| pb::FileRef {
        namespace: String::new(),
        revision: String::new(),
        uri: file_uri.clone(),
        key: String::new(),
        size,
    };
    env.rt.block_on(async {
        let mut c = pb::peer_client::PeerClient::connect(format!("http://{}", addrs[0]))
            .await
            .unwrap();
        let chunk = |file: Option<pb::FileRef>, chunk_size: u64, index: u32| pb::ChunkRequest {
            file,
            chunk_size,
            index,
            hops: 9,
            header_only: false,
            local_only: false,
        };
        let cases = vec![
            chunk(None, 256 << 10, 0),
            chunk(Some(good(1 << 20)), 4096, 0),
            chunk(Some(good(1 << 20)), 256 << 10, 0),
            chunk(
                Some(pb::FileRef {
                    uri: "hf://acme/model@main/../x".into(),
                    key: "k".into(),
                    size: 1,
                    ..Default::default()
                }),
                256 << 10,
                0,
            ),
            chunk(
                Some(pb::FileRef {
                    uri: "x".repeat(100_000),
                    key: "k".into(),
                    size: 1,
                    ..Default::default()
                }),
                256 << 10,
                0,
            ),
            chunk(
                Some(pb::FileRef {
                    uri: file_uri.clone(),
                    key: "sha256:00:1".into(),
                    size: 1,
                    ..Default::default()
                }),
                256 << 10,
                u32::MAX,
            ),
        ];
        for (i, req) in cases.into_iter().enumerate() {
            let r = c.get_chunk(req).await;
            let err = match r {
                Err(s) => s,
                Ok(resp) => {
                    let mut s = resp.into_inner();
                    match s.message().await {
                        Err(e) => e,
                        Ok(m) => panic!("case {i}: accepted: {m:?}"),
                    }
                }
            };
            assert!(
                matches!(
                    err.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::OutOfRange
                        | tonic::Code::NotFound
                ),
                "case {i}: {err:?}"
            );
        }
        for ns in ["", "hf://a", "s3://b/c", "hf://acme/model@main", "\0"] {
            let r = c
                .resolve(pb::ResolveRequest {
                    namespace: ns.into(),
                    revision: "main".into(),
                    max_age_ms: 0,
                })
                .await;
            assert_eq!(
                r.unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{ns:?}"
            );
        }
        let r = c
            .list(pb::PeerListRequest {
                namespace: "hf://acme/model".into(),
                revision_id: "r".repeat(5000),
            })
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
        let r = c
            .warm(pb::PeerWarmRequest {
                uris: vec![],
                ..Default::default()
            })
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
        // Past the size bound: refused before it is decoded.
        let r = c
            .warm(pb::PeerWarmRequest {
                uris: vec!["x".repeat(2 << 20)],
                ..Default::default()
            })
            .await;
        assert!(r.is_err());
        // Holds: too many keys, a bad key, another chunk size.
        for (keys, chunk_size, code) in [
            (
                vec!["k".to_string(); 10_001],
                256 << 10,
                tonic::Code::InvalidArgument,
            ),
            (
                vec!["\0".to_string()],
                256 << 10,
                tonic::Code::InvalidArgument,
            ),
            (vec!["k".to_string()], 4096, tonic::Code::FailedPrecondition),
        ] {
            let r = c.holds(pb::HoldsRequest { keys, chunk_size }).await;
            assert_eq!(r.unwrap_err().code(), code);
        }
        let r = c
            .holds(pb::HoldsRequest {
                keys: vec!["sha256:00:1".into()],
                chunk_size: 256 << 10,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.chunks, vec![Vec::<u8>::new()], "a key it does not hold");
        let h = c.health(pb::HealthRequest {}).await.unwrap().into_inner();
        assert_eq!(h.addr, addrs[0]);
    });
    // An LFS file: its key is its sha256 and size.
    let key = locus_core::RemoteFile::key_for_digest(
        &locus_core::Digest::Sha256(hex::encode(sha2::Sha256::digest(&files[0].1))),
        files[0].1.len() as u64,
    );
    hostile_wire(&addrs[0], &file_uri, &key, &files[0].1);
    let got = ds[0].ok(&["cat", &uri]);
    assert!(got == files[0].1.to_vec());
}

/// The chunk wire (plain TCP on the peer port) against malformed and hostile input: error
/// frames and closed connections, never a panic; after an error frame the connection still
/// serves a good request, byte for byte.
fn hostile_wire(addr: &str, file_uri: &str, key: &str, want: &[u8]) {
    use locus_grpc::v1 as pb;
    use locus_node::peer::wire::{HELLO, MAGIC};
    use prost::Message;
    use std::io::{Read, Write};
    let connect = |token: &[u8]| {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&(token.len() as u16).to_be_bytes());
        hello.extend_from_slice(token);
        c.write_all(&hello).unwrap();
        c
    };
    let frame = |c: &mut std::net::TcpStream| -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        c.read_exact(&mut head).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize];
        c.read_exact(&mut body).unwrap();
        (head[0], body)
    };
    let code = |body: &[u8]| {
        tonic::Code::from_i32(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
    };
    let closed = |c: &mut std::net::TcpStream| {
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(rest.is_empty(), "more after an error frame: {rest:?}");
    };
    let request = |c: &mut std::net::TcpStream, req: &pb::ChunkRequest| {
        let m = req.encode_to_vec();
        c.write_all(&(m.len() as u32).to_be_bytes()).unwrap();
        c.write_all(&m).unwrap();
    };
    let hello_ok = |c: &mut std::net::TcpStream| {
        let mut h = [0u8; 8];
        c.read_exact(&mut h).unwrap();
        assert_eq!(&h, HELLO);
    };
    // A token where none is set is ignored; an oversized one is refused.
    let mut c = connect(&[]);
    hello_ok(&mut c);
    // A request length past the bound: refused before anything is allocated.
    c.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let (k, body) = frame(&mut c);
    assert_eq!((k, code(&body)), (b'E', tonic::Code::InvalidArgument));
    closed(&mut c);
    // Bytes that are no request.
    let mut c = connect(&[]);
    hello_ok(&mut c);
    c.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).unwrap();
    let (k, body) = frame(&mut c);
    assert_eq!((k, code(&body)), (b'E', tonic::Code::InvalidArgument));
    closed(&mut c);
    // Hung up halfway through a hello, and through a request.
    drop(
        std::net::TcpStream::connect(addr)
            .unwrap()
            .write_all(&MAGIC[..5]),
    );
    let mut c = connect(&[]);
    hello_ok(&mut c);
    c.write_all(&[0, 0, 1, 0, 1, 2]).unwrap();
    drop(c);
    // A bad request, then a good one on the same connection.
    let req = |index: u32| pb::ChunkRequest {
        file: Some(pb::FileRef {
            uri: file_uri.into(),
            key: key.into(),
            size: want.len() as u64,
            ..Default::default()
        }),
        chunk_size: 256 << 10,
        index,
        hops: 0,
        header_only: false,
        local_only: false,
    };
    let mut c = connect(&[]);
    hello_ok(&mut c);
    request(&mut c, &req(u32::MAX));
    let (k, body) = frame(&mut c);
    assert_eq!(k, b'E');
    assert!(
        matches!(
            code(&body),
            tonic::Code::OutOfRange | tonic::Code::FailedPrecondition
        ),
        "{:?}",
        String::from_utf8_lossy(&body[4..])
    );
    let mut ask = req(1);
    request(&mut c, &ask);
    let (k, body) = frame(&mut c);
    assert_eq!(k, b'H', "{}", String::from_utf8_lossy(&body));
    let h = pb::ChunkPiece::decode(body.as_slice()).unwrap();
    assert!(h.header && h.length == 256 << 10);
    let mut chunk = vec![0u8; h.length as usize];
    c.read_exact(&mut chunk).unwrap();
    assert!(chunk == want[256 << 10..512 << 10]);
    assert_eq!(crc32c::crc32c(&chunk), h.crc32c);
    ask.index = 0;
    request(&mut c, &ask);
    let (k, _) = frame(&mut c);
    assert_eq!(k, b'H');
}

#[test]
fn no_origin_credential_reaches_a_peer_or_a_log() {
    const TOKEN: &str = "hf_supersecrettokenvalue123456";
    let env = Env::with(SimOptions {
        faults: Faults {
            token: Some(TOKEN.into()),
            ..Faults::default()
        },
        ..SimOptions::default()
    });
    let files = random_files(4, 1 << 20, 71);
    env.sim.commit("model", REPO, files.clone());
    let peer = fake_peer(false);
    let fake_addr = fake::serve(&env.rt, peer.clone());
    let me = format!("127.0.0.1:{}", free_port());
    let d = env.daemon(
        "n0",
        &[
            "--chunk-size",
            CHUNK,
            "--listen",
            &me,
            "--peers",
            &format!("{me},{fake_addr}"),
        ],
        &[("HF_TOKEN", TOKEN)],
    );
    d.ok(&["warm", "hf://acme/model"]);
    for (path, want) in &files {
        let got = d.ok(&["cat", &format!("hf://acme/model/{path}")]);
        assert!(got == want.to_vec(), "{path} differs");
    }
    let seen = peer.seen.lock().unwrap().join("\n");
    assert!(
        seen.contains("ChunkRequest"),
        "the recorder saw no chunk request: {seen}"
    );
    assert!(!seen.contains(TOKEN), "the HF token reached a peer");
    assert!(
        !d.log_text().contains(TOKEN),
        "the HF token reached the log"
    );
}

/// A certificate authority for tests: issues certificates for a name (DNS name or IP).
struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `name` and its key, as PEM.
    fn issue(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `name` in the test's folder; returns the path.
fn write_file(env: &Env, name: &str, text: &str) -> String {
    let p = env.path(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A real etcd server on loopback, stopped on drop.
struct Etcd {
    child: std::process::Child,
    port: u16,
}

/// Server certificate, key and CA (PEM paths) for an etcd that checks client certificates.
struct EtcdTls {
    cert: String,
    key: String,
    ca: String,
}

impl Etcd {
    fn start(env: &Env) -> Etcd {
        Self::start_with(env, "etcd", None)
    }

    fn start_with(env: &Env, name: &str, tls: Option<&EtcdTls>) -> Etcd {
        let bin = ["etcd", "/usr/bin/etcd"]
            .into_iter()
            .find(|b| {
                std::process::Command::new(b)
                    .arg("--version")
                    .output()
                    .is_ok()
            })
            .expect("etcd is not installed: run tests/setup (it installs Debian's etcd-server)");
        let port = free_port();
        let peer_port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log_path = env.path(&format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--name", "t", "--data-dir"])
            .arg(env.path(&format!("{name}-data")))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")]);
        if let Some(t) = tls {
            cmd.args(["--cert-file", &t.cert, "--key-file", &t.key])
                .args(["--trusted-ca-file", &t.ca, "--client-cert-auth"]);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let e = Etcd { child, port };
        wait_for("etcd to answer", 30, || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("ready to serve client requests")
        });
        e
    }

    /// Turns on etcd's authentication with a root user (through its HTTP gateway).
    fn enable_auth(&self, password: &str) {
        let base = format!("http://127.0.0.1:{}/v3/auth", self.port);
        let c = reqwest::blocking::Client::new();
        for (path, body) in [
            ("role/add", serde_json::json!({"name": "root"})),
            (
                "user/add",
                serde_json::json!({"name": "root", "password": password}),
            ),
            (
                "user/grant",
                serde_json::json!({"user": "root", "role": "root"}),
            ),
            ("enable", serde_json::json!({})),
        ] {
            let r = c
                .post(format!("{base}/{path}"))
                .body(body.to_string())
                .send()
                .unwrap();
            assert!(r.status().is_success(), "{path}: {:?}", r.text());
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcd_membership_comes_only_from_a_store_that_checks_who_writes() {
    let env = Env::new();
    let write = |n: &str, s: String| write_file(&env, n, &s);
    // A CA, the etcd server's certificate (for 127.0.0.1) and one member's client certificate.
    let ca = TestCa::new();
    let (server_cert, server_key) = ca.issue("127.0.0.1");
    let (client_cert, client_key) = ca.issue("locus");
    let tls = EtcdTls {
        cert: write("etcd.pem", server_cert),
        key: write("etcd.key", server_key),
        ca: write("ca.pem", ca.pem.clone()),
    };
    let (client_cert, client_key) = (
        write("client.pem", client_cert),
        write("client.key", client_key),
    );
    let node = |name: &str, spec: &str, extra: &[&str]| {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--listen", &addr, "--membership", spec];
        args.extend_from_slice(extra);
        (env.daemon(name, &args, &[]), addr)
    };
    let addrs = |d: &Daemon| -> Vec<String> { members(d).into_iter().map(|(a, _)| a).collect() };
    let refused = |d: &Daemon| {
        wait_for("the etcd session to fail", 20, || {
            d.log_text().contains("etcd session ended")
        });
    };

    // TLS with client certificates: members with a certificate register and see each other.
    let etcd = Etcd::start_with(&env, "etcd-tls", Some(&tls));
    let spec = format!("etcd://127.0.0.1:{}/locus-tls", etcd.port);
    let with_cert = [
        "--etcd-ca",
        tls.ca.as_str(),
        "--etcd-cert",
        &client_cert,
        "--etcd-key",
        &client_key,
    ];
    let (n0, a0) = node("n0", &spec, &with_cert);
    let (n1, a1) = node("n1", &spec, &with_cert);
    wait_for("two members over TLS", 20, || {
        let (m0, m1) = (addrs(&n0), addrs(&n1));
        m0.len() == 2 && m1.len() == 2 && m0.contains(&a1) && m1.contains(&a0)
    });
    // Without a client certificate, or without TLS, a node cannot register.
    let (n2, a2) = node("n2", &spec, &["--etcd-ca", tls.ca.as_str()]);
    let (n3, a3) = node("n3", &spec, &[]);
    refused(&n2);
    refused(&n3);
    assert!(n0.log_text().contains("registered in etcd"));
    let m0 = addrs(&n0);
    assert!(!m0.contains(&a2) && !m0.contains(&a3), "{m0:?}");
    drop((n2, n3));

    // User and password (an etcd with authentication on): the right password registers.
    let plain = Etcd::start_with(&env, "etcd-auth", None);
    plain.enable_auth("s3cret-etcd-password");
    let spec = format!("etcd://127.0.0.1:{}/locus-auth", plain.port);
    let good = write("pw", "s3cret-etcd-password\n".into());
    let bad = write("bad-pw", "wrong".into());
    let (n4, a4) = node(
        "n4",
        &spec,
        &["--etcd-user", "root", "--etcd-password-file", &good],
    );
    let (n5, a5) = node(
        "n5",
        &spec,
        &["--etcd-user", "root", "--etcd-password-file", &good],
    );
    wait_for("two members with a password", 20, || {
        let (m4, m5) = (addrs(&n4), addrs(&n5));
        m4.contains(&a5) && m5.contains(&a4)
    });
    let (n6, a6) = node(
        "n6",
        &spec,
        &["--etcd-user", "root", "--etcd-password-file", &bad],
    );
    let (n7, a7) = node("n7", &spec, &[]);
    refused(&n6);
    refused(&n7);
    let m4 = addrs(&n4);
    assert!(!m4.contains(&a6) && !m4.contains(&a7), "{m4:?}");
    // The password reaches no log.
    for d in [&n4, &n5, &n6] {
        assert!(!d.log_text().contains("s3cret-etcd-password"));
    }

    // An etcd elsewhere without TLS and credentials is refused before anything starts.
    let check = |extra: &[&str]| {
        let mut args = vec![
            "daemon",
            "--listen",
            "127.0.0.1:7999",
            "--membership",
            "etcd://10.1.2.3:2379/p",
            "--check-config",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(LOCUS)
            .args(&args)
            .env_remove("LOCUS_CONFIG")
            .output()
            .unwrap()
    };
    let o = check(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--etcd-ca") && stderr(&o).contains("--insecure-etcd"),
        "{}",
        stderr(&o)
    );
    let o = check(&["--etcd-user", "root", "--etcd-password-file", &good]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a password in clear: {}",
        stderr(&o)
    );
    for ok in [
        vec!["--insecure-etcd"],
        with_cert.to_vec(),
        vec![
            "--etcd-ca",
            tls.ca.as_str(),
            "--etcd-user",
            "root",
            "--etcd-password-file",
            &good,
        ],
    ] {
        let o = check(&ok);
        assert!(o.status.success(), "{ok:?}: {}", stderr(&o));
    }
}

#[test]
fn etcd_membership_follows_joins_and_leaves_during_reads() {
    let env = Env::with(SimOptions {
        faults: Faults {
            throttle_bps: 4 << 20,
            ..Faults::default()
        },
        ..SimOptions::default()
    });
    let files = random_files(8, 1 << 20, 81);
    env.sim.commit("model", REPO, files.clone());
    let etcd = Etcd::start(&env);
    let spec = format!("etcd://127.0.0.1:{}/locus-test", etcd.port);
    let node = |name: &str| {
        let addr = format!("127.0.0.1:{}", free_port());
        let d = env.daemon(
            name,
            &[
                "--chunk-size",
                CHUNK,
                "--listen",
                &addr,
                "--membership",
                &spec,
                "--membership-ttl",
                "2",
            ],
            &[],
        );
        (d, addr)
    };
    let count_up = |d: &Daemon| members(d).iter().filter(|(_, s)| s == "up").count();
    let (n0, _) = node("n0");
    let (mut n1, _) = node("n1");
    wait_for("two members", 20, || {
        members(&n0).len() == 2 && members(&n1).len() == 2
    });

    let read_all = |d: &Daemon| {
        for (path, want) in &files {
            let got = d.ok(&["cat", &format!("hf://acme/model/{path}")]);
            assert!(got == want.to_vec(), "{path} differs");
        }
    };
    // A member joins while n0 reads, without a restart of the others.
    let (mut n2, a2) = std::thread::scope(|s| {
        let r = s.spawn(|| read_all(&n0));
        let joined = node("n2");
        wait_for("three members", 20, || {
            members(&n0).len() == 3 && members(&n1).len() == 3
        });
        r.join().unwrap();
        joined
    });
    read_all(&n2);
    // A member dies while n1 reads: its lease expires and it leaves the ring.
    std::thread::scope(|s| {
        let r = s.spawn(|| read_all(&n1));
        std::thread::sleep(Duration::from_millis(200));
        n2.signal(Signal::SIGKILL);
        r.join().unwrap();
    });
    wait_for("the dead member to leave", 20, || {
        let m = members(&n0);
        m.len() == 2 && !m.iter().any(|(a, _)| *a == a2)
    });
    assert_eq!(count_up(&n0), 2);
    // A member that stops cleanly leaves at once (its lease is revoked).
    let status = n1.signal(Signal::SIGTERM);
    assert!(status.success());
    let t = Instant::now();
    wait_for("the stopped member to leave", 10, || {
        members(&n0).len() == 1
    });
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "left after {:?}, slower than the lease",
        t.elapsed()
    );
    read_all(&n0);
}

fn write_token(env: &Env, name: &str, token: &str) -> String {
    let p = env.path(name);
    std::fs::write(&p, token).unwrap();
    p.display().to_string()
}

#[test]
fn pinning_is_each_nodes_own_decision() {
    for accept in [false, true] {
        let env = Env::new();
        let files = random_files(3, 300_000, 77);
        env.sim.commit("model", REPO, files.clone());
        let extra: &[&str] = if accept { &["--accept-peer-pins"] } else { &[] };
        let (ds, _) = static_cluster(&env, 2, extra);
        ds[0].ok(&["warm", "hf://acme/model", "--scope", "all-nodes", "--pin"]);
        let pinned = |d: &Daemon| d.json(&["status", "--json"])["pinned"].as_u64().unwrap();
        let held = |d: &Daemon| d.json(&["status", "--json"])["files"].as_u64().unwrap();
        assert_eq!(pinned(&ds[0]), 3, "the node asked pins");
        // The peer holds a full copy either way; it pins only if it says it accepts peers' pins.
        assert_eq!(held(&ds[1]), 3);
        assert_eq!(
            pinned(&ds[1]),
            if accept { 3 } else { 0 },
            "accept = {accept}"
        );
    }
}

#[test]
fn a_peer_port_open_to_the_network_needs_authentication() {
    let env = Env::new();
    let tok = write_token(&env, "tok", "0123456789abcdef-good-token");
    let cache = env.path("c");
    let sock = env.path("s.sock");
    let run = |extra: &[&str]| {
        std::process::Command::new(LOCUS)
            .args(["daemon", "--cache-dir", cache.to_str().unwrap()])
            .args(["--socket", sock.to_str().unwrap()])
            .args(extra)
            .env_remove("LOCUS_CONFIG")
            .env_remove("LOCUS_INSECURE_PEERS")
            .output()
            .unwrap()
    };
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let adv = format!("10.1.2.3:{port}");
    // Refused before anything starts: one line naming the remedies, exit 2.
    let o = run(&["--listen", &any, "--advertise", &adv]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("--peer-token-file") && e.contains("--insecure-peers"),
        "{e}"
    );
    assert!(
        !sock.exists() && !cache.exists(),
        "nothing was started or made"
    );
    // Accepted: with a token, with --insecure-peers said out loud, or on loopback only.
    let lo = format!("127.0.0.1:{port}");
    let lo6 = format!("[::1]:{port}");
    for extra in [
        vec![
            "--listen",
            &any,
            "--advertise",
            &adv,
            "--peer-token-file",
            &tok,
        ],
        vec!["--listen", &any, "--advertise", &adv, "--insecure-peers"],
        vec!["--listen", &lo],
        vec!["--listen", &lo6],
    ] {
        let mut args = extra.clone();
        args.push("--check-config");
        let o = run(&args);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success() && out.contains("config ok"),
            "{extra:?}: {}",
            stderr(&o)
        );
        let insecure = extra.contains(&"--insecure-peers");
        assert!(
            out.contains(&format!("insecure-peers = {insecure}")),
            "{out}"
        );
    }
}

#[test]
fn peers_with_a_token_refuse_a_node_without_it() {
    let env = Env::new();
    let files = random_files(3, 1 << 20, 91);
    env.sim.commit("model", REPO, files.clone());
    let good = write_token(&env, "good", "0123456789abcdef-good-token");
    let bad = write_token(&env, "bad", "0123456789abcdef-other-token");
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = addrs.join(",");
    let ds: Vec<Daemon> = (0..3)
        .map(|i| {
            let tok = if i < 2 { &good } else { &bad };
            env.daemon(
                &format!("n{i}"),
                &[
                    "--chunk-size",
                    CHUNK,
                    "--listen",
                    &addrs[i],
                    "--peers",
                    &peers,
                    "--peer-token-file",
                    tok,
                ],
                &[],
            )
        })
        .collect();
    let state = |d: &Daemon, a: &str| {
        members(d)
            .into_iter()
            .find(|(x, _)| x == a)
            .map(|(_, s)| s)
            .unwrap()
    };
    wait_for("n0 and n1 to trust each other, not n2", 20, || {
        state(&ds[0], &addrs[1]) == "up"
            && state(&ds[0], &addrs[2]) == "down"
            && state(&ds[2], &addrs[0]) == "down"
    });
    ds[0].ok(&["warm", "hf://acme/model", "--scope", "cluster"]);
    for d in &ds {
        for (path, want) in &files {
            let got = d.ok(&["cat", &format!("hf://acme/model/{path}")]);
            assert!(got == want.to_vec(), "{path} differs");
        }
    }
    let st = ds[1].json(&["status", "--json"]);
    assert!(st["peer_bytes"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(ds[2].json(&["status", "--json"])["peer_bytes"], 0);
    for d in &ds {
        let log = d.log_text();
        assert!(!log.contains("good-token") && !log.contains("other-token"));
    }
    assert!(ds[0].log_text().contains("peer_auth=\"token\""));
    // Without the token a member says nothing, not even which chunks it holds.
    env.rt.block_on(async {
        use locus_grpc::v1 as pb;
        let mut c = pb::peer_client::PeerClient::connect(format!("http://{}", addrs[0]))
            .await
            .unwrap();
        let r = c
            .holds(pb::HoldsRequest {
                keys: vec!["k".into()],
                chunk_size: 256 << 10,
            })
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::Unauthenticated);
    });
}

#[test]
fn peers_with_mutual_tls_talk_only_to_each_other() {
    let env = Env::new();
    let files = random_files(3, 1 << 20, 101);
    env.sim.commit("model", REPO, files.clone());
    // A CA and one certificate for the name every member carries; the same CA's certificate
    // for another service is not a member's.
    let ca = TestCa::new();
    let (node_cert, node_key) = ca.issue("locus-peer");
    let (other_cert, other_key) = ca.issue("other-service");
    let ca_pem = write_file(&env, "ca.pem", &ca.pem);
    let cert_pem = write_file(&env, "node.pem", &node_cert);
    let key_pem = write_file(&env, "node.key", &node_key);
    let other_pem = write_file(&env, "other.pem", &other_cert);
    let other_key_pem = write_file(&env, "other.key", &other_key);
    let addrs: Vec<String> = (0..4)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = addrs.join(",");
    let ds: Vec<Daemon> = (0..4)
        .map(|i| {
            let mut args = vec![
                "--chunk-size",
                CHUNK,
                "--listen",
                &addrs[i],
                "--peers",
                &peers,
            ];
            if i != 2 {
                let (cert, key) = if i < 2 {
                    (&cert_pem, &key_pem)
                } else {
                    (&other_pem, &other_key_pem)
                };
                args.extend(["--peer-tls-cert", cert, "--peer-tls-key", key]);
                args.extend(["--peer-tls-ca", &ca_pem]);
            }
            env.daemon(&format!("n{i}"), &args, &[])
        })
        .collect();
    let state = |d: &Daemon, a: &str| {
        members(d)
            .into_iter()
            .find(|(x, _)| x == a)
            .map(|(_, s)| s)
            .unwrap()
    };
    // n3 trusts n0's certificate (right CA, right name), but n0 refuses n3's: a handshake
    // alone would let it in.
    wait_for("n0 and n1 over mTLS, n2 and n3 shut out", 20, || {
        state(&ds[0], &addrs[1]) == "up"
            && state(&ds[1], &addrs[0]) == "up"
            && state(&ds[0], &addrs[2]) == "down"
            && state(&ds[2], &addrs[0]) == "down"
            && state(&ds[0], &addrs[3]) == "down"
            && state(&ds[3], &addrs[0]) == "down"
            && state(&ds[3], &addrs[1]) == "down"
    });
    ds[0].ok(&["warm", "hf://acme/model", "--scope", "cluster"]);
    for (path, want) in &files {
        let got = ds[1].ok(&["cat", &format!("hf://acme/model/{path}")]);
        assert!(got == want.to_vec(), "{path} differs");
        for outsider in &ds[2..] {
            let got = outsider.ok(&["cat", &format!("hf://acme/model/{path}")]);
            assert!(got == want.to_vec(), "{path} differs");
        }
    }
    let st = ds[3].json(&["status", "--json"]);
    assert_eq!(st["peer_bytes"].as_u64(), Some(0), "{st}");
    let st = ds[1].json(&["status", "--json"]);
    assert!(st["peer_bytes"].as_u64().unwrap() > 0, "{st}");
    assert!(ds[0].log_text().contains("peer_auth=\"mtls\""));
    // A name no certificate can carry would turn the check off: refused at start.
    let o = std::process::Command::new(LOCUS)
        .args(["daemon", "--listen", "127.0.0.1:7998", "--check-config"])
        .args(["--peer-tls-cert", &cert_pem, "--peer-tls-key", &key_pem])
        .args(["--peer-tls-ca", &ca_pem, "--peer-tls-name", "not a name"])
        .env_remove("LOCUS_CONFIG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--peer-tls-name"), "{}", stderr(&o));
}

#[test]
fn renewed_peer_certificates_are_taken_up_without_a_restart() {
    let env = Env::new();
    let files = random_files(3, 1 << 20, 103);
    env.sim.commit("model", REPO, files.clone());
    // A CA and a member certificate: (CA PEM, certificate PEM, key PEM).
    let issue = || {
        let ca = TestCa::new();
        let (cert, key) = ca.issue("locus-peer");
        (ca.pem, cert, key)
    };
    // As a renewal lands in a Secret volume: each file replaced whole.
    let put = |dir: &str, (ca, cert, key): &(String, String, String)| {
        let d = env.path(dir);
        std::fs::create_dir_all(&d).unwrap();
        for (name, text) in [("ca.pem", ca), ("tls.pem", cert), ("tls.key", key)] {
            let tmp = d.join(format!(".{name}"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, d.join(name)).unwrap();
        }
        let p = |n: &str| d.join(n).display().to_string();
        [p("tls.pem"), p("tls.key"), p("ca.pem")]
    };
    let old = issue();
    let new = issue();
    let shared = put("tls", &old);
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = addrs.join(",");
    let start = |i: usize, files: &[String; 3]| {
        let args = [
            "--chunk-size",
            CHUNK,
            "--listen",
            &addrs[i],
            "--peers",
            &peers,
            "--peer-tls-reload",
            "1",
            "--peer-tls-cert",
            &files[0],
            "--peer-tls-key",
            &files[1],
            "--peer-tls-ca",
            &files[2],
        ];
        env.daemon(&format!("n{i}"), &args, &[])
    };
    let state = |d: &Daemon, a: &str| {
        members(d)
            .into_iter()
            .find(|(x, _)| x == a)
            .map(|(_, s)| s)
            .unwrap()
    };
    let n0 = start(0, &shared);
    let n1 = start(1, &shared);
    wait_for("n0 and n1 over the first CA", 20, || {
        state(&n0, &addrs[1]) == "up" && state(&n1, &addrs[0]) == "up"
    });
    // The renewal: a new CA and certificate in the files the two read; a third member starts
    // with the new ones only.
    put("tls", &new);
    wait_for("both to take up the new files", 20, || {
        [&n0, &n1]
            .iter()
            .all(|d| d.log_text().contains("peer TLS files changed"))
    });
    let fresh = put("tls-new", &new);
    let n2 = start(2, &fresh);
    // The newcomer places chunks at their owners: only over TLS with the new CA do n0 and n1
    // take theirs (a refused owner would leave n2 holding everything itself).
    n2.ok(&["warm", "hf://acme/model", "--scope", "cluster"]);
    for d in [&n0, &n1] {
        let st = d.json(&["status", "--json"]);
        assert!(st["cache_bytes"].as_u64().unwrap() > 0, "{st}");
    }
    for (path, want) in &files {
        let got = n2.ok(&["cat", &format!("hf://acme/model/{path}")]);
        assert!(got == want.to_vec(), "{path} differs");
    }
    let st = n2.json(&["status", "--json"]);
    assert!(st["peer_bytes"].as_u64().unwrap() > 0, "{st}");
    // And the two that renewed still talk to each other, on new connections.
    n1.ok(&["warm", "hf://acme/model"]);
    let st = n1.json(&["status", "--json"]);
    assert!(st["peer_bytes"].as_u64().unwrap() > 0, "{st}");
    drop(n1);
}

#[test]
fn with_two_replicas_a_dead_owner_costs_no_origin_bytes() {
    let env = Env::new();
    let files = random_files(4, 1 << 20, 111);
    env.sim.commit("model", REPO, files.clone());
    let (mut ds, _) = static_cluster(&env, 3, &["--replicas", "2"]);
    ds[0].ok(&["warm", "hf://acme/model", "--scope", "cluster"]);
    assert_eq!(env.sim.stats().data_bytes, total(&files));
    let held: u64 = ds
        .iter()
        .map(|d| {
            d.json(&["status", "--json"])["cache_bytes"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(held, 2 * total(&files), "every chunk at two owners");
    ds[1].signal(Signal::SIGKILL);
    for (path, want) in &files {
        let got = ds[2].ok(&["cat", &format!("hf://acme/model/{path}")]);
        assert!(got == want.to_vec(), "{path} differs");
    }
    assert_eq!(
        env.sim.stats().data_bytes,
        total(&files),
        "the surviving replicas served every chunk"
    );
}

/// A listing over one message's cap (450,000 files: 75 MB in one message, the cap is 64 MiB)
/// goes from its owner to the other member in pages: the origin is listed once for the
/// cluster, and both nodes list it whole.
#[test]
fn a_listing_over_one_messages_cap_is_listed_once_for_the_cluster() {
    const N: u64 = 450_000;
    let env = Env::new();
    env.sim
        .commit_generated("dataset", "bench/many", N, 100..=200, 1);
    let (ds, _) = static_cluster(&env, 2, &[]);
    for d in &ds {
        let v = d.json(&["ls", "hf://datasets/bench/many", "--json"]);
        assert_eq!(v["files"].as_array().unwrap().len() as u64, N);
    }
    // One listing: N files and N / 1,000 folders, in pages of 1,000 entries.
    let pages = env.sim.stats().get("api_tree");
    assert_eq!(
        pages,
        (N + N / 1000).div_ceil(1000),
        "the origin listed once"
    );
    for d in &ds {
        assert!(
            members(d).iter().all(|(_, s)| s == "up"),
            "{:?}",
            members(d)
        );
    }
}

/// An origin outage costs the origin little more than one node's attempts per call: a
/// chunk's primary spends its attempts and a member that reads it tries once more itself (so
/// that a fault of the primary alone, its egress or a limit on its address, does not fail the
/// cluster); a revision's owner spends its attempts and the member its own.
#[test]
fn an_origin_outage_costs_one_nodes_attempts_and_a_members_one_more_try() {
    let env = Env::new();
    // 1 MiB: four chunks, each with its primary.
    let files = random_files(1, 1 << 20, 9);
    env.sim.commit("model", REPO, files.clone());
    let (ds, _) = static_cluster(&env, 2, &[]);
    let fail = |kind: &str| Faults {
        fail: vec![locus_testorigin::FailRule {
            kind: kind.into(),
            status: 503,
            count: u32::MAX,
            retry_after: Some(0),
        }],
        ..Faults::default()
    };
    // Metadata: the owner's 8 attempts, and the other member's own 8.
    env.sim.set_faults(fail("api"));
    let mut calls = Vec::new();
    for d in &ds {
        env.sim.reset_stats();
        let out = d.locus(&["ls", &format!("hf://{REPO}")]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        calls.push(env.sim.stats().get("api_revision"));
    }
    calls.sort();
    assert_eq!(calls, [8, 16], "revision calls per ls (owner, member)");
    env.sim.set_faults(Faults::default());
    for d in &ds {
        d.ok(&["ls", &format!("hf://{REPO}")]);
    }
    // Chunks: each member reads all four; some chunks' primary is the other member, which
    // spends the attempts (8), and the reader tries once more.
    env.sim.set_faults(fail("cdn"));
    for d in &ds {
        env.sim.reset_stats();
        let out = d.locus(&["cat", &format!("hf://{REPO}/{}", files[0].0)]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
        // The read fails with the first chunk that gives up; the others go on: count once
        // nothing has moved for a while.
        let mut last = (u64::MAX, Instant::now());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = env.sim.stats().get("cdn");
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > Duration::from_millis(1500) {
                break;
            }
            assert!(Instant::now() < deadline, "{n} CDN requests and counting");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            (4 * 8..=4 * 8 + 4).contains(&last.0),
            "{} CDN requests for 4 chunks",
            last.0
        );
    }
}
