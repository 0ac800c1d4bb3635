"""The per-test object handed to scenarios as the `e2e` fixture."""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path

from .client import Observation, send
from .procs import ProcRegistry, demo_app_cmd, free_port, wait_port
from .proxy import Proxy, start_proxy


@dataclass(frozen=True)
class Impl:
    kind: str   # "envoy" | "trellis"
    label: str  # unique test id: "envoy", "trellis", "envoy#2", ...

    def __str__(self) -> str:
        return self.label


REFERENCE = Impl(os.environ.get("E2E_REFERENCE", "envoy"), os.environ.get("E2E_REFERENCE", "envoy"))


def impls_from_env() -> list[Impl]:
    kinds = [k.strip() for k in os.environ.get("E2E_PROXIES", "envoy,trellis").split(",") if k.strip()]
    out, seen = [], collections.Counter()
    for k in kinds:
        seen[k] += 1
        out.append(Impl(k, k if seen[k] == 1 else f"{k}#{seen[k]}"))
    return out


@dataclass
class Upstream:
    service: str
    version: str
    host: str
    port: int
    tcp_port: int | None
    proc: object

    @property
    def ident(self) -> str:
        return f"{self.service}/{self.version}"

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def tcp_endpoint(self) -> tuple[str, int]:
        assert self.tcp_port, "start the upstream with tcp=True"
        return (self.host, self.tcp_port)


class DifferentialMismatch(AssertionError):
    pass


class E2E:
    def __init__(self, impl: Impl, log_dir: Path):
        self.impl = impl
        self.reference = REFERENCE
        self.registry = ProcRegistry(log_dir)
        self.log_dir = log_dir
        self.ca: str | None = None  # CA file for h2tls requests, set by scenarios using TLS
        self._closers: list = []     # in-process helpers (recorders) stopped at teardown

    # ------------------------------------------------------------ upstreams
    def upstream(self, service: str, version: str = "v1", *, tcp: bool = False,
                 calls: list[str] = (), proxy: str | None = None, host: str = "127.0.0.1") -> Upstream:
        port = free_port(host)
        tcp_port = free_port(host) if tcp else None
        argv = [*demo_app_cmd(), "--service", service, "--version", version,
                "--http-port", str(port), "--listen-addr", host]
        if tcp_port:
            argv += ["--tcp-port", str(tcp_port)]
        for c in calls:
            argv += ["--call", c]
        if proxy:
            argv += ["--proxy", proxy]
        proc = self.registry.spawn(f"demo-{service}-{version}", argv)
        wait_port(host, port, proc=proc)
        if tcp_port:
            wait_port(host, tcp_port, proc=proc)
        return Upstream(service, version, host, port, tcp_port, proc)

    def upstreams(self, *specs: str | tuple[str, str]) -> list[Upstream]:
        """upstreams("a", ("reviews", "v2")) -> demo-apps a/v1 and reviews/v2."""
        out = []
        for s in specs:
            svc, ver = (s, "v1") if isinstance(s, str) else s
            out.append(self.upstream(svc, ver))
        return out

    # -------------------------------------------------------------- proxies
    def start_proxy(self, kind: str, bootstrap: dict) -> Proxy:
        return start_proxy(kind, bootstrap, self.registry)

    def implementations(self) -> list[Impl]:
        """Reference first; the implementation under test second unless it is the reference."""
        return [self.reference] if self.impl == self.reference else [self.reference, self.impl]

    def run_each(self, bootstrap: dict, fn) -> dict[str, object]:
        """Start each implementation in turn with `bootstrap`, call fn(proxy), stop it."""
        results = {}
        for impl in self.implementations():
            proxy = self.start_proxy(impl.kind, bootstrap)
            try:
                results[impl.label] = fn(proxy)
            finally:
                proxy.stop()
        return results

    def observe(self, proxy: Proxy, requests: list) -> list[Observation]:
        obs = []
        for r in requests:
            addr = (proxy.host(r.listener), proxy.port(r.listener))
            obs.append(send(addr, r, ca=self.ca))
        return obs

    def differential(self, bootstrap: dict, requests: list) -> list[Observation]:
        """Send `requests` through the reference and the implementation under test;
        assert the normalized observations are equal; return the implementation's."""
        results = self.run_each(bootstrap, lambda p: self.observe(p, requests))
        ref = results[self.reference.label]
        mine = results[self.impl.label]
        problems = []  # every differing request is reported, not only the first
        for i, (req, a, b) in enumerate(zip(requests, ref, mine)):
            na, nb = a.normalized(), b.normalized()
            if na != nb:
                problems.append(
                    f"request #{i} ({req.describe()}): {self.impl.label} differs from {self.reference.label}\n"
                    + _diff(na, nb, self.reference.label, self.impl.label))
        if problems:
            raise DifferentialMismatch("\n".join(problems))
        return mine

    def distribution(self, bootstrap: dict, request, n: int, key=lambda o: o.service) -> dict[str, collections.Counter]:
        """Send `request` n times through each implementation; count key(observation)."""
        def count(p):
            return collections.Counter(key(o) for o in self.observe(p, [request] * n))
        return self.run_each(bootstrap, count)

    def recorder(self, name: str, host: str = "127.0.0.1", tls=None):
        """An in-process upstream that records the requests it receives (harness/recorder.py);
        with `tls` (an ssl.SSLContext) it serves HTTPS."""
        from .recorder import Recorder
        r = Recorder(name, host, tls)
        self._closers.append(r.stop)
        return r

    def startup(self, bootstrap: dict, timeout: float = 10.0) -> dict:
        """Start each implementation with `bootstrap` (reference first) and report whether it
        refused it: label -> StartResult(exit_code, ready, output). Nothing is left running."""
        from .startup import try_start
        return {impl.label: try_start(impl.kind, bootstrap, self.registry, timeout)
                for impl in self.implementations()}

    def stop(self) -> None:
        for close in self._closers:
            try:
                close()
            except Exception:
                pass
        self.registry.stop_all()


def _diff(a: dict, b: dict, la: str, lb: str, prefix: str = "") -> str:
    lines = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            lines.append(_diff(va, vb, la, lb, f"{prefix}{k}."))
        else:
            lines.append(f"  {prefix}{k}:\n    {la}: {va!r}\n    {lb}: {vb!r}")
    return "\n".join(l for l in lines if l)


def assert_weights(counter: collections.Counter, expected: dict[str, float], tolerance: float, label: str = "") -> None:
    """Observed share of each key within `tolerance` (absolute, 0..1) of the expected share."""
    total = sum(counter.values())
    wsum = sum(expected.values())
    for k, w in expected.items():
        share = counter.get(k, 0) / total
        want = w / wsum
        assert abs(share - want) <= tolerance, (
            f"{label}: {k} got {share:.2%} of {total}, want {want:.2%} ± {tolerance:.0%} ({dict(counter)})")
    unexpected = set(counter) - set(expected)
    assert not unexpected, f"{label}: unexpected answers {unexpected} ({dict(counter)})"
