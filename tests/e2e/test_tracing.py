"""Distributed tracing (HCM `tracing` with `envoy.tracers.opentelemetry`, OTLP/gRPC export, and
`envoy.tracers.zipkin`, B3 and Zipkin v2 JSON): the same bootstrap goes to Envoy and trellis,
each exports to its own receiver (harness/otlp.py, a real gRPC server on the official OTLP
protos; a Zipkin JSON collector for zipkin), and per request the
normalized view must be equal: what the upstream received (traceparent, tracestate,
x-request-id, x-envoy-decorator-operation), the response's decorator header, and the spans
exported for the request (name, kind, status, parent linkage, attributes, resource).

Normalized, and why (nothing else is):
- trace and span ids are random: a `traceparent` is rewritten as
  `00-<trace>-<span>-<flags>` with <trace> "incoming" (the client's trace id) or "new", and
  <span> the name of the exported span carrying that id ("unexported" when none); a span's
  trace id becomes "incoming", "=upstream" (the one the upstream saw) or "other", its parent
  "incoming" (the client's span id), "span:<name>" or "".
- x-request-id UUIDs are random: kept as "uuid(<char 14>)", the character where Envoy
  records the trace decision (9 sampled, a forced, b client, 4 not traced).
- span times are dropped; `response_size` becomes "<n>" (the demo-app echo's length follows
  the random ids); `grpc.timeout` becomes "<set>" (the gRPC client derives it from its own
  clock); the resource's telemetry.sdk.* values name the product (keys compared).
- B3 ids likewise: a trace id is "incoming" or "new" ("new/16" for 64 bits), a span id the
  exported span it names, "incoming" / "incoming-parent" (the client's), or "unexported";
  Zipkin spans also keep `id` ("incoming" when shared) and what only Zipkin JSON has (`shared`,
  local endpoint, annotations).
Envoy flushes spans on a timer: both proxies read `tracing.opentelemetry.flush_interval_ms`
and `min_flush_spans` from the bootstrap's runtime layer, set low here so spans arrive at once.
"""
from __future__ import annotations

import json
import re
import socket

import pytest

from harness import GrpcReq, Req, bootstrap, http_listener, prefix, route, route_config, static_cluster, vhost
from harness.otlp import OtlpReceiver
from harness.procs import free_port

OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
RUNTIME = {"layers": [{"name": "static", "static_layer": {
    "tracing.opentelemetry.flush_interval_ms": 100, "tracing.opentelemetry.min_flush_spans": 1}}]}
NODE = {"id": "node-e2e", "cluster": "e2e-cluster", "locality": {"zone": "zone-a"}}
PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TP_SAMPLED = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
TP_UNSAMPLED = f"00-{PARENT_TRACE}-{PARENT_SPAN}-00"
TP_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UPSTREAM_KEYS = ("traceparent", "tracestate", "x-request-id", "x-envoy-decorator-operation",
                 "x-envoy-force-trace", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
                 "x-b3-sampled", "b3")


def provider(cluster: str = "otlp", service: str = "e2e-svc") -> dict:
    return {"name": "envoy.tracers.opentelemetry", "typed_config": {
        "@type": OTEL, "service_name": service,
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "1s"}}}


def tracing_bootstrap(a, collector: tuple[str, int], tracing: dict, *, direction: str | None = None,
                      routes: list[dict] | None = None, hcm: dict | None = None) -> dict:
    routes = routes or [
        route(prefix("/dec"), cluster="a", decorator={"operation": "dec-op"}),
        route(prefix("/quiet-dec"), cluster="a", decorator={"operation": "quiet-op", "propagate": False}),
        route(prefix("/rw"), cluster="a", action={"prefix_rewrite": "/rewritten"}),
        {"match": prefix("/direct"), "direct_response": {"status": 503}},
        route(prefix("/retry"), cluster="a", action={"retry_policy": {"retry_on": "5xx", "num_retries": 1}}),
        route(prefix("/"), cluster="a"),
    ]
    listener = http_listener("in", route_config([vhost("all", routes, domains=["e2e.test"])]),
                             hcm_extra={"tracing": {"provider": provider(), **tracing}, **(hcm or {})})
    if direction:
        listener["traffic_direction"] = direction
    return bootstrap([listener],
                     [static_cluster("a", [a.endpoint]),
                      static_cluster("otlp", [collector], http2=True)],
                     layered_runtime=RUNTIME, node=NODE)


