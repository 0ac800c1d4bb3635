//! What a configuration change means for the proxies: nothing, endpoints
//! only, or everything.
//!
//! An endpoint that moves (a ServiceEntry's inline endpoint, a
//! WorkloadEntry) changes ClusterLoadAssignments and nothing else, unless
//! something else in the translation reads endpoints. Those readers are
//! checked here, conservatively: when in doubt the change is a full push,
//! which is always correct, only slower.
//! - DNS clusters carry their endpoints inline (CDS);
//! - passthrough services take their mTLS mode from their endpoints' sidecars;
//! - cluster SANs list the service accounts of the endpoints;
//! - a proxy's inbound listeners follow the endpoints that are its own
//!   instances (checked per proxy by the caller, with
//!   [`pilot::endpoints::serves_node`]).

use std::collections::BTreeSet;

use api::{Object, Spec};
use registry::{Registry, Resolution};

/// The kind of push a change needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing a proxy receives changed.
    Nothing,
    /// Only the endpoints of these (host, service port) changed.
    Endpoints(BTreeSet<(String, u32)>),
    /// Regenerate everything for every proxy.
    Full,
}

/// Compares the configuration of the last push with the next one.
pub(crate) fn classify(
    old_objects: &[Object],
    old: &Registry,
    new_objects: &[Object],
    new: &Registry,
) -> Change {
    if !same_but_endpoints(old_objects, new_objects)
        || old.services != new.services
        || old.credentials != new.credentials
        || old.local_tcp_outbound != new.local_tcp_outbound
    {
        return Change::Full;
    }
    let changed: BTreeSet<(String, u32)> = old
        .endpoints
        .keys()
        .chain(new.endpoints.keys())
        .filter(|k| old.endpoints.get(*k) != new.endpoints.get(*k))
        .cloned()
        .collect();
    if changed.is_empty() {
        return Change::Nothing;
    }
    let hosts: BTreeSet<&str> = changed.iter().map(|(h, _)| h.as_str()).collect();
    for host in hosts {
        let Some(svc) = new.service(host) else {
            return Change::Full;
        };
        if svc.resolution != Resolution::Static || identities(old, host) != identities(new, host) {
            return Change::Full;
        }
    }
    Change::Endpoints(changed)
}

/// The objects, equal once ServiceEntry endpoints and WorkloadEntries
/// (which only feed the registry's endpoints) are set aside. Other objects
/// must keep their order, which stands for creation time (precedence);
/// ServiceEntries are compared by name, since rewriting one's file moves it
/// to the end (the registry comparison catches any precedence effect).
fn same_but_endpoints(a: &[Object], b: &[Object]) -> bool {
    fn others(objects: &[Object]) -> impl Iterator<Item = &Object> {
        objects
            .iter()
            .filter(|o| !matches!(o.spec, Spec::WorkloadEntry(_) | Spec::ServiceEntry(_)))
    }
    fn service_entries(objects: &[Object]) -> Vec<Object> {
        let mut out: Vec<Object> = objects
            .iter()
            .filter(|o| matches!(o.spec, Spec::ServiceEntry(_)))
            .cloned()
            .map(|mut o| {
                if let Spec::ServiceEntry(se) = &mut o.spec {
                    se.endpoints.clear();
                }
                o
            })
            .collect();
        out.sort_by(|x, y| (x.namespace(), x.name()).cmp(&(y.namespace(), y.name())));
        out
    }
    others(a).eq(others(b)) && service_entries(a) == service_entries(b)
}

/// The (namespace, service account) pairs behind `host`, which become the
/// SANs its clusters verify.
fn identities<'a>(registry: &'a Registry, host: &str) -> BTreeSet<(&'a str, &'a str)> {
    registry
        .endpoints
        .range((host.to_owned(), 0)..=(host.to_owned(), u32::MAX))
        .flat_map(|(_, eps)| eps)
        .map(|e| (e.namespace.as_str(), e.service_account.as_str()))
        .collect()
}
