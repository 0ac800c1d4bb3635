"""Access logs (HttpConnectionManager and TcpProxy `access_log`, file sink): the same bootstrap
goes to Envoy and trellis, each writes its own log file, and the normalized lines must be equal.

What is normalized, and why (nothing else is):
- START_TIME: wall-clock time of the request.
- DURATION / REQUEST_DURATION / RESPONSE_DURATION / RESPONSE_TX_DURATION and
  x-envoy-upstream-service-time: timing; only "a number" vs "-" is compared.
- the listener port of each proxy: the harness gives every started proxy a free port, and it
  appears in :authority.
- ephemeral client ports in DOWNSTREAM_REMOTE_ADDRESS: chosen by the kernel per connection.
- CONNECTION_ID is not logged here: Envoy counts its admin and other connections too.
The x-request-id is sent by the client (Envoy keeps it without use_remote_address), so it is
compared as is.
"""
import copy
import json
import re
import time

import pytest

from harness import Req, TcpReq, bootstrap, http_listener, prefix, route, route_config, static_cluster, tcp_listener, vhost
from harness.procs import free_port

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

ISTIO_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% '
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    '%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% '
    '%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n')

TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def file_log(path, **fmt):
    cfg = {"@type": FILE_LOG, "path": str(path), **fmt}
    return {"name": "envoy.access_loggers.file", "typed_config": cfg}


def http_bootstrap(a, logs, dead_port):
    routes = [
        route(prefix("/ok"), cluster="a", name="ok_route"),
        route(prefix("/dead"), cluster="dead",
              action={"retry_policy": {"retry_on": "connect-failure", "num_retries": 1}}),
        {"match": prefix("/direct"), "direct_response": {"status": 201, "body": {"inline_string": "made"}}},
    ]
    return bootstrap([http_listener("in", route_config([vhost("all", routes)]), hcm_extra={"access_log": logs})],
                     [static_cluster("a", [a.endpoint]),
                      static_cluster("dead", [("127.0.0.1", dead_port)], connect_timeout="0.5s")])


def requests():
    rid = [("x-request-id", "req-1"), ("user-agent", "e2e-agent")]
    return [Req("/ok/x?q=1", headers=rid),
            Req("/ok/post", method="POST", body=b"hello", headers=rid),
            Req("/ok/big", headers=rid + [("x-demo-body-size", "3000")]),
            Req("/ok/fail", headers=rid + [("x-demo-status", "418")]),
            Req("/nothing", headers=rid),
            Req("/dead", headers=rid),
            Req("/direct", headers=rid),
            Req("/ok/h2", method="POST", body=b"0123456789", proto="h2c", headers=rid),
            Req("/ok/head", method="HEAD", headers=rid)]


def collect(e2e, make_bootstrap, reqs, listener="in"):
    """Per implementation: start with a bootstrap logging to its own file, send `reqs`, stop;
    return label -> (lines, listener port)."""
    out = {}
    for impl in e2e.implementations():
        path = e2e.log_dir / f"access-{impl.label.replace('#', '_')}.log"
        proxy = e2e.start_proxy(impl.kind, make_bootstrap(path))
        try:
            e2e.observe(proxy, reqs)
            port = proxy.port(listener) if isinstance(listener, str) else {n: proxy.port(n) for n in listener}
            time.sleep(0.3)  # the last response may still be finishing its log entry
        finally:
            # Envoy flushes access log files every 10 s or when it stops: read after stopping.
            proxy.stop()
        out[impl.label] = (path.read_text().splitlines() if path.exists() else [], port)
    return out


def compare(e2e, results, norm):
    ref_lines, ref_port = results[e2e.reference.label]
    mine, port = results[e2e.impl.label]
    a = [norm(l, ref_port) for l in ref_lines]
    b = [norm(l, port) for l in mine]
    assert b == a, "\n".join(["envoy:", *a, f"{e2e.impl.label}:", *b])
    return b


def text_norm(line, port):
    line = TIME_RE.sub("TIME", line)
    return line.replace(f":{port}", ":LPORT")


