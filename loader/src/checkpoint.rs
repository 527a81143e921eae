//! A checkpoint: one file, a folder of shards, or a URI made local by the daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{remote, ErrorKind, LoaderError, SafetensorsFile, Tensor};

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One shard of a checkpoint: its local file, and the name errors give it (its URI when the
/// checkpoint was named by one, else its path).
#[derive(Clone, Debug)]
pub struct Shard {
    /// The local file (for a URI, the daemon's cache file).
    pub path: PathBuf,
    /// What to call it.
    pub name: String,
}

/// How to open a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The daemon's socket for URIs (default: `LOCUS_SOCKET`, else `/run/locus/locus.sock`).
    pub socket: Option<PathBuf>,
}

/// Every tensor of a checkpoint, each a view of its shard's mapping.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<Arc<SafetensorsFile>>,
    by_name: BTreeMap<String, usize>,
}

fn malformed(path: &str, reason: impl Into<String>) -> LoaderError {
    LoaderError::Malformed {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Chooses the shards of a folder holding `names`: those the index names, else every
/// `*.safetensors`, sorted.
pub(crate) fn plan(
    shown: &str,
    names: &[String],
    read_index: impl FnOnce() -> Result<Vec<u8>, LoaderError>,
) -> Result<Vec<String>, LoaderError> {
    if names.iter().any(|n| n == INDEX_FILE) {
        let bytes = read_index()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| malformed(&format!("{shown}/{INDEX_FILE}"), format!("not JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| malformed(&format!("{shown}/{INDEX_FILE}"), "no weight_map object"))?;
        let mut shards: Vec<String> = Vec::new();
        for file in map.values() {
            let f = file.as_str().ok_or_else(|| {
                malformed(
                    &format!("{shown}/{INDEX_FILE}"),
                    "a weight_map value is not a string",
                )
            })?;
            locus_core::uri::normalize_path(f).map_err(|r| {
                malformed(
                    &format!("{shown}/{INDEX_FILE}"),
                    format!("shard {f:?}: {r}"),
                )
            })?;
            if !shards.iter().any(|s| s == f) {
                shards.push(f.to_string());
            }
        }
        for s in &shards {
            if !names.iter().any(|n| n == s) {
                return Err(malformed(
                    shown,
                    format!("the index names shard {s:?}, which is missing"),
                ));
            }
        }
        shards.sort();
        return Ok(shards);
    }
    let mut shards: Vec<String> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .cloned()
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(LoaderError::Remote {
            kind: ErrorKind::NotFound,
            message: format!("{shown}: no .safetensors files"),
        });
    }
    Ok(shards)
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a checkpoint folder, or a locus URI (`hf://…`).
    pub fn open(target: &str) -> Result<Checkpoint, LoaderError> {
        Checkpoint::open_with(target, &OpenOptions::default())
    }

    /// [`Checkpoint::open`] with options.
    pub fn open_with(target: &str, opts: &OpenOptions) -> Result<Checkpoint, LoaderError> {
        let shards = Checkpoint::shard_files(target, opts)?;
        Checkpoint::from_shards(target, shards)
    }

    /// The local files of the shards `target` names, in order, without opening them; a URI is
    /// made local by the daemon first.
    pub fn shard_paths(target: &str, opts: &OpenOptions) -> Result<Vec<PathBuf>, LoaderError> {
        Ok(Checkpoint::shard_files(target, opts)?
            .into_iter()
            .map(|s| s.path)
            .collect())
    }

    /// [`Checkpoint::shard_paths`], each with the name errors give it (its URI, for a URI).
    pub fn shard_files(target: &str, opts: &OpenOptions) -> Result<Vec<Shard>, LoaderError> {
        if is_uri(target) {
            return remote::make_local(target, opts);
        }
        Ok(Checkpoint::local_shards(target)?
            .into_iter()
            .map(|path| Shard {
                name: path.display().to_string(),
                path,
            })
            .collect())
    }

    fn local_shards(target: &str) -> Result<Vec<PathBuf>, LoaderError> {
        let path = Path::new(target);
        let meta = std::fs::metadata(path).map_err(|source| LoaderError::Io {
            path: target.to_string(),
            source,
        })?;
        if meta.is_file() {
            return Ok(vec![path.to_path_buf()]);
        }
        let mut names = Vec::new();
        for e in std::fs::read_dir(path).map_err(|source| LoaderError::Io {
            path: target.to_string(),
            source,
        })? {
            let e = e.map_err(|source| LoaderError::Io {
                path: target.to_string(),
                source,
            })?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        let shards = plan(target, &names, || {
            std::fs::read(path.join(INDEX_FILE)).map_err(|source| LoaderError::Io {
                path: path.join(INDEX_FILE).display().to_string(),
                source,
            })
        })?;
        Ok(shards.iter().map(|s| path.join(s)).collect())
    }

    fn from_shards(shown: &str, shards: Vec<Shard>) -> Result<Checkpoint, LoaderError> {
        let mut files = Vec::with_capacity(shards.len());
        let mut by_name = BTreeMap::new();
        for (i, s) in shards.iter().enumerate() {
            let f = SafetensorsFile::open(&s.path).map_err(|e| e.named(&s.name))?;
            for n in f.names() {
                if by_name.insert(n.to_string(), i).is_some() {
                    return Err(malformed(
                        shown,
                        format!("tensor {n:?} is in more than one shard"),
                    ));
                }
            }
            files.push(f);
        }
        Ok(Checkpoint { files, by_name })
    }

    /// Tensor names across all shards, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|s| s.as_str())
    }

    /// The shards.
    pub fn files(&self) -> &[Arc<SafetensorsFile>] {
        &self.files
    }

    /// A zero-copy view of one tensor.
    pub fn tensor(&self, name: &str) -> Result<Tensor, LoaderError> {
        match self.by_name.get(name) {
            Some(&i) => self.files[i].tensor(name),
            None => Err(LoaderError::NoTensor {
                path: "checkpoint".into(),
                name: name.to_string(),
            }),
        }
    }
}

/// Whether `target` is meant as a URI: it has `://`, or it starts with a scheme and `:` and
/// names no local file (`hf:/org/m`, a typo, gets the URI parser's message, not "no such file").
pub fn is_uri(target: &str) -> bool {
    if target.contains("://") {
        return true;
    }
    let scheme = target.split_once(':').map(|(s, _)| s).unwrap_or("");
    scheme.len() >= 2
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        && !Path::new(target).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistyped_uri_is_taken_as_a_uri_and_refused_as_one() {
        for t in ["hf://o/n", "hf:/o/n", "s3:bucket/k", "file:x"] {
            assert!(is_uri(t), "{t}");
        }
        for t in ["model.safetensors", "/tmp/ckpt", "./a:b", "C", ":x"] {
            assert!(!is_uri(t), "{t}");
        }
        let e = Checkpoint::shard_paths("hf:/o/n", &OpenOptions::default()).expect_err("refused");
        assert!(e.to_string().contains("unknown scheme"), "{e}");
        assert!(matches!(e.kind(), crate::ErrorKind::Invalid), "{e}");
    }
}
