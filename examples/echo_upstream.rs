//! A tiny upstream for trying tokengate out (and for `docker/test.sh`): it
//! answers every request with a JSON description of what arrived, so the
//! headers the gateway set (`X-Auth-User`, `X-Forwarded-For`, …) can be seen.
//!
//! `LISTEN=127.0.0.1:8000 cargo run --example echo_upstream` — listens on
//! `$LISTEN`, else `0.0.0.0:8000`. Answers
//! `{"method": …, "path": …, "query": …|null, "headers": {name: value}, "body_bytes": n}`;
//! a header sent more than once has its values joined with ", ".
//! Exits on SIGTERM or SIGINT, so `docker stop` needs no SIGKILL.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

const DEFAULT_LISTEN: &str = "0.0.0.0:8000";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| DEFAULT_LISTEN.to_owned())
        .parse()
        .map_err(|e| format!("LISTEN must be address:port: {e}"))?;
    let listener = TcpListener::bind(listen).await?;
    eprintln!("echo_upstream listening on {}", listener.local_addr()?);

    // PID 1 in a container gets no default signal handling: without these
    // the process would ignore `docker stop` until it is killed.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service_fn(echo));
            if let Err(e) = conn.await {
                eprintln!("connection ended with an error: {e}");
            }
        });
    }
    eprintln!("echo_upstream stopping");
    Ok(())
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    // Counted frame by frame, so a large upload streams through.
    let mut body_bytes = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, Bytes::len),
            Err(e) => {
                eprintln!("request body failed: {e}");
                break;
            }
        }
    }
    let description = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(Full::new(Bytes::from(description.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
