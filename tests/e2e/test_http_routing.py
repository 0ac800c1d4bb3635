"""HTTP routing scenarios: the same bootstrap and requests through Envoy and the
implementation under test; the normalized observations must be equal.
Assertions after `differential` state what the scenario is about (they hold for Envoy)."""
from harness import (Req, bootstrap, header, http_listener, path, prefix, query, regex,
                     route, route_config, static_cluster, vhost)


def clusters_for(*ups):
    return [static_cluster(u.service, [u.endpoint]) for u in ups]


def one_vhost(*routes, **vh):
    return http_listener("in", route_config([vhost("all", list(routes), **vh)]))


def test_basic_http1_route(e2e):
    a, = e2e.upstreams("a")
    bs = bootstrap([one_vhost(route(prefix("/"), cluster="a"))], clusters_for(a))
    [o, post] = e2e.differential(bs, [
        Req("/hello?x=1", headers=[("x-custom", "1"), ("x-multi", "a"), ("x-multi", "b")]),
        Req("/submit", method="POST", body=b"payload", headers=[("content-type", "text/plain")]),
    ])
    assert o.status == 200 and o.service == "a/v1"
    assert o.upstream_path == "/hello?x=1"
    assert o.echo["host"] == "e2e.test"
    assert o.upstream_headers["x-custom"] == "1"
    assert o.upstream_headers["x-forwarded-proto"] == "http"
    assert "x-request-id" in o.upstream_headers
    assert post.echo["body"] == "payload" and post.echo["method"] == "POST"


def test_path_prefix_regex_match(e2e):
    ups = e2e.upstreams("exact", "regex", "pfx", "ci", "fallback")
    bs = bootstrap([one_vhost(
        route(path("/exact"), cluster="exact"),
        route(regex(r"/re/[0-9]+"), cluster="regex"),
        route(prefix("/CaSe", case_sensitive=False), cluster="ci"),
        route(prefix("/p"), cluster="pfx"),
        route(prefix("/"), cluster="fallback"),
    )], clusters_for(*ups))
    reqs = {
        "/exact": "exact/v1",
        "/exact?q=1": "exact/v1",        # query is not part of the path match
        "/exact/": "fallback/v1",        # path match is exact
        "/re/123": "regex/v1",
        "/re/12a": "fallback/v1",        # safe_regex must match the whole path
        "/re/123?x=y": "regex/v1",
        "/case/x": "ci/v1",
        "/p": "pfx/v1",
        "/pre/fix": "pfx/v1",            # prefix is a string prefix, not a segment prefix
        "/": "fallback/v1",
    }
    obs = e2e.differential(bs, [Req(p) for p in reqs])
    assert [o.service for o in obs] == list(reqs.values())


def test_header_match(e2e):
    ups = e2e.upstreams("prod", "canary", "debug", "nobeta", "fallback")
    bs = bootstrap([one_vhost(
        route(prefix("/", headers=[header("x-env", string_match={"exact": "prod"})]), cluster="prod"),
        route(prefix("/", headers=[header("x-env", string_match={"prefix": "can"})]), cluster="canary"),
        route(prefix("/", headers=[header("x-debug", present_match=True)]), cluster="debug"),
        route(prefix("/inv", headers=[header("x-beta", present_match=True, invert_match=True)]), cluster="nobeta"),
        route(prefix("/"), cluster="fallback"),
    )], clusters_for(*ups))
    cases = [
        ([("x-env", "prod")], "/", "prod/v1"),
        ([("x-env", "Prod")], "/", "fallback/v1"),     # exact is case sensitive
        ([("x-env", "canary-7")], "/", "canary/v1"),
        ([("x-debug", "")], "/", "debug/v1"),          # present with an empty value
        ([], "/inv", "nobeta/v1"),
        ([("x-beta", "1")], "/inv", "fallback/v1"),
        ([("x-env", "prod"), ("x-env", "x")], "/", None),  # repeated header: compared, not asserted
    ]
    obs = e2e.differential(bs, [Req(p, headers=h) for h, p, _ in cases])
    for (h, p, want), o in zip(cases, obs):
        if want:
            assert o.service == want, (h, p)


