"""JWT authentication scenarios (envoy.filters.http.jwt_authn): valid tokens forwarded with
their payload, wrong issuer and audience, expired, tampered signature, `alg: none`, missing
tokens with and without `allow_missing`, custom token locations, claims copied to headers,
per-route requirements, inline and remote JWKS (served from an in-process server, and a
JWKS endpoint that is down), and the verified payload matched by RBAC through dynamic
metadata. Tokens are made here with the `cryptography` package."""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from harness import (Req, bootstrap, free_port, http_filter, http_listener, prefix, route,
                     route_config, static_cluster, vhost)

JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
JWT_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ISSUER = "https://issuer.e2e.test"


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def uint(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class Signer:
    """An RSA (RS256) or EC P-256 (ES256) key, its JWK and tokens signed with it."""

    def __init__(self, kind: str = "RSA", kid: str = "k1"):
        self.kind, self.kid = kind, kid
        if kind == "RSA":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict:
        pub = self.key.public_key().public_numbers()
        if self.kind == "RSA":
            return {"kty": "RSA", "kid": self.kid, "alg": "RS256", "n": b64(uint(pub.n)), "e": b64(uint(pub.e))}
        return {"kty": "EC", "kid": self.kid, "crv": "P-256",
                "x": b64(pub.x.to_bytes(32, "big")), "y": b64(pub.y.to_bytes(32, "big"))}

    def token(self, claims: dict, header: dict | None = None) -> str:
        alg = "RS256" if self.kind == "RSA" else "ES256"
        h = {"alg": alg, "typ": "JWT", "kid": self.kid, **(header or {})}
        signing_input = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(claims).encode())}".encode()
        if self.kind == "RSA":
            sig = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input.decode()}.{b64(sig)}"


def jwks(*signers: Signer) -> str:
    return json.dumps({"keys": [s.jwk() for s in signers]})


