//! Envoy access logs (`access_log` on the HTTP connection manager, the TCP
//! proxy and listeners): filters decide whether a finished stream or
//! connection is logged, a format renders it, and a sink writes the line.
//!
//! Writing never blocks the data path: each sink hands lines to its own
//! writer thread through a bounded queue and drops (and counts) lines when
//! the queue is full, as Envoy's buffered file writer would rather lose lines
//! than stall a worker.

mod cel;
mod filter;
pub mod format;
pub mod time;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog as AccessLogProto, access_log};
use envoy_types::pb::envoy::config::core::v3::{
    SubstitutionFormatString, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use http::HeaderMap;
use prost::Message;

use crate::error::{ConfigError, ErrorScope};
use crate::http::flags::ResponseFlags;
use crate::listener::peer::PeerIdentity;
use crate::rbac::DynamicMetadata;

use filter::Filter;
use format::{DEFAULT_FORMAT, JsonNode, Template};

const FILE_TYPE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// Lines a sink queues before it starts dropping.
const QUEUE: usize = 16 * 1024;

/// Everything a finished HTTP stream or TCP connection can log.
#[derive(Debug, Clone)]
pub struct Entry {
    pub start_time: SystemTime,
    pub request_headers: Option<HeaderMap>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<&'static str>,
    pub response_headers: Option<HeaderMap>,
    pub response_trailers: Option<HeaderMap>,
    pub protocol: Option<&'static str>,
    pub response_code: Option<u16>,
    pub response_code_details: Option<String>,
    pub flags: ResponseFlags,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// gRPC messages in the request and response bodies (gRPC only).
    pub grpc_request_messages: u64,
    pub grpc_response_messages: u64,
    pub duration: Option<Duration>,
    pub request_duration: Option<Duration>,
    pub response_duration: Option<Duration>,
    pub response_tx_duration: Option<Duration>,
    pub upstream_host: Option<String>,
    pub upstream_cluster: Option<String>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_transport_failure_reason: Option<String>,
    pub upstream_wire_sent: u64,
    pub upstream_wire_received: u64,
    pub attempt_count: u32,
    pub downstream_remote: SocketAddr,
    pub downstream_direct_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub peer: Option<Arc<PeerIdentity>>,
    /// The peer's workload from the metadata exchange (metrics labels).
    pub peer_workload: Option<Arc<crate::metrics::Workload>>,
    pub tls_version: Option<&'static str>,
    pub requested_server_name: Option<String>,
    pub route_name: Option<String>,
    pub connection_id: u64,
    pub dynamic_metadata: Option<DynamicMetadata>,
    /// The active span's trace id (`%TRACE_ID%`), when the request is traced.
    pub trace_id: Option<String>,
}

impl Entry {
    /// A connection-level entry (TCP proxy, listener): no HTTP fields.
    pub fn connection(remote: SocketAddr, local: SocketAddr, start_time: SystemTime) -> Self {
        Self {
            start_time,
            request_headers: None,
            method: None,
            path: None,
            authority: None,
            scheme: None,
            response_headers: None,
            response_trailers: None,
            protocol: None,
            response_code: None,
            response_code_details: None,
            flags: ResponseFlags::default(),
            bytes_received: 0,
            bytes_sent: 0,
            grpc_request_messages: 0,
            grpc_response_messages: 0,
            duration: None,
            request_duration: None,
            response_duration: None,
            response_tx_duration: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local: None,
            upstream_transport_failure_reason: None,
            upstream_wire_sent: 0,
            upstream_wire_received: 0,
            attempt_count: 0,
            downstream_remote: remote,
            downstream_direct_remote: remote,
            downstream_local: local,
            peer: None,
            peer_workload: None,
            tls_version: None,
            requested_server_name: None,
            route_name: None,
            connection_id: 0,
            dynamic_metadata: None,
            trace_id: None,
        }
    }

    /// Request pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`).
    pub(crate) fn pseudo(&self, name: &str) -> Option<&str> {
        match name {
            ":method" => self.method.as_deref(),
            ":path" => self.path.as_deref(),
            ":authority" => self.authority.as_deref(),
            ":scheme" => self.scheme,
            _ => None,
        }
    }
}

/// Envoy's connection ids: one process-wide counter.
pub fn next_connection_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    })
}

#[derive(Debug)]
enum Body {
    Text(Template),
    Json(JsonNode),
}

/// One configured access log.
#[derive(Debug)]
pub struct AccessLog {
    filter: Option<Filter>,
    body: Body,
    omit_empty: bool,
    sink: Arc<Sink>,
}

impl AccessLog {
    /// Filters, formats and queues `entry`.
    pub fn log(&self, entry: &Entry) {
        if let Some(f) = &self.filter
            && !f.matches(entry)
        {
            return;
        }
        let line = match &self.body {
            Body::Text(t) => t.format_text(entry, self.omit_empty).into_bytes(),
            Body::Json(j) => {
                let mut s = j.format(entry, self.omit_empty).to_string();
                s.push('\n');
                s.into_bytes()
            }
        };
        self.sink.write(line);
    }
}

