//! Access logging for HTTP streams: counts the bytes that really cross the
//! downstream body streams and writes the entry when the response body ends
//! or the stream is reset (the body is dropped unfinished).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use super::flags::Flag;
use super::grpc_frames::FrameCounter;
use super::hcm::HcmConfig;
use crate::access_log::{Entry, log_all};
use crate::body::{Body, BoxError};

/// What the request body has done so far.
#[derive(Debug, Default)]
pub(crate) struct RequestProgress {
    bytes: AtomicU64,
    /// gRPC messages (gRPC requests only).
    messages: AtomicU64,
    /// Nanoseconds from the stream's start to the body's end, plus one (0: not ended).
    ended: AtomicU64,
}

impl RequestProgress {
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    pub(crate) fn ended(&self) -> Option<Duration> {
        match self.ended.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    fn end(&self, start: Instant) {
        let n = start.elapsed().as_nanos() as u64 + 1;
        let _ = self
            .ended
            .compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    struct CountedRequest {
        #[pin]
        inner: Body,
        progress: Arc<RequestProgress>,
        start: Instant,
        frames: Option<FrameCounter>,
    }
}

/// The downstream request body, counted.
pub(crate) fn count_request(
    body: Body,
    start: Instant,
    grpc: bool,
) -> (Body, Arc<RequestProgress>) {
    let progress = Arc::new(RequestProgress::default());
    if body.is_end_stream() {
        progress.end(start);
    }
    let counted = CountedRequest {
        inner: body,
        progress: Arc::clone(&progress),
        start,
        frames: grpc.then(FrameCounter::default),
    };
    (counted.boxed(), progress)
}

impl http_body::Body for CountedRequest {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.progress
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                    if let Some(frames) = this.frames.as_mut() {
                        frames.feed(d);
                        this.progress
                            .messages
                            .store(frames.messages(), Ordering::Relaxed);
                    }
                }
                if f.is_trailers() {
                    this.progress.end(*this.start);
                }
            }
            Poll::Ready(None) => this.progress.end(*this.start),
            _ => {}
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

/// An entry waiting for its response body to finish.
pub(crate) struct Pending {
    pub(crate) hcm: Arc<HcmConfig>,
    pub(crate) entry: Entry,
    pub(crate) start: Instant,
    pub(crate) request: Arc<RequestProgress>,
    /// When the upstream's response headers arrived.
    pub(crate) upstream_response: Option<Instant>,
    /// A gRPC request (Istio's `request_protocol="grpc"`).
    pub(crate) grpc: bool,
    /// `grpc-status` of a trailers-only response.
    pub(crate) grpc_status: Option<u16>,
}

/// The `grpc-status` header, if any.
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Pending {
    fn finish(
        mut self,
        sent: u64,
        trailers: Option<http::HeaderMap>,
        complete: bool,
        frames: Option<&FrameCounter>,
    ) {
        let now = Instant::now();
        let e = &mut self.entry;
        e.bytes_sent = sent;
        e.bytes_received = self.request.bytes();
        e.grpc_request_messages = self.request.messages();
        e.grpc_response_messages = frames.map_or(0, FrameCounter::messages);
        e.duration = Some(now - self.start);
        e.request_duration = self.request.ended();
        e.response_duration = self.upstream_response.map(|t| t - self.start);
        e.response_tx_duration = self.upstream_response.map(|t| now - t);
        let trailers_status = |t: Option<&http::HeaderMap>| t.and_then(grpc_status);
        if trailers.is_some() {
            e.response_trailers = trailers;
        }
        // A HEAD response's body is never sent, so never finished.
        if !complete && e.method.as_deref() != Some("HEAD") {
            e.flags.set(Flag::DownstreamConnectionTermination);
        }
        let grpc_status = trailers_status(e.response_trailers.as_ref()).or(self.grpc_status);
        if let Some(stats) = &self.hcm.istio_stats {
            crate::metrics::global().record_entry(
                &self.hcm.stat_prefix,
                stats,
                e,
                self.grpc,
                grpc_status,
            );
        }
        if !self.hcm.access_logs.is_empty() {
            log_all(&self.hcm.access_logs, e);
        }
    }
}

pin_project_lite::pin_project! {
    struct Logged {
        #[pin]
        inner: Body,
        pending: Option<Pending>,
        sent: u64,
        trailers: Option<http::HeaderMap>,
        frames: Option<FrameCounter>,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(p) = this.pending.take() {
                let complete = this.inner.is_end_stream();
                p.finish(*this.sent, this.trailers.take(), complete, this.frames.as_ref());
            }
        }
    }
}

/// Wraps the response body so that the entry is logged when it ends.
pub(crate) fn log_on_completion(body: Body, pending: Pending) -> Body {
    let frames = pending.grpc.then(FrameCounter::default);
    Logged {
        inner: body,
        pending: Some(pending),
        sent: 0,
        trailers: None,
        frames,
    }
    .boxed()
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    *this.sent += d.len() as u64;
                    if let Some(frames) = this.frames.as_mut() {
                        frames.feed(d);
                    }
                } else if let Some(t) = f.trailers_ref() {
                    *this.trailers = Some(t.clone());
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = this.pending.take() {
                    p.finish(*this.sent, this.trailers.take(), true, this.frames.as_ref());
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut p) = this.pending.take() {
                    // A body cut short of its length is a protocol error to
                    // Envoy's HTTP/1 codec (UPE); anything else a reset (UR).
                    let incomplete = cut_short(e.as_ref());
                    p.entry.flags.set(if incomplete {
                        Flag::UpstreamProtocolError
                    } else {
                        Flag::UpstreamRemoteReset
                    });
                    p.finish(*this.sent, this.trailers.take(), true, this.frames.as_ref());
                }
            }
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

/// Whether a body error is the upstream closing before the body's declared
/// end (hyper reports an unexpected EOF under its body error).
fn cut_short(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
            || err
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        next = err.source();
    }
    false
}
