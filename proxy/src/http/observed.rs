//! A response body from the app, passed through frame by frame, that reports once when it ends
//! (or is dropped): with the gRPC status from its trailers, if any, so requests are counted
//! with the status the client really got.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Called once with the gRPC status seen (`""` for none).
pub(super) type Done = Box<dyn FnOnce(&str) + Send + Sync>;

/// The app's response body, observed.
pub(super) struct Observed {
    inner: Incoming,
    grpc_status: String,
    done: Option<Done>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").finish_non_exhaustive()
    }
}

impl Observed {
    /// Observes `inner`; `grpc_status` is the one from the response headers, if any.
    pub(super) fn new(inner: Incoming, grpc_status: &str, done: Done) -> Self {
        Self {
            inner,
            grpc_status: grpc_status.to_owned(),
            done: Some(done),
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(&self.grpc_status);
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let status = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok());
                if let Some(s) = status {
                    s.clone_into(&mut this.grpc_status);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish();
    }
}
