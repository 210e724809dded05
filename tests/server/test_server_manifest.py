"""Checksum manifests and the `asr-model` tool, on real directories."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from inference_server.manifest import (MANIFEST_NAME, IntegrityError, parse_manifest, require_verified,
                                       verify_dir, write_manifest)


@pytest.fixture()
def version_dir(tmp_path: Path) -> Path:
    d = tmp_path / "v1"
    (d / "sub").mkdir(parents=True)
    (d / "model.pt").write_bytes(b"weights" * 100)
    (d / "config.yaml").write_text("model: Paraformer\n")
    (d / "sub" / "tokens.json").write_text("[]")
    return d


def test_manifest_lists_every_file_sorted_in_sha256sum_format(version_dir: Path) -> None:
    digest = write_manifest(version_dir)
    text = (version_dir / MANIFEST_NAME).read_text()
    names = [line.split("  ", 1)[1] for line in text.splitlines()]
    assert names == ["config.yaml", "model.pt", "sub/tokens.json"]
    assert digest == hashlib.sha256(text.encode()).hexdigest()
    expected = hashlib.sha256((version_dir / "model.pt").read_bytes()).hexdigest()
    assert parse_manifest(text)["model.pt"] == expected
    # sha256sum itself agrees with the format
    check = subprocess.run(["sha256sum", "-c", MANIFEST_NAME], cwd=version_dir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("damage, kind", [
    (lambda d: (d / "model.pt").write_bytes(b"tampered"), "checksum mismatch: model.pt"),
    (lambda d: (d / "config.yaml").unlink(), "missing: config.yaml"),
    (lambda d: (d / "extra.bin").write_bytes(b"x"), "not in manifest: extra.bin"),
])
def test_verify_names_the_changed_missing_or_unlisted_file(version_dir: Path, damage, kind: str) -> None:
    write_manifest(version_dir)
    assert verify_dir(version_dir).ok
    damage(version_dir)
    report = verify_dir(version_dir)
    assert not report.ok
    assert kind in report.reason()
    with pytest.raises(IntegrityError, match=kind.split(": ")[1].replace(".", r"\.")):
        require_verified(version_dir)


def test_expected_digest_mismatch_and_missing_manifest_are_refused(version_dir: Path) -> None:
    with pytest.raises(IntegrityError, match="no MANIFEST.sha256"):
        verify_dir(version_dir)
    digest = write_manifest(version_dir)
    assert require_verified(version_dir, digest.upper()) == digest
    with pytest.raises(IntegrityError, match="expects"):
        verify_dir(version_dir, "0" * 64)


def test_malformed_manifest_line_is_reported() -> None:
    with pytest.raises(IntegrityError, match="line 2"):
        parse_manifest("a" * 64 + "  model.pt\nnot a line\n")


def test_asr_model_cli_manifest_and_verify(version_dir: Path) -> None:
    run = lambda *a: subprocess.run([sys.executable, "-m", "inference_server.model_tool", *a],
                                    capture_output=True, text=True)
    made = run("manifest", str(version_dir))
    assert made.returncode == 0 and len(made.stdout.strip()) == 64
    ok = run("verify", str(version_dir), "--sha256", made.stdout.strip())
    assert ok.returncode == 0 and ok.stdout.startswith("OK ")
    (version_dir / "model.pt").write_bytes(b"changed")
    bad = run("verify", str(version_dir))
    assert bad.returncode == 1 and "model.pt" in bad.stderr
    missing = run("verify", str(version_dir / "nope"))
    assert missing.returncode == 2 and "MANIFEST" in missing.stderr
