//! `with_request_body`: buffering the request body (or its first
//! `max_request_bytes`) for the check, and handing the router an equivalent
//! body afterwards.

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, BodyStream, StreamBody};

use super::config::BufferSettings;
use crate::body::{Body, BoxError};

/// The body as the check request carries it.
#[derive(Debug, Clone)]
pub(super) struct Buffered {
    pub data: Bytes,
    pub partial: bool,
    pub pack_as_bytes: bool,
}

/// The body is larger than `max_request_bytes` and partial messages are
/// not allowed (Envoy answers 413).
#[derive(Debug)]
pub(super) struct TooLarge;

/// Reads the body as Envoy's ext_authz buffers it and replaces `body` with
/// one that yields the same frames. `None`: there is no body to buffer.
pub(super) async fn buffer(
    body: &mut Body,
    settings: BufferSettings,
) -> Result<Option<Buffered>, TooLarge> {
    if body.is_end_stream() {
        return Ok(None);
    }
    let max = settings.max_request_bytes;
    let mut data = BytesMut::new();
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut failed: Option<BoxError> = None;
    loop {
        if settings.allow_partial_message && data.len() >= max {
            break;
        }
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                failed = Some(e);
                break;
            }
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    data.extend_from_slice(d);
                    if !settings.allow_partial_message && data.len() > max {
                        return Err(TooLarge);
                    }
                }
                frames.push(frame);
            }
        }
    }
    let data = data.freeze();
    let partial = data.len() > max;
    let sent = if partial { data.slice(..max) } else { data };
    let rest = std::mem::replace(body, crate::body::empty());
    let replay = futures::stream::iter(frames.into_iter().map(Ok::<_, BoxError>));
    let tail: Body = match failed {
        Some(e) => {
            StreamBody::new(futures::stream::iter([Err::<Frame<Bytes>, BoxError>(e)])).boxed()
        }
        None => rest,
    };
    *body = StreamBody::new(futures::StreamExt::chain(replay, BodyStream::new(tail))).boxed();
    Ok(Some(Buffered {
        data: sent,
        partial,
        pack_as_bytes: settings.pack_as_bytes,
    }))
}
