//! Incremental EDS: one proxy's ClusterLoadAssignments rebuilt after a
//! change that only moved endpoints, without regenerating its listeners,
//! routes and clusters (Istio's incremental EDS push).
//!
//! The control plane decides when a change qualifies (see
//! `controlplane::incremental`); this module answers the two questions
//! that need the translator's own rules: what a named EDS cluster's
//! assignment is for a proxy, and whether an endpoint is one of the
//! proxy's own instances (whose inbound listeners would change with it).

use std::collections::{BTreeMap, HashMap};

use registry::Endpoint;

use crate::cluster::{cluster_policy, endpoint_tls_mode, load_assignment};
use crate::context::PushContext;
use crate::node::ProxyNode;

/// `outbound|<port>|<subset>|<host>` split into its parts.
pub fn parse_outbound_name(name: &str) -> Option<(u32, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    Some((port, subset, host))
}

/// Builds packed ClusterLoadAssignments for one push. An assignment
/// depends on the proxy only through the DestinationRule it sees (subset
/// labels, TLS mode), so it is built once per (cluster, rule) and shared
/// by every proxy of the push.
pub struct EndpointBuilder<'a> {
    ctx: &'a PushContext,
    built: HashMap<(String, String), Option<prost_types::Any>>,
}

impl<'a> EndpointBuilder<'a> {
    pub fn new(ctx: &'a PushContext) -> Self {
        Self {
            ctx,
            built: HashMap::new(),
        }
    }

    /// The registry the assignments come from.
    pub fn registry(&self) -> &'a registry::Registry {
        self.ctx.registry()
    }

    /// The assignment `generate` gives `node` for the outbound EDS cluster
    /// `cluster_name`, packed; `None` when no such cluster exists for it.
    pub fn packed(&mut self, node: &ProxyNode, cluster_name: &str) -> Option<prost_types::Any> {
        let ctx = self.ctx;
        let (port, subset, host) = parse_outbound_name(cluster_name)?;
        let svc = ctx.registry().service(host)?;
        let sp = svc.port(port)?;
        let dr = ctx.destination_rule(node, svc);
        let key = (
            cluster_name.to_owned(),
            dr.map(|(o, _)| o.key()).unwrap_or_default(),
        );
        if let Some(done) = self.built.get(&key) {
            return done.clone();
        }
        let rule = dr.map(|(_, d)| d);
        let subset = if subset.is_empty() {
            None
        } else {
            let Some(s) = rule.and_then(|d| d.subsets.iter().find(|s| s.name == subset)) else {
                self.built.insert(key, None);
                return None;
            };
            Some(s)
        };
        let none = BTreeMap::new();
        let labels = subset.map_or(&none, |s| &s.labels);
        let policy = cluster_policy(rule, subset, port);
        let tls_mode = endpoint_tls_mode(policy.as_ref());
        let cla = load_assignment(ctx, svc, sp, cluster_name, labels, tls_mode);
        let any = Some(xds::type_url::pack(&cla));
        self.built.insert(key, any.clone());
        any
    }
}

/// Whether the registry endpoint `ep` is an instance of `node`'s own
/// workload: by workload name and namespace, or by IP (loopback addresses
/// never identify a workload: every local-mode app has one).
pub fn serves_node(node: &ProxyNode, ep: &Endpoint) -> bool {
    let by_name = !node.workload_name.is_empty()
        && ep.workload_name == node.workload_name
        && ep.namespace == node.namespace;
    let by_ip = !ep.address.starts_with("127.")
        && (ep.address == node.ip || node.instance_ips.contains(&ep.address));
    by_name || by_ip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_outbound_names() {
        assert_eq!(
            parse_outbound_name("outbound|9080|v1|reviews.default.svc.cluster.local"),
            Some((9080, "v1", "reviews.default.svc.cluster.local"))
        );
        assert_eq!(
            parse_outbound_name("outbound|80||a.example.com"),
            Some((80, "", "a.example.com"))
        );
        assert_eq!(parse_outbound_name("inbound|80||"), None);
        assert_eq!(parse_outbound_name("outbound|x||h"), None);
        assert_eq!(parse_outbound_name("PassthroughCluster"), None);
    }
}