DEFAULT_RE = re.compile(r'^(\[TIME\] "[^"]*" \d+ \S+ \d+ \d+) (\d+) (\S+) (.*)$')


def default_norm(line, port):
    line = text_norm(line, port)
    m = DEFAULT_RE.match(line)
    assert m, f"not the default format: {line!r}"
    svc = "-" if m.group(3) == "-" else "N"
    return f"{m.group(1)} DUR {svc} {m.group(4)}"


def test_default_format(e2e):
    a, = e2e.upstreams("a")
    dead = free_port("127.0.0.1")
    res = collect(e2e, lambda p: http_bootstrap(a, [file_log(p)], dead), requests())
    lines = compare(e2e, res, default_norm)
    assert lines[0].startswith('[TIME] "GET /ok/x?q=1 HTTP/1.1" 200 - 0 ')
    assert lines[1].startswith('[TIME] "POST /ok/post HTTP/1.1" 200 - 5 ')
    assert " 404 NR 0 0 DUR - " in lines[4]
    assert " 503 URX,UF 0 " in lines[5] and lines[5].endswith(f'"127.0.0.1:{dead}"')
    assert '"201 - 0 4 DUR - "' not in lines[6] and " 201 - 0 4 DUR - " in lines[6]


ISTIO_RE = re.compile(r'^(\[TIME\] "[^"]*" \d+ \S+ \S+ \S+ "[^"]*" \d+ \d+) (\d+) (\S+) (.*) (\S+) (\S+) (\S+) (\S+) (\S+)$')


def istio_norm(line, port, upstream_local=True):
    line = text_norm(line, port)
    m = ISTIO_RE.match(line)
    assert m, f"not the Istio format: {line!r}"
    svc = "-" if m.group(3) == "-" else "N"
    ula = m.group(5)
    if upstream_local:
        ula = re.sub(r":\d+$", ":EPH", ula)  # the upstream connection's ephemeral port
    else:
        ula = "IGNORED"
    remote = re.sub(r":\d+$", ":EPH", m.group(7))  # the client's ephemeral port
    return f"{m.group(1)} DUR {svc} {m.group(4)} {ula} {m.group(6)} {remote} {m.group(8)} {m.group(9)}"


def istio_log(p):
    return file_log(p, log_format={"text_format_source": {"inline_string": ISTIO_FORMAT}})


def test_istio_format(e2e):
    """Istio's proxy access log format; UPSTREAM_LOCAL_ADDRESS is checked by the next test."""
    a, = e2e.upstreams("a")
    dead = free_port("127.0.0.1")
    res = collect(e2e, lambda p: http_bootstrap(a, [istio_log(p)], dead), requests())
    lines = compare(e2e, res, lambda l, p: istio_norm(l, p, upstream_local=False))
    assert " via_upstream - " in lines[0] and lines[0].endswith(" - ok_route")
    assert " route_not_found " in lines[4]
    assert "upstream_reset_before_response_started{remote_connection_failure|" in lines[5]
    assert " direct_response " in lines[6]


def test_istio_format_upstream_local_address(e2e):
    a, = e2e.upstreams("a")
    dead = free_port("127.0.0.1")
    res = collect(e2e, lambda p: http_bootstrap(a, [istio_log(p)], dead),
                  [Req("/ok/x", headers=[("x-request-id", "req-ula")])])
    compare(e2e, res, istio_norm)


JSON_FORMAT = {
    "code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "flags": "%RESPONSE_FLAGS%", "flags_long": "%RESPONSE_FLAGS_LONG%", "rx": "%BYTES_RECEIVED%",
    "tx": "%BYTES_SENT%", "duration": "%DURATION%", "upstream": "%UPSTREAM_HOST%",
    "cluster": "%UPSTREAM_CLUSTER%", "details": "%RESPONSE_CODE_DETAILS%", "route": "%ROUTE_NAME%",
    "proto": "%PROTOCOL%", "mixed": "code=%RESPONSE_CODE% ua=%REQ(USER-AGENT):3%", "missing": "%REQ(X-NOPE)%",
    "nested": {"z": "%REQ(:AUTHORITY)%", "a": "%UPSTREAM_TRANSPORT_FAILURE_REASON%"}, "num": 7,
    "resp_ct": "%RESP(CONTENT-TYPE)%", "start": "%START_TIME(%Y)%",
}


