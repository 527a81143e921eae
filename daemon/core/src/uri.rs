//! Names of what locus caches: `hf://ORG/NAME[@REV][/PATH]`, `hf://datasets/ORG/NAME[@REV][/PATH]`,
//! `s3://BUCKET[/KEY-OR-PREFIX]`, `http(s)://HOST/PATH` and `file:///ABS/PATH`.
//!
//! Parsing is strict: anything that could escape a namespace (`..`, `.`, empty segments,
//! backslashes, control characters) is refused with an error that says why.
//!
//! A Hub URI names a repo (the namespace) and a path inside it. The other schemes name a prefix,
//! a URL or a path, which is the namespace itself: their `path` is always empty, and their files
//! are listed relative to it (a URI naming one object lists that object under its base name).

use std::fmt;

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// The scheme is not one locus knows.
    #[error("invalid URI {uri:?}: unknown scheme (expected hf://ORG/NAME[@REV][/PATH], s3://BUCKET/PREFIX, http(s)://… or file:///PATH)")]
    UnknownScheme {
        /// The input.
        uri: String,
    },
    /// A known scheme whose origin this build does not implement.
    #[error("invalid URI {uri:?}: the {scheme}:// origin is not available in this build")]
    Unsupported {
        /// The input.
        uri: String,
        /// The scheme.
        scheme: String,
    },
    /// The URI is malformed.
    #[error("invalid URI {uri:?}: {reason}")]
    Malformed {
        /// The input.
        uri: String,
        /// What is wrong.
        reason: String,
    },
}

/// Hugging Face repo kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RepoType {
    /// A model repo (`/api/models`).
    Model,
    /// A dataset repo (`/api/datasets`).
    Dataset,
}

impl RepoType {
    /// The plural used in the Hub's API paths.
    pub fn api_plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }

    /// The prefix of `resolve` URLs (`""` for models, `"datasets/"` for datasets).
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
        }
    }
}

/// A namespace at an origin: one repo, one bucket prefix, one URL or one local path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// A Hugging Face Hub repo.
    Hf {
        /// Model or dataset.
        repo_type: RepoType,
        /// `ORG/NAME`.
        repo_id: String,
    },
    /// An object or every object under a prefix of an S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// A key or a prefix (no leading or trailing `/`); empty for the whole bucket.
        prefix: String,
    },
    /// One file served over HTTP(S).
    Http {
        /// The URL as given (`http://` or `https://`).
        url: String,
    },
    /// A file or folder on a (shared) file system.
    File {
        /// Absolute, normalized path.
        path: String,
    },
}

/// The revision of namespaces that have none (S3, HTTP, files): their listing is taken afresh
/// once per metadata TTL, and each file's identity (ETag, version, size) keys its bytes.
pub const LATEST: &str = "latest";

impl Namespace {
    /// The scheme of its URIs.
    pub fn scheme(&self) -> &'static str {
        match self {
            Namespace::Hf { .. } => "hf",
            Namespace::S3 { .. } => "s3",
            Namespace::Http { url } if url.starts_with("https://") => "https",
            Namespace::Http { .. } => "http",
            Namespace::File { .. } => "file",
        }
    }

    /// Whether revisions name immutable commits (the Hub) rather than a listing taken per TTL.
    pub fn has_revisions(&self) -> bool {
        matches!(self, Namespace::Hf { .. })
    }

    /// The revision used when a URI names none.
    pub fn default_revision(&self) -> &'static str {
        if self.has_revisions() {
            DEFAULT_REVISION
        } else {
            LATEST
        }
    }

    /// The enclosing prefixes or folders of an S3 or file name, nearest first, each with the
    /// path of this name inside it; empty for other names.
    pub fn ancestors(&self) -> Vec<(Namespace, String)> {
        let (prefix, make): (&str, &dyn Fn(&str) -> Namespace) = match self {
            Namespace::S3 { bucket, prefix } => (prefix, &|p: &str| Namespace::S3 {
                bucket: bucket.clone(),
                prefix: p.to_string(),
            }),
            Namespace::File { path } => {
                (path.trim_start_matches('/'), &|p: &str| Namespace::File {
                    path: format!("/{p}"),
                })
            }
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        let mut cut = prefix.len();
        while let Some(i) = prefix[..cut].rfind('/') {
            out.push((make(&prefix[..i]), prefix[i + 1..].to_string()));
            cut = i;
        }
        if !prefix.is_empty() {
            out.push((make(""), prefix.to_string()));
        }
        out
    }

    /// The URI of the file at `rel` (relative to this namespace; empty for the namespace itself,
    /// a single object).
    pub fn file_uri(&self, revision: &str, rel: &str) -> String {
        match self {
            Namespace::Hf { .. } => LocusUri {
                namespace: self.clone(),
                revision: Some(revision.to_string()),
                path: rel.to_string(),
            }
            .to_string(),
            Namespace::Http { url } => url.clone(),
            _ if rel.is_empty() => self.to_string(),
            Namespace::File { path } if path == "/" => format!("file:///{rel}"),
            Namespace::S3 { .. } | Namespace::File { .. } => {
                format!("{}/{rel}", self.to_string().trim_end_matches('/'))
            }
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Namespace::Hf { repo_type, repo_id } => {
                write!(f, "hf://{}{repo_id}", repo_type.url_prefix())
            }
            Namespace::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Namespace::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Namespace::Http { url } => f.write_str(url),
            Namespace::File { path } => write!(f, "file://{path}"),
        }
    }
}

