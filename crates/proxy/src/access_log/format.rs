//! Envoy's substitution format strings for access logs: text
//! (`%REQ(:METHOD)% %RESPONSE_CODE%...`) and JSON (`json_format` structs),
//! compiled once and evaluated against a finished [`Entry`].

use std::time::Duration;

use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use serde_json::{Map, Value};

use super::Entry;
use super::time;

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Operators Envoy knows that have no value in this proxy: accepted, always
/// missing (`-` / null).
const ALWAYS_MISSING: &[&str] = &[
    "CONNECTION_TERMINATION_DETAILS",
    "VIRTUAL_CLUSTER_NAME",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PROTOCOL",
    "UPSTREAM_FILTER_STATE",
    "LOCAL_REPLY_BODY",
    "UPSTREAM_CONNECTION_ID",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    ResponseFlagsLong,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    ResponseTxDuration,
    UpstreamHost,
    UpstreamHostWithoutPort,
    UpstreamRemotePort,
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamLocalAddressWithoutPort,
    UpstreamTransportFailureReason,
    UpstreamRequestAttemptCount,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamRemotePort,
    DownstreamDirectRemoteAddress,
    DownstreamDirectRemoteAddressWithoutPort,
    DownstreamDirectRemotePort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    DownstreamPeerUriSan,
    DownstreamPeerDnsSan,
    DownstreamPeerSubject,
    DownstreamTlsVersion,
    RequestedServerName,
    RouteName,
    TraceId,
    ConnectionId,
    Hostname,
    StreamId,
    UpstreamWireBytesSent,
    UpstreamWireBytesReceived,
    DownstreamWireBytesSent,
    DownstreamWireBytesReceived,
    Missing,
}

