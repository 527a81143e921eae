//! Content identity: what a cached file is keyed by.

use serde::{Deserialize, Serialize};

/// A digest the origin publishes for a whole file, checked once the file is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Digest {
    /// SHA-256 of the content (Hub LFS files).
    Sha256(String),
    /// Git blob id: SHA-1 of `blob {len}\0` + content (Hub files stored in git).
    GitBlobSha1(String),
}

impl Digest {
    /// The hex digest.
    pub fn hex(&self) -> &str {
        match self {
            Digest::Sha256(h) | Digest::GitBlobSha1(h) => h,
        }
    }
}

/// One file at an origin, as listed at an immutable revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// The URI a user would name this file by, at its immutable revision.
    pub uri: String,
    /// Path of the file inside its namespace (repo or prefix).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Cache key derived from immutable identity only (content digest or revision + path,
    /// always with the size), so a moved branch can never alias stale bytes.
    pub key: String,
    /// Where the origin serves the bytes (origin-specific; for the Hub, the resolve path).
    pub locator: String,
    /// Whole-file digest, when the origin publishes one.
    pub digest: Option<Digest>,
    /// Where a file of a name without revisions (an S3 prefix, a URL, a folder) was listed: a
    /// peer asked for its bytes looks it up in that listing, so that its key stays bound to the
    /// identity the listing saw. `None` for Hub files, whose URI names an immutable commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed: Option<Listed>,
}

/// A listing: its namespace and revision (for names without revisions, its fingerprint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The namespace's URI.
    pub namespace: String,
    /// The listing's revision id.
    pub revision: String,
}

impl RemoteFile {
    /// Key for content named by a digest: the same bytes in two repos or commits share one entry.
    pub fn key_for_digest(digest: &Digest, size: u64) -> String {
        match digest {
            Digest::Sha256(h) => format!("sha256:{h}:{size}"),
            Digest::GitBlobSha1(h) => format!("gitblob:{h}:{size}"),
        }
    }
}

/// The Git LFS pointer that git holds for an LFS file of `size` bytes whose SHA-256 is
/// `sha256` (hex): the Hub's tree lists an LFS file with this pointer's git blob id as its
/// `oid` and its length as `pointerSize`.
pub fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

/// The git blob id of `data`: SHA-1 of `blob {len}\0` and the bytes (hex).
pub fn git_blob_id(data: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_and_lfs_pointers_are_gits() {
        // `git hash-object` of an empty file and of "hello\n".
        assert_eq!(git_blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(
            git_blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        let p = lfs_pointer(&"a".repeat(64), 1234);
        assert_eq!(
            p,
            format!(
                "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 1234\n",
                "a".repeat(64)
            )
        );
    }
}
