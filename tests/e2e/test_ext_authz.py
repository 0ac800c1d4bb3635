"""External authorization (envoy.filters.http.ext_authz) against a real authorizer: the
demo-app's ext-authz mode (Istio's sample server behaviour: `x-ext-authz: allow` passes,
anything else is denied with 403 and a body; the answer sets `x-ext-authz-check-result` and
echoes what the authorizer received in `x-ext-authz-check-received`).

gRPC and HTTP services, allow and deny, which headers reach the authorizer, the upstream and
the client, per-route disable and (merged) context extensions, an authorizer that is down,
fails or is too slow (failure_mode_allow, status_on_error), the filter gated on an RBAC shadow
result the way Istio's CUSTOM action wires it, request body buffering, the header and query
mutations an OK gRPC answer can make, load-time validation, and the network filter
(envoy.filters.network.ext_authz) in front of a tcp_proxy.

The echoed `x-ext-authz-check-received` is JSON; it is compared after parsing, with the one
random value (x-request-id) normalized: see `received()`."""
from __future__ import annotations

import json

import pytest

from harness import (GrpcReq, Req, TcpReq, bootstrap, free_port, http_filter, http_listener,
                     prefix, route, route_config, static_cluster, vhost, wait_port)
from harness.client import UUID_RE
from harness.procs import demo_app_cmd
from harness.session import DifferentialMismatch, _diff

EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
EXT_AUTHZ_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RESULT = "x-ext-authz-check-result"
RECEIVED = "x-ext-authz-check-received"
OVERRIDE = "x-ext-authz-additional-header-override"
DENY_BODY = "denied by ext_authz for not found header `x-ext-authz: allow` in the request"
ALLOW = [("x-ext-authz", "allow")]


# ------------------------------------------------------------------ helpers

class Authorizer:
    def __init__(self, http_port: int, grpc_port: int):
        self.http_port, self.grpc_port = http_port, grpc_port

    def clusters(self) -> list[dict]:
        return [static_cluster("authz-http", [("127.0.0.1", self.http_port)]),
                static_cluster("authz-grpc", [("127.0.0.1", self.grpc_port)], http2=True)]


def start_authorizer(e2e, *extra: str) -> Authorizer:
    http_port, grpc_port, echo_port = free_port(), free_port(), free_port()
    proc = e2e.registry.spawn("ext-authz", [
        *demo_app_cmd(), "--service", "ext-authz", "--http-port", str(echo_port),
        "--ext-authz-http-port", str(http_port), "--ext-authz-grpc-port", str(grpc_port), *extra])
    for p in (http_port, grpc_port):
        wait_port("127.0.0.1", p, proc=proc)
    return Authorizer(http_port, grpc_port)


def grpc_authz(cluster: str = "authz-grpc", timeout: str = "2s", **cfg) -> dict:
    cfg.setdefault("transport_api_version", "V3")
    return http_filter("envoy.filters.http.ext_authz", EXT_AUTHZ,
                       grpc_service={"envoy_grpc": {"cluster_name": cluster}, "timeout": timeout},
                       **cfg)


def http_authz(cluster: str = "authz-http", *, path_prefix: str = "", authorization_request=None,
               authorization_response=None, **cfg) -> dict:
    service = {"server_uri": {"uri": "http://authz.test", "cluster": cluster, "timeout": "2s"},
               "path_prefix": path_prefix}
    if authorization_request:
        service["authorization_request"] = authorization_request
    if authorization_response:
        service["authorization_response"] = authorization_response
    return http_filter("envoy.filters.http.ext_authz", EXT_AUTHZ, transport_api_version="V3",
                       http_service=service, **cfg)


def names(*ns: str) -> dict:
    return {"patterns": [{"exact": n} for n in ns]}


def received(value: str) -> dict:
    """The authorizer's echo, parsed; the random x-request-id normalized."""
    j = json.loads(value)
    hs = j.get("headers") or (j.get("http") or {}).get("headers") or {}
    if UUID_RE.match(hs.get("x-request-id", "")):
        hs["x-request-id"] = "<uuid>"
    return j