def test_query_parameter_match(e2e):
    ups = e2e.upstreams("v2", "flag", "fallback")
    bs = bootstrap([one_vhost(
        route(prefix("/", query_parameters=[query("v", string_match={"exact": "2"})]), cluster="v2"),
        route(prefix("/", query_parameters=[query("flag", present_match=True)]), cluster="flag"),
        route(prefix("/"), cluster="fallback"),
    )], clusters_for(*ups))
    cases = {"/?v=2": "v2/v1", "/x?a=1&v=2": "v2/v1", "/?v=3": "fallback/v1", "/?V=2": "fallback/v1",
             "/?flag": "flag/v1", "/?flag=0": "flag/v1", "/": "fallback/v1", "/?v=2&v=3": None}
    obs = e2e.differential(bs, [Req(p) for p in cases])
    for (p, want), o in zip(cases.items(), obs):
        if want:
            assert o.service == want, p


def test_virtual_host_domain_precedence(e2e):
    ups = e2e.upstreams("exact", "suffix", "longsuffix", "prefixwild", "any")
    vhosts = [vhost(u.service, [route(prefix("/"), cluster=u.service)], domains=d) for u, d in zip(ups, [
        ["api.example.com"], ["*.example.com"], ["*.b.example.com"], ["api.*"], ["*"]])]
    bs = bootstrap([http_listener("in", route_config(vhosts))], clusters_for(*ups))
    cases = {
        "api.example.com": "exact/v1",
        "API.Example.COM": "exact/v1",       # domain matching is case insensitive
        "x.example.com": "suffix/v1",
        "a.b.example.com": "longsuffix/v1",  # longest suffix wins
        "api.b.example.com": "longsuffix/v1",  # suffix wildcards beat prefix wildcards
        "api.other.org": "prefixwild/v1",
        "other.org": "any/v1",
        "api.example.com:8080": None,        # host with port: compared only
        "example.com": "any/v1",
    }
    obs = e2e.differential(bs, [Req("/", host=h) for h in cases])
    for (h, want), o in zip(cases.items(), obs):
        if want:
            assert o.service == want, h


def test_prefix_and_regex_rewrite(e2e):
    a, = e2e.upstreams("a")
    bs = bootstrap([one_vhost(
        route(prefix("/api/"), cluster="a", action={"prefix_rewrite": "/"}),
        route(prefix("/v1"), cluster="a", action={"prefix_rewrite": "/v2", "host_rewrite_literal": "rewritten.test"}),
        route(prefix("/re/"), cluster="a", action={"regex_rewrite": {
            "pattern": {"regex": "^/re/([^/]+)/(.*)$"}, "substitution": "/\\2/\\1"}}),
        route(prefix("/"), cluster="a"),
    )], [static_cluster("a", [a.endpoint])])
    cases = {"/api/users?id=7": "/users?id=7", "/api/": "/", "/api": "/api",
             "/v1/items": "/v2/items", "/re/x/y/z": "/y/z/x"}
    obs = e2e.differential(bs, [Req(p) for p in cases])
    for (p, want), o in zip(cases.items(), obs):
        assert o.upstream_path == want, p
    assert obs[3].echo["host"] == "rewritten.test"
    assert "x-forwarded-host" not in obs[3].upstream_headers  # only with append_x_forwarded_host


def test_direct_response(e2e):
    bs = bootstrap([one_vhost(
        route(path("/text"), direct_response={"status": 200, "body": {"inline_string": "hello"}}),
        route(path("/empty"), direct_response={"status": 503}),
        route(path("/teapot"), direct_response={"status": 418, "body": {"inline_string": "short and stout"}},
              response_headers_to_add=[{"header": {"key": "x-tea", "value": "earl-grey"}}]),
    )], [])
    t, e, tea, miss = e2e.differential(bs, [Req("/text"), Req("/empty"), Req("/teapot"), Req("/nothing")])
    assert (t.status, t.text) == (200, "hello")
    assert t.header("content-type") == "text/plain"
    assert (e.status, e.text) == (503, "")
    assert tea.status == 418 and tea.header("x-tea") == "earl-grey"
    assert (miss.status, miss.text) == (404, "")


