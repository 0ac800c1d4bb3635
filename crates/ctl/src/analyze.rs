//! `trellis analyze`: istioctl analyze for files on disk.
//!
//! Loads YAML/JSON files (directories recursively), validates every object,
//! builds the registry exactly as the control plane does (local manifest
//! `Service`/`Workload` objects in the same files are the platform
//! services; ServiceEntries and WorkloadEntries add theirs), runs the
//! cross-object analyzers below, translates the configuration with the
//! real translator and reports what it could not translate.
//!
//! Messages carry Istio's codes where Istio has an analyzer with the same
//! meaning (`pkg/config/analysis/msg/messages.yaml`) and `TRL` codes
//! otherwise:
//!
//! | code | level | meaning |
//! |---|---|---|
//! | IST0101 ReferencedResourceNotFound | Error* | destination host, host+subset, host:port or gateway not found; Gateway `credentialName` with no TLS Secret in the gateway workload's namespace |
//! | IST0106 SchemaValidationError | Error | the object does not parse or fails validation (it is ignored) |
//! | IST0109 ConflictingMeshGatewayVirtualServiceHosts | Error | several mesh VirtualServices for one host |
//! | IST0111 MultipleSidecarsWithoutWorkloadSelectors | Error | several namespace-wide Sidecars |
//! | IST0112 VirtualServiceDestinationPortSelectorRequired | Error | multi-port destination without `port` |
//! | IST0127 NoMatchingWorkloadsFound | Warning | Sidecar `workloadSelector` selects no local workload |
//! | IST0132 VirtualServiceHostNotFoundInGateway | Warning | VS host not served by its Gateway |
//! | IST0133 SchemaWarning | Warning | validation warning |
//! | IST0134 ServiceEntryAddressesRequired | Warning | TCP (or unset) port without `addresses` |
//! | IST0173 DestinationRuleSubsetNotSelectPods | Error | subset selects no local workload |
//! | IST0174 UnknownDestinationRuleHost | Warning* | DestinationRule host matches no service |
//! | TRL0001 GatewayNotReferenced | Info | no VirtualService binds the Gateway |
//! | TRL0002 ConflictingDestinationRules | Warning | same-namespace DestinationRules for one host redefine a subset or both set a traffic policy |
//! | TRL0003 UnknownPortProtocol | Warning | ServiceEntry port protocol unknown (treated as TCP) |
//! | TRL0004 DuplicateObject | Error | same kind/namespace/name defined twice (the first wins) |
//! | TRL0100 TranslationWarning | Warning | the translator could not translate something exactly |
//! | TRL0101 RegistryWarning | Warning | the registry skipped an entry |
//!
//! \* **Hosts that may live in Kubernetes.** Files are often analyzed
//! without the Kubernetes `Service`s they refer to. When the input has no
//! local manifest `Service` (the platform is unknown) and `--strict` is not
//! given, a host that is not found but looks like a Kubernetes service name
//! (`reviews`, `reviews.ns.svc`, `*.svc.<domain>`) is reported as **Info**
//! (it may exist in the cluster); any other unknown host (an external name
//! without ServiceEntry) as **Warning**. With a local manifest in the
//! input, or with `--strict`, the platform is taken as complete and both are
//! reported at Istio's level (IST0101 Error, IST0174 Warning).
//! Subsets and gateways are configuration objects, so a missing one is
//! always an Error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use api::networking::common::Destination;
use api::networking::{DestinationRule, Gateway, ServiceEntry, VirtualService};
use api::{MeshConfig, Object, Spec};
use registry::{LocalManifest, Registry};
use serde::Serialize;

use crate::yamlpos::{self, LineIndex};

/// Exit code when messages at or above the failure threshold were found
/// (istioctl's).
pub const EXIT_ISSUES: i32 = 79;

/// `trellis analyze`.
#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {
    /// Files and directories to analyze (directories recursively: *.yaml,
    /// *.yml, *.json).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Take the input as the whole platform: hosts not found are reported
    /// at Istio's level even without a local manifest.
    #[arg(long)]
    pub strict: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Log)]
    pub output: OutputFormat,
    /// The lowest level that makes the exit code non-zero.
    #[arg(long, value_enum, default_value_t = Level::Error)]
    pub failure_threshold: Level,
    /// The lowest level printed.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    pub output_threshold: Level,
    /// MeshConfig YAML file (Istio's defaults otherwise).
    #[arg(long)]
    pub meshconfig: Option<PathBuf>,
    /// DNS domain suffix of the mesh.
    #[arg(long, default_value = "cluster.local")]
    pub domain_suffix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per message, istioctl style.
    Log,
    Json,
    Yaml,
}

/// Message level, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Info => "Info",
            Self::Warning => "Warning",
            Self::Error => "Error",
        })
    }
}

/// Which step produced a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The text could not be read as an object (YAML, unknown fields, types).
    Parse,
    /// The object parsed but fails (or warns in) semantic validation.
    Validate,
    /// Cross-object analysis.
    Analyze,
    /// Registry building and xDS translation.
    Translate,
}

