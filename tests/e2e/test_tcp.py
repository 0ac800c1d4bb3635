"""TCP proxy scenarios: weighted cluster split, idle timeout, maximum connection duration."""
from harness import TcpIdleReq, TcpReq, assert_weights, bootstrap, static_cluster, tcp_listener


def test_tcp_proxy_weighted_clusters(e2e):
    a, b = e2e.upstream("db", "v1", tcp=True), e2e.upstream("db", "v2", tcp=True)
    bs = bootstrap([tcp_listener("tcp", None, weighted_clusters={"clusters": [
        {"name": "db1", "weight": 75}, {"name": "db2", "weight": 25}]})],
        [static_cluster("db1", [a.tcp_endpoint]), static_cluster("db2", [b.tcp_endpoint])])
    # 200 connections: the share at p=0.75 has sd ~3.1 points; 12 points is ~3.9 sd.
    dists = e2e.distribution(bs, TcpReq(b"x\n"), n=200, key=lambda o: o.body.split(b":")[0].decode())
    for label, counter in dists.items():
        assert_weights(counter, {"db/v1": 75, "db/v2": 25}, tolerance=0.12, label=label)


def test_tcp_proxy_idle_timeout_closes_connection(e2e):
    t = e2e.upstream("db", "v1", tcp=True)
    bs = bootstrap([tcp_listener("idle", "db", idle_timeout="0.5s"), tcp_listener("default", "db")],
                   [static_cluster("db", [t.tcp_endpoint])])
    idle, default = e2e.differential(bs, [TcpIdleReq(b"hi\n", wait=3.0, listener="idle"),
                                          TcpIdleReq(b"hi\n", wait=1.0, listener="default")])
    assert idle.body == b"db/v1: hi\n" and idle.closed is True
    # the idle timer starts at the last byte relayed, just before we start measuring: lower bound only
    assert idle.elapsed >= 0.4
    assert default.closed is False   # default idle_timeout is 1h


def test_tcp_proxy_max_downstream_connection_duration(e2e):
    """Istio's DestinationRule maxConnectionDuration: the connection is closed
    at that age even though the idle timeout is far away."""
    t = e2e.upstream("db", "v1", tcp=True)
    bs = bootstrap([tcp_listener("capped", "db", idle_timeout="30s",
                                 max_downstream_connection_duration="1s")],
                   [static_cluster("db", [t.tcp_endpoint])])
    (capped,) = e2e.differential(bs, [TcpIdleReq(b"hi\n", wait=5.0, listener="capped")])
    assert capped.body == b"db/v1: hi\n" and capped.closed is True
