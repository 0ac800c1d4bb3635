//! xDS-to-runtime conversion: arbitrary bytes decoded as a Listener, Cluster
//! or ClusterLoadAssignment and compiled. Bad input must become an error
//! (a NACK), never a panic.
#![no_main]

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    match kind % 3 {
        0 => {
            if let Ok(l) = Listener::decode(rest) {
                let _ = proxy::listener::ListenerConfig::compile(&l, &Default::default());
                let _ = proxy::listener::ListenerConfig::dependencies(&l);
            }
        }
        1 => {
            if let Ok(c) = Cluster::decode(rest)
                && let Ok(spec) = proxy::cluster::ClusterSpec::compile(&c)
            {
                let _ = spec.instantiate(None, None);
            }
        }
        _ => {
            if let Ok(cla) = ClusterLoadAssignment::decode(rest) {
                let c = Cluster {
                    name: "c".into(),
                    cluster_discovery_type: Some(
                        envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(3),
                    ),
                    ..Default::default()
                };
                if let Ok(spec) = proxy::cluster::ClusterSpec::compile(&c) {
                    let _ = spec.instantiate(Some(&cla), None);
                }
            }
        }
    }
});
