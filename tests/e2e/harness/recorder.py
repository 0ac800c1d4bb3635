"""An in-process HTTP/1.1 upstream that records what it received (for scenarios whose
effect is not visible in the downstream response, e.g. request mirroring).

`Recorder.requests` is a list of dicts {method, path, host, headers, body}; every request
is answered 200 with `x-demo-service: <name>/v1` and body "recorded".
Stopped by the `e2e` fixture teardown (`E2E.recorder`)."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder:
    def __init__(self, name: str, host: str = "127.0.0.1", tls=None):
        """tls: an ssl.SSLContext (server side) to serve HTTPS; the answer then carries
        `x-peer-uri-san` (the client certificate's URI SANs) and `x-sni` (the SNI received)."""
        self.name = name
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                with rec._lock:
                    rec.requests.append({
                        "method": self.command, "path": self.path, "host": self.headers.get("host"),
                        "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                out = b"recorded"
                self.send_response(200)
                self.send_header("x-demo-service", f"{rec.name}/v1")
                if tls is not None:
                    peer = self.connection.getpeercert() or {}
                    uris = [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]
                    self.send_header("x-peer-uri-san", ",".join(uris) or "-")
                    self.send_header("x-sni", rec.sni.get(self.connection.fileno(), "-"))
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, *a):
                pass

        self.sni: dict[int, str] = {}
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            def remember_sni(sock, server_name, _ctx):
                rec.sni[sock.fileno()] = server_name or "-"
            tls.sni_callback = remember_sni
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.host, self.port)

    def take(self, n: int, timeout: float = 3.0, settle: float = 0.0) -> list[dict]:
        """Wait until at least n requests arrived (or timeout), then `settle` seconds more for
        unexpected extra ones; return and clear them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= n:
                    break
            time.sleep(0.02)
        time.sleep(settle)
        with self._lock:
            out, self.requests = self.requests, []
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
