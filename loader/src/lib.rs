//! Zero-copy safetensors loading.
//!
//! [`SafetensorsFile`] maps one file with `memmap2`; its header is read by the official
//! `safetensors` crate, so validation follows the format exactly (header size limit, offsets in
//! bounds, sorted, contiguous and starting at 0, byte length = dtype size × element count, no bytes
//! left over). [`Tensor`]s are views into the mapping (name, dtype, shape, bytes) that keep it
//! alive. [`Checkpoint`] opens a file, a folder (sharded with `model.safetensors.index.json`, or all
//! `*.safetensors`), or a locus URI, which the node's daemon makes local first (fetched, verified,
//! cached); the cache file is then mapped as it is.
//!
//! ```no_run
//! let ckpt = locus_loader::Checkpoint::open("hf://org/model")?;
//! for name in ckpt.names() {
//!     let t = ckpt.tensor(name)?;
//!     println!("{name}: {:?} {:?} {} bytes", t.dtype(), t.shape(), t.data().len());
//! }
//! # Ok::<(), locus_loader::LoaderError>(())
//! ```

#![deny(missing_docs)]

mod checkpoint;
mod header;
mod remote;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use locus_core::FileBytes;

pub use checkpoint::{is_uri, Checkpoint, OpenOptions, Shard};
pub use header::{parse_header, Header};
pub use safetensors::Dtype;

/// What went wrong, by kind, so that bindings can raise a catchable class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A file, tensor, repo or URI that does not exist.
    NotFound,
    /// Bytes that are not a valid safetensors file or checkpoint.
    Malformed,
    /// The daemon or the origin could not be reached or failed.
    Unavailable,
    /// A bad argument (a malformed URI).
    Invalid,
}

/// Loader errors. Messages name the file and say what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a valid safetensors file or checkpoint.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// No tensor of that name.
    #[error("{path}: no tensor named {name:?}")]
    NoTensor {
        /// The file or checkpoint.
        path: String,
        /// The name asked for.
        name: String,
    },
    /// A URI or daemon failure.
    #[error("{message}")]
    Remote {
        /// What kind of failure.
        kind: ErrorKind,
        /// The daemon's or client's message.
        message: String,
    },
}

impl LoaderError {
    /// The same error naming `name` (a file's URI) instead of the local file it was read from:
    /// a daemon's cache path means nothing to the caller.
    pub fn named(self, name: &str) -> LoaderError {
        match self {
            LoaderError::Io { source, .. } => LoaderError::Io {
                path: name.to_string(),
                source,
            },
            LoaderError::Malformed { reason, .. } => LoaderError::Malformed {
                path: name.to_string(),
                reason,
            },
            LoaderError::NoTensor { name: t, .. } => LoaderError::NoTensor {
                path: name.to_string(),
                name: t,
            },
            e => e,
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LoaderError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            LoaderError::Io { .. } => ErrorKind::Unavailable,
            LoaderError::Malformed { .. } => ErrorKind::Malformed,
            LoaderError::NoTensor { .. } => ErrorKind::NotFound,
            LoaderError::Remote { kind, .. } => *kind,
        }
    }
}

/// Where a tensor's bytes are in its file, with its dtype and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Byte range within the file (absolute: the header is accounted for).
    pub range: Range<usize>,
}

/// One mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    /// Mapped; an empty data section cannot be mapped on Linux, so such files are read.
    bytes: FileBytes,
    header: Header,
    by_name: BTreeMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps `path` and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<SafetensorsFile>, LoaderError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io = |source| LoaderError::Io {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let bytes = if len < 4096 {
            FileBytes::Read(std::fs::read(path).map_err(io)?)
        } else {
            // SAFETY: the mapping is read-only and private to this process. locus's cache never
            // truncates or rewrites a file in place; for other files, as with every mmap-based
            // loader (safetensors included), a concurrent truncation by another process is the
            // caller's responsibility.
            FileBytes::Mapped(unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io)?)
        };
        let header = parse_header(&bytes).map_err(|reason| LoaderError::Malformed {
            path: shown.clone(),
            reason,
        })?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        Ok(Arc::new(SafetensorsFile {
            path: path.to_path_buf(),
            bytes,
            header,
            by_name,
        }))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|s| s.as_str())
    }

    /// The free-form `__metadata__` of the header.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.header.metadata.as_ref()
    }

    /// Where a tensor is, without touching its bytes.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.header.tensors[i].1)
    }

    /// Offset of the data section (8 + header length).
    pub fn data_start(&self) -> usize {
        self.header.data_start
    }

    /// A zero-copy view of one tensor; it keeps the mapping alive.
    pub fn tensor(self: &Arc<Self>, name: &str) -> Result<Tensor, LoaderError> {
        let info = self.info(name).ok_or_else(|| LoaderError::NoTensor {
            path: self.path.display().to_string(),
            name: name.to_string(),
        })?;
        Ok(Tensor {
            file: self.clone(),
            name: name.to_string(),
            info: info.clone(),
        })
    }
}

/// A tensor: a view of its file's mapping.
#[derive(Clone)]
pub struct Tensor {
    file: Arc<SafetensorsFile>,
    name: String,
    info: TensorInfo,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("dtype", &self.info.dtype)
            .field("shape", &self.info.shape)
            .finish()
    }
}

impl Tensor {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its element type.
    pub fn dtype(&self) -> Dtype {
        self.info.dtype
    }

    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.info.shape
    }

    /// Its bytes, in the file's (little-endian) layout, straight from the mapping.
    pub fn data(&self) -> &[u8] {
        &self.file.bytes[self.info.range.clone()]
    }

    /// The file it lives in.
    pub fn file(&self) -> &Arc<SafetensorsFile> {
        &self.file
    }
}
