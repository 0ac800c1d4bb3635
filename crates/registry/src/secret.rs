//! TLS credentials from Kubernetes `Secret`s (`apiVersion: v1`, `kind:
//! Secret`), as Istio gateways read them through `credentialName`.
//!
//! In local mode there is no Kubernetes API: the Secrets Istio users write
//! for their gateways sit in the configuration directory next to the Istio
//! YAML, and the control plane serves them over SDS (`kubernetes://<name>`,
//! plus `kubernetes://<name>-cacert` for the CA of MUTUAL servers).
//!
//! Keys accepted, as istiod accepts them: `tls.crt` / `tls.key` / `ca.crt`
//! (type `kubernetes.io/tls`), or `cert` / `key` / `cacert` (generic
//! secrets); `ca.crl` / `crl` for revocation lists. Values come from `data`
//! (base64) or `stringData` (plain text, which wins, as in Kubernetes).

use std::collections::BTreeMap;

use api::{Object, Severity, Spec, Validation, ValidationError};
use base64::Engine as _;
use serde_json::Value;

use crate::local::FieldError;

/// The SDS name suffix of a credential's CA bundle (Istio's `-cacert`).
pub const CA_SUFFIX: &str = "-cacert";
/// Kubernetes' TLS secret type.
pub const TYPE_TLS: &str = "kubernetes.io/tls";

/// A TLS credential: certificate chain and key (a server or client
/// credential), and/or a CA bundle (what MUTUAL servers verify clients with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCredential {
    pub namespace: String,
    pub name: String,
    /// The file it came from.
    pub origin: String,
    pub cert_chain: Option<Vec<u8>>,
    pub private_key: Option<Vec<u8>>,
    pub ca: Option<Vec<u8>>,
    pub crl: Option<Vec<u8>>,
}

impl TlsCredential {
    /// `namespace/name`, the registry key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether it carries a certificate and its key.
    pub fn has_keypair(&self) -> bool {
        self.cert_chain.is_some() && self.private_key.is_some()
    }
}

/// True for a Kubernetes core `Secret` object.
pub fn is_secret(object: &Object) -> bool {
    object.api_version == "v1" && object.kind == "Secret"
}

/// Reads a Secret. `None` when the object is not a Secret or carries no TLS
/// material (a docker config, a token: not ours to judge); `Some(Err)` when
/// it is meant to be a TLS credential and is broken.
pub fn parse(object: &Object) -> Option<Result<TlsCredential, Vec<FieldError>>> {
    if !is_secret(object) {
        return None;
    }
    let Spec::Unsupported(Value::Object(doc)) = &object.spec else {
        return None;
    };
    let mut errors = Vec::new();
    let secret_type = doc.get("type").and_then(Value::as_str).unwrap_or("");
    let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    match doc.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(data)) => {
            for (k, v) in data {
                let text = v.as_str().unwrap_or("");
                // Kubernetes writes base64 without line breaks; YAML block
                // scalars may add some.
                let compact: String = text.split_whitespace().collect();
                match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
                    Ok(bytes) => {
                        values.insert(k.clone(), bytes);
                    }
                    Err(e) => errors.push(FieldError {
                        path: format!("data.{k}"),
                        message: format!("not valid base64: {e}"),
                    }),
                }
            }
        }
        Some(_) => errors.push(FieldError {
            path: "data".into(),
            message: "data must be a mapping of key to base64 value".into(),
        }),
    }
    match doc.get("stringData") {
        None | Some(Value::Null) => {}
        Some(Value::Object(data)) => {
            for (k, v) in data {
                match v.as_str() {
                    Some(s) => {
                        values.insert(k.clone(), s.as_bytes().to_vec());
                    }
                    None => errors.push(FieldError {
                        path: format!("stringData.{k}"),
                        message: "must be a string".into(),
                    }),
                }
            }
        }
        Some(_) => errors.push(FieldError {
            path: "stringData".into(),
            message: "stringData must be a mapping of key to string".into(),
        }),
    }
    let pick = |names: &[&str]| names.iter().find_map(|n| values.get(*n).cloned());
    let cred = TlsCredential {
        namespace: object.metadata.namespace.clone(),
        name: object.metadata.name.clone(),
        origin: object.origin.clone(),
        cert_chain: pick(&["tls.crt", "cert"]),
        private_key: pick(&["tls.key", "key"]),
        ca: pick(&["ca.crt", "cacert"]),
        crl: pick(&["ca.crl", "crl"]),
    };
    let is_tls_type = secret_type == TYPE_TLS;
    if !is_tls_type && cred.cert_chain.is_none() && cred.private_key.is_none() && cred.ca.is_none()
    {
        return if errors.is_empty() {
            None
        } else {
            Some(Err(errors))
        };
    }
    let field = |key: &str| {
        if doc.get("stringData").and_then(|d| d.get(key)).is_some() {
            format!("stringData.{key}")
        } else {
            format!("data.{key}")
        }
    };
    match (&cred.cert_chain, &cred.private_key) {
        (Some(_), None) => errors.push(FieldError {
            path: field(if is_tls_type { "tls.key" } else { "key" }),
            message: "a certificate needs its private key".into(),
        }),
        (None, Some(_)) => errors.push(FieldError {
            path: field(if is_tls_type { "tls.crt" } else { "cert" }),
            message: "a private key needs its certificate".into(),
        }),
        // (Unless a value did not decode: that error says it already.)
        (None, None) if is_tls_type && errors.is_empty() => errors.push(FieldError {
            path: "data.tls.crt".into(),
            message: format!("a {TYPE_TLS} secret needs tls.crt and tls.key"),
        }),
        _ => {}
    }
    for (key, value, marker) in [
        ("tls.crt", &cred.cert_chain, "CERTIFICATE"),
        ("tls.key", &cred.private_key, "PRIVATE KEY"),
        ("ca.crt", &cred.ca, "CERTIFICATE"),
    ] {
        if let Some(v) = value
            && !is_pem(v, marker)
        {
            let key = if values.contains_key(key) {
                key
            } else {
                match key {
                    "tls.crt" => "cert",
                    "tls.key" => "key",
                    _ => "cacert",
                }
            };
            errors.push(FieldError {
                path: field(key),
                message: format!("not a PEM block ({marker})"),
            });
        }
    }
    Some(if errors.is_empty() {
        Ok(cred)
    } else {
        Err(errors)
    })
}

