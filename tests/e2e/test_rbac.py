"""RBAC scenarios (envoy.filters.http.rbac and envoy.filters.network.rbac): ALLOW and DENY
policies by path, method, header, remote and direct remote address, destination address and
port, authenticated principal over mTLS (URI SAN), per-route RBACPerRoute overrides, the
network filter in front of a tcp_proxy, and bad rules refused at load time."""
from __future__ import annotations

import http.client
import ssl
import time
from dataclasses import dataclass

from harness import (Observation, Req, TcpReq, bootstrap, free_port, http_filter, http_listener,
                     prefix, route, route_config, static_cluster, tcp_listener, vhost)
from harness.certs import ca_and_leaves
from harness.client import _hdict

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
TLS_DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
DENIED = "RBAC: access denied"


def rbac_filter(action: str, policies: dict, **extra) -> dict:
    return http_filter("envoy.filters.http.rbac", RBAC, rules={"action": action, "policies": policies}, **extra)


def pol(permissions: list[dict], principals: list[dict]) -> dict:
    return {"permissions": permissions, "principals": principals}


ANY = {"any": True}


def hdr(name: str, **m) -> dict:
    return {"header": {"name": name, **m}}


def listener_with(filters, *routes, name="in", **kw):
    routes = list(routes) or [route(prefix("/"), cluster="a")]
    return http_listener(name, route_config([vhost("all", routes)]), http_filters=filters, **kw)


def test_allow_by_path_header_and_method(e2e):
    a, = e2e.upstreams("a")
    rules = rbac_filter("ALLOW", {
        "public-get": pol([{"and_rules": {"rules": [
            {"url_path": {"path": {"prefix": "/public"}}},
            hdr(":method", string_match={"exact": "GET"})]}}], [ANY]),
        "with-key": pol([ANY], [hdr("x-api-key", string_match={"exact": "secret"})]),
    })
    bs = bootstrap([listener_with([rules])], [static_cluster("a", [a.endpoint])])
    pub, post, query, private, keyed, wrong_key, h2 = e2e.differential(bs, [
        Req("/public/x"), Req("/public/x", method="POST"), Req("/private?/public"), Req("/private"),
        Req("/private", headers=[("x-api-key", "secret")]), Req("/private", headers=[("x-api-key", "nope")]),
        Req("/private", proto="h2c")])
    assert pub.status == 200 and pub.service == "a/v1"
    assert (post.status, post.text, post.service) == (403, DENIED, None)
    assert query.status == 403   # the query is not part of url_path
    assert private.status == 403 and private.header("content-type") == "text/plain"
    assert keyed.status == 200 and wrong_key.status == 403
    assert (h2.status, h2.text) == (403, DENIED)


def test_deny_policies(e2e):
    a, = e2e.upstreams("a")
    rules = rbac_filter("DENY", {
        "no-delete": pol([hdr(":method", exact_match="DELETE")], [ANY]),
        "no-admin": pol([{"url_path": {"path": {"safe_regex": {"regex": "/admin(/.*)?"}}}}], [ANY]),
        "no-bots": pol([ANY], [{"not_id": hdr("user-agent", present_match=True)}]),
    })
    bs = bootstrap([listener_with([rules])], [static_cluster("a", [a.endpoint])])
    ok, delete, admin, admin_x, adminy = e2e.differential(bs, [
        Req("/x"), Req("/x", method="DELETE"), Req("/admin"), Req("/admin/x"), Req("/adminy")])
    assert ok.status == 200 and adminy.status == 200
    assert delete.status == admin.status == admin_x.status == 403
    assert delete.text == DENIED


