"""Lifecycle: configuration changes and shutdown never drop in-flight requests."""
from __future__ import annotations

import signal
import threading
import time

import pytest
import yaml

from harness.bootstrap import bootstrap, http_listener, prefix, route, route_config, static_cluster, vhost
from harness.client import Req, send
from harness.procs import free_port, trellis_bin, wait_port
from test_ads import AdsRig, assignment, eds_cluster, eventually, listener, routes


def in_background(fn):
    """Runs fn() in a thread; returns a getter that waits for its result."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except Exception as e:  # reported by the getter
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def result(timeout=20.0):
        t.join(timeout)
        if "error" in box:
            raise box["error"]
        return box.get("value")
    return result


def test_sigterm_finishes_in_flight_requests_then_exits(e2e):
    """Trellis-specific (Envoy exits at once on SIGTERM; Istio's agent drains it):
    a request in flight when SIGTERM arrives completes, then the proxy exits 0."""
    up = e2e.upstream("slow")
    port, admin = free_port(), free_port()
    routes_cfg = route_config([vhost("all", [route(prefix("/"), cluster="slow")])])
    bs = bootstrap([http_listener("in", routes_cfg, port=port)],
                   [static_cluster("slow", [up.endpoint])])
    bs["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
    e2e.log_dir.mkdir(parents=True, exist_ok=True)
    cfg = e2e.log_dir / "drain.yaml"
    cfg.write_text(yaml.safe_dump(bs))
    proc = e2e.registry.spawn("trellis", [str(trellis_bin()), "proxy", "-c", str(cfg), "--drain-time-s", "10"])
    wait_port("127.0.0.1", port, proc=proc)
    pending = in_background(lambda: send(("127.0.0.1", port), Req("/", headers=[("x-demo-delay-ms", "1500")])))
    time.sleep(0.5)
    proc.popen.send_signal(signal.SIGTERM)
    obs = pending()
    assert obs.status == 200 and obs.service == "slow/v1"
    assert proc.popen.wait(timeout=10) == 0


def test_listener_update_keeps_in_flight_request(e2e):
    """A listener changed over LDS while a slow request is in flight: the
    request completes on the old configuration, new requests see the new one."""
    a, b = e2e.upstreams("old", "new")
    results = {}
    to = lambda c: [{"match": {"prefix": "/"}, "route": {"cluster": c}}]
    for impl in e2e.implementations():
        rig = AdsRig(e2e, impl, "lifecycle", "GRPC", lambda port: [
            listener(port), routes(to("old")), eds_cluster("old"), assignment("old", a.port),
            eds_cluster("new"), assignment("new", b.port)])
        port, publish, served = rig.port, rig.publish, rig.served
        first = eventually(served, "old/v1")
        pending = in_background(lambda: send(("127.0.0.1", port), Req("/", headers=[("x-demo-delay-ms", "1500")])))
        time.sleep(0.3)
        changed = listener(port)
        changed["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = "changed"
        changed["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["route_config_name"] = "routes2"
        r2 = routes(to("new"))
        r2["name"] = "routes2"
        publish(changed, routes(to("old")), r2, eds_cluster("old"), assignment("old", a.port),
                eds_cluster("new"), assignment("new", b.port))
        after = eventually(served, "new/v1")
        slow = pending()
        results[impl.label] = [first, (slow.status, slow.service), after]
        rig.stop()
    ref = results[e2e.reference.label]
    assert ref == ["old/v1", (200, "old/v1"), "new/v1"], ref
    assert results[e2e.impl.label] == ref