def claims(**over) -> dict:
    c = {"iss": ISSUER, "sub": "alice", "aud": "api.e2e.test", "iat": int(time.time()),
         "exp": int(time.time()) + 600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def provider(jwks_source: dict, **extra) -> dict:
    return {"issuer": ISSUER, "audiences": ["api.e2e.test"], **jwks_source, **extra}


def inline(s: str) -> dict:
    return {"local_jwks": {"inline_string": s}}


def jwt_filter(providers: dict, rules: list[dict], **extra) -> dict:
    return http_filter("envoy.filters.http.jwt_authn", JWT_AUTHN, providers=providers, rules=rules, **extra)


def rule(p: str, requires: dict | None = None) -> dict:
    r = {"match": {"prefix": p}}
    if requires is not None:
        r["requires"] = requires
    return r


def listener_with(filters, *routes, name="in"):
    routes = list(routes) or [route(prefix("/"), cluster="a")]
    return http_listener(name, route_config([vhost("all", routes)]), http_filters=filters)


def bearer(t: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {t}")]


def test_inline_jwks_valid_and_invalid_tokens(e2e):
    a, = e2e.upstreams("a")
    key, other = Signer(), Signer(kid="k1")
    f = jwt_filter({"p1": provider(inline(jwks(key)), forward_payload_header="x-jwt-payload",
                                   claim_to_headers=[{"header_name": "x-jwt-sub", "claim_name": "sub"}])},
                   [rule("/public"), rule("/", {"provider_name": "p1"})])
    bs = bootstrap([listener_with([f])], [static_cluster("a", [a.endpoint])])
    good = key.token(claims())
    header_b64, payload_b64, sig_b64 = good.split(".")
    tampered = f"{header_b64}.{b64(json.dumps(claims(sub='admin')).encode())}.{sig_b64}"
    alg_none = f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload_b64}."
    alg_none_sig = f"{b64(json.dumps({'alg': 'none'}).encode())}.{payload_b64}.{sig_b64}"
    obs = e2e.differential(bs, [
        Req("/api", headers=bearer(good)),
        Req("/api", headers=bearer(key.token(claims(iss="https://evil.test")))),
        Req("/api", headers=bearer(key.token(claims(aud="other.test")))),
        Req("/api", headers=bearer(key.token(claims(exp=int(time.time()) - 3600)))),
        Req("/api", headers=bearer(key.token(claims(nbf=int(time.time()) + 3600)))),
        Req("/api", headers=bearer(tampered)),
        Req("/api", headers=bearer(other.token(claims()))),
        Req("/api", headers=bearer(alg_none)),
        Req("/api", headers=bearer(alg_none_sig)),
        Req("/api?q=1"),
        Req("/public"),
        Req("/api", headers=[("authorization", f"bearer {good}")]),
        Req("/api", headers=bearer(good) + [("x-jwt-sub", "mallory")], proto="h2c"),
        Req("/api", headers=bearer("garbage")),
    ])
    ok, iss, aud, expired, early, tamp, wrong_key, none, none_sig, missing, public, lower, h2, garbage = obs
    assert ok.status == 200 and ok.service == "a/v1"
    assert ok.upstream_headers["x-jwt-payload"] == payload_b64
    assert ok.upstream_headers["x-jwt-sub"] == "alice"
    assert "authorization" not in ok.upstream_headers          # forward: false removes the token
    assert (iss.status, iss.text) == (401, "Jwt issuer is not configured")
    assert (aud.status, aud.text) == (403, "Audiences in Jwt are not allowed")
    assert (expired.status, expired.text) == (401, "Jwt is expired")
    assert (early.status, early.text) == (401, "Jwt not yet valid")
    assert (tamp.status, tamp.text) == (401, "Jwt verification fails")
    assert (wrong_key.status, wrong_key.text) == (401, "Jwt verification fails")
    assert expired.header("www-authenticate") == 'Bearer realm="http://e2e.test/api", error="invalid_token"'
    assert none.status == 401 and none_sig.status == 401
    assert none_sig.text == "Jwt header [alg] is not supported"
    assert (missing.status, missing.text) == (401, "Jwt is missing")
    assert missing.header("www-authenticate") == 'Bearer realm="http://e2e.test/api?q=1"'
    assert public.status == 200
    assert lower.status == 401 and lower.text == "Jwt is missing"   # the "Bearer " prefix is case-sensitive
    assert h2.status == 200 and h2.upstream_headers["x-jwt-sub"] == "alice"
    assert garbage.status == 401


def test_allow_missing_and_requires_any(e2e):
    a, = e2e.upstreams("a")
    k1, k2 = Signer(kid="k1"), Signer("EC", kid="k2")
    providers = {
        "p1": provider(inline(jwks(k1)), forward_payload_header="x-p1"),
        "p2": {"issuer": "https://second.e2e.test", **inline(jwks(k2)), "forward_payload_header": "x-p2",
               "from_headers": [{"name": "x-token"}]},
    }
    f = jwt_filter(providers, [
        rule("/optional", {"requires_any": {"requirements": [{"provider_name": "p1"}, {"allow_missing": {}}]}}),
        rule("/lenient", {"allow_missing_or_failed": {}}),
        rule("/either", {"requires_any": {"requirements": [{"provider_name": "p1"}, {"provider_name": "p2"}]}}),
        rule("/both", {"requires_all": {"requirements": [{"provider_name": "p1"}, {"provider_name": "p2"}]}}),
    ])
    bs = bootstrap([listener_with([f])], [static_cluster("a", [a.endpoint])])
    t1 = k1.token(claims())
    t2 = k2.token(claims(iss="https://second.e2e.test", aud=None))
    bad = Signer().token(claims())
    obs = e2e.differential(bs, [
        Req("/optional"), Req("/optional", headers=bearer(t1)), Req("/optional", headers=bearer(bad)),
        Req("/lenient", headers=bearer(bad)), Req("/lenient"),
        Req("/either", headers=[("x-token", t2)]), Req("/either"), Req("/either", headers=bearer(bad)),
        Req("/both", headers=bearer(t1) + [("x-token", t2)]), Req("/both", headers=bearer(t1)),
    ])
    opt_none, opt_ok, opt_bad, len_bad, len_none, either_ok, either_none, either_bad, both_ok, both_one = obs
    assert opt_none.status == 200 and opt_ok.status == 200
    assert (opt_bad.status, opt_bad.text) == (401, "Jwt verification fails")
    assert len_bad.status == 200 and len_none.status == 200
    assert either_ok.status == 200 and "x-p2" in either_ok.upstream_headers
    assert (either_none.status, either_none.text) == (401, "Jwt is missing")
    assert either_bad.status == 401
    assert both_ok.status == 200 and {"x-p1", "x-p2"} <= set(both_ok.upstream_headers)
    assert (both_one.status, both_one.text) == (401, "Jwt is missing")


def test_token_locations_and_per_route_requirements(e2e):
    a, = e2e.upstreams("a")
    key = Signer()
    p = provider(inline(jwks(key)), from_params=["jwt"], from_cookies=["session"],
                 from_headers=[{"name": "x-auth", "value_prefix": "Token "}], forward=True)
    f = jwt_filter({"p1": p}, [rule("/", {"provider_name": "p1"})],
                   requirement_map={"need-p1": {"provider_name": "p1"}})
    disabled = {"@type": JWT_PER_ROUTE, "disabled": True}
    named = {"@type": JWT_PER_ROUTE, "requirement_name": "need-p1"}
    unknown = {"@type": JWT_PER_ROUTE, "requirement_name": "nope"}
    bs = bootstrap([listener_with(
        [f],
        route(prefix("/off"), cluster="a", typed_per_filter_config={"envoy.filters.http.jwt_authn": disabled}),
        route(prefix("/named"), cluster="a", typed_per_filter_config={"envoy.filters.http.jwt_authn": named}),
        route(prefix("/unknown"), cluster="a", typed_per_filter_config={"envoy.filters.http.jwt_authn": unknown}),
        route(prefix("/"), cluster="a"))], [static_cluster("a", [a.endpoint])])
    t = key.token(claims())
    obs = e2e.differential(bs, [
        Req(f"/q?jwt={t}"), Req("/c", headers=[("cookie", f"a=b; session={t}")]),
        Req("/h", headers=[("x-auth", f"Token {t}")]), Req("/off"), Req("/named"),
        Req("/named", headers=[("x-auth", f"Token {t}")]), Req("/unknown"),
    ])
    q, c, h, off, named_none, named_ok, unknown_o = obs
    assert q.status == c.status == h.status == 200
    assert h.upstream_headers["x-auth"] == f"Token {t}"   # forward: true keeps it
    assert off.status == 200
    assert (named_none.status, named_none.text) == (401, "Jwt is missing")
    assert named_ok.status == 200
    assert unknown_o.status == 403
    assert unknown_o.text == "Failed JWT authentication: Wrong requirement_name: nope. It should be one of [need-p1]"


class JwksServer:
    """Serves a JWKS document over HTTP/1.1; `.body` and `.status` can change between requests."""

    def __init__(self, body: str):
        self.body, self.status, self.hits = body, 200, 0
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                srv.hits += 1
                out = srv.body.encode()
                self.send_response(srv.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server():
    servers = []

    def make(body: str) -> JwksServer:
        s = JwksServer(body)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.stop()


def remote(cluster: str, port: int, **extra) -> dict:
    return {"remote_jwks": {"http_uri": {"uri": f"http://jwks.e2e.test:{port}/.well-known/jwks.json",
                                         "cluster": cluster, "timeout": "2s"}, **extra}}


def test_remote_jwks(e2e, jwks_server):
    a, = e2e.upstreams("a")
    key = Signer("EC")
    srv = jwks_server(jwks(key))
    dead_port = free_port()
    f = jwt_filter({"up": provider(remote("jwks", srv.port)),
                    "down": {"issuer": "https://down.e2e.test", **remote("jwks_down", dead_port)}},
                   [rule("/down", {"provider_name": "down"}), rule("/", {"provider_name": "up"})])
    bs = bootstrap([listener_with([f])], [static_cluster("a", [a.endpoint]),
                                          static_cluster("jwks", [("127.0.0.1", srv.port)]),
                                          static_cluster("jwks_down", [("127.0.0.1", dead_port)])])
    t = key.token(claims())
    obs = e2e.differential(bs, [
        Req("/x", headers=bearer(t)), Req("/x", headers=bearer(t)),
        Req("/x", headers=bearer(Signer("EC").token(claims()))),
        Req("/down", headers=bearer(key.token(claims(iss="https://down.e2e.test", aud=None)))),
    ])
    first, cached, wrong, down = obs
    assert first.status == 200 and cached.status == 200
    assert (wrong.status, wrong.text) == (401, "Jwt verification fails")
    assert (down.status, down.text) == (401, "Jwks remote fetch is failed")


def test_cached_remote_jwks_survive_the_endpoint_going_down(e2e, jwks_server):
    """Within cache_duration the fetched keys are used without asking the endpoint again."""
    a, = e2e.upstreams("a")
    key = Signer()
    srv = jwks_server(jwks(key))
    f = jwt_filter({"up": provider(remote("jwks", srv.port, cache_duration="300s"))},
                   [rule("/", {"provider_name": "up"})])
    bs = bootstrap([listener_with([f])], [static_cluster("a", [a.endpoint]),
                                          static_cluster("jwks", [("127.0.0.1", srv.port)])])
    t = key.token(claims())

    def scenario(proxy):
        from harness.client import send
        addr = (proxy.host(), proxy.port())
        srv.status = 200
        first = send(addr, Req("/", headers=bearer(t))).status
        srv.status = 503
        second = send(addr, Req("/", headers=bearer(t))).status
        return first, second

    results = e2e.run_each(bs, scenario)
    for label, (first, second) in results.items():
        assert (first, second) == (200, 200), label


def test_jwt_payload_in_metadata_drives_rbac(e2e):
    a, = e2e.upstreams("a")
    key = Signer()
    f = jwt_filter({"p1": provider(inline(jwks(key)), payload_in_metadata="payload")},
                   [rule("/", {"allow_missing": {}})])
    metadata = {"filter": "envoy.filters.http.jwt_authn",
                "path": [{"key": "payload"}, {"key": "sub"}], "value": {"string_match": {"exact": "alice"}}}
    groups = {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "groups"}],
              "value": {"list_match": {"one_of": {"string_match": {"exact": "admins"}}}}}
    rbac = http_filter("envoy.filters.http.rbac", RBAC, rules={"action": "ALLOW", "policies": {
        "alice": {"permissions": [{"any": True}], "principals": [{"metadata": metadata}]},
        "admins": {"permissions": [{"any": True}], "principals": [{"metadata": groups}]}}})
    bs = bootstrap([listener_with([f, rbac])], [static_cluster("a", [a.endpoint])])
    alice, bob, admin, anonymous = e2e.differential(bs, [
        Req("/", headers=bearer(key.token(claims()))),
        Req("/", headers=bearer(key.token(claims(sub="bob")))),
        Req("/", headers=bearer(key.token(claims(sub="carol", groups=["dev", "admins"])))),
        Req("/"),
    ])
    assert alice.status == 200 and admin.status == 200
    assert (bob.status, bob.text) == (403, "RBAC: access denied")
    assert anonymous.status == 403