/// Whether `bytes` hold a PEM block whose label ends in `marker`
/// (`CERTIFICATE`, `PRIVATE KEY` covers RSA/EC/PKCS#8 keys).
fn is_pem(bytes: &[u8], marker: &str) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(marker))
    })
}

/// The validation of a Secret for the config store: a broken TLS credential
/// is rejected with its field path (and reported through `trellis analyze`).
pub fn validate(object: &Object) -> Validation {
    let mut v = Validation::default();
    if let Some(Err(errors)) = parse(object) {
        v.errors = errors
            .into_iter()
            .map(|e| ValidationError {
                origin: object.origin.clone(),
                kind: object.kind.clone(),
                namespace: object.metadata.namespace.clone(),
                name: object.metadata.name.clone(),
                path: e.path,
                message: e.message,
                severity: Severity::Error,
            })
            .collect();
    }
    v
}

/// Every TLS credential among `objects`, by `namespace/name` (the first of
/// duplicates wins).
pub fn credentials(objects: &[Object]) -> BTreeMap<String, TlsCredential> {
    let mut out = BTreeMap::new();
    for o in objects {
        if let Some(Ok(c)) = parse(o) {
            out.entry(c.key()).or_insert(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn load(text: &str) -> Vec<Object> {
        let (objects, errors) = api::parse_documents(text, "secrets.yaml");
        assert!(errors.is_empty(), "{errors:?}");
        objects
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn tls_secret_from_data_and_string_data() {
        let text = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: cred, namespace: istio-system}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\nstringData:\n  ca.crt: |\n    -----BEGIN CERTIFICATE-----\n    BBBB\n    -----END CERTIFICATE-----\n",
            b64(CERT),
            b64(KEY)
        );
        let objects = load(&text);
        let creds = credentials(&objects);
        let c = &creds["istio-system/cred"];
        assert_eq!(c.cert_chain.as_deref(), Some(CERT.as_bytes()));
        assert!(c.has_keypair());
        assert!(c.ca.is_some());
    }

    #[test]
    fn broken_tls_secret_names_the_field() {
        let text = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: cred}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n",
            b64(CERT)
        );
        let objects = load(&text);
        let v = validate(&objects[0]);
        assert_eq!(v.errors.len(), 1, "{:?}", v.errors);
        assert_eq!(v.errors[0].path, "data.tls.key");
        let bad = load("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata:\n  cert: '%%%'\n");
        assert_eq!(validate(&bad[0]).errors[0].path, "data.cert");
    }

    #[test]
    fn other_secrets_are_not_ours() {
        let objects = load(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: token}\ntype: Opaque\nstringData: {token: abc}\n",
        );
        assert!(parse(&objects[0]).is_none());
        assert!(validate(&objects[0]).errors.is_empty());
    }
}