/// Logs `entry` to every log in `logs`.
pub fn log_all(logs: &[AccessLog], entry: &Entry) {
    for l in logs {
        l.log(entry);
    }
}

/// Compiles a repeated `access_log` field.
pub fn compile_list(
    logs: &[AccessLogProto],
    scope: &ErrorScope,
    field: &str,
) -> Result<Vec<AccessLog>, ConfigError> {
    logs.iter()
        .enumerate()
        .map(|(i, l)| compile(l, scope, &format!("{field}[{i}]")))
        .collect()
}

fn compile(l: &AccessLogProto, scope: &ErrorScope, field: &str) -> Result<AccessLog, ConfigError> {
    let filter = l
        .filter
        .as_ref()
        .map(Filter::compile)
        .transpose()
        .map_err(|(at, m)| scope.err(format!("{field}.filter{at}"), m))?;
    let any = match &l.config_type {
        Some(access_log::ConfigType::TypedConfig(any)) => any,
        None => return Err(scope.err(format!("{field}.typed_config"), "is required")),
    };
    let cfield = format!("{field}.typed_config");
    let err = |sub: &str, m: String| {
        let at = if sub.is_empty() {
            cfield.clone()
        } else {
            format!("{cfield}.{sub}")
        };
        scope.err(at, m)
    };
    let (format, sink) = match any.type_url.as_str() {
        FILE_TYPE => {
            let f = FileAccessLog::decode(any.value.as_slice())
                .map_err(|e| err("", format!("invalid FileAccessLog: {e}")))?;
            if f.path.is_empty() {
                return Err(err("path", "must not be empty".into()));
            }
            #[allow(deprecated)]
            let format = match f.access_log_format {
                None => Format::default(),
                Some(file_access_log::AccessLogFormat::Format(s)) if s.is_empty() => {
                    Format::default()
                }
                Some(file_access_log::AccessLogFormat::Format(s)) => {
                    Format::text(&s, false).map_err(|m| err("format", m))?
                }
                Some(file_access_log::AccessLogFormat::JsonFormat(s)) => {
                    Format::json(&s, false).map_err(|m| err("json_format", m))?
                }
                Some(file_access_log::AccessLogFormat::TypedJsonFormat(s)) => {
                    Format::json(&s, false).map_err(|m| err("typed_json_format", m))?
                }
                Some(file_access_log::AccessLogFormat::LogFormat(s)) => {
                    Format::compile(&s).map_err(|(at, m)| err(&format!("log_format{at}"), m))?
                }
            };
            (format, Sink::file(&f.path))
        }
        STDOUT_TYPE => {
            let s = StdoutAccessLog::decode(any.value.as_slice())
                .map_err(|e| err("", format!("invalid StdoutAccessLog: {e}")))?;
            let format = match s.access_log_format {
                Some(stdout_access_log::AccessLogFormat::LogFormat(f)) => {
                    Format::compile(&f).map_err(|(at, m)| err(&format!("log_format{at}"), m))?
                }
                None => Format::default(),
            };
            (format, Sink::stream(Stream::Stdout))
        }
        STDERR_TYPE => {
            let s = StderrAccessLog::decode(any.value.as_slice())
                .map_err(|e| err("", format!("invalid StderrAccessLog: {e}")))?;
            let format = match s.access_log_format {
                Some(stderr_access_log::AccessLogFormat::LogFormat(f)) => {
                    Format::compile(&f).map_err(|(at, m)| err(&format!("log_format{at}"), m))?
                }
                None => Format::default(),
            };
            (format, Sink::stream(Stream::Stderr))
        }
        other => {
            return Err(err(
                "",
                format!(
                    "unsupported access logger type '{other}' (access log '{}')",
                    l.name
                ),
            ));
        }
    };
    Ok(AccessLog {
        filter,
        body: format.body,
        omit_empty: format.omit_empty,
        sink,
    })
}

struct Format {
    body: Body,
    omit_empty: bool,
}

impl Default for Format {
    fn default() -> Self {
        Self {
            // The default format always parses; `empty` only keeps this panic-free.
            body: Body::Text(Template::parse(DEFAULT_FORMAT).unwrap_or_else(|_| Template::empty())),
            omit_empty: false,
        }
    }
}

impl Format {
    fn text(s: &str, omit_empty: bool) -> Result<Self, String> {
        Ok(Self {
            body: Body::Text(Template::parse(s)?),
            omit_empty,
        })
    }

    fn json(
        s: &envoy_types::pb::google::protobuf::Struct,
        omit_empty: bool,
    ) -> Result<Self, String> {
        Ok(Self {
            body: Body::Json(JsonNode::compile(s)?),
            omit_empty,
        })
    }

