//! The open-file budget, through the real binary started under a low
//! `ulimit -n`: `server.max_connections` is fitted under the limit so that
//! accept never fails for want of a descriptor, and `check` says so.

mod common;

use std::time::Duration;

use common::binary::{Env, Server};
use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Generous bound for anything the server should do at once.
const PATIENCE: Duration = Duration::from_secs(15);

/// A gateway config whose connections may stay silent for a minute, so
/// that held connections are not closed by the header read timeout.
fn config() -> String {
    config_text(&format!("http://{}", closed_port()), "")
        .replace("[server]\n", "[server]\nheader_read_timeout = \"60s\"\n")
        // As many upstream connections as client ones fit under the lowest
        // limit below, so the arithmetic stays (limit - reserved) / 2.
        .replace("[upstream]\n", "[upstream]\nmax_connections = 96\n")
}

/// Whether the server closes `conn` (end of stream or reset) within `wait`.
async fn closed_within(mut conn: TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, conn.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_open_file_limit_lowers_max_connections_and_accept_keeps_working() {
    // Under a 256-file limit the default 10,000 connections ran the
    // process out of descriptors: accept failed, and clients past the
    // limit hung in the backlog. Fitted to the limit, the cap is reached
    // first and connections past it are closed at once.
    const LIMIT: u64 = 256;
    let mut env = Env::new(&config());
    env.ulimit = Some(format!("-n {LIMIT}"));
    let server = Server::start(&env).unwrap_or_else(|f| panic!("did not start: {f:?}"));
    let addr = server.addr;
    let cap = (LIMIT - tokengate::server::openfiles::RESERVED) / 2;

    // More connections than the limit has files: the first `cap` are held
    // (silent, waiting for their first bytes), the others closed.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..LIMIT + 44 {
        let conn = TcpStream::connect(addr).await.unwrap();
        if (held.len() as u64) < cap {
            held.push(conn);
        } else {
            refused.push(tokio::spawn(closed_within(conn, PATIENCE)));
        }
    }
    let mut left_hanging = 0;
    for closed in refused {
        if !closed.await.unwrap() {
            left_hanging += 1;
        }
    }
    assert_eq!(
        left_hanging,
        0,
        "connections past the cap were left hanging:\n{}",
        server.log_text()
    );

    // The held ones are still open, and once they go a new client is served.
    for conn in held.iter_mut() {
        let mut buf = [0u8; 1];
        let still_open = tokio::time::timeout(Duration::from_millis(1), conn.read(&mut buf))
            .await
            .is_err();
        assert!(still_open, "a connection under the cap was closed");
    }
    drop(held);
    let mut served = None;
    for _ in 0..100 {
        let reply = raw_once(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PATIENCE).await;
        if raw_status(&reply) != 0 {
            served = Some(raw_status(&reply));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, Some(401), "{}", server.log_text());

    let log = server.log_text();
    assert!(
        log.contains(&format!(
            "server.max_connections (10000) lowered to {cap}: the open-file limit is {LIMIT}"
        )),
        "the lowered cap was not logged:\n{log}"
    );
    assert!(
        !log.contains("accept failed") && !log.contains("out of file descriptors"),
        "accept ran out of descriptors:\n{log}"
    );
    assert!(server.stop().success());

    // `check` says what serve would do under the same limit, and still
    // passes the file.
    let out = env.run(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("server.max_connections (10000) lowered to {cap}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    // A 256 soft limit would leave room for 96 connections; raised to a
    // hard limit of 2,064 or more, 1,000 fit.
    let hard = tokengate::server::openfiles::current().hard;
    if hard.is_some_and(|hard| hard < 2_064) {
        eprintln!("skipped: the hard limit ({hard:?}) is too low to raise to");
        return;
    }
    let mut env = Env::new(&config().replace("[server]\n", "[server]\nmax_connections = 1000\n"));
    env.ulimit = Some("-S -n 256".into());
    let server = Server::start(&env).unwrap_or_else(|f| panic!("did not start: {f:?}"));
    let reply = raw_once(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PATIENCE).await;
    assert_eq!(raw_status(&reply), 401);
    let log = server.log_text();
    assert!(log.contains("open-file limit raised"), "{log}");
    assert!(!log.contains("lowered"), "{log}");
    assert!(server.stop().success());
}

#[test]
fn a_limit_with_no_room_for_connections_is_refused_naming_it() {
    let mut env = Env::new(&config());
    env.ulimit = Some("-n 40".into());
    for command in ["check", "serve"] {
        let out = env.run(&[command]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains("the open-file limit (40) leaves no room for connections"),
            "{command}: {stderr}"
        );
    }
}