def test_remote_ip_follows_xff_and_direct_remote_ip_does_not(e2e):
    a, = e2e.upstreams("a")
    remote = rbac_filter("ALLOW", {"p": pol([ANY], [{"remote_ip": {"address_prefix": "203.0.113.0",
                                                                   "prefix_len": 24}}])})
    direct = rbac_filter("ALLOW", {"p": pol([ANY], [{"direct_remote_ip": {"address_prefix": "127.0.0.1",
                                                                          "prefix_len": 32}}])})
    bs = bootstrap([listener_with([remote], name="remote"), listener_with([direct], name="direct")],
                   [static_cluster("a", [a.endpoint])])
    xff = [("x-forwarded-for", "198.51.100.1, 203.0.113.7")]
    r_xff, r_plain, d_xff, d_plain = e2e.differential(bs, [
        Req("/", listener="remote", headers=xff), Req("/", listener="remote"),
        Req("/", listener="direct", headers=[("x-forwarded-for", "203.0.113.7")]), Req("/", listener="direct")])
    assert r_xff.status == 200 and r_plain.status == 403
    assert d_xff.status == 200 and d_plain.status == 200


def test_destination_port_and_ip(e2e):
    a, = e2e.upstreams("a")
    port = free_port()
    rules = rbac_filter("ALLOW", {
        "port": pol([{"destination_port": port}], [ANY]),
        "range": pol([{"and_rules": {"rules": [{"destination_port_range": {"start": 1, "end": 65536}},
                                               {"destination_ip": {"address_prefix": "127.0.0.2",
                                                                   "prefix_len": 32}}]}}], [ANY]),
    })
    bs = bootstrap([listener_with([rules], name="fixed", port=port), listener_with([rules], name="other"),
                    listener_with([rules], name="other_ip", host="127.0.0.2")],
                   [static_cluster("a", [a.endpoint])])
    fixed, other, other_ip = e2e.differential(bs, [Req("/", listener="fixed"), Req("/", listener="other"),
                                                   Req("/", listener="other_ip")])
    assert fixed.status == 200 and other.status == 403 and other_ip.status == 200


def test_per_route_override_and_disable(e2e):
    a, = e2e.upstreams("a")
    deny_all = rbac_filter("ALLOW", {})
    open_cfg = {"@type": RBAC_PER_ROUTE}
    get_only = {"@type": RBAC_PER_ROUTE, "rbac": {"rules": {"action": "ALLOW", "policies": {
        "get": pol([hdr(":method", string_match={"exact": "GET"})], [ANY])}}}}
    bs = bootstrap([listener_with(
        [deny_all],
        route(prefix("/open"), cluster="a", typed_per_filter_config={"envoy.filters.http.rbac": open_cfg}),
        route(prefix("/get"), cluster="a", typed_per_filter_config={"envoy.filters.http.rbac": get_only}),
        route(prefix("/"), cluster="a"))], [static_cluster("a", [a.endpoint])])
    opened, get, post, closed = e2e.differential(bs, [Req("/open"), Req("/get"), Req("/get", method="POST"),
                                                      Req("/closed")])
    assert opened.status == 200 and get.status == 200
    assert post.status == 403 and closed.status == 403


def test_shadow_and_log_rules_never_deny(e2e):
    a, = e2e.upstreams("a")
    log = http_filter("envoy.filters.http.rbac", RBAC,
                      rules={"action": "LOG", "policies": {"all": pol([ANY], [ANY])}},
                      shadow_rules={"action": "DENY", "policies": {"all": pol([ANY], [ANY])}})
    bs = bootstrap([listener_with([log])], [static_cluster("a", [a.endpoint])])
    [o] = e2e.differential(bs, [Req("/")])
    assert o.status == 200 and o.service == "a/v1"


@dataclass
class MtlsReq:
    """HTTP/1.1 over TLS presenting a client certificate (cert/key paths, or none)."""
    path: str = "/"
    cert: str | None = None
    key: str | None = None
    listener: str | None = None

    def describe(self) -> str:
        return f"mtls GET {self.path} cert={self.cert}"

    def send_to(self, addr, ca=None) -> Observation:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        t0 = time.monotonic()
        conn = http.client.HTTPSConnection(addr[0], addr[1], context=ctx, timeout=10)
        try:
            conn.request("GET", self.path, headers={"Host": "e2e.test"})
            r = conn.getresponse()
            body = r.read()
            return Observation("http", r.status, _hdict(r.getheaders()), body,
                               elapsed=time.monotonic() - t0)
        except (ssl.SSLError, ConnectionError, OSError) as e:
            return Observation("http", None, {}, b"", details=f"connection failed: {type(e).__name__}")
        finally:
            conn.close()


