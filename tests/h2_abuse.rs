//! HTTP/2 abuse against the real gateway over h2c prior knowledge: rapid
//! reset (CVE-2023-44487), streams past the concurrency limit, and header
//! blocks far over `max_header_size` (CONTINUATION floods). Each attack must
//! be cut off by the limits in `src/server/`, must not reach the upstream,
//! and must leave the gateway serving the next client.
//!
//! The `h2` crate's client is used where it can express the attack; where it
//! would behave (it honours the server's SETTINGS and always ends a header
//! block), frames are written by hand.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use h2::Reason;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Generous bound for anything the server should do at once.
const PATIENCE: Duration = Duration::from_secs(15);

type Recorded = Arc<Mutex<Vec<String>>>;

/// A gateway in front of a recording echo upstream, a user and a token.
async fn setup() -> (EchoUpstream, Recorded, Gateway, String) {
    let (up, seen) = recording_echo_upstream().await;
    // A long upstream timeout: streams held open by a test must not be
    // answered 504 while it counts them.
    let gw = Gateway::start_edited(&format!("http://{}", up.addr), "", |text| {
        assert!(text.contains("\ntimeout = \"2s\""), "{text}");
        text.replace("\ntimeout = \"2s\"", "\ntimeout = \"60s\"")
    })
    .await;
    gw.add_user("alice", "correct horse", &[]);
    let token = gw.login("alice", "correct horse").await;
    (up, seen, gw, token)
}

/// How many requests the upstream saw whose target starts with `prefix`.
fn upstream_count(seen: &Recorded, prefix: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|line| {
            line.split_once(' ')
                .is_some_and(|(_, uri)| uri.starts_with(prefix))
        })
        .count()
}

/// An h2c prior-knowledge connection through the `h2` crate's client.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(connection))
}

fn h2_request(addr: SocketAddr, path: &str, token: &str) -> Request<()> {
    Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Token {token}"))
        .body(())
        .unwrap()
}

