//! The access log: one line per request under target `tokengate::access`,
//! written when the exchange ends — the response body handed over whole,
//! or given up because the client went away or the upstream's body failed —
//! with the body bytes actually sent rather than the ones declared.
//!
//! The facts travel with the request: [`Pending`] holds them while the
//! pipeline runs (and writes the line itself if the client leaves before
//! the response head), then [`Pending::respond`] moves them into the
//! response body, a [`Logged`] wrapper that counts data frames as hyper
//! polls them. Nothing here allocates: the facts live inline in the guard
//! and then in the body.
//!
//! The line is a `tracing` event, so any subscriber sees it; the process's
//! own subscriber ([`subscriber`], in `layer`) has it written straight from
//! its facts instead, to the bytes tracing-subscriber's `fmt` would print.

mod layer;

pub use layer::subscriber;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Buf;
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

/// The status logged for a request whose client went away before the
/// response head was ready (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// What the pipeline learns about a request on its way through, for the
/// access line. Never holds a credential.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The canonical path; `None` when the target was refused before one existed.
    pub path: Option<String>,
    /// The authenticated (or logging-in) user.
    pub user: Option<Arc<str>>,
    /// Time until the upstream's response head, when the request was forwarded.
    pub upstream_us: Option<u64>,
    /// The request's ID, as sent upstream and on the response.
    pub request_id: Option<http::HeaderValue>,
    /// Why a request was refused, where the status alone does not say.
    pub reason: Option<Reason>,
}

/// The access line's `reason`: a byte in the per-request state, not a
/// string's sixteen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A scoped token's scopes do not cover the request.
    Scope,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Scope => "scope",
        }
    }
}

/// Everything the access line says, gathered from the request's arrival on.
#[derive(Debug)]
struct Facts {
    method: Method,
    /// The peer's address, formatted once per connection.
    client: Arc<str>,
    start: Instant,
    outcome: Outcome,
}

impl Facts {
    /// Writes the line. `head` is the status and the time to the response
    /// head, `None` when the exchange ended before there was one.
    fn write(self, head: Option<(StatusCode, u64)>, bytes: u64, complete: bool) {
        let Facts {
            method,
            client,
            start,
            outcome,
        } = self;
        let line = layer::Line {
            method: &method,
            path: outcome.path.as_deref().unwrap_or("-"),
            status: head.map_or(CLIENT_CLOSED, |(status, _)| status.as_u16()),
            user: outcome.user.as_deref().unwrap_or("-"),
            client: &client,
            request_id: outcome
                .request_id
                .as_ref()
                .and_then(|id| id.to_str().ok())
                .unwrap_or("-"),
            latency_us: micros(start.elapsed()),
            ttfb_us: head.map(|(_, ttfb)| ttfb),
            upstream_us: outcome.upstream_us,
            reason: outcome.reason.map(Reason::as_str),
            bytes,
            complete,
        };
        if layer::write(&line) {
            return;
        }
        tracing::info!(
            target: layer::TARGET,
            method = %line.method,
            path = line.path,
            status = line.status,
            user = line.user,
            client = %line.client,
            request_id = line.request_id,
            latency_us = line.latency_us,
            ttfb_us = line.ttfb_us,
            upstream_us = line.upstream_us,
            reason = line.reason,
            bytes = line.bytes,
            complete = line.complete,
        );
    }
}

/// A duration in whole microseconds, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A request on its way through the pipeline. Dropped before
/// [`respond`](Self::respond) — the client went away and hyper dropped the
/// handler — it writes the line with status 499 and `complete=false`.
#[derive(Debug)]
pub struct Pending {
    /// `Some` until the line is written or handed to the body.
    entry: Option<Facts>,
}

impl Pending {
    /// Starts the clock for a request from `client`.
    pub fn new(method: Method, client: Arc<str>) -> Self {
        Self {
            entry: Some(Facts {
                method,
                client,
                start: Instant::now(),
                outcome: Outcome::default(),
            }),
        }
    }

    /// Where the pipeline records what it learns.
    pub fn outcome(&mut self) -> &mut Outcome {
        // Only `respond` and `drop` take the entry, and both consume `self`.
        &mut self
            .entry
            .as_mut()
            .expect("the entry is present until respond or drop")
            .outcome
    }

