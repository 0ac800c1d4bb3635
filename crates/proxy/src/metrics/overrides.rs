//! `istio.stats` (`stats.PluginConfig`): whether a connection manager
//! records Istio's HTTP metrics, and the Telemetry API's per-metric
//! overrides — drop a metric, remove a label, add a label with a fixed
//! value.
//!
//! Without the filter a connection manager records no Istio metrics, as in
//! Istio. Overrides apply when the exposition is rendered; configs are
//! interned by value so that an identical config pushed again keeps its
//! series (two series with one label set would make Prometheus reject the
//! scrape).

use std::sync::{Arc, Mutex, OnceLock};

use envoy_types::pb::google::protobuf::{Struct, value::Kind};

/// One `metrics` entry: `name` is a family without `istio_`
/// (`requests_total`), empty for every family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricOverride {
    pub name: String,
    pub drop: bool,
    pub tags_to_remove: Vec<String>,
    /// Label → literal value, added or replaced.
    pub dimensions: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatsConfig {
    pub metrics: Vec<MetricOverride>,
}

impl StatsConfig {
    /// From the filter's `Struct`; `Err` is (field, message).
    pub fn from_struct(s: &Struct) -> Result<Arc<Self>, (String, String)> {
        let mut cfg = Self::default();
        for (key, v) in &s.fields {
            match key.as_str() {
                "metrics" => {
                    let Some(Kind::ListValue(list)) = &v.kind else {
                        return Err(("metrics".into(), "must be a list".into()));
                    };
                    for (i, m) in list.values.iter().enumerate() {
                        let Some(Kind::StructValue(m)) = &m.kind else {
                            return Err((format!("metrics[{i}]"), "must be an object".into()));
                        };
                        cfg.metrics
                            .push(metric(m).map_err(|(f, e)| (format!("metrics[{i}].{f}"), e))?);
                    }
                }
                // Istio's settings that do not change what Trellis records.
                "disable_host_header_fallback"
                | "reporter"
                | "tcp_reporting_duration"
                | "rotation_interval"
                | "graceful_deletion_interval" => {}
                _ => return Err((key.clone(), "unknown field".into())),
            }
        }
        Ok(intern(cfg))
    }

    /// True when `family` (e.g. `requests_total`) is dropped.
    pub fn drops(&self, family: &str) -> bool {
        self.metrics
            .iter()
            .any(|m| m.drop && (m.name.is_empty() || m.name == family))
    }

    /// True when every HTTP family is dropped: nothing to record.
    pub fn drops_all_http(&self) -> bool {
        super::HTTP_FAMILIES.iter().all(|f| self.drops(f))
    }

    /// Applies the label overrides for `family` to `labels`.
    pub fn apply(&self, family: &str, labels: &mut Vec<(String, String)>) {
        for m in self
            .metrics
            .iter()
            .filter(|m| m.name.is_empty() || m.name == family)
        {
            labels.retain(|(k, _)| !m.tags_to_remove.contains(k));
            for (k, v) in &m.dimensions {
                match labels.iter_mut().find(|(lk, _)| lk == k) {
                    Some(slot) => slot.1.clone_from(v),
                    None => labels.push((k.clone(), v.clone())),
                }
            }
        }
    }

    /// True when nothing is overridden (the common case: render as is).
    pub fn is_identity(&self) -> bool {
        self.metrics
            .iter()
            .all(|m| !m.drop && m.tags_to_remove.is_empty() && m.dimensions.is_empty())
    }
}

