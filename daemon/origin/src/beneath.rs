//! Local files opened only beneath a `--file-root`, whatever changes on disk meanwhile.
//!
//! A path is checked (made canonical, found under a root) before it is opened; between the
//! two, anyone who can write under the root could swap a folder or the file for a symlink
//! to somewhere else. So the open walks the checked path one component at a time from the
//! root's descriptor with `O_NOFOLLOW`: a symlink met on the way fails the open
//! (`ELOOP`/`ENOTDIR`), and nothing outside the root is ever opened. The file is then read
//! through that descriptor, with its identity checked before the first byte and after the
//! last.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::Mode;

use crate::{ByteStream, OriginError};

/// Bytes per piece of a local read.
const PIECE: u64 = 1 << 20;

/// Opens `path` (canonical, absolute) for reading, beneath whichever of `roots` holds it,
/// following no symlink on the way. Only a regular file opens.
pub(crate) fn open_beneath(roots: &[PathBuf], path: &Path) -> io::Result<File> {
    let (root, rel) = roots
        .iter()
        .find_map(|r| path.strip_prefix(r).ok().map(|rel| (r, rel)))
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::PermissionDenied, "outside every --file-root")
        })?;
    let parts: Vec<_> = rel.components().collect();
    if parts.is_empty() || parts.iter().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file under the root",
        ));
    }
    let folder = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    // The root itself was made canonical at start: it is the operator's, symlinks included.
    let mut dir = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let (last, folders) = parts.split_last().expect("not empty");
    for c in folders {
        dir = openat(&dir, c.as_os_str(), folder, Mode::empty())?;
    }
    // O_NONBLOCK: a FIFO swapped in must not hang the open (no effect on a regular file).
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY
        | OFlag::O_NONBLOCK;
    let f = File::from(openat(&dir, last.as_os_str(), flags, Mode::empty())?);
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// What an open or read error means for `what`.
pub(crate) fn error(what: &str, e: io::Error, denied_hint: &'static str) -> OriginError {
    let symlink = matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR));
    match e.kind() {
        io::ErrorKind::NotFound => OriginError::NotFound {
            what: what.to_string(),
            kind: "file",
        },
        _ if symlink => OriginError::AccessDenied {
            what: what.to_string(),
            detail: "a symlink where the checked path had none (changed after the check?)".into(),
            hint: "files are read only beneath a --file-root, through no symlink",
        },
        io::ErrorKind::PermissionDenied => OriginError::AccessDenied {
            what: what.to_string(),
            detail: e.to_string(),
            hint: denied_hint,
        },
        _ => OriginError::Transient {
            what: what.to_string(),
            detail: e.to_string(),
            retry_after: None,
        },
    }
}

/// Reads `range` of `file` (opened by [`open_beneath`]) as the version `identity` names:
/// checked before the first byte and after the last, so a file rewritten in place fails the
/// read ([`OriginError::Changed`]) instead of mixing versions.
pub(crate) fn read(
    file: File,
    identity: Option<String>,
    identity_of: fn(&std::fs::Metadata) -> String,
    range: Range<u64>,
    what: String,
) -> Result<ByteStream, OriginError> {
    let same = {
        let what = what.clone();
        move |f: &File| -> Result<(), OriginError> {
            let now = f.metadata().map(|m| identity_of(&m)).ok();
            match &identity {
                Some(want) if now.as_ref() != Some(want) => {
                    Err(OriginError::Changed { what: what.clone() })
                }
                _ => Ok(()),
            }
        }
    };
    same(&file)?;
    let file = Arc::new(file);
    let pieces = futures::stream::try_unfold(range.start, {
        let file = file.clone();
        move |pos| {
            let file = file.clone();
            let what = what.clone();
            async move {
                if pos >= range.end {
                    return Ok(None);
                }
                let len = (range.end - pos).min(PIECE) as usize;
                let buf = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, pos).map(|_| buf)
                })
                .await
                .map_err(|e| io::Error::other(e.to_string()))
                .and_then(|r| r)
                .map_err(|e| match e.kind() {
                    // Shorter than listed: truncated since.
                    io::ErrorKind::UnexpectedEof => OriginError::Changed { what: what.clone() },
                    _ => error(&what, e, ""),
                })?;
                Ok(Some((Bytes::from(buf), pos + len as u64)))
            }
        }
    });
    let after = futures::stream::once(async move { same(&file) })
        .filter_map(|r| async move { r.err().map(Err) });
    Ok(pieces.chain(after).boxed())
}