    /// The response head is ready: the line now waits for the body's end.
    pub fn respond<B: Body>(mut self, response: Response<B>) -> Response<Logged<B>> {
        let status = response.status();
        let entry = self.entry.take();
        let ttfb_us = entry.as_ref().map_or(0, |e| micros(e.start.elapsed()));
        // Dropping these unpolled is finishing them: hyper sends no body
        // for HEAD, 1xx (an upgrade's tunnel is not this body), 204 and 304,
        // and drops a body that is already at its end without polling it.
        let bodiless = entry.as_ref().is_some_and(|e| e.method == Method::HEAD)
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || response.body().is_end_stream();
        response.map(|body| Logged {
            body,
            entry,
            status,
            ttfb_us,
            bytes: 0,
            bodiless,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            entry.write(None, 0, false);
        }
    }
}

/// A response body that counts the data it hands to the connection and
/// writes the access line once: at its end, on an error, or when dropped
/// early. Size hint and end of stream are the inner body's, so hyper still
/// sets Content-Length and takes its fast paths.
#[derive(Debug)]
pub struct Logged<B> {
    body: B,
    /// `Some` until the line is written; taking it makes that happen once.
    entry: Option<Facts>,
    status: StatusCode,
    /// Time from the request's arrival to the response head.
    ttfb_us: u64,
    /// Data bytes polled out of `body` so far.
    bytes: u64,
    /// A drop before the end loses nothing (see [`Pending::respond`]).
    bodiless: bool,
}

impl<B> Logged<B> {
    fn finish(&mut self, complete: bool) {
        if let Some(entry) = self.entry.take() {
            entry.write(Some((self.status, self.ttfb_us)), self.bytes, complete);
        }
    }
}

impl<B> Body for Logged<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.remaining() as u64;
                }
                // hyper stops polling once the body says it has ended, and
                // after trailers: this is the last frame it will ask for.
                if frame.is_trailers() || this.body.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(None) => this.finish(true),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        let complete = self.bodiless;
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::layer::tests::Sink;
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};

    /// Runs `f` with a JSON subscriber on this thread and returns the
    /// access lines it wrote.
    fn lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let sink = Sink::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        sink.lines()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["target"] == "tokengate::access")
            .collect()
    }

    fn pending(method: Method) -> Pending {
        let mut p = Pending::new(method, Arc::from("192.0.2.7"));
        p.outcome().path = Some("/p".into());
        p.outcome().user = Some("ann".into());
        p
    }

    fn response<B>(status: u16, body: B) -> Response<B> {
        let mut r = Response::new(body);
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }

    /// Polls `body` to its end (or error) on a current-thread runtime.
    fn drain<B: Body + Unpin>(body: B) -> Result<u64, B::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move { Ok(body.collect().await?.to_bytes().len() as u64) })
    }

    #[test]
    fn a_body_read_to_its_end_is_logged_once_with_its_bytes() {
        let logged = lines(|| {
            let r = pending(Method::GET).respond(response(200, Full::new(Bytes::from("hello"))));
            assert_eq!(
                r.body().size_hint().exact(),
                Some(5),
                "size hint passes through"
            );
            assert!(!r.body().is_end_stream());
            assert_eq!(drain(r.into_body()).unwrap(), 5);
        });
        assert_eq!(logged.len(), 1, "{logged:?}");
        let l = &logged[0];
        assert_eq!(l["bytes"], 5);
        assert_eq!(l["complete"], true);
        assert_eq!(l["status"], 200);
        assert_eq!(l["method"], "GET");
        assert_eq!(l["path"], "/p");
        assert_eq!(l["user"], "ann");
        assert_eq!(l["client"], "192.0.2.7");
        assert!(l["ttfb_us"].as_u64().unwrap() <= l["latency_us"].as_u64().unwrap());
        assert!(l.get("upstream_us").is_none());
    }

    #[test]
    fn a_streamed_body_counts_every_frame() {
        let logged = lines(|| {
            let frames = (0..4).map(|_| {
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![0u8; 1000])))
            });
            let body = StreamBody::new(futures_util::stream::iter(frames));
            let r = pending(Method::GET).respond(response(200, body));
            assert_eq!(r.body().size_hint().exact(), None);
            assert_eq!(drain(r.into_body()).unwrap(), 4000);
        });
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(logged[0]["bytes"], 4000);
        assert_eq!(logged[0]["complete"], true);
    }

    #[test]
    fn a_body_that_fails_is_logged_incomplete_with_what_was_sent() {
        let logged = lines(|| {
            let frames = [
                Ok(Frame::data(Bytes::from_static(b"partial"))),
                Err("upstream died"),
            ];
            let body = StreamBody::new(futures_util::stream::iter(frames));
            let r = pending(Method::GET).respond(response(200, body));
            assert!(drain(r.into_body()).is_err());
        });
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(logged[0]["bytes"], 7);
        assert_eq!(logged[0]["complete"], false);
    }

    #[test]
    fn a_body_dropped_before_its_end_is_logged_incomplete() {
        let logged = lines(|| {
            let r = pending(Method::GET).respond(response(200, Full::new(Bytes::from("hello"))));
            drop(r);
        });
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(logged[0]["bytes"], 0);
        assert_eq!(logged[0]["complete"], false);
    }

    #[test]
    fn bodies_hyper_never_polls_are_complete_when_dropped() {
        let logged = lines(|| {
            drop(pending(Method::POST).respond(response(204, Empty::<Bytes>::new())));
            drop(pending(Method::GET).respond(response(200, Full::new(Bytes::new()))));
            drop(pending(Method::HEAD).respond(response(200, Full::new(Bytes::from("x")))));
            drop(pending(Method::GET).respond(response(101, Empty::<Bytes>::new())));
        });
        assert_eq!(logged.len(), 4, "{logged:?}");
        for l in &logged {
            assert_eq!(l["complete"], true, "{l}");
            assert_eq!(l["bytes"], 0, "{l}");
        }
    }

    #[test]
    fn a_request_abandoned_before_its_head_is_logged_as_499() {
        let logged = lines(|| drop(pending(Method::GET)));
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(logged[0]["status"], 499);
        assert_eq!(logged[0]["complete"], false);
        assert_eq!(logged[0]["path"], "/p");
        assert!(logged[0].get("ttfb_us").is_none());
    }
}
