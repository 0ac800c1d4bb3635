//! `trellis proxy-config <type> <proxy>`: a proxy's configuration as
//! istioctl shows it, read from the proxy's admin `GET /config_dump`
//! (Envoy's JSON shape: `configs[]` of `envoy.admin.v3.*ConfigDump`; works
//! against Trellis proxies and stock Envoy; endpoints need
//! `/config_dump?include_eds`, which is what is fetched for them).
//!
//! The proxy is found through the control plane's `/debug/syncz` (node id,
//! workload name, `name.namespace`, or a unique prefix) unless `--admin`
//! gives its admin address.
//!
//! Endpoint STATUS comes from the EDS `health_status` (UNKNOWN counts as
//! HEALTHY, as Envoy routes to it); OUTLIER CHECK is `OK` because a config
//! dump does not carry outlier ejections. Secrets show certificate
//! details parsed from inline PEM/DER (best effort; Envoy redacts keys,
//! not certificates).

use std::io::Write;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::DEFAULT_CONTROL_PLANE;

/// `trellis proxy-config`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyConfigArgs {
    /// What to show.
    #[arg(value_enum)]
    pub resource: Resource,
    /// The proxy: node id, workload name, `name.namespace` or a unique prefix
    /// (optional with --admin).
    pub proxy: Option<String>,
    /// Control-plane monitoring address (to find the proxy's admin address).
    #[arg(long, default_value = DEFAULT_CONTROL_PLANE)]
    pub control_plane: String,
    /// The proxy's admin address (`host:port`); skips the control plane.
    #[arg(long)]
    pub admin: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ConfigFormat::Table)]
    pub output: ConfigFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
    Secrets,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigFormat {
    Table,
    Json,
    Yaml,
}

/// Runs `trellis proxy-config`; exit code 0.
pub fn run(args: &ProxyConfigArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let admin = match (&args.admin, &args.proxy) {
        (Some(a), _) => a.clone(),
        (None, Some(q)) => {
            let all = crate::status::fetch_syncz(&args.control_plane)?;
            let p = crate::status::find_proxy(&all, q)?;
            p.admin.clone().filter(|a| !a.is_empty()).with_context(|| {
                format!("proxy {} reports no admin address; use --admin", p.node_id)
            })?
        }
        (None, None) => bail!("name a proxy, or give its admin address with --admin"),
    };
    let base = if admin.starts_with("http://") {
        admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", admin.trim_end_matches('/'))
    };
    let eds = matches!(args.resource, Resource::Endpoints | Resource::All);
    let url = format!(
        "{base}/config_dump{}",
        if eds { "?include_eds" } else { "" }
    );
    let body = crate::http::get(&url)?;
    let dump: Value = serde_json::from_slice(&body).with_context(|| format!("{url}: bad JSON"))?;
    write_dump(&dump, args.resource, args.output, out)?;
    Ok(0)
}

/// Prints `resource` of a parsed config dump.
pub fn write_dump(
    dump: &Value,
    resource: Resource,
    format: ConfigFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let kinds: &[Resource] = match resource {
        Resource::All => &[
            Resource::Listeners,
            Resource::Routes,
            Resource::Clusters,
            Resource::Endpoints,
            Resource::Secrets,
        ],
        _ => std::slice::from_ref(&resource),
    };
    match format {
        ConfigFormat::Table => {
            for (i, k) in kinds.iter().enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                write_rows(&table(dump, *k), out)?;
            }
        }
        ConfigFormat::Json | ConfigFormat::Yaml => {
            let value = if kinds.len() == 1 {
                Value::Array(items(dump, kinds[0]))
            } else {
                let mut m = serde_json::Map::new();
                for k in kinds {
                    m.insert(
                        format!("{k:?}").to_lowercase(),
                        Value::Array(items(dump, *k)),
                    );
                }
                Value::Object(m)
            };
            if format == ConfigFormat::Json {
                serde_json::to_writer_pretty(&mut *out, &value)?;
                writeln!(out)?;
            } else {
                let text = serde_saphyr::to_string(&value).map_err(|e| anyhow::anyhow!("{e}"))?;
                write!(out, "{text}")?;
            }
        }
    }
    Ok(())
}

/// The `configs[]` entry whose `@type` is `envoy.admin.v3.<suffix>`.
fn section<'a>(dump: &'a Value, suffix: &str) -> Option<&'a Value> {
    dump.get("configs")?.as_array()?.iter().find(|c| {
        c.get("@type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.rsplit('.').next() == Some(suffix))
    })
}

fn arr<'a>(v: Option<&'a Value>, key: &str) -> impl Iterator<Item = &'a Value> {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

