//! `trellis analyze` over fixtures and over Istio's own sample YAML.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use ctl::analyze::{self, AnalyzeArgs, Level, Message, Options, OutputFormat, Stage};

fn run_texts(files: &[(&str, &str)], strict: bool) -> Vec<Message> {
    let inputs: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| ((*n).to_string(), (*t).to_string()))
        .collect();
    let opts = Options {
        strict,
        ..Options::default()
    };
    analyze::analyze_texts(&inputs, &opts).messages
}

fn codes(msgs: &[Message]) -> Vec<(Level, &'static str, String)> {
    msgs.iter()
        .map(|m| (m.level, m.code, m.object_name.clone()))
        .collect()
}

const MANIFEST: &str = "\
apiVersion: local.trellis.dev/v1alpha1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: local.trellis.dev/v1alpha1
kind: Workload
metadata: {name: reviews-v1, labels: {app: reviews, version: v1}}
spec: {demo: {}}
";

#[test]
fn subset_and_host_not_found_with_lines() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: v4
      weight: 50
    - destination:
        host: nosuch
      weight: 50
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
";
    let msgs = run_texts(&[("m.yaml", MANIFEST), ("x.yaml", vs)], false);
    let text: Vec<String> = msgs.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(
            &"Error [IST0101] (VirtualService default/reviews x.yaml:11 spec.http[0].route[0].destination.subset) Referenced host+subset in destinationrule not found: \"reviews+v4\"".to_string()
        ),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.starts_with("Error [IST0101] (VirtualService default/reviews x.yaml:14 spec.http[0].route[1].destination.host) Referenced host not found: \"nosuch\"")),
        "{text:#?}"
    );
    // v2 selects no workload of the local manifest.
    assert!(
        text.iter().any(|t| t.starts_with(
            "Error [IST0173] (DestinationRule default/reviews x.yaml:27 spec.subsets[1].labels)"
        )),
        "{text:#?}"
    );
    assert!(!text.iter().any(|t| t.contains("subsets[0]")), "{text:#?}");
}

#[test]
fn unknown_kubernetes_hosts_are_info_without_manifest() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext}
spec:
  host: api.example.com
";
    let msgs = run_texts(&[("x.yaml", vs)], false);
    assert!(
        codes(&msgs).contains(&(Level::Info, "IST0101", "r".into())),
        "{msgs:#?}"
    );
    assert!(
        codes(&msgs).contains(&(Level::Warning, "IST0174", "ext".into())),
        "{msgs:#?}"
    );
    assert!(!msgs.iter().any(|m| m.level == Level::Error), "{msgs:#?}");
    let strict = run_texts(&[("x.yaml", vs)], true);
    assert!(
        codes(&strict).contains(&(Level::Error, "IST0101", "r".into())),
        "{strict:#?}"
    );
}

#[test]
fn gateways_and_conflicts() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"bookinfo.example.com\"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: lonely}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [\"other.example.com\"]
  gateways: [gw, missing-gw]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: m1}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: m2}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d1}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d2}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: foo}
spec:
  hosts: [foo.example.com]
  ports: [{number: 1, name: x, protocol: FOO}]
  resolution: DNS
";
    let msgs = run_texts(&[("m.yaml", MANIFEST), ("x.yaml", text)], false);
    let c = codes(&msgs);
    for want in [
        (Level::Error, "IST0101", "a"),
        (Level::Warning, "IST0132", "a"),
        (Level::Info, "TRL0001", "lonely"),
        (Level::Error, "IST0109", "m1"),
        (Level::Error, "IST0109", "m2"),
        (Level::Warning, "TRL0002", "d1"),
        (Level::Warning, "TRL0002", "d2"),
        (Level::Warning, "IST0134", "db"),
        (Level::Error, "IST0106", "foo"),
    ] {
        assert!(
            c.contains(&(want.0, want.1, want.2.to_string())),
            "missing {want:?} in {:#?}",
            msgs.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
    }
    assert!(!c.iter().any(|x| x.1 == "TRL0001" && x.2 == "gw"));
}

