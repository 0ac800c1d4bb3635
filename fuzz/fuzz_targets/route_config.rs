//! Arbitrary RouteConfiguration bytes: decoding and compiling must never
//! panic, and a table that compiles must route any request without panicking.
#![no_main]

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(rc) = RouteConfiguration::decode(data) else { return };
    let Ok(table) = route::RouteTable::compile(&rc) else { return };
    let headers = http::HeaderMap::new();
    let view = route::RequestView {
        authority: "example.com:8080",
        path: "/a/b?c=d",
        method: &http::Method::GET,
        headers: &headers,
        scheme: "http",
    };
    if let Some(sel) = table.find(&view, 7) {
        let mut h = http::HeaderMap::new();
        table.apply_request_headers(&sel, &mut h, &());
        table.apply_response_headers(&sel, &mut h, &());
        if let route::Action::Redirect(r) = &sel.route.action {
            let _ = r.location(&view);
        }
        let _ = sel.route.rewritten_path(view.path);
    }
});
