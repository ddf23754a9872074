//! Kept-alive HTTP/1.1 connections to the upstream. A connection is taken
//! for one exchange and put back when the gateway drops the response body
//! having read it to its end, so nothing — no task, no channel — stands
//! between a request and the connection it goes out on; the request drives
//! it ([`crate::upstream::connection`]). The most recently used connection is taken
//! first; the rest age out after `upstream.pool_idle_timeout`.
//!
//! At most `upstream.max_connections` are open at once, idle, busy or
//! tunneling: each holds a [`Slot`] until its socket closes. A request that
//! finds none idle and no slot free waits for either, up to
//! `upstream.connect_timeout`, then gets 503: every client stream would
//! otherwise open one more, until the process runs out of descriptors.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::{Notify, Semaphore};

use super::connection::{Conn, Slot};

/// Idle connections past this many are closed at once rather than kept:
/// as many as nginx's `keepalive 256` in the benchmark's anchor.
const MAX_IDLE: usize = 256;

/// The idle connections of one upstream. Cloning shares them.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    idle: Mutex<Idle>,
    idle_timeout: Duration,
    /// A permit per connection that may be open.
    slots: Arc<Semaphore>,
    /// Wakes a request waiting for a connection when one comes back idle.
    returned: Notify,
}

/// What a request goes out on.
pub enum Lease {
    /// An idle connection, ready for a request.
    Idle(Conn),
    /// Room to open a new one.
    New(Slot),
}

/// Every upstream connection stayed busy for as long as a request waits.
#[derive(Debug, thiserror::Error)]
#[error("all upstream connections stayed busy")]
pub struct Busy;

#[derive(Default)]
struct Idle {
    /// Oldest at the front, most recently returned at the back.
    conns: VecDeque<(Conn, Instant)>,
    /// Whether the task closing expired connections runs yet.
    reaping: bool,
}

