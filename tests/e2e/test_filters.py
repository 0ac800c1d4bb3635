"""HTTP filter scenarios: fault injection (abort, delay, header-controlled, gRPC, per-route
override and disabling), CORS (preflight and simple requests), local rate limiting."""
import pytest

from harness import (CORS, CORS_POLICY, FAULT, FILTER_CONFIG, LOCAL_RATELIMIT, GrpcReq, Req, bootstrap,
                     http_filter, http_listener, percent, prefix, route, route_config, runtime_percent,
                     static_cluster, vhost)


def listener_with(filters, *routes, name="in", **vh):
    routes = list(routes) or [route(prefix("/"), cluster="a")]
    return http_listener(name, route_config([vhost("all", routes, **vh)]), http_filters=filters)


def fault(**cfg):
    return http_filter("envoy.filters.http.fault", FAULT, **cfg)


def abort(status=None, pct=100, **kw):
    a = {"percentage": percent(pct), **kw}
    if status is not None:
        a["http_status"] = status
    return a


def test_fault_abort_percentage(e2e):
    a, = e2e.upstreams("a")
    bs = bootstrap([listener_with([fault(abort=abort(503))], name="always"),
                    listener_with([fault(abort=abort(503, pct=0))], name="never")],
                   [static_cluster("a", [a.endpoint])])
    aborted, h2, passed = e2e.differential(bs, [
        Req("/", listener="always"), Req("/", listener="always", proto="h2c"), Req("/", listener="never")])
    assert (aborted.status, aborted.text, aborted.service) == (503, "fault filter abort", None)
    assert (h2.status, h2.text) == (503, "fault filter abort")
    assert passed.status == 200 and passed.service == "a/v1"


def test_fault_fixed_delay(e2e):
    a, = e2e.upstreams("a")
    delay = {"fixed_delay": "0.2s", "percentage": percent(100)}
    bs = bootstrap([listener_with([fault(delay=delay)])], [static_cluster("a", [a.endpoint])])
    [o] = e2e.differential(bs, [Req("/")])
    assert o.status == 200 and o.service == "a/v1"
    assert o.elapsed >= 0.2   # lower bound only


def test_fault_header_controlled_abort(e2e):
    a, = e2e.upstreams("a")
    bs = bootstrap([listener_with([fault(abort={"header_abort": {}, "percentage": percent(100)})])],
                   [static_cluster("a", [a.endpoint])])
    hdr, none, bad = e2e.differential(bs, [
        Req("/", headers=[("x-envoy-fault-abort-request", "429")]), Req("/"),
        Req("/", headers=[("x-envoy-fault-abort-request", "abc")])])
    assert (hdr.status, hdr.text) == (429, "fault filter abort")
    assert none.status == 200 and none.service == "a/v1"
    assert bad.status == 200 and bad.service == "a/v1"  # unparsable value: no abort


def test_fault_grpc_abort(e2e):
    g, = e2e.upstreams("grpc")
    bs = bootstrap([listener_with([fault(abort={"grpc_status": 14, "percentage": percent(100)})],
                                  route(prefix("/"), cluster="grpc"))],
                   [static_cluster("grpc", [g.endpoint], http2=True)])
    [o] = e2e.differential(bs, [GrpcReq()])
    assert (o.status, o.details) == ("UNAVAILABLE", "fault filter abort")
    assert "x-demo-service" not in o.headers


