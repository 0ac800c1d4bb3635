"""Host network facts a scenario may need to state Envoy's behaviour exactly."""
from __future__ import annotations

import subprocess


def local_address() -> str | None:
    """The address Envoy uses as its "local address" (Network::Utility::getLocalAddress(v4)):
    the first IPv4 address of an up, non-loopback interface, in interface order. Envoy appends it
    to x-forwarded-for instead of the peer address when the peer is a loopback address
    (use_remote_address: true)."""
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show", "up"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == "inet" and not f[3].startswith("127."):
            return f[3].split("/")[0]
    return None