impl Pool {
    /// `max_connections` is validated to fit the semaphore.
    pub fn new(idle_timeout: Duration, max_connections: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                idle: Mutex::new(Idle::default()),
                idle_timeout,
                slots: Arc::new(Semaphore::new(max_connections)),
                returned: Notify::new(),
            }),
        }
    }

    /// An idle connection, or room to open one. With neither, waits up to
    /// `wait` for a connection to come back or to close.
    pub async fn lease(&self, wait: Duration) -> Result<Lease, Busy> {
        if let Some(conn) = self.take().await {
            return Ok(Lease::Idle(conn));
        }
        if let Ok(permit) = Arc::clone(&self.shared.slots).try_acquire_owned() {
            return Ok(Lease::New(Slot::new(permit)));
        }
        tokio::time::timeout(wait, self.wait())
            .await
            .unwrap_or(Err(Busy))
    }

    async fn wait(&self) -> Result<Lease, Busy> {
        loop {
            // Registered before looking, so that a connection returned
            // after the look still wakes this request.
            let returned = self.shared.returned.notified();
            let mut returned = std::pin::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.take().await {
                return Ok(Lease::Idle(conn));
            }
            tokio::select! {
                permit = Arc::clone(&self.shared.slots).acquire_owned() => {
                    // The semaphore is never closed.
                    let permit = permit.map_err(|_| Busy)?;
                    return Ok(Lease::New(Slot::new(permit)));
                }
                () = &mut returned => {}
            }
        }
    }

    /// The most recently returned connection that is still open, ready for
    /// a request. Connections found closed are dropped on the way.
    pub async fn take(&self) -> Option<Conn> {
        loop {
            let (mut conn, _) = self.shared.lock().conns.pop_back()?;
            if conn.is_open() && conn.ready().await {
                return Some(conn);
            }
        }
    }

    /// Wraps an upstream response body so that its connection comes back
    /// here once the body has been read to its end. A body dropped early
    /// takes its connection with it: the rest of the body is still on the
    /// wire, so that connection can carry nothing else.
    /// `uploading`: the request had a body, whose exchange hyper finishes
    /// only once the connection is driven after the response's end.
    pub fn returning(&self, body: Incoming, conn: Conn, uploading: bool) -> Returning {
        Returning {
            body,
            conn: Some((conn, Arc::downgrade(&self.shared))),
            ended: false,
            uploading,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // The lists stay consistent whatever panicked while holding them.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(this: &Arc<Self>, conn: Conn) {
        if !conn.is_open() {
            return;
        }
        let now = Instant::now();
        let mut idle = this.lock();
        let evicted = (idle.conns.len() >= MAX_IDLE)
            .then(|| idle.conns.pop_front())
            .flatten();
        idle.conns.push_back((conn, now));
        this.returned.notify_one();
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
        // Dropping a connection closes it; not under the lock.
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

/// An upstream response body that drives its connection while it is read
/// and returns the connection to the pool when dropped after its end. Data
/// and trailers pass through untouched.
pub struct Returning {
    body: Incoming,
    /// `None` once given back or handed to an upgrade.
    conn: Option<(Conn, Weak<Shared>)>,
    /// The body yielded its last frame.
    ended: bool,
    /// The request had a body (see [`Pool::returning`]).
    uploading: bool,
}

impl Returning {
    /// After a 101 the connection belongs to the tunnel: it never comes
    /// back to the pool, and is driven on its own until it hands over.
    pub fn upgrade(&mut self) {
        if let Some((conn, _)) = self.conn.take() {
            conn.finish_upgrade();
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        // The body is fed by its connection, which only this poll drives.
        let body = &mut this.body;
        let polled = match this.conn.as_mut() {
            Some((conn, _)) => conn.poll_driven(cx, |_, cx| Pin::new(&mut *body).poll_frame(cx)),
            None => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => this.ended = true,
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
        let Some((mut conn, shared)) = self.conn.take() else {
            return;
        };
        // An upstream that answered before it had the whole request may
        // take what it still expects of the body from the next request:
        // that connection closes here.
        if !conn.is_open() {
            return;
        }
        if self.uploading {
            // The upload was out whole before the answer began: one drive
            // here finishes the exchange. A connection that needs more is
            // closed rather than left for a task to finish.
            let finished = {
                let ready = std::pin::pin!(conn.ready());
                ready.poll(&mut Context::from_waker(Waker::noop()))
            };
            if finished != Poll::Ready(true) {
                return;
            }
        }
        give_back(&shared, conn);
    }
}

/// Puts `conn` back in its pool, unless the pool is gone.
fn give_back(shared: &Weak<Shared>, conn: Conn) {
    if let Some(shared) = shared.upgrade() {
        Shared::put(&shared, conn);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn is_new(lease: &Result<Lease, Busy>) -> bool {
        matches!(lease, Ok(Lease::New(_)))
    }

    #[tokio::test]
    async fn no_more_connections_than_the_cap_and_a_freed_slot_is_reused() {
        let pool = Pool::new(Duration::from_secs(1), 2);
        let wait = Duration::from_millis(30);
        let first = pool.lease(wait).await;
        let second = pool.lease(wait).await;
        assert!(is_new(&first) && is_new(&second));
        assert!(matches!(pool.lease(wait).await, Err(Busy)));
        drop(first);
        assert!(is_new(&pool.lease(wait).await));
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_slot_as_soon_as_it_frees() {
        let pool = Pool::new(Duration::from_secs(1), 1);
        let held = pool.lease(Duration::ZERO).await;
        assert!(is_new(&held));
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.lease(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "waited past a held slot");
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the freed slot did not wake the waiter")
            .unwrap();
        assert!(is_new(&got));
    }

    #[tokio::test]
    async fn an_empty_pool_has_nothing_idle() {
        let pool = Pool::new(Duration::from_secs(1), 1);
        assert!(pool.take().await.is_none());
    }
}
