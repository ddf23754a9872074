//! The admin listener (`[admin] listen`): `/healthz` (the process is up),
//! `/readyz` (the store answers and the gateway is not draining) and
//! `/metrics` (Prometheus text). Kept off the gateway's port so it can stay
//! on a private address.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::accept;
use crate::observe::metrics::Metrics;
use crate::store::Store;

pub struct Admin {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown begins, so load balancers stop sending traffic.
    pub draining: Arc<AtomicBool>,
}

/// Connections the admin listener serves at once: a health checker and a
/// metrics scraper need a few; past this, new ones are closed, so the
/// listener cannot be made to hold the process's descriptors.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = accept::next(&listener, |e| {
            tracing::warn!(error = %e, "admin listener: accept failed");
        })
        .await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(client = %peer.ip(), "admin listener: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.answer(&req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Admin {
    fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if let Err(e) = self.store.ping() {
                    tracing::warn!(error = %e, "readiness: store check failed");
                    text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            "/metrics" => {
                let mut r = text(StatusCode::OK, "");
                *r.body_mut() = Full::new(Bytes::from(self.metrics.render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /readyz or /metrics\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}
