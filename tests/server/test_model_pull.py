"""`asr-model pull` through the real `modelscope` code path, offline: a ModelScope cache built here
from the tiny model (the layout modelscope's snapshot_download resolves with local_files_only),
the CLI run as a process, and the endpoint pointed at a closed port so any network use fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inference_server.config import ModelConfig
from inference_server.golden import GOLDEN_DIR
from inference_server.manifest import MANIFEST_NAME, verify_dir
from inference_server.model_loader import load_version

MODEL_ID = "iic/paraformer-tiny"


@pytest.fixture
def cache(tmp_path: Path, models_root: Path) -> Path:
    """MODELSCOPE_CACHE with two revisions of MODEL_ID: the default (master: v1's files) and
    v1.0.1 (v2's files); a model without config.yaml; ModelScope's own metadata file mixed in."""
    root = tmp_path / "modelscope-cache"
    for revision, version in (("master", "v1"), ("v1.0.1", "v2")):
        snapshot = root / "models" / MODEL_ID.replace("/", "--") / "snapshots" / revision
        shutil.copytree(models_root / "paraformer-tiny" / version, snapshot)
        (snapshot / MANIFEST_NAME).unlink()
        (snapshot / ".msc").write_text("modelscope bookkeeping")
    not_funasr = root / "models" / "iic--not-funasr" / "snapshots" / "master"
    not_funasr.mkdir(parents=True)
    (not_funasr / "README.md").write_text("a model of another framework")
    return root


def asr_model(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELSCOPE_CACHE": str(cache), "MODELSCOPE_ENDPOINT": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, "-m", "inference_server.model_tool", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_pull_writes_a_verified_version_that_the_server_loads(cache: Path, tmp_path: Path, models_root: Path,
                                                              assets: Path) -> None:
    volume = tmp_path / "models"
    volume.mkdir()
    refs = tmp_path / "refs.tsv"
    refs.write_text("short.wav\thello world\n")
    result = asr_model(cache, "pull", MODEL_ID, "--offline", "--to", str(volume / "paraformer-tiny" / "v1"),
                       "--golden-audio", str(assets / "audio" / "short.wav"), "--golden-refs", str(refs))
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    target = volume / "paraformer-tiny" / "v1"
    report = verify_dir(target, digest)
    assert report.ok and report.digest == digest
    assert (target / GOLDEN_DIR / "manifest.jsonl").is_file() and not (target / ".msc").exists()
    assert [p.name for p in volume.iterdir()] == ["paraformer-tiny"]  # no staging dir left
    assert [p.name for p in (volume / "paraformer-tiny").iterdir()] == ["v1"]
    loaded = load_version(ModelConfig("paraformer-tiny", "v1", "paraformer-tiny/v1", sha256=digest,
                                      options={"ncpu": 1}), volume)
    try:
        assert loaded.digest == digest and loaded.golden is not None
    finally:
        loaded.close()

    # --revision picks another snapshot: v2's files give v2's digest
    again = asr_model(cache, "pull", MODEL_ID, "--offline", "--revision", "v1.0.1",
                      "--to", str(volume / "paraformer-tiny" / "v2"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == verify_dir(models_root / "paraformer-tiny" / "v2").digest


def test_pull_refusals_leave_nothing_behind(cache: Path, tmp_path: Path) -> None:
    volume = tmp_path / "models"
    (volume / "paraformer-tiny" / "v1").mkdir(parents=True)
    (volume / "paraformer-tiny" / "v1" / "model.pt").write_bytes(b"serving")

    exists = asr_model(cache, "pull", MODEL_ID, "--offline", "--to", str(volume / "paraformer-tiny" / "v1"))
    assert exists.returncode == 2 and "already exists" in exists.stderr and "never overwritten" in exists.stderr
    assert (volume / "paraformer-tiny" / "v1" / "model.pt").read_bytes() == b"serving"

    missing = asr_model(cache, "pull", "iic/absent", "--offline", "--to", str(volume / "absent" / "v1"))
    assert missing.returncode == 2 and "CacheNotFound" in missing.stderr and "MODELSCOPE_CACHE" in missing.stderr

    wrong_rev = asr_model(cache, "pull", MODEL_ID, "--offline", "--revision", "v9", "--to",
                          str(volume / "paraformer-tiny" / "v9"))
    assert wrong_rev.returncode == 2 and "v9" in wrong_rev.stderr

    not_funasr = asr_model(cache, "pull", "iic/not-funasr", "--offline", "--to", str(volume / "other" / "v1"))
    assert not_funasr.returncode == 2 and "no config.yaml" in not_funasr.stderr

    no_root = asr_model(cache, "pull", MODEL_ID, "--offline", "--to", str(tmp_path / "nowhere" / "name" / "v1"))
    assert no_root.returncode == 2 and "ROOT/NAME/VERSION" in no_root.stderr

    # nothing half-pulled: only the version that was there (no staging dirs, no empty model folders)
    left = sorted(p.relative_to(volume).as_posix() for p in volume.rglob("*"))
    assert left == ["paraformer-tiny", "paraformer-tiny/v1", "paraformer-tiny/v1/model.pt"]
