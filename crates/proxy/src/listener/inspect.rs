//! Listener filters that look at the first bytes of a connection without
//! consuming them: `tls_inspector` (SNI and ALPN from the ClientHello) and
//! `http_inspector` (HTTP/1.x or HTTP/2 prior knowledge on plaintext).

use std::time::Duration;

use tokio::net::TcpStream;

/// What the inspectors learned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub tls: bool,
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

const MAX_PEEK: usize = 16 * 1024 + 5;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Peeks until the inspectors can decide, or the timeout passes (then what
/// is known so far is used, as Envoy does with `continue_on_listener_filters_timeout`).
pub async fn inspect(
    stream: &TcpStream,
    want_tls: bool,
    want_http: bool,
    timeout: Duration,
) -> Inspection {
    let mut buf = vec![0u8; MAX_PEEK];
    let mut result = Inspection::default();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_len = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return result,
        };
        if n == 0 {
            return result;
        }
        let (sniffed, done) = sniff(&buf[..n], want_tls, want_http);
        result = sniffed;
        if done || n == buf.len() {
            return result;
        }
        if n == last_len {
            // Nothing new arrived yet; peek returns immediately with the same bytes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        last_len = n;
    }
}

/// Inspects the bytes seen so far. Returns what is known and whether the
/// inspectors are done (false: more bytes could change the answer).
pub fn sniff(data: &[u8], want_tls: bool, want_http: bool) -> (Inspection, bool) {
    let mut result = Inspection::default();
    let mut done = true;
    if want_tls {
        match parse_client_hello(data) {
            Parse::Done(hello) => {
                result.tls = true;
                result.server_name = hello.server_name;
                result.alpn = hello.alpn;
                return (result, true);
            }
            Parse::NeedMore => done = false,
            Parse::NotTls => {}
        }
    }
    if want_http {
        match detect_http(data) {
            Parse::Done(proto) => result.alpn = vec![proto.to_string()],
            Parse::NeedMore => done = false,
            Parse::NotTls => {}
        }
    }
    (result, done)
}

enum Parse<T> {
    Done(T),
    NeedMore,
    NotTls,
}

struct Hello {
    server_name: Option<String>,
    alpn: Vec<String>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
    fn u24(&mut self) -> Option<usize> {
        Some(
            (usize::from(self.u8()?) << 16)
                | (usize::from(self.u8()?) << 8)
                | usize::from(self.u8()?),
        )
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
}

/// Parses a TLS ClientHello (in the first record) for SNI and ALPN.
fn parse_client_hello(data: &[u8]) -> Parse<Hello> {
    if data.is_empty() {
        return Parse::NeedMore;
    }
    if data[0] != 0x16 {
        return Parse::NotTls;
    }
    if data.len() < 5 {
        return Parse::NeedMore;
    }
    if data[1] != 3 {
        return Parse::NotTls;
    }
    let record_len = usize::from(u16::from(data[3]) << 8 | u16::from(data[4]));
    if data.len() < 5 + record_len {
        return Parse::NeedMore;
    }
    match parse_hello_body(&data[5..5 + record_len]) {
        Some(h) => Parse::Done(h),
        // A malformed hello is still TLS; the handshake will fail properly.
        None => Parse::Done(Hello {
            server_name: None,
            alpn: vec![],
        }),
    }
}

fn parse_hello_body(data: &[u8]) -> Option<Hello> {
    let mut r = Reader { data, pos: 0 };
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let body = r.bytes(len.min(data.len() - 4))?;
    let mut r = Reader { data: body, pos: 0 };
    r.bytes(2 + 32)?; // version, random
    let sid = usize::from(r.u8()?);
    r.bytes(sid)?;
    let suites = usize::from(r.u16()?);
    r.bytes(suites)?;
    let comp = usize::from(r.u8()?);
    r.bytes(comp)?;
    let mut hello = Hello {
        server_name: None,
        alpn: vec![],
    };
    let Some(ext_len) = r.u16() else {
        return Some(hello);
    };
    let exts = r.bytes(usize::from(ext_len))?;
    let mut r = Reader { data: exts, pos: 0 };
    while r.pos < exts.len() {
        let ty = r.u16()?;
        let len = usize::from(r.u16()?);
        let ext = r.bytes(len)?;
        let mut e = Reader { data: ext, pos: 0 };
        match ty {
            0 => {
                let _list_len = e.u16()?;
                while e.pos < ext.len() {
                    let name_type = e.u8()?;
                    let n = usize::from(e.u16()?);
                    let name = e.bytes(n)?;
                    if name_type == 0 {
                        hello.server_name =
                            std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
                    }
                }
            }
            16 => {
                let _list_len = e.u16()?;
                while e.pos < ext.len() {
                    let n = usize::from(e.u8()?);
                    let p = e.bytes(n)?;
                    hello.alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

/// HTTP/1.x request line or the HTTP/2 connection preface.
fn detect_http(data: &[u8]) -> Parse<&'static str> {
    let n = data.len().min(H2_PREFACE.len());
    if data[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Parse::Done("h2c")
        } else {
            Parse::NeedMore
        };
    }
    // Method token, space, target, space, "HTTP/1.x" before the first CRLF.
    let line_end = data.windows(2).position(|w| w == b"\r\n");
    let Some(end) = line_end else {
        return if data.len() > 8192 {
            Parse::NotTls
        } else {
            Parse::NeedMore
        };
    };
    let line = &data[..end];
    let method_ok = line
        .iter()
        .take_while(|b| **b != b' ')
        .all(|b| b.is_ascii_uppercase() || *b == b'-');
    if method_ok && line.ends_with(b" HTTP/1.1") {
        Parse::Done("http/1.1")
    } else if method_ok && line.ends_with(b" HTTP/1.0") {
        Parse::Done("http/1.0")
    } else {
        Parse::NotTls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_http1_and_h2c() {
        assert!(matches!(
            detect_http(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Parse::Done("http/1.1")
        ));
        assert!(matches!(detect_http(H2_PREFACE), Parse::Done("h2c")));
        assert!(matches!(detect_http(b"PRI * HT"), Parse::NeedMore));
        assert!(matches!(detect_http(b"SSH-2.0-OpenSSH\r\n"), Parse::NotTls));
    }

    #[test]
    fn truncated_record_needs_more() {
        assert!(matches!(
            parse_client_hello(&[0x16, 3, 1, 0, 200, 1]),
            Parse::NeedMore
        ));
        assert!(matches!(parse_client_hello(b"GET /"), Parse::NotTls));
    }
}