def run(e2e, make_bootstrap, reqs: list, expect_spans: int, collector=None,
        receiver=OtlpReceiver.start) -> dict:
    """Per implementation: a fresh receiver (unless `collector` is given: a dead address),
    the proxy, the requests, and every span once `expect_spans` arrived and no more follow."""
    out = {}
    for impl in e2e.implementations():
        rx = None if collector else receiver()
        try:
            proxy = e2e.start_proxy(impl.kind, make_bootstrap(collector or rx.endpoint))
            try:
                obs = e2e.observe(proxy, reqs)
                spans = []
                if rx:
                    rx.wait_for(expect_spans, timeout=15)
                    spans = rx.settle(quiet=0.5)
                stats[impl.label] = proxy.admin("/stats")[1]
            finally:
                proxy.stop()
        finally:
            if rx:
                rx.stop()
        out[impl.label] = (obs, spans)
    return out


stats: dict[str, str] = {}  # the last run's /stats text per implementation


def stat(label: str, name: str) -> int | None:
    m = re.search(rf"^{re.escape(name)}: (\d+)$", stats.get(label, ""), re.M)
    return int(m.group(1)) if m else None


def _nibble(rid: str | None) -> str | None:
    if rid and UUID_RE.match(rid):
        return f"uuid({rid[14]})"
    return rid


def _url_path(url: str | None) -> str | None:
    """The path of an `http.url` tag (`<proto>://<host><path>`)."""
    if not url or "://" not in url:
        return None
    rest = url.split("://", 1)[1]
    return rest[rest.index("/"):] if "/" in rest else ""


def normalize(req: Req, o, spans: list[dict], max_path: int = 256) -> dict:
    """The comparable view of one request (see the module docstring)."""
    grpc = isinstance(req, GrpcReq)
    headers = req.metadata if grpc else req.headers
    sent = dict(headers) if isinstance(headers, list) else dict(headers or {})
    path = req.method if grpc else req.path
    incoming = TP_RE.match(sent.get("traceparent", ""))
    in_trace, in_span = (incoming.group(2), incoming.group(3)) if incoming else (None, None)
    in_parent = sent.get("x-b3-parentspanid")
    if "x-b3-traceid" in sent:
        in_trace, in_span = sent["x-b3-traceid"], sent.get("x-b3-spanid")
    elif len(sent.get("b3", "")) > 1:
        parts = sent["b3"].split("-")
        in_trace, in_span = parts[0], parts[1]
        in_parent = parts[3] if len(parts) > 3 else None
    mine = [s for s in spans if _url_path(s["attributes"].get("http.url")) == path[:max_path]]
    mine += [s for s in spans if s["parent_span_id"] in {m["span_id"] for m in mine}
             and s not in mine]
    by_id = {s["span_id"]: s["name"] for s in mine}
    up = o.upstream_headers if not grpc and o.echo else None
    up_trace = None
    upstream = None

    def trace_ref(t: str) -> str:
        return "incoming" if t == in_trace else "new" if len(t) == 32 else f"new/{len(t)}"

    def span_ref(i: str) -> str:
        return (f"span:{by_id[i]}" if i in by_id else "incoming" if i == in_span
                else "incoming-parent" if i == in_parent else "unexported")

    if up is not None:
        upstream = {}
        for k in UPSTREAM_KEYS:
            v = up.get(k)
            if v is None:
                continue
            m = TP_RE.match(v) if k == "traceparent" else None
            if k in sent and v == sent[k] and k in ("traceparent", "b3", "x-b3-traceid"):
                up_trace = v.split("-")[0] if k == "b3" else v if k == "x-b3-traceid" else up_trace
                v = "<as sent>"
            elif m:
                up_trace = m.group(2)
                v = "-".join([m.group(1), trace_ref(m.group(2)), span_ref(m.group(3)), m.group(4)])
            elif k == "x-b3-traceid":
                up_trace = v
                v = trace_ref(v)
            elif k in ("x-b3-spanid", "x-b3-parentspanid"):
                v = span_ref(v)
            elif k == "b3" and len(v) > 1:
                parts = v.split("-")
                up_trace = parts[0]
                v = "-".join([trace_ref(parts[0]), span_ref(parts[1]), *parts[2:3],
                              *[span_ref(p) for p in parts[3:]]])
            elif k == "x-request-id":
                v = _nibble(v)
            upstream[k] = v

    def span_view(s: dict) -> dict:
        attrs = dict(s["attributes"])
        if "guid:x-request-id" in attrs:
            attrs["guid:x-request-id"] = _nibble(attrs["guid:x-request-id"])
        if "response_size" in attrs:
            attrs["response_size"] = "<n>"
        if "grpc.timeout" in attrs:
            attrs["grpc.timeout"] = "<set>"
        trace = ("incoming" if s["trace_id"] == in_trace
                 else "=upstream" if s["trace_id"] == up_trace else "other")
        parent = s["parent_span_id"]
        parent = span_ref(parent) if parent else ""
        view = {"name": s["name"], "kind": s["kind"], "status": s["status"]["code"],
                "trace": trace, "parent": parent, "trace_state": s["trace_state"],
                "attributes": dict(sorted(attrs.items())),
                "service.name": s["resource"].get("service.name"),
                "resource_keys": sorted(s["resource"])}
        if "zipkin" in s:
            view["zipkin"] = s["zipkin"]
            view["id"] = "incoming" if s["span_id"] == in_span else "new"
        return view

    return {"status": o.status, "upstream": upstream,
            "response_decorator": o.header("x-envoy-decorator-operation"),
            "response_request_id": _nibble(o.header("x-request-id")),
            "spans": sorted((span_view(s) for s in mine), key=lambda v: (v["kind"], v["name"]))}


