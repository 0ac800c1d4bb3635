"""Upstream TLS (UpstreamTlsContext): SNI, chain and SAN verification (SPIFFE URIs
included), client certificates inline and from SDS secrets, transport_socket_matches.

The upstream is a real HTTPS server (Python's ssl) that reports the SNI it received and
the client certificate's URI SANs. Where a handshake fails, Envoy's and Trellis's error
bodies carry library-specific TLS error text, so failures compare status and flags only."""
from __future__ import annotations

import ssl

from harness import Req, bootstrap, http_listener, prefix, route, route_config, static_cluster, vhost
from harness.certs import ca_and_leaves
from harness.client import send

TLS_CTX = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SPIFFE_CLIENT = "spiffe://cluster.local/ns/default/sa/client"


def certs(e2e, name="pki", ca_name="e2e test CA"):
    return ca_and_leaves(e2e.log_dir / name, {
        "server": {"dns": ["upstream.test"], "uris": ["spiffe://cluster.local/ns/default/sa/server"]},
        "client": {"uris": [SPIFFE_CLIENT]},
    }, ca_name=ca_name)


def https_upstream(e2e, pki, require_client_cert=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server"], pki["server-key"])
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki["ca"])
    return e2e.recorder("secure", tls=ctx)


def tls_socket(**ctx) -> dict:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": TLS_CTX, **ctx}}


def cluster_bootstrap(up, transport: dict | None = None, secrets: list | None = None, **cluster_extra):
    extra = {"transport_socket": transport} if transport else {}
    rc = route_config([vhost("all", [route(prefix("/"), cluster="secure")])])
    bs = bootstrap([http_listener("in", rc)], [static_cluster("secure", [up.endpoint], **extra, **cluster_extra)])
    if secrets:
        bs["static_resources"]["secrets"] = secrets
    return bs


def validation(pki, *sans) -> dict:
    v = {"trusted_ca": {"filename": pki["ca"]}}
    if sans:
        v["match_typed_subject_alt_names"] = [{"san_type": t, "matcher": {"exact": s}} for t, s in sans]
    return v


def statuses(e2e, bs, n=1):
    return e2e.run_each(bs, lambda p: [send((p.host(), p.port()), Req("/")).status for _ in range(n)])


def test_sni_and_dns_san_verified(e2e):
    pki = certs(e2e)
    up = https_upstream(e2e, pki)
    bs = cluster_bootstrap(up, tls_socket(sni="upstream.test", common_tls_context={
        "validation_context": validation(pki, ("DNS", "upstream.test"))}))
    [o] = e2e.differential(bs, [Req("/")])
    assert o.status == 200 and o.header("x-sni") == "upstream.test"
    assert o.header("x-peer-uri-san") == "-"


def test_spiffe_uri_san_and_client_certificate(e2e):
    """What Istio's ISTIO_MUTUAL amounts to: verify the server's SPIFFE id, present ours."""
    pki = certs(e2e)
    up = https_upstream(e2e, pki, require_client_cert=True)
    bs = cluster_bootstrap(up, tls_socket(sni="outbound_.80_._.secure.default.svc.cluster.local", common_tls_context={
        "tls_certificates": [{"certificate_chain": {"filename": pki["client"]},
                              "private_key": {"filename": pki["client-key"]}}],
        "validation_context": validation(pki, ("URI", "spiffe://cluster.local/ns/default/sa/server"))}))
    [o] = e2e.differential(bs, [Req("/")])
    assert o.status == 200 and o.header("x-peer-uri-san") == SPIFFE_CLIENT


