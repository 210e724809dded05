"""The generated assets match docs/contracts.md and are rebuilt only when they no longer verify."""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf

from asr_sandbox.assets import build_all
from inference_server.manifest import MANIFEST_NAME, verify_dir

VERSIONS = ("v1", "v2", "v2-same", "corrupt")


def test_layout_and_integrity(models_root: Path) -> None:
    vad = models_root / "fsmn-vad" / "v1"
    assert {p.name for p in vad.iterdir()} >= {"model.pt", "config.yaml", "am.mvn", "configuration.json", MANIFEST_NAME}
    assert verify_dir(vad).ok
    para = models_root / "paraformer-tiny"
    for version in VERSIONS:
        d = para / version
        assert {p.name for p in d.iterdir()} >= {"model.pt", "config.yaml", "am.mvn", "tokens.json",
                                                 "configuration.json", MANIFEST_NAME}, version
        assert sum(p.stat().st_size for p in d.iterdir()) < 5_000_000  # tiny on purpose
    assert verify_dir(para / "v1").ok and verify_dir(para / "v2").ok and verify_dir(para / "v2-same").ok
    # v1 and v2 differ in weights only; v2-same is byte-identical to v1
    assert (para / "v1" / "model.pt").read_bytes() != (para / "v2" / "model.pt").read_bytes()
    assert (para / "v1" / "config.yaml").read_bytes() == (para / "v2" / "config.yaml").read_bytes()
    assert (para / "v1" / MANIFEST_NAME).read_bytes() == (para / "v2-same" / MANIFEST_NAME).read_bytes()
    corrupt = verify_dir(para / "corrupt")
    assert corrupt.changed == ["model.pt"] and not corrupt.missing and not corrupt.unlisted


def test_audio_truth_is_consistent_with_the_files(assets: Path) -> None:
    truth = json.loads((assets / "audio" / "truth.json").read_text())
    assert truth["units"] == "ms"
    clips = truth["clips"]
    assert {"speech_gap", "ten_seconds", "long_40s", "silence", "short", "speech_gap_8k"} <= set(clips)
    for name, clip in clips.items():
        info = sf.info(str(assets / "audio" / clip["file"]))
        assert info.samplerate == clip["sample_rate"] and info.channels == 1
        assert abs(info.frames * 1000 / info.samplerate - clip["duration_ms"]) <= 1
        spans = clip["speech_ms"]
        assert all(0 <= s < e <= clip["duration_ms"] for s, e in spans)
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    gaps = clips["speech_gap"]["speech_ms"]
    assert len(gaps) == 2 and gaps[1][0] - gaps[0][1] == 1500  # speech, 1.5 s silence, speech
    assert clips["ten_seconds"]["duration_ms"] == 10000
    assert clips["long_40s"]["duration_ms"] == 40000 and len(clips["long_40s"]["speech_ms"]) == 8
    assert clips["silence"]["speech_ms"] == []


def test_builder_is_idempotent(assets: Path) -> None:
    files = [p for p in assets.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    build_all(assets)
    assert {p: p.stat().st_mtime_ns for p in files} == before