def test_authenticated_principal_over_mtls(e2e, tmp_path):
    a, = e2e.upstreams("a")
    certs = ca_and_leaves(tmp_path / "pki", {
        "server": {"dns": ["e2e.test"], "ips": ["127.0.0.1"]},
        "good": {"uris": ["spiffe://e2e.test/ns/default/sa/frontend"], "dns": ["frontend.default.svc"]},
        "other": {"uris": ["spiffe://e2e.test/ns/default/sa/intruder"]},
        "dnsonly": {"dns": ["frontend.default.svc"]},
    })
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": TLS_DOWNSTREAM,
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": certs["server"]},
                                  "private_key": {"filename": certs["server-key"]}}],
            "validation_context": {"trusted_ca": {"filename": certs["ca"]}}}}}
    by_uri = rbac_filter("ALLOW", {"spiffe": pol([ANY], [{"authenticated": {"principal_name": {
        "exact": "spiffe://e2e.test/ns/default/sa/frontend"}}}])})
    by_dns = rbac_filter("ALLOW", {"dns": pol([ANY], [{"authenticated": {"principal_name": {
        "suffix": ".default.svc"}}}])})
    any_tls = rbac_filter("ALLOW", {"tls": pol([ANY], [{"authenticated": {}}])})
    plain = rbac_filter("ALLOW", {"tls": pol([ANY], [{"authenticated": {}}])})
    bs = bootstrap([listener_with([by_uri], name="uri", transport_socket=tls),
                    listener_with([by_dns], name="dns", transport_socket=tls),
                    listener_with([any_tls], name="any", transport_socket=tls),
                    listener_with([plain], name="plain")],
                   [static_cluster("a", [a.endpoint])])
    c = lambda n: dict(cert=certs[n], key=certs[f"{n}-key"])  # noqa: E731
    good, other, dns_good, dns_only, dns_other, any_other, plain_o = e2e.differential(bs, [
        MtlsReq(listener="uri", **c("good")), MtlsReq(listener="uri", **c("other")),
        MtlsReq(listener="dns", **c("good")), MtlsReq(listener="dns", **c("dnsonly")),
        MtlsReq(listener="dns", **c("other")), MtlsReq(listener="any", **c("other")),
        Req("/", listener="plain")])
    assert good.status == 200 and good.service == "a/v1"
    assert (other.status, other.text) == (403, DENIED)
    # URI SANs first: "frontend" has a URI SAN that does not end in .default.svc, then its DNS SAN does.
    assert dns_good.status == 200 and dns_only.status == 200 and dns_other.status == 403
    assert any_other.status == 200
    assert plain_o.status == 403


def net_rbac(action: str, policies: dict) -> dict:
    return {"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": NET_RBAC, "stat_prefix": "e2e_net", "rules": {"action": action, "policies": policies}}}


def test_network_rbac_on_tcp_proxy(e2e):
    db = e2e.upstream("db", "v1", tcp=True)
    allow_local = net_rbac("ALLOW", {"local": pol([ANY], [{"direct_remote_ip": {
        "address_prefix": "127.0.0.0", "prefix_len": 8}}])})
    deny_all = net_rbac("DENY", {"all": pol([ANY], [ANY])})
    allow_nobody = net_rbac("ALLOW", {"far": pol([ANY], [{"remote_ip": {
        "address_prefix": "10.0.0.0", "prefix_len": 8}}])})
    listeners = []
    for name, f in (("allowed", allow_local), ("denied", deny_all), ("unknown", allow_nobody)):
        l = tcp_listener(name, "db")
        l["filter_chains"][0]["filters"].insert(0, f)
        listeners.append(l)
    bs = bootstrap(listeners, [static_cluster("db", [db.tcp_endpoint])])
    ok, denied, unknown = e2e.differential(bs, [TcpReq(b"hi\n", listener="allowed"),
                                                TcpReq(b"hi\n", listener="denied"),
                                                TcpReq(b"hi\n", listener="unknown")])
    assert ok.body == b"db/v1: hi\n"
    assert denied.body == b"" and unknown.body == b""


