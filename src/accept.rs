//! The one accept loop step every listener shares (the gateway's, the
//! admin listener's, the control socket's): a failure that belongs to one
//! connection is skipped, any other is reported and backed off from, so a
//! listener never spins on an error it cannot clear.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a listener waits after an accept failed for want of a
/// resource, before trying again.
pub const BACKOFF: Duration = Duration::from_millis(50);

/// A listening socket: TCP or Unix.
pub trait Listener {
    type Stream;
    type Addr;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>>;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>> {
        tokio::net::TcpListener::poll_accept(self, cx)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>> {
        tokio::net::UnixListener::poll_accept(self, cx)
    }
}

/// The next connection. `failed` hears of every error that is not one
/// connection's own, before the back-off.
pub async fn next<L: Listener>(
    listener: &L,
    mut failed: impl FnMut(&io::Error),
) -> (L::Stream, L::Addr) {
    loop {
        match poll_fn(|cx| listener.poll_accept(cx)).await {
            Ok(accepted) => return accepted,
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "a connection failed before it was accepted");
            }
            Err(e) => {
                failed(&e);
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

/// Errors of one connection that failed in the backlog (Linux reports
/// them from accept): the next one may be fine.
pub fn is_per_connection(e: &io::Error) -> bool {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionAborted | ConnectionReset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_failing_in_the_backlog_is_not_a_listener_error() {
        assert!(is_per_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(!is_per_connection(&io::Error::other("EMFILE")));
    }

    #[tokio::test]
    async fn next_hands_over_a_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (stream, _) = next(&listener, |e| panic!("unexpected error {e}")).await;
        let client = client.await.unwrap().unwrap();
        assert_eq!(stream.peer_addr().unwrap(), client.local_addr().unwrap());
    }
}
