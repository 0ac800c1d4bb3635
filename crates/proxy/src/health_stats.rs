//! Proxy health stats for `/stats` and `/stats/prometheus`: the xDS
//! connection (Envoy's `control_plane.connected_state`), per-type NACK state
//! and resource counts, and certificate expiry (Envoy's
//! `server.days_until_first_cert_expiring`, plus the seconds, which alerts
//! on short-lived mesh certificates need).

use std::time::SystemTime;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret;

use crate::store::ConfigStore;

/// The ADS client's state, when the proxy has one.
pub type XdsStatus = tokio::sync::watch::Receiver<xds::client::ClientStatus>;

pub(crate) fn xds_stats(status: &XdsStatus, out: &mut Vec<(String, u64)>) {
    let s = status.borrow();
    out.push((
        "control_plane.connected_state".into(),
        u64::from(s.connected),
    ));
    out.push(("control_plane.streams".into(), s.streams));
    for (t, ts) in &s.types {
        let short = xds::type_url::short_name(t).to_ascii_lowercase();
        out.push((
            format!("trellis.xds.{short}.rejected"),
            u64::from(ts.last_nack.is_some()),
        ));
        out.push((
            format!("trellis.xds.{short}.resources"),
            ts.resource_count as u64,
        ));
    }
}

/// Seconds until the first certificate this proxy holds expires (0 when
/// one already has), `None` without certificates.
pub(crate) fn seconds_until_first_cert_expiring(store: &ConfigStore) -> Option<u64> {
    let now = SystemTime::now();
    store
        .with_state(|state| {
            let mut first: Option<SystemTime> = None;
            for secret in state.every_secret() {
                let Some(secret::Type::TlsCertificate(c)) = &secret.r#type else {
                    continue;
                };
                let Some(pem) = c.certificate_chain.as_ref().and_then(inline_text) else {
                    continue;
                };
                // The leaf: the first certificate of the chain.
                let Some(leaf) = identity::x509::certs_from_pem(&pem)
                    .ok()
                    .and_then(|c| c.into_iter().next())
                else {
                    continue;
                };
                if let Ok((_, not_after)) = identity::x509::validity(&leaf) {
                    first = Some(first.map_or(not_after, |f| f.min(not_after)));
                }
            }
            first
        })
        .flatten()
        .map(|t| t.duration_since(now).map_or(0, |d| d.as_secs()))
}

fn inline_text(ds: &envoy_types::pb::envoy::config::core::v3::DataSource) -> Option<String> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    match ds.specifier.as_ref()? {
        Specifier::InlineString(s) => Some(s.clone()),
        Specifier::InlineBytes(b) => String::from_utf8(b.clone()).ok(),
        Specifier::Filename(f) => std::fs::read_to_string(f).ok(),
        _ => None,
    }
}

pub(crate) fn cert_stats(store: &ConfigStore, out: &mut Vec<(String, u64)>) {
    if let Some(secs) = seconds_until_first_cert_expiring(store) {
        out.push((
            "server.days_until_first_cert_expiring".into(),
            secs / 86_400,
        ));
        out.push(("server.seconds_until_first_cert_expiring".into(), secs));
    }
}