def compare(e2e, results: dict, reqs: list[Req], max_path: int = 256) -> list[dict]:
    """Normalized per-request views of the reference and the implementation must be equal;
    also every exported span must belong to some request. Returns the implementation's."""
    views = {}
    for label, (obs, spans) in results.items():
        v = [normalize(r, o, spans, max_path) for r, o in zip(reqs, obs)]
        claimed = sum(len(x["spans"]) for x in v)
        assert claimed == len(spans), f"{label}: spans not matched to a request: {spans}"
        views[label] = v
    ref, mine = views[e2e.reference.label], views[e2e.impl.label]
    problems = [f"request #{i} {r.describe()}:\n  {e2e.reference.label}: {a}\n  {e2e.impl.label}: {b}"
                for i, (r, a, b) in enumerate(zip(reqs, ref, mine)) if a != b]
    assert not problems, "\n".join(problems)
    return mine


def one(view: dict, kind: str = "SERVER") -> dict:
    found = [s for s in view["spans"] if s["kind"] == kind]
    assert len(found) == 1, view
    return found[0]


# ------------------------------------------------------------------------------------ scenarios


def test_sampled_requests_spans_and_propagation(e2e):
    """Default sampling (100%): every request gets a SERVER span whose context the upstream
    receives; a sampled incoming traceparent continues its trace with tracestate passed on;
    decorators name spans and answer in x-envoy-decorator-operation; Envoy's standard tags."""
    a, = e2e.upstreams("a")
    reqs = [
        Req("/plain?q=1", headers=[("user-agent", "e2e-agent")]),
        Req("/dec/x"),
        Req("/quiet-dec/x"),
        Req("/rw/x"),
        Req("/parent", headers=[("traceparent", TP_SAMPLED), ("tracestate", "vendor=v1")]),
        Req("/ds", headers=[("x-envoy-downstream-service-cluster", "caller"),
                            ("x-client-trace-id", "client-1")]),
        Req("/fail", headers=[("x-demo-status", "503")]),
        Req("/direct"),
        Req("/nowhere", host="other.host"),
        Req("/h2", method="POST", body=b"hello", proto="h2c"),
        Req("/override", headers=[("x-envoy-decorator-operation", "from-caller")]),
        Req("/b3", headers=[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                            ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-sampled", "1"),
                            ("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1")]),
    ]
    res = run(e2e, lambda c: tracing_bootstrap(a, c, {}), reqs, expect_spans=len(reqs))
    v = compare(e2e, res, reqs)
    for impl in e2e.implementations():
        assert stat(impl.label, "tracing.opentelemetry.spans_sent") == len(reqs), stats[impl.label]

    plain = one(v[0])
    assert v[0]["upstream"]["traceparent"] == "00-new-span:ingress-01"
    assert v[0]["upstream"]["tracestate"] == ""
    assert v[0]["upstream"]["x-request-id"] == "uuid(9)"
    assert plain["trace"] == "=upstream" and plain["parent"] == "" and plain["status"] == "UNSET"
    assert plain["service.name"] == "e2e-svc"
    attrs = plain["attributes"]
    assert attrs["http.url"] == "http://e2e.test/plain?q=1" and attrs["http.method"] == "GET"
    assert attrs["node_id"] == "node-e2e" and attrs["zone"] == "zone-a"
    assert attrs["upstream_cluster"] == "a" and attrs["upstream_cluster.name"] == "a"
    assert attrs["http.status_code"] == "200" and attrs["response_flags"] == "-"
    assert attrs["component"] == "proxy" and attrs["user_agent"] == "e2e-agent"
    assert attrs["peer.address"] == "127.0.0.1" and attrs["downstream_cluster"] == "-"
    assert attrs["guid:x-request-id"] == "uuid(9)" and attrs["http.protocol"] == "HTTP/1.1"

    assert one(v[1])["name"] == "dec-op" and v[1]["response_decorator"] == "dec-op"
    assert one(v[2])["name"] == "quiet-op" and v[2]["response_decorator"] is None
    assert one(v[3])["attributes"]["http.url"] == "http://e2e.test/rw/x"  # the original path
    parent = one(v[4])
    assert parent["trace"] == "incoming" and parent["parent"] == "incoming"
    assert parent["trace_state"] == "vendor=v1"
    assert v[4]["upstream"]["traceparent"] == "00-incoming-span:ingress-01"
    assert v[4]["upstream"]["tracestate"] == "vendor=v1"
    ds = one(v[5])["attributes"]
    assert ds["downstream_cluster"] == "caller" and ds["guid:x-client-trace-id"] == "client-1"
    assert v[5]["upstream"]["x-request-id"] == "uuid(b)"
    fail = one(v[6])
    assert fail["status"] == "ERROR" and fail["attributes"]["error"] == "true"
    direct = one(v[7])
    assert "upstream_cluster" not in direct["attributes"] and direct["attributes"]["error"] == "true"
    assert one(v[8])["attributes"]["response_flags"] == "NR"
    h2 = one(v[9])["attributes"]
    assert h2["http.protocol"] == "HTTP/2" and h2["request_size"] == "5"
    assert one(v[10])["name"] == "from-caller"
    assert "x-envoy-decorator-operation" not in v[10]["upstream"]
    # B3 headers are not this tracer's: forwarded untouched.
    assert v[11]["upstream"]["b3"] == "<as sent>"
    assert v[11]["upstream"]["x-b3-traceid"] == "<as sent>"
    assert v[11]["upstream"]["x-b3-spanid"] == "incoming"