fn num(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64().or_else(|| cur.as_str()?.parse().ok())
}

/// `(item, state)` pairs of one resource type, state being `ACTIVE`,
/// `WARMING`, `STATIC`.
fn entries(dump: &Value, resource: Resource) -> Vec<(Value, &'static str)> {
    let mut out = Vec::new();
    match resource {
        Resource::Listeners => {
            let sec = section(dump, "ListenersConfigDump");
            for l in arr(sec, "static_listeners") {
                if let Some(x) = l.get("listener") {
                    out.push((x.clone(), "STATIC"));
                }
            }
            for l in arr(sec, "dynamic_listeners") {
                if let Some(x) = l.pointer("/active_state/listener") {
                    out.push((x.clone(), "ACTIVE"));
                } else if let Some(x) = l.pointer("/warming_state/listener") {
                    out.push((x.clone(), "WARMING"));
                }
            }
        }
        Resource::Routes => {
            let sec = section(dump, "RoutesConfigDump");
            for r in arr(sec, "static_route_configs") {
                if let Some(x) = r.get("route_config") {
                    out.push((x.clone(), "STATIC"));
                }
            }
            for r in arr(sec, "dynamic_route_configs") {
                if let Some(x) = r.get("route_config") {
                    out.push((x.clone(), "ACTIVE"));
                }
            }
        }
        Resource::Clusters => {
            let sec = section(dump, "ClustersConfigDump");
            for (key, state) in [
                ("static_clusters", "STATIC"),
                ("dynamic_active_clusters", "ACTIVE"),
                ("dynamic_warming_clusters", "WARMING"),
            ] {
                for c in arr(sec, key) {
                    if let Some(x) = c.get("cluster") {
                        out.push((x.clone(), state));
                    }
                }
            }
        }
        Resource::Endpoints => {
            let sec = section(dump, "EndpointsConfigDump");
            for (key, state) in [
                ("static_endpoint_configs", "STATIC"),
                ("dynamic_endpoint_configs", "ACTIVE"),
            ] {
                for c in arr(sec, key) {
                    if let Some(x) = c.get("endpoint_config") {
                        out.push((x.clone(), state));
                    }
                }
            }
        }
        Resource::Secrets => {
            let sec = section(dump, "SecretsConfigDump");
            for (key, state) in [
                ("static_secrets", "STATIC"),
                ("dynamic_active_secrets", "ACTIVE"),
                ("dynamic_warming_secrets", "WARMING"),
            ] {
                for c in arr(sec, key) {
                    let mut x = c.get("secret").cloned().unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut x
                        && !m.contains_key("name")
                    {
                        m.insert("name".into(), c.get("name").cloned().unwrap_or(Value::Null));
                    }
                    out.push((x, state));
                }
            }
        }
        Resource::All => {}
    }
    out
}

fn items(dump: &Value, resource: Resource) -> Vec<Value> {
    entries(dump, resource)
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

/// Writes left-aligned columns separated by at least two spaces.
pub fn write_rows(rows: &[Vec<String>], out: &mut dyn Write) -> std::io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn header(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| (*c).to_string()).collect()
}

/// The table rows (header first) of one resource type.
pub fn table(dump: &Value, resource: Resource) -> Vec<Vec<String>> {
    match resource {
        Resource::Listeners => listener_rows(dump),
        Resource::Routes => route_rows(dump),
        Resource::Clusters => cluster_rows(dump),
        Resource::Endpoints => endpoint_rows(dump),
        Resource::Secrets => secret_rows(dump),
        Resource::All => Vec::new(),
    }
}

