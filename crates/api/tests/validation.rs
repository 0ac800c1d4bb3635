//! Negative tests: one small object per rule, asserting the field path.

use api::{load, validate};

/// Loads one document (must load) and returns its validation error paths.
fn error_paths(spec_yaml: &str, kind: &str) -> Vec<String> {
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata:\n  name: t\n  namespace: ns\nspec:\n{}",
        spec_yaml
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let (objects, errors) = load::parse_documents(&text, "t.yaml");
    assert!(errors.is_empty(), "load errors: {errors:?}");
    assert_eq!(objects.len(), 1);
    validate(&objects[0])
        .errors
        .into_iter()
        .map(|e| e.path)
        .collect()
}

fn assert_error(kind: &str, spec: &str, path: &str) {
    let paths = error_paths(spec, kind);
    assert!(
        paths.iter().any(|p| p == path),
        "expected an error at {path}, got {paths:?}"
    );
}

fn assert_clean(kind: &str, spec: &str) {
    let paths = error_paths(spec, kind);
    assert!(paths.is_empty(), "expected no errors, got {paths:?}");
}

const VS: &str = "VirtualService";
const DR: &str = "DestinationRule";
const GW: &str = "Gateway";
const SE: &str = "ServiceEntry";
const SC: &str = "Sidecar";

#[test]
fn display_names_file_object_and_field() {
    let (objects, _) = load::parse_documents(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: ns}\nspec:\n  hosts: [a.b]\n  http:\n  - route:\n    - destination: {host: a.b}\n      weight: -1\n",
        "f.yaml",
    );
    let e = &validate(&objects[0]).errors[0];
    assert_eq!(
        e.to_string(),
        "f.yaml: VirtualService ns/r: spec.http[0].route[0].weight: weight -1 must not be negative"
    );
}

#[test]
fn vs_hosts() {
    assert_error(
        VS,
        "hosts: [\"foo.*.com\"]\nhttp: [{route: [{destination: {host: a}}]}]",
        "spec.hosts[0]",
    );
    assert_error(
        VS,
        "hosts: [\"*\"]\nhttp: [{route: [{destination: {host: a}}]}]",
        "spec.hosts[0]",
    );
    assert_clean(
        VS,
        "hosts: [\"*\"]\ngateways: [gw]\nhttp: [{route: [{destination: {host: a}}]}]",
    );
    assert_error(
        VS,
        "hosts: [\"*.foo.com\", a.foo.com]\nhttp: [{route: [{destination: {host: a}}]}]",
        "spec.hosts[1]",
    );
    assert_error(VS, "hosts: [a]", "spec");
}

#[test]
fn vs_weights() {
    assert_error(
        VS,
        "hosts: [a]\nhttp:\n- route:\n  - destination: {host: a}\n  - destination: {host: b}\n    weight: -5",
        "spec.http[0].route[1].weight",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp:\n- route:\n  - destination: {host: a}\n  - destination: {host: b}",
        "spec.http[0].route",
    );
    // Weights need not add up to 100.
    assert_clean(
        VS,
        "hosts: [a]\nhttp:\n- route:\n  - destination: {host: a}\n    weight: 1\n  - destination: {host: b}\n    weight: 2",
    );
}

#[test]
fn vs_destination() {
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{route: [{weight: 1}]}]",
        "spec.http[0].route[0].destination",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{route: [{destination: {host: \"\"}}]}]",
        "spec.http[0].route[0].destination.host",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{route: [{destination: {host: a, subset: Bad_Subset}}]}]",
        "spec.http[0].route[0].destination.subset",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{route: [{destination: {host: a, port: {number: 0}}}]}]",
        "spec.http[0].route[0].destination.port.number",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{uri: {prefix: /}}]}]",
        "spec.http[0]",
    );
}

