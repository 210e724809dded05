"""Golden-set fixtures: copies of the tiny Paraformer versions (real FunASR models, random
weights) that ship a golden set, built with the real `asr-model golden` commands.

The references are what `v1` transcribes (a regression golden set: "what the known-good
version says"), so `v1` and `v2-same` (byte-identical weights) score CER 0 and `v2` (other
weights) scores high. The clips are the espeak-ng audio of `make assets`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from asr_sandbox.assets import build_all

REPO = Path(__file__).resolve().parents[2]
MODEL = "paraformer-tiny"
CLIPS = ("short.wav", "speech_gap.wav")


def asr_model(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real `asr-model` command (as `python -m`, so the tree under test is what runs)."""
    result = subprocess.run([sys.executable, "-m", "inference_server.model_tool", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"asr-model {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@dataclass(frozen=True)
class GoldenModels:
    root: Path                  # --models-root
    clips: tuple[Path, ...]
    references: dict[str, str]  # clip name -> v1's transcript

    def version_dir(self, version: str) -> Path:
        return self.root / MODEL / version


@pytest.fixture(scope="session")
def golden_models(tmp_path_factory: pytest.TempPathFactory) -> GoldenModels:
    assets = REPO / ".assets"
    build_all(assets)  # idempotent: quick when `make assets` already ran
    root = tmp_path_factory.mktemp("golden-models")
    for version in ("v1", "v2", "v2-same"):
        shutil.copytree(assets / "models" / MODEL / version, root / MODEL / version)
    shutil.copytree(assets / "models" / MODEL / "v1", root / MODEL / "plain")  # ships no golden set
    clips = tuple(assets / "audio" / name for name in CLIPS)
    v1 = root / MODEL / "v1"
    # 1. a set without references; `golden check --details` prints what v1 transcribes
    asr_model("golden", "create", v1, "--audio", *clips, "--no-refs")
    detail = json.loads(asr_model("golden", "check", v1, "--details").stdout)
    references = {item["audio"]: item["hypothesis"] for item in detail["items"]}
    assert set(references) == set(CLIPS) and all(references.values()), detail
    # 2. those transcripts become the references of every version's golden set
    refs = root / "refs.tsv"
    refs.write_text("".join(f"{name}\t{text}\n" for name, text in references.items()), encoding="utf-8")
    for version in ("v1", "v2", "v2-same"):
        asr_model("golden", "create", root / MODEL / version, "--audio", *clips, "--refs", refs)
    return GoldenModels(root=root, clips=clips, references=references)