fn simple_op(name: &str) -> Option<Op> {
    Some(match name {
        "PROTOCOL" => Op::Protocol,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_FLAGS_LONG" => Op::ResponseFlagsLong,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "REQUEST_DURATION" => Op::RequestDuration,
        "RESPONSE_DURATION" => Op::ResponseDuration,
        "RESPONSE_TX_DURATION" => Op::ResponseTxDuration,
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => Op::UpstreamHost,
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::UpstreamHostWithoutPort,
        "UPSTREAM_REMOTE_PORT" => Op::UpstreamRemotePort,
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Op::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::UpstreamLocalAddressWithoutPort,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Op::UpstreamRequestAttemptCount,
        "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_REMOTE_PORT" => Op::DownstreamRemotePort,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Op::DownstreamDirectRemoteAddress,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Op::DownstreamDirectRemoteAddressWithoutPort
        }
        "DOWNSTREAM_DIRECT_REMOTE_PORT" => Op::DownstreamDirectRemotePort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressWithoutPort,
        "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
        "DOWNSTREAM_PEER_URI_SAN" => Op::DownstreamPeerUriSan,
        "DOWNSTREAM_PEER_DNS_SAN" => Op::DownstreamPeerDnsSan,
        "DOWNSTREAM_PEER_SUBJECT" => Op::DownstreamPeerSubject,
        "DOWNSTREAM_TLS_VERSION" => Op::DownstreamTlsVersion,
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "ROUTE_NAME" => Op::RouteName,
        "TRACE_ID" => Op::TraceId,
        "CONNECTION_ID" => Op::ConnectionId,
        "HOSTNAME" => Op::Hostname,
        "STREAM_ID" => Op::StreamId,
        "UPSTREAM_WIRE_BYTES_SENT" => Op::UpstreamWireBytesSent,
        "UPSTREAM_WIRE_BYTES_RECEIVED" => Op::UpstreamWireBytesReceived,
        "DOWNSTREAM_WIRE_BYTES_SENT" => Op::DownstreamWireBytesSent,
        "DOWNSTREAM_WIRE_BYTES_RECEIVED" => Op::DownstreamWireBytesReceived,
        other if ALWAYS_MISSING.contains(&other) => Op::Missing,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderSource {
    Request,
    Response,
    Trailer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Simple(Op),
    StartTime(String),
    Header {
        source: HeaderSource,
        main: String,
        alt: Option<String>,
    },
    DynamicMetadata {
        namespace: String,
        path: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Command {
        command: Command,
        max_len: Option<usize>,
    },
}

/// An evaluated operator: Envoy types numbers as JSON numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    Num(u64),
    Json(Value),
    Missing,
}

/// A compiled format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

impl Template {
    pub fn empty() -> Self {
        Self {
            segments: Vec::new(),
        }
    }

    /// Parses a format string as Envoy's `SubstitutionFormatParser` does;
    /// errors say what is wrong (the caller names the field).
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut lit = String::new();
        let bytes = input.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                let ch_len = input[i..].chars().next().map_or(1, char::len_utf8);
                lit.push_str(&input[i..i + ch_len]);
                i += ch_len;
                continue;
            }
            if bytes.get(i + 1) == Some(&b'%') {
                lit.push('%');
                i += 2;
                continue;
            }
            let (segment, next) = parse_command(input, i)?;
            if !lit.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut lit)));
            }
            segments.push(segment);
            i = next;
        }
        if !lit.is_empty() {
            segments.push(Segment::Literal(lit));
        }
        Ok(Self { segments })
    }

    /// The text form: missing values print `-` (or nothing with `omit_empty`).
    pub fn format_text(&self, e: &Entry, omit_empty: bool) -> String {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Command { command, max_len } => {
                    match eval(command, *max_len, e) {
                        Val::Str(v) => out.push_str(&v),
                        Val::Num(n) => out.push_str(&n.to_string()),
                        Val::Json(v) => out.push_str(&json_text(&v)),
                        Val::Missing if omit_empty => {}
                        Val::Missing => out.push('-'),
                    };
                }
            }
        }
        out
    }

    /// The JSON form of one value: a lone operator keeps its type (number,
    /// string, null); anything with literals is a string.
    fn format_json(&self, e: &Entry) -> Value {
        if let [Segment::Command { command, max_len }] = self.segments.as_slice() {
            return match eval(command, *max_len, e) {
                Val::Str(s) => Value::String(s),
                Val::Num(n) => Value::from(n),
                Val::Json(v) => v,
                Val::Missing => Value::Null,
            };
        }
        Value::String(self.format_text(e, false))
    }
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_command(input: &str, start: usize) -> Result<(Segment, usize), String> {
    let bytes = input.as_bytes();
    let bad = || {
        format!("Incorrect configuration: {input}. Couldn't find valid command at position {start}")
    };
    let mut i = start + 1;
    while i < bytes.len()
        && (bytes[i].is_ascii_uppercase() || bytes[i].is_ascii_digit() || bytes[i] == b'_')
    {
        i += 1;
    }
    if i == start + 1 {
        return Err(bad());
    }
    let name = &input[start + 1..i];
    let mut arg = None;
    if bytes.get(i) == Some(&b'(') {
        let close = input[i..].find(')').ok_or_else(bad)? + i;
        arg = Some(&input[i + 1..close]);
        i = close + 1;
    }
    let mut max_len = None;
    if bytes.get(i) == Some(&b':') {
        let digits_start = i + 1;
        let mut j = digits_start;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        if j == digits_start {
            return Err(bad());
        }
        max_len = Some(input[digits_start..j].parse::<usize>().map_err(|_| bad())?);
        i = j;
    }
    if bytes.get(i) != Some(&b'%') {
        return Err(bad());
    }
    let command = command(name, arg)?;
    if max_len.is_some() && matches!(command, Command::StartTime(_)) {
        return Err(format!("{name} does not support a length parameter"));
    }
    Ok((Segment::Command { command, max_len }, i + 1))
}

fn command(name: &str, arg: Option<&str>) -> Result<Command, String> {
    let header = |source: HeaderSource| -> Result<Command, String> {
        let arg = arg
            .filter(|a| !a.is_empty())
            .ok_or_else(|| format!("{name} requires a header name: {name}(header-name)"))?;
        let mut parts = arg.splitn(3, '?');
        let main = parts.next().unwrap_or_default().to_ascii_lowercase();
        let alt = parts.next().map(str::to_ascii_lowercase);
        if parts.next().is_some() {
            return Err(format!(
                "More than 1 alternative header specified in token: {arg}"
            ));
        }
        if main.is_empty() || alt.as_deref() == Some("") {
            return Err(format!(
                "Invalid header configuration. Format string contains empty header name: {arg}"
            ));
        }
        Ok(Command::Header { source, main, alt })
    };
    match name {
        "START_TIME" => Ok(Command::StartTime(
            arg.filter(|a| !a.is_empty())
                .unwrap_or(time::DEFAULT)
                .to_string(),
        )),
        "REQ" => header(HeaderSource::Request),
        "RESP" => header(HeaderSource::Response),
        "TRAILER" => header(HeaderSource::Trailer),
        "DYNAMIC_METADATA" => {
            let arg = arg.filter(|a| !a.is_empty()).ok_or_else(|| {
                "DYNAMIC_METADATA requires parameters: DYNAMIC_METADATA(namespace:key...)"
                    .to_string()
            })?;
            let mut parts = arg.split(':').map(str::to_string);
            let namespace = parts.next().unwrap_or_default();
            Ok(Command::DynamicMetadata {
                namespace,
                path: parts.collect(),
            })
        }
        _ => match simple_op(name) {
            Some(op) if arg.is_none() => Ok(Command::Simple(op)),
            Some(_) => Ok(Command::Simple(Op::Missing)),
            None => Err(format!("Not supported field in StreamInfo: {name}")),
        },
    }
}