def test_redirects(e2e):
    bs = bootstrap([one_vhost(
        route(prefix("/secure"), redirect={"https_redirect": True}),
        route(path("/old"), redirect={"path_redirect": "/new", "response_code": "FOUND"}),
        route(prefix("/docs/"), redirect={"prefix_rewrite": "/manual/", "strip_query": True,
                                          "response_code": "PERMANENT_REDIRECT"}),
        route(prefix("/moved"), redirect={"host_redirect": "elsewhere.test", "port_redirect": 8443,
                                          "scheme_redirect": "https", "response_code": "TEMPORARY_REDIRECT"}),
    )], [])
    s, old, docs, moved = e2e.differential(bs, [
        Req("/secure/a?x=1"), Req("/old?keep=1"), Req("/docs/intro?q=2"), Req("/moved/x")])
    assert s.status == 301 and s.header("location") == "https://e2e.test/secure/a?x=1"
    assert old.status == 302 and old.header("location") == "http://e2e.test/new?keep=1"
    assert docs.status == 308 and docs.header("location") == "http://e2e.test/manual/intro"
    assert moved.status == 307 and moved.header("location") == "https://elsewhere.test:8443/moved/x"


def test_request_and_response_header_manipulation(e2e):
    a, = e2e.upstreams("a")
    rt = route(prefix("/"), cluster="a",
               request_headers_to_add=[
                   {"header": {"key": "x-route-add", "value": "r"}},
                   {"header": {"key": "x-appended", "value": "proxy"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
                   {"header": {"key": "x-overwritten", "value": "proxy"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                   {"header": {"key": "x-if-absent", "value": "proxy"}, "append_action": "ADD_IF_ABSENT"},
                   {"header": {"key": "x-client-ip", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}},
               ],
               request_headers_to_remove=["x-secret"],
               response_headers_to_add=[{"header": {"key": "x-resp-route", "value": "r"}}],
               response_headers_to_remove=["x-upstream-internal"])
    vh = vhost("all", [rt],
               request_headers_to_add=[{"header": {"key": "x-vhost-add", "value": "v"}}],
               response_headers_to_add=[{"header": {"key": "x-resp-vhost", "value": "v"}}])
    rc = route_config([vh], response_headers_to_add=[{"header": {"key": "x-resp-rc", "value": "rc"}}])
    bs = bootstrap([http_listener("in", rc)], [static_cluster("a", [a.endpoint])])
    [o] = e2e.differential(bs, [Req("/", headers=[
        ("x-secret", "s"), ("x-appended", "client"), ("x-overwritten", "client"), ("x-if-absent", "client"),
        ("x-demo-response-header", "x-upstream-internal=1"), ("x-demo-response-header", "x-upstream-public=1")])])
    h = o.upstream_headers
    assert "x-secret" not in h
    assert h["x-route-add"] == "r" and h["x-vhost-add"] == "v"
    assert h["x-appended"] == "client,proxy"
    assert h["x-overwritten"] == "proxy"
    assert h["x-if-absent"] == "client"
    assert h["x-client-ip"] == "127.0.0.1"
    assert o.header("x-upstream-internal") is None and o.header("x-upstream-public") == "1"
    assert (o.header("x-resp-route"), o.header("x-resp-vhost"), o.header("x-resp-rc")) == ("r", "v", "rc")


def test_upstream_status_and_headers_pass_through(e2e):
    a, = e2e.upstreams("a")
    bs = bootstrap([one_vhost(route(prefix("/"), cluster="a"))], [static_cluster("a", [a.endpoint])])
    err, body = e2e.differential(bs, [
        Req("/", headers=[("x-demo-status", "503"), ("x-demo-response-header", "retry-after=3")]),
        Req("/big", headers=[("x-demo-body-size", "100000")]),
    ])
    assert err.status == 503 and err.header("retry-after") == "3"
    assert body.status == 200 and len(body.body) == 100000


def test_no_route_is_404_with_empty_body(e2e):
    a, = e2e.upstreams("a")
    rc = route_config([vhost("only", [route(prefix("/api"), cluster="a")], domains=["only.test"])])
    bs = bootstrap([http_listener("in", rc)], [static_cluster("a", [a.endpoint])])
    no_path, no_vhost, h2 = e2e.differential(bs, [
        Req("/other", host="only.test"), Req("/api", host="unknown.test"), Req("/other", host="only.test", proto="h2c")])
    for o in (no_path, no_vhost, h2):
        assert (o.status, o.body) == (404, b"")
        assert o.service is None


def test_unreachable_endpoint_is_503(e2e):
    from harness import free_port
    bs = bootstrap([one_vhost(route(prefix("/"), cluster="dead"))],
                   [static_cluster("dead", [("127.0.0.1", free_port())], connect_timeout="0.5s")])
    [o] = e2e.differential(bs, [Req("/")])
    assert o.status == 503