def normalized(o) -> dict:
    n = o.normalized()
    for part in ("headers", "trailers"):
        if RECEIVED in n.get(part, {}):
            n[part][RECEIVED] = [received(v) for v in n[part][RECEIVED]]
    body = n.get("body")
    if isinstance(body, dict) and RECEIVED in body.get("headers", {}):
        body["headers"][RECEIVED] = received(body["headers"][RECEIVED])
    return n


def differential(e2e, bs: dict, reqs: list) -> list:
    """e2e.differential with the authorizer's JSON echo compared as data."""
    results = e2e.run_each(bs, lambda p: e2e.observe(p, reqs))
    ref, mine = results[e2e.reference.label], results[e2e.impl.label]
    problems = []
    for i, (req, a, b) in enumerate(zip(reqs, ref, mine)):
        na, nb = normalized(a), normalized(b)
        if na != nb:
            problems.append(f"request #{i} ({req.describe()}): {e2e.impl.label} differs from "
                            f"{e2e.reference.label}\n" + _diff(na, nb, e2e.reference.label, e2e.impl.label))
    if problems:
        raise DifferentialMismatch("\n".join(problems))
    return mine


def upstream_received(o) -> dict:
    return received(o.upstream_headers[RECEIVED])


def listener(filters: list[dict], routes: list[dict] | None = None, vhost_extra: dict | None = None,
             **kw) -> dict:
    routes = routes or [route(prefix("/"), cluster="a")]
    return http_listener("in", route_config([vhost("all", routes, **(vhost_extra or {}))]),
                         http_filters=filters, **kw)


# ---------------------------------------------------------------- scenarios

def test_grpc_service_allows_and_denies(e2e):
    a, = e2e.upstreams("a")
    authz = start_authorizer(e2e)
    routes = [
        route(prefix("/public"), cluster="a",
              typed_per_filter_config={"envoy.filters.http.ext_authz": {
                  "@type": EXT_AUTHZ_PER_ROUTE, "disabled": True}}),
        route(prefix("/ctx"), cluster="a",
              typed_per_filter_config={"envoy.filters.http.ext_authz": {
                  "@type": EXT_AUTHZ_PER_ROUTE,
                  "check_settings": {"context_extensions": {"route": "ctx", "team": "e2e"}}}}),
        route(prefix("/"), cluster="a"),
    ]
    # Virtual-host context extensions apply to every route; a route's own extend and override them.
    vhost_ctx = {"typed_per_filter_config": {"envoy.filters.http.ext_authz": {
        "@type": EXT_AUTHZ_PER_ROUTE,
        "check_settings": {"context_extensions": {"vhost": "all", "route": "from-vhost"}}}}}
    bs = bootstrap([listener([grpc_authz()], routes, vhost_ctx)],
                   [static_cluster("a", [a.endpoint]), *authz.clusters()])
    allowed, denied, wrong, h2, public, ctx, spoofed, grpc_denied = differential(e2e, bs, [
        Req("/x?q=1", headers=ALLOW + [("x-custom", "c1"), ("x-custom", "c2")]),
        Req("/x"),
        Req("/x", headers=[("x-ext-authz", "deny")]),
        Req("/h2", proto="h2c", headers=ALLOW),
        Req("/public/x"),
        Req("/ctx", headers=ALLOW),
        Req("/x", headers=ALLOW + [(RESULT, "spoofed")]),
        GrpcReq(),
    ])
    assert allowed.status == 200 and allowed.service == "a/v1"
    assert allowed.upstream_headers[RESULT] == "allowed"
    assert allowed.upstream_headers[OVERRIDE] == "grpc-additional-header-override-value"
    seen = upstream_received(allowed)
    assert seen["http"]["method"] == "GET" and seen["http"]["path"] == "/x?q=1"
    assert seen["http"]["host"] == "e2e.test" and seen["http"]["protocol"] == "HTTP/1.1"
    assert seen["http"]["headers"][":authority"] == "e2e.test"
    assert seen["http"]["headers"]["x-custom"] == "c1,c2"
    assert seen["source"]["address"] == "127.0.0.1" and seen["destination"]["address"] == "127.0.0.1"
    assert seen["context_extensions"] == {"vhost": "all", "route": "from-vhost"}
    assert (denied.status, denied.text) == (403, DENY_BODY)
    assert denied.header(RESULT) == "denied" and denied.service is None
    assert wrong.status == 403
    assert h2.status == 200 and upstream_received(h2)["http"]["protocol"] == "HTTP/2"
    assert public.status == 200 and RESULT not in public.upstream_headers
    assert upstream_received(ctx)["context_extensions"] == {"vhost": "all", "route": "ctx", "team": "e2e"}
    assert spoofed.status == 200
    assert grpc_denied.status == "PERMISSION_DENIED"


