//! Accepting connections and serving HTTP/1.1 and HTTP/2 on them — over TLS
//! when configured (ALPN), else plain with h2c prior knowledge — until
//! shutdown, then draining what is in flight.
//!
//! The entry point takes an already-bound listener and a shutdown future,
//! so `main` owns sockets and signals and tests pass a port-0 listener.

pub mod admin;
pub mod idle;
pub mod openfiles;
pub mod timer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::accept;
use crate::config::ServerConfig;
use crate::gateway::{Gateway, Peer};
use crate::server::idle::{Activity, Counted};
use crate::server::timer::CoarseTimer;

/// The protocol settings connections are served with, from the config they
/// were accepted under (so a reload applies to new connections). Built once
/// per config and shared, not copied into every connection's task.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// How long a new connection may stay silent before its first bytes.
    first_bytes: Duration,
    /// How long an HTTP/2 connection may go without a stream: the header
    /// read timeout, which is what closes an idle HTTP/1 connection.
    h2_idle: Duration,
}

impl Protocols {
    fn new(server: &ServerConfig) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(CoarseTimer::new(header_deadline_tick(
                server.header_read_timeout,
            )))
            .header_read_timeout(server.header_read_timeout)
            .max_buf_size(server.max_header_size)
            // hyper's own limit, and the most it parses in stack storage:
            // past 100, every request head cost two heap allocations of a
            // few KiB (as 128, two of the 401 path's ten mallocs).
            .max_headers(100);
        // Limits that hold against rapid reset (CVE-2023-44487) and
        // CONTINUATION floods: bounded streams, header list and pending resets.
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(server.max_concurrent_streams)
            .max_header_list_size(u32::try_from(server.max_header_size).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(64)
            .max_local_error_reset_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            http1,
            http2,
            first_bytes: server.header_read_timeout,
            h2_idle: server.header_read_timeout,
        }
    }
}

