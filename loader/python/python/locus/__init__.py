"""locus: zero-copy safetensors loading from files, checkpoint folders and locus URIs.

The API follows the official ``safetensors`` package::

    import locus
    with locus.safe_open("model.safetensors", framework="np") as f:
        for name in f.keys():
            array = f.get_tensor(name)      # a view of the file's mapping, no copy
    tensors = locus.load_file("model.safetensors")           # dict of arrays
    tensors = locus.load("hf://org/model", framework="pt")    # a whole checkpoint, via the daemon

Arrays and tensors are views of a private (copy-on-write) mapping of the file: loading costs page
table entries, not copies, and pages are read when touched. They stay valid after the file
object is closed. Headers are validated by the Rust ``safetensors`` crate, so a malformed file
raises :class:`MalformedError` instead of crashing the interpreter.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Dict, List, Optional

from . import _native
from .errors import InvalidArgumentError, LocusError, MalformedError, NotFoundError, UnavailableError

__version__: str = _native.__version__

__all__ = [
    "safe_open",
    "load_file",
    "load",
    "LocusError",
    "NotFoundError",
    "MalformedError",
    "UnavailableError",
    "InvalidArgumentError",
]

_FRAMEWORKS = {"np": "np", "numpy": "np", "pt": "pt", "torch": "pt"}


def _framework(framework: str, device: str) -> str:
    """The normalized framework name ("np" or "pt"); a clear error for anything else."""
    if framework not in _FRAMEWORKS:
        raise InvalidArgumentError(f"framework {framework!r} is not one of {sorted(_FRAMEWORKS)}")
    if device != "cpu":
        raise InvalidArgumentError("locus maps tensors in host memory; move them with .to(device)")
    return _FRAMEWORKS[framework]


def _np_dtype(dtype: str):
    import numpy as np

    table = {
        "BOOL": np.bool_,
        "U8": np.uint8,
        "I8": np.int8,
        "I16": np.int16,
        "U16": np.uint16,
        "F16": np.float16,
        "I32": np.int32,
        "U32": np.uint32,
        "F32": np.float32,
        "F64": np.float64,
        "I64": np.int64,
        "U64": np.uint64,
        "C64": np.complex64,
    }
    if dtype not in table:
        raise TypeError(f"dtype {dtype} has no numpy equivalent; use framework='pt'")
    return np.dtype(table[dtype]).newbyteorder("<")


def _pt_dtype(dtype: str):
    import torch

    names = {
        "BOOL": "bool",
        "U8": "uint8",
        "I8": "int8",
        "I16": "int16",
        "U16": "uint16",
        "F16": "float16",
        "BF16": "bfloat16",
        "I32": "int32",
        "U32": "uint32",
        "F32": "float32",
        "F64": "float64",
        "I64": "int64",
        "U64": "uint64",
        "C64": "complex64",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
        "F8_E8M0": "float8_e8m0fnu",
    }
    t = getattr(torch, names.get(dtype, ""), None)
    if t is None:
        raise TypeError(f"dtype {dtype} has no torch equivalent in torch {torch.__version__}")
    return t


class _File:
    """One mapped file and its validated header."""

    def __init__(self, path: str, shown: Optional[str] = None):
        self.path = os.fspath(path)
        # What errors name: the URI and the file in the repo, never the daemon's cache path.
        self.shown = shown or self.path
        try:
            metadata, tensors = _native.read_header(self.path)
        except LocusError as e:
            if self.shown == self.path:
                raise
            raise type(e)(str(e).replace(self.path, self.shown)) from None
        self.metadata = metadata
        self.tensors = {name: (dtype, tuple(shape), start, end) for name, dtype, shape, start, end in tensors}
        self.order = [t[0] for t in tensors]
        size = os.path.getsize(self.path)
        if size == 0 or all(end == start for (_, _, start, end) in self.tensors.values()):
            self.buf: Any = bytearray(0)
        else:
            with open(self.path, "rb") as fh:
                # Copy-on-write: arrays are writable like the official loader's, the file is
                # never written, and nothing is copied until a page is written.
                self.buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)

    def tensor(self, name: str, framework: str):
        try:
            dtype, shape, start, end = self.tensors[name]
        except KeyError:
            raise NotFoundError(f"{self.shown}: no tensor named {name!r}") from None
        if framework == "np":
            import numpy as np

            dt = _np_dtype(dtype)
            count = (end - start) // dt.itemsize
            if count == 0:
                return np.empty(shape, dtype=dt)
            return np.frombuffer(self.buf, dtype=dt, count=count, offset=start).reshape(shape)
        import torch

        dt = _pt_dtype(dtype)
        count = (end - start) // torch.empty((), dtype=dt).element_size()
        if count == 0:
            return torch.empty(shape, dtype=dt)
        return torch.frombuffer(self.buf, dtype=dt, count=count, offset=start).reshape(shape)


class _Slice:
    """Like ``safetensors``' slice: shape and dtype without reading, indexing reads what it needs."""

    def __init__(self, f: _File, name: str, framework: str):
        self._f, self._name, self._framework = f, name, framework

    def get_shape(self) -> List[int]:
        return list(self._f.tensors[self._name][1])

    def get_dtype(self) -> str:
        return self._f.tensors[self._name][0]

    def __getitem__(self, index):
        return self._f.tensor(self._name, self._framework)[index]


