"""`make demo` with `--kubeconfig`: the example rollouts are applied to the cluster the
kubeconfig names, and no sandbox part starts. The cluster here is the kmock emulator over real
HTTP (no kube-apiserver can run on this machine); the client is the real kubernetes library."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from asr_sandbox.cluster import default_examples, documents
from asr_sandbox.demo import main
from asr_sandbox.kube_emulator import EmulatorServer, write_kubeconfig
from asr_sandbox.sandbox import CRD_PATH


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[EmulatorServer, Path]]:
    with EmulatorServer() as server:
        server.emulator.register_crd(yaml.safe_load(CRD_PATH.read_text()))
        yield server, write_kubeconfig(tmp_path / "kubeconfig", server.url)


def _names(server: EmulatorServer) -> set[tuple[str, str]]:
    import requests

    body = requests.get(f"{server.url}/apis/asr.rollout.dev/v1alpha1/asrmodelrollouts", timeout=10).json()
    return {(item["metadata"]["namespace"], item["metadata"]["name"]) for item in body["items"]}


def test_demo_applies_the_examples_to_a_cluster(cluster: tuple[EmulatorServer, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    server, kubeconfig = cluster
    expected = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in documents(default_examples())}
    assert expected  # the examples exist
    assert main(["--kubeconfig", str(kubeconfig)]) == 0
    assert _names(server) == expected
    assert "sandbox" in capsys.readouterr().out  # it says the sandbox parts are skipped
    # Applying again updates in place instead of failing on AlreadyExists.
    assert main(["--kubeconfig", str(kubeconfig)]) == 0
    assert "updated ASRModelRollout" in capsys.readouterr().out


def test_demo_refuses_a_missing_kubeconfig(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--kubeconfig", str(tmp_path / "nope")])
    assert "no such file" in capsys.readouterr().err
