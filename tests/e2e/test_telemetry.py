"""Istio's Telemetry API on a running `trellis up` (Bookinfo), with both data planes.

One control plane, MeshConfig `extensionProviders` (an `opentelemetry` collector and an
`envoyFileAccessLog`), and `telemetry.istio.io/v1` Telemetry resources:

| test | requirement |
|---|---|
| test_traces_link_across_the_mesh | a mesh-wide Telemetry (tracing, 100%) sends spans over OTLP/gRPC to a real receiver (the official OTLP protos); one request through the gateway gives one trace whose spans link productpage → reviews → ratings (SERVER/CLIENT spans, parent ids), with Istio's span tags |
| test_access_logging_with_a_filter_expression | a Telemetry with a CEL filter (`response.code >= 400`) logs the failing request and not the good ones; disabling it for a workload stops its lines |
| test_collector_down_changes_nothing | with the collector gone, requests still succeed |
| test_metric_overrides | (Trellis data plane: stock Envoy has no Istio stats) a Telemetry drops `istio_request_bytes`, removes a label and adds one, for the server side only |

The collector is a ServiceEntry (MESH_EXTERNAL, STATIC, 127.0.0.1:<receiver port>), as a
collector outside the mesh would be.
"""
from __future__ import annotations

import time

import pytest

from harness.mesh import get, poll
from harness.otlp import OtlpReceiver
from test_mesh import mesh, start_mesh  # noqa: F401  (fixtures)

COLLECTOR = "otel-collector.observability.svc.cluster.local"


def mesh_config(log_path) -> str:
    return f"""\
extensionProviders:
- name: otel
  opentelemetry:
    service: {COLLECTOR}
    port: 4317
- name: file-log
  envoyFileAccessLog:
    path: {log_path}
"""


def collector_entry(port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: otel-collector
  namespace: istio-system
spec:
  hosts: [{COLLECTOR}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 4317, name: grpc-otlp, protocol: GRPC}}
  endpoints:
  - address: 127.0.0.1
    ports: {{grpc-otlp: {port}}}
"""


TRACING = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-default
  namespace: istio-system
spec:
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 100
    customTags:
      team: {literal: {value: bookinfo}}
"""

LOGGING = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: {name}
  namespace: {namespace}
