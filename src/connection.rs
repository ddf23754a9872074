//! One HTTP/1.1 connection to the upstream, moved along by the request that
//! holds it instead of by a task of its own.
//!
//! A connection with its own task costs every request three more task polls
//! and as many wake-ups: the request is handed to that task, the response
//! head handed back, then each body frame. It can also put the two halves
//! of one exchange on different worker threads. Here the client
//! connection's task polls the upstream connection wherever it waits on it:
//! for the response head ([`Conn::send`]), in each read of the response
//! body ([`crate::pool::Returning`]), and when taking it from the pool
//! ([`Conn::ready`]). An idle connection in the pool is polled by no one;
//! if the upstream closed it meanwhile, the first drive after taking it
//! reads the close before it writes, and the request, unsent, goes out
//! on another connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::upstream::Outbound;

/// An upstream connection's transport.
pub enum Io {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS session is over a kilobyte, and a plain connection
    /// would otherwise carry that much unused in every move.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// The request half (`sender`) and the state machine that moves requests
/// and responses over the wire (`driver`), kept together so that whoever
/// sends can also drive.
pub struct Conn {
    sender: SendRequest<Outbound>,
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
    /// HTTP/1.1 on `io`; `max_buf_size` bounds each read.
    pub async fn handshake(io: Io, max_buf_size: usize) -> hyper::Result<Self> {
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

    /// Whether another request can go out on this connection.
    pub fn is_open(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
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
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Outbound>>>> + Send + '_
    {
        async move {
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
            std::future::poll_fn(|cx| self.poll_driven(cx, |_, cx| response.as_mut().poll(cx)))
                .await
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

impl Read for Io {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl Write for Io {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
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
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}
