"""Malformed variants of a good WAV for the fuzz checks: flipped header bytes, cuts anywhere."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def mangled_wavs(good: bytes, rng: np.random.Generator, count: int, max_cut: int = 60) -> Iterator[bytes]:
    """`count` variants of `good`: odd ones with 4 random header bytes flipped, even ones cut
    to 1..`max_cut` bytes."""
    for i in range(count):
        data = bytearray(good)
        if i % 2:
            for pos in rng.integers(0, 44, size=4):
                data[pos] = int(rng.integers(0, 256))
        else:
            data = data[: int(rng.integers(1, max_cut))]
        yield bytes(data)
