"""`make bench-e2e`: end-to-end rollback time of the error-rate scenario, in the local sandbox.

    python -m asr_sandbox.bench_e2e --assets .assets

Runs v1 -> v3-broken (a version that answers real speech with 500s) with the demo settings
(interval 5 s, failureLimit 2) under real traffic, and prints JSON lines
`{"bench": NAME, "value": NUMBER, "target": TEXT}`:
- rollback_e2e_seconds: from the bad version's first request to 100 % of traffic back on
  stable (the gateway's routed weight 0); target interval x (failureLimit + 1) + 5 s = 20 s;
- requests_failed_during_rollback / requests_lost: what clients saw (lost: no answer at all).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from asr_sandbox import scenarios as sc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, default=Path(".assets"))
    parser.add_argument("--rate", type=float, default=3.0, help="requests per second of traffic")
    parser.add_argument("--verbose", action="store_true", help="show the live timeline on stderr")
    args = parser.parse_args(argv)

    from asr_sandbox.demo_assets import build_demo_models
    from asr_sandbox.report import summarize
    from asr_sandbox.sandbox import Sandbox
    from asr_sandbox.story import run_story

    build_demo_models(args.assets)
    settings = sc.DemoSettings()
    scenario = next(s for s in sc.STORY if s.key == "errors")
    log: TextIO = sys.stderr if args.verbose else io.StringIO()
    with tempfile.TemporaryDirectory(prefix="asr-bench-e2e-") as tmp:
        with Sandbox(args.assets / "models", Path(tmp), sc.NAMESPACE, sc.ROLLOUT, http_route=sc.ROLLOUT) as sandbox:
            story = run_story(sandbox, [scenario], settings, args.assets / "audio", rate=args.rate, out=log)
    if story.error or not story.runs:
        print(json.dumps({"bench": "rollback_e2e_seconds", "value": None, "target": "<= 20",
                          "error": story.error or "the scenario did not run"}))
        return 1
    summary = summarize(story.runs[0], story.records, story.weight_log)
    interval = 5.0
    target = interval * (settings.failure_limit + 1) + 5
    lines = [
        {"bench": "rollback_e2e_seconds", "value": None if summary.restore_s is None else round(summary.restore_s, 2),
         "target": f"<= {target:g}", "rolled_back": summary.ok, "detail": summary.outcome},
        {"bench": "requests_failed_during_rollback", "value": summary.failed,
         "target": "only the bad canary's own 5xx", "sent": summary.sent},
        {"bench": "requests_lost", "value": sum(r.lost for r in story.records), "target": "0"},
    ]
    for line in lines:
        print(json.dumps(line))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
