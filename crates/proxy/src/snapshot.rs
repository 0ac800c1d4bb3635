//! The configuration every request reads: swapped atomically on each
//! accepted xDS update, never mutated in place.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use route::RouteTable;

use crate::cluster::Cluster;

#[derive(Debug, Default)]
pub struct Snapshot {
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Route tables received over RDS, by name.
    pub routes: HashMap<String, Arc<RouteTable>>,
}

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