def test_sampling_decisions(e2e):
    """random_sampling 0: only x-client-trace-id and an x-request-id already marked traced make
    spans. An incoming sampled traceparent does not force sampling in Envoy 1.40 (its flag goes
    out as 00); an invalid traceparent is forwarded untouched and no span is made."""
    a, = e2e.upstreams("a")
    reqs = [
        Req("/plain"),
        Req("/client", headers=[("x-client-trace-id", "c-1")]),
        Req("/sampled-parent", headers=[("traceparent", TP_SAMPLED), ("tracestate", "k=v")]),
        Req("/marked", headers=[("x-request-id", "11111111-2222-9333-8444-555555555555")]),
        Req("/force", headers=[("x-envoy-force-trace", "1")]),
        Req("/bad-parent", headers=[("traceparent", "00-00000000000000000000000000000000-"
                                                    f"{PARENT_SPAN}-01")]),
        Req("/garbage", headers=[("traceparent", "garbage")]),
        Req("/not-uuid", headers=[("x-request-id", "not-a-uuid"), ("x-client-trace-id", "c-2")]),
        Req("/hex-id", headers=[("x-request-id", "1234abcd"), ("x-client-trace-id", "c-3")]),
    ]
    res = run(e2e, lambda c: tracing_bootstrap(a, c, {"random_sampling": {"value": 0}}), reqs,
              expect_spans=3)
    v = compare(e2e, res, reqs)
    assert [len(x["spans"]) for x in v] == [0, 1, 0, 1, 0, 0, 0, 0, 1]
    assert v[0]["upstream"]["traceparent"] == "00-new-unexported-00"
    assert v[0]["upstream"]["x-request-id"] == "uuid(4)"
    assert v[1]["upstream"]["traceparent"] == "00-new-span:ingress-01"
    assert v[2]["upstream"]["traceparent"] == "00-incoming-unexported-00"
    assert v[2]["upstream"]["tracestate"] == "k=v"
    assert v[3]["upstream"]["x-request-id"] == "uuid(9)"
    # x-envoy-force-trace counts only on internal requests; it is stripped from others.
    assert "x-envoy-force-trace" not in v[4]["upstream"]
    assert v[5]["upstream"]["traceparent"] == "<as sent>"
    assert "tracestate" not in v[5]["upstream"]
    assert v[6]["upstream"]["traceparent"] == "<as sent>"
    assert v[7]["upstream"]["x-request-id"] == "not-a-uuid"


def test_unsampled_parent_wins_over_sampling(e2e):
    """random_sampling 100 and x-client-trace-id cannot export a child of an unsampled parent."""
    a, = e2e.upstreams("a")
    reqs = [
        Req("/unsampled", headers=[("traceparent", TP_UNSAMPLED)]),
        Req("/unsampled-client", headers=[("traceparent", TP_UNSAMPLED), ("x-client-trace-id", "c")]),
        Req("/flags-03", headers=[("traceparent", TP_SAMPLED[:-2] + "03")]),
        Req("/marker"),
    ]
    res = run(e2e, lambda c: tracing_bootstrap(a, c, {}), reqs, expect_spans=2)
    v = compare(e2e, res, reqs)
    assert [len(x["spans"]) for x in v] == [0, 0, 1, 1]
    assert v[0]["upstream"]["traceparent"] == "00-incoming-unexported-00"
    assert v[2]["upstream"]["traceparent"] == "00-incoming-span:ingress-01"