/// A parsed locus URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LocusUri {
    /// Repo or prefix.
    pub namespace: Namespace,
    /// Branch, tag or commit; `None` means the default (`main`).
    pub revision: Option<String>,
    /// Path inside the namespace, `/`-separated, no leading or trailing slash; empty for the root.
    pub path: String,
}

/// Default revision of Hub repos.
pub const DEFAULT_REVISION: &str = "main";

impl LocusUri {
    /// Parses and validates a URI.
    pub fn parse(input: &str) -> Result<Self, UriError> {
        let malformed = |reason: &str| UriError::Malformed {
            uri: input.to_string(),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(UriError::UnknownScheme {
                uri: input.to_string(),
            });
        };
        if input.chars().any(|c| c.is_control() || c == '\\') {
            return Err(malformed(
                "control characters and backslashes are not allowed",
            ));
        }
        let bare = |namespace| {
            Ok(LocusUri {
                namespace,
                revision: None,
                path: String::new(),
            })
        };
        match scheme {
            "hf" => {}
            "s3" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                validate_bucket(bucket).map_err(|r| malformed(&r))?;
                let prefix = normalize_path(key).map_err(|r| malformed(&r))?;
                return bare(Namespace::S3 {
                    bucket: bucket.to_string(),
                    prefix,
                });
            }
            "http" | "https" => {
                validate_url(rest).map_err(|r| malformed(&r))?;
                return bare(Namespace::Http {
                    url: input.to_string(),
                });
            }
            "file" => {
                let Some(abs) = rest.strip_prefix('/') else {
                    return Err(malformed("expected file:///ABSOLUTE/PATH"));
                };
                let path = normalize_path(abs).map_err(|r| malformed(&r))?;
                return bare(Namespace::File {
                    path: format!("/{path}"),
                });
            }
            _ => {
                return Err(UriError::UnknownScheme {
                    uri: input.to_string(),
                })
            }
        }
        let (repo_type, rest) = match rest.strip_prefix("datasets/") {
            Some(r) => (RepoType::Dataset, r),
            None => (
                RepoType::Model,
                rest.strip_prefix("models/").unwrap_or(rest),
            ),
        };
        let mut parts = rest.splitn(2, '/');
        let org = parts.next().unwrap_or_default();
        let rest = parts.next().ok_or_else(|| malformed("expected ORG/NAME"))?;
        // NAME may carry @REV; REV may hold %2F-escaped slashes (as in `refs%2Fpr%2F1`).
        let (name_rev, path) = match rest.split_once('/') {
            Some((a, b)) => (a, b),
            None => (rest, ""),
        };
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => {
                let rev = r.replace("%2F", "/").replace("%2f", "/");
                if rev.is_empty() {
                    return Err(malformed("empty revision after '@'"));
                }
                if rev
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
                    || rev.chars().any(|c| c.is_whitespace() || c == '%')
                {
                    return Err(malformed("invalid revision"));
                }
                (n, Some(rev))
            }
            None => (name_rev, None),
        };
        for (what, seg) in [("ORG", org), ("NAME", name)] {
            validate_repo_segment(seg).map_err(|r| malformed(&format!("{what} {r}")))?;
        }
        // Reserved on the Hub; as an ORG they would make `hf://datasets/…` ambiguous.
        if matches!(org, "datasets" | "models" | "spaces") {
            return Err(malformed(&format!("{org:?} is not a valid ORG (reserved)")));
        }
        let path = normalize_path(path).map_err(|r| malformed(&r))?;
        Ok(LocusUri {
            namespace: Namespace::Hf {
                repo_type,
                repo_id: format!("{org}/{name}"),
            },
            revision,
            path,
        })
    }

    /// The revision to resolve (the default branch, or [`LATEST`], when none was named).
    pub fn revision_or_default(&self) -> &str {
        self.revision
            .as_deref()
            .unwrap_or(self.namespace.default_revision())
    }

    /// The same URI pinned at an immutable revision (unchanged where there are no revisions).
    pub fn at_revision(&self, rev: &str) -> LocusUri {
        if !self.namespace.has_revisions() {
            return self.clone();
        }
        LocusUri {
            revision: Some(rev.to_string()),
            ..self.clone()
        }
    }

    /// Whether this URI names the file listed at `path` in its namespace.
    pub fn names_file(&self, path: &str) -> bool {
        match &self.namespace {
            Namespace::Hf { .. } => self.path == path,
            Namespace::Http { .. } => !path.contains('/'),
            Namespace::S3 { prefix, .. } | Namespace::File { path: prefix } => {
                prefix == path || prefix.ends_with(&format!("/{path}"))
            }
        }
    }
}

