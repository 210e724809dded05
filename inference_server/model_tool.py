"""`asr-model`: pull a model version from ModelScope, write and check its checksum manifest,
ship a golden set with it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference_server import golden_tool, model_pull
from inference_server.manifest import MANIFEST_NAME, IntegrityError, verify_dir, write_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="asr-model", description="Model version directories: pull from ModelScope, checksum manifests, "
                                      "golden sets."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_manifest = sub.add_parser("manifest", help=f"write DIR/{MANIFEST_NAME}; print the version digest")
    p_manifest.add_argument("dir", type=Path)
    p_verify = sub.add_parser("verify", help="check every file of DIR against its manifest")
    p_verify.add_argument("dir", type=Path)
    p_verify.add_argument("--sha256", help="also require this version digest (sha256 of the manifest)")
    golden_tool.add_parser(sub)
    model_pull.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "golden":
        return golden_tool.run(args)
    if args.command == "pull":
        return model_pull.run(args)

    try:
        if args.command == "manifest":
            print(write_manifest(args.dir))
            return 0
        report = verify_dir(args.dir, args.sha256)
    except (IntegrityError, OSError) as exc:
        print(f"asr-model: {exc}", file=sys.stderr)
        return 2
    if report.ok:
        print(f"OK {report.digest}")
        return 0
    print(f"FAILED {args.dir}: {report.reason()}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