def test_overall_and_route_sampling(e2e):
    """overall_sampling 0 untraces everything (also client-forced); a route's tracing replaces
    the connection manager's sampling and adds its custom tags."""
    a, = e2e.upstreams("a")
    routes = [route(prefix("/off"), cluster="a",
                    tracing={"random_sampling": {"numerator": 0},
                             "custom_tags": [{"tag": "route-tag", "literal": {"value": "r"}}]}),
              route(prefix("/"), cluster="a")]
    reqs = [Req("/off/x"), Req("/off/client", headers=[("x-client-trace-id", "c")]), Req("/on")]
    res = run(e2e, lambda c: tracing_bootstrap(a, c, {}, routes=routes), reqs, expect_spans=2)
    v = compare(e2e, res, reqs)
    assert [len(x["spans"]) for x in v] == [0, 1, 1]
    assert one(v[1])["attributes"]["route-tag"] == "r"

    reqs = [Req("/x"), Req("/client", headers=[("x-client-trace-id", "c")]),
            Req("/marked", headers=[("x-request-id", "11111111-2222-9333-8444-555555555555")])]
    res = run(e2e, lambda c: tracing_bootstrap(a, c, {"overall_sampling": {"value": 0}}), reqs,
              expect_spans=0)
    v = compare(e2e, res, reqs)
    assert [len(x["spans"]) for x in v] == [0, 0, 0]
    assert v[2]["upstream"]["x-request-id"] == "uuid(4)"


def test_custom_tags_and_path_length(e2e):
    a, = e2e.upstreams("a")
    tags = [{"tag": "lit", "literal": {"value": "v1"}},
            {"tag": "hdr", "request_header": {"name": "x-tag", "default_value": "dflt"}},
            {"tag": "hdr-missing", "request_header": {"name": "x-none"}},
            {"tag": "env", "environment": {"name": "HOME", "default_value": "none"}},
            {"tag": "env-missing", "environment": {"name": "TRELLIS_E2E_UNSET_VARIABLE"}}]
    reqs = [Req("/tags/abcdefghijklmnop?x=1", headers=[("x-tag", "T")]), Req("/short")]
    res = run(e2e, lambda c: tracing_bootstrap(a, c, {"custom_tags": tags, "max_path_tag_length": 12}),
              reqs, expect_spans=2)
    v = compare(e2e, res, reqs, max_path=12)
    attrs = one(v[0])["attributes"]
    assert attrs["lit"] == "v1" and attrs["hdr"] == "T" and "hdr-missing" not in attrs
    assert "env-missing" not in attrs
    assert attrs["http.url"] == "http://e2e.test/tags/abcdef"
    assert one(v[1])["attributes"]["hdr"] == "dflt"


@pytest.mark.parametrize("spawn_upstream_span", [False, True])
def test_egress_listener(e2e, spawn_upstream_span):
    """traffic_direction OUTBOUND: spans are named `egress <host>`; the downstream span is a
    CLIENT span, or a SERVER span with a CLIENT `router <cluster> egress` child when
    spawn_upstream_span is set (the child's id is what the upstream sees). The decorator's
    operation goes to the upstream in x-envoy-decorator-operation."""
    a, = e2e.upstreams("a")
    reqs = [Req("/x"), Req("/dec/y"), Req("/fail", headers=[("x-demo-status", "500")]),
            Req("/parent", headers=[("traceparent", TP_SAMPLED)]),
            Req("/retry", headers=[("x-demo-status", "503")]),
            Req("/missing", headers=[("x-demo-status", "404")])]
    # With upstream spans: one per attempt (the retried request has two).
    n = (len(reqs) * 2 + 1) if spawn_upstream_span else len(reqs)
    # OpenTelemetry status: a CLIENT span fails on 4xx too, a SERVER span on 5xx only.
    res = run(e2e, lambda c: tracing_bootstrap(a, c, {"spawn_upstream_span": spawn_upstream_span},
                                               direction="OUTBOUND"), reqs, expect_spans=n)
    v = compare(e2e, res, reqs)
    assert v[1]["upstream"]["x-envoy-decorator-operation"] == "dec-op"
    assert v[1]["response_decorator"] is None
    assert one(v[5], "CLIENT")["status"] == "ERROR"
    if not spawn_upstream_span:
        s = one(v[0], "CLIENT")
        assert s["name"] == "egress e2e.test"
        assert v[0]["upstream"]["traceparent"] == "00-new-span:egress e2e.test-01"
        return
    server, client = one(v[0], "SERVER"), one(v[0], "CLIENT")
    assert server["name"] == "egress e2e.test" and client["name"] == "router a egress"
    assert client["parent"] == "span:egress e2e.test"
    assert v[0]["upstream"]["traceparent"] == "00-new-span:router a egress-01"
    assert client["attributes"]["upstream_address"] == f"{a.host}:{a.port}"
    assert "node_id" not in client["attributes"]
    assert one(v[2], "CLIENT")["attributes"]["error"] == "true"
    assert one(v[3], "CLIENT")["trace"] == "incoming"
    attempts = [s for s in v[4]["spans"] if s["kind"] == "CLIENT"]
    assert len(attempts) == 2 and all(s["attributes"]["http.status_code"] == "503" for s in attempts)
    assert one(v[5], "SERVER")["status"] == "UNSET"


