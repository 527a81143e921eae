//! URIs: the node's daemon makes the files local (fetched, verified, cached) and says where they
//! are; the loader maps the cache files as they are.

use std::path::PathBuf;

use locus_core::LocusUri;
use locus_grpc::v1 as pb;

use crate::checkpoint::{plan, OpenOptions, Shard, INDEX_FILE};
use crate::{ErrorKind, LoaderError};

fn status_error(s: tonic::Status) -> LoaderError {
    let kind = match locus_grpc::Refusal::of(&s) {
        locus_grpc::Refusal::NotFound => ErrorKind::NotFound,
        locus_grpc::Refusal::Invalid => ErrorKind::Invalid,
        locus_grpc::Refusal::DaemonGone | locus_grpc::Refusal::Failed => ErrorKind::Unavailable,
    };
    LoaderError::Remote {
        kind,
        message: locus_grpc::Refusal::message(&s),
    }
}

/// The local paths of the shards that `uri` names, in order.
pub(crate) fn make_local(uri: &str, opts: &OpenOptions) -> Result<Vec<Shard>, LoaderError> {
    let parsed = LocusUri::parse(uri).map_err(|e| LoaderError::Remote {
        kind: ErrorKind::Invalid,
        message: e.to_string(),
    })?;
    let socket = opts
        .socket
        .clone()
        .unwrap_or_else(locus_grpc::default_socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoaderError::Remote {
            kind: ErrorKind::Unavailable,
            message: e.to_string(),
        })?;
    rt.block_on(async move {
        let mut client =
            locus_grpc::connect_local(&socket)
                .await
                .map_err(|e| LoaderError::Remote {
                    kind: ErrorKind::Unavailable,
                    message: e.0,
                })?;
        let pages = client
            .list_pages(pb::ListRequest {
                uri: uri.to_string(),
                cluster: false,
                one_level: false,
                max_age_ms: 0,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let listing = locus_grpc::join_pages(pages).await.map_err(status_error)?;
        let prefix = if parsed.path.is_empty() {
            String::new()
        } else {
            format!("{}/", parsed.path)
        };
        // A URI that names one file.
        if let [one] = listing.entries.as_slice() {
            if one.path == parsed.path {
                return Ok(vec![Shard {
                    path: open(&mut client, &one.uri).await?,
                    name: one.uri.clone(),
                }]);
            }
        }
        let rel: Vec<(String, String)> = listing
            .entries
            .iter()
            .filter_map(|e| {
                e.path
                    .strip_prefix(&prefix)
                    .map(|r| (r.to_string(), e.uri.clone()))
            })
            .collect();
        let names: Vec<String> = rel.iter().map(|(n, _)| n.clone()).collect();
        let uri_of = |name: &str| rel.iter().find(|(n, _)| n == name).map(|(_, u)| u.clone());
        let index_bytes = match uri_of(INDEX_FILE) {
            Some(u) => {
                let p = open(&mut client, &u).await?;
                Some(std::fs::read(&p).map_err(|source| LoaderError::Io {
                    path: p.display().to_string(),
                    source,
                })?)
            }
            None => None,
        };
        let shards = plan(uri, &names, || Ok(index_bytes.unwrap_or_default()))?;
        let uris = shards
            .iter()
            .map(|s| {
                uri_of(s).ok_or_else(|| LoaderError::Remote {
                    kind: ErrorKind::NotFound,
                    message: format!("{uri}: no shard {s}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // All at once over the one connection: a sharded checkpoint costs one round trip, not
        // one per shard.
        futures::future::try_join_all(uris.iter().map(|u| {
            let mut c = client.clone();
            async move {
                Ok(Shard {
                    path: open(&mut c, u).await?,
                    name: u.clone(),
                })
            }
        }))
        .await
    })
}

async fn open(client: &mut locus_grpc::LocalClient, uri: &str) -> Result<PathBuf, LoaderError> {
    let r = client
        .open(pb::OpenRequest {
            uri: uri.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    // The daemon checked every chunk before it answered; a file that is not the length it
    // said (changed since, by someone else) is never mapped, as a mapping past its end faults.
    let path = PathBuf::from(r.path);
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(LoaderError::Io {
                path: uri.to_string(),
                source: std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}; {}", path.display(), locus_core::DATA_ACCESS_HINT),
                ),
            })
        }
        Err(source) => {
            return Err(LoaderError::Io {
                path: uri.to_string(),
                source,
            })
        }
    };
    if len != r.size {
        return Err(LoaderError::Remote {
            kind: ErrorKind::Unavailable,
            message: format!(
                "{uri}: the cache file changed while it was opened ({len} bytes, {} expected); try again",
                r.size
            ),
        });
    }
    Ok(path)
}