def test_http_service_headers_to_authorizer_upstream_and_client(e2e):
    a, = e2e.upstreams("a")
    authz = start_authorizer(e2e)
    f = http_authz(
        path_prefix="/authz",
        allowed_headers={"patterns": [{"prefix": "x-ext-authz"}, {"exact": "x-pass"}]},
        authorization_request={"headers_to_add": [{"key": "x-added", "value": "by-envoy"}]},
        authorization_response={
            "allowed_upstream_headers": names(RESULT, RECEIVED),
            "allowed_upstream_headers_to_append": names(OVERRIDE),
            "allowed_client_headers": names(RESULT),
            "allowed_client_headers_on_success": names(RESULT),
        })
    bs = bootstrap([listener([f])], [static_cluster("a", [a.endpoint]), *authz.clusters()])
    allowed, posted, denied = differential(e2e, bs, [
        Req("/x?q=1", headers=ALLOW + [("x-pass", "p"), ("x-not-sent", "n"),
                                        ("authorization", "Bearer t"), (OVERRIDE, "mine")]),
        Req("/post", method="POST", body=b"hello", headers=ALLOW),
        Req("/x", headers=[("x-pass", "p")]),
    ])
    assert allowed.status == 200 and allowed.service == "a/v1"
    assert allowed.upstream_headers[RESULT] == "allowed"
    assert allowed.header(RESULT) == "allowed"          # allowed_client_headers_on_success
    seen = upstream_received(allowed)
    assert (seen["method"], seen["path"], seen["host"]) == ("GET", "/authz/x?q=1", "e2e.test")
    assert seen["headers"]["x-pass"] == "p" and seen["headers"]["x-added"] == "by-envoy"
    assert seen["headers"]["authorization"] == "Bearer t" and seen["headers"]["content-length"] == "0"
    assert "x-not-sent" not in seen["headers"]
    sp = upstream_received(posted)
    assert (sp["method"], sp["body"], sp["headers"]["content-length"]) == ("POST", "", "0")
    assert posted.echo["body"] == "hello"
    assert (denied.status, denied.text) == (403, DENY_BODY)
    assert denied.header(RESULT) == "denied" and denied.header(RECEIVED) is None


def test_authorizer_down_failure_mode_and_status_on_error(e2e):
    a, = e2e.upstreams("a")
    dead = free_port()
    routes = [route(prefix("/"), cluster="a")]

    def lst(name, filters):
        return http_listener(name, route_config([vhost("all", routes)]), http_filters=filters)

    bs = bootstrap([
        lst("closed", [grpc_authz("dead-grpc")]),
        lst("status", [grpc_authz("dead-grpc", status_on_error={"code": 503})]),
        lst("open", [http_authz("dead-http", failure_mode_allow=True, failure_mode_allow_header_add=True)]),
        lst("nocluster", [grpc_authz("no-such-cluster")]),
    ], [static_cluster("a", [a.endpoint]),
        static_cluster("dead-grpc", [("127.0.0.1", dead)], http2=True),
        static_cluster("dead-http", [("127.0.0.1", dead)])])
    closed, status, opened, nocluster = differential(e2e, bs, [
        Req("/x", headers=ALLOW, listener="closed"), Req("/x", headers=ALLOW, listener="status"),
        Req("/x", listener="open"), Req("/x", headers=ALLOW, listener="nocluster")])
    assert (closed.status, closed.text) == (403, "")
    assert status.status == 503 and status.service is None
    assert opened.status == 200 and opened.upstream_headers["x-envoy-auth-failure-mode-allowed"] == "true"
    assert nocluster.status == 403