def test_network_rbac_before_http_connection_manager(e2e):
    a, = e2e.upstreams("a")
    allowed = listener_with([], name="allowed")
    allowed["filter_chains"][0]["filters"].insert(0, net_rbac("ALLOW", {"all": pol([ANY], [ANY])}))
    bs = bootstrap([allowed], [static_cluster("a", [a.endpoint])])
    [o] = e2e.differential(bs, [Req("/", listener="allowed")])
    assert o.status == 200 and o.service == "a/v1"


def assert_all_reject(e2e, bs, *must_mention):
    results = e2e.startup(bs, timeout=10.0)
    for label, r in results.items():
        assert r.rejected, f"{label} accepted the bootstrap (exit={r.exit_code}, ready={r.ready})\n{r.output[-2000:]}"
        low = r.output.lower()
        for word in must_mention:
            assert word.lower() in low, f"{label}: the error does not mention {word!r}:\n{r.output[-2000:]}"


def test_bad_rules_are_refused(e2e):
    a = static_cluster("a", [("127.0.0.1", 9)])
    bad_regex = rbac_filter("ALLOW", {"p": pol([{"url_path": {"path": {"safe_regex": {"regex": "/a(b"}}}}],
                                                [ANY])})
    assert_all_reject(e2e, bootstrap([listener_with([bad_regex])], [a]), "/a(b")
    bad_range = rbac_filter("ALLOW", {"p": pol([{"destination_port_range": {"start": 10, "end": 5}}], [ANY])})
    assert_all_reject(e2e, bootstrap([listener_with([bad_range])], [a]), "range")
    no_principals = rbac_filter("ALLOW", {"p": {"permissions": [ANY]}})
    assert_all_reject(e2e, bootstrap([listener_with([no_principals])], [a]), "principals")


def test_invalid_per_route_rules_are_refused(e2e):
    a = static_cluster("a", [("127.0.0.1", 9)])
    bad = {"@type": RBAC_PER_ROUTE, "rbac": {"rules": {"action": "ALLOW", "policies": {
        "p": pol([{"url_path": {"path": {"safe_regex": {"regex": "/x(y"}}}}], [ANY])}}}}
    bs = bootstrap([listener_with([rbac_filter("ALLOW", {})],
                                  route(prefix("/"), cluster="a",
                                        typed_per_filter_config={"envoy.filters.http.rbac": bad}))], [a])
    assert_all_reject(e2e, bs, "/x(y")


def test_stats(e2e):
    a, = e2e.upstreams("a")
    db = e2e.upstream("db", "v1", tcp=True)
    rules = rbac_filter("ALLOW", {"get": pol([hdr(":method", string_match={"exact": "GET"})], [ANY])},
                        shadow_rules={"action": "DENY", "policies": {"all": pol([ANY], [ANY])}})
    tcp = tcp_listener("tcp", "db")
    tcp["filter_chains"][0]["filters"].insert(0, net_rbac("DENY", {"all": pol([ANY], [ANY])}))
    bs = bootstrap([listener_with([rules]), tcp],
                   [static_cluster("a", [a.endpoint]), static_cluster("db", [db.tcp_endpoint])])

    def scenario(proxy):
        from harness.client import send
        for r in (Req("/"), Req("/"), Req("/", method="POST")):
            send((proxy.host("in"), proxy.port("in")), r)
        send((proxy.host("tcp"), proxy.port("tcp")), TcpReq(b"x\n"))
        text = proxy.admin("/stats")[1]
        stats = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        names = ["http.in.rbac.allowed", "http.in.rbac.denied", "http.in.rbac.shadow_allowed",
                 "http.in.rbac.shadow_denied", "e2e_net.rbac.denied"]
        return {n: stats.get(n) for n in names}

    for label, got in e2e.run_each(bs, scenario).items():
        assert got == {"http.in.rbac.allowed": "2", "http.in.rbac.denied": "1",
                       "http.in.rbac.shadow_allowed": "0", "http.in.rbac.shadow_denied": "3",
                       # the harness's readiness probe (connect, close) is decided too
                       "e2e_net.rbac.denied": "2"}, label
