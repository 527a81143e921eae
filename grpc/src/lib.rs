//! Generated gRPC code for locus. The `.proto` files under `proto/` are the source of truth.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("locus.v1");
}

/// The Container Storage Interface (the spec's csi.proto, v1.12.0): what kubelet speaks to a
/// node plugin.
#[allow(clippy::all, missing_docs)]
pub mod csi {
    tonic::include_proto!("csi.v1");
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

/// What a failed answer of the daemon means to a client: the one reading of a `tonic::Status`
/// that the CLI, the mount and the loader share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The repo, file or revision does not exist.
    NotFound,
    /// The request itself is wrong (a bad URI, a bad argument): asking again will not help.
    Invalid,
    /// The daemon stopped answering (its connection broke).
    DaemonGone,
    /// Anything else the daemon explains in its message (the origin failed, no room, …).
    Failed,
}

impl Refusal {
    /// Reads `status`.
    pub fn of(status: &tonic::Status) -> Refusal {
        match status.code() {
            tonic::Code::NotFound => Refusal::NotFound,
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => Refusal::Invalid,
            tonic::Code::Unavailable if unreachable(status) => Refusal::DaemonGone,
            _ => Refusal::Failed,
        }
    }

    /// The one line to show for `status`.
    pub fn message(status: &tonic::Status) -> String {
        match Refusal::of(status) {
            Refusal::DaemonGone => {
                format!("the locus daemon stopped answering: {}", status.message())
            }
            _ => status.message().to_string(),
        }
    }
}

/// Whether `status` was made on this side from a transport failure (the connection to the
/// daemon failed or broke: it is gone or restarting), whatever its code: statuses the daemon
/// sends carry no source. A request the daemon never answered may be asked again.
pub fn transport_failure(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status.source().is_some()
}

/// Whether an `Unavailable` status is the client's own (the connection failed: the daemon is
/// gone or restarting) rather than one the daemon sent (it answered that it could not serve):
/// statuses made from a transport error carry that error as their source.
fn unreachable(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status.source().is_some()
        || status.message().is_empty()
        || status.message().contains("transport")
}

/// Connects to the daemon's local API on the Unix socket `socket`.
pub async fn connect_local(socket: &Path) -> Result<LocalClient, ConnectError> {
    let hint = "start `locus daemon`, or point --socket / LOCUS_SOCKET at its socket";
    if !socket.exists() {
        return Err(ConnectError(format!(
            "cannot reach the locus daemon: no socket at {} ({hint})",
            socket.display()
        )));
    }
    let channel = unix_channel(socket).await.map_err(|e| {
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

/// A gRPC channel over the Unix socket `socket` (reconnecting when the server comes back):
/// the local API, and the CSI socket for its clients.
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = socket.to_path_buf();
    Endpoint::from_static("http://locus.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
}

/// The pages of a `ListPages` answer as one `ListResponse` (the first page's revision, TTL,
/// age and `unanswered`; every page's entries, in order).
pub async fn join_pages(
    pages: impl futures::Stream<Item = Result<v1::ListResponse, tonic::Status>>,
) -> Result<v1::ListResponse, tonic::Status> {
    use futures::StreamExt;
    let mut pages = std::pin::pin!(pages);
    let mut all: Option<v1::ListResponse> = None;
    while let Some(page) = pages.next().await {
        let page = page?;
        match &mut all {
            None => all = Some(page),
            Some(a) => a.entries.extend(page.entries),
        }
    }
    all.ok_or_else(|| tonic::Status::internal("the daemon sent no page"))
}

/// The socket clients use: `LOCUS_SOCKET`, else the default path.
pub fn default_socket() -> PathBuf {
    std::env::var_os("LOCUS_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Where the local API listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/locus/locus.sock";

#[cfg(test)]
mod tests {
    use super::Refusal;
    use tonic::Status;

    #[test]
    fn one_reading_of_the_daemons_answers() {
        assert_eq!(Refusal::of(&Status::not_found("x")), Refusal::NotFound);
        assert_eq!(
            Refusal::of(&Status::invalid_argument("x")),
            Refusal::Invalid
        );
        assert_eq!(
            Refusal::of(&Status::failed_precondition("x")),
            Refusal::Invalid
        );
        assert_eq!(
            Refusal::of(&Status::unavailable("origin 503")),
            Refusal::Failed
        );
        let gone = Status::unavailable("error trying to connect: transport error");
        assert_eq!(Refusal::of(&gone), Refusal::DaemonGone);
        assert!(Refusal::message(&gone).starts_with("the locus daemon stopped answering"));
        assert_eq!(Refusal::message(&Status::internal("no room")), "no room");
    }
}
