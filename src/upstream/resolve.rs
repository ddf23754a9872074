//! Name resolution for the upstream connector: an in-process DNS client
//! that reads `/etc/resolv.conf` and `/etc/hosts` itself, so that a
//! statically linked binary in an image with no NSS modules can still reach
//! `http://api:8000`.
//!
//! glibc's `getaddrinfo` needs NSS modules loaded at run time; a static
//! binary in a `FROM scratch` image has none, so every service name fails.
//! hickory speaks DNS itself to the servers named in `resolv.conf` (Docker's
//! embedded DNS at 127.0.0.11 inside a container) and answers from the hosts
//! file first, which covers `localhost` and names added with `--add-host`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hyper_util::client::legacy::connect::dns::Name;
use tokio::sync::OnceCell;

/// The longest an answer is reused. Docker's DNS answers with a TTL of ten
/// minutes, but a restarted upstream container comes back on a new address;
/// a short cap costs one tiny query per new pooled connection at most.
const MAX_POSITIVE_TTL: Duration = Duration::from_secs(10);

/// The longest "no such name" is remembered, so an upstream that starts
/// after the gateway (compose starts both at once) is found at once.
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read the resolver configuration /etc/resolv.conf")]
    SystemConfig(#[source] NetError),
    #[error("cannot resolve {name:?}")]
    Lookup {
        name: String,
        #[source]
        source: NetError,
    },
    #[error("resolving {name:?} took longer than {timeout:?}")]
    Timeout { name: String, timeout: Duration },
    #[error("{name:?} resolved to no addresses")]
    NoAddresses { name: String },
}

/// A `Service<Name>` for hyper-util's `HttpConnector`. Clones share one
/// resolver and its cache.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    /// Built on the first name lookup, not in `new`: an upstream given as
    /// an IP address never needs `resolv.conf`, and a missing or broken one
    /// becomes a logged 502 naming the cause rather than a gateway that
    /// cannot start. A failed build is retried on the next lookup.
    resolver: OnceCell<TokioResolver>,
    /// Bounds one lookup, because hyper-util's connect timeout covers only
    /// the TCP connect and a silent DNS server would otherwise hold the
    /// request until the upstream response timeout.
    timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("timeout", &self.inner.timeout)
            .field("configured", &self.inner.resolver.initialized())
            .finish()
    }
}

impl Resolver {
    /// A resolver using the system's `/etc/resolv.conf` and `/etc/hosts`,
    /// read on first use, each lookup bounded by `timeout`.
    pub fn system(timeout: Duration) -> Self {
        Self::with_cell(OnceCell::new(), timeout)
    }

    /// A resolver around an already configured hickory resolver.
    pub fn with_resolver(resolver: TokioResolver, timeout: Duration) -> Self {
        Self::with_cell(OnceCell::new_with(Some(resolver)), timeout)
    }

    fn with_cell(resolver: OnceCell<TokioResolver>, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner { resolver, timeout }),
        }
    }

    /// The addresses of `host`, with port 0 (the connector sets the port).
    /// An IP address is returned as it is, without any lookup.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(ip) = literal_ip(host) {
            return Ok(vec![SocketAddr::new(ip, 0)]);
        }
        let timeout = self.inner.timeout;
        let lookup = async {
            let resolver = self
                .inner
                .resolver
                .get_or_try_init(|| async { system_resolver() })
                .await?;
            resolver
                .lookup_ip(host)
                .await
                .map_err(|source| ResolveError::Lookup {
                    name: host.to_owned(),
                    source,
                })
        };
        let found =
            tokio::time::timeout(timeout, lookup)
                .await
                .map_err(|_| ResolveError::Timeout {
                    name: host.to_owned(),
                    timeout,
                })??;
        let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
        if addrs.is_empty() {
            return Err(ResolveError::NoAddresses {
                name: host.to_owned(),
            });
        }
        Ok(addrs)
    }
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { resolver.resolve(name.as_str()).await.map(Vec::into_iter) })
    }
}

/// `host` as an IP address, brackets around IPv6 allowed.
fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

fn system_resolver() -> Result<TokioResolver, ResolveError> {
    let mut builder = TokioResolver::builder_tokio().map_err(ResolveError::SystemConfig)?;
    cap_ttls(builder.options_mut());
    builder.build().map_err(ResolveError::SystemConfig)
}

