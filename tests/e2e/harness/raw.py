"""Raw-socket requests: byte-exact HTTP/1 exchanges (keep-alive, chunked, Expect,
HTTP/1.0, malformed input), TLS with a chosen SNI/ALPN, source-address binding,
connection-close and idle-close observations.

Each type has `send_to(addr, ca)` (picked up by `client.send`) and returns an
`Observation`:
  RawReq     kind "raw": status/headers/body/protocol of the LAST response read,
             `parts` = every response read in order (1xx included), `closed` = whether
             the proxy closed the connection (observed only when asked).
  TcpIdleReq kind "tcp": the echoed bytes and whether the connection was closed by the
             proxy within `wait` seconds of going idle (`elapsed` = idle seconds until close).
"""
from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

from .client import DEFAULT_HOST, Observation, _hdict

READ = None  # a step of RawReq: read one HTTP response


class _Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            b = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            b = b""
        if not b:
            self.eof = True
            return False
        self.buf += b
        return True

    def read_until(self, sep: bytes) -> bytes | None:
        while sep not in self.buf:
            if not self._fill():
                return None
        head, _, self.buf = self.buf.partition(sep)
        return head

    def read_n(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                break
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_all(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out


def _read_response(c: _Conn, method: str) -> Observation | None:
    head = c.read_until(b"\r\n\r\n")
    if head is None:
        return None
    status_line, *lines = head.decode(errors="replace").split("\r\n")
    parts = status_line.split(" ", 2)
    version = parts[0]
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else parts[1:]
    headers = _hdict((k, v.strip()) for k, v in (l.split(":", 1) for l in lines if ":" in l))
    if isinstance(status, int) and (status < 200 or status in (204, 304) or method == "HEAD"):
        body = b""
    elif "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        body = b""
        while True:
            size_line = c.read_until(b"\r\n")
            if size_line is None:
                break
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                c.read_until(b"\r\n")  # (no trailers expected) final CRLF
                break
            body += c.read_n(size)
            c.read_until(b"\r\n")
        # transfer-encoding is a framing detail of the hop; keep it (compared) as is
    elif "content-length" in headers:
        body = c.read_n(int(headers["content-length"][0]))
    else:
        body = c.read_all()
    return Observation("raw", status, headers, body, protocol=version)


def _connect(addr, source: str | None, timeout: float) -> socket.socket:
    host, port = addr
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect((host, port))
    return s


@dataclass
class RawReq:
    """steps: bytes to send, or READ (= None) to read one response. Example:
    RawReq([b"GET / HTTP/1.1\\r\\nHost: e2e.test\\r\\n\\r\\n", READ, b"GET /2 ...", READ])
    tls: None (plain) | True (TLS, no SNI) | "sni.name" (TLS with that SNI); alpn: ALPN offer.
    dest: connect to this IP instead of the listener's address (same port).
    source: bind the client socket to this local IP (e.g. 127.0.0.2).
    check_close: after the steps, wait up to this many seconds for the proxy to close."""
    steps: list = field(default_factory=list)
    listener: str | None = None
    tls: bool | str | None = None
    alpn: list[str] | None = None
    dest: str | None = None
    source: str | None = None
    check_close: float = 0.0
    timeout: float = 5.0
    method: str = "GET"  # for response framing (HEAD has no body)

    @staticmethod
    def get(path: str = "/", host: str = DEFAULT_HOST, version: str = "HTTP/1.1",
            headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:
        lines = [f"GET {path} {version}"] + ([f"Host: {host}"] if host else []) + [f"{k}: {v}" for k, v in headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def describe(self) -> str:
        first = next((s for s in self.steps if s), b"")
        return f"raw tls={self.tls} alpn={self.alpn} dest={self.dest} source={self.source} {first[:60]!r}"

    def send_to(self, addr, ca=None) -> Observation:
        addr = (self.dest or addr[0], addr[1])
        if addr[0] in ("0.0.0.0", "::"):
            addr = ("127.0.0.1" if addr[0] == "0.0.0.0" else "::1", addr[1])
        s = _connect(addr, self.source, self.timeout)
        try:
            if self.tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                if self.alpn:
                    ctx.set_alpn_protocols(self.alpn)
                try:
                    s = ctx.wrap_socket(s, server_hostname=self.tls if isinstance(self.tls, str) else None)
                except (ssl.SSLError, ConnectionResetError, OSError):
                    return Observation("raw", None, {}, b"", details="tls handshake failed", closed=True)
            c = _Conn(s)
            parts: list[Observation] = []
            for step in self.steps:
                if step is READ:
                    r = _read_response(c, self.method)
                    if r is None:
                        break
                    parts.append(r)
                else:
                    try:
                        s.sendall(step)
                    except (BrokenPipeError, ConnectionResetError):
                        break
            closed = None  # only observed when asked: an early EOF is a timing detail otherwise
            if self.check_close:
                if not c.eof:
                    s.settimeout(self.check_close)
                    try:
                        c._fill()
                    except (socket.timeout, TimeoutError):
                        pass
                closed = c.eof
            last = parts[-1] if parts else Observation("raw", None, {}, c.buf)
            return Observation("raw", last.status, last.headers, last.body, protocol=last.protocol,
                               parts=parts if len(parts) > 1 else [], closed=closed)
        finally:
            s.close()


@dataclass
class TcpIdleReq:
    """Send `data`, read the echo (one line), then stay idle: was the connection closed by
    the proxy within `wait` seconds? `elapsed` = seconds from going idle to the close."""
    data: bytes = b"hello\n"
    wait: float = 5.0
    listener: str | None = None

    def describe(self) -> str:
        return f"tcp-idle {self.data!r} wait={self.wait}"

    def send_to(self, addr, ca=None) -> Observation:
        with socket.create_connection(addr, timeout=5.0) as s:
            s.sendall(self.data)
            c = _Conn(s)
            line = c.read_until(b"\n")
            echoed = (line + b"\n") if line is not None else c.buf
            t0 = time.monotonic()
            s.settimeout(self.wait)
            try:
                while c._fill():
                    pass
            except (socket.timeout, TimeoutError):
                pass
            idle = time.monotonic() - t0
        return Observation("tcp", None, {}, echoed + c.buf, closed=c.eof, elapsed=idle)