def json_norm(line, port):
    obj = json.loads(line)  # must be one JSON object per line
    assert isinstance(obj["duration"], int)  # numbers stay numbers; the value is timing
    obj["duration"] = "DUR"
    obj["nested"]["z"] = obj["nested"]["z"].replace(f":{port}", ":LPORT")
    return line.split('"', 2)[1], obj  # first key: key order is Envoy's (sorted)


def test_json_format(e2e):
    a, = e2e.upstreams("a")
    dead = free_port("127.0.0.1")
    log = lambda p: file_log(p, log_format={"json_format": JSON_FORMAT})
    res = collect(e2e, lambda p: http_bootstrap(a, [log(p)], dead), requests())
    ref_lines, _ = res[e2e.reference.label]
    mine_lines, _ = res[e2e.impl.label]
    # Key order as printed, too.
    assert [list(json.loads(l)) for l in mine_lines] == [list(json.loads(l)) for l in ref_lines]
    objs = compare(e2e, res, json_norm)
    first = objs[0][1]
    assert first["code"] == 200 and first["rx"] == 0 and first["missing"] is None and first["num"] == 7
    assert objs[5][1]["flags"] == "URX,UF"


def test_status_filter(e2e):
    """status_code_filter GE 400 inside an and_filter with not_health_check_filter."""
    a, = e2e.upstreams("a")
    dead = free_port("127.0.0.1")
    flt = {"and_filter": {"filters": [
        {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "k"}}}},
        {"not_health_check_filter": {}}]}}
    flags = {"response_flag_filter": {"flags": ["NR"]}}

    def bs(p):
        logs = [dict(file_log(p), filter=flt),
                dict(file_log(str(p) + ".nr", log_format={"text_format_source": {"inline_string": "NR %REQ(:PATH)%\n"}}),
                     filter=flags)]
        return http_bootstrap(a, logs, dead)

    res = collect(e2e, bs, requests())
    lines = compare(e2e, res, default_norm)
    assert [l.split('"')[1] for l in lines] == ["GET /ok/fail HTTP/1.1", "GET /nothing HTTP/1.1", "GET /dead HTTP/1.1"]


def test_tcp_proxy_log(e2e):
    up = e2e.upstream("t", tcp=True)
    fmt = ("%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% "
           "%PROTOCOL% %REQ(:PATH)% %DOWNSTREAM_LOCAL_ADDRESS% %DURATION%\n")
    dead = free_port("127.0.0.1")

    def bs(p):
        log = [file_log(p, log_format={"text_format_source": {"inline_string": fmt}})]
        return bootstrap([tcp_listener("tcp", "t", access_log=log), tcp_listener("tcpdead", "dead", access_log=log)],
                         [static_cluster("t", [up.tcp_endpoint]),
                          static_cluster("dead", [("127.0.0.1", dead)], connect_timeout="0.5s")])

    reqs = [TcpReq(b"hello tcp\n", listener="tcp")]  # tcpdead: the readiness probe connects once
    res = collect(e2e, bs, reqs, listener=("tcp", "tcpdead"))

    def norm(line, ports):
        for name, port in ports.items():
            line = line.replace(f":{port} ", f":{name.upper()} ")
        return re.sub(r" \d+$", " DUR", line)

    # The harness's readiness probe connects to every listener once (0 bytes each way), in an
    # order that is not part of the behaviour: compare sorted.
    ref, ref_ports = res[e2e.reference.label]
    mine, ports = res[e2e.impl.label]
    a = sorted(norm(l, ref_ports) for l in ref)
    b = sorted(norm(l, ports) for l in mine)
    assert b == a, "\n".join(["envoy:", *a, f"{e2e.impl.label}:", *b])
    assert f"0 - 10 16 127.0.0.1:{up.tcp_port} t - - 127.0.0.1:TCP DUR" in b
    assert f"0 UF,URX 0 0 127.0.0.1:{dead} dead - - 127.0.0.1:TCPDEAD DUR" in b
