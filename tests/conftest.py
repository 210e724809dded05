"""Suite-wide: the real Kubernetes API tier (tests marked `real_api`).

A real control plane (etcd + kube-apiserver + kube-controller-manager, upstream v1.28 binaries)
is started once per session for the tests that need it, from the folder `KUBEBUILDER_ASSETS`
names (the envtest convention). Without the binaries those tests are skipped, and the run says
so in one line at the end; `.ci/run` sets `ASR_REQUIRE_REAL_API=1`, which turns a missing part
into an error instead, so CI can never skip the tier silently.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from asr_sandbox.control_plane import HOW_TO_ENABLE, ControlPlane, missing_parts

REQUIRE_ENV = "ASR_REQUIRE_REAL_API"
_skipped_real_api: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = missing_parts()
    if not missing:
        return
    marked = [item for item in items if item.get_closest_marker("real_api")]
    if not marked:
        return
    reason = "real-API tier skipped: " + "; ".join(missing) + f". To run it: {HOW_TO_ENABLE}"
    if os.environ.get(REQUIRE_ENV) == "1":
        raise pytest.UsageError(f"{REQUIRE_ENV}=1 but the real Kubernetes API cannot start: {reason}")
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=reason))
    _skipped_real_api[:] = [reason]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _skipped_real_api:
        return
    count = sum(1 for report in terminalreporter.stats.get("skipped", [])
                if "real-API tier skipped" in str(getattr(report, "longrepr", "")))
    if count:
        terminalreporter.write_line(f"NOTE: {count} tests of the {_skipped_real_api[0]}", yellow=True, bold=True)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real control plane for the session, with the ASRModelRollout CRD installed. Tests
    keep to namespaces of their own."""
    from asr_sandbox.crd_schema import load_crd
    with ControlPlane(tmp_path_factory.mktemp("control-plane")) as plane:
        plane.apply_crd(load_crd())
        yield plane