def _open_one(target, socket: Optional[str]) -> _File:
    """A file by path, or by a URI naming one file (made local by the daemon)."""
    target = os.fspath(target)
    if not _native.is_uri(target):
        return _File(target)
    shards = _native.shard_files(target, socket)
    if len(shards) != 1:
        raise InvalidArgumentError(
            f"{target} names {len(shards)} files; safe_open opens one (locus.load opens a checkpoint)")
    path, name = shards[0]
    return _File(path, shown=name)


class safe_open:
    """Opens one ``.safetensors`` file, by path or by a URI such as ``hf://org/model/x.safetensors``
    (the same URIs as :func:`load`); the same methods as ``safetensors.safe_open``."""

    def __init__(self, filename, framework: str = "np", device: str = "cpu", socket: Optional[str] = None):
        self._framework = _framework(framework, device)
        self._file: Optional[_File] = _open_one(filename, socket)

    def _get(self) -> _File:
        if self._file is None:
            raise LocusError("the file is closed")
        return self._file

    def keys(self) -> List[str]:
        return sorted(self._get().tensors)

    def offset_keys(self) -> List[str]:
        return list(self._get().order)

    def metadata(self) -> Optional[Dict[str, str]]:
        return self._get().metadata

    def get_tensor(self, name: str):
        return self._get().tensor(name, self._framework)

    def get_slice(self, name: str) -> _Slice:
        f = self._get()
        if name not in f.tensors:
            raise NotFoundError(f"{f.shown}: no tensor named {name!r}")
        return _Slice(f, name, self._framework)

    def close(self) -> None:
        # Arrays handed out keep the mapping alive; this only drops our reference.
        self._file = None

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_file(filename, framework: str = "np", device: str = "cpu", socket: Optional[str] = None) -> Dict[str, Any]:
    """Every tensor of one file (a path or a URI), as zero-copy arrays (``framework="np"``) or
    tensors (``"pt"``)."""
    with safe_open(filename, framework=framework, device=device, socket=socket) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def load(path_or_uri, framework: str = "np", device: str = "cpu", socket: Optional[str] = None) -> Dict[str, Any]:
    """Every tensor of a checkpoint: a file, a folder (sharded with
    ``model.safetensors.index.json``, or all ``*.safetensors``), or a locus URI such as
    ``hf://org/model``, which the node's daemon makes local first (at ``socket``, default
    ``$LOCUS_SOCKET`` or ``/run/locus/locus.sock``)."""
    out: Dict[str, Any] = {}
    framework = _framework(framework, device)
    for path, name in _native.shard_files(os.fspath(path_or_uri), socket):
        # Errors name the shard as the caller knows it (its URI), not the daemon's cache file.
        f = _File(path, shown=name)
        for k in f.order:
            if k in out:
                raise MalformedError(f"{path_or_uri}: tensor {k!r} is in more than one shard")
            out[k] = f.tensor(k, framework)
    return out
