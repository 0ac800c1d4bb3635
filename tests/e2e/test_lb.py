"""Load balancing: endpoint weights, RANDOM, LEAST_REQUEST, hash policies (RING_HASH, MAGLEV;
header / cookie / source IP / query parameter), priorities with EDS-style health_status in a
STATIC load_assignment (failover, partial spill-over, panic) and locality-weighted balancing.

Distributions are asserted for each implementation separately against the expected shares
(`assert_weights`, tolerance justified next to each use); deterministic outcomes (which
endpoint a hash key maps to, stickiness) are compared between implementations exactly.
"""
from __future__ import annotations

import collections
import re
import threading
import time

import pytest

from harness import (RawReq, READ, Req, assert_weights, bootstrap, http_listener, prefix, route,
                     route_config, socket_address, vhost)
from harness.client import send


# ------------------------------------------------------------------ builders

def ep(upstream, weight: int | None = None, health: str | None = None) -> dict:
    """An LbEndpoint for a demo-app `upstream` (or a (host, port) pair)."""
    host, port = upstream.endpoint if hasattr(upstream, "endpoint") else upstream
    e: dict = {"endpoint": {"address": socket_address(port, host)}}
    if weight is not None:
        e["load_balancing_weight"] = weight
    if health is not None:
        e["health_status"] = health
    return e


def group(endpoints: list[dict], priority: int = 0, weight: int | None = None, zone: str | None = None) -> dict:
    """A LocalityLbEndpoints."""
    g: dict = {"lb_endpoints": endpoints}
    if priority:
        g["priority"] = priority
    if weight is not None:
        g["load_balancing_weight"] = weight
    if zone is not None:
        g["locality"] = {"region": "r1", "zone": zone}
    return g


def cluster(name: str, groups: list[dict], lb_policy: str = "ROUND_ROBIN", **extra) -> dict:
    c = {"name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": lb_policy,
         "load_assignment": {"cluster_name": name, "endpoints": groups}}
    c.update(extra)
    return c


def listener_to(name: str, **action) -> dict:
    return http_listener("in", route_config([vhost("all", [route(prefix("/"), cluster=name, action=action)])]))


def pool(e2e, n: int, name: str = "pool"):
    return [e2e.upstream(name, f"v{i}") for i in range(n)]


def addr(p) -> tuple[str, int]:
    return (p.host(), p.port())


# ------------------------------------------------------------ weights, RANDOM

@pytest.mark.slow
def test_weighted_round_robin_endpoint_weights(e2e):
    """Endpoint load_balancing_weight 1:3 under ROUND_ROBIN (Envoy's EDF schedule)."""
    a, b = pool(e2e, 2)
    bs = bootstrap([listener_to("pool")], [cluster("pool", [group([ep(a, 1), ep(b, 3)])])])
    # 400 requests; the schedule is deterministic in Envoy, but the starting point is not:
    # a binomial share at p=0.25 over 400 has sd ~2.2 points, 8 points is > 3.5 sd.
    for label, counter in e2e.distribution(bs, Req("/"), n=400).items():
        assert_weights(counter, {"pool/v0": 1, "pool/v1": 3}, tolerance=0.08, label=label)


@pytest.mark.slow
def test_random_lb_shares(e2e):
    """RANDOM over two equal endpoints: about half each; both are used."""
    a, b = pool(e2e, 2)
    bs = bootstrap([listener_to("pool")], [cluster("pool", [group([ep(a), ep(b)])], lb_policy="RANDOM")])
    # 400 requests, p=0.5: sd 2.5 points; 10 points is 4 sd.
    for label, counter in e2e.distribution(bs, Req("/"), n=400).items():
        assert_weights(counter, {"pool/v0": 1, "pool/v1": 1}, tolerance=0.10, label=label)


# --------------------------------------------------------------- LEAST_REQUEST

def _active_by_port(proxy, cluster_name: str) -> dict[int, int]:
    """`<cluster>::<host>:<port>::rq_active::<n>` lines of admin /clusters."""
    _, text = proxy.admin("/clusters")
    out = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster_name and parts[2] == "rq_active":
            out[int(parts[1].rsplit(":", 1)[1])] = int(parts[3])
    return out


