"""`promtool test rules` over the rule files the query tests generate from the operator's code:
run a test file next to its rules, or a copy of it with one expectation changed (to show the
run can fail), and regenerate a rule file."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

# A label value that would turn a query into `... or vector(1)` if it were pasted unescaped.
HOSTILE_VERSION = 'x"} or vector(1) or {"'

requires_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus; `make setup` installs it)")


def run_promtool(tests: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` on `tests` (by name, in `cwd`, where its rule files are)."""
    return subprocess.run(["promtool", "test", "rules", tests.name], cwd=cwd or tests.parent,
                          capture_output=True, text=True, timeout=120)


def run_with_wrong_expectation(rules: Path, tests: Path, expected: str, wrong: str,
                               workdir: Path) -> subprocess.CompletedProcess[str]:
    """The same promtool run on a copy where the first `expected` line of `tests` says `wrong`."""
    broken = tests.read_text().replace(expected, wrong, 1)
    assert broken != tests.read_text(), f"{expected!r} is not in {tests.name}"
    shutil.copy(rules, workdir / rules.name)
    (workdir / tests.name).write_text(broken)
    return run_promtool(workdir / tests.name)


def write_rules(path: Path, header: str, rules: dict[str, Any]) -> None:
    path.write_text(header + yaml.safe_dump(rules, sort_keys=False, width=1000))
    print(f"wrote {path}")