/// One analyzer finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub level: Level,
    /// `IST0101`, `TRL0001`, ...
    pub code: &'static str,
    /// `ReferencedResourceNotFound`, ...
    pub name: &'static str,
    pub stage: Stage,
    /// Kind of the object concerned (empty when unknown).
    pub kind: String,
    pub namespace: String,
    #[serde(rename = "objectName")]
    pub object_name: String,
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// Field path inside the object (`spec.http[0].route[0].destination.host`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}] (", self.level, self.code)?;
        let mut sep = "";
        if !self.kind.is_empty() {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.object_name)?;
            sep = " ";
        }
        if !self.file.is_empty() {
            write!(f, "{sep}{}", self.file)?;
            if self.line > 0 {
                write!(f, ":{}", self.line)?;
            }
            sep = " ";
        }
        if !self.field.is_empty() {
            write!(f, "{sep}{}", self.field)?;
        }
        write!(f, ") {}", self.message)
    }
}

/// The result of an analysis.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Sorted by file, line, code.
    pub messages: Vec<Message>,
    /// Objects that loaded and validated.
    pub objects: Vec<Object>,
    /// Files read.
    pub files: Vec<PathBuf>,
}

impl Analysis {
    pub fn has_level(&self, min: Level) -> bool {
        self.messages.iter().any(|m| m.level >= min)
    }
}

/// Runs `trellis analyze` and prints the messages; returns the exit code.
pub fn run(args: &AnalyzeArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let mesh = match &args.meshconfig {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", p.display()))?;
            MeshConfig::from_yaml(&text, &p.display().to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => MeshConfig::default(),
    };
    let files = collect_files(&args.paths)?;
    let analysis = analyze_files(
        &files,
        &Options {
            strict: args.strict,
            domain_suffix: args.domain_suffix.clone(),
            mesh,
        },
    );
    let shown: Vec<&Message> = analysis
        .messages
        .iter()
        .filter(|m| m.level >= args.output_threshold)
        .collect();
    match args.output {
        OutputFormat::Log => {
            if shown.is_empty() {
                writeln!(
                    out,
                    "\u{2714} No validation issues found when analyzing {}.",
                    describe_paths(&args.paths)
                )?;
            }
            for m in &shown {
                writeln!(out, "{m}")?;
            }
        }
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &shown)?;
            writeln!(out)?;
        }
        OutputFormat::Yaml => {
            let text = serde_saphyr::to_string(&shown).map_err(|e| anyhow::anyhow!("{e}"))?;
            write!(out, "{text}")?;
        }
    }
    Ok(if analysis.has_level(args.failure_threshold) {
        EXIT_ISSUES
    } else {
        0
    })
}

fn describe_paths(paths: &[PathBuf]) -> String {
    match paths {
        [one] => one.display().to_string(),
        _ => format!("{} paths", paths.len()),
    }
}

/// The configuration files named by `paths`: files as given, directories
/// walked recursively (hidden entries skipped, sorted).
pub fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(p)
                .follow_links(true)
                .into_iter()
                .filter_entry(|e| {
                    e.depth() == 0 || !e.file_name().to_str().is_some_and(|n| n.starts_with('.'))
                })
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file() && config::is_config_file(e.path()))
                .map(walkdir::DirEntry::into_path)
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Analysis options.
#[derive(Debug, Clone)]
pub struct Options {
    pub strict: bool,
    pub domain_suffix: String,
    pub mesh: MeshConfig,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            strict: false,
            domain_suffix: "cluster.local".into(),
            mesh: MeshConfig::default(),
        }
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    (line.starts_with("---") || line.starts_with("..."))
        && line[3..]
            .chars()
            .next()
            .is_none_or(|c| c.is_whitespace() || c == '#')
}

/// Documents of a YAML stream with the line each starts on (the same split
/// as `api::load`, so that lines agree).
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut offset) = (0usize, 1usize, 0usize);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line) {
            docs.push((start_line, &text[start..offset]));
            start = offset + 3;
            start_line = i + 1;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start.min(text.len())..]));
    docs
}

type ObjectKey = (String, String, String, String);

fn object_key(o: &Object) -> ObjectKey {
    (
        o.origin.clone(),
        o.kind.clone(),
        o.metadata.namespace.clone(),
        o.metadata.name.clone(),
    )
}

struct Ctx {
    messages: Vec<Message>,
    lines: BTreeMap<ObjectKey, LineIndex>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        o: &Object,
        level: Level,
        (code, name): (&'static str, &'static str),
        stage: Stage,
        field: &str,
        message: String,
    ) {
        let line = self.lines.get(&object_key(o)).map_or(0, |l| {
            if field.is_empty() {
                l.start
            } else {
                l.line(field)
            }
        });
        self.messages.push(Message {
            level,
            code,
            name,
            stage,
            kind: o.kind.clone(),
            namespace: o.metadata.namespace.clone(),
            object_name: o.metadata.name.clone(),
            file: o.origin.clone(),
            line,
            field: field.to_string(),
            message,
        });
    }
}

