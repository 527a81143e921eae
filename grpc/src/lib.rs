//! Generated gRPC code for locus. The `.proto` files under `proto/` are the source of truth.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("locus.v1");
}

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The local API client.
pub type LocalClient = v1::local_client::LocalClient<Channel>;

/// Why the daemon could not be reached.
#[derive(Debug)]
pub struct ConnectError(pub String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

/// Connects to the daemon's local API on the Unix socket `socket`.
pub async fn connect_local(socket: &Path) -> Result<LocalClient, ConnectError> {
    let hint = "start `locus daemon`, or point --socket / LOCUS_SOCKET at its socket";
    if !socket.exists() {
        return Err(ConnectError(format!(
            "cannot reach the locus daemon: no socket at {} ({hint})",
            socket.display()
        )));
    }
    let path: PathBuf = socket.to_path_buf();
    let channel = Endpoint::from_static("http://locus.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .map_err(|e| {
            use std::error::Error as _;
            let cause = e
                .source()
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            ConnectError(format!(
                "cannot reach the locus daemon at {}: {cause} ({hint})",
                socket.display()
            ))
        })?;
    Ok(v1::local_client::LocalClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// The socket clients use: `LOCUS_SOCKET`, else the default path.
pub fn default_socket() -> PathBuf {
    std::env::var_os("LOCUS_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Where the local API listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/locus/locus.sock";
