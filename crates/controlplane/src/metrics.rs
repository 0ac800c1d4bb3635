//! The control plane's Prometheus metrics on 15014 `/metrics`, under
//! Istio's names where the meaning is the same so existing istiod
//! dashboards and alerts work:
//!
//! - `pilot_xds{version}`: connected proxies;
//! - `pilot_xds_pushes{type}`: resources pushed, counted per type when a
//!   proxy's generated version of that type changes;
//! - `pilot_proxy_convergence_time` (histogram, seconds): from a push to the
//!   proxy ACKing every pushed type at that version;
//! - `pilot_total_xds_rejects{type}`: NACKs received (distinct nonces);
//! - `pilot_services`, `pilot_virt_services`: registry and config size;
//! - `pilot_total_rejected_configs`: configuration objects left out.
//!
//! Trellis adds `trellis_xds_generate_seconds` (time to translate one
//! proxy's configuration), `trellis_xds_proxies_unsynced`, and
//! `trellis_xds_proxy_pushes{kind}`: per proxy, `full` (everything
//! regenerated) or `endpoints` (incremental EDS).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xds::server::ProxySyncStatus;

/// Istio's buckets for `pilot_proxy_convergence_time`.
const CONVERGENCE_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
const GENERATE_BUCKETS: [f64; 9] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];

#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c;
            match self.bounds.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cum}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
                }
            }
        }
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {cum}", self.sum);
    }
}

#[derive(Debug)]
struct State {
    pushes: BTreeMap<String, u64>,
    convergence: Histogram,
    generate: Histogram,
    /// Node → when its last push went out and the versions it must ACK.
    pending: HashMap<String, (Instant, BTreeMap<String, String>)>,
    /// NACK nonces already counted, per node and type.
    nacks_seen: HashSet<(String, String, String)>,
    rejects: BTreeMap<String, u64>,
    proxy_pushes: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
pub struct CpMetrics {
    state: Mutex<State>,
}

impl Default for CpMetrics {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                pushes: BTreeMap::new(),
                convergence: Histogram::new(&CONVERGENCE_BUCKETS),
                generate: Histogram::new(&GENERATE_BUCKETS),
                pending: HashMap::new(),
                nacks_seen: HashSet::new(),
                rejects: BTreeMap::new(),
                proxy_pushes: BTreeMap::new(),
            }),
        }
    }
}

/// Istio's `type` label: `lds`, `cds`, `eds`, `rds`, `sds`.
fn type_label(type_url: &str) -> String {
    xds::type_url::short_name(type_url).to_ascii_lowercase()
}

/// Sizes of the current configuration, read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConfigSizes {
    pub services: usize,
    pub virtual_services: usize,
    pub rejected: usize,
}

