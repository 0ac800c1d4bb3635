"""Route scenarios: cluster_header, cluster_not_found_response_code, route timeouts,
request mirroring, runtime_fraction, gRPC match, case-insensitive and path-separated
prefix matching, regex_rewrite with capture groups."""
import pytest

from harness.netinfo import local_address
from harness.session import DifferentialMismatch, _diff
from harness import (GrpcReq, Req, bootstrap, http_listener, path, prefix, route, route_config,
                     static_cluster, vhost)


def clusters_for(*ups, http2=()):
    return [static_cluster(u.service, [u.endpoint], http2=u.service in http2) for u in ups]


def one_vhost(*routes, **vh):
    return http_listener("in", route_config([vhost("all", list(routes), **vh)]))


def test_cluster_header_and_cluster_not_found(e2e):
    ups = e2e.upstreams("a", "b")
    bs = bootstrap([one_vhost(
        route(prefix("/nf"), action={"cluster_header": "x-cluster", "cluster_not_found_response_code": "NOT_FOUND"}),
        route(prefix("/"), action={"cluster_header": "x-cluster"}),
    )], clusters_for(*ups))
    a, b, missing, unknown, unknown_nf = e2e.differential(bs, [
        Req("/", headers=[("x-cluster", "a")]), Req("/", headers=[("x-cluster", "b")]), Req("/"),
        Req("/", headers=[("x-cluster", "nope")]), Req("/nf", headers=[("x-cluster", "nope")])])
    assert (a.service, b.service) == ("a/v1", "b/v1")
    assert a.upstream_headers["x-cluster"] == "a"
    assert (missing.status, missing.service) == (503, None)
    assert (unknown.status, unknown.service) == (503, None)
    assert (unknown_nf.status, unknown_nf.service) == (404, None)


def test_route_timeout_and_disabled_timeout(e2e):
    a, = e2e.upstreams("a")
    bs = bootstrap([one_vhost(
        route(prefix("/short"), cluster="a", action={"timeout": "0.3s"}),
        route(prefix("/none"), cluster="a", action={"timeout": "0s"}),
    )], clusters_for(a))
    slow = [("x-demo-delay-ms", "900")]
    timed_out, fast, unlimited = e2e.differential(bs, [
        Req("/short", headers=slow), Req("/short"), Req("/none", headers=slow)])
    assert (timed_out.status, timed_out.text) == (504, "upstream request timeout")
    assert timed_out.elapsed >= 0.3
    assert fast.status == 200
    assert unlimited.status == 200 and unlimited.elapsed >= 0.9


def test_request_mirror_policy(e2e):
    a, = e2e.upstreams("a")
    shadow = e2e.recorder("shadow")
    bs = bootstrap([one_vhost(
        route(prefix("/off"), cluster="a", action={"request_mirror_policies": [
            {"cluster": "shadow", "runtime_fraction": {"default_value": {"numerator": 0}}}]}),
        route(prefix("/"), cluster="a", action={"request_mirror_policies": [{"cluster": "shadow"}]}),
    )], clusters_for(a) + [static_cluster("shadow", [shadow.endpoint])])
    reqs = [Req("/m?q=1", headers=[("x-k", "v")]), Req("/post", method="POST", body=b"mirror-me"),
            Req("/off")]

    def run(proxy):
        obs = e2e.observe(proxy, reqs)
        return [o.normalized() for o in obs], shadow.take(2, settle=0.3)  # (+ a late /off mirror, if any)

    results = e2e.run_each(bs, run)
    ref = results[e2e.reference.label]
    mine = results[e2e.impl.label]

    def mirrored_view(ms):  # what the shadow saw, by method; the random request id only as presence
        return {m["method"]: {"path": m["path"], "host": m["host"], "body": m["body"],
                              "headers": {k: ("<present>" if k == "x-request-id" else v)
                                          for k, v in m["headers"].items()}} for m in ms}
    # the differential part: main responses, and what the mirror cluster received
    a_view = {"responses": dict(enumerate(ref[0])), "mirrored": mirrored_view(ref[1])}
    b_view = {"responses": dict(enumerate(mine[0])), "mirrored": mirrored_view(mine[1])}
    if a_view != b_view:
        raise DifferentialMismatch("responses or mirrored requests differ:\n"
                                   + _diff(a_view, b_view, e2e.reference.label, e2e.impl.label))
    for label, (obs, mirrored) in results.items():
        assert [o["body"]["service"] for o in obs] == ["a", "a", "a"], label
        seen = sorted((m["method"], m["path"], m["host"], m["body"]) for m in mirrored)
        assert seen == [("GET", "/m?q=1", "e2e.test-shadow", b""),
                        ("POST", "/post", "e2e.test-shadow", b"mirror-me")], label
        get = next(m for m in mirrored if m["method"] == "GET")
        assert get["headers"]["x-k"] == "v", label
        # the shadow request is marked internal and carries the proxy's local address as XFF
        assert get["headers"]["x-envoy-internal"] == "true", label
        assert get["headers"]["x-forwarded-for"] == (local_address() or get["headers"]["x-forwarded-for"]), label


