//! The Hub gateway against the simulated Hub, with real clients: the `hf-hub` crate and plain
//! HTTP (reqwest). The node is in this process; the daemon's own flag is tested from Python.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use locus_core::Secret;
use locus_gateway::{AccessCache, HubGateway};
use locus_node::{Node, NodeConfig};
use locus_origin::{HfConfig, HfOrigin, Origins, RetryPolicy};
use locus_store::Store;
use locus_testorigin::{model, Faults, HubSim, SimOptions};

const NODE_TOKEN: &str = "hf_node_token";
const USER_TOKEN: &str = "hf_user_token";

struct Setup {
    sim: HubSim,
    url: String,
    node: Arc<Node>,
    _cache: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A Hub with `acme/model` (public) and `acme/gated` (gated: the node's token and the user's
/// open it), a node with 1 MiB chunks whose origin is that Hub, and its gateway.
async fn setup() -> Setup {
    let sim = HubSim::start(SimOptions {
        faults: Faults {
            token: Some(NODE_TOKEN.into()),
            tokens: vec![USER_TOKEN.into()],
            gated: vec!["acme/gated".into()],
            ..Faults::default()
        },
        ..SimOptions::default()
    })
    .await
    .unwrap();
    sim.commit("model", "acme/model", files("acme/model"));
    sim.commit("model", "acme/gated", files("acme/gated"));
    let cache = tempfile::tempdir().unwrap();
    let hub = Arc::new(
        HfOrigin::new(HfConfig {
            endpoint: sim.url(),
            token: Some(Secret::new(NODE_TOKEN)),
            retry: RetryPolicy {
                attempts: 2,
                base: Duration::from_millis(1),
                cap: Duration::from_millis(5),
            },
            ..HfConfig::from_env()
        })
        .unwrap(),
    );
    let store = Store::open(cache.path(), 1 << 30).unwrap();
    let node = Node::new(
        Arc::new(Origins {
            hf: Some(hub.clone()),
            ..Origins::default()
        }),
        store,
        NodeConfig {
            chunk_size: 1 << 20,
            ..NodeConfig::default()
        },
    );
    let gw = HubGateway::new(
        node.clone(),
        AccessCache::new(hub, Duration::from_secs(3600)),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(locus_gateway::serve(l, gw.router(), async move {
        let _ = rx.await;
    }));
    Setup {
        sim,
        url,
        node,
        _cache: cache,
        _stop: stop,
    }
}

/// The files [`setup`] committed to `repo`.
fn files(repo: &str) -> Vec<(String, Bytes)> {
    match repo {
        "acme/model" => model::generate_model(3 << 20, 2, 1),
        _ => model::generate_model(1 << 20, 1, 2),
    }
}

fn hf_api(url: &str, cache: &tempfile::TempDir, token: Option<&str>) -> hf_hub::api::tokio::Api {
    hf_hub::api::tokio::ApiBuilder::new()
        .with_endpoint(url.to_string())
        .with_cache_dir(cache.path().to_path_buf())
        .with_progress(false)
        .with_token(token.map(String::from))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hf_hub_crate_downloads_through_the_gateway_and_a_second_download_costs_the_origin_nothing(
) {
    let s = setup().await;
    let want = files("acme/model");
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let repo = hf_api(&s.url, &dir, None).model("acme/model".into());
        let info = repo.info().await.expect("repo info");
        let mut listed: Vec<_> = info.siblings.iter().map(|f| f.rfilename.clone()).collect();
        listed.sort();
        let mut names: Vec<_> = want.iter().map(|(p, _)| p.clone()).collect();
        names.sort();
        assert_eq!(listed, names);
        for (path, data) in &want {
            let local = repo
                .get(path)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(std::fs::read(&local).unwrap() == data.as_ref(), "{path}");
        }
        let st = s.sim.stats();
        if round == 0 {
            assert!(
                st.data_bytes > 0,
                "the first download came from the origin: {st:?}"
            );
            s.sim.reset_stats();
        } else {
            assert_eq!(
                st.data_bytes, 0,
                "the second download read the origin: {st:?}"
            );
            assert_eq!(st.get("resolve") + st.get("cdn"), 0, "{st:?}");
        }
    }
    assert_eq!(s.sim.stats().cdn_authorized, 0);
}

/// Every page of a tree, following `Link: rel="next"`.
async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn tree_pages(client: &reqwest::Client, first: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(url) = next.take() {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        next = r
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.split(';').next())
            .map(|u| u.trim().trim_matches(['<', '>']).to_string());
        let page: Vec<serde_json::Value> = r.json().await.unwrap();
        out.extend(page);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn trees_and_infos_read_as_the_hubs_and_bytes_obey_ranges() {
    let s = setup().await;
    // A dataset of 2,500 files in three folders and a few at the top: pages of 1,000.
    let mut ds: Vec<(String, Bytes)> = (0..2500)
        .map(|i| {
            (
                format!("{:04}/{i:05}.txt", i / 1000),
                Bytes::from(format!("row {i}\n")),
            )
        })
        .collect();
    ds.push(("README.md".into(), Bytes::from_static(b"# ds\n")));
    ds.push(("big.bin".into(), model::random_bytes(7, 300 << 10)));
    let sha = s.sim.commit("dataset", "acme/ds", ds.clone());
    let c = reqwest::Client::new();
    for q in [
        "?recursive=true",
        "",
        "/0001?recursive=false",
        "/0002?recursive=true",
    ] {
        let (path, query) = q.split_once('?').unwrap_or((q, ""));
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let ours = tree_pages(
            &c,
            &format!("{}/api/datasets/acme/ds/tree/main{path}{query}", s.url),
        )
        .await;
        let hubs = tree_pages(
            &c,
            &format!(
                "{}/api/datasets/acme/ds/tree/main{path}{query}",
                s.sim.url()
            ),
        )
        .await;
        assert_eq!(ours.len(), hubs.len(), "{q}");
        assert_eq!(ours, hubs, "{q}");
    }
    let info = get_json(&c, &format!("{}/api/datasets/acme/ds/revision/main", s.url)).await;
    assert_eq!(info["sha"], sha);
    assert_eq!(info["siblings"].as_array().unwrap().len(), ds.len());
    // `expand`: the properties named only, as the Hub answers them.
    for q in ["expand=sha", "expand=sha&expand=siblings"] {
        let mut answers = Vec::new();
        for base in [&s.url, &s.sim.url()] {
            answers.push(
                get_json(
                    &c,
                    &format!("{base}/api/datasets/acme/ds/revision/main?{q}"),
                )
                .await,
            );
        }
        assert_eq!(answers[0]["sha"], sha, "{q}");
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&answers[0]), keys(&answers[1]), "{q}");
        assert_eq!(answers[0]["siblings"], answers[1]["siblings"], "{q}");
    }
    let missing = c
        .get(format!("{}/api/datasets/acme/ds/tree/main/nope", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-error-code"], "EntryNotFound");

    // HEAD: the headers clients rely on, as the Hub sends them.
    let big = &ds.last().unwrap().1;
    let resolve = format!("{}/datasets/acme/ds/resolve/main/big.bin", s.url);
    let head = c.head(&resolve).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let h = head.headers();
    assert_eq!(h["x-repo-commit"], sha.as_str());
    let sha256 = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(big))
    };
    assert_eq!(h["etag"], format!("\"{sha256}\"").as_str());
    assert_eq!(h["x-linked-etag"], format!("\"{sha256}\"").as_str());
    assert_eq!(h["x-linked-size"], big.len().to_string().as_str());
    assert_eq!(h["content-length"], big.len().to_string().as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    let small = c
        .head(format!("{}/datasets/acme/ds/resolve/main/README.md", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        small.headers()["etag"],
        format!("\"{}\"", locus_core::git_blob_id(b"# ds\n")).as_str()
    );
    assert!(small.headers().get("x-linked-etag").is_none());

    // Ranges, cold first (the file is fetched whole and checked first), then warm.
    for (range, want) in [
        ("bytes=1000-1999", &big[1000..2000]),
        ("bytes=-10", &big[big.len() - 10..]),
        ("bytes=307000-", &big[307000..]),
        ("bytes=0-", &big[..]),
    ] {
        let r = c.get(&resolve).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        let cr = r.headers()["content-range"].to_str().unwrap().to_string();
        assert!(cr.ends_with(&format!("/{}", big.len())), "{cr}");
        assert!(r.bytes().await.unwrap() == want, "{range}");
    }
    let r = c
        .get(&resolve)
        .header("range", "bytes=999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", big.len()).as_str()
    );
    let r = c.get(&resolve).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == big);
    for (path, code) in [
        ("/datasets/acme/ds/resolve/main/nope.bin", "EntryNotFound"),
        (
            "/datasets/acme/ds/resolve/nobranch/big.bin",
            "RevisionNotFound",
        ),
        ("/datasets/acme/nope/resolve/main/big.bin", "RepoNotFound"),
    ] {
        let r = c.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["x-error-code"], code, "{path}");
    }
    let r = c
        .get(format!("{}/acme/model/resolve/main/a/../../x", s.url))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 400 || r.status() == 404, "{}", r.status());
    let r = c.post(&resolve).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gated_repo_is_served_only_to_a_token_the_hub_accepts() {
    let s = setup().await;
    let c = reqwest::Client::new();
    let (path, data) = files("acme/gated")
        .into_iter()
        .find(|(p, _)| p.ends_with(".safetensors"))
        .unwrap();
    let url = format!("{}/acme/gated/resolve/main/{path}", s.url);
    // The node's token opens the repo; a client without one, or with a wrong one, gets
    // nothing, whatever the node holds.
    for round in 0..2 {
        for token in [None, Some("hf_wrong")] {
            let mut req = c.get(&url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "round {round}, token {token:?}");
            assert_eq!(r.headers()["x-error-code"], "GatedRepo");
            let info = c
                .get(format!("{}/api/models/acme/gated/tree/main", s.url))
                .send()
                .await
                .unwrap();
            assert_eq!(info.status(), 401, "the tree too");
        }
        let r = c.get(&url).bearer_auth(USER_TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap() == data, "round {round}");
    }
    // The public repo needs no token.
    let r = c
        .get(format!("{}/acme/model/resolve/main/config.json", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Each (repo, token) was asked of the Hub once: the user's and the wrong token's
    // auth-checks, the anonymous info calls (repo info shows it gated).
    let st = s.sim.stats();
    assert_eq!(st.get("api_auth_check"), 2, "{st:?}");
    // The hf-hub crate with the user's token, and without.
    let dir = tempfile::tempdir().unwrap();
    let repo = hf_api(&s.url, &dir, Some(USER_TOKEN)).model("acme/gated".into());
    assert!(std::fs::read(repo.get(&path).await.unwrap()).unwrap() == data);
    let dir = tempfile::tempdir().unwrap();
    let repo = hf_api(&s.url, &dir, None).model("acme/gated".into());
    assert!(repo.get(&path).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_bytes_never_complete_a_response() {
    let s = setup().await;
    let c = reqwest::Client::new();
    // 8 chunks, each origin request 30 ms away: the first chunks leave before the file is
    // complete, so the node's own whole-file check cannot have caught a wrong one yet.
    let data = model::random_bytes(11, 8 << 20);
    s.sim
        .commit("model", "acme/big", vec![("w.bin".into(), data.clone())]);
    let url = format!("{}/acme/big/resolve/main/w.bin", s.url);
    // The origin flips a byte in the next body: the node stores what it got (its CRC is of
    // those bytes), and the gateway's hash of the whole response finds it before the end.
    s.sim.set_faults(Faults {
        corrupt: 1,
        delay_ms: 30,
        ..s.sim.faults()
    });
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    if let Ok(b) = r.bytes().await {
        panic!(
            "a wrong file came out whole ({} bytes, right: {})",
            b.len(),
            b == data
        );
    }
    assert_eq!(s.sim.faults().corrupt, 0, "the fault fired");
    // The node's own check found it too, and fetched again: the next response is right.
    let mut ok = false;
    for _ in 0..100 {
        let r = c.get(&url).send().await.unwrap();
        if let Ok(b) = r.bytes().await {
            assert!(b == data, "a complete body is the origin's");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the file was never served right");
    s.sim.set_faults(Faults {
        delay_ms: 0,
        ..s.sim.faults()
    });
    let (path, data) = files("acme/model")
        .into_iter()
        .max_by_key(|(_, d)| d.len())
        .unwrap();
    let url = format!("{}/acme/model/resolve/main/{path}", s.url);
    let r = c.get(&url).send().await.unwrap();
    assert!(r.bytes().await.unwrap() == data);

    // Rot on disk: a byte of the cached file changes; the chunk fails its check, is dropped,
    // fetched again, and the response is right.
    let key = {
        let uri = locus_core::LocusUri::parse(&format!("hf://acme/model/{path}")).unwrap();
        s.node.resolve_file(&uri).await.unwrap().key
    };
    // The node marks the file verified once its own fetch has hashed it, which may end a
    // moment after the response did.
    let mut h = None;
    for _ in 0..100 {
        h = s.node.store().complete_file(&key);
        if h.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = h.expect("the file is cached and verified");
    let f = std::fs::OpenOptions::new().write(true).open(&h.0).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"\xAA\xBB", 1234).unwrap();
    drop(f);
    let before = s.sim.stats().data_bytes;
    let r = c
        .get(&url)
        .header("range", "bytes=0-9999")
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == data[..10000]);
    assert!(
        s.sim.stats().data_bytes > before,
        "the rotted chunk was fetched again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_clients_at_once_over_kept_alive_connections() {
    let s = setup().await;
    let data = model::random_bytes(21, 6 << 20);
    s.sim
        .commit("model", "acme/many", vec![("w.bin".into(), data.clone())]);
    let url = format!("{}/acme/many/resolve/main/w.bin", s.url);
    // 64 clients, 4 ranged reads each, on one pool of kept-alive connections.
    let c = reqwest::Client::new();
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let (c, url, data) = (c.clone(), url.clone(), data.clone());
            tokio::spawn(async move {
                for k in 0..4u64 {
                    let start = (i * 97_003 + k * 1_000_003) % (data.len() as u64 - 300_000);
                    let end = start + 100_000 + (i * k) % 200_000;
                    let r = c
                        .get(&url)
                        .header("range", format!("bytes={start}-{}", end - 1))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 206);
                    let b = r.bytes().await.unwrap();
                    assert!(
                        b == data[start as usize..end as usize],
                        "client {i} read {k}"
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Two requests on one connection: HTTP/1.1 keeps it open.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut seen = String::new();
    for _ in 0..2 {
        conn.write_all(
            format!("HEAD /acme/many/resolve/main/w.bin HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(seen.matches("HTTP/1.1 200 OK").count(), 2, "{seen}");
}

/// A file checked whole stops being so during a response (chunk 5 rots on disk, fails its
/// check and comes again from an origin that flips a byte): nothing more leaves until the
/// whole file is checked again, so the response is the origin's to its end.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_unchecked_mid_response_sends_nothing_more_until_checked_whole() {
    use std::os::unix::fs::FileExt;
    let s = setup().await;
    let c = reqwest::Client::new();
    let data = model::random_bytes(13, 8 << 20);
    s.sim
        .commit("model", "acme/rot", vec![("w.bin".into(), data.clone())]);
    let uri = locus_core::LocusUri::parse("hf://acme/rot/w.bin").unwrap();
    let file = s.node.resolve_file(&uri).await.unwrap();
    // Checked whole before the response, which is therefore not hashed as it is sent.
    drop(
        s.node
            .ensure_file(&file, &locus_node::WarmProgress::default())
            .await
            .unwrap(),
    );
    let (path, ..) = s
        .node
        .store()
        .complete_file(&file.key)
        .expect("cached and checked");
    // Rot in chunk 5, on a later change time than the last check (so no chunk is trusted).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let at = (5u64 << 20) + 1234;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[data[at as usize] ^ 0xFF], at).unwrap();
    drop(f);
    // Chunks 0-4 leave; chunk 5 fails its check, the file stops being checked whole, and the
    // chunk comes again with its middle byte flipped (its CRC is of those bytes: only the
    // whole-file digest can tell).
    s.sim.set_faults(Faults {
        corrupt: 1,
        ..s.sim.faults()
    });
    let r = c
        .get(format!("{}/acme/rot/resolve/main/w.bin", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.expect("the response ends");
    assert_eq!(s.sim.faults().corrupt, 0, "chunk 5 was fetched again");
    assert!(got == data, "no byte that failed the digest left");
}
