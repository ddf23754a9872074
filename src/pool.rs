//! Kept-alive HTTP/1.1 connections to the upstream. A connection is taken
//! for one exchange and put back when the gateway drops the response body
//! having read it to its end, so nothing — no task, no channel — stands
//! between a request and the connection it goes out on. The most recently
//! used connection is taken first; the rest age out after
//! `upstream.pool_idle_timeout`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

use crate::upstream::Outbound;

/// Idle connections past this many are closed at once rather than kept:
/// as many as nginx's `keepalive 256` in the benchmark's anchor.
const MAX_IDLE: usize = 256;

pub type Sender = SendRequest<Outbound>;

/// The idle connections of one upstream. Cloning shares them.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    idle: Mutex<Idle>,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Idle {
    /// Oldest at the front, most recently returned at the back.
    conns: VecDeque<(Sender, Instant)>,
    /// Whether the task closing expired connections runs yet.
    reaping: bool,
}

impl Pool {
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                idle: Mutex::new(Idle::default()),
                idle_timeout,
            }),
        }
    }

    /// The most recently returned connection that is still open, ready for
    /// a request. Connections found closed are dropped on the way.
    pub async fn take(&self) -> Option<Sender> {
        loop {
            let (mut sender, _) = self.shared.lock().conns.pop_back()?;
            if sender.is_closed() {
                continue;
            }
            // Returned at the body's end, the connection may still be
            // finishing that exchange for a moment; a closed one errors.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Hands `sender` back for reuse, unless it is closed or the pool full.
    pub fn put(&self, sender: Sender) {
        Shared::put(&self.shared, sender);
    }

    /// Wraps an upstream response body so that its connection comes back
    /// here once the body has been read to its end. A body dropped early
    /// takes its connection with it: the rest of the body is still on the
    /// wire, so that connection can carry nothing else.
    pub fn returning(&self, body: Incoming, sender: Sender) -> Returning {
        Returning {
            body,
            conn: Some((sender, Arc::downgrade(&self.shared))),
            ended: false,
        }
    }

    /// How many connections wait idle (for tests and metrics).
    pub fn idle(&self) -> usize {
        self.shared.lock().conns.len()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // The lists stay consistent whatever panicked while holding them.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(this: &Arc<Self>, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = this.lock();
        let evicted = (idle.conns.len() >= MAX_IDLE)
            .then(|| idle.conns.pop_front())
            .flatten();
        idle.conns.push_back((sender, now));
        // Outside a runtime (a body dropped as the process winds down)
        // there is nothing to spawn on; the next put will try again.
        let reaper_on = if idle.reaping {
            None
        } else {
            tokio::runtime::Handle::try_current().ok()
        };
        idle.reaping |= reaper_on.is_some();
        drop(idle);
        drop(evicted);
        if let Some(runtime) = reaper_on {
            spawn_reaper(&runtime, Arc::downgrade(this), this.idle_timeout);
        }
    }

    /// Removes the connections idle longer than the timeout.
    fn expire(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut idle = self.lock();
            while let Some((_, since)) = idle.conns.front() {
                if now.duration_since(*since) < self.idle_timeout {
                    break;
                }
                expired.extend(idle.conns.pop_front());
            }
        }
        // Dropping a sender closes its connection; not under the lock.
        drop(expired);
    }
}

/// Closes expired connections while the pool lives. One per pool, started
/// with its first idle connection (inside the runtime, then, by design).
fn spawn_reaper(runtime: &tokio::runtime::Handle, shared: Weak<Shared>, idle_timeout: Duration) {
    let period = (idle_timeout / 4).max(Duration::from_millis(100));
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.expire(Instant::now());
        }
    });
}

/// An upstream response body that returns its connection to the pool when
/// dropped after its end. Data and trailers pass through untouched.
pub struct Returning {
    body: Incoming,
    /// `None` once given back, or for a connection that must not be reused.
    conn: Option<(Sender, Weak<Shared>)>,
    /// The body yielded its last frame.
    ended: bool,
}

impl Returning {
    /// Keeps the connection out of the pool whatever happens to the body:
    /// after a 101 the connection belongs to the tunnel.
    pub fn never_reuse(&mut self) {
        self.conn = None;
    }
}

impl hyper::body::Body for Returning {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.ended = true,
            _ => {}
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

impl Drop for Returning {
    fn drop(&mut self) {
        // A body with a known length ends without a last poll: hyper stops
        // asking once `is_end_stream` says so, or never asks when it is empty.
        if !(self.ended || hyper::body::Body::is_end_stream(&self.body)) {
            return;
        }
        if let Some((sender, shared)) = self.conn.take()
            && let Some(shared) = shared.upgrade()
        {
            Shared::put(&shared, sender);
        }
    }
}

impl std::fmt::Debug for Returning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Returning")
            .field("ended", &self.ended)
            .field("pooled", &self.conn.is_some())
            .finish()
    }
}