def test_http_authorizer_5xx_and_timeout_are_errors_other_codes_deny(e2e):
    """An HTTP authorization server answering 5xx, or too late (server_uri timeout), is an
    error (status_on_error, or allowed with failure_mode_allow); any other non-200 is a denial
    with its status and body. The 'authorizer' here is a plain demo-app told its status and
    delay by headers the filter adds."""
    a, fake = e2e.upstreams("a", "fake-authz")

    def lst(name, status, delay_ms=0, **cfg):
        f = http_authz("fake", authorization_request={"headers_to_add": [
            {"key": "x-demo-status", "value": str(status)},
            {"key": "x-demo-delay-ms", "value": str(delay_ms)}]}, **cfg)
        if delay_ms:
            f["typed_config"]["http_service"]["server_uri"]["timeout"] = "0.2s"
        return http_listener(name, route_config([vhost("all", [route(prefix("/"), cluster="a")])]),
                             http_filters=[f])

    bs = bootstrap([lst("e500", 500, status_on_error={"code": 502}),
                    lst("e503open", 503, failure_mode_allow=True),
                    lst("d401", 401),
                    lst("slow", 200, delay_ms=3000)],
                   [static_cluster("a", [a.endpoint]), static_cluster("fake", [fake.endpoint])])
    e500, e503open, d401, slow = differential(e2e, bs, [
        Req("/x", listener="e500"), Req("/x", listener="e503open"), Req("/x", listener="d401"),
        Req("/x", listener="slow")])
    assert e500.status == 502 and e500.text == ""
    assert e503open.status == 200 and "x-envoy-auth-failure-mode-allowed" not in e503open.upstream_headers
    assert d401.status == 401 and d401.header("x-demo-service") == "fake-authz/v1"
    assert d401.json is not None and d401.json["path"] == "/x"
    assert (slow.status, slow.text) == (403, "")   # the check timed out: an error


def test_filter_enabled_metadata_from_rbac_shadow_rules_istio_shape(e2e):
    """Istio's CUSTOM action: an RBAC filter whose DENY shadow rules name the CUSTOM policy
    (stat prefix istio_ext_authz_), then ext_authz enabled only when the RBAC filter's
    `istio_ext_authz_shadow_effective_policy_id` metadata names that provider."""
    a, = e2e.upstreams("a")
    authz = start_authorizer(e2e)
    policy = "istio-ext-authz-sample-ns[foo]-policy[ext-authz]-rule[0]"
    rbac = http_filter("envoy.filters.http.rbac", RBAC, shadow_rules_stat_prefix="istio_ext_authz_",
                       shadow_rules={"action": "DENY", "policies": {policy: {
                           "permissions": [{"url_path": {"path": {"prefix": "/protected"}}}],
                           "principals": [{"any": True}]}}})
    enabled = {"filter": "envoy.filters.http.rbac",
               "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
               "value": {"string_match": {"prefix": "istio-ext-authz-sample"}}}
    f = grpc_authz(filter_enabled_metadata=enabled)
    bs = bootstrap([listener([rbac, f])], [static_cluster("a", [a.endpoint]), *authz.clusters()])
    open_, protected, allowed = differential(e2e, bs, [
        Req("/open"), Req("/protected/x"), Req("/protected/x", headers=ALLOW)])
    assert open_.status == 200 and RESULT not in open_.upstream_headers
    assert (protected.status, protected.text) == (403, DENY_BODY)
    assert allowed.status == 200 and allowed.upstream_headers[RESULT] == "allowed"


