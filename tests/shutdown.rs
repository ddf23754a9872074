//! Graceful shutdown: stop accepting, let requests in flight finish (up to
//! `server.shutdown_timeout`), flush the store, return Ok.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::binary::{Env, Server};
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokengate::store::Store;
use tokengate::store::token::Token;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A gateway with user "sam" and a token, whose shutdown the test drives.
struct Running {
    gw: Gateway,
    token: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    recorded: Arc<Mutex<Vec<String>>>,
    _up: EchoUpstream,
}

async fn running(upstream_timeout: &str, shutdown_timeout: &str) -> Running {
    let (up, recorded) = recording_echo_upstream().await;
    let mut gw = Gateway::start_edited(&format!("http://{}", up.addr), "", |t| {
        t.replacen(
            "\ntimeout = \"2s\"",
            &format!("\ntimeout = \"{upstream_timeout}\""),
            1,
        )
        .replacen(
            "shutdown_timeout = \"5s\"",
            &format!("shutdown_timeout = \"{shutdown_timeout}\""),
            1,
        )
    })
    .await;
    assert_eq!(gw.config.upstream.timeout.as_secs_f64(), {
        let d = humantime::parse_duration(upstream_timeout).unwrap();
        d.as_secs_f64()
    });
    gw.add_user("sam", "pw", &["ops"]);
    let token = gw.login("sam", "pw").await;
    let stop = gw.stop_signal().unwrap();
    let task = gw.take_task().unwrap();
    Running {
        gw,
        token,
        stop,
        task,
        recorded,
        _up: up,
    }
}

