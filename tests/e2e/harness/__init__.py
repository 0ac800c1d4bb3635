"""Differential end-to-end harness: Envoy is the reference, Trellis must match it."""
from .bootstrap import *  # noqa: F401,F403  (thin dict builders)
from .client import DEFAULT_HOST, GrpcReq, Observation, Req, TcpReq, UpgradeReq  # noqa: F401
from .procs import free_port, wait_port  # noqa: F401
from .proxy import Proxy, ProxyUnavailable, start_proxy  # noqa: F401
from .session import E2E, Impl, REFERENCE, Upstream, assert_weights  # noqa: F401
from .raw import READ, RawReq, TcpIdleReq  # noqa: F401
