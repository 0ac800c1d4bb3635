//! `trellis proxy-status`: which proxy has which configuration, from the
//! control plane's `GET /debug/syncz`.
//!
//! A cell per xDS type reads:
//! - `SYNCED`: the proxy ACKed what was last sent;
//! - `NOT SENT`: nothing of this type was sent;
//! - `STALE`: sent but not (yet) ACKed;
//! - `NACKed`: the proxy rejected the last push (the reasons are listed
//!   below the table).
//!
//! VERSION is the proxy's `ISTIO_VERSION` (or `TRELLIS_VERSION`) node
//! metadata; when neither is set, the version of the last CDS push.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::DEFAULT_CONTROL_PLANE;

/// `trellis proxy-status`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyStatusArgs {
    /// Show only this proxy (node id, workload name, `name.namespace` or a
    /// unique prefix).
    pub proxy: Option<String>,
    /// Control-plane monitoring address.
    #[arg(long, default_value = DEFAULT_CONTROL_PLANE)]
    pub control_plane: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = StatusFormat::Table)]
    pub output: StatusFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
}

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// One entry of `/debug/syncz`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncStatus {
    pub node_id: String,
    pub connected: bool,
    pub protocol: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub admin: Option<String>,
    pub types: BTreeMap<String, TypeStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TypeStatus {
    pub sent_version: String,
    pub sent_nonce: String,
    pub acked_version: String,
    pub last_nack: Option<Nack>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Nack {
    pub message: String,
    pub nonce: String,
    pub at: String,
}

impl SyncStatus {
    fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .get(key)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The workload name from metadata, else the pod part of the node id.
    pub fn workload_name(&self) -> Option<&str> {
        self.meta("WORKLOAD_NAME").or_else(|| {
            self.node_id
                .split('~')
                .nth(2)
                .and_then(|p| p.split('.').next())
                .filter(|s| !s.is_empty())
        })
    }

    pub fn namespace(&self) -> Option<&str> {
        self.meta("NAMESPACE").or_else(|| {
            self.node_id
                .split('~')
                .nth(2)
                .and_then(|p| p.split_once('.'))
                .map(|(_, ns)| ns)
        })
    }

    /// `workload.namespace` as istioctl shows it, else the node id.
    pub fn display_name(&self) -> String {
        match (self.workload_name(), self.namespace()) {
            (Some(w), Some(ns)) => format!("{w}.{ns}"),
            _ => self.node_id.clone(),
        }
    }

    pub fn version(&self) -> String {
        self.meta("ISTIO_VERSION")
            .or_else(|| self.meta("TRELLIS_VERSION"))
            .map(str::to_string)
            .or_else(|| {
                self.types
                    .get(CDS)
                    .map(|t| t.sent_version.clone())
                    .filter(|v| !v.is_empty())
            })
            .unwrap_or_else(|| "-".into())
    }
}

/// The sync state of one type.
pub fn type_state(t: Option<&TypeStatus>) -> &'static str {
    let Some(t) = t else { return "NOT SENT" };
    if t.sent_nonce.is_empty() && t.sent_version.is_empty() {
        return "NOT SENT";
    }
    if let Some(n) = &t.last_nack
        && (n.nonce == t.sent_nonce || t.acked_version != t.sent_version)
    {
        return "NACKed";
    }
    if t.acked_version == t.sent_version {
        "SYNCED"
    } else {
        "STALE"
    }
}

/// Fetches `/debug/syncz` from the control plane.
pub fn fetch_syncz(control_plane: &str) -> anyhow::Result<Vec<SyncStatus>> {
    let url = format!("{}/debug/syncz", control_plane.trim_end_matches('/'));
    let body = crate::http::get(&url)?;
    serde_json::from_slice(&body).map_err(|e| anyhow::anyhow!("{url}: bad JSON: {e}"))
}

/// Finds a proxy: exact node id, then exact workload name (or
/// `name.namespace`), then a unique prefix of either.
pub fn find_proxy<'a>(all: &'a [SyncStatus], query: &str) -> anyhow::Result<&'a SyncStatus> {
    if let Some(p) = all.iter().find(|p| p.node_id == query) {
        return Ok(p);
    }
    let exact: Vec<&SyncStatus> = all
        .iter()
        .filter(|p| p.workload_name() == Some(query) || p.display_name() == query)
        .collect();
    if let [one] = exact.as_slice() {
        return Ok(one);
    }
    let prefixed: Vec<&SyncStatus> = all
        .iter()
        .filter(|p| {
            p.node_id.starts_with(query)
                || p.display_name().starts_with(query)
                || p.workload_name().is_some_and(|w| w.starts_with(query))
        })
        .collect();
    match (exact.as_slice(), prefixed.as_slice()) {
        (_, [one]) => Ok(one),
        ([], []) => anyhow::bail!(
            "no proxy matches {query:?}; connected proxies: {}",
            all.iter()
                .map(SyncStatus::display_name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (many, _) if !many.is_empty() => anyhow::bail!(
            "{query:?} is ambiguous: {}",
            many.iter()
                .map(|p| p.node_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (_, many) => anyhow::bail!(
            "{query:?} is ambiguous: {}",
            many.iter()
                .map(|p| p.node_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Writes the status table (and NACK reasons) for `proxies`.
pub fn write_table(proxies: &[SyncStatus], out: &mut dyn Write) -> std::io::Result<()> {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "CDS".into(),
        "LDS".into(),
        "EDS".into(),
        "RDS".into(),
        "VERSION".into(),
    ]];
    let mut nacks = Vec::new();
    for p in proxies {
        let mut name = p.display_name();
        if !p.connected {
            name.push_str(" (disconnected)");
        }
        let mut row = vec![name];
        for (label, url) in [("CDS", CDS), ("LDS", LDS), ("EDS", EDS), ("RDS", RDS)] {
            let t = p.types.get(url);
            let state = type_state(t);
            if state == "NACKed"
                && let Some(n) = t.and_then(|t| t.last_nack.as_ref())
            {
                nacks.push(format!(
                    "{} {label} NACK (nonce {}{}): {}",
                    p.display_name(),
                    n.nonce,
                    if n.at.is_empty() {
                        String::new()
                    } else {
                        format!(", at {}", n.at)
                    },
                    n.message
                ));
            }
            row.push(state.to_string());
        }
        row.push(p.version());
        rows.push(row);
    }
    crate::proxy_config::write_rows(&rows, out)?;
    if !nacks.is_empty() {
        writeln!(out)?;
        for n in nacks {
            writeln!(out, "{n}")?;
        }
    }
    Ok(())
}

/// Runs `trellis proxy-status`. Exit code 0, or 1 when a shown proxy has
/// NACKed its configuration.
pub fn run(args: &ProxyStatusArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let mut all = fetch_syncz(&args.control_plane)?;
    all.sort_by_key(SyncStatus::display_name);
    let shown: Vec<SyncStatus> = match &args.proxy {
        Some(q) => vec![find_proxy(&all, q)?.clone()],
        None => all,
    };
    match args.output {
        StatusFormat::Table => write_table(&shown, out)?,
        StatusFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &shown)?;
            writeln!(out)?;
        }
    }
    let nacked = shown.iter().any(|p| {
        [CDS, LDS, EDS, RDS]
            .iter()
            .any(|u| type_state(p.types.get(*u)) == "NACKed")
    });
    Ok(i32::from(nacked))
}
