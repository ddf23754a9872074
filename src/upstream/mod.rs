//! The upstream: connecting (TCP, then TLS for `https`), sending over a
//! pooled keep-alive connection, and turning failures into 502, 503 (no
//! connection free) or 504.
//! Bodies pass through untouched in both directions; nothing here buffers.

pub mod connection;
pub mod outbound;
pub mod pool;
pub mod resolve;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use http::header::HeaderValue;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::time::error::Elapsed;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamConfig;
use connection::{Conn, Io, Slot};
use outbound::{ClientBodyError, Outbound};
use pool::{Busy, Lease, Pool, Returning};
use resolve::Resolver;

pub struct Upstream {
    tcp: HttpConnector<Resolver>,
    /// For an `https` upstream: the TLS settings and the name to verify.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    pool: Pool,
    /// Where new connections go: scheme and authority, no path.
    origin: Uri,
    /// `Host` for requests that came without one (HTTP/1.0).
    host: HeaderValue,
    config: UpstreamConfig,
}

/// Why an exchange with the upstream failed, for the log.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error("cannot connect: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Why a forwarded request got no response from the upstream, as the
/// gateway answers it: 400, 503, 502 or 504. The cause is logged here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No response head within `upstream.timeout`.
    Timeout,
    /// The client's request body was malformed or cut short.
    ClientBody,
    /// Every connection stayed busy for `upstream.connect_timeout`.
    Busy,
    /// Connecting failed, or the connection broke.
    Unreachable,
}