def test_with_request_body(e2e):
    a, = e2e.upstreams("a")
    authz = start_authorizer(e2e)
    buffered = grpc_authz(with_request_body={"max_request_bytes": 8, "allow_partial_message": True})
    strict = grpc_authz(with_request_body={"max_request_bytes": 8})
    routes = [route(prefix("/"), cluster="a")]
    bs = bootstrap([
        http_listener("partial", route_config([vhost("all", routes)]), http_filters=[buffered]),
        http_listener("strict", route_config([vhost("all", routes)]), http_filters=[strict]),
        http_listener("http", route_config([vhost("all", routes)]), http_filters=[http_authz(
            allowed_headers=names("x-ext-authz"),
            with_request_body={"max_request_bytes": 8, "allow_partial_message": True},
            authorization_response={"allowed_upstream_headers": names(RECEIVED)})]),
    ], [static_cluster("a", [a.endpoint]), *authz.clusters()])
    small, big, too_big, via_http = differential(e2e, bs, [
        Req("/x", method="POST", body=b"tiny", headers=ALLOW, listener="partial"),
        Req("/x", method="POST", body=b"0123456789abcdef", headers=ALLOW, listener="partial"),
        Req("/x", method="POST", body=b"0123456789abcdef", headers=ALLOW, listener="strict"),
        Req("/x", method="POST", body=b"0123456789abcdef", headers=ALLOW, listener="http"),
    ])
    s = upstream_received(small)["http"]
    assert s["body"] == "tiny" and s["headers"]["x-envoy-auth-partial-body"] == "false"
    assert small.echo["body"] == "tiny"
    b = upstream_received(big)["http"]
    assert b["body"] == "01234567" and b["headers"]["x-envoy-auth-partial-body"] == "true"
    assert big.echo["body"] == "0123456789abcdef"
    assert too_big.status == 413
    h = upstream_received(via_http)
    assert (h["body"], h["headers"]["content-length"]) == ("01234567", "8")
    assert via_http.echo["body"] == "0123456789abcdef"


NET_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"
NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def test_network_ext_authz_on_tcp_proxy(e2e):
    """envoy.filters.network.ext_authz in front of a tcp_proxy, in Istio's CUSTOM shape (network
    RBAC shadow rules, then ext_authz gated on their metadata): the sample authorizer denies a
    connection without credentials (closed, nothing proxied); a chain whose shadow rules do not
    match is not checked; an unreachable authorizer closes the connection unless
    failure_mode_allow."""
    db = e2e.upstream("db", "v1", tcp=True)
    authz = start_authorizer(e2e)
    dead = free_port()
    policy = "istio-ext-authz-sample-ns[foo]-policy[tcp]-rule[0]"

    def shadow(port_matches: bool) -> dict:
        perm = {"any": True} if port_matches else {"destination_port": 1}
        return {"name": "envoy.filters.network.rbac", "typed_config": {
            "@type": NET_RBAC, "stat_prefix": "tcp.", "shadow_rules_stat_prefix": "istio_ext_authz_",
            "shadow_rules": {"action": "DENY", "policies": {policy: {
                "permissions": [perm], "principals": [{"any": True}]}}}}}

    def ext_authz(cluster: str, **cfg) -> dict:
        return {"name": "envoy.filters.network.ext_authz", "typed_config": {
            "@type": NET_EXT_AUTHZ, "stat_prefix": "tcp.", "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "2s"},
            "filter_enabled_metadata": {
                "filter": "envoy.filters.network.rbac",
                "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
                "value": {"string_match": {"prefix": "istio-ext-authz-sample"}}},
            **cfg}}

    def lst(name: str, filters: list[dict]) -> dict:
        proxy = {"name": "envoy.filters.network.tcp_proxy",
                 "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": "db"}}
        return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [*filters, proxy]}]}

    bs = bootstrap([
        lst("denied", [shadow(True), ext_authz("authz-grpc")]),
        lst("unchecked", [shadow(False), ext_authz("authz-grpc")]),
        lst("down", [shadow(True), ext_authz("dead")]),
        lst("down-open", [shadow(True), ext_authz("dead", failure_mode_allow=True)]),
    ], [static_cluster("db", [db.tcp_endpoint]), *authz.clusters(),
        static_cluster("dead", [("127.0.0.1", dead)], http2=True)])
    denied, unchecked, down, down_open = differential(e2e, bs, [
        TcpReq(b"hello\n", listener="denied"), TcpReq(b"hello\n", listener="unchecked"),
        TcpReq(b"hello\n", listener="down"), TcpReq(b"hello\n", listener="down-open")])
    assert denied.body == b"" and down.body == b""
    assert unchecked.body == b"db/v1: hello\n" and down_open.body == b"db/v1: hello\n"


