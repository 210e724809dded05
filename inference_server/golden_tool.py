"""`asr-model golden create|check`: ship a golden set with a model version and check it."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from inference_server import golden
from inference_server.golden_eval import create_golden_set, read_refs
from inference_server.manifest import MANIFEST_NAME, IntegrityError, require_verified, write_manifest


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("golden", help="create or check the golden set of a version directory")
    gsub = p.add_subparsers(dest="golden_command", required=True)
    create = gsub.add_parser("create", help="copy clips into DIR/golden/, write its manifest.jsonl, "
                                            f"rewrite DIR/{MANIFEST_NAME}; print the new version digest")
    create.add_argument("dir", type=Path)
    create.add_argument("--audio", type=Path, nargs="+", required=True, help="the golden clips (wav, flac, ...)")
    refs = create.add_mutually_exclusive_group(required=True)
    refs.add_argument("--refs", type=Path, help="TSV: '<audio file name><TAB><reference transcript>' per line")
    refs.add_argument("--no-refs", action="store_true",
                      help="no references: the set serves only the canary-vs-stable agreement check")
    check = gsub.add_parser("check", help="verify DIR, load its model, transcribe the golden set, "
                                          "print CER/WER as JSON (exit 1 over --max-cer)")
    check.add_argument("dir", type=Path)
    check.add_argument("--max-cer", type=float, help="fail (exit 1) when the CER is over this")
    check.add_argument("--details", action="store_true", help="also print every clip's hypothesis")


def run(args: argparse.Namespace) -> int:
    try:
        if args.golden_command == "create":
            return _create(args)
        return _check(args)
    except (golden.GoldenSetError, IntegrityError, OSError) as exc:
        print(f"asr-model golden: {exc}", file=sys.stderr)
        return 2


def _create(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if (directory / MANIFEST_NAME).is_file():
        # Never bless a tampered directory by writing a fresh manifest over it.
        require_verified(directory)
    refs = None if args.no_refs else read_refs(args.refs)
    items = create_golden_set(directory, args.audio, refs)
    digest = write_manifest(directory)
    print(f"golden set: {len(items)} clip(s) in {directory / golden.GOLDEN_DIR}", file=sys.stderr)
    print(f"{MANIFEST_NAME} rewritten; the version digest is now (update spec.model.sha256 if you pin it):",
          file=sys.stderr)
    print(digest)
    return 0


def _check(args: argparse.Namespace) -> int:
    from inference_server.config import ModelConfig
    from inference_server.golden_eval import evaluate_model
    from inference_server.model_loader import LoadError, load_version

    directory = Path(args.dir).resolve()
    gset = golden.load_golden_set(directory)  # format errors first, before the slow load
    if gset is None:
        print(f"asr-model golden: {directory} has no {golden.GOLDEN_DIR}/ set; "
              "create one with `asr-model golden create`", file=sys.stderr)
        return 2
    config = ModelConfig(name=directory.parent.name, version=directory.name, path=directory.name,
                         options={"ncpu": 1})
    # FunASR prints notices on stdout; stdout carries only the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            loaded = load_version(config, directory.parent)  # verifies the manifest, covering golden/
        except LoadError as exc:
            print(f"asr-model golden: {exc}", file=sys.stderr)
            return 2
        try:
            result = loaded.golden if loaded.golden is not None else evaluate_model(loaded, gset)
        finally:
            loaded.close()
    out = result.detail() if args.details else result.summary()
    print(json.dumps(out, ensure_ascii=False))
    if args.max_cer is not None:
        if result.cer is None:
            print("asr-model golden: --max-cer given but the set has no references", file=sys.stderr)
            return 1
        if result.cer > args.max_cer:
            print(f"asr-model golden: CER {result.cer:.4f} is over --max-cer {args.max_cer:g}", file=sys.stderr)
            return 1
    return 0