fn ms(d: Option<Duration>) -> Val {
    d.map_or(Val::Missing, |d| Val::Num(d.as_millis() as u64))
}

fn opt(s: Option<&str>) -> Val {
    match s {
        Some(s) if !s.is_empty() => Val::Str(s.to_string()),
        _ => Val::Missing,
    }
}

fn without_port(addr: &str) -> String {
    match addr.rfind(':') {
        Some(i) if !addr[i..].contains(']') => addr[..i]
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        _ => addr.to_string(),
    }
}

fn port_of(addr: &str) -> Val {
    addr.rfind(':')
        .and_then(|i| addr[i + 1..].parse::<u64>().ok())
        .map_or(Val::Missing, Val::Num)
}

fn eval(command: &Command, max_len: Option<usize>, e: &Entry) -> Val {
    let v = match command {
        Command::StartTime(f) => Val::Str(time::format(e.start_time, f)),
        Command::Header { source, main, alt } => {
            let headers = match source {
                HeaderSource::Request => e.request_headers.as_ref(),
                HeaderSource::Response => e.response_headers.as_ref(),
                HeaderSource::Trailer => e.response_trailers.as_ref(),
            };
            let get = |name: &str| -> Option<String> {
                if *source == HeaderSource::Request && name.starts_with(':') {
                    return e.pseudo(name).map(str::to_string);
                }
                headers?
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            match get(main).or_else(|| alt.as_deref().and_then(get)) {
                Some(v) => Val::Str(v),
                None => Val::Missing,
            }
        }
        Command::DynamicMetadata { namespace, path } => {
            let mut cur = e
                .dynamic_metadata
                .as_ref()
                .and_then(|m| m.namespace(namespace))
                .map(|m| Value::Object(m.clone()));
            for key in path {
                cur = cur.and_then(|v| v.get(key).cloned());
            }
            match cur {
                None | Some(Value::Null) => Val::Missing,
                Some(v) => Val::Json(v),
            }
        }
        Command::Simple(op) => simple(*op, e),
    };
    match (v, max_len) {
        (Val::Str(mut s), Some(n)) => {
            if s.len() > n {
                let mut cut = n;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            Val::Str(s)
        }
        (Val::Json(Value::String(mut s)), Some(n)) if s.len() > n => {
            let mut cut = n;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            Val::Json(Value::String(s))
        }
        (v, _) => v,
    }
}

fn simple(op: Op, e: &Entry) -> Val {
    match op {
        Op::Protocol => opt(e.protocol),
        Op::ResponseCode => Val::Num(u64::from(e.response_code.unwrap_or(0))),
        Op::ResponseCodeDetails => opt(e.response_code_details.as_deref()),
        Op::ResponseFlags => Val::Str(e.flags.to_string()),
        Op::ResponseFlagsLong => Val::Str(e.flags.long_string()),
        Op::BytesReceived => Val::Num(e.bytes_received),
        Op::BytesSent => Val::Num(e.bytes_sent),
        Op::Duration => ms(e.duration),
        Op::RequestDuration => ms(e.request_duration),
        Op::ResponseDuration => ms(e.response_duration),
        Op::ResponseTxDuration => ms(e.response_tx_duration),
        Op::UpstreamHost => opt(e.upstream_host.as_deref()),
        Op::UpstreamHostWithoutPort => opt(e.upstream_host.as_deref().map(without_port).as_deref()),
        Op::UpstreamRemotePort => e.upstream_host.as_deref().map_or(Val::Missing, port_of),
        Op::UpstreamCluster => opt(e.upstream_cluster.as_deref()),
        Op::UpstreamLocalAddress => opt(e.upstream_local.map(|a| a.to_string()).as_deref()),
        Op::UpstreamLocalAddressWithoutPort => {
            opt(e.upstream_local.map(|a| a.ip().to_string()).as_deref())
        }
        Op::UpstreamTransportFailureReason => opt(e.upstream_transport_failure_reason.as_deref()),
        Op::UpstreamRequestAttemptCount => Val::Num(u64::from(e.attempt_count)),
        Op::DownstreamRemoteAddress => Val::Str(e.downstream_remote.to_string()),
        Op::DownstreamRemoteAddressWithoutPort => Val::Str(e.downstream_remote.ip().to_string()),
        Op::DownstreamRemotePort => Val::Num(u64::from(e.downstream_remote.port())),
        Op::DownstreamDirectRemoteAddress => Val::Str(e.downstream_direct_remote.to_string()),
        Op::DownstreamDirectRemoteAddressWithoutPort => {
            Val::Str(e.downstream_direct_remote.ip().to_string())
        }
        Op::DownstreamDirectRemotePort => Val::Num(u64::from(e.downstream_direct_remote.port())),
        Op::DownstreamLocalAddress => Val::Str(e.downstream_local.to_string()),
        Op::DownstreamLocalAddressWithoutPort => Val::Str(e.downstream_local.ip().to_string()),
        Op::DownstreamLocalPort => Val::Num(u64::from(e.downstream_local.port())),
        Op::DownstreamPeerUriSan => opt(e.peer.as_ref().map(|p| p.uri_sans.join(",")).as_deref()),
        Op::DownstreamPeerDnsSan => opt(e.peer.as_ref().map(|p| p.dns_sans.join(",")).as_deref()),
        Op::DownstreamPeerSubject => opt(e.peer.as_ref().map(|p| p.subject.as_str())),
        Op::DownstreamTlsVersion => opt(e.tls_version),
        Op::RequestedServerName => opt(e.requested_server_name.as_deref()),
        Op::RouteName => opt(e.route_name.as_deref()),
        Op::TraceId => opt(e.trace_id.as_deref()),
        Op::ConnectionId => Val::Num(e.connection_id),
        Op::Hostname => opt(Some(super::hostname())),
        Op::StreamId => opt(e
            .request_headers
            .as_ref()
            .and_then(|h| h.get("x-request-id"))
            .and_then(|v| v.to_str().ok())),
        Op::UpstreamWireBytesSent => Val::Num(e.upstream_wire_sent),
        Op::UpstreamWireBytesReceived => Val::Num(e.upstream_wire_received),
        Op::DownstreamWireBytesSent => Val::Num(e.bytes_sent),
        Op::DownstreamWireBytesReceived => Val::Num(e.bytes_received),
        Op::Missing => Val::Missing,
    }
}

/// A `json_format` struct: every string value is a template; other values
/// are copied. Keys print sorted, as Envoy prints them.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonNode {
    Template(Template),
    Literal(Value),
    Object(Vec<(String, Self)>),
}

impl JsonNode {
    pub fn compile(s: &Struct) -> Result<Self, String> {
        let mut fields: Vec<(String, Self)> = Vec::new();
        for (k, v) in &s.fields {
            fields.push((k.clone(), Self::compile_value(v)?));
        }
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self::Object(fields))
    }

    fn compile_value(v: &PbValue) -> Result<Self, String> {
        Ok(match &v.kind {
            Some(Kind::StringValue(s)) => Self::Template(Template::parse(s)?),
            Some(Kind::StructValue(s)) => Self::compile(s)?,
            Some(Kind::NumberValue(n)) => Self::Literal(number(*n)),
            Some(Kind::BoolValue(b)) => Self::Literal(Value::Bool(*b)),
            Some(Kind::ListValue(_)) => {
                return Err("Only string values, nested structs, list values and number values are supported in structured access log format.".into());
            }
            Some(Kind::NullValue(_)) | None => Self::Literal(Value::Null),
        })
    }

    pub fn format(&self, e: &Entry, omit_empty: bool) -> Value {
        match self {
            Self::Template(t) => t.format_json(e),
            Self::Literal(v) => v.clone(),
            Self::Object(fields) => {
                let mut m = Map::new();
                for (k, node) in fields {
                    let v = node.format(e, omit_empty);
                    let empty =
                        matches!(&v, Value::Null) || matches!(&v, Value::String(s) if s.is_empty());
                    if omit_empty && empty {
                        continue;
                    }
                    m.insert(k.clone(), v);
                }
                Value::Object(m)
            }
        }
    }
}

/// Protobuf numbers are doubles; whole ones print without a fraction.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}
