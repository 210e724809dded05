"""The bad model versions the demo story rolls out: real FunASR model directories, each one
failing in its own way, built with the asset builder's own Paraformer recipe.

    python -m asr_sandbox.demo_assets --out .assets

    models/paraformer-tiny/broken/   loads, verifies and warms up, then answers real speech with a
                                     500: its token list holds numbers where characters belong,
                                     and its predictor is tuned to emit no token for a clip as
                                     short as the server's 2 s warm-up clip but at least one for
                                     a 5 s+ request, so decoding (`"".join(tokens)`) raises
                                     TypeError only under traffic -> caught by the error rate
    models/paraformer-tiny/slow/     a correct model, but with a much wider and deeper encoder
                                     and no frame-rate reduction -> caught by p99 latency
    models/paraformer-tiny/sluggish/ the same idea, smaller: about 4x v1's processing time, yet its
                                     p99 and real-time factor stay well inside the absolute
                                     bounds -> caught only by real-time-factor maxRatio vs stable
    models/paraformer-tiny/drift/    a correct, fast model with other random weights (seed 6): it
                                     verifies, warms up and answers 200 as fast as v1, but says
                                     something else -> caught only by the shadow stage's CER
                                     against stable's transcripts
    models/paraformer-tiny/corrupt/  (from asr_sandbox.assets) fails verification, never ready
                                     -> caught by the progress deadline

Why such a construction for `broken`: a version that fails its warm-up is simply never ready
(that is the corrupt case); the error-rate guard needs a version that becomes ready and then
fails requests. A token list that is merely *shorter* than the output layer does not fail:
FunASR sizes the model by the token list and re-initialises the mismatched layer.
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asr_sandbox import assets

log = logging.getLogger("asr_sandbox.demo_assets")

# Bump when a recipe below changes: directories built by an older recipe are rebuilt.
RECIPE_VERSION = 2
MODEL_NAME = "paraformer-tiny"

# `broken`: constant per-frame CIF weight. With 60 ms LFR frames and the 0.45 tail threshold,
# a 2 s clip (~33 frames) sums to ~0.85 -> 0 tokens; a 5 s clip (~83 frames) to ~1.45 -> 1+.
BROKEN_ALPHA = 0.012
BROKEN_TOKEN_ID = 3  # the decoder is biased to this id, whose token-list entry is a number

# `slow`: encoder 8x wider and 8x deeper than v1, and one feature frame per 10 ms instead of 60.
SLOW_WIDTH = 512
SLOW_BLOCKS = 16
# `sluggish`: measured on an idle 2-core machine (one torch thread, 5 s and 10 s clips with VAD):
# median 0.38 s a request against v1's 0.10 s, `slow`'s 1.4 s.
SLUGGISH_WIDTH = 256
SLUGGISH_BLOCKS = 8
# `drift`: v1's recipe with other weights (v1 is seed 1, v2 seed 2).
DRIFT_SEED = 6


def broken_tokens() -> list[Any]:
    """v1's vocabulary size and special symbols, but numbers where the characters belong."""
    tokens: list[Any] = list(assets.PARAFORMER_TOKENS)
    for index, token in enumerate(tokens):
        if not (token.startswith("<") and token.endswith(">")):
            tokens[index] = index
    return tokens


def slow_config(width: int = SLOW_WIDTH, blocks: int = SLOW_BLOCKS) -> dict[str, Any]:
    cfg = copy.deepcopy(assets.PARAFORMER_CONFIG)
    cfg["encoder_conf"].update(output_size=width, attention_heads=4, linear_units=4 * width, num_blocks=blocks)
    cfg["predictor_conf"]["idim"] = width
    cfg["frontend_conf"]["lfr_n"] = 1  # 6x more frames through the encoder (and attention over them)
    return cfg


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _tune_broken(model: Any) -> None:
    import torch

    with torch.no_grad():
        out = model.predictor.cif_output
        out.weight.zero_()
        out.bias.fill_(_logit(BROKEN_ALPHA))
        layer = model.decoder.output_layer
        layer.weight.zero_()
        layer.bias.zero_()
        layer.bias[BROKEN_TOKEN_ID] = 10.0


def build_demo_models(out: Path) -> dict[str, Path]:
    """The generated assets (asr_sandbox.assets) plus the demo's bad versions. Idempotent."""
    paths = assets.build_all(out)
    base = Path(out) / "models" / MODEL_NAME
    cmvn = assets.paraformer_cmvn(paths["fsmn-vad/v1"])
    paths[f"{MODEL_NAME}/broken"] = _build(
        base / "broken", lambda d: assets.write_paraformer(d, 3, cmvn, tokens=broken_tokens(), tune=_tune_broken))
    paths[f"{MODEL_NAME}/slow"] = _build(base / "slow", lambda d: assets.write_paraformer(d, 4, cmvn, cfg=slow_config()))
    paths[f"{MODEL_NAME}/sluggish"] = _build(
        base / "sluggish",
        lambda d: assets.write_paraformer(d, 5, cmvn, cfg=slow_config(SLUGGISH_WIDTH, SLUGGISH_BLOCKS)))
    paths[f"{MODEL_NAME}/drift"] = _build(base / "drift", lambda d: assets.write_paraformer(d, DRIFT_SEED, cmvn))
    return paths


def _build(final: Path, write: Callable[[Path], None]) -> Path:
    """Built like the generated versions, with the demo's own stamp (`.NAME.demo-built`) and recipe."""
    return assets.build_version_dir(final, write, stamp="demo-built", recipe=RECIPE_VERSION)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the demo's model versions (idempotent).")
    parser.add_argument("--out", type=Path, default=Path(".assets"), help="assets directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, path in build_demo_models(args.out).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