/// Waits until the upstream has received a request for `path`.
async fn upstream_has(recorded: &Mutex<Vec<String>>, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !recorded.lock().unwrap().iter().any(|r| r.contains(path)) {
        assert!(
            Instant::now() < deadline,
            "{path} never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until a new TCP connection to `addr` is refused.
async fn refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => return,
            Ok(s) => drop(s),
        }
        assert!(
            Instant::now() < deadline,
            "new connections were still accepted after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_request_in_flight_finishes_while_new_connections_are_refused() {
    let r = running("10s", "5s").await;
    let addr = r.gw.addr;
    let token = r.token.clone();
    let in_flight = tokio::spawn(async move { get(addr, "/work/delay/1200", Some(&token)).await });
    upstream_has(&r.recorded, "/work/delay/1200").await;

    let signalled = Instant::now();
    r.stop.send(()).unwrap();
    refused(addr).await;
    assert!(
        !in_flight.is_finished(),
        "the request in flight ended before the listener closed"
    );
    assert!(
        !r.task.is_finished(),
        "the gateway returned with a request still in flight"
    );

    let reply = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the request in flight never finished")
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.seen();
    assert_eq!(seen.uri, "/work/delay/1200");
    assert_eq!(seen.header("x-auth-user"), Some("sam"));

    // `run` returns Ok (the fixture's task panics on Err) once it is done.
    tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("the gateway did not stop after draining")
        .expect("the gateway's run future failed");
    assert!(signalled.elapsed() < Duration::from_secs(4));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_request_body_still_streaming_at_shutdown_arrives_whole() {
    let r = running("10s", "5s").await;
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let req = Request::post(r.gw.url("/upload"))
        .header("authorization", format!("Token {}", r.token))
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let in_flight = tokio::spawn(async move {
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    let chunk = Bytes::from(vec![b'z'; 32 * 1024]);
    tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    upstream_has(&r.recorded, "/upload").await;

    r.stop.send(()).unwrap();
    refused(r.gw.addr).await;
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    }
    drop(tx);
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the streaming request never finished")
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen: Seen = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen.body_len, 10 * 32 * 1024);
    tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("the gateway did not stop")
        .expect("the gateway's run future failed");
}

#[tokio::test]
async fn draining_is_bounded_by_shutdown_timeout() {
    let r = running("60s", "300ms").await;
    let addr = r.gw.addr;
    let token = r.token.clone();
    // `/slow` answers after 30s: far past the drain deadline.
    let _stuck = tokio::spawn(async move { get(addr, "/slow", Some(&token)).await });
    upstream_has(&r.recorded, "/slow").await;
    let signalled = Instant::now();
    r.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("shutdown waited for a request past shutdown_timeout")
        .expect("the gateway's run future failed");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "returned after {took:?}, before the drain deadline"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let r = running("10s", "5s").await;
    let tcp = tokio::net::TcpStream::connect(r.gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/idle")
                .header("host", "gw")
                .header("authorization", format!("Token {}", r.token))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // The connection is now idle and kept alive by the client.
    stops_at_once(r.stop, r.task, "an idle keep-alive connection").await;
    // And the server closed it.
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the idle connection was left open")
        .unwrap()
        .ok();
    drop(sender);
}

#[tokio::test]
async fn a_connection_that_has_sent_nothing_does_not_hold_up_shutdown() {
    // header_read_timeout is 10 s and shutdown_timeout 5 s: either would
    // show as a wait.
    let r = running("10s", "5s").await;
    let mut silent = tokio::net::TcpStream::connect(r.gw.addr).await.unwrap();
    // Let the gateway accept it and start waiting for its first bytes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stops_at_once(r.stop, r.task, "a connection that sent nothing").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the silent connection was left open");
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
}

/// Signals shutdown and asserts the gateway stops well before its 5 s
/// shutdown_timeout, though `what` is still open.
async fn stops_at_once(stop: oneshot::Sender<()>, task: JoinHandle<()>, what: &str) {
    let signalled = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(8), task)
        .await
        .unwrap_or_else(|_| panic!("{what} kept the gateway from stopping"))
        .expect("the gateway's run future failed");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "shutdown waited {:?} on {what}",
        signalled.elapsed()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn the_store_is_on_disk_when_run_returns() {
    let r = running("10s", "5s").await;
    // Issued just before shutdown, and used once (the use is bookkeeping
    // that is only written out by a flush).
    let late = r.gw.login("sam", "pw").await;
    assert_eq!(get(r.gw.addr, "/use", Some(&late)).await.status, 200);
    r.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("the gateway did not stop")
        .expect("the gateway's run future failed");

    // What is on disk now, copied while this process still holds the store.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&r.gw.config.store.path, copy.path());
    let store = Store::open(copy.path()).unwrap();
    let late_token = Token::parse(&late).unwrap();
    let identity = store
        .authenticate(&late_token.digest())
        .unwrap()
        .expect("the token issued just before shutdown is not on disk");
    assert_eq!(identity.username, "sam");
    assert!(
        Token::parse(&r.token)
            .and_then(|t| store.authenticate(&t.digest()).unwrap())
            .is_some()
    );
    let tokens = store.tokens(Some("sam")).unwrap();
    assert_eq!(tokens.len(), 2);
    let used = tokens
        .iter()
        .find(|t| t.id == late_token.digest().id())
        .expect("the late token is listed");
    assert!(
        used.record.last_used_at.is_some(),
        "the last use was not flushed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_drains_on_sigterm_and_sigint_and_exits_0() {
    let (up, recorded) = recording_echo_upstream().await;
    for signal in ["-TERM", "-INT"] {
        let env = Env::serving(up.addr, "public = [\"/**\"]");
        let mut server = Server::start(&env).unwrap();
        let addr = server.addr;
        let path = format!("/sig{signal}/delay/800");
        let p = path.clone();
        let in_flight = tokio::spawn(async move { get(addr, &p, None).await });
        upstream_has(&recorded, &path).await;

        let status = std::process::Command::new("kill")
            .args([signal, &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        refused(addr).await;
        assert!(!in_flight.is_finished(), "{signal}: cut short");
        let reply = tokio::time::timeout(Duration::from_secs(5), in_flight)
            .await
            .expect("the request in flight never finished")
            .unwrap();
        assert_eq!(reply.status, 200, "{signal}: {}", reply.text());
        assert_eq!(reply.seen().uri, path);

        let deadline = Instant::now() + Duration::from_secs(5);
        let exit = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{signal}: serve did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(exit.success(), "{signal}: serve exited with {exit}");
        // The admin socket is cleaned up and the store can be opened again.
        assert!(!env.store_path().join("admin.sock").exists());
        Store::open(&env.store_path()).expect("the store is still locked");
    }
}
