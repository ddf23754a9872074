//! One HTTP/1.1 connection to the upstream, moved along by the request that
//! holds it instead of by a task of its own.
//!
//! A connection with its own task costs every request three more task polls
//! and as many wake-ups: the request is handed to that task, the response
//! head handed back, then each body frame. It can also put the two halves
//! of one exchange on different worker threads. Here the client
//! connection's task polls the upstream connection wherever it waits on it:
//! for the response head ([`Conn::send`]), in each read of the response
//! body ([`crate::upstream::pool::Returning`]), and when taking it from the pool
//! ([`Conn::ready`]). An idle connection in the pool is polled by no one;
//! if the upstream closed it meanwhile, the first drive after taking it
//! reads the close before it writes, and the request, unsent, goes out
//! on another connection.
//!
//! An upstream that answers before it has the whole request body may take
//! what follows for a request of its own: a client could smuggle one in a
//! body, under any identity it writes. So once the upstream has begun to
//! answer, no more of the body goes out, and a connection whose answer
//! began before the request was written whole is closed after the
//! response, never reused ([`Progress`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use tokio::sync::OwnedSemaphorePermit;

use super::outbound::{ClientBodyError, Outbound};

/// The right to one open upstream connection. The connection's transport
/// holds it, so it is given back when the socket closes, however that
/// happens.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    pub fn new(permit: OwnedSemaphorePermit) -> Self {
        Self { _permit: permit }
    }
}

/// An upstream connection's transport.
pub enum Io {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS session is over a kilobyte, and a plain connection
    /// would otherwise carry that much unused in every move.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// Where the request on a connection stands, as seen by the three that
/// move it: its body (all taken), the transport (all written, the
/// upstream heard from) and [`Conn::send`] (the response head). Everything
/// touching it runs in polls of the one connection, one at a time.
struct Progress(AtomicU8);

impl Progress {
    /// The body's last frame has been taken.
    const TAKEN: u8 = 1;
    /// ... and flushed to the transport: the request is out whole.
    const WRITTEN: u8 = 2;
    /// The upstream sent something before that; the body waits until
    /// [`Conn::send`] knows whether it was the response head or something
    /// before it (`100 Continue`).
    const HEARD: u8 = 4;
    /// The response head came first: the body stops for good and the
    /// connection is not reused.
    const EARLY: u8 = 8;
    /// The body has asked once to be polled again after `HEARD`; it asks
    /// no more until resumed, so nothing spins on a pause.
    const PAUSED: u8 = 16;
    /// Between requests, or before the first: nothing to watch.
    const IDLE: u8 = Self::TAKEN | Self::WRITTEN;

