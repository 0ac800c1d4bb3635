"""Requests, observations and the normalization applied before comparing them."""
from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_HOST = "e2e.test"  # sent as Host/:authority unless a request says otherwise

# --------------------------------------------------------------------------
# Normalization: the ONLY differences the differential comparison tolerates.
# Every entry hides a potential difference; keep the list short.
#
# response headers (HTTP and gRPC initial/trailing metadata):
#   date                           dropped (wall clock)
#   server                         dropped (product name)
#   x-envoy-upstream-service-time  value -> "<present>" (timing; presence still compared)
#   content-length                 value -> "<present>" when the body is a demo-app JSON
#                                  echo (its length follows the normalized fields below)
#   x-request-id                   UUID value -> "<uuid>" (random, generated per request by
#                                  the proxy, e.g. always_set_request_id_in_response); other
#                                  formats kept as is
# upstream view (the demo-app's JSON echo, also inside nested "calls"):
#   instance                       dropped (endpoint address; service/version are compared)
#   headers.x-request-id           UUID value -> "<uuid>" (random); other formats kept as is
#   headers.x-forwarded-for        ":port" suffixes removed from each element
# --------------------------------------------------------------------------
DROP_RESPONSE_HEADERS = {"date", "server"}
PRESENCE_ONLY_RESPONSE_HEADERS = {"x-envoy-upstream-service-time"}
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def normalize_response_headers(h: dict[str, list[str]], echo_body: bool) -> dict[str, list[str]]:
    out = {}
    for k, v in h.items():
        if k in DROP_RESPONSE_HEADERS:
            continue
        if k in PRESENCE_ONLY_RESPONSE_HEADERS or (echo_body and k == "content-length"):
            v = ["<present>"] * len(v)
        elif k == "x-request-id":
            v = ["<uuid>" if UUID_RE.match(x) else x for x in v]
        out[k] = v
    return dict(sorted(out.items()))


def _strip_port(addr: str) -> str:
    addr = addr.strip()
    if addr.startswith("["):
        return addr.split("]")[0] + "]"
    if addr.count(":") == 1:
        return addr.split(":")[0]
    return addr


def normalize_echo(e: Any) -> Any:
    if not isinstance(e, dict):
        return e
    e = dict(e)
    e.pop("instance", None)
    hs = dict(e.get("headers") or {})
    rid = hs.get("x-request-id")
    if isinstance(rid, str) and UUID_RE.match(rid):
        hs["x-request-id"] = "<uuid>"
    if "x-forwarded-for" in hs:
        hs["x-forwarded-for"] = ",".join(_strip_port(a) for a in hs["x-forwarded-for"].split(","))
    if "headers" in e:
        e["headers"] = hs
    if isinstance(e.get("calls"), list):
        e["calls"] = [normalize_echo(c) for c in e["calls"]]
    return e


def is_echo(j: Any) -> bool:
    return isinstance(j, dict) and {"service", "version", "headers", "path"} <= j.keys()


# -------------------------------------------------------------- requests

@dataclass
class Req:
    """An HTTP request. proto: "http1" | "h2c" (prior knowledge) | "h2tls" (ALPN, needs ca)."""
    path: str = "/"
    method: str = "GET"
    headers: list[tuple[str, str]] | dict = field(default_factory=list)
    body: bytes = b""
    host: str | None = DEFAULT_HOST
    proto: str = "http1"
    listener: str | None = None

    def describe(self) -> str:
        return f"{self.proto} {self.method} {self.path} host={self.host} headers={self.headers}"


@dataclass
class GrpcReq:
    method: str = "/trellis.demo.Echo/Echo"
    message: bytes = b"hello"
    metadata: list[tuple[str, str]] = field(default_factory=list)
    stream: bool = False  # server streaming (unary_stream)
    authority: str = DEFAULT_HOST
    listener: str | None = None

    def describe(self) -> str:
        return f"grpc {self.method} metadata={self.metadata} stream={self.stream}"


@dataclass
class TcpReq:
    data: bytes = b"hello\n"
    listener: str | None = None

    def describe(self) -> str:
        return f"tcp {self.data!r}"


@dataclass
class UpgradeReq:
    path: str = "/ws"
    upgrade: str = "websocket"
    payload: bytes = b"ping"
    host: str = DEFAULT_HOST
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    listener: str | None = None

    def describe(self) -> str:
        return f"upgrade {self.upgrade} {self.path}"


# ----------------------------------------------------------- observations

@dataclass
class Observation:
    kind: str                      # "http" | "grpc" | "tcp" | "upgrade"
    status: Any                    # HTTP status, gRPC code name, or None for tcp
    headers: dict[str, list[str]]  # response headers (lowercase) / gRPC initial metadata
    body: bytes = b""
    trailers: dict[str, list[str]] = field(default_factory=dict)
    details: str | None = None     # gRPC status message
    messages: list[bytes] = field(default_factory=list)  # gRPC response messages
    protocol: str | None = None    # downstream HTTP version negotiated
    # raw-socket exchanges (harness/raw.py): every response read on the connection, and
    # whether the proxy closed the connection (None = not observed). Both compared.
    parts: list["Observation"] = field(default_factory=list)
    closed: bool | None = None
    # wall-clock seconds the exchange took; NOT compared (for lower-bound timing assertions)
    elapsed: float | None = field(default=None, compare=False)

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    @property
    def echo(self) -> dict | None:
        """What the upstream demo-app saw, when it answered with its JSON echo."""
        j = self.json
        return j if is_echo(j) else None

    @property
    def service(self) -> str | None:
        """`service/version` of the demo-app that answered (x-demo-service)."""
        v = self.headers.get("x-demo-service")
        return v[0] if v else None

    def header(self, name: str) -> str | None:
        v = self.headers.get(name.lower())
        return ",".join(v) if v else None

    @property
    def upstream_path(self) -> str | None:
        return self.echo["path"] if self.echo else None

    @property
    def upstream_headers(self) -> dict[str, str]:
        return self.echo["headers"] if self.echo else {}

    def normalized(self) -> dict:
        echo = self.echo
        out: dict[str, Any] = {"kind": self.kind, "status": self.status}
        if self.protocol:
            out["protocol"] = self.protocol
        out["headers"] = normalize_response_headers(self.headers, echo is not None)
        if self.trailers:
            out["trailers"] = normalize_response_headers(self.trailers, False)
        if self.details is not None:
            out["details"] = self.details
        if self.messages:
            out["messages"] = self.messages
        out["body"] = normalize_echo(echo) if echo is not None else self.text
        if self.parts:
            out["parts"] = [p.normalized() for p in self.parts]
        if self.closed is not None:
            out["closed"] = self.closed
        return out


