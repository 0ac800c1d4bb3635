"""Thin builders for Envoy v3 bootstrap dicts (plain dicts in, plain dicts out).

Port 0 in a listener (or in the admin address) means "the harness allocates a
free port when it starts a proxy": the same bootstrap dict is given to every
implementation and each started proxy gets its own ports (see `Proxy.port`).
Anything a builder does not cover is passed through `**extra` or by editing
the returned dict.
"""
from __future__ import annotations

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def socket_address(port: int = 0, host: str = "127.0.0.1") -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def bootstrap(listeners: list[dict], clusters: list[dict], **extra) -> dict:
    b = {
        "admin": {"address": socket_address(0)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    b.update(extra)
    return b


def router_filter() -> dict:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}


def hcm(stat_prefix: str, route_config: dict, http_filters: list[dict] | None = None,
        codec: str = "AUTO", **extra) -> dict:
    cfg = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "codec_type": codec,
        "route_config": route_config,
        "http_filters": (http_filters or []) + [router_filter()],
    }
    cfg.update(extra)
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


def http_listener(name: str, route_config: dict, *, port: int = 0, http_filters: list[dict] | None = None,
                  codec: str = "AUTO", host: str = "127.0.0.1", transport_socket: dict | None = None,
                  hcm_extra: dict | None = None) -> dict:
    """A listener with one filter chain: HCM (+ http_filters + router)."""
    chain = {"filters": [hcm(name, route_config, http_filters, codec, **(hcm_extra or {}))]}
    if transport_socket:
        chain["transport_socket"] = transport_socket
    return {"name": name, "address": socket_address(port, host), "filter_chains": [chain]}


def tcp_listener(name: str, cluster: str | None, *, port: int = 0, host: str = "127.0.0.1", **tcp_extra) -> dict:
    """cluster=None: give `weighted_clusters=...` in tcp_extra instead."""
    cfg = {"@type": TCP_PROXY, "stat_prefix": name, **({"cluster": cluster} if cluster else {})}
    cfg.update(tcp_extra)
    return {
        "name": name,
        "address": socket_address(port, host),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": cfg}]}],
    }


def static_cluster(name: str, endpoints: list[tuple[str, int]], *, http2: bool = False,
                   lb_policy: str = "ROUND_ROBIN", connect_timeout: str = "1s", **extra) -> dict:
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": lb_policy,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": socket_address(p, h)}} for h, p in endpoints
            ]}],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    c.update(extra)
    return c


def route_config(vhosts: list[dict], name: str = "local", **extra) -> dict:
    rc = {"name": name, "virtual_hosts": vhosts}
    rc.update(extra)
    return rc


def vhost(name: str, routes: list[dict], domains: list[str] | None = None, **extra) -> dict:
    v = {"name": name, "domains": domains or ["*"], "routes": routes}
    v.update(extra)
    return v


def route(match: dict, *, cluster: str | None = None, action: dict | None = None, **extra) -> dict:
    """`route(prefix("/a"), cluster="a", action={"prefix_rewrite": "/"})` -> a RouteAction;
    other actions via extra: `route(path("/x"), direct_response={...})`, `redirect={...}`."""
    r: dict = {"match": match}
    if cluster is not None or action is not None:
        r["route"] = {**({"cluster": cluster} if cluster else {}), **(action or {})}
    r.update(extra)
    return r


# ---- RouteMatch helpers

def prefix(p: str, **extra) -> dict:
    return {"prefix": p, **extra}


def path(p: str, **extra) -> dict:
    return {"path": p, **extra}


def regex(r: str, **extra) -> dict:
    return {"safe_regex": {"regex": r}, **extra}


def header(name: str, **matcher) -> dict:
    """HeaderMatcher: header("x-a", string_match={"exact": "1"}), header("x-a", present_match=True, invert_match=True)."""
    return {"name": name, **matcher}


def query(name: str, **matcher) -> dict:
    return {"name": name, **matcher}


def weighted(*pairs: tuple[str, int]) -> dict:
    return {"weighted_clusters": {"clusters": [{"name": n, "weight": w} for n, w in pairs]}}


def hdr(key: str, value: str, append_action: str | None = None) -> dict:
    """HeaderValueOption for *_headers_to_add."""
    o: dict = {"header": {"key": key, "value": value}}
    if append_action:
        o["append_action"] = append_action
    return o


def downstream_tls(cert_pem: str, key_pem: str, alpn: list[str] | None = None) -> dict:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_DOWNSTREAM,
            "common_tls_context": {
                "alpn_protocols": alpn or ["h2", "http/1.1"],
                "tls_certificates": [{
                    "certificate_chain": {"filename": cert_pem},
                    "private_key": {"filename": key_pem},
                }],
            },
        },
    }


# ---- listener filter chains, listener filters and HTTP filters (added for the
#      listener / filter / HCM scenarios)

TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
LOCAL_RATELIMIT = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


def http_chain(route_config: dict, *, match: dict | None = None, http_filters: list[dict] | None = None,
               transport_socket: dict | None = None, stat_prefix: str = "in", name: str | None = None,
               **hcm_extra) -> dict:
    """A filter chain (HCM + router) with an optional filter_chain_match / transport socket."""
    c: dict = {}
    if name:
        c["name"] = name
    if match is not None:
        c["filter_chain_match"] = match
    c["filters"] = [hcm(stat_prefix, route_config, http_filters, **hcm_extra)]
    if transport_socket:
        c["transport_socket"] = transport_socket
    return c


def tcp_chain(cluster: str | None = None, *, match: dict | None = None, stat_prefix: str = "tcp",
              **tcp_extra) -> dict:
    cfg = {"@type": TCP_PROXY, "stat_prefix": stat_prefix, **({"cluster": cluster} if cluster else {})}
    cfg.update(tcp_extra)
    c: dict = {}
    if match is not None:
        c["filter_chain_match"] = match
    c["filters"] = [{"name": "envoy.filters.network.tcp_proxy", "typed_config": cfg}]
    return c


def listener(name: str, chains: list[dict], *, port: int = 0, host: str = "127.0.0.1",
             listener_filters: list[dict] | None = None, default_chain: dict | None = None, **extra) -> dict:
    l: dict = {"name": name, "address": socket_address(port, host), "filter_chains": chains}
    if listener_filters:
        l["listener_filters"] = listener_filters
    if default_chain is not None:
        l["default_filter_chain"] = default_chain
    l.update(extra)
    return l


def tls_inspector() -> dict:
    return {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}


def http_inspector() -> dict:
    return {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": HTTP_INSPECTOR}}


def http_filter(name: str, type_url: str, **cfg) -> dict:
    return {"name": name, "typed_config": {"@type": type_url, **cfg}}


def percent(p: int) -> dict:
    """FractionalPercent (per hundred)."""
    return {"numerator": p, "denominator": "HUNDRED"}


def runtime_percent(p: float, key: str = "e2e.unused") -> dict:
    """RuntimeFractionalPercent for filter_enabled / filter_enforced."""
    return {"default_value": percent(int(p)), "runtime_key": key}