#[test]
fn vs_route_redirect_direct_response_exclusive() {
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{redirect: {uri: /x}, route: [{destination: {host: a}}]}]",
        "spec.http[0].route",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{directResponse: {status: 200}, route: [{destination: {host: a}}]}]",
        "spec.http[0].route",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{redirect: {uri: /x}, directResponse: {status: 200}}]",
        "spec.http[0].directResponse",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{directResponse: {status: 700}}]",
        "spec.http[0].directResponse.status",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{redirect: {redirectCode: 200, uri: /x}}]",
        "spec.http[0].redirect.redirectCode",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{redirect: {scheme: ftp}}]",
        "spec.http[0].redirect.scheme",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{redirect: {}}]",
        "spec.http[0].redirect",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{uri: {exact: /a}}], redirect: {prefixRewrite: /b}}]",
        "spec.http[0].redirect.prefixRewrite",
    );
    assert_clean(
        VS,
        "hosts: [a]\nhttp: [{directResponse: {status: 503, body: {string: down}}}]",
    );
}

#[test]
fn vs_delegate() {
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{delegate: {name: d}, route: [{destination: {host: a}}]}]",
        "spec.http[0].route",
    );
    assert_error(VS, "http: [{delegate: {name: d}}]", "spec.http[0].delegate");
    assert_error(
        VS,
        "gateways: [gw]\nhttp: [{route: [{destination: {host: a}}]}]",
        "spec.gateways",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{uri: {regex: \"/a.*\"}}], delegate: {name: d}}]",
        "spec.http[0].match[0].uri",
    );
    assert_clean(
        VS,
        "hosts: [a]\nhttp: [{match: [{uri: {prefix: /a}}], delegate: {name: d, namespace: other}}]",
    );
}

#[test]
fn vs_regex_and_matches() {
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{uri: {regex: \"(\"}}], route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].uri.regex",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{headers: {x: {regex: \"[\"}}}], route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].headers.x.regex",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{headers: {\"bad header\": {exact: v}}}], route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].headers.bad header",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{method: {prefix: \"\"}}], route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].method.prefix",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].uri",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{sourceNamespace: Bad_NS}], route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].sourceNamespace",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{port: 70000}], route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].port",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{gateways: [\"ns/Bad_Name\"]}], route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].gateways[0]",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{match: [{headers: {\"@request.auth.claims.group\": {exact: g}}}], route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].headers.@request.auth.claims.group",
    );
    assert_clean(
        VS,
        "hosts: [a]\ngateways: [gw]\nhttp: [{match: [{headers: {\"@request.auth.claims.group\": {exact: g}}, withoutHeaders: {x: {regex: \"*\"}}}], route: [{destination: {host: a}}]}]",
    );
}

#[test]
fn vs_durations_retries_faults() {
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{timeout: 0s, route: [{destination: {host: a}}]}]",
        "spec.http[0].timeout",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{timeout: 1500us, route: [{destination: {host: a}}]}]",
        "spec.http[0].timeout",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{retries: {attempts: -1}, route: [{destination: {host: a}}]}]",
        "spec.http[0].retries.attempts",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{retries: {attempts: 0, perTryTimeout: 1s}, route: [{destination: {host: a}}]}]",
        "spec.http[0].retries.attempts",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{retries: {attempts: 3, retryOn: \"5xx,bogus\"}, route: [{destination: {host: a}}]}]",
        "spec.http[0].retries.retryOn",
    );
    assert_clean(
        VS,
        "hosts: [a]\nhttp: [{retries: {attempts: 3, perTryTimeout: 2s, retryOn: \"5xx,503,connect-failure\", retryRemoteLocalities: true}, route: [{destination: {host: a}}]}]",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{fault: {abort: {httpStatus: 100}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].fault.abort.httpStatus",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{fault: {abort: {grpcStatus: NOPE}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].fault.abort.grpcStatus",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{fault: {delay: {fixedDelay: 1s, percentage: {value: 101}}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].fault.delay.percentage.value",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{fault: {delay: {fixedDelay: 1s, percent: 150}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].fault.delay.percent",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{fault: {}, route: [{destination: {host: a}}]}]",
        "spec.http[0].fault",
    );
}

#[test]
fn vs_rewrite_mirror_cors_headers() {
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].rewrite",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{rewrite: {uriRegexRewrite: {match: \"(\", rewrite: b}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].rewrite.uriRegexRewrite.match",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{rewrite: {authority: x}, headers: {request: {set: {\":authority\": z}}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].headers.request.set.:authority",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{mirror: {host: m}, mirrors: [{destination: {host: nn}}], route: [{destination: {host: a}}]}]",
        "spec.http[0].mirrors",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{mirror: {host: m}, mirrorPercentage: {value: 120}, route: [{destination: {host: a}}]}]",
        "spec.http[0].mirrorPercentage.value",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{corsPolicy: {allowMethods: [FETCH]}, route: [{destination: {host: a}}]}]",
        "spec.http[0].corsPolicy.allowMethods[0]",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{corsPolicy: {allowOrigins: [{regex: \"(\"}]}, route: [{destination: {host: a}}]}]",
        "spec.http[0].corsPolicy.allowOrigins[0].regex",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{corsPolicy: {maxAge: 1500ms}, route: [{destination: {host: a}}]}]",
        "spec.http[0].corsPolicy.maxAge",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{headers: {response: {set: {host: x}}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].headers.response.set.host",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{headers: {request: {remove: [\":path\"]}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].headers.request.remove[0]",
    );
    assert_error(
        VS,
        "hosts: [a]\nhttp: [{route: [{destination: {host: a}, headers: {request: {add: {x: \"50%\"}}}}]}]",
        "spec.http[0].route[0].headers.request.add.x",
    );
}

#[test]
fn vs_tls_tcp_export() {
    assert_error(
        VS,
        "hosts: [a.com]\ntls: [{match: [{sniHosts: [b.com]}], route: [{destination: {host: a}}]}]",
        "spec.tls[0].match[0].sniHosts[0]",
    );
    assert_error(
        VS,
        "hosts: [a.com]\ntls: [{match: [{port: 443}], route: [{destination: {host: a}}]}]",
        "spec.tls[0].match[0].sniHosts",
    );
    assert_error(
        VS,
        "hosts: [a.com]\ntcp: [{match: [{destinationSubnets: [10.0.0.0/40]}], route: [{destination: {host: a}}]}]",
        "spec.tcp[0].match[0].destinationSubnets[0]",
    );
    assert_error(
        VS,
        "hosts: [a.com]\ntcp: [{match: [{port: 80}]}]",
        "spec.tcp[0].route",
    );
    assert_error(
        VS,
        "hosts: [a]\nexportTo: [\"*\", ns1]\nhttp: [{route: [{destination: {host: a}}]}]",
        "spec.exportTo",
    );
    assert_error(
        VS,
        "hosts: [a]\nexportTo: [\".\", ns]\nhttp: [{route: [{destination: {host: a}}]}]",
        "spec.exportTo[1]",
    );
    assert_error(
        VS,
        "hosts: [a]\nexportTo: [\"~\"]\nhttp: [{route: [{destination: {host: a}}]}]",
        "spec.exportTo[0]",
    );
}

#[test]
fn dr_rules() {
    assert_error(DR, "trafficPolicy: {tls: {mode: SIMPLE}}", "spec.host");
    assert_error(
        DR,
        "host: a\nsubsets: [{name: v1, labels: {v: a}}, {name: v1, labels: {v: b}}]",
        "spec.subsets[1].name",
    );
    assert_error(
        DR,
        "host: a\nsubsets: [{name: V_1}]",
        "spec.subsets[0].name",
    );
    assert_error(
        DR,
        "host: a\nsubsets: [{name: v1, labels: {\"bad key!\": x}}]",
        "spec.subsets[0].labels.bad key!",
    );
    assert_error(DR, "host: a\ntrafficPolicy: {}", "spec.trafficPolicy");
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {tls: {mode: MUTUAL}}",
        "spec.trafficPolicy.tls.clientCertificate",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}",
        "spec.trafficPolicy.tls.credentialName",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, subjectAltNames: [x]}}",
        "spec.trafficPolicy.tls",
    );
    assert_clean(
        DR,
        "host: a\ntrafficPolicy: {tls: {mode: MUTUAL, credentialName: c, sni: x.example.com}}",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}",
        "spec.trafficPolicy.loadBalancer",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 1000}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: \"\"}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {connectionPool: {}}",
        "spec.trafficPolicy.connectionPool",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {outlierDetection: {interval: 0s}}",
        "spec.trafficPolicy.outlierDetection.interval",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: \"us/*\", to: {\"us/a/*\": 60}}]}}}",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}}]}",
        "spec.trafficPolicy.portLevelSettings[0]",
    );
    assert_error(
        DR,
        "host: a\ntrafficPolicy: {tunnel: {targetHost: \"bad host\", targetPort: 8080}}",
        "spec.trafficPolicy.tunnel.targetHost",
    );
    assert_error(
        DR,
        "host: a\nworkloadSelector: {matchLabels: {app: x}}\nexportTo: [\"*\"]",
        "spec.exportTo",
    );
}

#[test]
fn gateway_rules() {
    assert_error(GW, "servers: []", "spec.servers");
    assert_error(
        GW,
        "servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.com]}]",
        "spec.servers[0].tls",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 80, name: http, protocol: FOO}, hosts: [a.com]}]",
        "spec.servers[0].port.protocol",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 0, name: http, protocol: HTTP}, hosts: [a.com]}]",
        "spec.servers[0].port.number",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 80, protocol: HTTP}, hosts: [a.com]}]",
        "spec.servers[0].port.name",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: []}]",
        "spec.servers[0].hosts",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [shortname]}]",
        "spec.servers[0].hosts[0]",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"Bad_NS/a.com\"]}]",
        "spec.servers[0].hosts[0]",
    );
    assert_clean(
        GW,
        "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"ns/a.com\", \"./*\", \"*/b.com\"]}]",
    );
    assert_error(
        GW,
        "servers:\n- {port: {number: 80, name: http, protocol: HTTP}, hosts: [a.com]}\n- {port: {number: 81, name: http, protocol: HTTP}, hosts: [a.com]}",
        "spec.servers[1].port.name",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.com], tls: {mode: SIMPLE, credentialName: c, serverCertificate: /c.pem, privateKey: /k.pem}}]",
        "spec.servers[0].tls",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.com], tls: {mode: SIMPLE}}]",
        "spec.servers[0].tls.serverCertificate",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.com], tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}}]",
        "spec.servers[0].tls.caCertificates",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.com], tls: {mode: ISTIO_MUTUAL, credentialName: c}}]",
        "spec.servers[0].tls.credentialName",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.com], tls: {mode: SIMPLE, credentialName: c}}]",
        "spec.servers[0].tls",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 31400, name: tcp, protocol: TCP}, hosts: [a.com], tls: {httpsRedirect: true}}]",
        "spec.servers[0].tls",
    );
    assert_error(
        GW,
        "servers: [{port: {number: 80, name: http, protocol: HTTP, targetPort: 8080}, hosts: [a.com]}]",
        "spec.servers[0].port.targetPort",
    );
    assert_clean(
        GW,
        "servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.com], tls: {mode: SIMPLE, credentialName: c}}]",
    );
}