def test_client_certificate_and_trust_from_sds_secrets(e2e):
    """Certificates named by SDS config and delivered as static secrets, with a combined
    validation context (Istio's shape: SAN matchers in the default, the CA from 'ROOTCA')."""
    pki = certs(e2e)
    up = https_upstream(e2e, pki, require_client_cert=True)
    ads_less = {"name": "default"}
    secrets = [
        {"name": "default", "tls_certificate": {"certificate_chain": {"filename": pki["client"]},
                                                "private_key": {"filename": pki["client-key"]}}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": {"filename": pki["ca"]}}},
    ]
    bs = cluster_bootstrap(up, tls_socket(common_tls_context={
        "tls_certificate_sds_secret_configs": [ads_less],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/server"}}]},
            "validation_context_sds_secret_config": {"name": "ROOTCA"}}}), secrets=secrets)
    [o] = e2e.differential(bs, [Req("/")])
    assert o.status == 200 and o.header("x-peer-uri-san") == SPIFFE_CLIENT
    assert o.header("x-sni") == "-"   # no sni configured: none sent


def test_wrong_san_untrusted_ca_and_missing_client_cert_fail_with_503(e2e):
    pki = certs(e2e)
    other = certs(e2e, "other-pki", ca_name="another CA")
    up = https_upstream(e2e, pki)
    mtls_up = https_upstream(e2e, pki, require_client_cert=True)
    cases = {
        "wrong SPIFFE id": (up, tls_socket(common_tls_context={
            "validation_context": validation(pki, ("URI", "spiffe://cluster.local/ns/default/sa/impostor"))})),
        "SAN of the wrong type": (up, tls_socket(common_tls_context={
            "validation_context": validation(pki, ("DNS", "spiffe://cluster.local/ns/default/sa/server"))})),
        "another root": (up, tls_socket(common_tls_context={"validation_context": validation(other)})),
        "no client certificate": (mtls_up, tls_socket(common_tls_context={"validation_context": validation(pki)})),
    }
    for what, (u, ts) in cases.items():
        for label, got in statuses(e2e, cluster_bootstrap(u, ts)).items():
            assert got == [503], (what, label, got)


def test_without_validation_context_any_server_certificate_is_accepted(e2e):
    """Envoy does not verify an upstream certificate unless told to; neither do we."""
    pki = certs(e2e)
    up = https_upstream(e2e, pki)
    [o] = e2e.differential(cluster_bootstrap(up, tls_socket(sni="anything.test")), [Req("/")])
    assert o.status == 200 and o.header("x-sni") == "anything.test"


def test_transport_socket_matches_pick_tls_per_endpoint(e2e):
    """Istio's auto-mTLS: endpoints labelled tlsMode=istio get TLS, the others plaintext."""
    pki = certs(e2e)
    secure = https_upstream(e2e, pki)
    plain = e2e.recorder("plain")
    rc = route_config([vhost("all", [route(prefix("/"), cluster="mixed")])])
    cluster = {
        "name": "mixed", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": "mixed", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": secure.host, "port_value": secure.port}}},
             "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}},
            {"endpoint": {"address": {"socket_address": {"address": plain.host, "port_value": plain.port}}}},
        ]}]},
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
             "transport_socket": tls_socket(common_tls_context={"validation_context": validation(pki)})},
            {"name": "tlsMode-disabled", "match": {},
             "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                 "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
        ],
    }
    bs = bootstrap([http_listener("in", rc)], [cluster])
    dists = e2e.distribution(bs, Req("/"), n=8, key=lambda o: (o.status, o.service))
    for label, counter in dists.items():
        assert counter == {(200, "secure/v1"): 4, (200, "plain/v1"): 4}, (label, counter)


def test_bad_upstream_tls_config_is_refused(e2e):
    pki = certs(e2e)
    up = https_upstream(e2e, pki)
    bad = {
        "SAN matchers without a trusted CA": tls_socket(common_tls_context={"validation_context": {
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": "spiffe://x"}}]}}),
        "unreadable CA file": tls_socket(common_tls_context={"validation_context": {
            "trusted_ca": {"filename": str(e2e.log_dir / "missing.pem")}}}),
    }
    for what, ts in bad.items():
        for label, result in e2e.startup(cluster_bootstrap(up, ts)).items():
            assert result.rejected, (what, label, result.output[-2000:])