fn cap_ttls(options: &mut hickory_resolver::config::ResolverOpts) {
    options.positive_max_ttl = Some(MAX_POSITIVE_TTL);
    options.negative_max_ttl = Some(MAX_NEGATIVE_TTL);
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_resolver::Hosts;
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::proto::op::{Message, ResponseCode};
    use hickory_resolver::proto::rr::{RData, Record, RecordType, rdata::A};
    use tokio::net::UdpSocket;

    use super::*;

    const API_ADDR: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 2);

    /// A DNS server on 127.0.0.1 that knows one name, `api`, like Docker's
    /// embedded DNS knows a compose service, and counts the queries it gets.
    struct FakeDns {
        addr: SocketAddr,
        queries: Arc<AtomicUsize>,
    }

    impl FakeDns {
        async fn start() -> Self {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
            let addr = socket.local_addr().expect("udp addr");
            let queries = Arc::new(AtomicUsize::new(0));
            let counter = queries.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let answer = answer(&query);
                    if let Ok(bytes) = answer.to_vec() {
                        let _ = socket.send_to(&bytes, peer).await;
                    }
                }
            });
            Self { addr, queries }
        }

        fn queries(&self) -> usize {
            self.queries.load(Ordering::SeqCst)
        }

        /// A resolver that asks only this server and reads `hosts` as its
        /// hosts file.
        fn resolver(&self, hosts: &str, timeout: Duration) -> Resolver {
            let mut udp = ConnectionConfig::udp();
            udp.port = self.addr.port();
            let server = NameServerConfig::new(self.addr.ip(), true, vec![udp]);
            let config = ResolverConfig::from_name_servers(vec![server]);
            let mut builder =
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
            cap_ttls(builder.options_mut());
            builder.options_mut().attempts = 1;
            let mut resolver = builder.build().expect("build resolver");
            let mut table = Hosts::default();
            table
                .read_hosts_conf(hosts.as_bytes())
                .expect("parse hosts");
            resolver.set_hosts(Arc::new(table));
            Resolver::with_resolver(resolver, timeout)
        }
    }

    fn answer(query: &Message) -> Message {
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.queries = query.queries.clone();
        let mut known = false;
        for q in &query.queries {
            if q.name().to_ascii().trim_end_matches('.') == "api" {
                known = true;
                if q.query_type() == RecordType::A {
                    let record = Record::from_rdata(q.name().clone(), 600, RData::A(A(API_ADDR)));
                    response.answers.push(record);
                }
            }
        }
        if !known {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        response
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn literal_ips_are_returned_without_a_lookup() {
        let dns = FakeDns::start().await;
        let resolver = dns.resolver("", SECOND);
        for (host, ip) in [
            ("127.0.0.1", IpAddr::from([127, 0, 0, 1])),
            ("::1", IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1])),
            ("[::1]", IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1])),
        ] {
            let addrs = resolver.resolve(host).await.expect(host);
            assert_eq!(addrs, vec![SocketAddr::new(ip, 0)], "{host}");
        }
        assert_eq!(dns.queries(), 0);
    }

    #[tokio::test]
    async fn literal_ips_need_no_resolver_configuration() {
        // The system resolver is never built for an address, so this holds
        // even where /etc/resolv.conf is missing.
        let resolver = Resolver::system(SECOND);
        let addrs = resolver.resolve("192.0.2.1").await.expect("literal");
        assert_eq!(addrs, vec![SocketAddr::from(([192, 0, 2, 1], 0))]);
        assert!(!resolver.inner.resolver.initialized());
    }

    #[tokio::test]
    async fn hosts_file_answers_before_dns() {
        let dns = FakeDns::start().await;
        let resolver = dns.resolver("127.0.0.1 localhost\n10.9.9.9 api\n", SECOND);
        // hickory answers `localhost` itself (RFC 6761), with ::1 as well.
        let addrs = resolver.resolve("localhost").await.expect("localhost");
        assert!(
            addrs.contains(&SocketAddr::from(([127, 0, 0, 1], 0))),
            "{addrs:?}"
        );
        // The DNS server knows `api` as another address; the hosts file wins.
        let addrs = resolver.resolve("api").await.expect("api");
        assert_eq!(addrs, vec![SocketAddr::from(([10, 9, 9, 9], 0))]);
    }

    #[tokio::test]
    async fn service_names_are_asked_of_the_dns_server() {
        let dns = FakeDns::start().await;
        let resolver = dns.resolver("", SECOND);
        let addrs = resolver.resolve("api").await.expect("api");
        assert_eq!(addrs, vec![SocketAddr::new(API_ADDR.into(), 0)]);
        assert!(dns.queries() >= 1);
    }

    #[tokio::test]
    async fn unknown_names_are_an_error_naming_the_host() {
        let dns = FakeDns::start().await;
        let resolver = dns.resolver("", SECOND);
        let err = resolver.resolve("nowhere").await.expect_err("unknown");
        assert!(matches!(err, ResolveError::Lookup { .. }), "{err:?}");
        assert!(err.to_string().contains("nowhere"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_dns_server_is_bounded_by_the_timeout() {
        // Bound but never read: queries vanish without an ICMP error.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let dns = FakeDns {
            addr: silent.local_addr().expect("addr"),
            queries: Arc::new(AtomicUsize::new(0)),
        };
        let resolver = dns.resolver("", Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = resolver.resolve("api").await.expect_err("silent");
        assert!(matches!(err, ResolveError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn the_connector_reaches_a_server_by_a_hosts_file_name() {
        use tower_service::Service;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let dns = FakeDns::start().await;
        let resolver = dns.resolver("127.0.0.1 upstream.test\n", SECOND);
        let mut connector =
            hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(resolver);
        let uri: http::Uri = format!("http://upstream.test:{port}/")
            .parse()
            .expect("uri");
        let (connected, accepted) = tokio::join!(connector.call(uri), listener.accept());
        connected.expect("connect");
        accepted.expect("accept");
    }
}