fn listener_rows(dump: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![header(&["ADDRESSES", "PORT", "MATCH", "DESTINATION"])];
    let mut body = Vec::new();
    for (l, _) in entries(dump, Resource::Listeners) {
        let addr = s(&l, &["address", "socket_address", "address"]).to_string();
        let port = num(&l, &["address", "socket_address", "port_value"])
            .map_or_else(|| "-".to_string(), |p| p.to_string());
        let (addr, port) = if addr.is_empty() {
            let pipe = s(&l, &["address", "pipe", "path"]);
            let internal = s(
                &l,
                &["address", "envoy_internal_address", "server_listener_name"],
            );
            (
                if pipe.is_empty() {
                    internal.to_string()
                } else {
                    pipe.to_string()
                },
                "-".to_string(),
            )
        } else {
            (addr, port)
        };
        let mut chains: Vec<&Value> = arr(Some(&l), "filter_chains").collect();
        if let Some(d) = l.get("default_filter_chain") {
            chains.push(d);
        }
        if chains.is_empty() {
            body.push(vec![addr.clone(), port.clone(), "ALL".into(), "-".into()]);
        }
        for fc in chains {
            body.push(vec![
                addr.clone(),
                port.clone(),
                chain_match(fc.get("filter_chain_match")),
                chain_destination(fc),
            ]);
        }
    }
    body.sort();
    rows.extend(body);
    rows
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn chain_match(m: Option<&Value>) -> String {
    let Some(m) = m else { return "ALL".into() };
    let mut parts = Vec::new();
    if let Some(p) = num(m, &["destination_port"]) {
        parts.push(format!("Port: {p}"));
    }
    let sni = strings(m.get("server_names"));
    if !sni.is_empty() {
        parts.push(format!("SNI: {}", sni.join(",")));
    }
    let t = s(m, &["transport_protocol"]);
    if !t.is_empty() {
        parts.push(format!("Trans: {t}"));
    }
    let alpn = strings(m.get("application_protocols"));
    if !alpn.is_empty() {
        parts.push(format!("App: {}", alpn.join(",")));
    }
    let ranges: Vec<String> = arr(Some(m), "prefix_ranges")
        .map(|r| {
            format!(
                "{}/{}",
                s(r, &["address_prefix"]),
                num(r, &["prefix_len"]).unwrap_or(0)
            )
        })
        .collect();
    if !ranges.is_empty() {
        parts.push(format!("Addr: {}", ranges.join(",")));
    }
    if parts.is_empty() {
        "ALL".into()
    } else {
        parts.join("; ")
    }
}

fn chain_destination(fc: &Value) -> String {
    for f in arr(Some(fc), "filters") {
        let Some(tc) = f.get("typed_config") else {
            continue;
        };
        let ty = s(tc, &["@type"]);
        if ty.ends_with("HttpConnectionManager") {
            let rds = s(tc, &["rds", "route_config_name"]);
            if !rds.is_empty() {
                return format!("Route: {rds}");
            }
            if let Some(rc) = tc.get("route_config") {
                let name = s(rc, &["name"]);
                return if name.is_empty() {
                    "Inline Route".into()
                } else {
                    format!("Inline Route: {name}")
                };
            }
            return "HTTP".into();
        }
        if ty.ends_with("TcpProxy") {
            let c = s(tc, &["cluster"]);
            if !c.is_empty() {
                return format!("Cluster: {c}");
            }
            let w: Vec<&str> = arr(tc.get("weighted_clusters"), "clusters")
                .map(|c| s(c, &["name"]))
                .collect();
            return format!("Clusters: {}", w.join(","));
        }
    }
    "Non-HTTP/Non-TCP".into()
}

/// `name.namespace` of the Istio object in `filter_metadata.istio.config`
/// (`/apis/networking.istio.io/v1/namespaces/<ns>/virtual-service/<name>`).
fn istio_config(v: &Value) -> String {
    let c = s(v, &["metadata", "filter_metadata", "istio", "config"]);
    let parts: Vec<&str> = c.split('/').collect();
    match parts.iter().position(|p| *p == "namespaces") {
        Some(i) if parts.len() > i + 3 => format!("{}.{}", parts[i + 3], parts[i + 1]),
        _ if !c.is_empty() => c.to_string(),
        _ => "-".into(),
    }
}

fn route_match(r: &Value) -> String {
    let Some(m) = r.get("match") else {
        return "-".into();
    };
    for (key, fmt) in [
        ("path", "exact"),
        ("prefix", "prefix"),
        ("path_separated_prefix", "prefix"),
    ] {
        if let Some(p) = m.get(key).and_then(Value::as_str) {
            return if fmt == "exact" {
                p.to_string()
            } else {
                format!("{p}*")
            };
        }
    }
    if let Some(re) = m.pointer("/safe_regex/regex").and_then(Value::as_str) {
        return format!("{re} (regex)");
    }
    if m.get("connect_matcher").is_some() {
        return "CONNECT".into();
    }
    "-".into()
}

fn route_rows(dump: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "NAME",
        "VHOST NAME",
        "DOMAINS",
        "MATCH",
        "VIRTUAL SERVICE",
    ])];
    let mut body = Vec::new();
    for (rc, _) in entries(dump, Resource::Routes) {
        let name = s(&rc, &["name"]).to_string();
        for vh in arr(Some(&rc), "virtual_hosts") {
            let vname = s(vh, &["name"]).to_string();
            let domains = strings(vh.get("domains"));
            let shown = match domains.len() {
                0 => "-".to_string(),
                1 | 2 => domains.join(", "),
                n => format!("{} + {} more...", domains[0], n - 1),
            };
            let routes: Vec<&Value> = arr(Some(vh), "routes").collect();
            if routes.is_empty() {
                body.push(vec![
                    name.clone(),
                    vname.clone(),
                    shown.clone(),
                    "-".into(),
                    "-".into(),
                ]);
            }
            for r in routes {
                body.push(vec![
                    name.clone(),
                    vname.clone(),
                    shown.clone(),
                    route_match(r),
                    istio_config(r),
                ]);
            }
        }
    }
    body.sort();
    rows.extend(body);
    rows
}