def test_fault_per_route_override_and_disable(e2e):
    a, = e2e.upstreams("a")
    override = {"@type": FAULT, "abort": abort(418)}
    disabled = {"@type": FILTER_CONFIG, "disabled": True,
                "config": {"@type": FAULT}}
    bs = bootstrap([listener_with(
        [fault(abort=abort(503))],
        route(prefix("/override"), cluster="a", typed_per_filter_config={"envoy.filters.http.fault": override}),
        route(prefix("/disabled"), cluster="a", typed_per_filter_config={"envoy.filters.http.fault": disabled}),
        route(prefix("/"), cluster="a"),
    )], [static_cluster("a", [a.endpoint])])
    ov, dis, dflt = e2e.differential(bs, [Req("/override"), Req("/disabled"), Req("/")])
    assert (ov.status, ov.text) == (418, "fault filter abort")
    assert dis.status == 200 and dis.service == "a/v1"
    assert (dflt.status, dflt.text) == (503, "fault filter abort")


CORS_FILTER = [http_filter("envoy.filters.http.cors", CORS)]


def cors_listener(a):
    policy = {"@type": CORS_POLICY,
              "allow_origin_string_match": [{"exact": "https://ok.test"}, {"suffix": ".trusted.test"}],
              "allow_methods": "GET, POST, PUT", "allow_headers": "x-custom, content-type",
              "expose_headers": "x-exposed", "max_age": "600"}
    return bootstrap([listener_with(CORS_FILTER, route(prefix("/"), cluster="a"),
                                    typed_per_filter_config={"envoy.filters.http.cors": policy})],
                     [static_cluster("a", [a.endpoint])])


def preflight(origin, method="PUT"):
    return Req("/res", method="OPTIONS", headers=[("origin", origin), ("access-control-request-method", method),
                                                  ("access-control-request-headers", "x-custom")])


def test_cors_preflight(e2e):
    a, = e2e.upstreams("a")
    ok, suffix, denied, plain_options = e2e.differential(cors_listener(a), [
        preflight("https://ok.test"), preflight("https://x.trusted.test"), preflight("https://evil.test"),
        Req("/res", method="OPTIONS")])
    assert ok.status == 200 and ok.service is None            # answered by the filter
    assert ok.header("access-control-allow-origin") == "https://ok.test"
    assert ok.header("access-control-allow-methods") == "GET, POST, PUT"
    assert ok.header("access-control-allow-headers") == "x-custom, content-type"
    assert ok.header("access-control-max-age") == "600"
    assert suffix.header("access-control-allow-origin") == "https://x.trusted.test"
    assert denied.header("access-control-allow-origin") is None   # not a preflight response: goes upstream
    assert denied.service == "a/v1"
    assert plain_options.service == "a/v1" and plain_options.echo["method"] == "OPTIONS"


def test_cors_simple_request(e2e):
    a, = e2e.upstreams("a")
    ok, denied, no_origin = e2e.differential(cors_listener(a), [
        Req("/res", headers=[("origin", "https://ok.test")]), Req("/res", headers=[("origin", "https://evil.test")]),
        Req("/res")])
    assert ok.status == 200 and ok.service == "a/v1"
    assert ok.header("access-control-allow-origin") == "https://ok.test"
    assert ok.header("access-control-expose-headers") == "x-exposed"
    assert denied.status == 200 and denied.header("access-control-allow-origin") is None
    assert no_origin.header("access-control-allow-origin") is None


def test_local_rate_limit_token_bucket(e2e):
    a, = e2e.upstreams("a")
    rl = http_filter("envoy.filters.http.local_ratelimit", LOCAL_RATELIMIT, stat_prefix="e2e_rl",
                     token_bucket={"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "3600s"},
                     filter_enabled=runtime_percent(100, "e2e.rl_enabled"),
                     filter_enforced=runtime_percent(100, "e2e.rl_enforced"),
                     response_headers_to_add=[{"header": {"key": "x-limited", "value": "yes"}}])
    bs = bootstrap([listener_with([rl])], [static_cluster("a", [a.endpoint])])
    obs = e2e.differential(bs, [Req("/")] * 4)
    assert [o.status for o in obs] == [200, 200, 429, 429]
    assert obs[2].text == "local_rate_limited" and obs[2].service is None
    assert obs[2].header("x-limited") == "yes" and obs[0].header("x-limited") is None