def test_least_request_prefers_the_idle_endpoint(e2e):
    """One slow request keeps an endpoint busy (rq_active 1 in admin /clusters); with
    choice_count 20 the other endpoint is chosen unless all 20 samples hit the busy one
    ((1/2)^20 per request): the 20 requests sent meanwhile all go to the idle endpoint.
    Round robin would have sent half of them to the busy one."""
    a, b = pool(e2e, 2)
    by_port = {a.port: a.ident, b.port: b.ident}
    bs = bootstrap([listener_to("pool")], [cluster("pool", [group([ep(a), ep(b)])], lb_policy="LEAST_REQUEST",
                                                   least_request_lb_config={"choice_count": 20})])

    def run(p):
        slow: list = []
        t = threading.Thread(target=lambda: slow.append(
            send(addr(p), Req("/slow", headers=[("x-demo-delay-ms", "5000")]))), daemon=True)
        t.start()
        deadline = time.monotonic() + 4
        busy = None
        while busy is None and time.monotonic() < deadline:
            busy = next((port for port, n in _active_by_port(p, "pool").items() if n == 1), None)
            time.sleep(0.02)
        assert busy is not None, f"{p.kind}: the slow request never showed up in /clusters rq_active"
        fast = collections.Counter(send(addr(p), Req("/fast")).service for _ in range(20))
        still_busy = _active_by_port(p, "pool").get(busy)
        t.join(15)
        return by_port[busy], fast, still_busy, slow[0].service if slow else None

    for label, (busy, fast, still_busy, slow_service) in e2e.run_each(bs, run).items():
        assert still_busy == 1, (label, "precondition: the slow request was still in flight")
        assert slow_service == busy, label
        idle = ({a.ident, b.ident} - {busy}).pop()
        assert fast == {idle: 20}, (label, busy, fast)


# -------------------------------------------------------------- hash policies

def _key_map(e2e, bs, make_req, keys) -> dict[str, dict]:
    """For each implementation: key -> Counter of answering services (3 requests per key)."""
    def run(p):
        return {k: collections.Counter(send(addr(p), make_req(k)).service for _ in range(3)) for k in keys}
    return e2e.run_each(bs, run)


def _assert_sticky_and_spread(results: dict, idents: set[str]) -> None:
    for label, by_key in results.items():
        for k, c in by_key.items():
            assert len(c) == 1, (label, f"key {k} answered by several endpoints: {dict(c)}")
        used = {next(iter(c)) for c in by_key.values()}
        # 40 keys over 3 endpoints: an endpoint gets none with probability ~ 3*(2/3)^40 ~ 3e-7
        assert used == idents, (label, f"keys map to {used} only")


def _assert_same_mapping(e2e, results: dict) -> None:
    """The hash -> endpoint mapping is deterministic (the ring / table is built from the
    endpoint addresses): a key lands on the same endpoint through either implementation."""
    ref = {k: next(iter(c)) for k, c in results[e2e.reference.label].items()}
    mine = {k: next(iter(c)) for k, c in results[e2e.impl.label].items()}
    diff = {k: (ref[k], mine[k]) for k in ref if ref[k] != mine[k]}
    assert not diff, f"{len(diff)} keys map to other endpoints (envoy, {e2e.impl.label}): {diff}"


KEYS = [f"user-{i}" for i in range(40)]


@pytest.mark.parametrize("lb_policy", ["RING_HASH", "MAGLEV"])
def test_hash_by_header_is_sticky(e2e, lb_policy):
    """hash_policy header x-user: 100 requests with the same key hit one endpoint; 40 keys
    spread over all three endpoints; the mapping is Envoy's."""
    ups = pool(e2e, 3)
    bs = bootstrap([listener_to("pool", hash_policy=[{"header": {"header_name": "x-user"}}])],
                   [cluster("pool", [group([ep(u) for u in ups])], lb_policy=lb_policy)])

    def run(p):
        same = collections.Counter(send(addr(p), Req("/", headers=[("x-user", "alice")])).service
                                   for _ in range(100))
        keys = {k: collections.Counter(send(addr(p), Req("/", headers=[("x-user", k)])).service
                                       for _ in range(3)) for k in KEYS}
        return same, keys

    results = e2e.run_each(bs, run)
    for label, (same, _) in results.items():
        assert max(same.values()) >= 99, (label, dict(same))
    keys = {label: k for label, (_, k) in results.items()}
    _assert_sticky_and_spread(keys, {u.ident for u in ups})
    if len(results) > 1:
        _assert_same_mapping(e2e, keys)


def test_ring_hash_without_hash_key_spreads(e2e):
    """RING_HASH with a hash policy whose header is absent: Envoy picks a random endpoint
    (no hash), so traffic spreads over the endpoints."""
    ups = pool(e2e, 2)
    bs = bootstrap([listener_to("pool", hash_policy=[{"header": {"header_name": "x-user"}}])],
                   [cluster("pool", [group([ep(u) for u in ups])], lb_policy="RING_HASH")])
    # 200 requests, p=0.5: sd 3.5 points; 15 points is > 4 sd.
    for label, counter in e2e.distribution(bs, Req("/"), n=200).items():
        assert_weights(counter, {"pool/v0": 1, "pool/v1": 1}, tolerance=0.15, label=label)


