//! Accepting connections and serving HTTP/1.1 and HTTP/2 on them — over TLS
//! when configured (ALPN), else plain with h2c prior knowledge — until
//! shutdown, then draining what is in flight.
//!
//! The entry point takes an already-bound listener and a shutdown future,
//! so `main` owns sockets and signals and tests pass a port-0 listener.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::gateway::{Gateway, Peer};

/// The protocol settings for one connection, from the config it was
/// accepted under (so a reload applies to new connections).
fn builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_size)
        .max_headers(128);
    // Limits that hold against rapid reset (CVE-2023-44487) and
    // CONTINUATION floods: bounded streams, header list and pending resets.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(server.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    builder
}

/// Serves until `shutdown` resolves, then waits up to `shutdown_timeout` for
/// requests in flight and flushes the store.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let initial = gateway.settings();
    // Permits are moved into each connection task and released on drop.
    let permits = Arc::new(Semaphore::new(initial.config.server.max_connections));
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
        let settings = gateway.settings();
        let builder = builder(&settings.config.server);
        let gateway = gateway.clone();
        let watcher = graceful.watcher();
        // Each connection's future is boxed on its own: the task then holds
        // only the branch it takes (a plain connection does not carry a TLS
        // handshake's state), which is what an idle connection costs.
        tokio::spawn(async move {
            match &settings.tls {
                None => {
                    let peer = Peer::new(addr, "http");
                    let io = TokioIo::new(stream);
                    Box::pin(serve_connection(&builder, io, gateway, peer, watcher)).await;
                }
                Some(acceptor) => {
                    let timeout = settings.config.server.tls_handshake_timeout;
                    let tls =
                        serve_tls(acceptor, timeout, stream, addr, &builder, gateway, watcher);
                    Box::pin(tls).await;
                }
            }
            drop(open);
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("shutting down: no new connections; draining requests in flight");
    let timeout = gateway.settings().config.server.shutdown_timeout;
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?timeout,
            "requests still in flight at the shutdown deadline; closing them"
        );
    }
    if let Err(e) = gateway.store().flush() {
        tracing::error!(error = %e, "flushing the store at shutdown failed");
        return Err(std::io::Error::other(e));
    }
    tracing::info!("stopped");
    Ok(())
}

/// The TLS handshake, within `timeout`, then the connection. A function of
/// its own so that its locals (a TLS stream is over a kilobyte) live in its
/// box, not in every plain connection's task.
async fn serve_tls(
    acceptor: &TlsAcceptor,
    timeout: std::time::Duration,
    stream: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let peer = Peer::new(addr, "https");
            let io = TokioIo::new(tls);
            Box::pin(serve_connection(builder, io, gateway, peer, watcher)).await;
        }
        Ok(Err(e)) => tracing::debug!(client = %addr.ip(), error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(client = %addr.ip(), "TLS handshake timed out"),
    }
}

async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    gateway: Arc<Gateway>,
    peer: Peer,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = peer.addr.ip();
    let peer = Arc::new(peer);
    // hyper keeps a slot the size of this future in every connection for
    // its whole life; boxed, an idle connection pays 16 bytes instead of
    // the pipeline's few KiB, for one allocation per request.
    let service = service_fn(move |req| -> Pin<Box<dyn Future<Output = _> + Send>> {
        let gateway = gateway.clone();
        let peer = peer.clone();
        Box::pin(async move { Ok::<_, Infallible>(gateway.handle(req, &peer).await) })
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%client, error = %e, "connection ended with an error");
    }
}