/// `outbound|9080|v1|reviews.default.svc.cluster.local` →
/// (fqdn, port, subset, direction).
pub fn parse_cluster_name(name: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = name.split('|').collect();
    if parts.len() == 4 && matches!(parts[0], "outbound" | "inbound") {
        let dash = |x: &str| {
            if x.is_empty() {
                "-".to_string()
            } else {
                x.to_string()
            }
        };
        (
            dash(parts[3]),
            dash(parts[1]),
            dash(parts[2]),
            parts[0].to_string(),
        )
    } else {
        (name.to_string(), "-".into(), "-".into(), "-".into())
    }
}

fn cluster_rows(dump: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "SERVICE FQDN",
        "PORT",
        "SUBSET",
        "DIRECTION",
        "TYPE",
        "DESTINATION RULE",
    ])];
    let mut body = Vec::new();
    for (c, _) in entries(dump, Resource::Clusters) {
        let (fqdn, port, subset, dir) = parse_cluster_name(s(&c, &["name"]));
        let mut ty = s(&c, &["type"]).to_string();
        if ty.is_empty() {
            ty = s(&c, &["cluster_type", "name"]).to_string();
        }
        if ty.is_empty() {
            ty = "STATIC".into();
        }
        body.push(vec![fqdn, port, subset, dir, ty, istio_config(&c)]);
    }
    body.sort();
    rows.extend(body);
    rows
}

fn endpoint_rows(dump: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![header(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"])];
    let mut body = Vec::new();
    for (cla, _) in entries(dump, Resource::Endpoints) {
        let cluster = s(&cla, &["cluster_name"]).to_string();
        for group in arr(Some(&cla), "endpoints") {
            for lb in arr(Some(group), "lb_endpoints") {
                let sa = lb.pointer("/endpoint/address/socket_address");
                let addr = match sa {
                    Some(sa) => format!(
                        "{}:{}",
                        s(sa, &["address"]),
                        num(sa, &["port_value"]).unwrap_or(0)
                    ),
                    None => {
                        let pipe = lb
                            .pointer("/endpoint/address/pipe/path")
                            .and_then(Value::as_str)
                            .unwrap_or("-");
                        format!("unix://{pipe}")
                    }
                };
                let status = match s(lb, &["health_status"]) {
                    "" | "UNKNOWN" | "HEALTHY" => "HEALTHY",
                    other => other,
                };
                body.push(vec![addr, status.to_string(), "OK".into(), cluster.clone()]);
            }
        }
    }
    body.sort();
    rows.extend(body);
    rows
}

fn secret_rows(dump: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "RESOURCE NAME",
        "TYPE",
        "STATUS",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "NOT BEFORE",
    ])];
    let mut body = Vec::new();
    for (sec, state) in entries(dump, Resource::Secrets) {
        let name = s(&sec, &["name"]).to_string();
        let (ty, data) = if let Some(tc) = sec.get("tls_certificate") {
            ("Cert Chain", tc.get("certificate_chain"))
        } else if let Some(vc) = sec.get("validation_context") {
            ("CA", vc.get("trusted_ca"))
        } else {
            ("-", None)
        };
        let cert = data.and_then(crate::x509::from_data_source);
        let (valid, serial, after, before) = match cert {
            Some(c) => (
                c.valid_now().to_string(),
                c.serial_hex(),
                c.not_after_rfc3339(),
                c.not_before_rfc3339(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let status = if state == "WARMING" {
            "WARMING"
        } else {
            "ACTIVE"
        };
        body.push(vec![
            name,
            ty.into(),
            status.into(),
            valid,
            serial,
            after,
            before,
        ]);
    }
    body.sort();
    rows.extend(body);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        assert_eq!(
            parse_cluster_name("outbound|9080|v1|reviews.default.svc.cluster.local"),
            (
                "reviews.default.svc.cluster.local".to_string(),
                "9080".to_string(),
                "v1".to_string(),
                "outbound".to_string()
            )
        );
        assert_eq!(parse_cluster_name("inbound|9080||").0, "-");
        assert_eq!(parse_cluster_name("BlackHoleCluster").3, "-");
    }
}