def _hdict(items) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in items:
        if isinstance(k, bytes):
            k = k.decode()
        if isinstance(v, bytes):
            v = v.decode(errors="replace")
        out.setdefault(k.lower(), []).append(v)
    return out


# ---------------------------------------------------------------- senders

def send_http(addr: tuple[str, int], req: Req, ca: str | None = None, timeout: float = 10.0) -> Observation:
    host, port = addr
    hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    headers = list(req.headers.items()) if isinstance(req.headers, dict) else list(req.headers)
    if req.host is not None:
        headers.append(("host", req.host))
    if req.proto == "http1":
        kw = dict(http1=True, http2=False, verify=False)  # no TLS; skips loading a CA bundle
        url = f"http://{hp}{req.path}"
    elif req.proto == "h2c":
        kw = dict(http1=False, http2=True, verify=False)
        url = f"http://{hp}{req.path}"
    elif req.proto == "h2tls":
        import ssl
        kw = dict(http1=True, http2=True, verify=ssl.create_default_context(cafile=ca) if ca else False)
        url = f"https://{hp}{req.path}"
    else:
        raise ValueError(req.proto)
    # trust_env=False: never pick up an environment proxy; traffic stays on loopback.
    with httpx.Client(trust_env=False, timeout=timeout, **kw) as c:
        # Build the URL by hand so that the path is sent exactly as written.
        r = c.request(req.method, httpx.URL(url), headers=headers, content=req.body or None)
        body = r.read()
    return Observation("http", r.status_code, _hdict(r.headers.multi_items()), body,
                       protocol=r.http_version)


def send_grpc(addr: tuple[str, int], req: GrpcReq, timeout: float = 10.0) -> Observation:
    import grpc

    host, port = addr
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options = [("grpc.enable_http_proxy", 0), ("grpc.default_authority", req.authority)]
    with grpc.insecure_channel(target, options=options) as ch:
        if req.stream:
            mc = ch.unary_stream(req.method, request_serializer=None, response_deserializer=None)
        else:
            mc = ch.unary_unary(req.method, request_serializer=None, response_deserializer=None)
        messages: list[bytes] = []
        try:
            if req.stream:
                call = mc(req.message, metadata=req.metadata, timeout=timeout)
                for m in call:
                    messages.append(m)
            else:
                m, call = mc.with_call(req.message, metadata=req.metadata, timeout=timeout)
                messages.append(m)
            code, details = call.code(), call.details()
        except grpc.RpcError as e:
            call = e
            code, details = e.code(), e.details()
        initial = _hdict(call.initial_metadata() or [])
        trailing = _hdict(call.trailing_metadata() or [])
    return Observation("grpc", code.name, initial, b"", trailers=trailing, details=details or "",
                       messages=messages)


def send_tcp(addr: tuple[str, int], req: TcpReq, timeout: float = 10.0) -> Observation:
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(req.data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    return Observation("tcp", None, {}, b"".join(chunks))


def _read_head(s: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def send_upgrade(addr: tuple[str, int], req: UpgradeReq, timeout: float = 10.0) -> Observation:
    lines = [f"GET {req.path} HTTP/1.1", f"Host: {req.host}", "Connection: Upgrade", f"Upgrade: {req.upgrade}"]
    if req.upgrade.lower() == "websocket":
        lines += ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in req.extra_headers]
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, rest = _read_head(s)
        status_line, *hl = head.decode(errors="replace").split("\r\n")
        status = int(status_line.split()[1]) if len(status_line.split()) > 1 else None
        headers = _hdict(l.split(":", 1) for l in hl if ":" in l)
        headers = {k: [v.strip() for v in vs] for k, vs in headers.items()}
        body = rest
        if status == 101:
            s.sendall(req.payload)
            while len(body) < len(req.payload):
                b = s.recv(65536)
                if not b:
                    break
                body += b
        else:
            n = int(headers.get("content-length", ["0"])[0])
            while len(body) < n:
                b = s.recv(65536)
                if not b:
                    break
                body += b
    return Observation("upgrade", status, headers, body)


def send(addr: tuple[str, int], req, ca: str | None = None) -> Observation:
    t0 = time.monotonic()
    o = _send(addr, req, ca)
    if o.elapsed is None:
        o.elapsed = time.monotonic() - t0
    return o


def _send(addr: tuple[str, int], req, ca: str | None = None) -> Observation:
    if hasattr(req, "send_to"):  # request types defined outside this module (harness/raw.py)
        return req.send_to(addr, ca)
    if isinstance(req, Req):
        return send_http(addr, req, ca=ca)
    if isinstance(req, GrpcReq):
        return send_grpc(addr, req)
    if isinstance(req, TcpReq):
        return send_tcp(addr, req)
    if isinstance(req, UpgradeReq):
        return send_upgrade(addr, req)
    raise TypeError(type(req))
