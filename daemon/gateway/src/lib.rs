//! HTTP gateways of a locus node: unmodified clients read through the cluster cache.
//!
//! - [`hub`]: the part of the Hugging Face Hub's API that downloads use (repo info, the tree,
//!   `resolve` with `Range`), so that `HF_ENDPOINT=http://NODE:PORT` points `huggingface_hub`,
//!   `hf`, `transformers` or the `hf-hub` crate at the node. A gated or private repo is served
//!   only to a client whose own token the Hub accepts for it ([`access`]).
//! - [`s3`]: S3's read API (GetObject, HeadObject, ListObjectsV2, path style) for the buckets
//!   the operator names, each request signed with the configured key pair ([`sigv4`]).
//!
//! Bytes come from the node (its disk, its peers, or the origin through the node, so one
//! origin fetch per chunk for the cluster) and leave only once checked ([`body`]).

pub mod access;
pub mod body;
pub mod hub;
pub mod s3;
pub mod sigv4;

use std::ops::Range;

pub use access::{AccessCache, HubAccess};
pub use hub::HubGateway;
pub use s3::{S3Auth, S3Gateway};

/// Counts an answer of `api` by its status, and passes it on.
pub(crate) fn counted(
    api: &'static str,
    resp: axum::response::Response,
) -> axum::response::Response {
    metrics::counter!(GATEWAY_REQUESTS, "api" => api, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

/// Serves a gateway's `router` on `listener` until `stop` resolves: HTTP/1.1 with keep-alive,
/// no Nagle delay, many connections at once (each a task; bodies bounded by [`body`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

/// Requests answered, by `api` (`hub.info`, `hub.tree`, `hub.resolve`, …) and `status`.
pub const GATEWAY_REQUESTS: &str = "locus_gateway_requests_total";
/// Body bytes sent, by `api`.
pub const GATEWAY_BYTES: &str = "locus_gateway_bytes_total";
/// Responses cut short (the connection closed mid-body) rather than send a byte that failed
/// its check or could not be read, by `api`.
pub const GATEWAY_CUT: &str = "locus_gateway_responses_cut_total";
/// Access checks asked of the Hub, by `answer` (`yes`, `denied`, `missing`, `error`).
pub const GATEWAY_ACCESS_CHECKS: &str = "locus_gateway_access_checks_total";

/// Registers the gateways' metric descriptions.
pub fn describe() {
    metrics::describe_counter!(
        GATEWAY_REQUESTS,
        "Gateway requests answered, by api and HTTP status"
    );
    metrics::describe_counter!(GATEWAY_BYTES, "Gateway body bytes sent, by api");
    metrics::describe_counter!(
        GATEWAY_CUT,
        "Gateway responses cut short rather than send a byte that failed its check, by api"
    );
    metrics::describe_counter!(
        GATEWAY_ACCESS_CHECKS,
        "Access checks of a client's token asked of the Hub, by answer"
    );
}

/// A request's `Range` against a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// No range (or one this server ignores, as RFC 9110 allows: several ranges): the whole body.
    Whole,
    /// One satisfiable range.
    Part(Range<u64>),
    /// Not satisfiable (416).
    Unsatisfiable,
}

/// Parses a `Range` header (`bytes=A-B`, `bytes=A-`, `bytes=-N`).
pub fn parse_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(h) = header else {
        return ByteRange::Whole;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    // A range that does not parse is ignored (the whole body), as RFC 9110 says; one that
    // parses but lies past the end (or asks for the last 0 bytes) is not satisfiable.
    let Some((a, b)) = spec.split_once('-') else {
        return ByteRange::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    let range = match (a.is_empty(), b.is_empty()) {
        // The last N bytes.
        (true, false) => match num(b) {
            None => return ByteRange::Whole,
            Some(0) => None,
            Some(n) => Some(size.saturating_sub(n)..size),
        },
        (false, true) => match num(a) {
            None => return ByteRange::Whole,
            Some(s) => Some(s..size),
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if e >= s => Some(s..e.saturating_add(1).min(size)),
            _ => return ByteRange::Whole,
        },
        (true, true) => return ByteRange::Whole,
    };
    match range {
        Some(r) if r.start < size && r.start < r.end => ByteRange::Part(r),
        _ => ByteRange::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        assert_eq!(parse_range(None, 10), ByteRange::Whole);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), ByteRange::Part(0..4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), ByteRange::Part(5..10));
        assert_eq!(parse_range(Some("bytes=-3"), 10), ByteRange::Part(7..10));
        assert_eq!(parse_range(Some("bytes=-30"), 10), ByteRange::Part(0..10));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), ByteRange::Part(8..10));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), ByteRange::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), ByteRange::Whole);
        for past in ["bytes=10-", "bytes=-0", "bytes=10-20"] {
            assert_eq!(
                parse_range(Some(past), 10),
                ByteRange::Unsatisfiable,
                "{past}"
            );
        }
        // Ranges that do not parse are ignored.
        for bad in [
            "bytes=4-2",
            "bytes=x-1",
            "bytes=-",
            "bytes=3",
            "bytes=-x",
            "bytes=1-x",
        ] {
            assert_eq!(parse_range(Some(bad), 10), ByteRange::Whole, "{bad}");
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), ByteRange::Unsatisfiable);
        assert_eq!(
            parse_range(Some("bytes=0-18446744073709551615"), 10),
            ByteRange::Part(0..10)
        );
    }
}