const REF_NOT_FOUND: (&str, &str) = ("IST0101", "ReferencedResourceNotFound");
const SCHEMA_ERROR: (&str, &str) = ("IST0106", "SchemaValidationError");
const MESH_VS_CONFLICT: (&str, &str) = ("IST0109", "ConflictingMeshGatewayVirtualServiceHosts");
const MULTIPLE_SIDECARS: (&str, &str) = ("IST0111", "MultipleSidecarsWithoutWorkloadSelectors");
const PORT_REQUIRED: (&str, &str) = ("IST0112", "VirtualServiceDestinationPortSelectorRequired");
const NO_WORKLOADS: (&str, &str) = ("IST0127", "NoMatchingWorkloadsFound");
const HOST_NOT_IN_GATEWAY: (&str, &str) = ("IST0132", "VirtualServiceHostNotFoundInGateway");
const SCHEMA_WARNING: (&str, &str) = ("IST0133", "SchemaWarning");
const SE_ADDRESSES: (&str, &str) = ("IST0134", "ServiceEntryAddressesRequired");
const SUBSET_NO_PODS: (&str, &str) = ("IST0173", "DestinationRuleSubsetNotSelectPods");
const UNKNOWN_DR_HOST: (&str, &str) = ("IST0174", "UnknownDestinationRuleHost");
const GATEWAY_UNUSED: (&str, &str) = ("TRL0001", "GatewayNotReferenced");
const DR_CONFLICT: (&str, &str) = ("TRL0002", "ConflictingDestinationRules");
const UNKNOWN_PROTOCOL: (&str, &str) = ("TRL0003", "UnknownPortProtocol");
const DUPLICATE: (&str, &str) = ("TRL0004", "DuplicateObject");
const TRANSLATION: (&str, &str) = ("TRL0100", "TranslationWarning");
const REGISTRY: (&str, &str) = ("TRL0101", "RegistryWarning");

/// Reads and analyzes `files`.
pub fn analyze_files(files: &[PathBuf], opts: &Options) -> Analysis {
    let mut inputs = Vec::new();
    for f in files {
        let origin = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => inputs.push((origin, text)),
            Err(e) => inputs.push((origin, format!("\u{0}cannot read: {e}"))),
        }
    }
    let mut a = analyze_texts(&inputs, opts);
    a.files = files.to_vec();
    a
}

/// Analyzes in-memory files: `(origin, text)`.
pub fn analyze_texts(inputs: &[(String, String)], opts: &Options) -> Analysis {
    let mut ctx = Ctx {
        messages: Vec::new(),
        lines: BTreeMap::new(),
    };
    let mut objects = Vec::new();
    let mut seen: BTreeMap<(String, String, String, String), (String, usize)> = BTreeMap::new();
    for (origin, text) in inputs {
        if let Some(err) = text.strip_prefix('\u{0}') {
            ctx.messages
                .push(parse_message(origin, 0, None, None, None, err));
            continue;
        }
        for (first_line, doc) in split_documents(text) {
            if is_blank(doc) {
                continue;
            }
            let (objs, errors) = api::parse_documents(doc, origin);
            let index = yamlpos::index_document(doc, first_line);
            for e in errors {
                // A field path in a load error points into this document.
                let line = index
                    .iter()
                    .find(|(id, _)| {
                        e.kind.as_deref() == Some(id.0.as_str())
                            && e.object
                                .as_deref()
                                .is_some_and(|o| o.ends_with(&format!("/{}", id.2)))
                    })
                    .or(index.first())
                    .map_or(e.line + first_line - 1, |(_, li)| {
                        e.path.as_deref().map_or(li.start, |p| li.line(p))
                    });
                ctx.messages.push(parse_message(
                    origin,
                    line,
                    e.kind.as_deref(),
                    e.object.as_deref(),
                    e.path.as_deref(),
                    &e.message,
                ));
            }
            for o in objs {
                let li = index
                    .iter()
                    .find(|(id, _)| {
                        id.0 == o.kind
                            && id.2 == o.metadata.name
                            && (id.1 == o.metadata.namespace || id.1.is_empty())
                    })
                    .map(|(_, li)| li.clone())
                    .unwrap_or(LineIndex {
                        start: first_line,
                        ..LineIndex::default()
                    });
                ctx.lines.insert(object_key(&o), li);
                let mut v = api::validate(&o);
                let local = registry::local::validate(&o);
                v.errors.extend(local.errors);
                v.warnings.extend(local.warnings);
                v.errors.extend(registry::secret::validate(&o).errors);
                for w in &v.warnings {
                    // Reported by the IST0134 analyzer, with Istio's code.
                    if o.kind == "ServiceEntry" && w.path == "spec.addresses" {
                        continue;
                    }
                    ctx.report(
                        &o,
                        Level::Warning,
                        SCHEMA_WARNING,
                        Stage::Validate,
                        &w.path,
                        w.message.clone(),
                    );
                }
                for e in &v.errors {
                    ctx.report(
                        &o,
                        Level::Error,
                        SCHEMA_ERROR,
                        Stage::Validate,
                        &e.path,
                        e.message.clone(),
                    );
                }
                if !v.is_ok() {
                    continue;
                }
                let id = (
                    o.group().to_string(),
                    o.kind.clone(),
                    o.metadata.namespace.clone(),
                    o.metadata.name.clone(),
                );
                // As with `kubectl apply`, a later definition replaces an
                // earlier one (the control plane does the same with the
                // file written last).
                if let Some((first, index)) = seen.get(&id).cloned() {
                    let msg = format!(
                        "{} {} is also defined in {first}; this later definition replaces it",
                        o.kind,
                        o.key()
                    );
                    ctx.report(
                        &o,
                        Level::Warning,
                        DUPLICATE,
                        Stage::Validate,
                        "metadata.name",
                        msg,
                    );
                    seen.insert(id, (o.origin.clone(), index));
                    objects[index] = o;
                    continue;
                }
                seen.insert(id, (o.origin.clone(), objects.len()));
                objects.push(o);
            }
        }
    }

    analyze_objects(&mut ctx, &objects, opts);

    let mut messages = ctx.messages;
    messages.sort_by(|a, b| {
        (
            &a.file,
            a.line,
            a.code,
            &a.kind,
            &a.namespace,
            &a.object_name,
            &a.message,
        )
            .cmp(&(
                &b.file,
                b.line,
                b.code,
                &b.kind,
                &b.namespace,
                &b.object_name,
                &b.message,
            ))
    });
    messages.dedup();
    Analysis {
        messages,
        objects,
        files: Vec::new(),
    }
}

