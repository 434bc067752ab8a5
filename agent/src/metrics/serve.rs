//! The HTTP endpoint: `GET /metrics`, nothing else.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::textformat;
use crate::Agent;

/// A bound metrics endpoint, not yet serving.
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
}

impl MetricsServer {
    /// Binds `[metrics] listen`; a busy or foreign address fails the agent's
    /// start with the address named (better than running without metrics).
    pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen for metrics on {addr}: pick a free address in [metrics] listen, or remove [metrics]"
            )
        })?;
        Ok(MetricsServer { listener })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, agent: Arc<Agent>, shutdown: impl Future<Output = ()> + Send + 'static) {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(agent);
        if let Err(e) = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    }
}

/// Gathers on each scrape; answers OpenMetrics to those who ask for it
/// (Prometheus) and the classic text format to everyone else.
async fn metrics(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> impl IntoResponse {
    let report = crate::status::report(&agent).await;
    let text = super::encode(&report, &agent.metrics);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if textformat::wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, super::CONTENT_TYPE)], text)
    } else {
        let text = textformat::from_openmetrics(&text);
        ([(header::CONTENT_TYPE, textformat::CONTENT_TYPE)], text)
    }
}
