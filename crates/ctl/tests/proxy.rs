//! `proxy-status` and `proxy-config` against a canned Envoy 1.40 config
//! dump, a live Envoy (skipped when absent) and an in-test syncz server.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctl::proxy_config::{self, ConfigFormat, ProxyConfigArgs, Resource};
use ctl::status::{self, ProxyStatusArgs, StatusFormat};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn canned() -> serde_json::Value {
    let text = std::fs::read_to_string(data("envoy_config_dump.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn render(dump: &serde_json::Value, r: Resource) -> String {
    let mut out = Vec::new();
    proxy_config::write_dump(dump, r, ConfigFormat::Table, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn words(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn has_row(table: &str, want: &[&str]) -> bool {
    table.lines().any(|l| words(l) == want)
}

fn check_tables(dump: &serde_json::Value) {
    let l = render(dump, Resource::Listeners);
    assert!(l.starts_with("ADDRESSES"), "{l}");
    assert!(
        l.lines().any(|x| x.contains("127.0.0.1")
            && x.contains("Trans: raw_buffer; App: http/1.1,h2c")
            && x.contains("Inline Route: 9080")),
        "{l}"
    );
    assert!(
        l.lines()
            .any(|x| x.contains("ALL") && x.contains("Cluster: PassthroughCluster")),
        "{l}"
    );

    let r = render(dump, Resource::Routes);
    assert!(
        has_row(
            &r,
            &[
                "9080",
                "reviews.default.svc.cluster.local:9080",
                "reviews.default.svc.cluster.local + 3 more...",
                "/api*",
                "reviews.default"
            ]
        ),
        "{r}"
    );
    assert!(
        r.lines()
            .any(|x| x.contains("/health") && x.trim_end().ends_with('-')),
        "{r}"
    );

    let c = render(dump, Resource::Clusters);
    assert!(
        has_row(
            &c,
            &[
                "reviews.default.svc.cluster.local",
                "9080",
                "v1",
                "outbound",
                "STATIC",
                "reviews.default"
            ]
        ),
        "{c}"
    );
    assert!(
        has_row(
            &c,
            &["PassthroughCluster", "-", "-", "-", "ORIGINAL_DST", "-"]
        ),
        "{c}"
    );

    let e = render(dump, Resource::Endpoints);
    assert!(
        has_row(
            &e,
            &[
                "127.0.0.1:19080",
                "HEALTHY",
                "OK",
                "outbound|9080|v1|reviews.default.svc.cluster.local"
            ]
        ),
        "{e}"
    );

    let s = render(dump, Resource::Secrets);
    assert!(s.starts_with("RESOURCE NAME"), "{s}");
    assert!(
        s.lines().any(|x| {
            let w = words(x);
            w.len() == 7
                && w[0] == "ROOTCA"
                && w[1] == "CA"
                && w[4] == "1234abcd"
                && w[5].starts_with("2036-")
                && w[6].starts_with("2026-")
        }),
        "{s}"
    );

    let all = render(dump, Resource::All);
    for h in [
        "ADDRESSES",
        "VHOST NAME",
        "SERVICE FQDN",
        "OUTLIER CHECK",
        "SERIAL NUMBER",
    ] {
        assert!(all.contains(h), "{all}");
    }
    let mut json = Vec::new();
    proxy_config::write_dump(dump, Resource::Clusters, ConfigFormat::Json, &mut json).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "PassthroughCluster")
    );
    let mut yaml = Vec::new();
    proxy_config::write_dump(dump, Resource::Routes, ConfigFormat::Yaml, &mut yaml).unwrap();
    assert!(String::from_utf8(yaml).unwrap().contains("virtual_hosts"));
}

#[test]
fn canned_envoy_config_dump_tables() {
    check_tables(&canned());
}

/// Serves `routes` (path → body) over HTTP/1.1 on 127.0.0.1 until dropped.
struct TinyServer {
    addr: String,
}

fn serve(routes: Vec<(String, String)>) -> TinyServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let resp = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_string(),
            };
            let _ = stream.write_all(resp.as_bytes());
        }
    });
    TinyServer { addr }
}

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

fn syncz(admin: &str) -> String {
    let t = |sent: &str, acked: &str| serde_json::json!({"sent_version": sent, "sent_nonce": format!("n{sent}"), "acked_version": acked, "last_nack": null});
    serde_json::json!([
        {
            "node_id": "sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local",
            "connected": true,
            "protocol": "Delta",
            "metadata": {"NAMESPACE": "default", "WORKLOAD_NAME": "reviews-v1", "LABELS": {"app": "reviews"}},
            "admin": admin,
            "types": {CDS: t("c1", "c1"), LDS: t("l1", "l1"), EDS: t("e2", "e1"), RDS: t("r1", "r1")}
        },
        {
            "node_id": "sidecar~127.0.0.1~ratings-v1.default~default.svc.cluster.local",
            "connected": true,
            "protocol": "SotW",
            "metadata": {"NAMESPACE": "default", "WORKLOAD_NAME": "ratings-v1", "ISTIO_VERSION": "1.28.0"},
            "admin": null,
            "types": {
                CDS: t("c1", "c1"),
                LDS: {"sent_version": "l2", "sent_nonce": "n7", "acked_version": "l1",
                      "last_nack": {"message": "listener 0.0.0.0_80: duplicate filter chain match", "nonce": "n7", "at": "2026-01-01T00:00:00Z"}}
            }
        }
    ])
    .to_string()
}

