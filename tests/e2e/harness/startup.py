"""Starting a proxy with a bootstrap that may be rejected: did it refuse to start?"""
from __future__ import annotations

import time
from dataclasses import dataclass

import yaml

from .procs import ProcRegistry
from .proxy import Proxy, _assign_ports, proxy_argv


@dataclass
class StartResult:
    kind: str
    exit_code: int | None   # None: still running (accepted the bootstrap and became ready)
    ready: bool
    output: str             # everything the process logged

    @property
    def rejected(self) -> bool:
        return self.exit_code is not None and self.exit_code != 0


def try_start(kind: str, bootstrap: dict, registry: ProcRegistry, timeout: float = 10.0) -> StartResult:
    """Start `kind` with `bootstrap`; wait until it exits, or answers admin /ready 200,
    or `timeout` passes. The process is always stopped before returning."""
    b = _assign_ports(bootstrap)
    registry.log_dir.mkdir(parents=True, exist_ok=True)
    config = registry.log_dir / f"{kind}-{len(registry.procs)}.yaml"
    config.write_text(yaml.safe_dump(b, sort_keys=False))
    proc = registry.spawn(kind, proxy_argv(kind, config))
    proxy = Proxy(kind, proc, b, config)
    ready = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.alive():
            try:
                if proxy.admin("/ready", timeout=0.5)[0] == 200:
                    ready = True
                    break
            except OSError:
                pass
            time.sleep(0.05)
        code = proc.returncode()
    finally:
        proc.stop(grace=1.0)
    return StartResult(kind, code, ready, proc.log_path.read_text(errors="replace"))