def test_runtime_fraction_route_match(e2e):
    ups = e2e.upstreams("never", "always", "fallback")
    bs = bootstrap([one_vhost(
        route(prefix("/", runtime_fraction={"default_value": {"numerator": 0}, "runtime_key": "e2e.never"}),
              cluster="never"),
        route(prefix("/a", runtime_fraction={"default_value": {"numerator": 100}, "runtime_key": "e2e.always"}),
              cluster="always"),
        route(prefix("/"), cluster="fallback"),
    )], clusters_for(*ups))
    obs = e2e.differential(bs, [Req("/a")] * 5 + [Req("/b")] * 5)
    assert [o.service for o in obs] == ["always/v1"] * 5 + ["fallback/v1"] * 5


def test_grpc_route_match(e2e):
    ups = e2e.upstreams("grpc", "web")
    bs = bootstrap([one_vhost(
        route(prefix("/", grpc={}), cluster="grpc"),
        route(prefix("/"), cluster="web"),
    )], clusters_for(*ups, http2=("grpc",)))
    g, w, ct = e2e.differential(bs, [
        GrpcReq(message=b"\x0a\x01x"), Req("/trellis.demo.Echo/Echo", method="POST"),
        Req("/x", method="POST", headers=[("content-type", "application/json")])])
    assert g.status == "OK" and g.headers["x-demo-service"] == ["grpc/v1"]
    assert (w.service, ct.service) == ("web/v1", "web/v1")


def test_case_insensitive_and_path_separated_prefix(e2e):
    ups = e2e.upstreams("exact", "api", "fallback")
    bs = bootstrap([one_vhost(
        route(path("/Exact/Path", case_sensitive=False), cluster="exact"),
        route({"path_separated_prefix": "/api"}, cluster="api"),
        route(prefix("/"), cluster="fallback"),
    )], clusters_for(*ups))
    cases = {"/exact/path": "exact/v1", "/EXACT/PATH?x": "exact/v1", "/exact/path/": "fallback/v1",
             "/api": "api/v1", "/api/": "api/v1", "/api/v1/x": "api/v1", "/api?q=1": "api/v1",
             "/apix": "fallback/v1", "/API": "fallback/v1", "/api#frag": None}
    obs = e2e.differential(bs, [Req(p) for p in cases])
    for (p, want), o in zip(cases.items(), obs):
        if want:
            assert o.service == want, p


def test_regex_rewrite_capture_groups_keeps_query(e2e):
    a, = e2e.upstreams("a")
    bs = bootstrap([one_vhost(
        route(prefix("/users/"), cluster="a", action={"regex_rewrite": {
            "pattern": {"regex": "^/users/([0-9]+)/orders/([0-9]+)$"}, "substitution": "/o/\\2?user=\\1"}}),
        route(prefix("/v"), cluster="a", action={"regex_rewrite": {
            "pattern": {"regex": "v([0-9])"}, "substitution": "version-\\1"}}),
        route(prefix("/"), cluster="a"),
    )], [static_cluster("a", [a.endpoint])])
    cases = {"/users/7/orders/42": None, "/users/7/orders/42?x=1": None, "/users/abc": "/users/abc",
             "/v1/v2/x?v3=1": "/version-1/version-2/x?v3=1"}
    obs = e2e.differential(bs, [Req(p) for p in cases])
    for (p, want), o in zip(cases.items(), obs):
        if want:
            assert o.upstream_path == want, p