    /// A `SubstitutionFormatString`; errors carry the sub-field path
    /// (`.text_format_source.inline_string`...).
    fn compile(s: &SubstitutionFormatString) -> Result<Self, (String, String)> {
        if !s.formatters.is_empty() {
            return Err((
                ".formatters".into(),
                "formatter extensions are not supported".into(),
            ));
        }
        let omit = s.omit_empty_values;
        #[allow(deprecated)]
        match &s.format {
            Some(substitution_format_string::Format::TextFormat(t)) => {
                Self::text(t, omit).map_err(|m| (".text_format".into(), m))
            }
            Some(substitution_format_string::Format::JsonFormat(j)) => {
                Self::json(j, omit).map_err(|m| (".json_format".into(), m))
            }
            Some(substitution_format_string::Format::TextFormatSource(ds)) => {
                let text = match &ds.specifier {
                    Some(data_source::Specifier::InlineString(s)) => s.clone(),
                    Some(data_source::Specifier::InlineBytes(b)) => {
                        String::from_utf8_lossy(b).into_owned()
                    }
                    Some(data_source::Specifier::Filename(f)) => std::fs::read_to_string(f)
                        .map_err(|e| {
                            (
                                ".text_format_source.filename".to_string(),
                                format!("cannot read {f}: {e}"),
                            )
                        })?,
                    Some(data_source::Specifier::EnvironmentVariable(v)) => std::env::var(v)
                        .map_err(|_| {
                            (
                                ".text_format_source.environment_variable".to_string(),
                                format!("environment variable {v} is not set"),
                            )
                        })?,
                    None => {
                        return Err((
                            ".text_format_source".into(),
                            "a data source is required".into(),
                        ));
                    }
                };
                Self::text(&text, omit).map_err(|m| (".text_format_source".into(), m))
            }
            // No format at all: Envoy's default text format.
            None => Ok(Self {
                omit_empty: omit,
                ..Self::default()
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

enum Msg {
    Line(Vec<u8>),
    Reopen,
}

/// A writer thread fed through a bounded queue.
pub struct Sink {
    name: String,
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("name", &self.name).finish()
    }
}

fn sinks() -> &'static Mutex<HashMap<String, Arc<Sink>>> {
    static SINKS: OnceLock<Mutex<HashMap<String, Arc<Sink>>>> = OnceLock::new();
    SINKS.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Sink {
    /// The shared sink for `path` (one writer per file, however many logs use it).
    fn file(path: &str) -> Arc<Self> {
        Self::shared(path, Target::File(path.to_string()))
    }

    fn stream(s: Stream) -> Arc<Self> {
        let key = match s {
            Stream::Stdout => "<stdout>",
            Stream::Stderr => "<stderr>",
        };
        Self::shared(key, Target::Stream(s))
    }

    fn shared(key: &str, target: Target) -> Arc<Self> {
        let mut map = sinks().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(key) {
            return Arc::clone(s);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let name = key.to_string();
        let thread_target = target;
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(thread_target, rx));
        if let Err(e) = spawned {
            tracing::warn!(sink = %name, error = %e, "cannot start the access log writer");
        }
        let sink = Arc::new(Self {
            name,
            tx,
            dropped: AtomicU64::new(0),
        });
        map.insert(key.to_string(), Arc::clone(&sink));
        sink
    }

    fn write(&self, line: Vec<u8>) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Lines dropped because a sink's queue was full, over all sinks.
pub fn dropped_lines() -> u64 {
    let map = sinks().lock().unwrap_or_else(|p| p.into_inner());
    map.values()
        .map(|s| s.dropped.load(Ordering::Relaxed))
        .sum()
}

/// Reopens every access log file (after log rotation), like Envoy's
/// `POST /reopen_logs`.
pub fn reopen_all() {
    let map = sinks().lock().unwrap_or_else(|p| p.into_inner());
    for s in map.values() {
        let _ = s.tx.try_send(Msg::Reopen);
    }
}

enum Target {
    File(String),
    Stream(Stream),
}

fn open(path: &str) -> Option<std::fs::File> {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(%path, error = %e, "cannot open access log file");
            None
        }
    }
}

fn writer(target: Target, rx: Receiver<Msg>) {
    let mut out: Option<Box<dyn Write>> = match &target {
        Target::File(p) => open(p).map(|f| Box::new(std::io::BufWriter::new(f)) as Box<dyn Write>),
        Target::Stream(Stream::Stdout) => Some(Box::new(std::io::stdout())),
        Target::Stream(Stream::Stderr) => Some(Box::new(std::io::stderr())),
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(l) => {
                    if let Some(w) = out.as_mut() {
                        let _ = w.write_all(&l);
                    }
                }
                Msg::Reopen => {
                    if let Target::File(p) = &target {
                        if let Some(w) = out.as_mut() {
                            let _ = w.flush();
                        }
                        out =
                            open(p).map(|f| Box::new(std::io::BufWriter::new(f)) as Box<dyn Write>);
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        // The queue is empty: flush what was written.
        if let Some(w) = out.as_mut() {
            let _ = w.flush();
        }
    }
}

#[cfg(test)]
mod tests;