#[test]
fn gateway_name_must_be_a_label() {
    let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: my.gw}\nspec:\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.com]}]\n";
    let (objects, _) = load::parse_documents(text, "g.yaml");
    let errs = validate(&objects[0]).errors;
    assert!(errs.iter().any(|e| e.path == "metadata.name"), "{errs:?}");
}

#[test]
fn service_entry_rules() {
    assert_error(
        SE,
        "ports: [{number: 80, name: http, protocol: HTTP}]",
        "spec.hosts",
    );
    assert_error(SE, "hosts: [\"*\"]", "spec.hosts[0]");
    assert_error(
        SE,
        "hosts: [a.com]\nports: [{number: 80, name: http}, {number: 80, name: http2}]",
        "spec.ports[1].number",
    );
    assert_error(
        SE,
        "hosts: [a.com]\nports: [{number: 80, name: http}, {number: 81, name: http}]",
        "spec.ports[1].name",
    );
    assert_error(
        SE,
        "hosts: [a.com]\nports: [{number: 80, name: http, protocol: BOGUS}]",
        "spec.ports[0].protocol",
    );
    assert_error(
        SE,
        "hosts: [a.com]\nresolution: NONE\nendpoints: [{address: 1.1.1.1}]",
        "spec.endpoints",
    );
    assert_error(
        SE,
        "hosts: [a.com]\nresolution: DNS\naddresses: [10.0.0.0/24]",
        "spec.addresses",
    );
    assert_error(
        SE,
        "hosts: [a.com]\nresolution: DNS_ROUND_ROBIN\nendpoints: [{address: a.com}, {address: b.com}]",
        "spec.endpoints",
    );
    assert_error(
        SE,
        "hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: not-an-ip.com}]",
        "spec.endpoints[0].address",
    );
    assert_error(
        SE,
        "hosts: [a.com]\nresolution: STATIC\nports: [{number: 80, name: http}]\nendpoints: [{address: 1.1.1.1, ports: {other: 8080}}]",
        "spec.endpoints[0].ports.other",
    );
    assert_error(
        SE,
        "hosts: [a.com, b.com]\nresolution: DNS\nports: [{number: 80, name: tcp, protocol: TCP}]",
        "spec.ports[0].protocol",
    );
    assert_error(
        SE,
        "hosts: [a.com]\naddresses: [300.1.1.1]",
        "spec.addresses[0]",
    );
    assert_error(
        SE,
        "hosts: [a.com]\nworkloadSelector: {labels: {app: x}}\nresolution: STATIC\nendpoints: [{address: 1.1.1.1}]",
        "spec.workloadSelector",
    );
    assert_error(
        SE,
        "hosts: [a.com]\nexportTo: [\"~\", \"*\"]",
        "spec.exportTo",
    );
    assert_clean(
        SE,
        "hosts: [a.com]\nexportTo: [\"~\"]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: DNS",
    );
}

