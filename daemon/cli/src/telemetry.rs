//! Logs and metrics of the daemon and of `locus mount`, set up the same way for both.
//!
//! Logs go through `tracing` to stderr, with URLs written without what may carry a credential
//! (query strings, user info: see `locus_core::redact`), whatever the call site put in them.
//! Metrics are one Prometheus recorder per process, served at `/metrics` (and `/healthz`).

use std::io::Write;
use std::sync::Arc;

use locus_node::metrics_defs;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// A stderr writer that redacts each formatted event (the formatter writes one event in one
/// `write_all`).
struct Redacting;

impl Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(locus_core::redact::redact_urls(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Starts logging at `LOCUS_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCUS_LOG")
        // fuser warns when a session it unmounts was unmounted already (`locus unmount`).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser::mnt=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Redacting)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Installs this process's Prometheus recorder and returns what renders it.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(metrics_defs::FETCH_SECONDS.to_string()),
            metrics_defs::FETCH_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(metrics_defs::INDEX_COMMIT_SECONDS.to_string()),
            metrics_defs::INDEX_COMMIT_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    Ok(handle)
}

/// Serves `handle` at `http://ADDR/metrics` (and `/healthz`) on `listener` until `stop`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    before_render: impl Fn() + Send + Sync + 'static,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
        before_render();
        handle.render()
    });
    if let Err(e) = locus_node::http::serve(listener, render, stop).await {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