def test_query_parameter_hash(e2e):
    """hash_policy query_parameter `user`: the same value sticks, values spread, Envoy's mapping."""
    ups = pool(e2e, 3)
    bs = bootstrap([listener_to("pool", hash_policy=[{"query_parameter": {"name": "user"}}])],
                   [cluster("pool", [group([ep(u) for u in ups])], lb_policy="RING_HASH")])
    results = _key_map(e2e, bs, lambda k: Req(f"/q?x=1&user={k}"), KEYS)
    _assert_sticky_and_spread(results, {u.ident for u in ups})
    if len(results) > 1:
        _assert_same_mapping(e2e, results)


def test_source_ip_hash(e2e):
    """hash_policy connection_properties.source_ip: one client address always reaches the
    same endpoint; different loopback sources (127.0.0.2..41) spread; Envoy's mapping."""
    ups = pool(e2e, 3)
    bs = bootstrap([listener_to("pool", hash_policy=[{"connection_properties": {"source_ip": True}}])],
                   [cluster("pool", [group([ep(u) for u in ups])], lb_policy="MAGLEV")])
    sources = [f"127.0.0.{i}" for i in range(2, 42)]

    def req(src):
        return RawReq([RawReq.get("/"), READ], source=src)

    def run(p):
        same = collections.Counter(send(addr(p), Req("/")).service for _ in range(50))
        by_src = {s: collections.Counter(send(addr(p), req(s)).header("x-demo-service") for _ in range(2))
                  for s in sources}
        return same, by_src

    results = e2e.run_each(bs, run)
    for label, (same, _) in results.items():
        assert len(same) == 1 and sum(same.values()) == 50, (label, dict(same))
    by_src = {label: s for label, (_, s) in results.items()}
    _assert_sticky_and_spread(by_src, {u.ident for u in ups})
    if len(results) > 1:
        _assert_same_mapping(e2e, by_src)


COOKIE_RE = re.compile(r'^sticky=("?)[0-9a-f]{16}\1; Max-Age=60; Path=/app; HttpOnly$')


def test_cookie_hash_generates_a_cookie_then_sticks(e2e):
    """hash_policy cookie {name sticky, ttl 60s, path /app}: without the cookie Envoy
    generates one (Set-Cookie: sticky="<16 hex>"; Max-Age=60; Path=/app; HttpOnly) and
    routes by its hash; sending it back reaches the same endpoint every time."""
    ups = pool(e2e, 3)
    bs = bootstrap([listener_to("pool", hash_policy=[{"cookie": {"name": "sticky", "ttl": "60s", "path": "/app"}}])],
                   [cluster("pool", [group([ep(u) for u in ups])], lb_policy="RING_HASH")])

    def run(p):
        first = send(addr(p), Req("/app/x"))
        set_cookie = first.headers.get("set-cookie", [])
        value = set_cookie[0].split(";")[0].split("=", 1)[1] if set_cookie else None
        back = collections.Counter(
            send(addr(p), Req("/app/y", headers=[("cookie", f"sticky={value}")])).service for _ in range(30))
        # a client that already has the cookie gets no new one
        again = send(addr(p), Req("/app/z", headers=[("cookie", f"sticky={value}")]))
        return first.status, first.service, set_cookie, back, again.headers.get("set-cookie")

    for label, (status, service, set_cookie, back, again) in e2e.run_each(bs, run).items():
        assert status == 200, label
        assert len(set_cookie) == 1 and COOKIE_RE.match(set_cookie[0]), (label, set_cookie)
        assert back == {service: 30}, (label, service, dict(back))
        assert again is None, (label, again)


def test_cookie_hash_with_client_cookie_is_sticky_and_spreads(e2e):
    """Client-supplied cookie values: each sticks to one endpoint, values spread, no
    Set-Cookie is generated, and the mapping is Envoy's."""
    ups = pool(e2e, 3)
    bs = bootstrap([listener_to("pool", hash_policy=[{"cookie": {"name": "sticky", "ttl": "60s"}}])],
                   [cluster("pool", [group([ep(u) for u in ups])], lb_policy="RING_HASH")])

    def run(p):
        out, cookies = {}, set()
        for k in KEYS:
            c = collections.Counter()
            for _ in range(3):
                o = send(addr(p), Req("/", headers=[("cookie", f"other=1; sticky={k}")]))
                c[o.service] += 1
                cookies.update(o.headers.get("set-cookie", []))
            out[k] = c
        return out, cookies

    results = e2e.run_each(bs, run)
    for label, (_, cookies) in results.items():
        assert not cookies, (label, cookies)
    maps = {label: m for label, (m, _) in results.items()}
    _assert_sticky_and_spread(maps, {u.ident for u in ups})
    if len(maps) > 1:
        _assert_same_mapping(e2e, maps)