@pytest.mark.parametrize("case", ["auto_api_version", "v2_api_version", "zero_max_request_bytes"])
def test_config_validation(e2e, case):
    """What both accept or refuse at load time: an unset transport_api_version (AUTO) is taken
    as v3; V2 and a zero max_request_bytes are refused."""
    f = {
        "auto_api_version": lambda: http_filter("envoy.filters.http.ext_authz", EXT_AUTHZ,
                                                grpc_service={"envoy_grpc": {"cluster_name": "authz-grpc"}}),
        "v2_api_version": lambda: grpc_authz(transport_api_version="V2"),
        "zero_max_request_bytes": lambda: grpc_authz(with_request_body={"max_request_bytes": 0}),
    }[case]()
    bs = bootstrap([listener([f])], [static_cluster("a", [("127.0.0.1", 9)]),
                                     static_cluster("authz-grpc", [("127.0.0.1", 9)], http2=True)])
    results = e2e.startup(bs, timeout=10.0)
    outcomes = {label: r.rejected for label, r in results.items()}
    expected = case != "auto_api_version"
    assert all(v == expected for v in outcomes.values()), (
        outcomes, {label: r.output[-1500:] for label, r in results.items()})


def test_grpc_ok_response_mutations(e2e):
    """What an OK CheckResponse can change: request headers (append unset, append true/false,
    each append_action), headers removed (never Host), response headers added, query
    parameters set and removed. The authorizer's test hook answers with the mutations the
    request's `x-ext-authz-mutate` JSON describes."""
    a, = e2e.upstreams("a")
    authz = start_authorizer(e2e, "--ext-authz-test-mutations")
    spec = {
        "headers": [
            {"key": "x-set", "value": "new"},
            {"key": "x-app", "value": "more", "append": True},
            {"key": "x-repl", "value": "new", "append": False},
            {"key": "x-add", "value": "more", "action": "APPEND_IF_EXISTS_OR_ADD"},
            {"key": "x-absent", "value": "new", "action": "ADD_IF_ABSENT"},
            {"key": "x-kept", "value": "new", "action": "ADD_IF_ABSENT"},
            {"key": "x-ovr", "value": "new", "action": "OVERWRITE_IF_EXISTS"},
            {"key": "x-ovr-missing", "value": "new", "action": "OVERWRITE_IF_EXISTS"},
            {"key": "x-fresh", "value": "f", "append": True},
        ],
        "response_headers_to_add": [{"key": "x-resp", "value": "r"},
                                    {"key": "x-resp-app", "value": "r2", "append": True}],
        "headers_to_remove": ["x-secret", "host"],
        "query_set": {"q": "2", "new": "n"},
        "query_remove": ["drop"],
    }
    req = Req("/m?q=1&drop=x&keep=y", headers=ALLOW + [
        ("x-ext-authz-mutate", json.dumps(spec, separators=(",", ":"))),
        ("x-set", "old"), ("x-app", "old"), ("x-repl", "old"), ("x-add", "old"), ("x-kept", "old"),
        ("x-ovr", "old"), ("x-secret", "s")])
    bs = bootstrap([listener([grpc_authz()])], [static_cluster("a", [a.endpoint]), *authz.clusters()])
    o, = differential(e2e, bs, [req])
    up = o.upstream_headers
    assert o.status == 200
    # Envoy reads only the deprecated `append`: unset or false replaces (whatever
    # append_action says); true joins to an existing header and adds nothing otherwise.
    assert (up["x-set"], up["x-repl"], up["x-app"]) == ("new", "new", "old,more")
    assert (up["x-add"], up["x-kept"], up["x-ovr"]) == ("more", "new", "new")
    assert up["x-absent"] == up["x-ovr-missing"] == "new" and "x-fresh" not in up
    assert "x-secret" not in up and o.echo["host"] == "e2e.test"
    assert o.echo["path"] == "/m?keep=y&new=n&q=2"   # rebuilt with sorted names
    assert o.header("x-resp") == "r"
