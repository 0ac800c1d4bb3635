"""Istio's standard metrics from every Trellis proxy, against `trellis up` (Bookinfo).

Each proxy's admin `/stats/prometheus` (Istio scrapes 15090; in local mode the admin port is
the scrape endpoint) serves `istio_requests_total` and friends with Istio's labels
(reporter, source_*/destination_*, response_code, connection_security_policy...).

| test | requirement |
|---|---|
| test_istio_request_metrics | N requests through the gateway are counted by productpage's sidecar (reporter=destination, and reporter=source towards reviews) and by the reviews sidecars (source principal from the mTLS certificate) |
| test_istio_metrics_ports | both data planes: the stats port (Istio's 15090) serves the proxy's /stats/prometheus and nothing else; the agent port (15020) merges proxy and agent metrics and answers /healthz/ready |
| test_control_plane_metrics | both data planes: the control plane's /metrics (15014) has pilot_xds, pilot_xds_pushes per type, pilot_proxy_convergence_time, pilot_services, no rejects |
| test_prometheus_scrapes_the_proxies | Debian's `prometheus` scrapes the admin ports and answers PromQL, including `sum(rate(istio_requests_total{reporter="destination"}[1m])) by (destination_workload, response_code)`, with the peer workload on both reporters (skipped without the binary) |

istio_* checks are for the Trellis data plane only: stock Envoy has no istio_* stats without
Istio's stats extension.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from harness.mesh import get, poll
from test_mesh import mesh, start_mesh  # noqa: F401  (fixtures)

N = 12
PRODUCTPAGE_SA = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
REVIEWS = "reviews.default.svc.cluster.local"

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The Prometheus text format, line by line (every non-comment line must parse)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        assert m, f"unparsable exposition line: {line!r}"
        labels = {k: bytes(v, "utf-8").decode("unicode_escape") for k, v in _LABEL.findall(m.group(2) or "")}
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def scrape(mesh, workload: str) -> list[tuple[str, dict[str, str], float]]:
    r = mesh.admin(workload, "/stats/prometheus")
    assert r.status == 200, f"{workload} /stats/prometheus -> {r.status}"
    ctype = r.headers.get("content-type", [""])[0]
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    return parse(r.text)


def total(samples, name: str, **want: str) -> float:
    return sum(v for n, labels, v in samples
               if n == name and all(labels.get(k) == w for k, w in want.items()))


def matching(samples, name: str, **want: str) -> list[dict[str, str]]:
    return [labels for n, labels, _ in samples
            if n == name and all(labels.get(k) == w for k, w in want.items())]


@pytest.fixture
def trellis_only(impl):
    if impl.kind != "trellis":
        pytest.skip("stock Envoy has no istio_* stats without Istio's stats extension")


def send(n: int) -> None:
    for _ in range(n):
        r = get()
        assert r.status == 200, r.describe() if hasattr(r, "describe") else r.status


def test_istio_request_metrics(trellis_only, mesh):
    # Warm up until the whole chain answers (configuration propagated).
    poll(lambda: get().status == 200, 30, "productpage through the gateway")
    base_pp = scrape(mesh, "productpage-v1")
    before = total(base_pp, "istio_requests_total", reporter="destination",
                   destination_workload="productpage-v1", response_code="200")
    send(N)

    def productpage_counted():
        s = scrape(mesh, "productpage-v1")
        return total(s, "istio_requests_total", reporter="destination",
                     destination_workload="productpage-v1", response_code="200") - before >= N and s
    pp = poll(productpage_counted, 10, f"{N} inbound requests on productpage's sidecar")

    inbound = matching(pp, "istio_requests_total", reporter="destination",
                       destination_workload="productpage-v1", response_code="200")
    for labels in inbound:
        assert labels["destination_workload_namespace"] == "default", labels
        assert labels["destination_app"] == "productpage" and labels["destination_version"] == "v1", labels
        assert labels["destination_canonical_service"] == "productpage", labels
        assert labels["destination_principal"] == PRODUCTPAGE_SA, labels
        assert labels["request_protocol"] == "http", labels
        assert labels["response_flags"] == "-", labels
    # The histograms agree with the counter.
    assert total(pp, "istio_request_duration_milliseconds_count", reporter="destination",
                 destination_workload="productpage-v1", response_code="200") >= N
    assert total(pp, "istio_response_bytes_sum", reporter="destination",
                 destination_workload="productpage-v1", response_code="200") > 0

    # productpage's sidecar as the client of reviews.
    out = matching(pp, "istio_requests_total", reporter="source", destination_service=REVIEWS)
    assert out, f"no reporter=source series towards {REVIEWS}: " \
                f"{sorted({l.get('destination_service') for l in matching(pp, 'istio_requests_total')})}"
    assert total(pp, "istio_requests_total", reporter="source", destination_service=REVIEWS) >= N
    for labels in out:
        assert labels["source_workload"] == "productpage-v1", labels
        assert labels["source_principal"] == PRODUCTPAGE_SA, labels
        assert labels["destination_service_name"] == "reviews", labels
        assert labels["destination_service_namespace"] == "default", labels
        assert labels["connection_security_policy"] == "unknown", labels
        # The server's sidecar told who answered (metadata exchange).
        assert labels["destination_workload"] in ("reviews-v1", "reviews-v2", "reviews-v3"), labels
        assert labels["destination_app"] == "reviews", labels
        assert labels["destination_version"] == labels["destination_workload"][-2:], labels
        assert labels["destination_canonical_service"] == "reviews", labels

    # The reviews sidecars as servers: the caller's identity from its mTLS certificate.
    served = 0.0
    for w in ("reviews-v1", "reviews-v2", "reviews-v3"):
        s = scrape(mesh, w)
        served += total(s, "istio_requests_total", reporter="destination", destination_workload=w,
                        source_principal=PRODUCTPAGE_SA, connection_security_policy="mutual_tls",
                        response_code="200")
        if w == "reviews-v1":
            rv1 = matching(s, "istio_requests_total", reporter="destination",
                           source_principal=PRODUCTPAGE_SA)
            assert rv1, "reviews-v1 saw no request from productpage's principal"
            for labels in rv1:
                assert labels["source_workload_namespace"] == "default", labels
                assert labels["connection_security_policy"] == "mutual_tls", labels
                assert labels["destination_workload"] == "reviews-v1", labels
                assert labels["destination_version"] == "v1", labels
                # The client's sidecar told who called (metadata exchange).
                assert labels["source_workload"] == "productpage-v1", labels
                assert labels["source_app"] == "productpage", labels
                assert labels["source_version"] == "v1", labels
                assert labels["source_canonical_service"] == "productpage", labels
    assert served >= N, f"reviews v1+v2+v3 counted {served} mTLS requests from productpage, want >= {N}"

    # The Envoy stats are there too, under Envoy's Prometheus names.
    assert matching(pp, "envoy_cluster_upstream_rq_total", envoy_cluster_name=f"outbound|9080||{REVIEWS}")
    # Proxy health: connected to the control plane, no NACK, the workload certificate's expiry.
    assert total(pp, "envoy_control_plane_connected_state") == 1
    assert total(pp, "envoy_trellis_xds_lds_rejected") == 0
    assert total(pp, "envoy_trellis_xds_cds_resources") >= 4
    days = total(pp, "envoy_server_days_until_first_cert_expiring")
    secs = total(pp, "envoy_server_seconds_until_first_cert_expiring")
    assert 0 < secs <= 24 * 3600 and days == 0, (days, secs)


def test_istio_metrics_ports(mesh):
    """Istio's 15090 (the proxy's /stats/prometheus on a listener of its own) and 15020 (the
    agent's merged metrics and readiness), with both data planes."""
    from harness.mesh import request
    poll(lambda: get().status == 200, 30, "productpage through the gateway")
    send(3)
    p = mesh.proxy_of("productpage-v1")
    stats, agent = p.meta_port("TRELLIS_STATS_PORT"), p.meta_port("TRELLIS_AGENT_PORT")
    assert stats and agent, f"no stats/agent ports in the node metadata: {p.metadata}"
    r = request(("127.0.0.1", stats), "/stats/prometheus", timeout=10)
    assert r.status == 200, r.status
    own = parse(r.text)
    assert matching(own, "envoy_cluster_upstream_rq_total"), "no Envoy stats on the stats port"
    # Only /stats/prometheus is exposed there, not the rest of the admin API.
    assert request(("127.0.0.1", stats), "/config_dump", timeout=10).status == 404
    r = request(("127.0.0.1", agent), "/stats/prometheus", timeout=10)
    assert r.status == 200, r.status
    merged = parse(r.text)
    assert matching(merged, "envoy_cluster_upstream_rq_total"), "the merged endpoint lacks the proxy's stats"
    assert total(merged, "trellis_agent_scrapes_total") >= 1
    assert request(("127.0.0.1", agent), "/healthz/ready", timeout=10).status == 200


def test_control_plane_metrics(mesh):
    """The control plane's /metrics on 15014 under istiod's names: connected proxies, pushes per
    type, convergence time (push to ACK), config sizes; with both data planes."""
    from harness.mesh import request
    poll(lambda: get().status == 200, 30, "productpage through the gateway")
    r = request(("127.0.0.1", 15014), "/metrics", timeout=10)
    assert r.status == 200, r.status
    m = parse(r.text)
    assert total(m, "pilot_xds", version="trellis") >= 7, "7 proxies (6 sidecars and the gateway)"
    for t in ("lds", "cds", "eds", "rds"):
        assert total(m, "pilot_xds_pushes", type=t) >= 1, t
    assert total(m, "pilot_proxy_convergence_time_count") >= 7
    assert total(m, "pilot_services") >= 4
    assert total(m, "pilot_total_xds_rejects") == 0
    assert total(m, "trellis_xds_generate_seconds_count") >= 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_scrapes_the_proxies(trellis_only, mesh, tmp_path):
    prom = shutil.which("prometheus")
    if not prom:
        pytest.skip("Debian's `prometheus` binary is not installed (apt-get install prometheus); "
                    "the exposition itself is checked by test_istio_request_metrics")
    poll(lambda: get().status == 200, 30, "productpage through the gateway")
    send(N)
    targets = []
    for w in ("productpage-v1", "reviews-v1", "reviews-v2", "reviews-v3"):
        host, port = mesh.proxy_of(w).admin
        targets.append(f"'{host}:{port}'")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                   "  - job_name: trellis\n    metrics_path: /stats/prometheus\n"
                   f"    static_configs:\n      - targets: [{', '.join(targets)}]\n")
    port = _free_port()
    proc = subprocess.Popen([prom, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def query(promql: str) -> list:
            q = urllib.parse.quote(promql)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={q}", timeout=5) as r:
                return json.load(r).get("data", {}).get("result", [])

        def answered():
            res = query('sum(istio_requests_total{reporter="destination",'
                        'destination_workload="productpage-v1",response_code="200"})')
            return res and float(res[0]["value"][1]) >= N
        poll(answered, 30, "PromQL sum(istio_requests_total{...productpage-v1...}) >= N", 1.0)

        # The query: traffic per destination workload and code, once a rate exists.
        def by_workload():
            send(2)
            res = query('sum(rate(istio_requests_total{reporter="destination"}[1m])) '
                        'by (destination_workload, response_code)')
            got = {(r["metric"].get("destination_workload"), r["metric"].get("response_code"))
                   for r in res if float(r["value"][1]) > 0}
            return {("productpage-v1", "200")} <= got and any(w.startswith("reviews-") for w, _ in got) and got
        got = poll(by_workload, 30, "rate() by destination_workload for productpage and reviews", 1.0)
        assert all(code == "200" for _, code in got), got

        # Both reporters name the peer workload (mTLS identity + metadata exchange).
        def sources():
            res = query('sum(istio_requests_total{reporter="destination",'
                        'destination_workload=~"reviews-.*"}) by (source_workload, source_app)')
            return res and {(r["metric"].get("source_workload"), r["metric"].get("source_app")) for r in res}
        assert ("productpage-v1", "productpage") in poll(sources, 30, "source labels on reviews", 1.0)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
