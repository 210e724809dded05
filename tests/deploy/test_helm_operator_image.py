"""Dockerfile.operator (the chart's image): Docker cannot run here, so the file is parsed and
checked for the properties that matter, and its build stage's `pip install` is replayed on
exactly the files the Dockerfile copies, to prove they make a wheel holding only the operator.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.chart_render import REPO_ROOT, of_kind, render

DOCKERFILE = REPO_ROOT / "Dockerfile.operator"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|cmake|build-essential|cc|gfortran|rustc|cargo|"
                         r"python3?-dev|libc6?-dev|apt-get|apk|yum|dnf)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines are joined."""
    logical = re.sub(r"\\\n", " ", text)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", rest, re.IGNORECASE)
            assert match, f"cannot parse FROM {rest!r}"
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m[1] or m[2], m[0]), match[1])
            stages.append(Stage(base, match[2]))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))[1]


def test_is_multi_stage_on_a_slim_python_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    final = stages[-1]
    assert re.match(r"python:3\.\d+-slim", final.base), final.base
    # The final stage takes only the built venv from an earlier stage, never the source tree.
    copies = final.args("COPY")
    assert copies and all(c.startswith("--from=") for c in copies), copies
    assert final.args("ADD") == []


def test_final_stage_runs_as_a_fixed_non_root_user_matching_the_chart(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.args("USER")
    assert users, "the final stage must switch to a non-root USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric UID, so that runAsNonRoot can verify it"
    # Nothing after USER switches back.
    last_user = max(i for i, (kw, _) in enumerate(final.instructions) if kw == "USER")
    assert all(kw != "USER" for kw, _ in final.instructions[last_user + 1:])
    (deployment,) = of_kind(render(), "Deployment")
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsUser"] == int(uid)
    assert pod_security["runAsGroup"] == int(gid)


def test_no_build_tools_or_package_managers_in_the_final_stage(stages: list[Stage]) -> None:
    for keyword, arg in stages[-1].instructions:
        if keyword == "RUN":
            assert not BUILD_TOOLS.search(arg), f"final stage RUN uses a build tool: {arg}"
    # The build stage leaves pip/setuptools/wheel out of the venv it hands over.
    build_runs = " ".join(stages[0].args("RUN"))
    assert "pip uninstall -y pip setuptools wheel" in build_runs


def test_installs_only_the_operator_extra(stages: list[Stage]) -> None:
    build_runs = " ".join(run for stage in stages for run in stage.args("RUN"))
    assert '".[operator]"' in build_runs
    for heavy in ("torch", "funasr", "[server", ",server", "[test", ",test"):
        assert heavy not in build_runs


def test_entrypoint_and_ports_match_the_chart(stages: list[Stage]) -> None:
    assert stages[-1].args("ENTRYPOINT") == ['["python", "-m", "asr_operator"]']
    exposed = {int(p) for arg in stages[-1].args("EXPOSE") for p in arg.split()}
    (deployment,) = of_kind(render(), "Deployment")
    ports = {p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert exposed == ports


def test_build_stage_sources_make_a_wheel_with_only_the_operator(stages: list[Stage], tmp_path: Path) -> None:
    # Replay the build stage's COPY lines into a fresh build context ...
    context = tmp_path / "src"
    context.mkdir()
    for copy in stages[0].args("COPY"):
        *sources, destination = copy.split()
        for source in sources:
            target = context / destination / (Path(source).name if destination.endswith("/") and
                                               not source.endswith("/") else "")
            if source.endswith("/"):
                shutil.copytree(REPO_ROOT / source, context / destination)
            else:
                shutil.copy(REPO_ROOT / source, target)
    # ... and build the wheel `pip install ".[operator]"` would install (no network needed).
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith("/METADATA"))).decode()
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"asr_operator"}
    operator_requirements = [line for line in metadata.splitlines()
                             if line.startswith("Requires-Dist:") and "extra == \"operator\"" in line]
    assert any("kopf" in line for line in operator_requirements)
    assert not any("torch" in line or "funasr" in line for line in operator_requirements)
