"""Protocol scenarios: weighted clusters, h2c and h2-over-TLS downstream, HTTP/2 upstream,
gRPC, TCP proxy, HTTP Upgrade (WebSocket)."""
import pytest

from harness import (GrpcReq, Req, TcpReq, UpgradeReq, assert_weights, bootstrap, downstream_tls,
                     http_listener, prefix, route, route_config, static_cluster, tcp_listener, vhost,
                     weighted)
from harness.certs import self_signed


def listener_to(cluster, **kw):
    return http_listener("in", route_config([vhost("all", [route(prefix("/"), cluster=cluster)])]), **kw)


@pytest.mark.slow
def test_weighted_clusters_distribution(e2e):
    v1, v2, v3 = e2e.upstreams(("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3"))
    bs = bootstrap(
        [http_listener("in", route_config([vhost("all", [
            route(prefix("/"), action=weighted(("r1", 70), ("r2", 20), ("r3", 10)))])]))],
        [static_cluster("r1", [v1.endpoint]), static_cluster("r2", [v2.endpoint]), static_cluster("r3", [v3.endpoint])])
    # 400 samples: a binomial share at p=0.7 has sd ~2.3 points; 8 points is > 3 sd.
    dists = e2e.distribution(bs, Req("/"), n=400)
    for label, counter in dists.items():
        assert_weights(counter, {"reviews/v1": 70, "reviews/v2": 20, "reviews/v3": 10}, tolerance=0.08, label=label)


def test_round_robin_over_endpoints(e2e):
    ups = [e2e.upstream("pool", f"v{i}") for i in range(3)]
    bs = bootstrap([listener_to("pool")], [static_cluster("pool", [u.endpoint for u in ups])])
    for label, counter in e2e.distribution(bs, Req("/"), n=30).items():
        assert counter == {"pool/v0": 10, "pool/v1": 10, "pool/v2": 10}, label


def test_h2c_downstream_to_http1_and_http2_upstreams(e2e):
    a, = e2e.upstreams("a")
    bs = bootstrap([http_listener("in", route_config([vhost("all", [
        route(prefix("/h2"), cluster="a-h2"), route(prefix("/"), cluster="a-h1")])]))],
        [static_cluster("a-h1", [a.endpoint]), static_cluster("a-h2", [a.endpoint], http2=True)])
    h2_h1, h2_h2, h1_h2 = e2e.differential(bs, [
        Req("/x", proto="h2c"), Req("/h2", proto="h2c", method="POST", body=b"data"), Req("/h2/y", proto="http1")])
    assert h2_h1.protocol == "HTTP/2" and h2_h1.echo["protocol"] == "HTTP/1.1"
    assert h2_h1.echo["host"] == "e2e.test"
    assert h2_h2.echo["protocol"] == "HTTP/2" and h2_h2.echo["body"] == "data"
    assert h1_h2.protocol == "HTTP/1.1" and h1_h2.echo["protocol"] == "HTTP/2"


def test_h2_over_tls_with_alpn(e2e, tmp_path):
    a, = e2e.upstreams("a")
    cert, key = self_signed(tmp_path / "certs")
    e2e.ca = cert
    bs = bootstrap([listener_to("a", transport_socket=downstream_tls(cert, key))], [static_cluster("a", [a.endpoint])])
    [o] = e2e.differential(bs, [Req("/tls", proto="h2tls")])
    assert o.protocol == "HTTP/2" and o.service == "a/v1"
    assert o.upstream_headers["x-forwarded-proto"] == "https"


def test_grpc_unary_and_server_streaming(e2e):
    g, = e2e.upstreams("grpc")
    bs = bootstrap([listener_to("grpc")], [static_cluster("grpc", [g.endpoint], http2=True)])
    ok, failed, stream, unknown = e2e.differential(bs, [
        GrpcReq(message=b"\x0a\x03abc"),
        GrpcReq(metadata=[("x-demo-grpc-status", "14")]),
        GrpcReq("/trellis.demo.Echo/ServerStream", message=b"m", stream=True),
        GrpcReq("/trellis.demo.Nope/Nope"),
    ])
    assert ok.status == "OK" and ok.messages == [b"\x0a\x03abc"]
    assert ok.headers["x-demo-service"] == ["grpc/v1"]
    assert failed.status == "UNAVAILABLE" and failed.details == "demo-app: forced status"
    assert stream.status == "OK" and stream.messages == [b"m"] * 3
    assert unknown.status == "UNIMPLEMENTED"


def test_tcp_proxy(e2e):
    t = e2e.upstream("db", "v2", tcp=True)
    bs = bootstrap([tcp_listener("tcp", "db")], [static_cluster("db", [t.tcp_endpoint])])
    one, many = e2e.differential(bs, [TcpReq(b"hello\n"), TcpReq(b"a\nb\n" + b"x" * 70000 + b"\n")])
    assert one.body == b"db/v2: hello\n"
    assert many.body == b"db/v2: a\ndb/v2: b\ndb/v2: " + b"x" * 70000 + b"\n"


def test_websocket_upgrade(e2e):
    a, = e2e.upstreams("ws")
    ws_listener = http_listener("in", route_config([vhost("all", [route(prefix("/"), cluster="ws")])]),
                                hcm_extra={"upgrade_configs": [{"upgrade_type": "websocket"}]})
    plain = http_listener("plain", route_config([vhost("all", [route(prefix("/"), cluster="ws")])]))
    bs = bootstrap([ws_listener, plain], [static_cluster("ws", [a.endpoint])])
    up, not_enabled = e2e.differential(bs, [
        UpgradeReq(payload=b"hello-over-ws"), UpgradeReq(listener="plain")])
    assert up.status == 101 and up.body == b"hello-over-ws"
    assert up.header("upgrade") == "websocket"
    assert not_enabled.status == 403  # upgrade type not configured on the HCM