spec:
{selector}  accessLogging:
  - providers: [{{name: file-log}}]
{extra}"""


@pytest.fixture
def receiver():
    rx = OtlpReceiver.start(port=0)
    yield rx
    rx.stop()


def start(start_mesh, tmp_path, rx, *docs: tuple[str, str]):
    log = tmp_path / "access.log"
    cfg = tmp_path / "mesh.yaml"
    cfg.write_text(mesh_config(log))

    def prepare(d):
        d.apply("otel-collector.yaml", collector_entry(rx.port))
        for name, text in docs:
            d.apply(name, text)
    m = start_mesh(prepare, ["--mesh-config", str(cfg)])
    poll(lambda: get().status == 200, 30, "productpage through the gateway")
    return m, log


def test_traces_link_across_the_mesh(start_mesh, receiver, tmp_path):
    start(start_mesh, tmp_path, receiver, ("telemetry.yaml", TRACING))

    # Requests until one goes through reviews v2 or v3 (those call ratings); proxies export
    # in batches, so spans of several requests arrive together: group them by trace.
    def traced_to_ratings():
        r = get()
        assert r.status == 200, r.status
        spans = receiver.spans()
        ids = {t["span_id"]: t for t in spans}
        for s in spans:
            if s["kind"] == "SERVER" and s["resource"].get("service.name", "").startswith("ratings"):
                # Complete once the four spans above it (each proxy exports in its own batches)
                # are in too.
                cur, depth = s, 0
                while depth < 4 and cur["parent_span_id"] in ids:
                    cur, depth = ids[cur["parent_span_id"]], depth + 1
                if depth == 4:
                    return [t for t in spans if t["trace_id"] == s["trace_id"]]
        return None
    spans = poll(traced_to_ratings, 60, "a trace reaching ratings", 0.5)

    by_id = {s["span_id"]: s for s in spans}

    def service(s):
        return s["resource"].get("service.name", "")

    def parent(s):
        p = by_id.get(s["parent_span_id"])
        assert p, f"span {s['name']} ({service(s)}) has a parent {s['parent_span_id']!r} not in the trace"
        return p

    ratings = next(s for s in spans if s["kind"] == "SERVER" and service(s).startswith("ratings"))
    # ratings' server span <- reviews' client span <- reviews' server span
    #   <- productpage's client span <- productpage's server span.
    chain = [ratings]
    for _ in range(4):
        chain.append(parent(chain[-1]))
    got = [(service(s).split(".")[0], s["kind"]) for s in chain]
    assert got == [("ratings", "SERVER"), ("reviews", "CLIENT"), ("reviews", "SERVER"),
                   ("productpage", "CLIENT"), ("productpage", "SERVER")], got
    # Istio's span names: the destination `<host>:<port>/*`, on both sides of each hop.
    names = [s["name"] for s in chain]
    assert names == ["ratings.default.svc.cluster.local:9080/*"] * 2 + ["reviews.default.svc.cluster.local:9080/*"] * 2 \
        + ["productpage.default.svc.cluster.local:9080/*"], names
    for s in chain:
        a = s["attributes"]
        assert a.get("istio.namespace") == "default", a
        assert a.get("istio.canonical_service") == service(s).split(".")[0], a
        assert a.get("team") == "bookinfo", a
        assert a.get("http.method") == "GET", a
        assert str(a.get("http.status_code")) == "200", a
        assert s["end_ns"] >= s["start_ns"] > 0
    # The root of the trace is the gateway's span, or productpage's when the gateway has none.
    assert all(s["trace_id"] == ratings["trace_id"] for s in chain)


def test_access_logging_with_a_filter_expression(start_mesh, receiver, tmp_path):
    logging = LOGGING.format(name="mesh-logs", namespace="istio-system", selector="",
                             extra="    filter:\n      expression: response.code >= 400\n")
    m, log = start(start_mesh, tmp_path, receiver, ("logging.yaml", logging))
    for _ in range(5):
        assert get().status == 200
    bad = get("/no-such-page")
    assert bad.status == 404, bad.status

    def logged():
        text = log.read_text() if log.exists() else ""
        return "/no-such-page" in text and text
    text = poll(logged, 15, "the 404 in the access log")
    time.sleep(1.0)  # lines of the good requests, were any written, would be there by now
    text = log.read_text()
    assert "/productpage" not in text, f"a 200 was logged despite the filter:\n{text}"
    assert all(" 404 " in line for line in text.splitlines() if line.strip()), text

    # A workload-level Telemetry turning logging off wins over the mesh-wide one for that workload.
    off = LOGGING.format(name="gateway-quiet", namespace="istio-system",
                         selector="  selector:\n    matchLabels:\n      istio: ingressgateway\n",
                         extra="    disabled: true\n")
    m.dir.apply("logging-off.yaml", off)
    before = len(log.read_text().splitlines())

    def quiet():
        mark = len(log.read_text().splitlines())
        get("/still-missing")
        time.sleep(0.5)
        return len(log.read_text().splitlines()) == mark
    poll(quiet, 15, "the gateway's access log to stop")
    assert len(log.read_text().splitlines()) >= before


def test_collector_down_changes_nothing(start_mesh, receiver, tmp_path):
    start(start_mesh, tmp_path, receiver, ("telemetry.yaml", TRACING))
    receiver.stop()
    for _ in range(10):
        r = get()
        assert r.status == 200, r.status


METRICS = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-metrics
  namespace: istio-system
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_SIZE}
      disabled: true
    - match: {metric: ALL_METRICS, mode: SERVER}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        lane: {value: "'canary'"}
"""


def test_metric_overrides(start_mesh, receiver, tmp_path, impl):
    if impl.kind != "trellis":
        pytest.skip("stock Envoy has no istio_* stats without Istio's stats extension")
    from test_metrics import matching, scrape
    m, _ = start(start_mesh, tmp_path, receiver, ("metrics.yaml", METRICS))
    for _ in range(3):
        assert get().status == 200

    def scraped():
        s = scrape(m, "productpage-v1")
        return matching(s, "istio_requests_total", reporter="destination") and s
    s = poll(scraped, 15, "productpage's inbound series")
    assert not matching(s, "istio_request_bytes_bucket"), "REQUEST_SIZE is disabled"
    assert matching(s, "istio_response_bytes_bucket"), "other metrics stay"
    for labels in matching(s, "istio_requests_total", reporter="destination"):
        assert labels.get("lane") == "canary" and "request_protocol" not in labels, labels
    # The client side (mode SERVER only) is unchanged.
    for labels in matching(s, "istio_requests_total", reporter="source"):
        assert "lane" not in labels and labels.get("request_protocol") == "http", labels
