//! When an HTTP/2 connection is idle. hyper closes an idle HTTP/1
//! connection with its header-read timer but has no such timer for HTTP/2,
//! where a client could keep a connection with no streams (and its
//! `max_connections` slot) forever. Each stream holds an [`Open`] guard
//! until its response body is done; the connection's task waits on
//! [`Activity::idle`], which resolves once no stream has been open for the
//! whole timeout.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use hyper::body::{Body, Frame, SizeHint};

/// Low half of [`Activity::state`]: streams open now.
const OPEN: u64 = 1;
const OPEN_MASK: u64 = u32::MAX as u64;
/// High half: streams ever opened, wrapping. A stream that opened and
/// closed between two looks changes it, so it is not mistaken for idleness.
const STARTED: u64 = 1 << 32;

/// The streams of one HTTP/2 connection: one atomic word, so that a
/// stream costs an increment when it opens and a decrement when it ends.
#[derive(Debug, Default)]
pub struct Activity {
    state: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Counts a stream as open until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> Open {
        self.state.fetch_add(STARTED | OPEN, Ordering::Relaxed);
        Open(Arc::clone(self))
    }

    /// Resolves once no stream has been open for `timeout`, counted from
    /// the call at the earliest. Looked at every `tick`: idleness is only
    /// counted from a look that found the connection idle and unchanged
    /// since the look before, so the deadline is met late (by up to two
    /// ticks), never early.
    pub async fn idle(&self, timeout: Duration, tick: Duration) {
        let mut last = self.state.load(Ordering::Relaxed);
        let mut quiet = Duration::ZERO;
        while quiet < timeout {
            tokio::time::sleep(tick).await;
            let now = self.state.load(Ordering::Relaxed);
            quiet = if now & OPEN_MASK == 0 && now == last {
                quiet + tick
            } else {
                Duration::ZERO
            };
            last = now;
        }
    }
}

/// One open stream; dropping it ends the stream's count.
#[derive(Debug)]
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.state.fetch_sub(OPEN, Ordering::Relaxed);
    }
}

/// A service future whose response carries its stream's guard, so a
/// stream still sending its body counts as open.
pub struct Counted<F> {
    answer: F,
    /// `None` once the response is out.
    open: Option<Open>,
}

impl<F> Counted<F> {
    pub fn new(open: Open, answer: F) -> Self {
        Self {
            answer,
            open: Some(open),
        }
    }
}

impl<F, B> Future for Counted<F>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
{
    type Output = Result<Response<Tracked<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Poll::Ready(answered) = Pin::new(&mut this.answer).poll(cx) else {
            return Poll::Pending;
        };
        match this.open.take() {
            Some(open) => {
                Poll::Ready(answered.map(|r| r.map(|body| Tracked { body, _open: open })))
            }
            // Polled again after its answer: there is nothing more.
            None => Poll::Pending,
        }
    }
}

/// A response body holding its stream's guard. Size hint and end of stream
/// are the inner body's, so hyper still sends END_STREAM with the head of
/// an empty answer.
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    /// Held, never read: its drop ends the stream's count.
    _open: Open,
}

impl<B> Body for Tracked<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);
    const TICK: Duration = Duration::from_millis(500);

    /// How long `idle` takes to resolve while `during` runs beside it.
    async fn idle_after(activity: &Arc<Activity>, during: impl Future<Output = ()>) -> Duration {
        let start = tokio::time::Instant::now();
        let watch = activity.idle(TIMEOUT, TICK);
        tokio::join!(watch, during);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_streams_is_idle_after_the_timeout() {
        let activity = Activity::new();
        let took = idle_after(&activity, async {}).await;
        assert!(took >= TIMEOUT && took <= TIMEOUT + 2 * TICK, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_keeps_it_busy_and_the_count_restarts_at_its_end() {
        let activity = Activity::new();
        let open = activity.open();
        let held = async move {
            tokio::time::sleep(3 * TIMEOUT).await;
            drop(open);
        };
        let took = idle_after(&activity, held).await;
        assert!(
            took >= 4 * TIMEOUT && took <= 4 * TIMEOUT + 2 * TICK,
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_between_two_looks_restarts_the_count() {
        // Opened and closed within one tick: the count is the same at both
        // looks, only the number of streams started tells.
        let activity = Activity::new();
        let a = activity.clone();
        let brief = async move {
            tokio::time::sleep(TIMEOUT - TICK / 2).await;
            drop(a.open());
        };
        let took = idle_after(&activity, brief).await;
        assert!(took >= 2 * TIMEOUT - TICK / 2, "{took:?}");
    }

    #[tokio::test]
    async fn a_tracked_body_holds_its_stream_until_dropped() {
        use http_body_util::{BodyExt, Full};
        let activity = Activity::new();
        let answer = std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            bytes::Bytes::from_static(b"hi"),
        ))));
        let response = Counted::new(activity.open(), answer).await.unwrap();
        assert_eq!(activity.state.load(Ordering::Relaxed) & OPEN_MASK, 1);
        assert_eq!(response.body().size_hint().exact(), Some(2));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
        assert_eq!(activity.state.load(Ordering::Relaxed) & OPEN_MASK, 0);
    }
}