def test_internal_force_trace(e2e):
    """x-envoy-force-trace on an internal request (use_remote_address with internal_address_config
    listing the client) forces the trace, is forwarded, and returns the request id."""
    a, = e2e.upstreams("a")
    hcm = {"use_remote_address": True,
           "internal_address_config": {"cidr_ranges": [{"address_prefix": "127.0.0.1", "prefix_len": 32}]}}
    reqs = [Req("/force", headers=[("x-envoy-force-trace", "1")]), Req("/not-forced")]
    res = run(e2e, lambda c: tracing_bootstrap(a, c, {"random_sampling": {"value": 0}}, hcm=hcm),
              reqs, expect_spans=1)
    v = compare(e2e, res, reqs)
    assert [len(x["spans"]) for x in v] == [1, 0]
    assert v[0]["upstream"]["x-request-id"] == "uuid(a)"
    assert v[0]["upstream"]["x-envoy-force-trace"] == "1"
    assert v[0]["response_request_id"] == "uuid(a)"


def _stalled_listener() -> tuple[socket.socket, int]:
    """A socket that listens but never accepts: connections open and then nothing happens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s, s.getsockname()[1]


@pytest.mark.parametrize("collector", ["closed", "stalled"])
def test_collector_down_does_not_affect_requests(e2e, collector):
    """With the collector's port closed or never answering, requests succeed exactly as they
    do through Envoy, and still carry the trace context."""
    a, = e2e.upstreams("a")
    stalled = None
    if collector == "closed":
        port = free_port()
    else:
        stalled, port = _stalled_listener()
    try:
        reqs = [Req(f"/r{i}") for i in range(20)]
        reqs.append(Req("/post", method="POST", body=b"x" * 1000, proto="h2c"))
        res = run(e2e, lambda c: tracing_bootstrap(a, c, {}), reqs, expect_spans=0,
                  collector=("127.0.0.1", port))
    finally:
        if stalled:
            stalled.close()
    v = compare(e2e, res, reqs)
    assert all(x["status"] == 200 for x in v)
    assert all(x["upstream"]["traceparent"] == "00-new-unexported-01" for x in v)


def test_grpc_spans(e2e):
    """gRPC requests: the grpc.* tags, and a non-OK grpc-status marks the span as failed."""
    g, = e2e.upstreams("grpc")

    def bs(c):
        b = tracing_bootstrap(g, c, {})
        b["static_resources"]["clusters"][0] = static_cluster("a", [g.endpoint], http2=True)
        return b

    reqs = [GrpcReq(message=b"\x0a\x03abc", metadata=[("grpc-timeout", "5S")]),
            GrpcReq("/trellis.demo.Echo/ServerStream", message=b"m", stream=True,
                    metadata=[("x-demo-grpc-status", "14")]),
            # OpenTelemetry's status follows the gRPC code: NOT_FOUND is no server error.
            GrpcReq("/trellis.demo.Echo/Echo2", metadata=[("x-demo-grpc-status", "5")])]
    res = run(e2e, bs, reqs, expect_spans=3)
    v = compare(e2e, res, reqs)
    ok, failed = one(v[0])["attributes"], one(v[1])
    assert ok["grpc.path"] == "/trellis.demo.Echo/Echo" and ok["grpc.status_code"] == "0"
    assert ok["grpc.content_type"] == "application/grpc" and ok["http.protocol"] == "HTTP/2"
    assert failed["attributes"]["grpc.status_code"] == "14" and failed["status"] == "ERROR"
    assert one(v[2])["status"] == "UNSET" and "error" not in one(v[2])["attributes"]


# ------------------------------------------------------------------------------- zipkin (B3)

ZIPKIN = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
ZRUNTIME = {"layers": [{"name": "static", "static_layer": {
    "tracing.zipkin.flush_interval_ms": 100, "tracing.zipkin.min_flush_spans": 1}}]}
B3_TRACE = "463ac35c9f6413ad48485a3953bb6124"


class ZipkinReceiver:
    """A Zipkin v2 JSON collector (POST /api/v2/spans) keeping spans in memory, shaped like
    OtlpReceiver's (plus a "zipkin" dict with what only Zipkin has)."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        rx = self
        self._cond = threading.Condition()
        self._spans: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("content-length", 0)))
                rx._add(self.path, self.headers.get("content-type"), json.loads(body))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = self._server.server_address
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @classmethod
    def start(cls) -> "ZipkinReceiver":
        return cls()

    def _add(self, path, content_type, spans):
        out = []
        for z in spans:
            out.append({
                "trace_id": z["traceId"], "span_id": z["id"], "parent_span_id": z.get("parentId", ""),
                "name": z["name"], "kind": z.get("kind", ""), "trace_state": "",
                "attributes": z.get("tags", {}), "resource": {}, "status": {"code": "-"},
                "zipkin": {"path": path, "content_type": content_type, "shared": z.get("shared", False),
                           "local": z.get("localEndpoint"),
                           "annotations": [a["value"] for a in z.get("annotations", [])],
                           "timed": isinstance(z.get("timestamp"), int) and isinstance(z.get("duration"), int),
                           "trace_id_is_span_id": z["traceId"][-16:] == z["id"]},
            })
        with self._cond:
            self._spans.extend(out)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict]:
        import time
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._spans) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"zipkin receiver: {len(self._spans)} spans, wanted {n}"
                self._cond.wait(left)
            return list(self._spans)

    def settle(self, quiet: float = 0.5) -> list[dict]:
        with self._cond:
            seen = -1
            while seen != len(self._spans):
                seen = len(self._spans)
                self._cond.wait(quiet)
            return list(self._spans)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def zipkin_bootstrap(a, collector, tracing: dict, zipkin: dict | None = None, *,
                     direction: str | None = None) -> dict:
    cfg = {"@type": ZIPKIN, "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
           "collector_endpoint_version": "HTTP_JSON", **(zipkin or {})}
    routes = [route(prefix("/dec"), cluster="a", decorator={"operation": "dec-op"}),
              route(prefix("/"), cluster="a")]
    listener = http_listener("in", route_config([vhost("all", routes, domains=["e2e.test"])]),
                             hcm_extra={"tracing": {"provider": {"name": "envoy.tracers.zipkin",
                                                                 "typed_config": cfg}, **tracing}})
    if direction:
        listener["traffic_direction"] = direction
    return bootstrap([listener], [static_cluster("a", [a.endpoint]), static_cluster("zipkin", [collector])],
                     layered_runtime=ZRUNTIME, node=NODE)


