//! The S3 gateway with a real S3 client (`object_store`'s, which signs with SigV4) against a
//! node whose origin is the simulated S3 (the test Hub's repos as buckets): listings, reads and
//! ranges read as the origin's, and a wrong key pair reads nothing.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use locus_gateway::sigv4::Credentials;
use locus_gateway::{S3Auth, S3Gateway};
use locus_node::{Node, NodeConfig};
use locus_origin::{Origins, RetryPolicy, S3Config, S3Origin};
use locus_store::Store;
use locus_testorigin::{model, HubSim, SimOptions};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};

const KEY: &str = "AKIDGATEWAYTEST";
const SECRET: &str = "gateway/secret+key";

struct Setup {
    sim: HubSim,
    url: String,
    _cache: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn setup(auth: S3Auth) -> Setup {
    // The node's own credentials for its origin (the simulated S3 does not check them).
    std::env::set_var("AWS_ACCESS_KEY_ID", "node-key");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "node-secret");
    std::env::set_var("AWS_REGION", "us-east-1");
    let sim = HubSim::start(SimOptions::default()).await.unwrap();
    let ds: Vec<(String, Bytes)> = (0..2500)
        .map(|i| {
            (
                format!("{:04}/{i:05} x.txt", i / 1000),
                Bytes::from(format!("row {i}\n")),
            )
        })
        .chain([("big.bin".to_string(), model::random_bytes(3, 5 << 20))])
        .collect();
    sim.commit("dataset", "acme/ds", ds);
    let cache = tempfile::tempdir().unwrap();
    let origin = S3Origin::new(S3Config {
        endpoint: Some(sim.s3_url()),
        virtual_hosted: false,
        retry: RetryPolicy::default(),
    });
    let node = Node::new(
        Arc::new(Origins {
            s3: Some(Arc::new(origin)),
            ..Origins::default()
        }),
        Store::open(cache.path(), 1 << 30).unwrap(),
        NodeConfig {
            chunk_size: 1 << 20,
            ..NodeConfig::default()
        },
    );
    let gw = S3Gateway::new(node, vec!["acme".into()], auth);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(locus_gateway::serve(l, gw.router(), async move {
        let _ = rx.await;
    }));
    Setup {
        sim,
        url,
        _cache: cache,
        _stop: stop,
    }
}

fn client(endpoint: &str, key: &str, secret: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name("acme")
            .with_region("us-east-1")
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .build()
            .unwrap(),
    )
}

