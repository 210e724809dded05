"""The multipart upload every server test sends (OpenAI's transcription request shape)."""
from __future__ import annotations

import aiohttp


def form(data: bytes | None, filename: str = "clip.wav", **fields: str) -> aiohttp.FormData:
    """`file` (left out when `data` is None) plus any other form fields, as the openai client sends them."""
    f = aiohttp.FormData(default_to_multipart=True)
    if data is not None:
        f.add_field("file", data, filename=filename, content_type="audio/wav")
    for key, value in fields.items():
        f.add_field(key, value)
    return f