def b3(span: str, sampled: str | None = "1", parent: str | None = None) -> list[tuple[str, str]]:
    h = [("x-b3-traceid", B3_TRACE), ("x-b3-spanid", span)]
    if parent:
        h.append(("x-b3-parentspanid", parent))
    if sampled is not None:
        h.append(("x-b3-sampled", sampled))
    return h


ZIPKIN_REQS = [
    Req("/root"),
    Req("/dec/x"),
    Req("/b3-sampled", headers=b3("a2fb4a1d1a96d301")),
    Req("/b3-unsampled", headers=b3("a2fb4a1d1a96d302", "0")),
    Req("/b3-parent", headers=b3("a2fb4a1d1a96d303", None, "1111111111111111")),
    Req("/b3-64", headers=[("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d304")]),
    Req("/single", headers=[("b3", f"{B3_TRACE}-a2fb4a1d1a96d305-1")]),
    Req("/single-parent", headers=[("b3", f"{B3_TRACE}-a2fb4a1d1a96d306-d-2222222222222222")]),
    Req("/single-flag", headers=[("b3", "1")]),
    Req("/bad", headers=[("x-b3-traceid", "zz"), ("x-b3-spanid", "a2fb4a1d1a96d307")]),
    Req("/fail", headers=[("x-demo-status", "503")]),
    Req("/w3c-ignored", headers=[("traceparent", TP_SAMPLED)]),
]


