//! The metrics endpoint: Prometheus text at `/metrics`, liveness at `/healthz`.

use std::future::Future;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;

/// Serves `/metrics` (from `render`) and `/healthz` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let r = render.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], r()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