impl fmt::Display for LocusUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.namespace)?;
        if let Some(rev) = &self.revision {
            write!(f, "@{}", rev.replace('/', "%2F"))?;
        }
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

/// S3 bucket names: 3 to 63 lowercase letters, digits, `.`, `-` (and `_`, which some
/// S3-compatible stores allow).
fn validate_bucket(b: &str) -> Result<(), String> {
    if !(3..=63).contains(&b.len()) {
        return Err("a bucket name has 3 to 63 characters".into());
    }
    if !b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-_".contains(&c))
        || b.starts_with(['.', '-'])
        || b.contains("..")
    {
        return Err(format!("{b:?} is not a valid bucket name"));
    }
    Ok(())
}

/// `HOST[:PORT]/PATH[?QUERY]` of an HTTP URL, without user info (credentials never sit in a name
/// that travels to peers and logs).
fn validate_url(rest: &str) -> Result<(), String> {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err("expected http(s)://HOST/PATH".into());
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not allowed".into());
    }
    if rest.chars().any(|c| c.is_whitespace()) {
        return Err("whitespace is not allowed in a URL".into());
    }
    if rest.contains('#') {
        return Err("a URL fragment is not allowed".into());
    }
    Ok(())
}

fn validate_repo_segment(seg: &str) -> Result<(), String> {
    if seg.is_empty() {
        return Err("is empty".into());
    }
    if seg.len() > 96 {
        return Err("is longer than 96 characters".into());
    }
    if !seg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "{seg:?} may only hold letters, digits, '-', '_' and '.'"
        ));
    }
    if seg.starts_with(['-', '.'])
        || seg.ends_with(['-', '.'])
        || seg.contains("..")
        || seg.contains("--")
    {
        return Err(format!("{seg:?} is not a valid repo name"));
    }
    Ok(())
}

/// Normalizes a path inside a namespace: strips one leading/trailing `/`, refuses `.`, `..` and
/// empty segments so that a path can never name anything outside its namespace.
pub fn normalize_path(path: &str) -> Result<String, String> {
    let p = path.trim_end_matches('/');
    if p.is_empty() {
        return Ok(String::new());
    }
    for seg in p.split('/') {
        match seg {
            "" => return Err("empty path segment ('//')".into()),
            "." | ".." => return Err(format!("path segment {seg:?} is not allowed")),
            _ => {}
        }
        if seg.chars().any(|c| c.is_control() || c == '\\') {
            return Err("control characters and backslashes are not allowed in paths".into());
        }
    }
    Ok(p.to_string())
}

/// Percent-encodes one path segment as RFC 3986 leaves unreserved characters (a `/` in it
/// becomes `%2F`): how the Hub's URLs name a revision or a path segment.
pub fn encode_segment(seg: &str) -> String {
    percent_encoding::utf8_percent_encode(seg, UNRESERVED_ONLY).to_string()
}

