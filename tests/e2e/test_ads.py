"""ADS: the same resources served over xDS (state-of-the-world and delta) to
Envoy and to Trellis, through a sequence of updates including a bad one."""
from __future__ import annotations

import time

import pytest
import yaml

from harness.client import Req, send
from harness.procs import free_port, trellis_bin, wait_port

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def listener(port: int) -> dict:
    return {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "ingress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
            "@type": HCM, "stat_prefix": "ingress",
            "rds": {"route_config_name": "routes", "config_source": {"ads": {}, "resource_api_version": "V3"}},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        }}]}],
    }


def routes(routes_list: list[dict]) -> dict:
    return {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "routes",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes_list}]}


def eds_cluster(name: str) -> dict:
    return {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": name, "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}


def assignment(name: str, port: int) -> dict:
    return {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}}}]}]}


def ads_bootstrap(admin_port: int, xds_port: int, api_type: str) -> dict:
    return {
        "node": {"id": "e2e-node", "cluster": "e2e"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}]}]},
        }]},
    }


def eventually(fn, want, timeout=8.0):
    """Polls fn() until it returns want; returns the last value (the caller asserts)."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        try:
            got = fn()
        except Exception as e:  # connection refused while a listener warms
            got = f"error: {e}"
        if got == want:
            return got
        time.sleep(0.1)
    return got


class AdsRig:
    """One implementation driven over ADS: `trellis xds-serve` serves a resource
    file (rewritten atomically by `publish`) to the proxy under test, whose
    single listener is on `self.port`."""

    def __init__(self, e2e, impl, name: str, api_type: str, initial):
        self.port, xds_port, admin_port = free_port(), free_port(), free_port()
        e2e.log_dir.mkdir(parents=True, exist_ok=True)
        self.file = e2e.log_dir / f"{name}-{impl.label}.yaml"
        self.publish(*initial(self.port))
        self.server = e2e.registry.spawn(f"xds-serve-{impl.label}", [
            str(trellis_bin()), "xds-serve", "--resources", str(self.file), "--listen", f"127.0.0.1:{xds_port}"])
        wait_port("127.0.0.1", xds_port, proc=self.server)
        self.proxy = e2e.start_proxy(impl.kind, ads_bootstrap(admin_port, xds_port, api_type))

    def publish(self, *resources) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"resources": list(resources)}, sort_keys=False))
        tmp.replace(self.file)

    def send(self, req=None):
        return send(("127.0.0.1", self.port), req or Req("/"))

    def served(self):
        return self.send().service

    def stop(self) -> None:
        self.proxy.stop()
        self.server.stop()


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_ads_updates_and_nack(e2e, api_type):
    a, b = e2e.upstreams("alpha", "beta")
    results = {}
    to_svc = [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]
    for impl in e2e.implementations():
        rig = AdsRig(e2e, impl, "resources", api_type,
                     lambda port: [listener(port), routes(to_svc), eds_cluster("svc"), assignment("svc", a.port)])
        port, publish, served = rig.port, rig.publish, rig.served
        steps = []
        steps.append(eventually(served, "alpha/v1"))
        time.sleep(0.3)  # both implementations must see the same file versions, not a race
        # EDS: the endpoint moves.
        publish(listener(port), routes(to_svc), eds_cluster("svc"), assignment("svc", b.port))
        steps.append(eventually(served, "beta/v1"))
        # A bad route (invalid regex) is NACKed; the last good config keeps serving.
        bad = [{"match": {"safe_regex": {"regex": "(unclosed"}}, "route": {"cluster": "svc"}}]
        publish(listener(port), routes(bad), eds_cluster("svc"), assignment("svc", b.port))
        time.sleep(1.0)
        steps.append(served())
        # A good route update after the NACK is applied.
        direct = [{"match": {"prefix": "/"}, "direct_response": {"status": 299, "body": {"inline_string": "moved"}}}]
        publish(listener(port), routes(direct), eds_cluster("svc"), assignment("svc", b.port))
        steps.append(eventually(lambda: send(("127.0.0.1", port), Req("/")).status, 299))
        results[impl.label] = steps
        rig.stop()
    ref = results[e2e.reference.label]
    assert ref == ["alpha/v1", "beta/v1", "beta/v1", 299], ref
    assert results[e2e.impl.label] == ref