impl CpMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One proxy got a push of `kind` (`full` or `endpoints`).
    pub fn proxy_pushed(&self, kind: &'static str) {
        *self.lock().proxy_pushes.entry(kind).or_default() += 1;
    }

    /// Pushes per kind so far.
    pub fn proxy_pushes(&self) -> BTreeMap<&'static str, u64> {
        self.lock().proxy_pushes.clone()
    }

    /// A proxy's configuration was generated in `took`; `changed` holds the
    /// types whose version changed, with the versions now to be ACKed.
    pub fn pushed(&self, node: &str, took: Duration, changed: BTreeMap<String, String>) {
        let mut s = self.lock();
        s.generate.observe(took.as_secs_f64());
        if changed.is_empty() {
            return;
        }
        for t in changed.keys() {
            *s.pushes.entry(type_label(t)).or_default() += 1;
        }
        let now = Instant::now();
        let entry = s
            .pending
            .entry(node.to_string())
            .or_insert((now, BTreeMap::new()));
        // A push on top of an unacknowledged one converges when both are in.
        entry.1.extend(changed);
    }

    /// Looks at every proxy's sync state: records convergence for proxies
    /// that ACKed what was pushed, and counts new NACKs.
    pub fn observe_status(&self, statuses: &[ProxySyncStatus]) {
        let mut s = self.lock();
        for st in statuses {
            for (t, ts) in &st.types {
                if let Some(n) = &ts.last_nack {
                    let key = (st.node_id.clone(), t.clone(), n.nonce.clone());
                    if s.nacks_seen.insert(key) {
                        *s.rejects.entry(type_label(t)).or_default() += 1;
                    }
                }
            }
            let done = s.pending.get(&st.node_id).is_some_and(|(_, want)| {
                want.iter().all(|(t, v)| {
                    v.is_empty() || st.types.get(t).is_some_and(|ts| &ts.acked_version == v)
                })
            });
            if done && let Some((since, _)) = s.pending.remove(&st.node_id) {
                s.convergence.observe(since.elapsed().as_secs_f64());
            }
        }
        if s.nacks_seen.len() > 100_000 {
            s.nacks_seen.clear();
        }
    }

    /// The exposition.
    pub fn render(&self, statuses: &[ProxySyncStatus], sizes: ConfigSizes) -> String {
        self.observe_status(statuses);
        let s = self.lock();
        let mut out = String::new();
        let connected = statuses.iter().filter(|p| p.connected).count();
        let _ = writeln!(
            out,
            "# HELP pilot_xds Number of endpoints connected to this pilot using XDS.\n# TYPE pilot_xds gauge\npilot_xds{{version=\"trellis\"}} {connected}"
        );
        let _ = writeln!(
            out,
            "# HELP pilot_xds_pushes Pilot build and send errors for lds, rds, cds and eds.\n# TYPE pilot_xds_pushes counter"
        );
        for (t, n) in &s.pushes {
            let _ = writeln!(out, "pilot_xds_pushes{{type=\"{t}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP pilot_total_xds_rejects Total number of XDS responses from pilot rejected by proxy.\n# TYPE pilot_total_xds_rejects counter"
        );
        for (t, n) in &s.rejects {
            let _ = writeln!(out, "pilot_total_xds_rejects{{type=\"{t}\"}} {n}");
        }
        s.convergence.render(
            &mut out,
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration.",
        );
        s.generate.render(
            &mut out,
            "trellis_xds_generate_seconds",
            "Time to translate one proxy's configuration.",
        );
        let _ = writeln!(
            out,
            "# HELP trellis_xds_proxy_pushes Pushes to one proxy: full regeneration or incremental endpoints.\n# TYPE trellis_xds_proxy_pushes counter"
        );
        for (kind, n) in &s.proxy_pushes {
            let _ = writeln!(out, "trellis_xds_proxy_pushes{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP trellis_xds_proxies_unsynced Connected proxies that have not ACKed their latest push.\n# TYPE trellis_xds_proxies_unsynced gauge\ntrellis_xds_proxies_unsynced {}",
            s.pending.len()
        );
        for (name, help, v) in [
            (
                "pilot_services",
                "Total services known to pilot.",
                sizes.services,
            ),
            (
                "pilot_virt_services",
                "Total virtual services known to pilot.",
                sizes.virtual_services,
            ),
            (
                "pilot_total_rejected_configs",
                "Configuration objects rejected (left out) by validation.",
                sizes.rejected,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds::client::AdsProtocol;
    use xds::server::TypeSyncStatus;

    fn status(node: &str, acked: &str) -> ProxySyncStatus {
        ProxySyncStatus {
            node_id: node.into(),
            connected: true,
            protocol: AdsProtocol::StateOfTheWorld,
            types: BTreeMap::from([(
                xds::type_url::LISTENER.to_string(),
                TypeSyncStatus {
                    sent_version: "v2".into(),
                    sent_nonce: "1".into(),
                    acked_version: acked.into(),
                    last_nack: None,
                },
            )]),
        }
    }

    #[test]
    fn convergence_is_observed_when_the_pushed_version_is_acked() {
        let m = CpMetrics::default();
        m.pushed(
            "a",
            Duration::from_millis(2),
            BTreeMap::from([(xds::type_url::LISTENER.to_string(), "v2".to_string())]),
        );
        let text = m.render(&[status("a", "v1")], ConfigSizes::default());
        assert!(
            text.contains("pilot_proxy_convergence_time_count 0"),
            "{text}"
        );
        assert!(text.contains("trellis_xds_proxies_unsynced 1"), "{text}");
        assert!(text.contains("pilot_xds_pushes{type=\"lds\"} 1"), "{text}");
        let text = m.render(&[status("a", "v2")], ConfigSizes::default());
        assert!(
            text.contains("pilot_proxy_convergence_time_count 1"),
            "{text}"
        );
        assert!(text.contains("trellis_xds_proxies_unsynced 0"), "{text}");
        assert!(text.contains("pilot_xds{version=\"trellis\"} 1"), "{text}");
    }
}