/// How late a header-read deadline may be met: a tenth of the timeout,
/// between 10 ms and half a second.
fn header_deadline_tick(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Http1,
    Http2,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// h2c prior knowledge or HTTP/1, told by the first bytes. They are peeked,
/// not read: hyper's HTTP/1 reader then starts on an empty buffer. Reading
/// them first and handing them back (hyper-util's auto builder) made every
/// HTTP/1 connection grow its read buffer from 8 to 16 KiB, for as long as
/// it stayed open.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut head = [0u8; H2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut head).await?;
        if n == 0 || head[..n] != H2_PREFACE[..n] {
            // Anything else, an empty connection included, is hyper's
            // HTTP/1 parser's to answer or close.
            return Ok(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // Part of the preface: peek returns at once while those bytes are
        // queued, so wait before looking again; the caller's deadline
        // bounds how long.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The protocol TLS negotiated: HTTP/2 is only spoken over TLS with ALPN
/// `h2` (RFC 9113 §3.2); without ALPN, HTTP/1.1.
fn negotiated<I>(tls: &tokio_rustls::server::TlsStream<I>) -> Protocol {
    match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    }
}

/// The most connections shed in one go when descriptors run out.
const MAX_SHED: usize = 1024;

/// A descriptor held back for when accept fails for want of one. It is let
/// go so that the connections waiting in the backlog can be accepted and
/// closed at once, their clients told rather than left hanging, and the
/// listener is not left readable with nothing it can take; then it is
/// taken again.
struct Spare(Option<std::fs::File>);

impl Spare {
    fn take() -> Self {
        Self(std::fs::File::open("/dev/null").ok())
    }

    /// Takes the spare again if a shortage left it free.
    fn restore(&mut self) {
        if self.0.is_none() {
            *self = Self::take();
        }
    }

    /// Accepts and closes what waits in the backlog; returns how many.
    fn shed(&mut self, listener: &TcpListener) -> usize {
        self.0 = None;
        let mut waker = Context::from_waker(Waker::noop());
        let mut shed = 0;
        while shed < MAX_SHED {
            match listener.poll_accept(&mut waker) {
                Poll::Ready(Ok((stream, _))) => {
                    drop(stream);
                    shed += 1;
                }
                Poll::Ready(Err(_)) | Poll::Pending => break,
            }
        }
        // Taken back at once when the shed freed it; else when accepting
        // works again.
        self.restore();
        shed
    }
}

/// The process or the system is out of descriptors or socket memory.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// Serves until `shutdown` resolves, then waits up to `shutdown_timeout` for
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let initial = gateway.settings();
    // Permits are moved into each connection task and released on drop.
    let permits = Arc::new(Semaphore::new(initial.config.server.max_connections));
    // Connections watch this to finish gracefully at shutdown; their
    // permits coming back tells when all have.
    let (stop, stopping) = watch::channel(());
    let mut protocols = (
        initial.clone(),
        Arc::new(Protocols::new(&initial.config.server)),
    );
    tokio::pin!(shutdown);

    let mut spare = Spare::take();
    // Connections shed since descriptors ran out; `None` while accepting.
    let mut shortage: Option<usize> = None;

    loop {
        let failed = |e: &std::io::Error| {
            if out_of_descriptors(e) {
                let shed = spare.shed(&listener);
                if shortage.is_none() {
                    tracing::warn!(error = %e, shed, "out of file descriptors: closing connections at accept until some are free");
                }
                shortage = Some(shortage.unwrap_or(0) + shed);
            } else {
                tracing::warn!(error = %e, "accept failed");
            }
        };
        let (stream, addr) = tokio::select! {
            accepted = accept::next(&listener, failed) => accepted,
            () = &mut shutdown => break,
        };
        if let Some(shed) = shortage.take() {
            tracing::warn!(shed, "accepting again: descriptors are free");
            spare.restore();
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(client = %addr.ip(), "connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = gateway.metrics().connection();
        let settings = gateway.settings();
        if !Arc::ptr_eq(&settings, &protocols.0) {
            protocols = (
                settings.clone(),
                Arc::new(Protocols::new(&settings.config.server)),
            );
        }
        let protocols = protocols.1.clone();
        let gateway = gateway.clone();
        let watcher = stopping.clone();
        // Each connection's future is boxed on its own: the task then holds
        // only the branch it takes (a plain connection does not carry a TLS
        // handshake's state), which is what an idle connection costs.
        tokio::spawn(async move {
            match &settings.tls {
                None => Box::pin(serve_plain(&protocols, stream, addr, gateway, watcher)).await,
                Some(acceptor) => {
                    let timeout = settings.config.server.tls_handshake_timeout;
                    let tls = serve_tls(
                        acceptor.clone(),
                        timeout,
                        stream,
                        addr,
                        &protocols,
                        gateway,
                        watcher,
                    );
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
    let _ = stop.send(());
    // Config bounds max_connections far below u32::MAX.
    let all = u32::try_from(initial.config.server.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(timeout, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            ?timeout,
            "requests still in flight at the shutdown deadline; closing them"
        );
    }
    Ok(())
}

/// A plain connection: h2c prior knowledge or HTTP/1, once its first bytes
/// arrive within the header read timeout. One still silent at shutdown has
/// no request to finish and is closed at once.
async fn serve_plain(
    protocols: &Protocols,
    stream: TcpStream,
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    mut watcher: Stop,
) {
    let sniffed = tokio::select! {
        // Bytes already sent win over a shutdown signalled at the same
        // time: their request is served, then the connection closes.
        biased;
        sniffed = tokio::time::timeout(protocols.first_bytes, sniff(&stream)) => sniffed,
        _ = watcher.changed() => return,
    };
    let protocol = match sniffed {
        Ok(Ok(protocol)) => protocol,
        Ok(Err(e)) => {
            tracing::debug!(client = %addr.ip(), error = %e, "connection failed before a request");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %addr.ip(), "no request within the header read timeout; closing");
            return;
        }
    };
    let peer = Peer::new(addr, "http");
    serve_connection(
        protocols,
        protocol,
        TokioIo::new(stream),
        gateway,
        peer,
        watcher,
    )
    .await;
}

/// The TLS handshake, within `timeout` and unless shutdown comes first,
/// then the connection. A function of its own so that its locals (a TLS
/// stream is over a kilobyte) live in its box, not in every plain
/// connection's task.
async fn serve_tls(
    acceptor: TlsAcceptor,
    timeout: Duration,
    stream: TcpStream,
    addr: SocketAddr,
    protocols: &Protocols,
    gateway: Arc<Gateway>,
    mut watcher: Stop,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let first = tokio::select! {
        biased;
        first = tokio::time::timeout_at(deadline, first_byte(&stream)) => first,
        _ = watcher.changed() => return,
    };
    match first {
        // A TLS record starts with its content type (22 for a handshake);
        // an HTTP request with a method's first capital letter.
        Ok(Ok(Some(byte))) if byte.is_ascii_uppercase() => {
            return plain_http_refused(stream, addr).await;
        }
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None) | Err(_)) | Err(_) => return,
    }
    let handshake = tokio::select! {
        biased;
        handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => handshake,
        _ = watcher.changed() => return,
    };
    match handshake {
        Ok(Ok(tls)) => {
            let peer = Peer::new(addr, "https");
            let protocol = negotiated(&tls);
            let io = TokioIo::new(tls);
            Box::pin(serve_connection(
                protocols, protocol, io, gateway, peer, watcher,
            ))
            .await;
        }
        Ok(Err(e)) => tracing::debug!(client = %addr.ip(), error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(client = %addr.ip(), "TLS handshake timed out"),
    }
}

/// The first byte a client sent, peeked (left for the TLS handshake to
/// read); `None` when it closed without sending any.
async fn first_byte(stream: &TcpStream) -> std::io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    let n = stream.peek(&mut byte).await?;
    Ok((n == 1).then_some(byte[0]))
}

/// Plain HTTP on a TLS listener: a plain-text 400 that says so, as nginx
/// answers, rather than a TLS alert a client shows as garbage.
async fn plain_http_refused(mut stream: TcpStream, addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "400 Bad Request: this port speaks HTTPS; send the request with https://\n";
    tracing::debug!(client = %addr.ip(), "plain HTTP sent to the TLS listener");
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let answer = async {
        // Read what the request sent so far: closing with unread bytes
        // would reset the connection before the client reads the answer.
        let mut scratch = [0u8; 8192];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut scratch)).await;
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
}

/// Drives a pinned connection to its end; once `stop` fires, asks it to
/// finish what is in flight and close (HTTP/1: after the current response;
/// HTTP/2: GOAWAY). When `idle()` resolves, the connection is asked to
/// close the same way, and closed outright if it is idle again before it
/// has (a client that never answers the GOAWAY's PING). A macro, not a
/// generic function: rustc cannot prove such a function's future `Send`
/// for hyper's HTTP/2 connection (a higher-ranked lifetime error).
macro_rules! until_stopped {
    ($conn:expr, $stop:expr, $idle:expr) => {{
        let mut conn = $conn;
        let mut stop: Stop = $stop;
        let idle = $idle;
        tokio::select! {
            biased;
            served = conn.as_mut() => served,
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = idle() => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    biased;
                    served = conn.as_mut() => served,
                    () = idle() => Ok(()),
                }
            }
        }
    }};
}

async fn serve_connection<I>(
    protocols: &Protocols,
    protocol: Protocol,
    io: TokioIo<I>,
    gateway: Arc<Gateway>,
    peer: Peer,
    watcher: Stop,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = peer.addr.ip();
    let served = match protocol {
        Protocol::Http1 => {
            // hyper keeps a slot the size of this future in every connection
            // for its whole life: an `Answer` is a response or a boxed exchange.
            let service = service_fn(move |req| gateway.handle(req, &peer));
            let conn = protocols
                .http1
                .serve_connection(io, service)
                .with_upgrades();
            // hyper's header-read timer closes an idle HTTP/1 connection.
            until_stopped!(std::pin::pin!(conn), watcher, std::future::pending)
        }
        // Boxed: an HTTP/2 connection's state would otherwise widen every
        // HTTP/1 connection's future to its size.
        Protocol::Http2 => {
            let activity = Activity::new();
            let streams = Arc::clone(&activity);
            let service =
                service_fn(move |req| Counted::new(streams.open(), gateway.handle(req, &peer)));
            let conn = protocols.http2.serve_connection(io, service);
            let timeout = protocols.h2_idle;
            let tick = header_deadline_tick(timeout);
            until_stopped!(Box::pin(conn), watcher, || activity.idle(timeout, tick))
        }
    };
    if let Err(e) = served {
        tracing::debug!(%client, error = %e, "connection ended with an error");
    }
}

/// The shutdown signal a connection watches: it changes once, when the
/// listener closes (or is dropped with it).
type Stop = watch::Receiver<()>;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair: the client end and the server's accepted end.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_h2_preface_picks_http2_and_anything_else_http1() {
        for (sent, expected) in [
            (H2_PREFACE, Protocol::Http2),
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], Protocol::Http1),
            (&b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"[..], Protocol::Http1),
            (&b"P"[..], Protocol::Http1),
        ] {
            let (mut client, server) = pair().await;
            client.write_all(sent).await.unwrap();
            if sent.len() == 1 {
                // A lone byte that could begin the preface: the sniffer
                // waits for more, and "PX" is not the preface.
                client.write_all(b"X").await.unwrap();
            }
            assert_eq!(sniff(&server).await.unwrap(), expected, "{sent:?}");
            // Peeked, not consumed: hyper reads the same bytes.
            let mut buf = [0u8; 1];
            assert_eq!(server.peek(&mut buf).await.unwrap(), 1);
            assert_eq!(buf[0], sent[0]);
        }
    }

    #[tokio::test]
    async fn a_preface_split_across_writes_is_still_http2() {
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..5]).await.unwrap();
        let sniffing = tokio::spawn(async move { sniff(&server).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.write_all(&H2_PREFACE[5..]).await.unwrap();
        assert_eq!(sniffing.await.unwrap(), Protocol::Http2);
    }

    #[tokio::test]
    async fn shedding_closes_every_waiting_connection_and_keeps_the_spare() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut spare = Spare::take();
        // Connected is not yet queued for accept on every kernel at once:
        // shed until all three are gone, a bounded number of times.
        let mut shed = 0;
        for _ in 0..100 {
            shed += spare.shed(&listener);
            if shed == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(shed, 3);
        assert!(spare.0.is_some(), "the spare was not taken back");
        for mut client in clients {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
        }
    }

    #[test]
    fn running_out_of_descriptors_is_told_from_a_failed_connection() {
        use std::io::{Error, ErrorKind};
        for errno in [24, 23, 105, 12] {
            let e = Error::from_raw_os_error(errno);
            assert!(out_of_descriptors(&e), "{e}");
            assert!(!accept::is_per_connection(&e), "{e}");
        }
        let aborted = Error::from(ErrorKind::ConnectionAborted);
        assert!(accept::is_per_connection(&aborted) && !out_of_descriptors(&aborted));
    }

    #[tokio::test]
    async fn a_closed_connection_goes_to_http1_to_be_closed() {
        let (client, server) = pair().await;
        drop(client);
        assert_eq!(sniff(&server).await.unwrap(), Protocol::Http1);
    }
}