/// Everything but RFC 3986's unreserved characters is encoded in a path segment.
const UNRESERVED_ONLY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes each segment of a path, keeping the slashes.
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(t: RepoType, id: &str) -> Namespace {
        Namespace::Hf {
            repo_type: t,
            repo_id: id.into(),
        }
    }

    #[test]
    fn parses_forms() {
        let u = LocusUri::parse("hf://org/name").unwrap();
        assert_eq!(u.namespace, hf(RepoType::Model, "org/name"));
        assert_eq!(u.revision, None);
        assert_eq!(u.path, "");
        let u = LocusUri::parse("hf://org/name@v1.0/a/b.safetensors").unwrap();
        assert_eq!(u.revision.as_deref(), Some("v1.0"));
        assert_eq!(u.path, "a/b.safetensors");
        let u = LocusUri::parse("hf://datasets/org/ds@refs%2Fpr%2F1/x").unwrap();
        assert_eq!(u.namespace, hf(RepoType::Dataset, "org/ds"));
        assert_eq!(u.revision.as_deref(), Some("refs/pr/1"));
        assert_eq!(u.to_string(), "hf://datasets/org/ds@refs%2Fpr%2F1/x");
        let u = LocusUri::parse("hf://org/name/dir/").unwrap();
        assert_eq!(u.path, "dir");
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "org/name",
            "ftp://x/y",
            "hf://org",
            "hf://org/",
            "hf:///name",
            "hf://org/name/../x",
            "hf://org/name/a/./b",
            "hf://org/name/a//b",
            "hf://org/name@",
            "hf://org/name@../x",
            "hf://../name",
            "hf://org/na me",
            "hf://org/name/a\\b",
            "hf://org/name/a\u{0}b",
            "hf://models/datasets/x/y",
            "hf://datasets/datasets/x",
        ] {
            assert!(LocusUri::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn other_schemes() {
        let u = LocusUri::parse("s3://my-bucket/data/train/").unwrap();
        assert_eq!(
            u.namespace,
            Namespace::S3 {
                bucket: "my-bucket".into(),
                prefix: "data/train".into()
            }
        );
        assert_eq!(u.path, "");
        assert_eq!(u.revision_or_default(), LATEST);
        assert_eq!(u.to_string(), "s3://my-bucket/data/train");
        let file = LocusUri::parse("s3://my-bucket/data/train/x.bin").unwrap();
        let up: Vec<_> = file
            .namespace
            .ancestors()
            .into_iter()
            .map(|(n, rel)| (n.to_string(), rel))
            .collect();
        assert_eq!(
            up,
            [
                ("s3://my-bucket/data/train".to_string(), "x.bin".to_string()),
                ("s3://my-bucket/data".into(), "train/x.bin".into()),
                ("s3://my-bucket".into(), "data/train/x.bin".into()),
            ]
        );
        let f = LocusUri::parse("file:///a/b")
            .unwrap()
            .namespace
            .ancestors();
        assert_eq!(f[0].0.to_string(), "file:///a");
        assert_eq!(f[1], (Namespace::File { path: "/".into() }, "a/b".into()));
        assert!(file.names_file("x.bin") && file.names_file("train/x.bin"));
        assert!(!file.names_file("in/x.bin") && !file.names_file("y.bin"));
        assert_eq!(
            u.namespace.file_uri(LATEST, "a/x.bin"),
            "s3://my-bucket/data/train/a/x.bin"
        );
        let one = LocusUri::parse("s3://my-bucket/data/x.bin").unwrap();
        assert_eq!(
            one.namespace.file_uri(LATEST, ""),
            "s3://my-bucket/data/x.bin"
        );
        assert!(one.names_file("x.bin"));
        assert_eq!(
            LocusUri::parse("s3://bkt").unwrap().namespace.to_string(),
            "s3://bkt"
        );
        let f = LocusUri::parse("file:///srv/models/").unwrap();
        assert_eq!(
            f.namespace,
            Namespace::File {
                path: "/srv/models".into()
            }
        );
        assert_eq!(f.to_string(), "file:///srv/models");
        assert_eq!(LocusUri::parse("file:///").unwrap().to_string(), "file:///");
        let root = LocusUri::parse("file:///").unwrap().namespace;
        assert_eq!(root.file_uri(LATEST, "etc/x"), "file:///etc/x");
        assert!(LocusUri::parse(&root.file_uri(LATEST, "etc/x")).is_ok());
        let h = LocusUri::parse("https://example.com:8443/a/b.bin?x=1").unwrap();
        assert_eq!(h.to_string(), "https://example.com:8443/a/b.bin?x=1");
        assert_eq!(h.namespace.scheme(), "https");
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Bad_Case/x",
            "s3://bucket/a/../b",
            "s3://bucket/a//b",
            "file://relative/x",
            "file:///a/../b",
            "http://",
            "http:///x",
            "http://user:pw@host/x",
            "https://host/a b",
            "https://host/x#frag",
        ] {
            assert!(LocusUri::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
