//! The request path: a realistic route table, arbitrary requests (authority,
//! path, method, headers). Matching, rewrites, redirects and header
//! mutations must never panic.
#![no_main]

use std::sync::LazyLock;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use libfuzzer_sys::fuzz_target;

const TABLE_YAML: &str = r#"
name: fuzz
virtual_hosts:
- name: exact
  domains: ["api.example.com", "api.example.com:8080"]
  request_headers_to_add: [{header: {key: x-vh, value: "%DOWNSTREAM_REMOTE_ADDRESS%"}}]
  routes:
  - match: {safe_regex: {regex: "/v[0-9]+/items/([a-z]+)"}}
    route: {cluster: items, regex_rewrite: {pattern: {regex: "^/v([0-9]+)/"}, substitution: "/api/\\1/"}}
  - match: {prefix: /old, headers: [{name: x-env, string_match: {prefix: pro}}]}
    redirect: {prefix_rewrite: /new, response_code: PERMANENT_REDIRECT, strip_query: true}
  - match: {path_separated_prefix: /svc, query_parameters: [{name: v, string_match: {exact: "2"}}]}
    route: {weighted_clusters: {clusters: [{name: a, weight: 30}, {name: b, weight: 70}]}, prefix_rewrite: /}
- name: wild
  domains: ["*.example.com", "foo.*"]
  routes:
  - match: {prefix: /, case_sensitive: false}
    route: {cluster_header: x-cluster, host_rewrite_literal: upstream.internal}
- name: any
  domains: ["*"]
  routes:
  - match: {prefix: /}
    direct_response: {status: 404, body: {inline_string: nope}}
"#;

static TABLE: LazyLock<route::RouteTable> = LazyLock::new(|| {
    let rc: RouteConfiguration =
        xds::codec::message_from_yaml_str(TABLE_YAML, "envoy.config.route.v3.RouteConfiguration").expect("valid table");
    route::RouteTable::compile(&rc).expect("table compiles")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let authority = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let method = http::Method::from_bytes(parts.next().unwrap_or("GET").as_bytes()).unwrap_or(http::Method::GET);
    let mut headers = http::HeaderMap::new();
    for line in parts {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v))
        {
            headers.append(k, v);
        }
    }
    let view = route::RequestView { authority, path, method: &method, headers: &headers, scheme: "https" };
    let random = data.len() as u64;
    if let Some(sel) = TABLE.find(&view, random) {
        let mut h = headers.clone();
        TABLE.apply_request_headers(&sel, &mut h, &());
        let _ = sel.route.rewritten_path(path);
        if let route::Action::Redirect(r) = &sel.route.action {
            let _ = r.location(&view);
        }
        if let route::Action::Forward(f) = &sel.route.action {
            let _ = f.rewritten_host(&view, sel.cluster.as_ref().and_then(|c| c.weighted));
        }
    }
});
