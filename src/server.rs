//! Accepting connections and serving HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge) on them until shutdown, then draining what is in flight.
//!
//! The entry point takes an already-bound listener and a shutdown future,
//! so `main` owns sockets and signals and tests pass a port-0 listener.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::ServerConfig;
use crate::gateway::{Gateway, Peer};

/// Serves until `shutdown` resolves, then waits up to `shutdown_timeout` for
/// requests in flight and flushes the store.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    server: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_size)
        .max_headers(128);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(server.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(64)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));

    // Permits are moved into each connection task and released on drop.
    let permits = Arc::new(Semaphore::new(server.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(client = %addr.ip(), "connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = gateway.metrics().connection();
        let peer = Peer {
            addr,
            proto: "http",
        };
        let gateway = gateway.clone();
        let service = service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(client = %addr.ip(), error = %e, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("shutting down: no new connections; draining requests in flight");
    if tokio::time::timeout(server.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?server.shutdown_timeout, "requests still in flight at the shutdown deadline; closing them");
    }
    if let Err(e) = gateway.store().flush() {
        tracing::error!(error = %e, "flushing the store at shutdown failed");
        return Err(std::io::Error::other(e));
    }
    tracing::info!("stopped");
    Ok(())
}