def assert_all_reject(e2e, bs, *must_mention):
    results = e2e.startup(bs, timeout=10.0)
    for label, r in results.items():
        assert r.rejected, f"{label} accepted the bootstrap (exit={r.exit_code}, ready={r.ready})\n{r.output[-2000:]}"
        low = r.output.lower()
        for word in must_mention:
            assert word.lower() in low, f"{label}: the error does not mention {word!r}:\n{r.output[-2000:]}"


def test_bad_configs_are_refused(e2e):
    a = static_cluster("a", [("127.0.0.1", 9)])
    key = Signer()
    unknown_provider = jwt_filter({"p1": provider(inline(jwks(key)))}, [rule("/", {"provider_name": "nope"})])
    assert_all_reject(e2e, bootstrap([listener_with([unknown_provider])], [a]), "nope")
    unknown_name = jwt_filter({"p1": provider(inline(jwks(key)))},
                              [{"match": {"prefix": "/"}, "requirement_name": "ghost"}])
    assert_all_reject(e2e, bootstrap([listener_with([unknown_name])], [a]), "ghost")


def test_unusable_inline_jwks_is_refused(e2e):
    a = static_cluster("a", [("127.0.0.1", 9)])
    f = jwt_filter({"p1": provider(inline("{not json"))}, [rule("/", {"provider_name": "p1"})])
    assert_all_reject(e2e, bootstrap([listener_with([f])], [a]), "invalid local jwks")
