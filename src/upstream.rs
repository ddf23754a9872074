//! The upstream: one pooled keep-alive client, and the send that turns its
//! failures into 502 or 504. Bodies pass through untouched in both
//! directions; nothing here buffers.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use http_body_util::Either;
use hyper::body::{Frame, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::headers;
use crate::resolve::Resolver;
use crate::response::{Body, Rejection};

/// A client's request body on its way upstream: data streams through
/// untouched, trailers are dropped. Trailers could carry a second copy of
/// the identity headers past the checks that cleaned the header section.
pub struct Outbound(Incoming);

impl hyper::body::Body for Outbound {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            // Trailers are the last frame: ending here loses nothing else.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => Poll::Ready(None),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.size_hint()
    }
}

type Connector = HttpsConnector<HttpConnector<Resolver>>;

pub struct Upstream {
    client: Client<Connector, Outbound>,
    config: UpstreamConfig,
}

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
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        // Resolved in-process: getaddrinfo finds no service names in a static binary.
        let resolver = Resolver::system(config.connect_timeout);
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));
        // The TLS layer below decides per URI scheme.
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(client_tls(config)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            client,
            config: config.clone(),
        })
    }

    /// The upstream URI for a canonical `path` and the client's raw `query`.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, Rejection> {
        let mut pq = String::with_capacity(
            self.config.base_path.len() + path.len() + 1 + query.map_or(0, str::len),
        );
        pq.push_str(&self.config.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::try_from(pq)
            .map_err(|_| Rejection::BadRequest("The request target is not valid."))?;
        Uri::builder()
            .scheme(self.config.scheme.clone())
            .authority(self.config.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| Rejection::BadRequest("The request target is not valid."))
    }

    /// Sends a prepared request and streams the answer back.
    pub async fn send(&self, mut req: Request<Incoming>) -> Result<Response<Body>, Rejection> {
        // The pool speaks HTTP/1.1 upstream whatever the client spoke to us.
        *req.version_mut() = Version::HTTP_11;
        let req = req.map(Outbound);
        let response = match tokio::time::timeout(self.config.timeout, self.client.request(req))
            .await
        {
            Err(_) => {
                tracing::warn!(timeout = ?self.config.timeout, "upstream sent no response headers in time");
                return Err(Rejection::UpstreamTimeout);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %error_chain(&e), connect = e.is_connect(), "upstream request failed");
                return Err(Rejection::UpstreamUnreachable);
            }
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Either::Right(body)))
    }
}

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
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
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
