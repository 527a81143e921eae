//! Names of what locus caches: `hf://ORG/NAME[@REV][/PATH]`, `hf://datasets/ORG/NAME[@REV][/PATH]`.
//!
//! Parsing is strict: anything that could escape a namespace (`..`, `.`, empty segments,
//! backslashes, control characters) is refused with an error that says why.

use std::fmt;

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// The scheme is not one locus knows.
    #[error("invalid URI {uri:?}: unknown scheme (expected hf://ORG/NAME[@REV][/PATH])")]
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

/// A namespace at an origin: one repo (or, later, a bucket prefix).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// A Hugging Face Hub repo.
    Hf {
        /// Model or dataset.
        repo_type: RepoType,
        /// `ORG/NAME`.
        repo_id: String,
    },
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Namespace::Hf { repo_type, repo_id } => {
                write!(f, "hf://{}{repo_id}", repo_type.url_prefix())
            }
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
        match scheme {
            "hf" => {}
            "s3" | "http" | "https" | "file" => {
                return Err(UriError::Unsupported {
                    uri: input.to_string(),
                    scheme: scheme.to_string(),
                })
            }
            _ => {
                return Err(UriError::UnknownScheme {
                    uri: input.to_string(),
                })
            }
        }
        if input.chars().any(|c| c.is_control() || c == '\\') {
            return Err(malformed(
                "control characters and backslashes are not allowed",
            ));
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

    /// The revision to resolve (the default branch when none was named).
    pub fn revision_or_default(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }

    /// The same URI with another path.
    pub fn with_path(&self, path: &str) -> LocusUri {
        LocusUri {
            path: path.to_string(),
            ..self.clone()
        }
    }

    /// The same URI pinned at an immutable revision.
    pub fn at_revision(&self, rev: &str) -> LocusUri {
        LocusUri {
            revision: Some(rev.to_string()),
            ..self.clone()
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
        assert!(matches!(
            LocusUri::parse("s3://b/k"),
            Err(UriError::Unsupported { .. })
        ));
    }
}