/// The client's path and query make no valid upstream target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidTarget;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot read upstream.ca_file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("upstream.ca_file {path} holds no usable certificate: {source}")]
    BadCa {
        path: std::path::PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot set up TLS to the upstream: {0}")]
    Tls(#[from] rustls::Error),
    #[error("upstream.url: {host} is not a name TLS can verify")]
    ServerName { host: String },
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        // Resolved in-process: getaddrinfo finds no service names in a static binary.
        let resolver = Resolver::system(config.connect_timeout);
        let mut tcp = HttpConnector::new_with_resolver(resolver);
        tcp.set_connect_timeout(Some(config.connect_timeout));
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(std::time::Duration::from_secs(60)));
        // Only the host and port are read from the URI; TLS is ours, below.
        tcp.enforce_http(false);
        let tls = if config.scheme == http::uri::Scheme::HTTPS {
            let host = config.authority.host();
            // An IPv6 literal comes bracketed in the authority.
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name =
                ServerName::try_from(bare.to_owned()).map_err(|_| UpstreamError::ServerName {
                    host: host.to_owned(),
                })?;
            let connector = TlsConnector::from(std::sync::Arc::new(client_tls(config)?));
            Some((connector, name))
        } else {
            None
        };
        let origin = Uri::builder()
            .scheme(config.scheme.clone())
            .authority(config.authority.clone())
            .path_and_query("/")
            .build()
            .expect("a validated scheme and authority make a URI");
        let host = HeaderValue::from_str(config.authority.as_str())
            .expect("a validated authority is a valid header value");
        Ok(Self {
            tcp,
            tls,
            pool: Pool::new(config.pool_idle_timeout, config.max_connections),
            origin,
            host,
            config: config.clone(),
        })
    }

    /// The upstream request target (origin-form) for the canonical `path`
    /// of the client's `uri`, with the client's raw query.
    pub fn uri_for(&self, uri: &Uri, path: &str) -> Result<Uri, InvalidTarget> {
        // Already canonical, no base path: the client's own bytes, shared.
        if self.config.base_path.is_empty()
            && uri.path() == path
            && let Some(pq) = uri.path_and_query()
        {
            return Ok(Uri::from(pq.clone()));
        }
        let query = uri.query();
        let mut pq = String::with_capacity(
            self.config.base_path.len() + path.len() + 1 + query.map_or(0, str::len),
        );
        pq.push_str(&self.config.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        PathAndQuery::try_from(pq)
            .map(Uri::from)
            .map_err(|_| InvalidTarget)
    }

    /// Sends a prepared request and streams the answer back. The future
    /// owns what it needs, and is the exchange with a closure after it.
    pub fn send(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Returning>, Failure>> + Send + 'static {
        let uploading = !hyper::body::Body::is_end_stream(req.body());
        let exchange = Arc::clone(self).exchange(self.outbound(req));
        let this = Arc::clone(self);
        tokio::time::timeout(self.config.timeout, exchange)
            .map(move |result| this.answer(result, uploading))
    }

    /// The response head, or the failure, as the client gets it.
    fn answer(
        &self,
        result: Result<Result<(Response<Incoming>, Conn), SendError>, Elapsed>,
        uploading: bool,
    ) -> Result<Response<Returning>, Failure> {
        let (response, conn) = match result {
            Err(_) => {
                tracing::warn!(timeout = ?self.config.timeout, "upstream sent no response headers in time");
                return Err(Failure::Timeout);
            }
            Ok(Err(e)) if from_client_body(&e) => {
                tracing::info!(error = %error_chain(&e), "the client's request body was malformed or cut short: client error");
                return Err(Failure::ClientBody);
            }
            Ok(Err(SendError::Busy(e))) => {
                tracing::warn!(
                    max_connections = self.config.max_connections,
                    waited = ?self.config.connect_timeout,
                    "{e}"
                );
                return Err(Failure::Busy);
            }
            Ok(Err(e)) => {
                let connect = matches!(e, SendError::Connect(_));
                tracing::warn!(error = %error_chain(&e), connect, "upstream request failed");
                return Err(Failure::Unreachable);
            }
            Ok(Ok(exchanged)) => exchanged,
        };
        let (parts, body) = response.into_parts();
        let mut body = self.pool.returning(body, conn, uploading);
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            body.upgrade();
        }
        Ok(Response::from_parts(parts, body))
    }

    /// The request as it goes out: HTTP/1.1 (the pool speaks nothing
    /// else, whatever the client spoke to us), trailers dropped.
    fn outbound(&self, mut req: Request<Incoming>) -> Request<Outbound> {
        *req.version_mut() = Version::HTTP_11;
        req.map(Outbound::new)
    }

    /// The upstream's authority, as the `Host` for requests that came
    /// without one (HTTP/1.0).
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// One exchange up to the response head, on a pooled connection when
    /// one is open, else on a new one when the cap allows, else on the
    /// first to come free. A request the pooled connection closed on
    /// before sending it goes out again on the next (or a new) connection.
    ///
    /// An async block rather than an async fn: the fn's arguments would be
    /// kept twice in its future (rust-lang/rust#62958), the request alone
    /// taking 264 bytes of every forwarded request's allocation.
    #[allow(clippy::manual_async_fn)]
    fn exchange(
        self: Arc<Self>,
        req: Request<Outbound>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Conn), SendError>> + Send {
        async move {
            let (mut conn, reused) = match self.pool.lease(self.config.connect_timeout).await? {
                Lease::Idle(conn) => (conn, true),
                // Boxed: connecting is rare, and inline its state would be
                // moved along with every request's future.
                Lease::New(slot) => (Box::pin(self.connect(slot)).await?, false),
            };
            let unsent = match conn.send(req).await {
                Ok(response) => return Ok((response, conn)),
                Err(e) => match e.unsent {
                    Some(unsent) if reused => unsent,
                    _ => return Err(e.error.into()),
                },
            };
            // Its slot is free for the next try.
            drop(conn);
            // Boxed: rare, and a future holding itself needs it.
            let again: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(self.exchange(unsent));
            again.await
        }
    }

    /// A new connection (TLS for `https`), open while it holds `slot`.
    async fn connect(&self, slot: Slot) -> Result<Conn, SendError> {
        use tower_service::Service;
        let tcp = self
            .tcp
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        let io = match &self.tls {
            None => Io::Plain(tcp),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp.into_inner())
                    .await
                    .map_err(|e| SendError::Connect(e.into()))?;
                Io::Tls(Box::new(TokioIo::new(tls)))
            }
        };
        Ok(Conn::handshake(io, slot, UPSTREAM_READ_BUFFER).await?)
    }
}

