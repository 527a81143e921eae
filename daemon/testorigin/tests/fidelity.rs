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
    assert!(s.get("resolve") + s.get("resolve_head") > 0);
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
