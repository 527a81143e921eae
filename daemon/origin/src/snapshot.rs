//! Listings of namespaces that have no revisions (S3 prefixes, URLs, local folders).
//!
//! The node resolves such a namespace's revision [`LATEST`] once per metadata TTL (at the
//! namespace's owner in a cluster). Resolving takes a fresh listing, keeps it here, and answers
//! with its fingerprint, so that the listing asked for next under that fingerprint costs no
//! second origin call. Each file's key holds its own identity (ETag, version, size): a listing
//! that moves on never makes old bytes answer for a new object.

use std::future::Future;
use std::sync::Arc;

use dashmap::DashMap;
use locus_core::{Listing, Namespace, LATEST};

use crate::OriginError;

/// Namespaces kept at most; past it the oldest answers are dropped (they are only a shortcut).
const MAX_NAMESPACES: usize = 4096;

/// The latest listing per namespace, by fingerprint.
#[derive(Default)]
pub(crate) struct Snapshots {
    latest: DashMap<Namespace, (String, Arc<Listing>)>,
}

impl Snapshots {
    /// Takes a fresh listing with `list_now` and answers its fingerprint.
    pub(crate) async fn resolve<F>(
        &self,
        ns: &Namespace,
        revision: &str,
        list_now: F,
    ) -> Result<String, OriginError>
    where
        F: Future<Output = Result<Listing, OriginError>>,
    {
        if revision != LATEST {
            return Err(OriginError::NotFound {
                what: format!("{ns}@{revision} ({ns} has no revisions; name it without @)"),
                kind: "revision",
            });
        }
        let files = list_now.await?;
        let id = fingerprint(&files);
        if self.latest.len() >= MAX_NAMESPACES {
            self.latest.clear();
        }
        self.latest
            .insert(ns.clone(), (id.clone(), Arc::new(files)));
        Ok(id)
    }

    /// The listing with fingerprint `id`: kept from [`Snapshots::resolve`], else taken afresh,
    /// and refused ([`OriginError::Changed`]) if the namespace has moved on since: a listing is
    /// never kept under another listing's name.
    pub(crate) async fn list<F>(
        &self,
        ns: &Namespace,
        id: &str,
        list_now: F,
    ) -> Result<Listing, OriginError>
    where
        F: Future<Output = Result<Listing, OriginError>>,
    {
        if let Some(e) = self.latest.get(ns) {
            if e.0 == id {
                return Ok(e.1.as_ref().clone());
            }
        }
        let files = list_now.await?;
        if fingerprint(&files) != id {
            return Err(OriginError::Changed {
                what: format!("{ns} (listing {id})"),
            });
        }
        Ok(files)
    }
}

/// A short, stable name of a listing: its paths and keys.
fn fingerprint(files: &Listing) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in files.iter() {
        h.update(f.path.as_bytes());
        h.update(&[0]);
        h.update(f.key.as_bytes());
        h.update(&[0]);
    }
    format!("ls-{:016x}", h.digest())
}

/// A cache key from an object's identity: where it lives, its version tag and its size.
pub(crate) fn identity_key(scheme: &str, parts: &[&str], size: u64) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    format!("{scheme}:{:032x}:{size}", h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_identity() {
        let a = identity_key("s3", &["b", "k", "\"e1\""], 10);
        assert_eq!(a, identity_key("s3", &["b", "k", "\"e1\""], 10));
        assert_ne!(a, identity_key("s3", &["b", "k", "\"e2\""], 10));
        assert_ne!(a, identity_key("s3", &["b", "k", "\"e1\""], 11));
        assert_ne!(a, identity_key("s3", &["bk", "", "\"e1\""], 10));
    }
}