/// The most an upstream connection reads at once, and so the largest
/// response head it takes. hyper's default (408 KiB) let its read buffer
/// grow past glibc's mmap threshold (128 KiB, fixed in main.rs) on fast
/// downloads: every read then mapped a fresh buffer and unmapped it after
/// (2 mmap + 2 munmap and their page faults per MiB proxied), and a slow
/// client could hold two such buffers per download. Just under the
/// threshold, reads stay as large as they can without a mapping each
/// (docs/benchmarks.md has the measurement).
const UPSTREAM_READ_BUFFER: usize = 120 * 1024;

/// Web PKI roots, plus `ca_file` for upstreams with a private CA.
fn client_tls(config: &UpstreamConfig) -> Result<rustls::ClientConfig, UpstreamError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.ca_file {
        let ca_err = |source| UpstreamError::CaFile {
            path: path.clone(),
            source,
        };
        for cert in CertificateDer::pem_file_iter(path).map_err(ca_err)? {
            roots
                .add(cert.map_err(ca_err)?)
                .map_err(|source| UpstreamError::BadCa {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The pool speaks HTTP/1.1 only.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// True when the exchange failed because the client's body did.
fn from_client_body(e: &SendError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = source {
        if e.is::<ClientBodyError>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Result<Upstream, UpstreamError> {
        let text = format!("[upstream]\nurl = \"{url}\"\n");
        let config =
            crate::config::Config::from_toml(&text, std::path::Path::new("t.toml"), |_| None)
                .unwrap();
        Upstream::new(&config.upstream)
    }

    fn target(up: &Upstream, uri: &str, path: &str) -> String {
        up.uri_for(&uri.parse().unwrap(), path).unwrap().to_string()
    }

    #[test]
    fn the_target_is_the_canonical_path_under_the_base_path_with_the_raw_query() {
        let plain = upstream("http://127.0.0.1:8000").unwrap();
        assert_eq!(target(&plain, "/a/b?x=1&y", "/a/b"), "/a/b?x=1&y");
        // The canonical path replaces what the client wrote; the query stays raw.
        assert_eq!(target(&plain, "/a/%62?q=%2F", "/a/b"), "/a/b?q=%2F");
        let based = upstream("http://127.0.0.1:8000/v1").unwrap();
        assert_eq!(target(&based, "/a?x=1", "/a"), "/v1/a?x=1");
        assert_eq!(target(&based, "/", "/"), "/v1/");
        assert_eq!(plain.host(), "127.0.0.1:8000");
    }

    #[test]
    fn an_https_upstream_needs_a_name_tls_can_verify() {
        assert!(upstream("https://api.example:8443").is_ok());
        assert!(upstream("https://[::1]:8443").is_ok());
        assert!(upstream("https://127.0.0.1:8443").is_ok());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let text = "[upstream]\nurl = \"https://api.example\"\nca_file = \"/nonexistent/ca.pem\"\n";
        let config =
            crate::config::Config::from_toml(text, std::path::Path::new("t.toml"), |_| None)
                .unwrap();
        let e = Upstream::new(&config.upstream)
            .err()
            .expect("a missing CA file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_client_body_failure_is_told_from_the_upstreams_own() {
        let upstream_side = SendError::Connect("refused".into());
        assert!(!from_client_body(&upstream_side));
        assert_eq!(
            error_chain(&std::io::Error::other("outer")),
            "outer",
            "a chain of one"
        );
    }
}
