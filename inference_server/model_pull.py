"""`asr-model pull MODEL_ID --to ROOT/NAME/VERSION`: put a ModelScope model onto the model volume
as a new, immutable, checksummed version directory.

ModelScope's own `snapshot_download` does the download (its cache, its endpoint and token
settings, `MODELSCOPE_CACHE`); with --offline it resolves the snapshot from that cache alone
(`local_files_only`) and never opens a connection. The files land in a staging directory beside
the target and are renamed into place only once complete and checksummed, so a failed pull
leaves no half version for a rollout to point at.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from inference_server.manifest import MANIFEST_NAME, write_manifest


class PullError(Exception):
    """The pull was refused or failed; the message says what to do."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pull", help="download a ModelScope model into a new version directory, write its "
                                    f"{MANIFEST_NAME}; print the version digest")
    p.add_argument("model_id", help="ModelScope model id, e.g. iic/speech_fsmn_vad_zh-cn-16k-common-pytorch")
    p.add_argument("--to", type=Path, required=True, dest="target",
                   help="the new version directory, ROOT/NAME/VERSION (e.g. /models/paraformer-zh/v1.2.0); "
                        "must not exist")
    p.add_argument("--revision", help="ModelScope revision: tag, branch or commit (default: the model's default)")
    p.add_argument("--cache-dir", type=Path,
                   help="ModelScope cache (default: $MODELSCOPE_CACHE, else ~/.cache/modelscope)")
    p.add_argument("--offline", action="store_true",
                   help="no network: take the snapshot from the ModelScope cache (local_files_only)")
    p.add_argument("--golden-audio", type=Path, nargs="+", help="also ship a golden set: these clips ...")
    p.add_argument("--golden-refs", type=Path, help="... with these references (TSV: file<TAB>transcript); "
                                                    "without it the set has no references")


def check_target(target: Path) -> None:
    """Refuse a target that exists (versions are immutable: a rollout may be serving it) or
    whose parent (ROOT/NAME) is missing a ROOT."""
    if target.exists() or target.is_symlink():
        raise PullError(f"{target} already exists; a version directory is never overwritten (pods may be "
                        "serving it). Pull into a new version name, or delete the old one first")
    if not target.parent.parent.is_dir():
        raise PullError(f"{target.parent.parent} does not exist; --to must be ROOT/NAME/VERSION under the "
                        "mounted model volume")


def strip_bookkeeping(directory: Path) -> None:
    """Drop ModelScope's own metadata (top-level dot entries such as .msc, ._____temp): the
    version holds the model's files only, so its manifest is the same wherever it was pulled."""
    for entry in directory.iterdir():
        if entry.name.startswith("."):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def download(model_id: str, staging: Path, revision: str | None, cache_dir: Path | None, offline: bool) -> None:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise PullError("the modelscope package is not installed; pip install 'asr-rollout[server]'") from None
    try:
        if offline:
            # local_files_only with a local_dir only looks in that dir, so resolve the cached
            # snapshot first, then copy it: the staging dir is removed if anything fails.
            cached = snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
            shutil.copytree(cached, staging, symlinks=False, dirs_exist_ok=True)
        else:
            snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_dir=str(staging))
    except PullError:
        raise
    except Exception as exc:  # ModelScope raises its own types (CacheNotFound, NotExistError, HTTP errors)
        hint = (" (offline: is the model in the ModelScope cache? set MODELSCOPE_CACHE or --cache-dir)"
                if offline else " (check the model id and revision, and that the ModelScope endpoint is reachable)")
        raise PullError(f"ModelScope could not provide {model_id}"
                        f"{'@' + revision if revision else ''}: {type(exc).__name__}: {exc}{hint}") from None


def pull(args: argparse.Namespace) -> str:
    """Download, check, checksum and move into place; returns the version digest."""
    target: Path = args.target
    check_target(target)
    # Staged in ROOT (the same volume, so the final rename is atomic); ROOT/NAME is made only
    # once there is a version to put in it.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.parent.name}-{target.name}.pulling-", dir=target.parent.parent))
    try:
        download(args.model_id, staging, args.revision, args.cache_dir, args.offline)
        strip_bookkeeping(staging)
        if not (staging / "config.yaml").is_file():
            raise PullError(f"{args.model_id} has no config.yaml: not a FunASR model the server can load")
        if args.golden_audio:
            from inference_server.golden_eval import create_golden_set, read_refs

            refs = read_refs(args.golden_refs) if args.golden_refs else None
            create_golden_set(staging, args.golden_audio, refs)
        elif args.golden_refs:
            raise PullError("--golden-refs needs --golden-audio (the clips the references are for)")
        digest = write_manifest(staging)
        target.parent.mkdir(exist_ok=True)
        if target.exists():  # another pull won the race while this one downloaded
            raise PullError(f"{target} appeared while pulling; left it as it is")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return digest


def run(args: argparse.Namespace) -> int:
    from inference_server.golden import GoldenSetError

    try:
        digest = pull(args)
    except (PullError, GoldenSetError, OSError) as exc:
        print(f"asr-model pull: {exc}", file=sys.stderr)
        return 2
    print(f"pulled {args.model_id} into {args.target}; {MANIFEST_NAME} written. Version digest "
          "(spec.model.sha256):", file=sys.stderr)
    print(digest)
    return 0
