//! Bootstrap parsing: arbitrary text must give a clear error, not a panic.
#![no_main]

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = xds::codec::message_from_yaml_str::<Bootstrap>(&text, "envoy.config.bootstrap.v3.Bootstrap");
});
