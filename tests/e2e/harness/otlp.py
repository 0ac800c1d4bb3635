"""An in-memory OTLP/gRPC trace receiver for tests (a real gRPC server on the official OTLP
protobuf definitions from PyPI `opentelemetry-proto`).

    from harness.otlp import OtlpReceiver
    rx = OtlpReceiver.start(port=0)          # or start(port=0, host="127.0.0.1")
    ... point a proxy's OTLP cluster at ("127.0.0.1", rx.port) (plaintext HTTP/2) ...
    spans = rx.wait_for(2, timeout=10)       # at least 2 spans, or AssertionError
    rx.spans()                                # every span received so far, in arrival order
    rx.clear(); rx.stop()

Each span is a plain dict:
    trace_id, span_id, parent_span_id   lowercase hex ("" when absent)
    trace_state                          str
    name, kind                           kind as "SERVER" / "CLIENT" / "INTERNAL" / ... ("UNSPECIFIED")
    start_ns, end_ns                     int, unix nanoseconds
    attributes                           {key: value}; string/int/double/bool values as Python values,
                                         arrays as lists, kvlists as dicts, bytes as hex
    resource                             {key: value} of the enclosing ResourceSpans' resource
    scope                                instrumentation scope name ("" when absent)
    status                               {"code": "UNSET"/"OK"/"ERROR", "message": str}
    events                               [{"name", "time_ns", "attributes"}]
`rx.requests` counts Export calls; `rx.metadata()` lists the gRPC metadata of each call.
"""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

_KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in trace_pb2.Span.SpanKind.items()}
_STATUS = {v: k.removeprefix("STATUS_CODE_") for k, v in trace_pb2.Status.StatusCode.items()}


def any_value(v) -> object:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def attributes(kvs) -> dict:
    return {kv.key: any_value(kv.value) for kv in kvs}


def span_dict(span, resource: dict, scope: str) -> dict:
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "trace_state": span.trace_state,
        "name": span.name,
        "kind": _KINDS.get(span.kind, str(span.kind)),
        "start_ns": span.start_time_unix_nano,
        "end_ns": span.end_time_unix_nano,
        "attributes": attributes(span.attributes),
        "resource": dict(resource),
        "scope": scope,
        "status": {"code": _STATUS.get(span.status.code, str(span.status.code)),
                   "message": span.status.message},
        "events": [{"name": e.name, "time_ns": e.time_unix_nano, "attributes": attributes(e.attributes)}
                   for e in span.events],
    }


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, rx: "OtlpReceiver"):
        self.rx = rx

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        out = []
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.append(span_dict(span, resource, ss.scope.name))
        self.rx._add(out, context.invocation_metadata())
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Collects the spans of OTLP/gRPC `TraceService/Export` calls in memory."""

    def __init__(self, server: grpc.Server, host: str, port: int):
        self._server = server
        self.host = host
        self.port = port
        self._cond = threading.Condition()
        self._spans: list[dict] = []
        self._metadata: list[dict] = []
        self.requests = 0

    @classmethod
    def start(cls, port: int = 0, host: str = "127.0.0.1") -> "OtlpReceiver":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        bound = server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise RuntimeError(f"OTLP receiver could not bind {host}:{port}")
        rx = cls(server, host, bound)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(rx), server)
        server.start()
        return rx

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _add(self, spans: list[dict], metadata) -> None:
        with self._cond:
            self._spans.extend(spans)
            self._metadata.append({k: v for k, v in metadata})
            self.requests += 1
            self._cond.notify_all()

    def spans(self) -> list[dict]:
        with self._cond:
            return list(self._spans)

    def metadata(self) -> list[dict]:
        with self._cond:
            return list(self._metadata)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict]:
        """Every span once at least `n` have arrived; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._spans) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"OTLP receiver: {len(self._spans)} spans after {timeout}s, "
                                         f"wanted {n}: {self._spans}")
                self._cond.wait(left)
            return list(self._spans)

    def settle(self, quiet: float = 0.5, timeout: float = 10.0) -> list[dict]:
        """Every span once none has arrived for `quiet` seconds (to see that no more come)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = -1
            while seen != len(self._spans) and time.monotonic() < deadline:
                seen = len(self._spans)
                self._cond.wait(quiet)
            return list(self._spans)

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()
            self._metadata.clear()

    def stop(self) -> None:
        self._server.stop(grace=None)
