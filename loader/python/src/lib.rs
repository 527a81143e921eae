//! The native part of the `locus` Python package: header validation and URI resolution, from
//! the `locus-loader` crate. The Python side maps the files and makes zero-copy arrays.

use std::path::PathBuf;

use locus_loader::{Checkpoint, ErrorKind, LoaderError, OpenOptions, SafetensorsFile};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Raises the `locus.errors` class that matches the error's kind.
fn to_py(py: Python<'_>, e: LoaderError) -> PyErr {
    let class = match e.kind() {
        ErrorKind::NotFound => "NotFoundError",
        ErrorKind::Malformed => "MalformedError",
        ErrorKind::Unavailable => "UnavailableError",
        ErrorKind::Invalid => "InvalidArgumentError",
    };
    let msg = e.to_string();
    match py
        .import("locus.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1((msg.clone(),)))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => PyRuntimeError::new_err(msg),
    }
}

type TensorEntry = (String, String, Vec<usize>, usize, usize);

/// Validates a safetensors file's header; returns (metadata or None, [(name, dtype, shape,
/// start, end)]) with absolute byte offsets, in file order.
#[pyfunction]
fn read_header<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(Option<Bound<'py, PyDict>>, Vec<TensorEntry>)> {
    let f = py
        .detach(|| SafetensorsFile::open(&path))
        .map_err(|e| to_py(py, e))?;
    let meta = match f.metadata() {
        Some(m) => {
            let d = PyDict::new(py);
            for (k, v) in m {
                d.set_item(k, v)?;
            }
            Some(d)
        }
        None => None,
    };
    let mut tensors: Vec<TensorEntry> = f
        .names()
        .filter_map(|n| {
            f.info(n).map(|i| {
                (
                    n.to_string(),
                    format!("{:?}", i.dtype),
                    i.shape.clone(),
                    i.range.start,
                    i.range.end,
                )
            })
        })
        .collect();
    tensors.sort_by_key(|t| t.3);
    Ok((meta, tensors))
}

/// The local files of a checkpoint's shards: a file, a folder, or a URI made local by the
/// daemon at `socket` (default `LOCUS_SOCKET`, else /run/locus/locus.sock).
#[pyfunction]
#[pyo3(signature = (target, socket=None))]
fn shard_paths(py: Python<'_>, target: String, socket: Option<PathBuf>) -> PyResult<Vec<PathBuf>> {
    py.detach(|| Checkpoint::shard_paths(&target, &OpenOptions { socket }))
        .map_err(|e| to_py(py, e))
}

/// [`shard_paths`] with the name errors give each shard: (local file, its URI or path).
#[pyfunction]
#[pyo3(signature = (target, socket=None))]
fn shard_files(
    py: Python<'_>,
    target: String,
    socket: Option<PathBuf>,
) -> PyResult<Vec<(PathBuf, String)>> {
    py.detach(|| Checkpoint::shard_files(&target, &OpenOptions { socket }))
        .map(|v| v.into_iter().map(|s| (s.path, s.name)).collect())
        .map_err(|e| to_py(py, e))
}

/// Whether `target` is meant as a locus URI (a typo such as `hf:/org/m` included).
#[pyfunction]
fn is_uri(target: &str) -> bool {
    locus_loader::is_uri(target)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_header, m)?)?;
    m.add_function(wrap_pyfunction!(shard_paths, m)?)?;
    m.add_function(wrap_pyfunction!(shard_files, m)?)?;
    m.add_function(wrap_pyfunction!(is_uri, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