fn metric(m: &Struct) -> Result<MetricOverride, (String, String)> {
    let mut out = MetricOverride::default();
    let string = |k: &str, v: &envoy_types::pb::google::protobuf::Value| match &v.kind {
        Some(Kind::StringValue(s)) => Ok(s.clone()),
        _ => Err((k.to_string(), "must be a string".to_string())),
    };
    for (k, v) in &m.fields {
        match k.as_str() {
            "name" => out.name = string(k, v)?,
            "drop" => {
                out.drop = matches!(v.kind, Some(Kind::BoolValue(true)));
            }
            "tags_to_remove" => {
                let Some(Kind::ListValue(l)) = &v.kind else {
                    return Err((k.clone(), "must be a list".into()));
                };
                for (i, t) in l.values.iter().enumerate() {
                    out.tags_to_remove.push(string(&format!("{k}[{i}]"), t)?);
                }
            }
            "dimensions" => {
                let Some(Kind::StructValue(d)) = &v.kind else {
                    return Err((k.clone(), "must be an object".into()));
                };
                let mut dims: Vec<(String, String)> = d
                    .fields
                    .iter()
                    .map(|(dk, dv)| Ok((dk.clone(), string(&format!("{k}.{dk}"), dv)?)))
                    .collect::<Result<_, (String, String)>>()?;
                dims.sort();
                out.dimensions = dims;
            }
            "match" => {
                return Err((
                    k.clone(),
                    "metric match expressions are not supported".into(),
                ));
            }
            _ => return Err((k.clone(), "unknown field".into())),
        }
    }
    out.tags_to_remove.sort();
    Ok(out)
}

/// Configs seen so far; few distinct ones exist (one per direction and
/// Telemetry), so a linear scan is enough.
fn intern(cfg: StatsConfig) -> Arc<StatsConfig> {
    static SEEN: OnceLock<Mutex<Vec<Arc<StatsConfig>>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(found) = seen.iter().find(|c| ***c == cfg) {
        return Arc::clone(found);
    }
    // Bounded: configs that churn beyond this are simply not shared.
    if seen.len() < 256 {
        let cfg = Arc::new(cfg);
        seen.push(Arc::clone(&cfg));
        return cfg;
    }
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{ListValue, Value};

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    fn cfg(entries: Vec<Struct>) -> Struct {
        let mut c = Struct::default();
        c.fields.insert(
            "metrics".into(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: entries
                        .into_iter()
                        .map(|e| Value {
                            kind: Some(Kind::StructValue(e)),
                        })
                        .collect(),
                })),
            },
        );
        c
    }

    #[test]
    fn overrides_drop_remove_and_upsert() {
        let mut drop = Struct::default();
        drop.fields.insert("name".into(), s("request_bytes"));
        drop.fields.insert(
            "drop".into(),
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        );
        let mut tags = Struct::default();
        tags.fields.insert(
            "tags_to_remove".into(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![s("source_principal")],
                })),
            },
        );
        let mut dims = Struct::default();
        dims.fields.insert("lane".into(), s("canary"));
        dims.fields.insert("reporter".into(), s("client"));
        tags.fields.insert(
            "dimensions".into(),
            Value {
                kind: Some(Kind::StructValue(dims)),
            },
        );
        let c = StatsConfig::from_struct(&cfg(vec![drop, tags])).expect("valid");
        assert!(c.drops("request_bytes"));
        assert!(!c.drops("requests_total"));
        assert!(!c.drops_all_http());
        let mut labels = vec![
            ("reporter".to_string(), "source".to_string()),
            ("source_principal".to_string(), "x".to_string()),
        ];
        c.apply("requests_total", &mut labels);
        assert_eq!(
            labels,
            [
                ("reporter".to_string(), "client".to_string()),
                ("lane".to_string(), "canary".to_string())
            ]
        );
        // Equal configs are one value.
        let again = StatsConfig::from_struct(&cfg(vec![])).expect("valid");
        let again2 = StatsConfig::from_struct(&cfg(vec![])).expect("valid");
        assert!(Arc::ptr_eq(&again, &again2));
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let mut bad = Struct::default();
        bad.fields.insert("nmae".into(), s("x"));
        let err = StatsConfig::from_struct(&cfg(vec![bad])).expect_err("refused");
        assert_eq!(err.0, "metrics[0].nmae");
    }
}