fn keyed() -> S3Auth {
    S3Auth::Key(Credentials::parse(&format!("{KEY}:{SECRET}")).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_client_lists_and_reads_through_the_gateway_as_from_the_origin() {
    let s = setup(keyed()).await;
    let ours = client(&s.url, KEY, SECRET);
    let origin = client(&s.sim.s3_url(), "x", "y");
    // Listings: whole, under a folder (3 pages of 1,000), by delimiter.
    for (prefix, n, folders) in [
        (None, 2501, 1),
        (Some("ds/0001"), 1000, 0),
        (Some("ds"), 2501, 3),
    ] {
        let p = prefix.map(Path::from);
        let mut a: Vec<_> = ours.list(p.as_ref()).try_collect().await.unwrap();
        let mut b: Vec<_> = origin.list(p.as_ref()).try_collect().await.unwrap();
        a.sort_by(|x, y| x.location.cmp(&y.location));
        b.sort_by(|x, y| x.location.cmp(&y.location));
        assert_eq!((a.len(), b.len()), (n, n), "{prefix:?}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (&x.location, x.size, &x.e_tag),
                (&y.location, y.size, &y.e_tag)
            );
        }
        let a = ours.list_with_delimiter(p.as_ref()).await.unwrap();
        let b = origin.list_with_delimiter(p.as_ref()).await.unwrap();
        assert_eq!(a.common_prefixes, b.common_prefixes, "{prefix:?}");
        assert_eq!(a.common_prefixes.len(), folders, "{prefix:?}");
        let names = |v: &[object_store::ObjectMeta]| {
            v.iter().map(|o| o.location.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&a.objects), names(&b.objects), "{prefix:?}");
    }
    // Reads, whole and in part; HEAD.
    let big = Path::from("ds/big.bin");
    let want = origin.get(&big).await.unwrap().bytes().await.unwrap();
    let got = ours.get(&big).await.unwrap().bytes().await.unwrap();
    assert!(got == want);
    let part = ours.get_range(&big, 1_000_000..3_000_000).await.unwrap();
    assert!(part == want.slice(1_000_000..3_000_000));
    let h = ours.head(&big).await.unwrap();
    let o = origin.head(&big).await.unwrap();
    assert_eq!((h.size, &h.e_tag), (o.size, &o.e_tag));
    let small = Path::from("ds/0002/02499 x.txt");
    assert_eq!(
        ours.get(&small).await.unwrap().bytes().await.unwrap(),
        Bytes::from("row 2499\n")
    );
    match ours.get(&Path::from("ds/nope")).await {
        Err(object_store::Error::NotFound { .. }) => {}
        other => panic!("a missing key: {other:?}"),
    }
    // The second read of the big file cost the origin nothing.
    let before = s.sim.stats();
    let again = ours.get(&big).await.unwrap().bytes().await.unwrap();
    assert!(again == want);
    let after = s.sim.stats();
    assert_eq!(after.get("s3_get"), before.get("s3_get"), "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_wrongly_signed_and_unknown_requests_read_nothing() {
    let s = setup(keyed()).await;
    let c = reqwest::Client::new();
    for (key, secret) in [(KEY, "wrong"), ("AKIDOTHER", SECRET)] {
        let bad = client(&s.url, key, secret);
        let e = bad
            .get(&Path::from("ds/big.bin"))
            .await
            .map(|_| ())
            .expect_err("refused");
        assert!(
            matches!(
                e,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::Generic { .. }
            ),
            "{e:?}"
        );
        let e = bad
            .list(None)
            .try_collect::<Vec<_>>()
            .await
            .map(|_| ())
            .expect_err("refused");
        assert!(!e.to_string().contains(SECRET), "{e}");
    }
    let r = c
        .get(format!("{}/acme/ds/big.bin", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("<Code>AccessDenied</Code>"));
    let ours = client(&s.url, KEY, SECRET);
    assert!(ours.get(&Path::from("ds/big.bin")).await.is_ok());
    // A bucket not served, a write, another operation: S3's errors.
    let other = AmazonS3Builder::new()
        .with_endpoint(&s.url)
        .with_allow_http(true)
        .with_bucket_name("other")
        .with_region("us-east-1")
        .with_access_key_id(KEY)
        .with_secret_access_key(SECRET)
        .build()
        .unwrap();
    match other.get(&Path::from("x")).await {
        Err(object_store::Error::NotFound { .. }) => {}
        r => panic!("{r:?}"),
    }
    let e = ours
        .put(&Path::from("ds/new"), Bytes::from("x").into())
        .await
        .map(|_| ())
        .expect_err("read-only");
    assert!(
        e.to_string().contains("405") || e.to_string().contains("MethodNotAllowed"),
        "{e}"
    );
    // Anonymous reads, when asked for.
    let open = setup(S3Auth::Anonymous).await;
    let r = c
        .get(format!("{}/acme/ds/0000/00000%20x.txt", open.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "row 0\n");
    let r = c
        .get(format!("{}/acme/ds/big.bin?acl", open.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
}

/// `start-after` lists the keys after it (a key or not), within the prefix, as the origin does;
/// on later pages the continuation token wins (object_store sends both, as boto3 does).
#[tokio::test(flavor = "multi_thread")]
async fn start_after_lists_what_the_origin_lists_after_it() {
    use futures::StreamExt as _;
    let s = setup(keyed()).await;
    let ours = client(&s.url, KEY, SECRET);
    let origin = client(&s.sim.s3_url(), "x", "y");
    for (prefix, after, n) in [
        // A key: three pages, the last two with a token as well.
        (None, "ds/0000/00499 x.txt", 2001),
        // Not a key.
        (None, "ds/0001/015", 1001),
        (Some("ds/0001"), "ds/0001/01499 x.txt", 500),
        // Before the prefix: all of it; past it: nothing.
        (Some("ds/0001"), "ds/0000/00010 x.txt", 1000),
        (Some("ds/0001"), "ds/0002", 0),
        (None, "ds/big.bin", 0),
    ] {
        let p = prefix.map(Path::from);
        let off = Path::from(after);
        // Bounded: a gateway that let start-after win over the token would page forever.
        let a: Vec<_> = ours
            .list_with_offset(p.as_ref(), &off)
            .take(5000)
            .try_collect()
            .await
            .unwrap();
        let b: Vec<_> = origin
            .list_with_offset(p.as_ref(), &off)
            .take(5000)
            .try_collect()
            .await
            .unwrap();
        assert_eq!((a.len(), b.len()), (n, n), "{prefix:?} after {after}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (&x.location, x.size, &x.e_tag),
                (&y.location, y.size, &y.e_tag)
            );
            assert!(x.location.as_ref() > after, "{} after {after}", x.location);
        }
    }
}

/// Conditional reads answer as S3 does: a version the client did not name is never sent
/// (If-Match, If-Unmodified-Since: 412), and the client's own copy is not sent again
/// (If-None-Match, If-Modified-Since: 304). s3transfer and s3fs send If-Match with every
/// ranged read of a file they are downloading.
#[tokio::test(flavor = "multi_thread")]
async fn conditional_reads_never_send_a_version_the_client_did_not_name() {
    use object_store::{GetOptions, GetRange};
    let s = setup(keyed()).await;
    let ours = client(&s.url, KEY, SECRET);
    let big = Path::from("ds/big.bin");
    let h = ours.head(&big).await.unwrap();
    let (etag, modified) = (h.e_tag.clone().unwrap(), h.last_modified);
    let day = chrono::Duration::days(1);
    let get = |o: GetOptions| {
        let (ours, big) = (ours.clone(), big.clone());
        async move {
            match ours.get_opts(&big, o).await {
                Ok(r) => Ok(r.bytes().await.unwrap().len()),
                Err(e) => Err(e),
            }
        }
    };
    let part = |o: GetOptions| GetOptions {
        range: Some(GetRange::Bounded(1000..2000)),
        ..o
    };
    // Named right: the bytes.
    for o in [
        GetOptions {
            if_match: Some(etag.clone()),
            ..Default::default()
        },
        GetOptions {
            if_match: Some("*".into()),
            ..Default::default()
        },
        GetOptions {
            if_none_match: Some("\"another\"".into()),
            ..Default::default()
        },
        GetOptions {
            if_unmodified_since: Some(modified),
            ..Default::default()
        },
        GetOptions {
            if_modified_since: Some(modified - day),
            ..Default::default()
        },
    ] {
        assert_eq!(get(part(o.clone())).await.unwrap(), 1000, "{o:?}");
    }
    // Another version named: 412, no byte.
    for o in [
        GetOptions {
            if_match: Some("\"another\"".into()),
            ..Default::default()
        },
        GetOptions {
            if_unmodified_since: Some(modified - day),
            ..Default::default()
        },
    ] {
        match get(part(o.clone())).await {
            Err(object_store::Error::Precondition { .. }) => {}
            other => panic!("{o:?}: {other:?}"),
        }
    }
    // The client's own copy: 304.
    for o in [
        GetOptions {
            if_none_match: Some(etag.clone()),
            ..Default::default()
        },
        GetOptions {
            if_modified_since: Some(modified),
            ..Default::default()
        },
    ] {
        match get(o.clone()).await {
            Err(object_store::Error::NotModified { .. }) => {}
            other => panic!("{o:?}: {other:?}"),
        }
    }
}

/// `partNumber` never yields another part's bytes: part 1 of an object uploaded whole is the
/// object (206), any other part is refused as S3 refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn a_part_number_reads_the_part_or_is_refused() {
    let open = setup(S3Auth::Anonymous).await;
    let c = reqwest::Client::new();
    let url = |q: &str| format!("{}/acme/ds/big.bin?{q}", open.url);
    let whole = c.get(url("x-id=GetObject")).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let whole = whole.bytes().await.unwrap();
    let n = whole.len();
    let r = c.get(url("partNumber=1")).send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes 0-{}/{n}", n - 1)
    );
    assert!(r.bytes().await.unwrap() == whole);
    for (q, range, status) in [
        ("partNumber=2", None, 416),
        ("partNumber=0", None, 400),
        ("partNumber=x", None, 400),
        ("partNumber=1", Some("bytes=0-9"), 400),
    ] {
        let mut req = c.get(url(q));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "{q} {range:?}");
    }
}

/// A key the node cannot name (a backslash, `..`, control characters: its origin listings
/// leave such keys out) is a missing key, and a prefix of them lists nothing, as for any key
/// the gateway does not serve; never a 400 a client takes for its own mistake.
#[tokio::test(flavor = "multi_thread")]
async fn keys_the_node_cannot_name_are_missing_not_errors() {
    let open = setup(S3Auth::Anonymous).await;
    let c = reqwest::Client::new();
    for key in ["ds/a%5Cb.txt", "ds/%2E%2E/x", "ds/a%01b"] {
        for head in [false, true] {
            let url = format!("{}/acme/{key}", open.url);
            let r = match head {
                true => c.head(url),
                false => c.get(url),
            };
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 404, "{key} (HEAD {head})");
        }
    }
    for prefix in ["ds%5Cx%2F", "ds%2F..%2Fx%2F"] {
        let r = c
            .get(format!("{}/acme?list-type=2&prefix={prefix}", open.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{prefix}");
        let body = r.text().await.unwrap();
        assert!(body.contains("<KeyCount>0</KeyCount>"), "{prefix}: {body}");
    }
}

/// `response-*` parameters set the response's headers, as S3 sets them: a presigned download
/// link saves under a name and type of its own; the bytes are the object's.
#[tokio::test(flavor = "multi_thread")]
async fn response_parameters_set_the_headers_they_name() {
    let open = setup(S3Auth::Anonymous).await;
    let c = reqwest::Client::new();
    let r = c
        .get(format!(
            "{}/acme/ds/0000/00000%20x.txt?response-content-disposition=attachment%3B%20filename%3D%22row.txt%22&response-content-type=text%2Fplain&response-cache-control=no-cache",
            open.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["content-disposition"], "attachment; filename=\"row.txt\"");
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(r.text().await.unwrap(), "row 0\n");
}