#[test]
fn workload_entry_and_group_rules() {
    assert_error("WorkloadEntry", "labels: {app: a}", "spec.address");
    assert_error(
        "WorkloadEntry",
        "address: \"unix://relative\"",
        "spec.address",
    );
    assert_error(
        "WorkloadEntry",
        "address: 1.1.1.1\nports: {http: 0}",
        "spec.ports.http",
    );
    assert_clean(
        "WorkloadEntry",
        "address: vm.example.com\nports: {http: 8080}\nserviceAccount: sa",
    );
    assert_error(
        "WorkloadGroup",
        "metadata: {labels: {app: a}}",
        "spec.template",
    );
    assert_error(
        "WorkloadGroup",
        "template: {}\nprobe: {httpGet: {port: 0}}",
        "spec.probe.httpGet.port",
    );
    assert_error(
        "WorkloadGroup",
        "template: {}\nprobe: {periodSeconds: 5}",
        "spec.probe",
    );
}

#[test]
fn sidecar_rules() {
    assert_error(SC, "workloadSelector: {labels: {app: a}}", "spec");
    assert_error(
        SC,
        "egress: [{hosts: [\"foo.com\"]}]",
        "spec.egress[0].hosts[0]",
    );
    assert_error(
        SC,
        "egress: [{hosts: [\"ns/short\"]}]",
        "spec.egress[0].hosts[0]",
    );
    assert_error(
        SC,
        "egress: [{hosts: [\"Bad_NS/a.com\"]}]",
        "spec.egress[0].hosts[0]",
    );
    assert_error(SC, "egress: [{hosts: []}]", "spec.egress[0].hosts");
    assert_error(
        SC,
        "egress:\n- hosts: [\"*/*\"]\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [\"ns/*\"]",
        "spec.egress[0].port",
    );
    assert_error(
        SC,
        "egress:\n- port: {number: 80, protocol: HTTP}\n  hosts: [\"*/*\"]\n- port: {number: 80, protocol: HTTP}\n  hosts: [\"*/*\"]",
        "spec.egress[1].port.number",
    );
    assert_error(
        SC,
        "ingress: [{defaultEndpoint: \"127.0.0.1:80\"}]",
        "spec.ingress[0].port",
    );
    assert_error(
        SC,
        "ingress: [{port: {number: 80, protocol: HTTP, name: http}, defaultEndpoint: \"10.0.0.1:80\"}]",
        "spec.ingress[0].defaultEndpoint",
    );
    assert_error(
        SC,
        "outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: proxy.com, port: {number: 80}}}",
        "spec.outboundTrafficPolicy.egressProxy",
    );
    assert_clean(
        SC,
        "egress: [{hosts: [\"./*\", \"istio-system/*\", \"~/a.com\"]}]\noutboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: proxy.com, port: {number: 80}}}",
    );
}

#[test]
fn forbidden_annotations() {
    let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d\n  annotations: {istio.io/dry-run: \"true\"}\nspec: {host: a}\n";
    let (objects, _) = load::parse_documents(text, "a.yaml");
    assert!(
        validate(&objects[0])
            .errors
            .iter()
            .any(|e| e.path.starts_with("metadata.annotations"))
    );
}