#[test]
fn proxy_status_table_and_nacks() {
    let srv = serve(vec![("/debug/syncz".into(), syncz("127.0.0.1:1"))]);
    let mut out = Vec::new();
    let args = ProxyStatusArgs {
        proxy: None,
        control_plane: format!("http://{}", srv.addr),
        output: StatusFormat::Table,
    };
    let code = status::run(&args, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(
        has_row(&text, &["NAME", "CDS", "LDS", "EDS", "RDS", "VERSION"]),
        "{text}"
    );
    assert!(
        has_row(
            &text,
            &[
                "reviews-v1.default",
                "SYNCED",
                "SYNCED",
                "STALE",
                "SYNCED",
                "c1"
            ]
        ),
        "{text}"
    );
    assert!(
        has_row(
            &text,
            &[
                "ratings-v1.default",
                "SYNCED",
                "NACKed",
                "NOT SENT",
                "NOT SENT",
                "1.28.0"
            ]
        ),
        "{text}"
    );
    assert!(text.contains("ratings-v1.default LDS NACK (nonce n7, at 2026-01-01T00:00:00Z): listener 0.0.0.0_80: duplicate filter chain match"), "{text}");

    let mut out = Vec::new();
    let args = ProxyStatusArgs {
        proxy: Some("reviews".into()),
        control_plane: format!("http://{}", srv.addr),
        output: StatusFormat::Json,
    };
    assert_eq!(status::run(&args, &mut out).unwrap(), 0);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["metadata"]["WORKLOAD_NAME"], "reviews-v1");
}

#[test]
fn proxy_lookup() {
    let all: Vec<status::SyncStatus> = serde_json::from_str(&syncz("a:1")).unwrap();
    let id = "sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local";
    assert_eq!(status::find_proxy(&all, id).unwrap().node_id, id);
    assert_eq!(status::find_proxy(&all, "reviews-v1").unwrap().node_id, id);
    assert_eq!(
        status::find_proxy(&all, "reviews-v1.default")
            .unwrap()
            .node_id,
        id
    );
    assert_eq!(status::find_proxy(&all, "rev").unwrap().node_id, id);
    assert!(status::find_proxy(&all, "sidecar~").is_err());
    assert!(status::find_proxy(&all, "nope").is_err());
}

#[test]
fn proxy_config_through_control_plane() {
    let admin = serve(vec![
        ("/config_dump".into(), canned().to_string()),
        ("/config_dump?include_eds".into(), canned().to_string()),
    ]);
    let cp = serve(vec![("/debug/syncz".into(), syncz(&admin.addr))]);
    let args = ProxyConfigArgs {
        resource: Resource::Clusters,
        proxy: Some("reviews-v1".into()),
        control_plane: format!("http://{}", cp.addr),
        admin: None,
        output: ConfigFormat::Table,
    };
    let mut out = Vec::new();
    assert_eq!(proxy_config::run(&args, &mut out).unwrap(), 0);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("reviews.default.svc.cluster.local"), "{text}");
    // A proxy without an admin address is an error that says so.
    let args = ProxyConfigArgs {
        proxy: Some("ratings-v1".into()),
        ..args
    };
    let err = proxy_config::run(&args, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("no admin address"), "{err}");
}

fn envoy_path() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),'_bin','envoy'))",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    p.is_file().then_some(p)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Envoy: its admin `/config_dump` renders the same tables.
#[test]
fn live_envoy_config_dump() {
    let Some(envoy) = envoy_path() else {
        eprintln!("skipped: envoy is not installed");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ctl-envoy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let admin_file = dir.join("admin");
    let child = Command::new(envoy)
        .arg("-c")
        .arg(data("envoy_bootstrap.yaml"))
        .arg("--admin-address-path")
        .arg(&admin_file)
        .args([
            "--base-id",
            &(std::process::id() % 60000).to_string(),
            "-l",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let admin = loop {
        if let Ok(a) = std::fs::read_to_string(&admin_file)
            && !a.trim().is_empty()
        {
            break a.trim().to_string();
        }
        assert!(Instant::now() < deadline, "envoy did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    let body = ctl::http::get(&format!("http://{admin}/config_dump?include_eds")).unwrap();
    let dump: serde_json::Value = serde_json::from_slice(&body).unwrap();
    check_tables(&dump);
    // Through the entry point with --admin.
    let args = ProxyConfigArgs {
        resource: Resource::Endpoints,
        proxy: None,
        control_plane: "http://127.0.0.1:1".into(),
        admin: Some(admin),
        output: ConfigFormat::Table,
    };
    let mut out = Vec::new();
    proxy_config::run(&args, &mut out).unwrap();
    assert!(String::from_utf8(out).unwrap().contains("127.0.0.1:19080"));
    std::fs::remove_dir_all(&dir).ok();
}