fn parse_message(
    origin: &str,
    line: usize,
    kind: Option<&str>,
    object: Option<&str>,
    path: Option<&str>,
    message: &str,
) -> Message {
    let (namespace, name) = object
        .and_then(|o| o.split_once('/'))
        .map(|(n, m)| (n.to_string(), m.to_string()))
        .unwrap_or_default();
    Message {
        level: Level::Error,
        code: SCHEMA_ERROR.0,
        name: SCHEMA_ERROR.1,
        stage: Stage::Parse,
        kind: kind.unwrap_or_default().to_string(),
        namespace,
        object_name: name,
        file: origin.to_string(),
        line,
        field: path.unwrap_or_default().to_string(),
        message: message.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Analyzers
// ---------------------------------------------------------------------------

/// A host as Istio resolves a name written in `namespace`: short names get
/// `<ns>.svc.<suffix>`, everything else is taken as written.
fn fqdn(host: &str, namespace: &str, suffix: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{suffix}")
    }
}

/// Whether `pattern` (possibly `*.x` or `*`) matches `host`.
fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => false,
    }
}

/// Whether two host names (either may be a wildcard) overlap.
fn hosts_overlap(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

/// A name that may be a Kubernetes Service the input does not include.
fn kubernetes_like(host: &str, suffix: &str) -> bool {
    !host.contains('.') || host.ends_with(".svc") || host.ends_with(&format!(".svc.{suffix}"))
}

struct World<'a> {
    opts: &'a Options,
    registry: Registry,
    /// The input describes the whole platform (local manifest, or --strict).
    platform_known: bool,
    local_workloads: Vec<registry::LocalWorkload>,
    gateways: BTreeMap<String, (&'a Object, &'a Gateway)>,
    rules: Vec<(&'a Object, &'a DestinationRule)>,
}

impl World<'_> {
    fn service(&self, host: &str, namespace: &str) -> Option<&registry::Service> {
        let suffix = &self.opts.domain_suffix;
        self.registry
            .resolve_host(host, namespace, suffix)
            .or_else(|| {
                let f = fqdn(host, namespace, suffix);
                self.registry
                    .services
                    .values()
                    .find(|s| host_matches(&s.hostname, &f))
            })
    }

    /// Level for a host that is not found (see the module docs).
    fn missing_host_level(&self, host: &str, known: Level) -> Level {
        if self.platform_known {
            known
        } else if kubernetes_like(host, &self.opts.domain_suffix) {
            Level::Info
        } else {
            Level::Warning.min(known)
        }
    }

    /// DestinationRules whose host covers `host` written in `namespace`.
    fn rules_for(&self, host: &str, namespace: &str) -> Vec<&DestinationRule> {
        let suffix = &self.opts.domain_suffix;
        let target = fqdn(host, namespace, suffix);
        let alt = self
            .service(host, namespace)
            .map(|s| s.hostname.clone())
            .unwrap_or_else(|| target.clone());
        self.rules
            .iter()
            .filter(|(o, dr)| {
                let h = fqdn(&dr.host, o.namespace(), suffix);
                host_matches(&h, &target) || host_matches(&h, &alt)
            })
            .map(|(_, dr)| *dr)
            .collect()
    }
}

