//! Running a chain's `envoy.filters.network.rbac` filters before its
//! terminal filter: wait for the first bytes from the downstream, decide,
//! and either close the connection or hand it on with those bytes replayed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::rbac::network::NetworkRbac;
use crate::rbac::{DynamicMetadata, Input};

/// A stream whose first reads return bytes already taken from it.
#[derive(Debug)]
pub struct Prefixed<IO> {
    prefix: Bytes,
    inner: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: Bytes, inner: IO) -> Self {
        Self { prefix, inner }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Waits for the first bytes (or the end of the stream) and runs the
/// filters in order. `Ok` carries the stream to continue with and the
/// dynamic metadata the filters wrote (for network ext_authz); `Err(())`
/// means the connection is to be closed (denied, or closed by the peer
/// before sending anything).
pub async fn gate<IO>(
    mut io: IO,
    filters: &[Arc<NetworkRbac>],
    input: Input<'_>,
) -> Result<(Prefixed<IO>, DynamicMetadata), ()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let n = match io.read(&mut buf).await {
        Ok(n) => n,
        Err(_) => return Err(()),
    };
    buf.truncate(n);
    let mut metadata = DynamicMetadata::default();
    for f in filters {
        let seen = metadata.clone();
        let input = Input {
            metadata: &seen,
            ..input
        };
        if !f.allows(&input, &mut metadata) {
            if let Some(delay) = f.delay_deny {
                tokio::time::sleep(delay).await;
            }
            return Err(());
        }
    }
    // Envoy also decides on a close without data (end of stream): the
    // counters move, and there is nothing left to proxy.
    if n == 0 {
        return Err(());
    }
    Ok((Prefixed::new(Bytes::from(buf), io), metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"world").await.expect("write");
        drop(a);
        let mut p = Prefixed::new(Bytes::from_static(b"hello "), b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }
}
