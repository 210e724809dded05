"""Fixtures for the operator's CRD and integration tests: the Kubernetes API emulator over real
HTTP with the ASRModelRollout CRD registered, a kubeconfig pointing at it, a REST client; and
`backend`, which runs a scenario against the emulator and against a real API server."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from asr_sandbox.crd_schema import load_crd
from asr_sandbox.kube_emulator import EmulatorServer, write_kubeconfig
from asr_sandbox.prometheus_runner import PrometheusRunner
from tests.support.backends import ApiBackend, emulator_backend, real_backend
from tests.support.fake_pods import FakePods
from tests.support.kube import KubeClient


@pytest.fixture(scope="module")
def api() -> Iterator[EmulatorServer]:
    """One emulator per test module (tests use their own namespaces to stay independent)."""
    with EmulatorServer() as server:
        server.emulator.register_crd(load_crd())
        yield server


@pytest.fixture(scope="module")
def kubeconfig(api: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig", api.url)


@pytest.fixture(scope="module")
def kube(api: EmulatorServer) -> KubeClient:
    return KubeClient(api.url)


@pytest.fixture(scope="module")
def pods(api: EmulatorServer) -> Iterator[FakePods]:
    """Fake inference pods (a mock: real GPU pods and a kubelet cannot run here)."""
    with FakePods(api.url) as fake:
        yield fake


@pytest.fixture(scope="module")
def prometheus(pods: FakePods, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusRunner]:
    """A real Prometheus scraping the fake pods every second."""
    with PrometheusRunner(tmp_path_factory.mktemp("prometheus"), targets={"asr-pods": [pods.target]}) as server:
        yield server


@pytest.fixture(scope="module", params=["emulator", pytest.param("real", marks=pytest.mark.real_api)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiBackend]:
    """The API a scenario runs against: the emulator, and a real control plane (the judge)."""
    if request.param == "emulator":
        with emulator_backend(tmp_path_factory.mktemp("emulator")) as emulated:
            yield emulated
    else:
        plane = request.getfixturevalue("control_plane")
        with real_backend(plane) as real:
            yield real


@pytest.fixture(scope="module")
def backend_prometheus(backend: ApiBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusRunner]:
    """A real Prometheus scraping the backend's fake pods every second."""
    with PrometheusRunner(tmp_path_factory.mktemp("prometheus"), targets={"asr-pods": [backend.pods.target]}) as server:
        yield server
