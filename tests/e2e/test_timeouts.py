"""Connection-manager timeouts while waiting for the upstream's response."""
from __future__ import annotations

from harness.bootstrap import bootstrap, http_listener, prefix, route, route_config, static_cluster, vhost
from harness.client import Req


def slow_route_bootstrap(up, **hcm_extra):
    routes = route_config([vhost("all", [route(prefix("/"), cluster=up.service, action={
        "cluster": up.service, "timeout": "0s"})])])
    listener = http_listener("in", routes)
    listener["filter_chains"][0]["filters"][0]["typed_config"].update(hcm_extra)
    return bootstrap([listener], [static_cluster(up.service, [up.endpoint])])


def test_stream_idle_timeout_waiting_for_upstream_answers_504(e2e):
    up = e2e.upstream("slow")
    bs = slow_route_bootstrap(up, stream_idle_timeout="0.3s")
    obs = e2e.differential(bs, [Req("/", headers=[("x-demo-delay-ms", "1500")]), Req("/")])
    assert obs[0].status == 504 and obs[0].text == "stream timeout"
    assert obs[1].status == 200


def test_request_timeout_does_not_bound_the_upstream_wait(e2e):
    """request_timeout covers receiving the request, not the upstream's answer."""
    up = e2e.upstream("slow")
    bs = slow_route_bootstrap(up, request_timeout="0.3s")
    obs = e2e.differential(bs, [Req("/", headers=[("x-demo-delay-ms", "800")]), Req("/")])
    assert obs[0].status == 200
    assert obs[1].status == 200