@pytest.mark.parametrize("variant", ["default", "istio", "egress-spawn", "egress"])
def test_zipkin(e2e, variant):
    """envoy.tracers.zipkin: B3 in (multi and single header, 64/128-bit) and out, the incoming
    sampled state obeyed, shared span context, Zipkin v2 JSON to the collector cluster."""
    a, = e2e.upstreams("a")
    zipkin, tracing, direction = {
        "default": ({}, {}, None),
        # Istio's zipkin provider.
        "istio": ({"shared_span_context": False, "trace_id_128bit": True}, {}, None),
        "egress-spawn": ({}, {"spawn_upstream_span": True}, "OUTBOUND"),
        "egress": ({}, {}, "OUTBOUND"),
    }[variant]
    reqs = ZIPKIN_REQS
    # Not exported: the unsampled B3 request and the malformed one.
    n = (len(reqs) - 2) * (2 if tracing.get("spawn_upstream_span") else 1)
    res = run(e2e, lambda c: zipkin_bootstrap(a, c, tracing, zipkin, direction=direction), reqs,
              expect_spans=n, receiver=ZipkinReceiver.start)
    v = compare(e2e, res, reqs)
    spawn = bool(tracing)
    top = one(v[0], "SERVER" if spawn or direction is None else "CLIENT")
    assert top["name"] == "e2e.test" and one(v[1], top["kind"])["name"] == "dec-op"
    z = top["zipkin"]
    assert z["path"] == "/api/v2/spans" and z["content_type"] == "application/json" and z["timed"]
    assert z["local"]["serviceName"] == "e2e-cluster" and z["local"]["port"] == 0
    assert top["attributes"]["node_id"] == "node-e2e"
    assert v[3]["spans"] == [] and v[3]["upstream"]["x-b3-sampled"] == "0"
    assert v[9]["spans"] == [] and v[9]["upstream"]["x-b3-traceid"] == "<as sent>"
    assert "b3" in v[6]["upstream"] and "x-b3-traceid" not in v[6]["upstream"]
    assert v[11]["upstream"]["traceparent"] == "<as sent>"
    if variant == "default":
        assert z["shared"] and z["trace_id_is_span_id"] and top["zipkin"]["annotations"] == ["ss"]
        shared = one(v[2])
        assert shared["id"] == "incoming" and shared["zipkin"]["shared"]
        assert v[2]["upstream"]["x-b3-spanid"] == "span:e2e.test"
        assert v[0]["upstream"]["x-b3-traceid"] == "new/16"
    if variant == "istio":
        assert not z["shared"] and v[0]["upstream"]["x-b3-traceid"] == "new"
        child = one(v[2])
        assert child["id"] == "new" and child["parent"] == "incoming"
    if variant == "egress":
        assert top["zipkin"]["annotations"] == ["cr"]


def test_trace_id_in_access_log(e2e):
    """%TRACE_ID% is the request's trace id, also for a request that is not sampled; "-" when
    the traceparent is invalid (no span)."""
    a, = e2e.upstreams("a")
    reqs = [Req("/sampled", headers=[("x-client-trace-id", "c")]), Req("/unsampled"),
            Req("/parent", headers=[("traceparent", TP_SAMPLED)]),
            Req("/invalid", headers=[("traceparent", "garbage")])]
    out = {}
    for impl in e2e.implementations():
        log = e2e.log_dir / f"trace-{impl.label.replace('#', '_')}.log"
        rx = OtlpReceiver.start()
        bs = tracing_bootstrap(a, rx.endpoint, {"random_sampling": {"value": 0}}, hcm={"access_log": [{
            "name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(log), "log_format": {"text_format_source": {
                    "inline_string": "%REQ(:PATH)% %TRACE_ID%\n"}}}}]})
        try:
            proxy = e2e.start_proxy(impl.kind, bs)
            try:
                obs = e2e.observe(proxy, reqs)
                rx.wait_for(1, timeout=15)
            finally:
                proxy.stop()  # Envoy writes its access log file on exit at the latest
        finally:
            rx.stop()
        ids = dict(line.split(" ", 1) for line in log.read_text().splitlines())
        view = []
        for r, o in zip(reqs, obs):
            tp = TP_RE.match(o.upstream_headers.get("traceparent", ""))
            logged = ids[r.path]
            view.append("-" if logged == "-" else "=upstream" if tp and logged == tp.group(2) else logged)
        out[impl.label] = view
    assert out[e2e.impl.label] == out[e2e.reference.label]
    assert out[e2e.impl.label] == ["=upstream", "=upstream", "=upstream", "-"]


def test_upstream_spans_for_failed_attempts(e2e):
    """spawn_upstream_span with an upstream that refuses connections, retried once."""
    a, = e2e.upstreams("a")
    dead = free_port()

    def bs(c):
        b = tracing_bootstrap(a, c, {"spawn_upstream_span": True}, routes=[
            route(prefix("/"), cluster="dead",
                  action={"retry_policy": {"retry_on": "connect-failure", "num_retries": 1}})])
        b["static_resources"]["clusters"].append(
            static_cluster("dead", [("127.0.0.1", dead)], connect_timeout="0.5s"))
        return b

    reqs = [Req("/refused")]
    res = run(e2e, bs, reqs, expect_spans=3)
    v = compare(e2e, res, reqs)
    assert v[0]["status"] == 503 and one(v[0])["attributes"]["response_flags"] == "URX,UF"
