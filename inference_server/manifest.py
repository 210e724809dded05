"""Checksum manifests of model version directories.

A version directory carries `MANIFEST.sha256`: one `<sha256>  <relative path>` line per file
(the `sha256sum` format, sorted by path, the manifest itself excluded). The *version digest*
is the sha256 of the manifest's bytes: one value that pins every file of a version, which is
what a rollout's `spec.model.sha256` and the model config's `sha256` hold.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAME = "MANIFEST.sha256"
_CHUNK = 1 << 20


class IntegrityError(Exception):
    """A version directory does not match its manifest (or has none)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(version_dir: Path) -> list[str]:
    """Relative POSIX paths of every regular file under the directory, sorted, manifest excluded."""
    names = []
    for path in version_dir.rglob("*"):
        if path.is_file():
            rel = path.relative_to(version_dir).as_posix()
            if rel != MANIFEST_NAME:
                names.append(rel)
    return sorted(names)


def render_manifest(entries: dict[str, str]) -> str:
    return "".join(f"{entries[name]}  {name}\n" for name in sorted(entries))


def parse_manifest(text: str) -> dict[str, str]:
    """Parse `sha256sum`-format lines; a malformed line is an IntegrityError naming it."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise IntegrityError(f"{MANIFEST_NAME} line {number} is not '<sha256>  <path>': {line!r}")
        entries[name] = digest
    return entries


def write_manifest(version_dir: Path) -> str:
    """Write the manifest for every file in the directory; return the version digest."""
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise IntegrityError(f"{version_dir} is not a directory")
    entries = {name: sha256_file(version_dir / name) for name in list_files(version_dir)}
    if not entries:
        raise IntegrityError(f"{version_dir} holds no files to list in a manifest")
    text = render_manifest(entries)
    (version_dir / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_digest(version_dir: Path) -> str:
    path = Path(version_dir) / MANIFEST_NAME
    if not path.is_file():
        raise IntegrityError(
            f"{version_dir} has no {MANIFEST_NAME}; write one with `asr-model manifest {version_dir}`"
        )
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class VerifyReport:
    digest: str
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.unlisted)

    def reason(self) -> str:
        parts = []
        if self.changed:
            parts.append("checksum mismatch: " + ", ".join(self.changed))
        if self.missing:
            parts.append("missing: " + ", ".join(self.missing))
        if self.unlisted:
            parts.append("not in manifest: " + ", ".join(self.unlisted))
        return "; ".join(parts) if parts else "ok"


def compare(expected: dict[str, str], actual: dict[str, str], digest: str) -> VerifyReport:
    """Pure comparison of manifest entries with the hashes found on disk."""
    report = VerifyReport(digest=digest)
    for name, want in sorted(expected.items()):
        if name not in actual:
            report.missing.append(name)
        elif actual[name] != want:
            report.changed.append(name)
    report.unlisted = sorted(set(actual) - set(expected))
    return report


def verify_dir(version_dir: Path, expected_digest: str | None = None) -> VerifyReport:
    """Check every file against the manifest (and the manifest against an expected digest).

    Raises IntegrityError when there is no readable manifest or the digest differs; otherwise
    returns a report whose `ok` says whether every file matched.
    """
    version_dir = Path(version_dir)
    digest = manifest_digest(version_dir)
    if expected_digest is not None and digest != expected_digest.lower():
        raise IntegrityError(
            f"{MANIFEST_NAME} digest is {digest}, but the model config expects {expected_digest}"
        )
    expected = parse_manifest((version_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    actual = {name: sha256_file(version_dir / name) for name in list_files(version_dir)}
    return compare(expected, actual, digest)


def require_verified(version_dir: Path, expected_digest: str | None = None) -> str:
    """verify_dir that raises on any mismatch, with a reason naming the files; returns the digest."""
    report = verify_dir(version_dir, expected_digest)
    if not report.ok:
        raise IntegrityError(f"{version_dir.name}: {report.reason()}")
    return report.digest
