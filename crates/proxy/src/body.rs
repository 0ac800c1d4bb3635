//! The one body type every stage of the HTTP pipeline passes around.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body from any source (downstream, upstream, or generated locally).
pub type Body = BoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Wraps a hyper body (request from downstream or response from upstream).
pub fn incoming(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed()
}

/// A body that keeps `guard` alive until the body is dropped: counters and
/// permits that must last as long as the response is streaming.
pub fn guarded<G: Send + Sync + 'static>(body: Body, guard: G) -> Body {
    Guarded {
        inner: body,
        _guard: guard,
    }
    .boxed()
}

pin_project_lite::pin_project! {
    struct Guarded<G> {
        #[pin]
        inner: Body,
        _guard: G,
    }
}

impl<G> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