fn analyze_objects(ctx: &mut Ctx, objects: &[Object], opts: &Options) {
    let suffix = opts.domain_suffix.as_str();
    let (manifest, manifest_diags) = LocalManifest::from_objects(objects);
    let resolved =
        registry::assign_ports(&manifest.workloads, 20000, &BTreeSet::new()).unwrap_or_default();
    let (registry, reg_diags) = Registry::build(objects, &resolved, suffix);
    for d in manifest_diags.iter().chain(&reg_diags) {
        report_origin(
            ctx,
            objects,
            &d.origin,
            Level::Warning,
            REGISTRY,
            "",
            d.message.clone(),
        );
    }

    let mut world = World {
        opts,
        registry,
        platform_known: opts.strict || !manifest.services.is_empty(),
        local_workloads: manifest.workloads.clone(),
        gateways: BTreeMap::new(),
        rules: Vec::new(),
    };
    for o in objects {
        match &o.spec {
            Spec::Gateway(g) => {
                world.gateways.insert(o.key(), (o, g));
            }
            Spec::DestinationRule(dr) => world.rules.push((o, dr)),
            _ => {}
        }
    }

    let mut referenced_gateways = BTreeSet::new();
    let mut mesh_hosts: BTreeMap<String, Vec<(&Object, usize)>> = BTreeMap::new();
    for o in objects {
        match &o.spec {
            Spec::VirtualService(vs) => {
                analyze_vs(ctx, &world, o, vs, &mut referenced_gateways);
                let mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
                if mesh {
                    let mut seen = BTreeSet::new();
                    for (i, h) in vs.hosts.iter().enumerate() {
                        let f = fqdn(h, o.namespace(), suffix);
                        if seen.insert(f.clone()) {
                            mesh_hosts.entry(f).or_default().push((o, i));
                        }
                    }
                }
            }
            Spec::DestinationRule(dr) => analyze_dr(ctx, &world, o, dr),
            Spec::ServiceEntry(se) => analyze_se(ctx, o, se),
            _ => {}
        }
    }

    for (host, list) in &mesh_hosts {
        if list.len() < 2 {
            continue;
        }
        let names: Vec<String> = list.iter().map(|(o, _)| o.key()).collect();
        for (o, i) in list {
            let msg = format!(
                "VirtualServices {} are all bound to the mesh gateway and define host {host}; \
                 which one applies is undefined. Merge them into one VirtualService.",
                names.join(",")
            );
            ctx.report(
                o,
                Level::Error,
                MESH_VS_CONFLICT,
                Stage::Analyze,
                &format!("spec.hosts[{i}]"),
                msg,
            );
        }
    }

    for (key, (o, _)) in &world.gateways {
        if !referenced_gateways.contains(key) {
            ctx.report(
                o,
                Level::Info,
                GATEWAY_UNUSED,
                Stage::Analyze,
                "",
                format!("no VirtualService is bound to Gateway {key}; it serves no routes"),
            );
        }
    }

    for (o, g) in world.gateways.values() {
        analyze_gateway_credentials(ctx, &world, o, g);
    }
    analyze_dr_conflicts(ctx, &world);
    analyze_sidecars(ctx, &world, objects);
    translate(ctx, objects, &world, &resolved);
}

fn report_origin(
    ctx: &mut Ctx,
    objects: &[Object],
    origin: &registry::Origin,
    level: Level,
    code: (&'static str, &'static str),
    field: &str,
    message: String,
) {
    if let Some(o) = objects.iter().find(|o| {
        o.kind == origin.kind
            && o.metadata.namespace == origin.namespace
            && o.metadata.name == origin.name
    }) {
        ctx.report(o, level, code, Stage::Translate, field, message);
    } else {
        ctx.messages.push(Message {
            level,
            code: code.0,
            name: code.1,
            stage: Stage::Translate,
            kind: origin.kind.clone(),
            namespace: origin.namespace.clone(),
            object_name: origin.name.clone(),
            file: origin.file.clone(),
            line: 0,
            field: field.to_string(),
            message,
        });
    }
}

/// The labels of `trellis up`'s ingress gateway (namespace `istio-system`).
const UP_INGRESS_LABELS: &[(&str, &str)] =
    &[("istio", "ingressgateway"), ("app", "istio-ingressgateway")];
const UP_INGRESS_NAMESPACE: &str = "istio-system";

/// The namespace of the gateway workload a Gateway selects (where its
/// credentials live, as in Istio): a local workload's, `istio-system` for
/// `trellis up`'s ingress, else the Gateway's own.
fn gateway_workload_namespace<'a>(world: &'a World<'_>, o: &'a Object, g: &Gateway) -> &'a str {
    let selects = |labels: &BTreeMap<String, String>| {
        !g.selector.is_empty() && g.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    if let Some(w) = world.local_workloads.iter().find(|w| selects(&w.labels)) {
        return &w.namespace;
    }
    let up: BTreeMap<String, String> = UP_INGRESS_LABELS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if selects(&up) {
        UP_INGRESS_NAMESPACE
    } else {
        o.namespace()
    }
}

/// Istio's `gateway/secret` analyzer: every `credentialName` must name a
/// TLS Secret in the gateway workload's namespace.
fn analyze_gateway_credentials(ctx: &mut Ctx, world: &World<'_>, o: &Object, g: &Gateway) {
    let ns = gateway_workload_namespace(world, o, g);
    for (i, server) in g.servers.iter().enumerate() {
        let Some(tls) = &server.tls else {
            continue;
        };
        let mut names: Vec<(String, &str)> = tls
            .credential_name
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| (format!("spec.servers[{i}].tls.credentialName"), c.as_str()))
            .collect();
        names.extend(tls.credential_names.iter().enumerate().map(|(j, c)| {
            (
                format!("spec.servers[{i}].tls.credentialNames[{j}]"),
                c.as_str(),
            )
        }));
        for (field, name) in names {
            let plain = name
                .strip_prefix(pilot::gateway::KUBERNETES_PREFIX)
                .unwrap_or(name);
            let key = if plain.contains('/') {
                plain.to_owned()
            } else {
                format!("{ns}/{plain}")
            };
            let found = world
                .registry
                .credentials
                .get(&key)
                .is_some_and(registry::secret::TlsCredential::has_keypair);
            if !found {
                ctx.report(
                    o,
                    Level::Error,
                    REF_NOT_FOUND,
                    Stage::Analyze,
                    &field,
                    format!(
                        "Referenced credentialName not found: \"{name}\" (no kubernetes.io/tls Secret {key} with tls.crt and tls.key; the server is not served)"
                    ),
                );
            }
        }
    }
}

