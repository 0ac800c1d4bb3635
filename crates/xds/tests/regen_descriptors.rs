//! Regenerates `descriptors/envoy.bin` from the protos shipped in envoy-types.
//!
//! Run with `TRELLIS_REGEN_DESCRIPTORS=1 cargo test -p xds --test regen_descriptors -- --nocapture`
//! after bumping envoy-types. Without the variable the test only reports that
//! it was skipped, so normal test runs stay fast and don't touch the tree.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Include roots inside envoy-types' `proto/` directory, in the order protoc would use.
const INCLUDES: &[&str] = &[
    "data-plane-api",
    "xds",
    "googleapis",
    "protoc-gen-validate",
    "cel-spec/proto",
    "client_model",
    "opentelemetry-proto",
    "ratelimit",
];

/// Finds the envoy-types source directory that this workspace actually builds
/// against, so the descriptors always match the generated Rust types.
fn envoy_types_dir() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("parse cargo metadata");
    let packages = meta["packages"].as_array().expect("packages array");
    let pkg = packages
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types in cargo metadata");
    let manifest = pkg["manifest_path"].as_str().expect("manifest_path");
    Path::new(manifest)
        .parent()
        .expect("manifest dir")
        .to_path_buf()
}

/// Every `envoy/**/v3/**.proto` (relative to data-plane-api) except the
/// deprecated `envoy/extensions/config/**` tree.
fn envoy_v3_files(api: &Path) -> Vec<String> {
    let mut files: Vec<String> = walkdir::WalkDir::new(api.join("envoy"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let rel = e
                .path()
                .strip_prefix(api)
                .ok()?
                .to_str()?
                .replace('\\', "/");
            let wanted = rel.ends_with(".proto")
                && rel.split('/').any(|c| c == "v3")
                && !rel.starts_with("envoy/extensions/config/");
            wanted.then_some(rel)
        })
        .collect();
    files.sort();
    files
}

/// Source fix-ups applied while reading protos: (file, text, replacement).
///
/// protox resolves the first component of a relative type name against every
/// package in the file's whole import closure, while protoc only looks at the
/// packages a file can actually see. In `dynamic_forward_proxy/v3/cluster.proto`
/// the relative name `common.dynamic_forward_proxy.v3.X` is captured by
/// `envoy.extensions.clusters.common` (pulled in transitively through
/// `envoy/config/cluster/v3/cluster.proto`), so no file order can help. Writing
/// the name fully qualified yields exactly the descriptor protoc produces.
const FIXUPS: &[(&str, &str, &str)] = &[(
    "envoy/extensions/clusters/dynamic_forward_proxy/v3/cluster.proto",
    " common.dynamic_forward_proxy.v3.DnsCacheConfig ",
    " .envoy.extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig ",
)];

/// Include-path resolver that applies [`FIXUPS`].
struct FixupResolver(protox::file::ChainFileResolver);

impl protox::file::FileResolver for FixupResolver {
    fn resolve_path(&self, path: &Path) -> Option<String> {
        self.0.resolve_path(path)
    }

    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        let file = self.0.open_file(name)?;
        let mut fixes = FIXUPS.iter().filter(|(f, _, _)| *f == name).peekable();
        if fixes.peek().is_none() {
            return Ok(file);
        }
        let mut source = file.source().unwrap_or_default().to_owned();
        for (_, from, to) in fixes {
            assert!(
                source.contains(from),
                "fix-up for {name} no longer applies: {from}"
            );
            source = source.replace(from, to);
        }
        protox::file::File::from_source(name, &source)
    }
}

fn compiler(includes: &[PathBuf]) -> protox::Compiler {
    let mut chain = protox::file::ChainFileResolver::new();
    for inc in includes {
        chain.add(protox::file::IncludeFileResolver::new(inc.clone()));
    }
    chain.add(protox::file::GoogleFileResolver::new());
    let mut c = protox::Compiler::with_file_resolver(FixupResolver(chain));
    c.include_imports(true);
    c
}

#[test]
fn regenerate_envoy_descriptors() {
    if std::env::var("TRELLIS_REGEN_DESCRIPTORS").as_deref() != Ok("1") {
        eprintln!("skipped: set TRELLIS_REGEN_DESCRIPTORS=1 to regenerate descriptors/envoy.bin");
        return;
    }
    let root = envoy_types_dir().join("proto");
    let includes: Vec<PathBuf> = INCLUDES.iter().map(|i| root.join(i)).collect();
    let files = envoy_v3_files(&includes[0]);
    eprintln!("compiling {} files", files.len());

    // protox resolves a relative name like `common.ratelimit.v3.X` against
    // every package already known, so a file can fail only because a sibling
    // package (e.g. `envoy.extensions.filters.common`) was compiled before it.
    // Each round therefore reopens, with a fresh compiler, the files that just
    // failed first, ahead of everything that could shadow their names.
    let mut order: Vec<&String> = files.iter().collect();
    let mut errors = Vec::new();
    let mut done = None;
    for round in 1..=6 {
        let mut c = compiler(&includes);
        let mut failed = Vec::new();
        errors.clear();
        for f in &order {
            if let Err(e) = c.open_file(f.as_str()) {
                failed.push(*f);
                errors.push(format!("{f}: {e}"));
            }
        }
        eprintln!("round {round}: {} files failed", failed.len());
        if failed.is_empty() {
            done = Some(c);
            break;
        }
        let rest = order.iter().copied().filter(|f| !failed.contains(f));
        order = failed.iter().copied().chain(rest).collect();
    }
    let Some(second) = done else {
        panic!("files still failing:\n{}", errors.join("\n"));
    };
    let must = "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto";
    assert!(second.files().any(|f| f.name() == must), "{must} missing");

    let bytes = second.encode_file_descriptor_set();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("descriptors/envoy.bin");
    std::fs::write(&out, &bytes).expect("write descriptors/envoy.bin");
    eprintln!(
        "wrote {} ({} bytes, {} files)",
        out.display(),
        bytes.len(),
        second.files().len()
    );
}
