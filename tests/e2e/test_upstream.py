"""Upstream resilience: circuit breakers, connection limits, retries against breakers.

Outcomes are compared between Envoy and Trellis; where concurrency decides which request
overflows, the comparison is of the multiset of outcomes, not of each request.
"""
from __future__ import annotations

import collections
import concurrent.futures
import time

from harness import Req, bootstrap, http_listener, prefix, route, route_config, static_cluster, vhost
from harness.client import send

OVERFLOW_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"


def one_route(cluster: str, **action) -> dict:
    act = {"cluster": cluster, **action}
    return http_listener("in", route_config([vhost("all", [route(prefix("/"), cluster=cluster, action=act)])]))


def thresholds(**limits) -> dict:
    return {"thresholds": [{"priority": "DEFAULT", **limits}]}


def stat(proxy, name: str) -> int:
    """One counter from the admin's /stats (Envoy's `name: value` lines)."""
    _, text = proxy.admin("/stats")
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    raise AssertionError(f"{proxy.kind}: no stat {name}")


def burst(proxy, req: Req, n: int, stagger: float = 0.05):
    """n requests at once (each started `stagger` after the previous, so that the order in
    which they reach the proxy is known)."""
    addr = (proxy.host(), proxy.port())

    def one(i):
        time.sleep(i * stagger)
        return send(addr, req)

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def outcome(o) -> tuple:
    return (o.status, o.header("x-envoy-overloaded"), o.body if o.status == 503 else b"")


def test_connection_and_pending_breakers_overflow_with_503_uo(e2e):
    """max_connections 1, max_pending_requests 1: of four slow requests the first gets the
    connection, the second waits for it, the other two overflow at once."""
    up = e2e.upstream("slow")
    bs = bootstrap([one_route("slow")], [static_cluster(
        "slow", [up.endpoint], circuit_breakers=thresholds(max_connections=1, max_pending_requests=1))])
    slow = Req("/", headers=[("x-demo-delay-ms", "600")])

    def run(p):
        outcomes = collections.Counter(outcome(o) for o in burst(p, slow, 4))
        return outcomes, stat(p, "cluster.slow.upstream_rq_pending_overflow")

    results = e2e.run_each(bs, run)
    for label, (outcomes, overflow) in results.items():
        assert outcomes == {(200, None, b""): 2, (503, "true", OVERFLOW_BODY): 2}, (label, outcomes)
        assert overflow == 2, (label, overflow)


def test_max_requests_breaker_on_http2_upstream(e2e):
    """HTTP/2 multiplexes on one connection, so max_requests is the limit that bites."""
    up = e2e.upstream("h2")
    bs = bootstrap([one_route("h2")], [static_cluster(
        "h2", [up.endpoint], http2=True, circuit_breakers=thresholds(max_requests=1))])
    slow = Req("/", headers=[("x-demo-delay-ms", "600")])
    results = e2e.run_each(bs, lambda p: collections.Counter(outcome(o) for o in burst(p, slow, 3)))
    for label, outcomes in results.items():
        assert outcomes == {(200, None, b""): 1, (503, "true", OVERFLOW_BODY): 2}, (label, outcomes)


def test_breakers_free_up_after_the_burst(e2e):
    """max_requests is checked when a request gets its connection (as Envoy does): of three
    slow requests one is served, one waits as pending and is served after it, one overflows.
    Permits come back when responses end: later requests are served normally."""
    up = e2e.upstream("slow")
    bs = bootstrap([one_route("slow")], [static_cluster(
        "slow", [up.endpoint], circuit_breakers=thresholds(max_connections=1, max_pending_requests=1,
                                                           max_requests=1))])

    def run(p):
        first = collections.Counter(o.status for o in burst(p, Req("/", headers=[("x-demo-delay-ms", "400")]), 3))
        later = [send((p.host(), p.port()), Req("/")).status for _ in range(3)]
        return first, later

    for label, (first, later) in e2e.run_each(bs, run).items():
        assert first == {200: 2, 503: 1}, (label, first)
        assert later == [200, 200, 200], (label, later)


def test_retry_breaker_overflow_returns_the_failed_answer(e2e):
    """max_retries 0: a retriable 503 is not retried; the client gets the upstream's 503 and
    the retry overflow is counted."""
    up = e2e.upstream("flaky")
    bs = bootstrap([one_route("flaky", retry_policy={"retry_on": "5xx", "num_retries": 3})],
                   [static_cluster("flaky", [up.endpoint], circuit_breakers=thresholds(max_retries=0))])

    def run(p):
        o = send((p.host(), p.port()), Req("/", headers=[("x-demo-status", "503")]))
        return (o.status, o.service, stat(p, "cluster.flaky.upstream_rq_retry_overflow"),
                stat(p, "cluster.flaky.upstream_rq_total"))

    for label, got in e2e.run_each(bs, run).items():
        assert got == (503, "flaky/v1", 1, 1), (label, got)


def test_max_requests_per_connection_and_default_retries_differential(e2e):
    """max_requests_per_connection 1 closes each upstream connection after one request;
    requests keep succeeding (with and without keep-alive downstream)."""
    up = e2e.upstream("a")
    bs = bootstrap([one_route("a")], [static_cluster("a", [up.endpoint], typed_extension_protocol_options={
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": 1, "idle_timeout": "5s"},
            "explicit_http_config": {"http_protocol_options": {}},
        }})])
    obs = e2e.differential(bs, [Req("/one"), Req("/two"), Req("/three", proto="h2c")])
    assert [o.status for o in obs] == [200, 200, 200]