/// `ns/name` of a gateway reference written in a VirtualService of `ns`.
fn gateway_key(reference: &str, namespace: &str) -> String {
    match reference.split_once('/') {
        Some(_) => reference.to_string(),
        None => format!("{namespace}/{reference}"),
    }
}

fn analyze_vs(
    ctx: &mut Ctx,
    world: &World<'_>,
    o: &Object,
    vs: &VirtualService,
    referenced: &mut BTreeSet<String>,
) {
    let ns = o.namespace();
    let mut gateway_refs: Vec<(String, String)> = vs
        .gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("spec.gateways[{i}]"), g.clone()))
        .collect();
    let mut dests: Vec<(String, &Destination)> = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        for (j, m) in r.matches.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                gateway_refs.push((
                    format!("spec.http[{i}].match[{j}].gateways[{k}]"),
                    g.clone(),
                ));
            }
        }
        for (j, d) in r.route.iter().enumerate() {
            if let Some(d) = &d.destination {
                dests.push((format!("spec.http[{i}].route[{j}].destination"), d));
            }
        }
        if let Some(m) = &r.mirror {
            dests.push((format!("spec.http[{i}].mirror"), m));
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            if let Some(d) = &m.destination {
                dests.push((format!("spec.http[{i}].mirrors[{j}].destination"), d));
            }
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            if let Some(d) = &d.destination {
                dests.push((format!("spec.tls[{i}].route[{j}].destination"), d));
            }
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            if let Some(d) = &d.destination {
                dests.push((format!("spec.tcp[{i}].route[{j}].destination"), d));
            }
        }
    }

    for (path, d) in dests {
        if d.host.is_empty() {
            continue;
        }
        let service = world.service(&d.host, ns);
        match service {
            None => {
                let level = world.missing_host_level(&d.host, Level::Error);
                let mut msg = format!("Referenced host not found: {:?}", d.host);
                if level == Level::Info {
                    msg.push_str(
                        " (not declared in the analyzed files; it may exist in the cluster)",
                    );
                } else if level == Level::Warning {
                    msg.push_str(" (no ServiceEntry in the analyzed files declares it)");
                }
                ctx.report(
                    o,
                    level,
                    REF_NOT_FOUND,
                    Stage::Analyze,
                    &format!("{path}.host"),
                    msg,
                );
            }
            Some(s) => match d.port {
                Some(p) if s.port(p.number).is_none() => {
                    let ports: Vec<String> = s.ports.iter().map(|p| p.number.to_string()).collect();
                    ctx.report(
                        o,
                        Level::Error,
                        REF_NOT_FOUND,
                        Stage::Analyze,
                        &format!("{path}.port.number"),
                        format!(
                            "Referenced host:port not found: \"{}:{}\" (the service has ports {})",
                            d.host,
                            p.number,
                            ports.join(", ")
                        ),
                    );
                }
                // TLS and TCP routes take the port of the listener.
                None if s.ports.len() > 1
                    && path.contains(".route[")
                    && path.starts_with("spec.http") =>
                {
                    let ports: Vec<String> = s.ports.iter().map(|p| p.number.to_string()).collect();
                    ctx.report(
                        o,
                        Level::Error,
                        PORT_REQUIRED,
                        Stage::Analyze,
                        &path,
                        format!(
                            "destination {:?} has several ports [{}]; set destination.port to choose one",
                            d.host,
                            ports.join(" ")
                        ),
                    );
                }
                _ => {}
            },
        }
        if let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty()) {
            let rules = world.rules_for(&d.host, ns);
            if !rules
                .iter()
                .any(|r| r.subsets.iter().any(|s| s.name == subset))
            {
                let extra = if rules.is_empty() {
                    " (no DestinationRule for this host)"
                } else {
                    ""
                };
                ctx.report(
                    o,
                    Level::Error,
                    REF_NOT_FOUND,
                    Stage::Analyze,
                    &format!("{path}.subset"),
                    format!(
                        "Referenced host+subset in destinationrule not found: \"{}+{subset}\"{extra}",
                        d.host
                    ),
                );
            }
        }
    }

    for (path, g) in gateway_refs {
        if g == "mesh" {
            continue;
        }
        let key = gateway_key(&g, ns);
        referenced.insert(key.clone());
        let Some((_, gw)) = world.gateways.get(&key) else {
            ctx.report(
                o,
                Level::Error,
                REF_NOT_FOUND,
                Stage::Analyze,
                &path,
                format!("Referenced gateway not found: {g:?}"),
            );
            continue;
        };
        if !path.starts_with("spec.gateways") {
            continue;
        }
        let gw_ns = key.split('/').next().unwrap_or_default();
        let served: Vec<&str> = gw
            .servers
            .iter()
            .flat_map(|s| s.hosts.iter())
            .filter_map(|h| match h.split_once('/') {
                Some((hns, host)) => {
                    (hns == "*" || hns == ns || (hns == "." && ns == gw_ns)).then_some(host)
                }
                None => Some(h.as_str()),
            })
            .collect();
        let missing: Vec<&str> = vs
            .hosts
            .iter()
            .map(String::as_str)
            .filter(|h| !served.iter().any(|s| hosts_overlap(s, h)))
            .collect();
        if !missing.is_empty() {
            ctx.report(
                o,
                Level::Warning,
                HOST_NOT_IN_GATEWAY,
                Stage::Analyze,
                "spec.hosts",
                format!(
                    "host(s) {missing:?} of VirtualService {} are not served by Gateway {key}",
                    o.key()
                ),
            );
        }
    }
}

