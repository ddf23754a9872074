//! The client's request body on its way upstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, Incoming};

/// A client's request body on its way upstream: data streams through
/// untouched, trailers are dropped. Trailers could carry a second copy of
/// the identity headers past the checks that cleaned the header section.
pub struct Outbound(Incoming);

impl Outbound {
    pub fn new(body: Incoming) -> Self {
        Self(body)
    }
}

/// Reading the client's request body failed (a malformed chunk, a client
/// gone mid-body). A type of its own, so the failure it causes upstream
/// can be told from the upstream's own.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body failed")]
pub struct ClientBodyError(#[source] hyper::Error);

/// `http_body::Body`'s three calls, which `connection::Upload` (the one
/// body hyper sees) makes on this one, without a second trait impl.
impl Outbound {
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, ClientBodyError>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            // Trailers are the last frame: ending here loses nothing else.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => Poll::Ready(None),
            other => other.map_err(ClientBodyError),
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    pub fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.size_hint()
    }
}