    fn idle() -> Self {
        Self(AtomicU8::new(Self::IDLE))
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn start(&self, has_body: bool) {
        let state = if has_body { 0 } else { Self::TAKEN };
        self.0.store(state, Ordering::Relaxed);
    }

    fn taken(&self) {
        self.0.fetch_or(Self::TAKEN, Ordering::Relaxed);
    }

    /// The transport has written out all it was given. What is flushed
    /// after the upstream spoke does not count: it answered before that.
    fn flushed(&self) {
        if self.get() == Self::TAKEN {
            self.0.store(Self::TAKEN | Self::WRITTEN, Ordering::Relaxed);
        }
    }

    /// The transport read something (or the end) from the upstream.
    fn heard(&self) {
        if self.get() & (Self::WRITTEN | Self::EARLY) == 0 {
            self.0.fetch_or(Self::HEARD, Ordering::Relaxed);
        }
    }

    /// What was heard was not the response head: the body goes on.
    fn resume(&self) {
        if self.get() & Self::HEARD != 0 {
            self.0
                .fetch_and(!(Self::HEARD | Self::PAUSED), Ordering::Relaxed);
        }
    }

    /// Whether the body, finding the upstream heard from, is to ask for
    /// another poll: the first time only.
    fn pause(&self) -> bool {
        self.0.fetch_or(Self::PAUSED, Ordering::Relaxed) & Self::PAUSED == 0
    }

    /// The response head has come: marks the exchange early unless the
    /// request was out whole.
    fn answered(&self) {
        if self.get() & Self::WRITTEN == 0 {
            self.0.fetch_or(Self::EARLY, Ordering::Relaxed);
        }
    }

    fn early(&self) -> bool {
        self.get() & Self::EARLY != 0
    }
}

/// A request body as its connection sends it: paused while the upstream
/// is being heard from, stopped once it has answered.
struct Upload {
    body: Outbound,
    progress: Arc<Progress>,
}

impl hyper::body::Body for Upload {
    type Data = bytes::Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let state = self.progress.get();
        if state & Progress::EARLY != 0 {
            // Never woken: the connection closes once the response is read.
            return Poll::Pending;
        }
        if state & Progress::HEARD != 0 {
            // Polled only by the driver, within its holder's poll: the wake
            // has the holder look at the response head, then drive again.
            if self.progress.pause() {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        let polled = self.body.poll_next(cx);
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            self.progress.taken();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // hyper asks before each frame; once it hears yes it takes no more.
        let end = self.body.is_end_stream();
        if end {
            self.progress.taken();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request that did not get its response head.
pub struct SendError {
    pub error: hyper::Error,
    /// The request, when the connection closed before sending any of it.
    pub unsent: Option<Request<Outbound>>,
}

/// The transport as hyper holds it, reporting reads and flushes to the
/// request in flight. It holds the connection's [`Slot`], released when
/// the socket closes: when hyper drops the connection, or when a tunnel
/// it was handed to after a 101 ends.
struct Watched {
    io: Io,
    progress: Arc<Progress>,
    _slot: Slot,
}

/// The request half (`sender`) and the state machine that moves requests
/// and responses over the wire (`driver`), kept together so that whoever
/// sends can also drive.
pub struct Conn {
    sender: SendRequest<Upload>,
    /// How far the request in flight has gone; shared with its body and
    /// with the transport.
    progress: Arc<Progress>,
    /// `None` once the connection has ended: closed by either side, failed,
    /// or switched to another protocol. Boxed once per connection, as a
    /// trait object because hyper does not export the upgradeable
    /// connection's type.
    driver: Option<Box<dyn Drive>>,
}

/// A connection's state machine with the waker it is always polled with.
struct Driving<C> {
    conn: C,
    nudge: Arc<Nudge>,
    waker: Waker,
}

/// What the driver's wakes do. Much of what wakes a driver happens while
/// its holder is polling it: sending a request into the connection's
/// queue, taking a body frame from its channel. Passed on to the task,
/// such a wake would have the task polled a second time, every hyper
/// connection state machine in it included, only to drive this one again;
/// instead it marks `nudged`, and the holder's poll goes round once more.
/// Wakes from anywhere else (the socket, another task) reach the task.
#[derive(Default)]
struct Nudge {
    task: AtomicWaker,
    /// The holder is polling the driver or what it feeds.
    polling: AtomicBool,
    nudged: AtomicBool,
}

impl Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.nudged.store(true, Ordering::SeqCst);
            // The holder may have finished its last check just now.
            if self.polling.load(Ordering::SeqCst) {
                return;
            }
        }
        self.task.wake();
    }
}

/// The driver behind a trait object: hyper's upgradeable connection type
/// cannot be named.
trait Drive: Send {
    /// Opens a poll window and polls the connection with its own waker;
    /// `cx`'s waker is the one its wakes reach outside a window.
    fn begin(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>>;
    /// Opens a poll window without polling.
    fn open(&self);
    /// Closes the poll window: whether the driver asked to be polled again
    /// within it.
    fn end(&self) -> bool;
}

impl<C> Drive for Driving<C>
where
    C: Future<Output = hyper::Result<()>> + Send + Unpin,
{
    fn begin(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.nudge.task.register(cx.waker());
        self.open();
        Pin::new(&mut self.conn).poll(&mut Context::from_waker(&self.waker))
    }

    fn open(&self) {
        self.nudge.nudged.store(false, Ordering::SeqCst);
        self.nudge.polling.store(true, Ordering::SeqCst);
    }

    fn end(&self) -> bool {
        self.nudge.polling.store(false, Ordering::SeqCst);
        self.nudge.nudged.swap(false, Ordering::SeqCst)
    }
}

impl Conn {
    /// HTTP/1.1 on `io`, which counts against the upstream's connections
    /// by `slot` while it is open; `max_buf_size` bounds each read.
    pub async fn handshake(io: Io, slot: Slot, max_buf_size: usize) -> hyper::Result<Self> {
        let progress = Arc::new(Progress::idle());
        let io = Watched {
            io,
            progress: Arc::clone(&progress),
            _slot: slot,
        };
        let (sender, driver) = http1::Builder::new()
            .max_buf_size(max_buf_size)
            .handshake(io)
            .await?;
        let nudge = Arc::new(Nudge::default());
        let waker = Waker::from(Arc::clone(&nudge));
        // Upgradeable: after a 101 the transport goes on as a tunnel.
        let conn = driver.with_upgrades();
        Ok(Self {
            sender,
            progress,
            driver: Some(Box::new(Driving { conn, nudge, waker })),
        })
    }

