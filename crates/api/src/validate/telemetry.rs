//! `telemetry.istio.io` Telemetry (Istio: `ValidateTelemetry`), plus what
//! Trellis cannot apply (non-literal tag expressions, filter expressions
//! outside the supported subset), each at its field.

use super::{Report, shared};
use crate::telemetry::{TagOperation, Telemetry, literal_tag_value};

pub(crate) fn validate_telemetry(t: &Telemetry, r: &mut Report) {
    if let Some(sel) = &t.selector {
        shared::selector(
            r,
            "spec.selector.matchLabels",
            &sel.match_labels,
            "Telemetry",
        );
    }
    if usize::from(t.selector.is_some())
        + usize::from(t.target_ref.is_some())
        + usize::from(!t.target_refs.is_empty())
        > 1
    {
        r.err(
            "spec",
            "only one of selector, targetRef and targetRefs may be set",
        );
    }
    for (i, tr) in t.tracing.iter().enumerate() {
        let path = format!("spec.tracing[{i}]");
        providers(r, &path, tr.providers.iter().map(|p| p.name.as_str()));
        if let Some(p) = tr.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            r.err(
                format!("{path}.randomSamplingPercentage"),
                format!("must be in range [0.0, 100.0], got {p}"),
            );
        }
        for (name, tag) in &tr.custom_tags {
            let tp = format!("{path}.customTags.{name}");
            let kinds = usize::from(tag.literal.is_some())
                + usize::from(tag.environment.is_some())
                + usize::from(tag.header.is_some());
            if kinds != 1 {
                r.err(
                    &tp,
                    "exactly one of literal, environment or header must be set",
                );
            }
            if let Some(e) = &tag.environment
                && e.name.is_empty()
            {
                r.err(format!("{tp}.environment.name"), "must not be empty");
            }
            if let Some(h) = &tag.header
                && h.name.is_empty()
            {
                r.err(format!("{tp}.header.name"), "must not be empty");
            }
        }
    }
    for (i, m) in t.metrics.iter().enumerate() {
        let path = format!("spec.metrics[{i}]");
        providers(r, &path, m.providers.iter().map(|p| p.name.as_str()));
        for (j, o) in m.overrides.iter().enumerate() {
            let op = format!("{path}.overrides[{j}]");
            if let Some(sel) = &o.match_ {
                if sel.metric.is_some() && sel.custom_metric.is_some() {
                    r.err(
                        format!("{op}.match"),
                        "only one of metric or customMetric may be set",
                    );
                }
                if sel.custom_metric.as_deref().is_some_and(str::is_empty) {
                    r.err(format!("{op}.match.customMetric"), "must not be empty");
                }
            }
            for (tag, ov) in &o.tag_overrides {
                let tp = format!("{op}.tagOverrides.{tag}");
                if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    r.err(&tp, format!("tag name {tag:?} must be [a-zA-Z0-9_]+"));
                }
                match (ov.operation, ov.value.as_deref()) {
                    (TagOperation::Remove, Some(_)) => {
                        r.err(format!("{tp}.value"), "must not be set when the operation is REMOVE")
                    }
                    (TagOperation::Upsert, None | Some("")) => {
                        r.err(format!("{tp}.value"), "must be set when the operation is UPSERT")
                    }
                    (TagOperation::Upsert, Some(v)) if literal_tag_value(v).is_none() => r.err(
                        format!("{tp}.value"),
                        format!(
                            "expression {v:?} is not supported: Trellis takes a quoted string literal, e.g. \"'canary'\""
                        ),
                    ),
                    _ => {}
                }
            }
        }
    }
    for (i, a) in t.access_logging.iter().enumerate() {
        let path = format!("spec.accessLogging[{i}]");
        providers(r, &path, a.providers.iter().map(|p| p.name.as_str()));
        if let Some(f) = &a.filter
            && let Err(m) = expr::parse(&f.expression)
        {
            r.err(format!("{path}.filter.expression"), m.to_string());
        }
    }
}

fn providers<'a>(r: &mut Report, path: &str, names: impl Iterator<Item = &'a str>) {
    for (j, n) in names.enumerate() {
        if n.is_empty() {
            r.err(format!("{path}.providers[{j}].name"), "must not be empty");
        }
    }
}
