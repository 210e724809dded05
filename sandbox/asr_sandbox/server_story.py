"""The inference server's own short story (one server, no operator): hot reload under traffic.

    python -m asr_sandbox.demo --server-only --assets .assets     (or python -m asr_sandbox.server_story)

1. start a real server on paraformer-tiny v1 (real FSMN-VAD), config in a ConfigMap-like dir
2. send traffic from 4 concurrent clients
3. hot-reload v2 under that traffic (atomic `..data` symlink swap, as the kubelet does)
4. try a corrupted version: refused, v2 keeps serving
5. print the timeline and show that no request was lost
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from asr_sandbox.assets import build_all

T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.2f}s] {message}", flush=True)


async def traffic(server: ServerProcess, clip: bytes, stop: asyncio.Event,
                  results: list[tuple[float, int, str | None]]) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            form = aiohttp.FormData(default_to_multipart=True)
            form.add_field("file", clip, filename="clip.wav", content_type="audio/wav")
            form.add_field("model", "paraformer-tiny")
            try:
                async with session.post(server.url + "/v1/audio/transcriptions", data=form) as r:
                    await r.read()
                    results.append((time.monotonic() - T0, r.status, r.headers.get("X-Model-Version")))
            except aiohttp.ClientError:
                results.append((time.monotonic() - T0, 0, None))


async def story(assets: Path) -> int:
    build_all(assets)
    clip = (assets / "audio" / "speech_gap.wav").read_bytes()
    with tempfile.TemporaryDirectory(prefix="asr-demo-") as tmp_name:
        tmp = Path(tmp_name)
        cm = ConfigMapDir(tmp / "configmap")
        cm.swap(model_config("v1"))
        say("starting the inference server on paraformer-tiny v1 (with real FSMN-VAD)")
        server = ServerProcess(cm.path, assets / "models", tmp / "server.log",
                               extra_args=["--watch-interval", "0.2"]).start()
        try:
            _, models = server.get_json("/v1/models")
            say(f"ready at {server.url}: serving {models['serving']['version']} "
                f"sha256 {models['serving']['sha256'][:12]}…, loaded in {models['serving']['load_seconds']} s")
            stop = asyncio.Event()
            results: list[tuple[float, int, str | None]] = []
            clients = [asyncio.create_task(traffic(server, clip, stop, results)) for _ in range(4)]
            await asyncio.sleep(3)
            say(f"traffic running: {len(results)} requests so far, all on v1")

            say("ConfigMap update: model path -> paraformer-tiny/v2 (atomic ..data swap)")
            swapped_at = time.monotonic()
            cm.swap(model_config("v2"))
            took = await asyncio.to_thread(server.wait_serving, "v2")
            say(f"v2 verified, warmed and serving {took:.2f} s after the change; no restart")
            await asyncio.sleep(3)

            say("ConfigMap update: model path -> paraformer-tiny/corrupt (model.pt altered)")
            cm.swap(model_config("corrupt"))
            while True:
                _, models = server.get_json("/v1/models")
                err = models.get("last_reload_error")
                if err and err["version"] == "corrupt":
                    break
                await asyncio.sleep(0.1)
            say(f"refused: {err['message']} (reason {err['reason']}); still serving "
                f"{models['serving']['version']}")
            await asyncio.sleep(2)
            stop.set()
            await asyncio.gather(*clients)
        finally:
            code = server.stop()
        say(f"server stopped with SIGTERM, exit code {code}")

    statuses = Counter(status for _, status, _ in results)
    before = Counter(v for t, _, v in results if t < swapped_at - T0)
    after = Counter(v for t, _, v in results if t >= swapped_at - T0)
    say(f"requests: {len(results)}; by status {dict(statuses)}")
    say(f"served before the swap: {dict(before)}; after: {dict(after)}")
    lost = len(results) - statuses.get(200, 0)
    say("no request was lost" if lost == 0 else f"{lost} request(s) failed")
    return 0 if lost == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local story: hot reload under traffic")
    parser.add_argument("--assets", type=Path, default=Path(".assets"))
    args = parser.parse_args(argv)
    return asyncio.run(story(args.assets))


if __name__ == "__main__":
    sys.exit(main())