fn analyze_dr(ctx: &mut Ctx, world: &World<'_>, o: &Object, dr: &DestinationRule) {
    if dr.host.is_empty() || dr.host.starts_with('*') {
        return;
    }
    let Some(service) = world.service(&dr.host, o.namespace()) else {
        let level = world.missing_host_level(&dr.host, Level::Warning);
        ctx.report(
            o,
            level,
            UNKNOWN_DR_HOST,
            Stage::Analyze,
            "spec.host",
            format!(
                "host {} of the DestinationRule matches no service{}",
                dr.host,
                if level == Level::Info {
                    " in the analyzed files (it may exist in the cluster)"
                } else {
                    ""
                }
            ),
        );
        return;
    };
    // Subsets can only be checked against workloads the input declares.
    if !world.platform_known || world.local_workloads.is_empty() {
        return;
    }
    for (i, subset) in dr.subsets.iter().enumerate() {
        let any = service.ports.iter().any(|p| {
            world
                .registry
                .endpoints(&service.hostname, p.number, &subset.labels)
                .next()
                .is_some()
        });
        let has_static = world
            .registry
            .endpoints
            .keys()
            .any(|(h, _)| h == &service.hostname);
        if !any && has_static {
            ctx.report(
                o,
                Level::Error,
                SUBSET_NO_PODS,
                Stage::Analyze,
                &format!("spec.subsets[{i}].labels"),
                format!(
                    "subset {} selects no workload of {}; requests routed to it fail with 503 UH",
                    subset.name, service.hostname
                ),
            );
        }
    }
}

fn analyze_dr_conflicts(ctx: &mut Ctx, world: &World<'_>) {
    let suffix = &world.opts.domain_suffix;
    let mut groups: BTreeMap<(String, String), Vec<(&Object, &DestinationRule)>> = BTreeMap::new();
    for (o, dr) in &world.rules {
        if dr.workload_selector.is_some() || dr.host.is_empty() {
            continue;
        }
        groups
            .entry((
                o.namespace().to_string(),
                fqdn(&dr.host, o.namespace(), suffix),
            ))
            .or_default()
            .push((o, dr));
    }
    for ((_, host), list) in groups {
        if list.len() < 2 {
            continue;
        }
        let names: Vec<String> = list.iter().map(|(o, _)| o.key()).collect();
        for (idx, (o, dr)) in list.iter().enumerate() {
            for (i, s) in dr.subsets.iter().enumerate() {
                let clash = list.iter().enumerate().any(|(j, (_, other))| {
                    j != idx && other.subsets.iter().any(|t| t.name == s.name)
                });
                if clash {
                    ctx.report(
                        o,
                        Level::Warning,
                        DR_CONFLICT,
                        Stage::Analyze,
                        &format!("spec.subsets[{i}].name"),
                        format!(
                            "DestinationRules {} for host {host} all define subset {}; only the oldest definition is used",
                            names.join(","),
                            s.name
                        ),
                    );
                }
            }
            let policies = list
                .iter()
                .filter(|(_, d)| d.traffic_policy.is_some())
                .count();
            if dr.traffic_policy.is_some() && policies > 1 {
                ctx.report(
                    o,
                    Level::Warning,
                    DR_CONFLICT,
                    Stage::Analyze,
                    "spec.trafficPolicy",
                    format!(
                        "DestinationRules {} for host {host} each set a top-level trafficPolicy; only the oldest one applies",
                        names.join(",")
                    ),
                );
            }
        }
    }
}

fn analyze_se(ctx: &mut Ctx, o: &Object, se: &ServiceEntry) {
    for (i, p) in se.ports.iter().enumerate() {
        let proto = p.protocol.as_str();
        if !proto.is_empty() && registry::protocol::parse_protocol(proto).is_none() {
            ctx.report(
                o,
                Level::Warning,
                UNKNOWN_PROTOCOL,
                Stage::Analyze,
                &format!("spec.ports[{i}].protocol"),
                format!("protocol {proto:?} is not one Istio knows; the port is treated as TCP"),
            );
        }
        if se.addresses.is_empty() && (proto.is_empty() || proto.eq_ignore_ascii_case("TCP")) {
            ctx.report(
                o,
                Level::Warning,
                SE_ADDRESSES,
                Stage::Analyze,
                &format!("spec.ports[{i}]"),
                format!(
                    "port {} is {} but the ServiceEntry has no addresses: TCP traffic cannot be told apart by host, set spec.addresses",
                    p.number,
                    if proto.is_empty() { "of unset protocol (TCP)" } else { "TCP" }
                ),
            );
        }
    }
}

