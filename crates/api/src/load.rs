//! Loading Istio YAML: multi-document files, `kind: List`, typed specs.
//!
//! [`parse_documents`] never fails as a whole and never panics: every
//! object that parses is returned, every one that does not becomes a
//! [`LoadError`] naming the file, document line, object and field path.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::object::{Metadata, Object, Spec};

/// An object (or document) that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// 1-based line where the failing document starts.
    pub line: usize,
    /// Kind of the object, when known.
    pub kind: Option<String>,
    /// `namespace/name` of the object, when known.
    pub object: Option<String>,
    /// Field path (`spec.http[0].route[0].destination.hosst`), when known.
    pub path: Option<String>,
    pub message: String,
}

impl LoadError {
    pub(crate) fn new(origin: &str, line: usize, message: impl Into<String>) -> Self {
        Self {
            origin: origin.to_string(),
            line,
            kind: None,
            object: None,
            path: None,
            message: message.into(),
        }
    }

    pub(crate) fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.origin, self.line)?;
        if let Some(kind) = &self.kind {
            write!(f, " {kind}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " {object}")?;
        }
        if self.kind.is_some() || self.object.is_some() {
            f.write_str(":")?;
        }
        if let Some(path) = &self.path {
            write!(f, " {path}:")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for LoadError {}

/// API versions accepted for `networking.istio.io` kinds.
pub const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
/// API versions accepted for `security.istio.io` kinds.
pub const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// API versions accepted for `telemetry.istio.io` kinds.
pub const TELEMETRY_VERSIONS: &[&str] = &["v1", "v1alpha1"];
/// API versions accepted for `extensions.istio.io` kinds.
pub const EXTENSIONS_VERSIONS: &[&str] = &["v1alpha1"];

/// True when `text` has nothing but blank lines and comments.
pub(crate) fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    let marker = line.starts_with("---") || line.starts_with("...");
    marker
        && line[3..]
            .chars()
            .next()
            .is_none_or(|c| c.is_whitespace() || c == '#')
}

/// Splits a YAML stream into documents: `(first line, text)`.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line) {
            docs.push((start_line, &text[start..offset]));
            // Content after `--- ` on the same line belongs to the next doc;
            // keep it by starting the next document after the marker.
            start = offset + 3;
            start_line = i + 1;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start.min(text.len())..]));
    docs
}

/// Parses YAML text (one or more `---` separated documents) into objects.
/// `origin` names the source (usually the file path) in objects and errors.
pub fn parse_documents(text: &str, origin: &str) -> (Vec<Object>, Vec<LoadError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (line, doc) in split_documents(text) {
        if is_blank(doc) {
            continue;
        }
        let parsed = std::panic::catch_unwind(|| serde_saphyr::from_str::<Value>(doc));
        match parsed {
            Ok(Ok(Value::Null)) => {}
            Ok(Ok(value)) => load_value(value, origin, line, &mut objects, &mut errors),
            Ok(Err(e)) => errors.push(LoadError::new(origin, line, format!("invalid YAML: {e}"))),
            Err(_) => errors.push(LoadError::new(origin, line, "invalid YAML: parser failure")),
        }
    }
    (objects, errors)
}

/// Reads and parses a file; the path is the origin.
pub fn load_file(path: &Path) -> (Vec<Object>, Vec<LoadError>) {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_documents(&text, &origin),
        Err(e) => (
            Vec::new(),
            vec![LoadError::new(&origin, 0, format!("cannot read: {e}"))],
        ),
    }
}

/// How a (group, kind) is handled.
enum KindClass {
    Typed(&'static [&'static str]),
    Loose(&'static [&'static str]),
    OtherIstio,
    Unsupported,
}

fn classify(group: &str, kind: &str) -> KindClass {
    match (group, kind) {
        (
            "networking.istio.io",
            "VirtualService" | "DestinationRule" | "Gateway" | "ServiceEntry" | "WorkloadEntry"
            | "WorkloadGroup" | "Sidecar",
        ) => KindClass::Typed(NETWORKING_VERSIONS),
        (
            "security.istio.io",
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication",
        ) => KindClass::Typed(SECURITY_VERSIONS),
        ("telemetry.istio.io", "Telemetry") => KindClass::Typed(TELEMETRY_VERSIONS),
        ("extensions.istio.io", "WasmPlugin") => KindClass::Loose(EXTENSIONS_VERSIONS),
        (g, _) if g == "istio.io" || g.ends_with(".istio.io") => KindClass::OtherIstio,
        _ => KindClass::Unsupported,
    }
}