    /// Polls `then`, something only the driver completes (the response
    /// head, a body frame, readiness for a request), driving the
    /// connection first when it is still pending, and again while the
    /// driver asked for it meanwhile. `then` is polled with a waker that
    /// does nothing: the driver already holds one for whatever progress it
    /// waits on. Once the driver has ended, `then` is polled with `cx`
    /// itself, as nothing else will wake the task.
    pub fn poll_driven<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut then: impl FnMut(&mut Self, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let mut quiet = Context::from_waker(Waker::noop());
        // What the last drive left (a body frame in its channel, say) needs
        // no drive: a ready result is taken up by whoever drives next, the
        // next body read or the next request taking the connection.
        if let Some(driver) = self.driver.as_ref() {
            driver.open();
            let polled = then(self, &mut quiet);
            if let Some(driver) = self.driver.as_ref() {
                driver.end();
            }
            if polled.is_ready() {
                return polled;
            }
        }
        loop {
            let Some(driver) = self.driver.as_mut() else {
                return then(self, cx);
            };
            if let Poll::Ready(ended) = driver.begin(cx) {
                driver.end();
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                // Dropping the driver fails whatever still waits on it.
                self.driver = None;
                return then(self, cx);
            }
            let polled = then(self, &mut quiet);
            let nudged = self.driver.as_ref().is_some_and(|driver| driver.end());
            if polled.is_ready() || !nudged {
                return polled;
            }
        }
    }

    /// Drives the connection with no result to wait for; `false` once it
    /// has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let ended = self.poll_driven(cx, |conn, _| match conn.driver {
            None => Poll::Ready(()),
            Some(_) => Poll::Pending,
        });
        ended.is_pending()
    }

    /// Whether another request can go out on this connection: not when
    /// the upstream answered before it had the whole request.
    pub fn is_open(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed() && !self.progress.early()
    }