# ----------------------------------------------------------------- priorities

def test_priority_failover_when_p0_is_unhealthy(e2e):
    """Both P0 endpoints health_status UNHEALTHY (STATIC load_assignment honours it): all
    traffic goes to the P1 endpoints (round robin between them)."""
    p0a, p0b, p1a, p1b = [e2e.upstream(f"p{i // 2}", f"v{i % 2}") for i in range(4)]
    bs = bootstrap([listener_to("pool")], [cluster("pool", [
        group([ep(p0a, health="UNHEALTHY"), ep(p0b, health="UNHEALTHY")]),
        group([ep(p1a), ep(p1b)], priority=1)])])
    for label, counter in e2e.distribution(bs, Req("/"), n=40).items():
        assert counter == {"p1/v0": 20, "p1/v1": 20}, (label, dict(counter))


def test_priority_healthy_p0_takes_everything(e2e):
    """Healthy P0 (health_status HEALTHY and unset): P1 gets nothing."""
    p0a, p0b, p1 = e2e.upstream("p0", "v0"), e2e.upstream("p0", "v1"), e2e.upstream("p1")
    bs = bootstrap([listener_to("pool")], [cluster("pool", [
        group([ep(p0a, health="HEALTHY"), ep(p0b)]), group([ep(p1)], priority=1)])])
    for label, counter in e2e.distribution(bs, Req("/"), n=40).items():
        assert counter == {"p0/v0": 20, "p0/v1": 20}, (label, dict(counter))


@pytest.mark.slow
def test_priority_partial_p0_health_spills_over(e2e):
    """P0 has 1 of 2 endpoints healthy: its health is 50% x overprovisioning 1.4 = 70%, so
    P0 gets 70% of the traffic and P1 the remaining 30%."""
    p0a, p0b, p1 = e2e.upstream("p0", "ok"), e2e.upstream("p0", "down"), e2e.upstream("p1")
    bs = bootstrap([listener_to("pool")], [cluster("pool", [
        group([ep(p0a), ep(p0b, health="UNHEALTHY")]), group([ep(p1)], priority=1)])])
    # 400 requests; the priority is picked at random per request: p=0.7 -> sd 2.3 points,
    # 8 points is > 3 sd.
    for label, counter in e2e.distribution(bs, Req("/"), n=400).items():
        assert_weights(counter, {"p0/ok": 70, "p1/v1": 30}, tolerance=0.08, label=label)


@pytest.mark.slow
def test_panic_threshold_all_unhealthy_spreads_over_all(e2e):
    """Every endpoint UNHEALTHY (0% < the 50% panic threshold): Envoy balances over all of
    them anyway (panic mode) instead of failing the requests."""
    ups = pool(e2e, 2)
    bs = bootstrap([listener_to("pool")], [cluster("pool", [group([ep(u, health="UNHEALTHY") for u in ups])])])
    for label, counter in e2e.distribution(bs, Req("/"), n=40).items():
        assert counter == {"pool/v0": 20, "pool/v1": 20}, (label, dict(counter))


def test_panic_threshold_zero_disables_panic(e2e):
    """healthy_panic_threshold 0%: with no healthy endpoint there is no panic mode; Envoy
    answers 503 "no healthy upstream"."""
    ups = pool(e2e, 2)
    bs = bootstrap([listener_to("pool")], [cluster(
        "pool", [group([ep(u, health="UNHEALTHY") for u in ups])],
        common_lb_config={"healthy_panic_threshold": {"value": 0}})])
    obs = e2e.differential(bs, [Req("/"), Req("/again")])
    assert [o.status for o in obs] == [503, 503]
    assert obs[0].text == "no healthy upstream"


# ------------------------------------------------------------------- locality

@pytest.mark.slow
def test_locality_weighted_lb(e2e):
    """common_lb_config.locality_weighted_lb_config: two localities of one endpoint each with
    load_balancing_weight 1 and 3 -> 25% / 75%."""
    a, b = e2e.upstream("zone-a"), e2e.upstream("zone-b")
    bs = bootstrap([listener_to("pool")], [cluster(
        "pool", [group([ep(a)], weight=1, zone="a"), group([ep(b)], weight=3, zone="b")],
        common_lb_config={"locality_weighted_lb_config": {}})])
    # 400 requests, p=0.25: sd 2.2 points; 8 points is > 3.5 sd.
    for label, counter in e2e.distribution(bs, Req("/"), n=400).items():
        assert_weights(counter, {"zone-a/v1": 1, "zone-b/v1": 3}, tolerance=0.08, label=label)
