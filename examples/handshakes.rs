//! New TLS connections per second, for the benchmark (`bench/run.sh`).
//!
//! `handshakes ADDR CONNS SECONDS full|resumed PATH [AUTHORIZATION]` keeps
//! CONNS clients busy for SECONDS against the TLS 1.3 listener at ADDR.
//! Each client loops: connect, handshake, one `GET PATH` with
//! `Connection: close`, read the answer to its end, close. `full` makes
//! every handshake a full one; `resumed` offers the session ticket the
//! server sent on the client's previous connection, as browsers and HTTP
//! client libraries do. It prints one `RESULT` line in wrk.lua's format,
//! plus `resumed=N`: how many handshakes the server actually resumed.
//!
//! wrk cannot measure resumption (it never offers a session), and
//! `openssl s_time` runs one connection at a time, hence this client.
//! It trusts whatever certificate answers: it measures servers the
//! benchmark started on 127.0.0.1 itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The most of an answer read: the benchmark asks for small bodies.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    bytes: u64,
    resumed: u64,
    errors: u64,
    non2xx: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, conns, seconds, mode, path, auth) = match args.as_slice() {
        [a, c, s, m, p] => (a, c, s, m, p, None),
        [a, c, s, m, p, auth] => (a, c, s, m, p, Some(auth.clone())),
        _ => {
            return Err(
                "usage: handshakes ADDR CONNS SECONDS full|resumed PATH [AUTHORIZATION]".into(),
            );
        }
    };
    let addr: SocketAddr = addr.parse()?;
    let conns: usize = conns.parse()?;
    let duration = Duration::from_secs(seconds.parse()?);
    let full = match mode.as_str() {
        "full" => true,
        "resumed" => false,
        other => return Err(format!("mode must be full or resumed, not {other}").into()),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // One configuration, so one ticket cache, per client: each stands for
    // a client process of its own. Sharing one would hand a ticket to
    // whichever client connects next and leave the others without.
    let connector = || -> Result<TlsConnector, rustls::Error> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAnything(provider.clone())))
            .with_no_client_auth();
        config.resumption = if full {
            Resumption::disabled()
        } else {
            // rustls' default: the last tickets per server, kept in memory.
            Resumption::default()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    };
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request: Arc<[u8]> =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
            .into_bytes()
            .into();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let tally = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + duration;
        let mut clients = Vec::with_capacity(conns);
        for _ in 0..conns {
            let request = request.clone();
            clients.push(tokio::spawn(client(addr, connector()?, request, deadline)));
        }
        let mut all = Tally::default();
        for c in clients {
            let t = c.await.unwrap_or_default();
            all.latencies_us.extend(t.latencies_us);
            all.bytes += t.bytes;
            all.resumed += t.resumed;
            all.errors += t.errors;
            all.non2xx += t.non2xx;
        }
        Ok::<_, rustls::Error>(all)
    })?;
    let elapsed = started.elapsed();
    let mut lat = tally.latencies_us;
    lat.sort_unstable();
    let pct = |p: usize| {
        lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "RESULT requests={} duration_us={} bytes={} p50_us={} p99_us={} errors={} non2xx={} resumed={}",
        lat.len(),
        elapsed.as_micros(),
        tally.bytes,
        pct(50),
        pct(99),
        tally.errors,
        tally.non2xx,
        tally.resumed,
    );
    Ok(())
}

async fn client(
    addr: SocketAddr,
    connector: TlsConnector,
    request: Arc<[u8]>,
    deadline: tokio::time::Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut answer = Vec::with_capacity(4096);
    while tokio::time::Instant::now() < deadline {
        let start = Instant::now();
        answer.clear();
        match tokio::time::timeout_at(
            deadline + Duration::from_secs(5),
            once(addr, &connector, &request, &mut answer),
        )
        .await
        {
            Ok(Ok(resumed)) => {
                tally
                    .latencies_us
                    .push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
                tally.bytes += answer.len() as u64;
                tally.resumed += u64::from(resumed);
                if !answer.starts_with(b"HTTP/1.1 2") {
                    tally.non2xx += 1;
                }
            }
            Ok(Err(_)) | Err(_) => tally.errors += 1,
        }
    }
    tally
}

/// One connection: returns whether its handshake was resumed.
async fn once(
    addr: SocketAddr,
    connector: &TlsConnector,
    request: &[u8],
    answer: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(request).await?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) if answer.len() + n <= MAX_ANSWER => answer.extend_from_slice(&buf[..n]),
            Ok(_) => return Err(std::io::Error::other("answer too long")),
            // A server that closes without close_notify after a complete
            // answer: the answer still counts.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(resumed)
}

/// Accepts any certificate; signatures are still checked, so the server
/// does the same work as for a verifying client.
#[derive(Debug)]
struct TrustAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
