//! The simulated Hub is faithful: the `hf-hub` crate (a real Hub client) downloads from it
//! correctly, through the LFS redirect to the CDN, and with a token where one is required.

use bytes::Bytes;
use locus_testorigin::{model, Faults, HubSim, SimOptions};

fn api(sim: &HubSim, cache: &tempfile::TempDir, token: Option<String>) -> hf_hub::api::tokio::Api {
    hf_hub::api::tokio::ApiBuilder::new()
        .with_endpoint(sim.url())
        .with_cache_dir(cache.path().to_path_buf())
        .with_progress(false)
        .with_token(token)
        .build()
        .unwrap()
}

async fn check_download(sim: &HubSim, token: Option<String>, files: &[(String, Bytes)]) {
    let cache = tempfile::tempdir().unwrap();
    let api = api(sim, &cache, token);
    let repo = api.model("acme/model".to_string());
    let info = repo.info().await.expect("repo info");
    let mut listed: Vec<_> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    listed.sort();
    let mut want: Vec<_> = files.iter().map(|(p, _)| p.clone()).collect();
    want.sort();
    assert_eq!(listed, want);
    for (path, data) in files {
        let local = repo
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(std::fs::read(&local).unwrap(), data.to_vec(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hf_hub_crate_downloads_every_file() {
    let sim = HubSim::start(SimOptions::default()).await.unwrap();
    let files = model::generate_model(3 << 20, 2, 1);
    sim.commit("model", "acme/model", files.clone());
    check_download(&sim, None, &files).await;
    let s = sim.stats();
    assert!(
        s.get("cdn") > 0,
        "LFS files went through the CDN redirect: {s:?}"
    );
    assert!(s.get("resolve") + s.get("resolve_head") + s.get("resolve_redirect") > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hf_hub_crate_with_a_gated_repo() {
    let sim = HubSim::start(SimOptions {
        faults: Faults {
            token: Some("hf_test_token".into()),
            ..Faults::default()
        },
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let files = vec![("config.json".to_string(), Bytes::from_static(b"{}"))];
    sim.commit("model", "acme/model", files.clone());
    let cache = tempfile::tempdir().unwrap();
    let api = api(&sim, &cache, None);
    assert!(api
        .model("acme/model".into())
        .get("config.json")
        .await
        .is_err());
    check_download(&sim, Some("hf_test_token".into()), &files).await;
}

#[test]
fn generated_bytes_of_any_range_are_the_same_bytes() {
    let whole = model::generated_bytes(9, 0..1000);
    assert_eq!(whole.len(), 1000);
    for (a, b) in [(0, 1), (3, 17), (8, 16), (7, 9), (500, 1000), (999, 1000)] {
        assert_eq!(
            model::generated_bytes(9, a..b),
            whole.slice(a as usize..b as usize)
        );
    }
    assert_ne!(model::generated_bytes(10, 0..1000), whole);
}

/// A synthetic dataset is listed in pages that follow each other (each page costs its own
/// entries), every folder once and every file once in order, and reads back its generated
/// bytes under the git blob id its listing gave.
#[tokio::test(flavor = "multi_thread")]
async fn a_synthetic_dataset_pages_by_cursor_and_reads_back_its_bytes() {
    use sha1::Digest as _;
    let sim = HubSim::start(SimOptions::default()).await.unwrap();
    sim.commit_generated("dataset", "bench/many", 25_000, 100..=300, 5);
    let client = reqwest::Client::new();
    let mut url = Some(format!(
        "{}/api/datasets/bench/many/tree/main?recursive=true",
        sim.url()
    ));
    let (mut files, mut dirs, mut pages) = (Vec::new(), Vec::new(), 0);
    while let Some(u) = url.take() {
        let r = client.get(&u).send().await.unwrap();
        url = r
            .headers()
            .get("link")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.strip_prefix('<'))
            .and_then(|l| l.split_once('>'))
            .map(|(u, _)| u.to_string());
        let page: Vec<serde_json::Value> = r.json().await.unwrap();
        assert!(page.len() <= 1000);
        pages += 1;
        for e in page {
            let path = e["path"].as_str().unwrap().to_string();
            match e["type"].as_str().unwrap() {
                "directory" => dirs.push(path),
                _ => files.push((path, e["size"].as_u64().unwrap(), e["oid"].clone())),
            }
        }
    }
    assert_eq!(files.len(), 25_000);
    assert_eq!(pages, 26, "25,000 files and 25 folders in pages of 1,000");
    assert!(
        files.windows(2).all(|w| w[0].0 < w[1].0),
        "in order, once each"
    );
    assert_eq!(dirs, (0..25).map(|d| format!("{d:04}")).collect::<Vec<_>>());
    assert_eq!(files[12_345].0, locus_testorigin::generated_name(12_345));
    assert!(files.iter().all(|(_, s, _)| (100..=300).contains(s)));
    for i in [0usize, 999, 1000, 24_999] {
        let (path, size, oid) = &files[i];
        let body = client
            .get(format!(
                "{}/datasets/bench/many/resolve/main/{path}",
                sim.url()
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.len() as u64, *size);
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {size}\0").as_bytes());
        h.update(&body);
        assert_eq!(oid.as_str().unwrap(), hex::encode(h.finalize()), "{path}");
    }
}