fn load_value(
    value: Value,
    origin: &str,
    line: usize,
    objects: &mut Vec<Object>,
    errors: &mut Vec<LoadError>,
) {
    let Value::Object(mut doc) = value else {
        errors.push(LoadError::new(origin, line, "document is not a mapping"));
        return;
    };
    let kind = match doc.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => {
            errors
                .push(LoadError::new(origin, line, "missing or invalid `kind`").with_path("kind"));
            return;
        }
    };
    let api_version = match doc.get("apiVersion") {
        Some(Value::String(v)) if !v.is_empty() => v.clone(),
        _ => {
            let mut e = LoadError::new(origin, line, "missing or invalid `apiVersion`")
                .with_path("apiVersion");
            e.kind = Some(kind);
            errors.push(e);
            return;
        }
    };
    if kind == "List" {
        match doc.remove("items") {
            Some(Value::Array(items)) => {
                for item in items {
                    load_value(item, origin, line, objects, errors);
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => errors
                .push(LoadError::new(origin, line, "`items` must be a list").with_path("items")),
        }
        return;
    }
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let class = classify(group, &kind);
    let fail = |path: Option<String>, message: String, meta: Option<&Metadata>| {
        let mut e = LoadError::new(origin, line, message);
        e.kind = Some(kind.clone());
        e.object = meta.map(|m| format!("{}/{}", m.namespace, m.name));
        e.path = path;
        e
    };

    let metadata = match parse_metadata(doc.get("metadata")) {
        Ok(m) => m,
        Err((path, msg)) => {
            errors.push(fail(Some(path), msg, None));
            return;
        }
    };
    if matches!(class, KindClass::Unsupported) {
        objects.push(Object {
            api_version,
            kind,
            metadata,
            origin: origin.to_string(),
            spec: Spec::Unsupported(Value::Object(doc)),
        });
        return;
    }
    if metadata.name.is_empty() {
        errors.push(fail(
            Some("metadata.name".into()),
            "name is required".into(),
            Some(&metadata),
        ));
        return;
    }
    if let KindClass::Typed(versions) | KindClass::Loose(versions) = class
        && !versions.contains(&version)
    {
        let msg = format!(
            "unsupported apiVersion {api_version:?} for {kind}; expected {group}/ one of {}",
            versions.join(", ")
        );
        errors.push(fail(Some("apiVersion".into()), msg, Some(&metadata)));
        return;
    }
    if let KindClass::Typed(_) = class
        && let Some(extra) = doc.keys().find(|k| {
            !matches!(
                k.as_str(),
                "apiVersion" | "kind" | "metadata" | "spec" | "status"
            )
        })
    {
        errors.push(fail(
            Some(extra.clone()),
            format!("unknown field `{extra}`"),
            Some(&metadata),
        ));
        return;
    }
    let raw_spec = match doc.remove("spec") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            errors.push(fail(
                Some("spec".into()),
                "spec must be a mapping".into(),
                Some(&metadata),
            ));
            return;
        }
    };
    let spec = match class {
        KindClass::Typed(_) => match typed_spec(&kind, &raw_spec) {
            Ok(spec) => spec,
            Err((path, msg)) => {
                errors.push(fail(Some(path), msg, Some(&metadata)));
                return;
            }
        },
        KindClass::Loose(_) => Spec::WasmPlugin(raw_spec),
        KindClass::OtherIstio | KindClass::Unsupported => Spec::Other(raw_spec),
    };
    objects.push(Object {
        api_version,
        kind,
        metadata,
        origin: origin.to_string(),
        spec,
    });
}

fn spec_path(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." {
        "spec".to_string()
    } else {
        format!("spec.{s}")
    }
}

fn typed<T: DeserializeOwned>(raw: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(raw).map_err(|e| (spec_path(e.path()), e.inner().to_string()))
}

fn typed_spec(kind: &str, raw: &Value) -> Result<Spec, (String, String)> {
    Ok(match kind {
        "VirtualService" => Spec::VirtualService(typed(raw)?),
        "DestinationRule" => Spec::DestinationRule(typed(raw)?),
        "Gateway" => Spec::Gateway(typed(raw)?),
        "ServiceEntry" => Spec::ServiceEntry(typed(raw)?),
        "WorkloadEntry" => Spec::WorkloadEntry(typed(raw)?),
        "WorkloadGroup" => Spec::WorkloadGroup(typed(raw)?),
        "PeerAuthentication" => Spec::PeerAuthentication(typed(raw)?),
        "AuthorizationPolicy" => Spec::AuthorizationPolicy(typed(raw)?),
        "RequestAuthentication" => Spec::RequestAuthentication(typed(raw)?),
        "Telemetry" => Spec::Telemetry(typed(raw)?),
        _ => Spec::Sidecar(typed(raw)?),
    })
}

fn string_map(
    v: Option<&Value>,
    path: &str,
) -> Result<std::collections::BTreeMap<String, String>, (String, String)> {
    let mut out = std::collections::BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    _ => return Err((format!("{path}.{k}"), "value must be a string".into())),
                }
            }
        }
        Some(_) => return Err((path.to_string(), "must be a mapping of strings".into())),
    }
    Ok(out)
}

fn parse_metadata(v: Option<&Value>) -> Result<Metadata, (String, String)> {
    let mut meta = Metadata::default();
    let m = match v {
        None | Some(Value::Null) => return Ok(meta),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(("metadata".into(), "must be a mapping".into())),
    };
    let text = |key: &str| -> Result<Option<String>, (String, String)> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err((format!("metadata.{key}"), "must be a string".into())),
        }
    };
    if let Some(name) = text("name")? {
        meta.name = name;
    }
    if let Some(ns) = text("namespace")?
        && !ns.is_empty()
    {
        meta.namespace = ns;
    }
    meta.labels = string_map(m.get("labels"), "metadata.labels")?;
    meta.annotations = string_map(m.get("annotations"), "metadata.annotations")?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_lines() {
        let docs = split_documents("a: 1\n---\nb: 2\n--- # c\nc: 3\n");
        let starts: Vec<usize> = docs.iter().map(|d| d.0).collect();
        assert_eq!(starts, vec![1, 2, 4]);
        assert_eq!(docs[1].1.trim(), "b: 2");
    }

    #[test]
    fn separator_needs_boundary() {
        assert!(is_separator("---\n"));
        assert!(is_separator("--- \n"));
        assert!(!is_separator("----\n"));
        assert!(!is_separator("---foo\n"));
    }
}