fn analyze_sidecars(ctx: &mut Ctx, world: &World<'_>, objects: &[Object]) {
    let mut namespace_wide: BTreeMap<&str, Vec<&Object>> = BTreeMap::new();
    for o in objects {
        let Spec::Sidecar(sc) = &o.spec else { continue };
        let selector = sc
            .workload_selector
            .as_ref()
            .map(|s| &s.labels)
            .filter(|l| !l.is_empty());
        let Some(labels) = selector else {
            namespace_wide.entry(o.namespace()).or_default().push(o);
            continue;
        };
        if !world.platform_known || world.local_workloads.is_empty() {
            continue;
        }
        let matched = world.local_workloads.iter().any(|w| {
            w.namespace == o.namespace() && labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
        });
        if !matched {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            ctx.report(
                o,
                Level::Warning,
                NO_WORKLOADS,
                Stage::Analyze,
                "spec.workloadSelector.labels",
                format!(
                    "no workload in namespace {} matches labels {}",
                    o.namespace(),
                    l.join(",")
                ),
            );
        }
    }
    for (ns, list) in namespace_wide {
        if list.len() < 2 {
            continue;
        }
        let names: Vec<String> = list.iter().map(|o| o.name().to_string()).collect();
        for o in list {
            ctx.report(
                o,
                Level::Error,
                MULTIPLE_SIDECARS,
                Stage::Analyze,
                "",
                format!(
                    "Sidecars {names:?} in namespace {ns:?} have no workloadSelector; which one applies is undefined"
                ),
            );
        }
    }
}

/// Runs the translator for every proxy the input implies and reports its
/// diagnostics.
fn translate(
    ctx: &mut Ctx,
    objects: &[Object],
    world: &World<'_>,
    resolved: &[registry::ResolvedWorkload],
) {
    let pc = pilot::PushContext::with_domain_suffix(
        objects.to_vec(),
        Arc::new(world.registry.clone()),
        world.opts.mesh.clone(),
        &world.opts.domain_suffix,
    );
    let mut nodes = Vec::new();
    for w in resolved {
        let labels: Vec<(&str, &str)> = w
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let local = pilot::LocalPorts {
            outbound: Some(u32::from(w.outbound_port)),
            inbound: w
                .inbound_ports
                .iter()
                .map(|(k, v)| (*k, u32::from(*v)))
                .collect(),
            app: w
                .app_ports
                .iter()
                .map(|(k, v)| (*k, u32::from(*v)))
                .collect(),
        };
        let mut node = pilot::ProxyNode::sidecar(&w.namespace, &labels, Some(local));
        node.workload_name = w.name.clone();
        nodes.push(node);
    }
    // A plain sidecar in every namespace that holds routing config, so that
    // VirtualServices and DestinationRules are translated even without
    // workloads.
    let namespaces: BTreeSet<&str> = objects
        .iter()
        .filter(|o| {
            matches!(
                o.spec,
                Spec::VirtualService(_)
                    | Spec::DestinationRule(_)
                    | Spec::ServiceEntry(_)
                    | Spec::Sidecar(_)
            )
        })
        .map(Object::namespace)
        .collect();
    for ns in namespaces {
        if !resolved.iter().any(|w| w.namespace == ns) {
            nodes.push(pilot::ProxyNode::sidecar(ns, &[], None));
        }
    }
    for (o, g) in world.gateways.values() {
        let mut node =
            pilot::ProxyNode::sidecar(gateway_workload_namespace(world, o, g), &[], None);
        node.kind = pilot::NodeKind::Router;
        node.id = format!(
            "router~127.0.0.1~{}.{}~{}.svc.{}",
            o.name(),
            o.namespace(),
            o.namespace(),
            world.opts.domain_suffix
        );
        node.labels = g.selector.clone();
        nodes.push(node);
    }
    let mut seen = BTreeSet::new();
    for node in &nodes {
        let generated = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pilot::generate(node, &pc)
        })) {
            Ok(Ok(g)) => g,
            Ok(Err(_)) => continue,
            Err(_) => {
                ctx.messages.push(Message {
                    level: Level::Error,
                    code: "IST0001",
                    name: "InternalError",
                    stage: Stage::Translate,
                    kind: String::new(),
                    namespace: node.namespace.clone(),
                    object_name: String::new(),
                    file: String::new(),
                    line: 0,
                    field: String::new(),
                    message: format!("the translator failed for proxy {}", node.id),
                });
                continue;
            }
        };
        for d in generated.diagnostics {
            if !seen.insert((d.object.clone(), d.field.clone(), d.message.clone())) {
                continue;
            }
            let target = d.object.split_once(' ').and_then(|(kind, key)| {
                let (ns, name) = key.split_once('/')?;
                objects
                    .iter()
                    .find(|o| o.kind == kind && o.namespace() == ns && o.name() == name)
            });
            match target {
                Some(o) => ctx.report(
                    o,
                    Level::Warning,
                    TRANSLATION,
                    Stage::Translate,
                    &d.field,
                    d.message,
                ),
                None => ctx.messages.push(Message {
                    level: Level::Warning,
                    code: TRANSLATION.0,
                    name: TRANSLATION.1,
                    stage: Stage::Translate,
                    kind: String::new(),
                    namespace: String::new(),
                    object_name: String::new(),
                    file: String::new(),
                    line: 0,
                    field: d.field,
                    message: if d.object.is_empty() {
                        d.message
                    } else {
                        format!("{}: {}", d.object, d.message)
                    },
                }),
            }
        }
    }
}