    /// Waits until the connection can take a request, finishing what the
    /// previous exchange left (hyper's bookkeeping after a body's end).
    /// `false`: the connection has ended and is of no further use. An
    /// upstream's close while the connection sat idle is read by the first
    /// drive after this, which reads before it writes: the request comes
    /// back unsent and goes out on another connection.
    pub async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            self.poll_driven(cx, |conn, cx| match conn.driver {
                None => Poll::Ready(false),
                Some(_) => conn.sender.poll_ready(cx).map(|ready| ready.is_ok()),
            })
        })
        .await
    }

    /// Sends `req` and waits for the response head. A request the
    /// connection closed on before sending it comes back in the error.
    ///
    /// Not an async fn, which would keep the request twice in its future
    /// (rust-lang/rust#62958).
    #[allow(clippy::manual_async_fn)]
    pub fn send(
        &mut self,
        req: Request<Outbound>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send + '_ {
        async move {
            self.progress.start(!req.body().is_end_stream());
            let progress = Arc::clone(&self.progress);
            let req = req.map(|body| Upload { body, progress });
            // Queued within a window: queueing wakes the driver, and the
            // task would be woken while it runs this very poll. The drive
            // that follows at once takes the request.
            if let Some(driver) = &self.driver {
                driver.open();
            }
            let response = self.sender.try_send_request(req);
            if let Some(driver) = &self.driver {
                driver.end();
            }
            let mut response = std::pin::pin!(response);
            let head = std::future::poll_fn(|cx| {
                self.poll_driven(cx, |conn, cx| {
                    let polled = response.as_mut().poll(cx);
                    match &polled {
                        Poll::Ready(Ok(_)) => conn.progress.answered(),
                        Poll::Pending => conn.progress.resume(),
                        Poll::Ready(Err(_)) => {}
                    }
                    polled
                })
            })
            .await;
            head.map_err(|mut e| SendError {
                unsent: e.take_message().map(|req| req.map(|upload| upload.body)),
                error: e.into_error(),
            })
        }
    }

    /// After a 101: a task of its own drives the connection until it hands
    /// its transport over to the upgrade, which nothing else would poll.
    pub fn finish_upgrade(mut self) {
        tokio::spawn(std::future::poll_fn(move |cx| {
            if self.drive(cx) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }));
    }
}

/// Calls `$call` with `$s` bound to the stream `$io` holds, pinned: the
/// one match every I/O method of the transport needs, with no dynamic
/// dispatch on the hot path.
macro_rules! on_stream {
    ($io:expr, $s:ident => $call:expr) => {
        match $io {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            Io::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $call
            }
        }
    };
}

impl Read for Watched {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = on_stream!(&mut this.io, s => s.poll_read(cx, buf));
        if polled.is_ready() {
            this.progress.heard();
        }
        polled
    }
}

impl Write for Watched {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(&mut self.get_mut().io, s => s.poll_write(cx, buf))
    }

    /// hyper flushes the transport only once its own buffer is empty.
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = on_stream!(&mut this.io, s => s.poll_flush(cx));
        if let Poll::Ready(Ok(())) = polled {
            this.progress.flushed();
        }
        polled
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(&mut self.get_mut().io, s => s.poll_shutdown(cx))
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(&mut self.get_mut().io, s => s.poll_write_vectored(cx, bufs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_written_whole_before_the_answer_is_not_early() {
        let p = Progress::idle();
        p.start(true);
        p.taken();
        p.flushed();
        // The answer arrives after the request went out whole.
        p.heard();
        assert_eq!(p.get() & Progress::HEARD, 0);
        assert_eq!(p.get() & Progress::EARLY, 0);
    }

    #[test]
    fn an_answer_before_the_whole_body_pauses_then_resumes_for_100_continue() {
        let p = Progress::idle();
        p.start(true);
        p.heard();
        assert_ne!(p.get() & Progress::HEARD, 0, "the body must wait");
        assert!(p.pause(), "the first pause asks for another poll");
        assert!(!p.pause(), "later ones do not, so nothing spins");
        // It was `100 Continue`: the body goes on.
        p.resume();
        assert_eq!(p.get() & (Progress::HEARD | Progress::PAUSED), 0);
        p.taken();
        p.flushed();
        assert_eq!(p.get(), Progress::IDLE);
    }

    #[test]
    fn a_response_head_before_the_whole_request_marks_it_early() {
        let p = Progress::idle();
        p.start(true);
        p.heard();
        p.answered();
        assert!(p.early(), "the connection must not be reused");
        // Later reads and flushes do not undo it.
        p.heard();
        p.flushed();
        assert!(p.early());

        let whole = Progress::idle();
        whole.start(true);
        whole.taken();
        whole.flushed();
        whole.answered();
        assert!(!whole.early());
    }

    #[test]
    fn a_request_without_a_body_is_taken_from_the_start() {
        let p = Progress::idle();
        p.start(false);
        assert_eq!(p.get(), Progress::TAKEN);
        p.flushed();
        assert_eq!(p.get(), Progress::IDLE);
    }
}
