"""Listener scenarios: filter chain matching (destination port / prefix ranges, SNI,
transport protocol, ALPN via http_inspector, source prefix ranges), default_filter_chain,
no matching chain, IPv6 listener. Every chain routes to a different demo-app so the
answering service says which chain handled the connection."""
import socket

import pytest

from harness import (READ, RawReq, Req, bootstrap, downstream_tls, free_port, http_chain, http_inspector,
                     http_listener, listener, prefix, route, route_config, static_cluster, tls_inspector,
                     vhost)
from harness.certs import self_signed
from harness.netinfo import local_address

GET = RawReq.get("/", headers=[("Connection", "close")])


def to(cluster):
    return route_config([vhost("all", [route(prefix("/"), cluster=cluster)])])


def clusters_for(*ups):
    return [static_cluster(u.service, [u.endpoint]) for u in ups]


def get(**kw):
    return RawReq([GET, READ], **kw)


def test_sni_exact_wildcard_and_default_chain(e2e, tmp_path):
    ups = e2e.upstreams("exact", "wild", "default")
    cert, key = self_signed(tmp_path / "certs", names=["exact.test", "*.wild.test"])
    tls = downstream_tls(cert, key, alpn=["http/1.1"])
    bs = bootstrap([listener("in", [
        http_chain(to("wild"), match={"server_names": ["*.wild.test"]}, transport_socket=tls),
        http_chain(to("exact"), match={"server_names": ["exact.test"]}, transport_socket=tls),
    ], listener_filters=[tls_inspector()], default_chain=http_chain(to("default"), transport_socket=tls))],
        clusters_for(*ups))
    cases = {"exact.test": "exact/v1", "a.wild.test": "wild/v1", "EXACT.test": None,
             "deep.a.wild.test": None, "wild.test": "default/v1", "other.test": "default/v1",
             True: "default/v1"}  # True: TLS without SNI
    obs = e2e.differential(bs, [get(tls=sni) for sni in cases])
    for (sni, want), o in zip(cases.items(), obs):
        if want:
            assert (o.status, o.service) == (200, want), sni


def test_transport_protocol_tls_vs_raw_buffer(e2e, tmp_path):
    ups = e2e.upstreams("tls", "plain")
    cert, key = self_signed(tmp_path / "certs")
    bs = bootstrap([listener("in", [
        http_chain(to("tls"), match={"transport_protocol": "tls"},
                   transport_socket=downstream_tls(cert, key, alpn=["http/1.1"])),
        http_chain(to("plain"), match={"transport_protocol": "raw_buffer"}),
    ], listener_filters=[tls_inspector()])], clusters_for(*ups))
    plain, tls = e2e.differential(bs, [get(), get(tls="e2e.test")])
    assert plain.service == "plain/v1" and plain.echo["headers"]["x-forwarded-proto"] == "http"
    assert tls.service == "tls/v1" and tls.echo["headers"]["x-forwarded-proto"] == "https"


def test_application_protocols_with_http_inspector(e2e):
    ups = e2e.upstreams("h1", "h2", "other")
    ten = {"http_protocol_options": {"accept_http_10": True}}  # so that the chosen chain can answer HTTP/1.0
    bs = bootstrap([listener("in", [
        http_chain(to("h2"), match={"application_protocols": ["h2c"]}, **ten),
        http_chain(to("h1"), match={"application_protocols": ["http/1.1"]}, **ten),
    ], listener_filters=[http_inspector()], default_chain=http_chain(to("other"), **ten))], clusters_for(*ups))
    h1, h2, h10 = e2e.differential(bs, [
        Req("/"), Req("/", proto="h2c"),
        RawReq([RawReq.get("/", version="HTTP/1.0"), READ])])
    assert (h1.service, h1.protocol) == ("h1/v1", "HTTP/1.1")
    assert (h2.service, h2.protocol) == ("h2/v1", "HTTP/2")
    # http_inspector reports "http/1.0", which matches neither chain: the default chain answers
    assert h10.status == 200 and h10.service == "other/v1"


def test_destination_port_match(e2e):
    ups = e2e.upstreams("right", "wrong")
    port, other = free_port(), free_port()
    bs = bootstrap([
        listener("in", [http_chain(to("wrong"), match={"destination_port": other}),
                        http_chain(to("right"), match={"destination_port": port})], port=port),
        listener("none", [http_chain(to("wrong"), match={"destination_port": other})]),
    ], clusters_for(*ups))
    ok, none = e2e.differential(bs, [get(), RawReq([GET, READ], listener="none", check_close=2.0)])
    assert ok.service == "right/v1"
    assert (none.status, none.body, none.closed) == (None, b"", True)


def test_destination_prefix_ranges_longest_match(e2e):
    ups = e2e.upstreams("loopback", "two")
    bs = bootstrap([listener("in", [
        http_chain(to("loopback"), match={"prefix_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]}),
        http_chain(to("two"), match={"prefix_ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 32}]}),
    ], host="0.0.0.0")], clusters_for(*ups))
    one, two, three = e2e.differential(bs, [get(dest="127.0.0.1"), get(dest="127.0.0.2"), get(dest="127.0.0.3")])
    assert (one.service, two.service, three.service) == ("loopback/v1", "two/v1", "loopback/v1")


def test_source_prefix_ranges(e2e):
    ups = e2e.upstreams("from2", "anyone")
    bs = bootstrap([listener("in", [
        http_chain(to("from2"), match={"source_prefix_ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 32}]}),
        http_chain(to("anyone")),
    ])], clusters_for(*ups))
    two, one = e2e.differential(bs, [get(source="127.0.0.2"), get(source="127.0.0.1")])
    assert (two.service, one.service) == ("from2/v1", "anyone/v1")


def test_no_matching_filter_chain_closes_connection(e2e, tmp_path):
    a, = e2e.upstreams("a")
    cert, key = self_signed(tmp_path / "certs")
    bs = bootstrap([listener("in", [
        http_chain(to("a"), match={"server_names": ["only.test"]},
                   transport_socket=downstream_tls(cert, key, alpn=["http/1.1"])),
    ], listener_filters=[tls_inspector()])], clusters_for(a))
    ok, plain, wrong_sni = e2e.differential(bs, [
        get(tls="only.test"), RawReq([GET, READ], check_close=2.0), RawReq([GET, READ], tls="other.test", check_close=2.0)])
    assert ok.service == "a/v1"
    assert (plain.status, plain.body, plain.closed) == (None, b"", True)
    assert wrong_sni.status is None and wrong_sni.closed


def _ipv6_available():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_available(), reason="::1 is not available on this host")
def test_ipv6_listener(e2e):
    a, = e2e.upstreams("a")
    rt = route(prefix("/"), cluster="a", request_headers_to_add=[
        {"header": {"key": "x-client-ip", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}])
    rc = route_config([vhost("all", [rt])])
    bs = bootstrap([http_listener("v6", rc, host="::1"),
                    http_listener("v6xff", rc, host="::1", hcm_extra={"use_remote_address": True})],
                   clusters_for(a))
    o, xff, h2 = e2e.differential(bs, [Req("/six"), Req("/", listener="v6xff"), Req("/", proto="h2c")])
    assert o.status == 200 and o.upstream_headers["x-client-ip"] == "::1"
    # for a loopback peer Envoy appends its own local (non-loopback) address, not "::1"
    assert xff.upstream_headers["x-forwarded-for"] == (local_address() or xff.upstream_headers["x-forwarded-for"])
    assert xff.upstream_headers["x-forwarded-for"] != "::1"
    assert h2.protocol == "HTTP/2" and h2.service == "a/v1"
