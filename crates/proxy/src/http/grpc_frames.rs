//! Counts gRPC messages in a body as it streams: each message is a 1-byte
//! flag and a 4-byte big-endian length, then the payload (gRPC over HTTP/2's
//! length-prefixed framing). Istio's `istio_request_messages_total` and
//! `istio_response_messages_total` count them.

/// Where the counter is in the framing, across body chunks.
#[derive(Debug, Default, Clone)]
pub(crate) struct FrameCounter {
    /// Prefix bytes of the next message seen so far (0..5).
    header: [u8; 5],
    header_len: usize,
    /// Payload bytes still to skip in the current message.
    remaining: u64,
    messages: u64,
}

impl FrameCounter {
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len() as u64);
                self.remaining -= skip;
                data = &data[skip as usize..];
                continue;
            }
            let take = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == 5 {
                self.messages += 1;
                self.header_len = 0;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
            }
        }
    }

    /// Messages whose prefix has been seen.
    pub(crate) fn messages(&self) -> u64 {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn counts_messages_split_anywhere() {
        let mut stream = Vec::new();
        for p in [&b"hello"[..], b"", &[7u8; 300][..]] {
            stream.extend(frame(p));
        }
        for chunk in 1..stream.len() {
            let mut c = FrameCounter::default();
            for part in stream.chunks(chunk) {
                c.feed(part);
            }
            assert_eq!(c.messages(), 3, "chunks of {chunk}");
        }
    }
}