#[test]
fn schema_errors_and_json_output() {
    let bad = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: 50
      wieght: 3
";
    let msgs = run_texts(&[("bad.yaml", bad)], false);
    let m = msgs
        .iter()
        .find(|m| m.code == "IST0106")
        .expect("schema error");
    assert_eq!(m.stage, Stage::Parse);
    assert_eq!(m.line, 10, "{m}");

    let dir = std::env::temp_dir().join(format!("ctl-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.yaml"), bad).unwrap();
    let args = AnalyzeArgs {
        paths: vec![dir.clone()],
        strict: false,
        output: OutputFormat::Json,
        failure_threshold: Level::Error,
        output_threshold: Level::Info,
        meshconfig: None,
        domain_suffix: "cluster.local".into(),
    };
    let mut out = Vec::new();
    let code = analyze::run(&args, &mut out).unwrap();
    assert_eq!(code, analyze::EXIT_ISSUES);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v[0]["code"], "IST0106");
    assert_eq!(v[0]["level"], "Error");
    std::fs::remove_dir_all(&dir).ok();
}

fn compat_dir() -> Option<PathBuf> {
    let p = Path::new("/work/shared/compat/istio");
    p.is_dir().then(|| p.to_path_buf())
}

/// Every file of Istio's samples parses; what they refer to and the local
/// registry lacks is reported with Istio's meaning, never as a parse error.
#[test]
fn istio_samples_have_no_parse_errors() {
    let Some(dir) = compat_dir() else {
        eprintln!("skipped: /work/shared/compat/istio is absent");
        return;
    };
    let files = analyze::collect_files(std::slice::from_ref(&dir)).unwrap();
    assert!(!files.is_empty());
    // Each file alone (as a user would analyze it) and the directory whole.
    for f in &files {
        let a = analyze::analyze_files(std::slice::from_ref(f), &Options::default());
        let parse: Vec<String> = a
            .messages
            .iter()
            .filter(|m| m.stage == Stage::Parse)
            .map(ToString::to_string)
            .collect();
        assert!(parse.is_empty(), "{}: {parse:#?}", f.display());
    }
    let a = analyze::analyze_files(&files, &Options::default());
    for m in &a.messages {
        eprintln!("{m}");
    }
    assert!(!a.messages.iter().any(|m| m.stage == Stage::Parse));
    assert!(!a.objects.is_empty());
}

#[test]
fn gateway_credential_must_name_a_tls_secret_of_the_gateway_namespace() {
    let gw = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: present}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: absent}
---
apiVersion: v1
kind: Secret
metadata: {name: present, namespace: istio-system}
type: kubernetes.io/tls
stringData:
  tls.crt: |
    -----BEGIN CERTIFICATE-----
    AAAA
    -----END CERTIFICATE-----
  tls.key: |
    -----BEGIN PRIVATE KEY-----
    AAAA
    -----END PRIVATE KEY-----
---
apiVersion: v1
kind: Secret
metadata: {name: broken, namespace: istio-system}
type: kubernetes.io/tls
stringData: {tls.crt: not a certificate}
";
    let msgs = run_texts(&[("gw.yaml", gw)], false);
    let missing: Vec<&Message> = msgs
        .iter()
        .filter(|m| m.code == "IST0101" && m.object_name == "edge")
        .collect();
    assert_eq!(missing.len(), 1, "{msgs:#?}");
    assert_eq!(missing[0].level, Level::Error);
    assert_eq!(missing[0].field, "spec.servers[1].tls.credentialName");
    assert!(
        missing[0].message.contains("\"absent\""),
        "{}",
        missing[0].message
    );
    // A broken TLS Secret is a schema error naming the key.
    assert!(
        msgs.iter().any(|m| m.code == "IST0106"
            && m.object_name == "broken"
            && m.field.starts_with("stringData.tls.")),
        "{msgs:#?}"
    );
}