/// One GET on a fresh h2 connection: the status, or the h2 error.
async fn h2_get(addr: SocketAddr, path: &str, token: &str) -> Result<StatusCode, h2::Error> {
    let (client, conn) = h2_connect(addr).await;
    let mut client = client.ready().await?;
    let (response, _) = client.send_request(h2_request(addr, path, token), true)?;
    let response = timeout(PATIENCE, response)
        .await
        .expect("no h2 response in time")?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(chunk) = timeout(PATIENCE, body.data()).await.expect("body stalled") {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    drop(client);
    conn.abort();
    Ok(status)
}

/// The gateway still serves a new client, over h2 and over HTTP/1.1.
async fn assert_still_serving(gw: &Gateway, token: &str, path: &str) {
    let h2 = h2_get(gw.addr, path, token).await;
    assert_eq!(
        h2.as_ref().ok(),
        Some(&StatusCode::OK),
        "a fresh h2 client was not served: {h2:?}"
    );
    let h1 = get(gw.addr, path, Some(token)).await;
    assert_eq!(h1.status, 200, "a fresh HTTP/1.1 client was not served");
}

/// Hand-written HTTP/2 frames (RFC 9113 §4, §6) and HPACK literals
/// (RFC 7541 §6.2.2), for what the `h2` client will not send.
mod wire {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;

    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub const REFUSED_STREAM: u32 = 0x7;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// The largest frame payload a peer must accept without SETTINGS.
    pub const MAX_FRAME: usize = 16_384;

    pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap();
        assert!(len < 1 << 24, "frame too long");
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// A header field as an HPACK literal without indexing, new name, no Huffman.
    pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
        out.push(0x00);
        string(out, name.as_bytes());
        string(out, value);
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        // 7-bit prefix integer, Huffman bit clear.
        let mut n = s.len();
        if n < 0x7f {
            out.push(n as u8);
        } else {
            out.push(0x7f);
            n -= 0x7f;
            while n >= 0x80 {
                out.push((n & 0x7f) as u8 | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        out.extend_from_slice(s);
    }

    /// The header block of a request carrying `token`.
    pub fn request(method: &str, authority: &str, path: &str, token: &str) -> Vec<u8> {
        let mut block = Vec::new();
        literal(&mut block, ":method", method.as_bytes());
        literal(&mut block, ":scheme", b"http");
        literal(&mut block, ":authority", authority.as_bytes());
        literal(&mut block, ":path", path.as_bytes());
        literal(
            &mut block,
            "authorization",
            format!("Token {token}").as_bytes(),
        );
        block
    }

    /// A frame as read from the server.
    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The error code of a RST_STREAM or GOAWAY.
        pub fn error_code(&self) -> u32 {
            let at = if self.kind == GOAWAY { 4 } else { 0 };
            u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
        }

        /// The debug data of a GOAWAY.
        pub fn debug_data(&self) -> String {
            String::from_utf8_lossy(self.payload.get(8..).unwrap_or_default()).into_owned()
        }
    }
}

/// A raw h2c connection: the preface and an empty SETTINGS are sent on open;
/// the server's SETTINGS are acknowledged as they are read.
struct RawConn {
    read: tokio::net::tcp::OwnedReadHalf,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl RawConn {
    async fn open(addr: SocketAddr) -> Self {
        Self::over(TcpStream::connect(addr).await.unwrap()).await
    }

    async fn over(tcp: TcpStream) -> Self {
        let (read, write) = tcp.into_split();
        let mut conn = Self { read, write };
        let mut hello = wire::PREFACE.to_vec();
        wire::frame(&mut hello, wire::SETTINGS, 0, 0, &[]);
        conn.send(&hello).await;
        conn
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    /// The next frame, or None once the server has closed the connection.
    async fn next(&mut self) -> Option<wire::Frame> {
        let frame = timeout(PATIENCE, read_frame(&mut self.read))
            .await
            .expect("the server went silent")?;
        if frame.kind == wire::SETTINGS && frame.flags & wire::ACK == 0 {
            let mut ack = Vec::new();
            wire::frame(&mut ack, wire::SETTINGS, wire::ACK, 0, &[]);
            // The server may already be gone; the caller learns it on read.
            let _ = self.write.write_all(&ack).await;
        }
        Some(frame)
    }
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Option<wire::Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await.ok()?;
    Some(wire::Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
        payload,
    })
}

/// Opens stream `id` (a POST to `path` whose body never ends, so it stays
/// open) and returns the frame.
fn held_stream(id: u32, authority: &str, path: &str, token: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let block = wire::request("POST", authority, path, token);
    wire::frame(&mut out, wire::HEADERS, wire::END_HEADERS, id, &block);
    out
}

fn ping(opaque: &[u8; 8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::frame(&mut out, wire::PING, 0, 0, opaque);
    out
}

/// The client stream id of the `n`th stream (0-based).
fn stream_id(n: u32) -> u32 {
    2 * n + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_is_cut_off_before_it_is_served() {
    // CVE-2023-44487: open a stream with a valid token and cancel it at once,
    // as fast as the client can. A server that only bounds *concurrent*
    // streams serves all of them (each cancelled stream frees its slot) and
    // forwards many; the gateway must end the connection.
    const OPENED: usize = 50_000;
    let (_up, seen, gw, token) = setup().await;
    let (mut client, conn) = h2_connect(gw.addr).await;

    let mut opened = 0;
    let mut client_error = None;
    for i in 0..OPENED {
        // Waits only while the client has 256 streams not yet on the wire.
        match timeout(PATIENCE, std::future::poll_fn(|cx| client.poll_ready(cx))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                client_error = Some(e);
                break;
            }
            Err(_) => panic!("the client was never ready after {opened} streams"),
        }
        let request = h2_request(gw.addr, &format!("/rapid/{i}"), &token);
        match client.send_request(request, false) {
            Ok((response, mut stream)) => {
                stream.send_reset(Reason::CANCEL);
                drop(response);
                opened += 1;
            }
            Err(e) => {
                client_error = Some(e);
                break;
            }
        }
    }
    drop(client);
    let ended = timeout(PATIENCE, conn)
        .await
        .expect("the server never ended the flooding connection")
        .unwrap();
    let forwarded = upstream_count(&seen, "/rapid/");
    eprintln!(
        "rapid reset: {opened} of {OPENED} streams opened and reset before the client was stopped \
         ({client_error:?}); connection ended with {ended:?}; the upstream saw {forwarded}"
    );

    // A client that drops its handles after a clean run ends with Ok: the
    // server must have ended it, by GOAWAY ENHANCE_YOUR_CALM (or by closing
    // the socket after it, which the client may hit on write first).
    let error = ended.expect_err("the flooding connection was never cut off");
    let cut_off = (error.is_go_away()
        && error.is_remote()
        && error.reason() == Some(Reason::ENHANCE_YOUR_CALM))
        || error.is_io();
    assert!(cut_off, "not ended by the server: {error:?}");
    assert!(
        opened < OPENED,
        "the client opened and reset all {OPENED} streams before the server reacted"
    );
    assert!(
        forwarded <= opened / 10,
        "the upstream saw {forwarded} of {opened} reset requests"
    );

    assert_still_serving(&gw, &token, "/after-rapid-reset").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_burst_is_cut_off_by_goaway_enhance_your_calm() {
    // The attack as written by hand: HEADERS and RST_STREAM pairs, a few
    // thousand in one write, so no scheduling decides the outcome. Past 64
    // reset streams waiting to be accepted, the server must send GOAWAY
    // ENHANCE_YOUR_CALM, process nothing after it and close.
    const PAIRS: u32 = 5_000;
    let (_up, seen, gw, token) = setup().await;
    let authority = gw.addr.to_string();
    let mut conn = RawConn::open(gw.addr).await;
    let mut burst = Vec::new();
    for n in 0..PAIRS {
        let id = stream_id(n);
        let block = wire::request("GET", &authority, &format!("/burst/{n}"), &token);
        wire::frame(
            &mut burst,
            wire::HEADERS,
            wire::END_HEADERS | wire::END_STREAM,
            id,
            &block,
        );
        wire::frame(&mut burst, wire::RST_STREAM, 0, id, &8u32.to_be_bytes());
    }
    // A PING last: its ACK would mean the server got through every pair.
    burst.extend(ping(b"all-read"));
    // The server may close mid-write; that is the point.
    let _ = conn.write.write_all(&burst).await;

    // Read to the end: after its GOAWAY the server must close.
    let mut goaway = None;
    while let Some(frame) = conn.next().await {
        match frame.kind {
            wire::GOAWAY => goaway = Some(frame),
            wire::PING if frame.flags & wire::ACK != 0 => {
                panic!("no GOAWAY: the server went through all {PAIRS} HEADERS + RST_STREAM pairs")
            }
            _ => {}
        }
    }
    let goaway = goaway.expect("closed without a GOAWAY");
    let last = u32::from_be_bytes(goaway.payload[0..4].try_into().unwrap());
    let processed = last.div_ceil(2);
    let forwarded = upstream_count(&seen, "/burst/");
    eprintln!(
        "burst: GOAWAY code {} ({:?}) after stream {last} ({processed} of {PAIRS} pairs); \
         the upstream saw {forwarded}",
        goaway.error_code(),
        goaway.debug_data()
    );
    assert_eq!(goaway.error_code(), wire::ENHANCE_YOUR_CALM, "{goaway:?}");
    assert!(
        processed < PAIRS / 10,
        "the server processed {processed} of {PAIRS} reset streams before its GOAWAY"
    );
    assert!(
        forwarded <= 64,
        "the upstream saw {forwarded} of {PAIRS} cancelled requests"
    );

    assert_still_serving(&gw, &token, "/after-burst").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_and_a_refusal_flood_is_cut_off() {
    // The h2 client honours the server's SETTINGS and never exceeds its
    // limit (`max_concurrent_streams`, 100 by default); a hostile one
    // sends them before reading the SETTINGS.
    const LIMIT: u32 = 100;
    const OPENED: u32 = 300;
    let (_up, seen, gw, token) = setup().await;
    let authority = gw.addr.to_string();
    let mut conn = RawConn::open(gw.addr).await;

    // 300 streams in one write, each a POST whose body never ends, then a
    // PING: its ACK comes after every answer to the frames before it.
    let mut burst = Vec::new();
    for n in 0..OPENED {
        burst.extend(held_stream(
            stream_id(n),
            &authority,
            &format!("/hold/{n}"),
            &token,
        ));
    }
    burst.extend(ping(b"counted!"));
    conn.send(&burst).await;
    let mut refused = Vec::new();
    let mut other = Vec::new();
    loop {
        let frame = conn.next().await.expect("closed before the PING ACK");
        match frame.kind {
            wire::PING if frame.flags & wire::ACK != 0 => break,
            wire::RST_STREAM => refused.push((frame.stream, frame.error_code())),
            wire::HEADERS | wire::DATA | wire::GOAWAY => other.push(frame),
            _ => {}
        }
    }
    let expected: Vec<(u32, u32)> = (LIMIT..OPENED)
        .map(|n| (stream_id(n), wire::REFUSED_STREAM))
        .collect();
    eprintln!(
        "concurrency: {} of {OPENED} streams refused, first {:?}",
        refused.len(),
        refused.first()
    );
    assert_eq!(
        refused, expected,
        "not exactly the streams past {LIMIT} were refused"
    );
    assert!(other.is_empty(), "held streams were answered: {other:?}");

    // The connection itself is still good: ending the first stream's body
    // gets it forwarded and answered 200.
    let mut end = Vec::new();
    wire::frame(&mut end, wire::DATA, wire::END_STREAM, stream_id(0), &[]);
    conn.send(&end).await;
    let answer = loop {
        let frame = conn.next().await.expect("closed before answering stream 1");
        if frame.stream == stream_id(0) && frame.kind == wire::HEADERS {
            break frame;
        }
        assert_ne!(frame.kind, wire::GOAWAY, "{frame:?}");
    };
    // HPACK static index 8 is `:status: 200`.
    assert_eq!(answer.payload.first(), Some(&0x88), "not a 200: {answer:?}");

    // Other clients are served while 99 streams stay held.
    assert_still_serving(&gw, &token, "/while-held").await;

    // Hammering past the limit: every refusal counts against 256 local
    // resets per connection (these 200 included), then the server sends
    // GOAWAY and closes.
    let mut flood = Vec::new();
    for n in OPENED..OPENED + 600 {
        flood.extend(held_stream(
            stream_id(n),
            &authority,
            &format!("/hold/{n}"),
            &token,
        ));
    }
    flood.extend(ping(b"all-read"));
    let _ = conn.write.write_all(&flood).await;
    let mut goaway = None;
    while let Some(frame) = conn.next().await {
        match frame.kind {
            wire::RST_STREAM => refused.push((frame.stream, frame.error_code())),
            wire::GOAWAY => goaway = Some(frame),
            wire::PING if frame.flags & wire::ACK != 0 => panic!(
                "no GOAWAY: {} streams refused and the connection still open",
                refused.len()
            ),
            _ => {}
        }
    }
    let goaway = goaway.expect("closed without a GOAWAY");
    eprintln!(
        "refusal flood: GOAWAY code {} ({:?}) after {} refusals in all",
        goaway.error_code(),
        goaway.debug_data(),
        refused.len()
    );
    assert_eq!(goaway.error_code(), wire::ENHANCE_YOUR_CALM, "{goaway:?}");
    assert!(
        refused.len() <= 256,
        "{} refusals before the GOAWAY",
        refused.len()
    );

    // Nothing refused ever reached the upstream.
    let refused_ids: std::collections::HashSet<u32> = refused.iter().map(|r| r.0).collect();
    let leaked: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|line| {
            line.split_once("/hold/")
                .and_then(|(_, n)| n.parse::<u32>().ok())
                .is_some_and(|n| refused_ids.contains(&stream_id(n)))
        })
        .cloned()
        .collect();
    assert!(
        leaked.is_empty(),
        "refused streams reached the upstream: {leaked:?}"
    );

    assert_still_serving(&gw, &token, "/after-refusals").await;
    gw.stop().await;
}

/// Sends one request with `extra` header bytes over the `h2` client and
/// returns its status, or the error that ended the stream or connection.
async fn h2_with_big_header(
    addr: SocketAddr,
    token: &str,
    path: &str,
    extra: usize,
) -> Result<StatusCode, h2::Error> {
    let (client, conn) = h2_connect(addr).await;
    let mut client = client.ready().await?;
    let mut request = h2_request(addr, path, token);
    // Headers of 4 KiB each, as many as it takes.
    let value = http::HeaderValue::from_str(&"v".repeat(4096)).unwrap();
    for i in 0..extra.div_ceil(4096) {
        let name = http::HeaderName::try_from(format!("x-big-{i}")).unwrap();
        request.headers_mut().insert(name, value.clone());
    }
    let (response, _) = client.send_request(request, true)?;
    let status = timeout(PATIENCE, response)
        .await
        .expect("no answer to an oversized header list")
        .map(|r| r.status());
    // A stream-level refusal leaves the connection usable.
    if status.is_ok() {
        let (again, _) = client.send_request(h2_request(addr, "/same-conn", token), true)?;
        let again = timeout(PATIENCE, again).await.expect("stalled")?;
        assert_eq!(
            again.status(),
            StatusCode::OK,
            "the connection was left broken"
        );
    }
    drop(client);
    conn.abort();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_lists_are_refused_and_never_forwarded() {
    // max_header_size is 64 KiB: a little over gets 431 on that stream,
    // far over (1 MiB, 64 CONTINUATION frames) ends the connection.
    let (_up, seen, gw, token) = setup().await;

    let over = h2_with_big_header(gw.addr, &token, "/big/a-little", 72 * 1024).await;
    eprintln!("72 KiB of headers: {over:?}");
    assert_eq!(
        over.as_ref().ok(),
        Some(&StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        "{over:?}"
    );

    let far = h2_with_big_header(gw.addr, &token, "/big/far-over", 1024 * 1024).await;
    eprintln!("1 MiB of headers: {far:?}");
    match &far {
        Ok(status) => assert_eq!(*status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(
            e.reason() == Some(Reason::ENHANCE_YOUR_CALM) || e.is_io(),
            "{e:?}"
        ),
    }
    assert_eq!(
        upstream_count(&seen, "/big/"),
        0,
        "an oversized header list was forwarded"
    );
    assert_still_serving(&gw, &token, "/after-big-headers").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_continuation_frames_are_cut_off() {
    // CONTINUATION flood (2024): a HEADERS frame without END_HEADERS, then
    // CONTINUATION frames that never end the block, full or empty. A server
    // without a bound reads (and buffers or decodes) all of it; the gateway
    // must send GOAWAY and close long before the 16 MiB we are ready to send
    // (h2 allows about 1.25 × max_header_size of CONTINUATION frames).
    const BUDGET: usize = 16 * 1024 * 1024;
    let (_up, seen, gw, token) = setup().await;
    let authority = gw.addr.to_string();

    for full in [true, false] {
        // A small send buffer (no autotuning), so what we manage to write
        // is close to what the server read: socket buffers hold little.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(64 * 1024).unwrap();
        let mut conn = RawConn::over(socket.connect(gw.addr).await.unwrap()).await;
        let mut start = Vec::new();
        let block = wire::request("GET", &authority, "/continuation", &token);
        wire::frame(&mut start, wire::HEADERS, wire::END_STREAM, 1, &block);
        conn.send(&start).await;

        let mut payload = Vec::new();
        while full && payload.len() + 120 <= wire::MAX_FRAME {
            wire::literal(&mut payload, "x-flood", &[b'f'; 100]);
        }
        let mut chunk = Vec::new();
        while chunk.len() < 64 * 1024 {
            wire::frame(&mut chunk, wire::CONTINUATION, 0, 1, &payload);
        }
        let mut write = conn.write;
        let writer = tokio::spawn(async move {
            let mut sent = 0;
            while sent < BUDGET {
                if write.write_all(&chunk).await.is_err() {
                    return (sent, true);
                }
                sent += chunk.len();
            }
            (sent, false)
        });

        let (sent, cut) = timeout(PATIENCE, writer)
            .await
            .expect("the server stopped reading without closing")
            .unwrap();
        assert!(
            cut,
            "the server read {} MiB of one header block and kept the connection",
            BUDGET >> 20
        );
        let mut goaway = None;
        while let Some(frame) = timeout(PATIENCE, read_frame(&mut conn.read))
            .await
            .expect("the server went silent")
        {
            if frame.kind == wire::GOAWAY {
                goaway = Some(frame);
            }
        }
        let goaway = goaway.expect("closed without a GOAWAY");
        eprintln!(
            "continuation flood ({} frames): GOAWAY code {} ({:?}); {} KiB written before the \
             connection was closed",
            if full { "full" } else { "empty" },
            goaway.error_code(),
            goaway.debug_data(),
            sent / 1024
        );
        assert_eq!(goaway.error_code(), wire::ENHANCE_YOUR_CALM, "{goaway:?}");
    }
    assert_eq!(upstream_count(&seen, "/continuation"), 0);
    assert_still_serving(&gw, &token, "/after-continuation").await;
    gw.stop().await;
}

/// A gateway as in `setup`, with `lines` added to its `[server]` section.
async fn setup_with(lines: &str) -> (EchoUpstream, Recorded, Gateway, String) {
    let (up, seen) = recording_echo_upstream().await;
    let gw = Gateway::start_edited(&format!("http://{}", up.addr), "", |text| {
        text.replace("\ntimeout = \"2s\"", "\ntimeout = \"60s\"")
            .replacen("[server]\n", &format!("[server]\n{lines}"), 1)
    })
    .await;
    gw.add_user("alice", "correct horse", &[]);
    let token = gw.login("alice", "correct horse").await;
    (up, seen, gw, token)
}

/// The value of `id` in the first SETTINGS frame the server sends.
async fn advertised(conn: &mut RawConn, id: u16) -> Option<u32> {
    loop {
        let frame = conn.next().await.expect("closed before its SETTINGS");
        if frame.kind == wire::SETTINGS && frame.flags & wire::ACK == 0 {
            return frame.payload.chunks_exact(6).find_map(|entry| {
                (u16::from_be_bytes([entry[0], entry[1]]) == id)
                    .then(|| u32::from_be_bytes(entry[2..6].try_into().unwrap()))
            });
        }
    }
}

/// SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2).
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_concurrent_streams_are_capped() {
    // Each stream may hold an upstream connection: 256 per connection let
    // four anonymous clients open over a thousand. The default is 100,
    // and the configured cap is what the server advertises and enforces.
    let (_up, _seen, gw, _token) = setup().await;
    let mut conn = RawConn::open(gw.addr).await;
    let default = advertised(&mut conn, MAX_CONCURRENT_STREAMS).await;
    assert_eq!(default, Some(100), "the default cap");
    gw.stop().await;

    const CAP: u32 = 8;
    let (_up, seen, gw, token) = setup_with(&format!("max_concurrent_streams = {CAP}\n")).await;
    let authority = gw.addr.to_string();
    let mut conn = RawConn::open(gw.addr).await;
    assert_eq!(
        advertised(&mut conn, MAX_CONCURRENT_STREAMS).await,
        Some(CAP)
    );
    // Two streams past the cap, sent before the client could have read
    // the SETTINGS, then a PING whose ACK follows every answer to them.
    let mut burst = Vec::new();
    for n in 0..CAP + 2 {
        burst.extend(held_stream(
            stream_id(n),
            &authority,
            &format!("/capped/{n}"),
            &token,
        ));
    }
    burst.extend(ping(b"counted!"));
    conn.send(&burst).await;
    let mut refused = Vec::new();
    loop {
        let frame = conn.next().await.expect("closed before the PING ACK");
        match frame.kind {
            wire::PING if frame.flags & wire::ACK != 0 => break,
            wire::RST_STREAM => refused.push((frame.stream, frame.error_code())),
            wire::GOAWAY => panic!("the connection was ended: {frame:?}"),
            _ => {}
        }
    }
    assert_eq!(
        refused,
        [
            (stream_id(CAP), wire::REFUSED_STREAM),
            (stream_id(CAP + 1), wire::REFUSED_STREAM)
        ],
        "not exactly the streams past {CAP} were refused"
    );
    let refused_paths = [format!("/capped/{CAP}"), format!("/capped/{}", CAP + 1)];
    assert!(
        refused_paths
            .iter()
            .all(|path| upstream_count(&seen, path) == 0),
        "a refused stream reached the upstream"
    );
    assert_still_serving(&gw, &token, "/while-capped").await;
    gw.stop().await;
}

/// Reads until the server closes the connection; the GOAWAY frames it
/// sent on the way. `ack_pings`: answer the server's PINGs (the graceful
/// GOAWAY waits for one), as a well-behaved client does.
async fn until_closed(conn: &mut RawConn, ack_pings: bool) -> Vec<wire::Frame> {
    let mut goaways = Vec::new();
    while let Some(frame) = conn.next().await {
        match frame.kind {
            wire::GOAWAY => goaways.push(frame),
            wire::PING if ack_pings && frame.flags & wire::ACK == 0 => {
                let mut ack = Vec::new();
                wire::frame(&mut ack, wire::PING, wire::ACK, 0, &frame.payload);
                let _ = conn.write.write_all(&ack).await;
            }
            _ => {}
        }
    }
    goaways
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_get_goaway() {
    // An HTTP/2 connection without streams held its max_connections slot
    // for as long as the client liked. With no stream open for the header
    // read timeout, it gets a graceful GOAWAY and is closed, whether or not
    // the client answers the GOAWAY's PING; one with a stream open stays.
    let (_up, seen, gw, token) = setup_with("header_read_timeout = \"1s\"\n").await;
    let authority = gw.addr.to_string();

    let mut busy = RawConn::open(gw.addr).await;
    busy.send(&held_stream(stream_id(0), &authority, "/held", &token))
        .await;
    let mut idle = RawConn::open(gw.addr).await;
    let goaways = until_closed(&mut idle, false).await;
    assert!(
        goaways.iter().any(|g| g.error_code() == 0),
        "closed without a GOAWAY NO_ERROR: {goaways:?}"
    );
    // A second idle timeout, for a well-behaved client: the held stream
    // has now been open for at least two.
    let mut polite = RawConn::open(gw.addr).await;
    let goaways = until_closed(&mut polite, true).await;
    assert!(
        goaways.iter().any(|g| g.error_code() == 0),
        "closed without a GOAWAY NO_ERROR: {goaways:?}"
    );
    assert_eq!(
        upstream_count(&seen, "/held"),
        1,
        "the stream never got out"
    );

    // The busy connection is still open and was not told to go away: its
    // stream is answered once its body ends.
    let mut end = Vec::new();
    wire::frame(&mut end, wire::DATA, wire::END_STREAM, stream_id(0), &[]);
    busy.send(&end).await;
    let answer = loop {
        let frame = busy.next().await.expect("the busy connection was closed");
        assert_ne!(frame.kind, wire::GOAWAY, "{frame:?}");
        if frame.stream == stream_id(0) && frame.kind == wire::HEADERS {
            break frame;
        }
    };
    // HPACK static index 8 is `:status: 200`.
    assert_eq!(answer.payload.first(), Some(&0x88), "not a 200: {answer:?}");
    // Idle once the answer is out, it goes the same way.
    let goaways = until_closed(&mut busy, true).await;
    assert!(
        goaways.iter().any(|g| g.error_code() == 0),
        "closed without a GOAWAY NO_ERROR: {goaways:?}"
    );
    assert_still_serving(&gw, &token, "/after-idle").await;
    gw.stop().await;
}
