"""Resilience: retries (5xx, retriable status codes, per-try timeout, connect failure with the
previous_hosts predicate), outlier detection (ejection, readmission), active HTTP and TCP
health checks, and real faults (an upstream killed mid-response, an upstream that never
answers, a connection reset, a closed port) — plus "memory returns to baseline" for trellis.

Attempts are counted where they land (in-process upstreams below count every request they
receive), so retries are compared between implementations exactly. Response flags are read
from a file access log (`%RESPONSE_CODE% %RESPONSE_FLAGS%`), one log file per implementation.
"""
from __future__ import annotations

import collections
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import (READ, RawReq, Req, bootstrap, free_port, http_listener, prefix, route,
                     route_config, socket_address, static_cluster, vhost, wait_port)
from harness.client import send
from harness.procs import demo_app_cmd

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
TIMEOUT_BODY = "upstream request timeout"


# ------------------------------------------------------------ in-process upstreams

class Switch:
    """An HTTP/1.1 upstream whose answers are switched at run time: `status` for every
    request (or the request's `x-demo-status`), `health` for GET /healthz, `delay` seconds
    before answering. Counts what it receives (`hits`); answers carry x-demo-service."""

    def __init__(self, name: str, status: int = 200, health: int = 200, delay: float = 0.0):
        self.name, self.status, self.health, self.delay = name, status, health, delay
        self._lock = threading.Lock()
        self.paths: list[str] = []
        self.health_checks = 0
        sw = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                if self.path == "/healthz":
                    with sw._lock:
                        sw.health_checks += 1
                    status = sw.health
                else:
                    with sw._lock:
                        sw.paths.append(self.path)
                    status = int(self.headers.get("x-demo-status") or sw.status)
                    if sw.delay:
                        time.sleep(sw.delay)
                body = f"{sw.name}: {status}".encode()
                try:
                    self.send_response(status)
                    self.send_header("x-demo-service", f"{sw.name}/v1")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the proxy gave up on this attempt (per-try timeout)

            do_POST = do_GET

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = ("127.0.0.1", self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def ident(self) -> str:
        return f"{self.name}/v1"

    def hits(self) -> int:
        with self._lock:
            return len(self.paths)

    def reset(self) -> None:
        with self._lock:
            self.paths.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RawServer:
    """A TCP server misbehaving at the socket level. mode "silent": accept, read, never
    answer (connections are kept open); "reset": read the request, then close with RST
    (SO_LINGER 0)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = ("127.0.0.1", self.sock.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c: socket.socket):
        c.settimeout(5)
        try:
            c.recv(65536)
        except OSError:
            pass
        if self.mode == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        else:
            self._held.append(c)

    def stop(self):
        self._stop = True
        self.sock.close()
        for c in self._held:
            c.close()


def switch(e2e, name: str, **kw) -> Switch:
    s = Switch(name, **kw)
    e2e._closers.append(s.stop)
    return s


def raw_server(e2e, mode: str) -> RawServer:
    s = RawServer(mode)
    e2e._closers.append(s.stop)
    return s


# ------------------------------------------------------------------ helpers

def one_route(cluster: str, logs: list | None = None, **action) -> dict:
    hcm_extra = {"access_log": logs} if logs else None
    return http_listener("in", route_config([vhost("all", [route(prefix("/"), cluster=cluster, action=action)])]),
                         hcm_extra=hcm_extra)


def addr(p) -> tuple[str, int]:
    return (p.host(), p.port())


def stat(proxy, name: str) -> int | None:
    """One value of admin /stats (`name: value` lines); None when the proxy has no such stat."""
    _, text = proxy.admin("/stats")
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return None


def wait_for(predicate, timeout: float, what: str, step: float = 0.05):
    """Liveness deadline: poll until predicate() is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(step)


def flags_log(path) -> list[dict]:
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(path),
        "log_format": {"text_format_source": {"inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}}}]


def run_logged(e2e, make_bootstrap, fn, lines: int) -> dict[str, tuple]:
    """Per implementation: start it with make_bootstrap(log_path), call fn(proxy), stop it
    (Envoy flushes its file logs on exit; it may hold them in a buffer before), then read
    the log (`lines` lines expected, liveness deadline). label -> (fn result, log lines)."""
    out = {}
    for impl in e2e.implementations():
        path = e2e.log_dir / f"flags-{impl.label.replace('#', '_')}.log"
        proxy = e2e.start_proxy(impl.kind, make_bootstrap(path))
        try:
            result = fn(proxy)
            time.sleep(0.2)  # settle: the last stream may still be finishing its log entry
        finally:
            proxy.stop()

        def read():
            try:
                got = path.read_text().splitlines()
            except OSError:
                return None
            return got if len(got) >= lines else None
        out[impl.label] = (result, wait_for(read, 5, f"{impl.label}: {lines} access log lines in {path}"))
    return out


def same_everywhere(results: dict) -> object:
    """Every implementation gave the same result; return it."""
    values = list(results.values())
    for label, v in results.items():
        assert v == values[0], f"{label}: {v!r} != {list(results)[0]}: {values[0]!r}"
    return values[0]


# ------------------------------------------------------------------ retries

def test_retry_on_5xx_counts_attempts_at_the_upstream(e2e):
    """retry_on 5xx, num_retries 2, upstream always 503: three attempts reach the upstream,
    the client gets the last 503."""
    up = switch(e2e, "flaky", status=503)
    bs = bootstrap([one_route("flaky", retry_policy={"retry_on": "5xx", "num_retries": 2})],
                   [static_cluster("flaky", [up.endpoint])])

    def run(p):
        up.reset()
        o = send(addr(p), Req("/r"))
        return o.status, o.service, o.text, wait_for(lambda: up.hits() >= 3 and up.hits(), 3, "3 attempts")

    got = same_everywhere(e2e.run_each(bs, run))
    assert got == (503, "flaky/v1", "flaky: 503", 3)


def test_retriable_status_codes(e2e):
    """retry_on retriable-status-codes with [409]: a 409 is retried twice (3 attempts), a 500
    is not retried (1 attempt), a 200 needs 1 attempt."""
    up = switch(e2e, "s")
    bs = bootstrap([one_route("s", retry_policy={"retry_on": "retriable-status-codes", "num_retries": 2,
                                                 "retriable_status_codes": [409]})],
                   [static_cluster("s", [up.endpoint])])

    def run(p):
        out = []
        for status in ("409", "500", "200"):
            up.reset()
            o = send(addr(p), Req("/c", headers=[("x-demo-status", status)]))
            time.sleep(0.2)  # settle: an (unexpected) further attempt would be counted
            out.append((status, o.status, up.hits()))
        return out

    got = same_everywhere(e2e.run_each(bs, run))
    assert got == [("409", 409, 3), ("500", 500, 1), ("200", 200, 1)]


def test_per_try_timeout_retries_then_504(e2e):
    """A slow upstream (1 s), per_try_timeout 0.2 s, num_retries 1: two attempts, then 504
    "upstream request timeout"."""
    up = switch(e2e, "slow", delay=1.0)
    bs = bootstrap([one_route("slow", timeout="10s",
                              retry_policy={"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.2s"})],
                   [static_cluster("slow", [up.endpoint])])

    def run(p):
        up.reset()
        o = send(addr(p), Req("/slow"))
        return o.status, o.text, up.hits(), stat(p, "cluster.slow.upstream_rq_total")

    got = same_everywhere(e2e.run_each(bs, run))
    assert got == (504, TIMEOUT_BODY, 2, 2)


def test_retry_stats(e2e):
    """cluster.<name>.upstream_rq_retry counts retries: 2 for an always-503 upstream with
    num_retries 2 (upstream_rq_total 3)."""
    up = switch(e2e, "flaky", status=503)
    bs = bootstrap([one_route("flaky", retry_policy={"retry_on": "5xx", "num_retries": 2})],
                   [static_cluster("flaky", [up.endpoint])])

    def run(p):
        o = send(addr(p), Req("/r"))
        wait_for(lambda: up.hits() >= 3, 3, "3 attempts")
        up.reset()
        return (o.status, stat(p, "cluster.flaky.upstream_rq_retry"), stat(p, "cluster.flaky.upstream_rq_total"))

    for label, got in e2e.run_each(bs, run).items():
        assert got == (503, 2, 3), (label, got)


def test_retry_connect_failure_moves_to_another_host(e2e):
    """One endpoint's port is closed, the other is healthy; retry_on connect-failure with the
    previous_hosts predicate: every request ends 200 at the healthy endpoint."""
    good = e2e.upstream("good")
    dead = ("127.0.0.1", free_port())
    bs = bootstrap([one_route("pool", retry_policy={
        "retry_on": "connect-failure", "num_retries": 2, "host_selection_retry_max_attempts": 5,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]})],
        [static_cluster("pool", [dead, good.endpoint], connect_timeout="0.5s")])
    # Not e2e.differential: on a retried attempt Envoy sends x-envoy-expected-rq-timeout-ms =
    # the time left (15000 minus the elapsed ms), a timing value that cannot be compared.
    got = same_everywhere(e2e.run_each(bs, lambda p: [(o.status, o.service)
                                                      for o in (send(addr(p), Req(f"/{i}")) for i in range(10))]))
    assert got == [(200, "good/v1")] * 10


# ------------------------------------------------------------ outlier detection

# Envoy merges health-flag-only host updates within common_lb_config.update_merge_window
# (default 1 s): a host failing its checks keeps getting traffic for up to a second after
# membership_healthy dropped. 0 applies every update at once, so outcomes are deterministic.
NO_MERGE = {"update_merge_window": "0s"}


def outlier(base_ejection_time: str) -> dict:
    return {"consecutive_5xx": 3, "interval": "0.5s", "base_ejection_time": base_ejection_time,
            "max_ejection_percent": 100}


def eject_bad(p, bad: Switch) -> collections.Counter:
    """Round robin over {good, bad}: send until `bad` has failed 3 times in a row."""
    first = collections.Counter()
    for _ in range(6):
        o = send(addr(p), Req("/"))
        first[(o.status, o.service)] += 1
    time.sleep(0.3)  # settle: the ejection reaches the worker threads asynchronously in Envoy
    return first


def test_outlier_detection_ejects_the_failing_endpoint(e2e):
    """consecutive_5xx 3: after the bad endpoint's third 503 it is ejected and all traffic
    goes to the good one (base_ejection_time 30 s: no readmission during the test)."""
    good = e2e.upstream("good")
    bad = switch(e2e, "bad", status=503)
    bs = bootstrap([one_route("pool")],
                   [static_cluster("pool", [good.endpoint, bad.endpoint], outlier_detection=outlier("30s"), common_lb_config=NO_MERGE)])

    def run(p):
        bad.status = 503
        bad.reset()
        first = eject_bad(p, bad)
        after = collections.Counter(send(addr(p), Req("/")).service for _ in range(20))
        return first, after, bad.hits()

    for label, (first, after, bad_hits) in e2e.run_each(bs, run).items():
        assert first == {(200, "good/v1"): 3, (503, "bad/v1"): 3}, (label, first)
        assert after == {"good/v1": 20}, (label, after)
        assert bad_hits == 3, (label, bad_hits)


def test_outlier_detection_stats(e2e):
    """After one consecutive-5xx ejection: outlier_detection.ejections_active 1,
    ejections_enforced_total 1, ejections_enforced_consecutive_5xx 1."""
    good = e2e.upstream("good")
    bad = switch(e2e, "bad", status=503)
    bs = bootstrap([one_route("pool")],
                   [static_cluster("pool", [good.endpoint, bad.endpoint], outlier_detection=outlier("30s"), common_lb_config=NO_MERGE)])
    names = ["ejections_active", "ejections_enforced_total", "ejections_enforced_consecutive_5xx"]

    def run(p):
        eject_bad(p, bad)
        return {n: stat(p, f"cluster.pool.outlier_detection.{n}") for n in names}

    for label, got in e2e.run_each(bs, run).items():
        assert got == dict.fromkeys(names, 1), (label, got)


def test_outlier_ejected_endpoint_is_readmitted(e2e):
    """base_ejection_time 1 s, interval 0.5 s: once ejected the bad endpoint gets nothing;
    made healthy, it is readmitted when its ejection time is over and receives traffic again."""
    good = e2e.upstream("good")
    bad = switch(e2e, "bad", status=503)
    bs = bootstrap([one_route("pool")],
                   [static_cluster("pool", [good.endpoint, bad.endpoint], outlier_detection=outlier("1s"), common_lb_config=NO_MERGE)])

    def run(p):
        bad.status = 503
        bad.reset()
        first = eject_bad(p, bad)
        bad.status = 200

        def back():
            return send(addr(p), Req("/")).service == "bad/v1"
        wait_for(back, 10, f"{p.kind}: the ejected endpoint receives traffic again", step=0.1)
        later = collections.Counter(send(addr(p), Req("/")).service for _ in range(10))
        return first, later

    for label, (first, later) in e2e.run_each(bs, run).items():
        assert first == {(200, "good/v1"): 3, (503, "bad/v1"): 3}, (label, first)
        assert later == {"good/v1": 5, "bad/v1": 5}, (label, later)


# ------------------------------------------------------------ active health checks

def hc(**kind) -> list[dict]:
    return [{"timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
             "no_traffic_healthy_interval": "0.2s", "unhealthy_threshold": 1, "healthy_threshold": 1, **kind}]


def membership(p, cluster: str, n: int):
    return wait_for(lambda: stat(p, f"cluster.{cluster}.membership_healthy") == n, 10,
                    f"{p.kind}: membership_healthy of {cluster} == {n}")


def test_active_http_health_check_marks_unhealthy_and_back(e2e):
    """http_health_check path /healthz: the endpoint whose /healthz answers 503 gets no
    traffic; when it answers 200 again it is healthy and round robin uses it again."""
    good = e2e.upstream("good")  # demo-app: /healthz -> 200
    flappy = switch(e2e, "flappy", health=503)
    bs = bootstrap([one_route("pool")], [static_cluster(
        "pool", [good.endpoint, flappy.endpoint], health_checks=hc(http_health_check={"path": "/healthz"}),
        common_lb_config=NO_MERGE)])

    def run(p):
        flappy.health = 503
        membership(p, "pool", 1)
        down = collections.Counter(send(addr(p), Req("/")).service for _ in range(20))
        flappy.health = 200
        membership(p, "pool", 2)
        up = collections.Counter(send(addr(p), Req("/")).service for _ in range(20))
        flappy.health = 503
        membership(p, "pool", 1)
        again = collections.Counter(send(addr(p), Req("/")).service for _ in range(10))
        return down, up, again

    for label, (down, up, again) in e2e.run_each(bs, run).items():
        assert down == {"good/v1": 20}, (label, down)
        assert up == {"good/v1": 10, "flappy/v1": 10}, (label, up)
        assert again == {"good/v1": 10}, (label, again)


def test_tcp_health_check_against_a_closed_port(e2e):
    """tcp_health_check (connect only): the endpoint on a closed port is unhealthy, all
    requests go to the other one; membership_healthy 1 of membership_total 2."""
    good = e2e.upstream("good")
    dead = ("127.0.0.1", free_port())
    bs = bootstrap([one_route("pool")], [static_cluster(
        "pool", [dead, good.endpoint], health_checks=hc(tcp_health_check={}), common_lb_config=NO_MERGE)])

    def run(p):
        membership(p, "pool", 1)
        served = collections.Counter((o.status, o.service) for o in (send(addr(p), Req("/")) for _ in range(20)))
        return served, stat(p, "cluster.pool.membership_total")

    got = same_everywhere(e2e.run_each(bs, run))
    assert got == ({(200, "good/v1"): 20}, 2)


# ------------------------------------------------------------------ real faults

DYING_UPSTREAM = r"""
import socket, sys, threading, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
def serve(c):
    if not c.recv(65536):
        return  # a readiness probe (wait_port)
    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000000\r\n"
              b"x-demo-service: dying/v1\r\n\r\n" + b"a" * 65536)
    time.sleep(60)  # the rest of the body never comes: the test kills this process
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def killed_mid_response(e2e):
    """Per implementation: (status line, body truncated?, proxy alive?, service of the next
    answer), access log lines."""
    port = free_port()

    def run(p):
        dying = e2e.registry.spawn("dying", [sys.executable, "-c", DYING_UPSTREAM, str(port)])
        wait_port("127.0.0.1", port, proc=dying)
        s = socket.create_connection(addr(p), timeout=10)
        try:
            s.sendall(RawReq.get("/big"))
            buf = b""
            while b"\r\n\r\n" not in buf or len(buf.partition(b"\r\n\r\n")[2]) < 1024:
                chunk = s.recv(65536)
                assert chunk, f"{p.kind}: closed before the body started"
                buf += chunk
            dying.stop()  # SIGTERM/SIGKILL the upstream's process group mid-body
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        head, _, body = buf.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n")[0].decode()
        # a new upstream process on the same address
        fresh = e2e.registry.spawn("fresh", [*demo_app_cmd(),
                                             "--service", "fresh", "--version", "v1", "--http-port", str(port),
                                             "--listen-addr", "127.0.0.1"])
        try:
            wait_port("127.0.0.1", port, proc=fresh)
            nxt = wait_for(lambda: (lambda o: o if o.status == 200 else None)(send(addr(p), Req("/next"))), 5,
                           f"{p.kind}: a request served by the new upstream")
        finally:
            fresh.stop()
        return status_line, 1024 <= len(body) < 1000000, p.proc.alive(), nxt.service

    results = run_logged(e2e, lambda path: bootstrap(
        [one_route("dying", flags_log(path))], [static_cluster("dying", [("127.0.0.1", port)])]), run, lines=2)
    return results


def test_upstream_killed_mid_response(e2e):
    """An upstream process sends headers and 64 KiB of a 1 MB body, then is killed: the client
    gets the 200 head, a truncated body and a closed connection; the proxy stays up and serves
    the next request to a new upstream process on the same address."""
    got = same_everywhere({label: r for label, (r, _) in killed_mid_response(e2e).items()})
    assert got == ("HTTP/1.1 200 OK", True, True, "fresh/v1")


def test_upstream_killed_mid_response_flags(e2e):
    """The same fault in the access log: `200 UPE` for the truncated response, then `200 -`."""
    got = same_everywhere({label: log for label, (_, log) in killed_mid_response(e2e).items()})
    assert got == ["200 UPE", "200 -"]


def test_upstream_that_never_answers_times_out_504_ut(e2e):
    """The upstream accepts and reads but never answers; route timeout 0.5 s: 504 "upstream
    request timeout" (UT), well within the client's 10 s deadline."""
    silent = raw_server(e2e, "silent")

    def run(p):
        o = send(addr(p), Req("/hang"))
        return o.status, o.text, o.header("content-type")

    results = run_logged(e2e, lambda path: bootstrap(
        [one_route("silent", flags_log(path), timeout="0.5s")], [static_cluster("silent", [silent.endpoint])]),
        run, lines=1)
    got = same_everywhere(results)
    assert got == ((504, TIMEOUT_BODY, "text/plain"), ["504 UT"])


def test_connection_reset_by_the_upstream_is_503(e2e):
    """The upstream reads the request and closes with RST (SO_LINGER 0): 503 with Envoy's
    "reset before headers" body; the flag is UC (upstream connection termination)."""
    rst = raw_server(e2e, "reset")

    def run(p):
        o = send(addr(p), Req("/rst"))
        return o.status, o.text

    results = run_logged(e2e, lambda path: bootstrap(
        [one_route("rst", flags_log(path))], [static_cluster("rst", [rst.endpoint])]), run, lines=1)
    (status, text), log = same_everywhere(results)
    assert status == 503 and text.startswith("upstream connect error or disconnect/reset before headers")
    assert log == ["503 UC"]


def test_closed_port_is_503_uf(e2e):
    """Nothing listens on the endpoint's port: 503, flag UF (upstream connection failure),
    the same body from both."""
    dead = ("127.0.0.1", free_port())

    def run(p):
        o = send(addr(p), Req("/"))
        return o.status, o.text

    results = run_logged(e2e, lambda path: bootstrap(
        [one_route("dead", flags_log(path))], [static_cluster("dead", [dead], connect_timeout="0.5s")]),
        run, lines=1)
    (status, text), log = same_everywhere(results)
    assert status == 503 and text.startswith("upstream connect error or disconnect/reset before headers")
    assert log == ["503 UF"]


# ------------------------------------------------------------------ memory

def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_memory_returns_to_baseline(e2e):
    """trellis only: RSS after 2000 requests (successes with 16 KiB bodies, 503s from a
    closed port, 503s relayed from the upstream, 404 no-route), each on a new connection,
    stays below the baseline measured after a warm-up + 20 MB. The bound is generous on
    purpose (debug build, allocator arenas and per-thread caches that keep freed memory
    mapped); it still catches a leak of >= 10 KB per request, e.g. a leaked connection or body."""
    if e2e.impl.kind != "trellis":
        pytest.skip("RSS bound is checked for the trellis variant only")
    good = e2e.upstream("good")
    dead = ("127.0.0.1", free_port())
    bs = bootstrap([http_listener("in", route_config([vhost("all", [
        route(prefix("/ok"), cluster="good"),
        route(prefix("/dead"), cluster="dead")])]))],
        [static_cluster("good", [good.endpoint]), static_cluster("dead", [dead], connect_timeout="0.5s")])
    proxy = e2e.start_proxy("trellis", bs)
    # the proxy's pid, from the harness's process registry
    proc = next(pr for pr in e2e.registry.procs if pr.name.startswith("trellis") and pr.alive())
    pid = proc.popen.pid
    reqs = [Req("/ok", headers=[("x-demo-body-size", "16384")]), Req("/dead"),
            Req("/ok/fail", headers=[("x-demo-status", "503")]), Req("/none")]
    want = [200, 503, 503, 404]

    def batch(n):
        import concurrent.futures
        def one(i):
            return send(addr(proxy), reqs[i % 4]).status
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            statuses = list(ex.map(one, range(n)))
        assert statuses == [want[i % 4] for i in range(n)]

    batch(200)  # warm-up: pools, thread caches, lazily built state
    baseline = rss_kb(pid)
    batch(2000)
    time.sleep(0.5)
    after = rss_kb(pid)
    assert proc.alive()
    print(f"trellis RSS: {baseline} kB after warm-up, {after} kB after 2000 requests")
    assert after < baseline + 20 * 1024, f"RSS grew from {baseline} kB to {after} kB over 2000 requests"
