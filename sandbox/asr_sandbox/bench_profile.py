"""Where one request's time goes inside FunASR's `generate()`, alone and in batches (JSON lines).

Forward hooks time the parts of the model on the 10 s clip: the encoder, the CIF predictor and
the decoder, and a wrapper the features (fbank, LFR, CMVN); the rest of `generate()` is FunASR's Python
around them (kwargs reset, data preparation, token decoding). Then the same clip in batches of
1, 2, 4 and 8: seconds per input, which is what dynamic batching can win on these cores.

Both servers spend a request's time in the same `generate()`; what a server can change is the
time outside it (HTTP, upload, decoding, queueing) and how many inputs one call takes. The
`model_share_c1` field is the part of a lone request that no server can make faster without
changing the model's arithmetic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def profile(model_dir: Path, samples: np.ndarray, emit: Callable[..., None], rounds: int = 12,
            suffix: str = "") -> None:
    import torch
    from funasr import AutoModel

    import funasr.models.paraformer.model as paraformer_module

    m = AutoModel(model=str(model_dir), disable_update=True, disable_pbar=True, disable_log=True,
                  device="cpu", ncpu=2)
    parts: dict[str, Any] = {"encoder": m.model.encoder, "predictor": m.model.predictor,
                             "decoder": m.model.decoder}
    spent = {name: 0.0 for name in ("features", *parts)}
    started: dict[str, float] = {}
    # The features (fbank, LFR, CMVN) are computed by a function, not a module call: time it there.
    extract = paraformer_module.extract_fbank

    def timed_extract(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return extract(*args, **kwargs)
        finally:
            spent["features"] += time.perf_counter() - t

    setattr(paraformer_module, "extract_fbank", timed_extract)

    def hooks(name: str, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda *_: started.__setitem__(name, time.perf_counter()))
        module.register_forward_hook(
            lambda *_: spent.__setitem__(name, spent[name] + time.perf_counter() - started[name]))

    for name, module in parts.items():
        hooks(name, module)
    for _ in range(3):
        m.generate(input=samples)
    per_call: list[dict[str, float]] = []
    for _ in range(rounds):
        for name in spent:
            spent[name] = 0.0
        t = time.perf_counter()
        m.generate(input=samples)
        total = time.perf_counter() - t
        per_call.append(dict(spent, total=total, funasr_python=total - sum(spent.values())))
        time.sleep(0.03)
    setattr(paraformer_module, "extract_fbank", extract)
    med = {k: statistics.median(c[k] for c in per_call) for k in per_call[0]}
    model_s = med["encoder"] + med["predictor"] + med["decoder"] + med["features"]
    emit(f"profile_generate_c1{suffix}", med["total"], "(information)",
         **{f"{k}_ms": round(v * 1000, 2) for k, v in med.items()},
         model_share_c1=round(model_s / med["total"], 4), rounds=rounds, clip_s=round(len(samples) / 16000, 2))

    # Batch sizes interleaved round by round, so that the machine's drift hits every size.
    sizes = (1, 2, 4, 8)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for r in range(max(rounds // 2, 3)):
        for size in sizes[r % len(sizes):] + sizes[:r % len(sizes)]:
            time.sleep(0.03)
            t = time.perf_counter()
            if size == 1:
                m.generate(input=samples)
            else:
                m.generate(input=[samples] * size, batch_size=size)
            times[size].append((time.perf_counter() - t) / size)
    per_input = {size: statistics.median(values) for size, values in times.items()}
    emit(f"profile_batch_speedup_8{suffix}", per_input[1] / per_input[8], "(information)",
         per_input_ms={str(k): round(v * 1000, 2) for k, v in per_input.items()},
         speedup={str(k): round(per_input[1] / v, 3) for k, v in per_input.items()})
