"""The Kubernetes REST adapter against a small real HTTP server on 127.0.0.1 (aiohttp)."""
from __future__ import annotations

from typing import Any

import aiohttp.web
import kopf
import pytest

from asr_operator.kube import KubeApi, KubeError


async def test_a_rotated_token_is_read_again_on_401() -> None:
    seen: list[str] = []

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer new":
            return aiohttp.web.json_response({"kind": "Status", "code": 401}, status=401)
        return aiohttp.web.json_response({"metadata": {"name": "x"}})

    app = aiohttp.web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server = f"http://127.0.0.1:{port}"
    try:
        api = KubeApi(kopf.ConnectionInfo(server=server, token="old"),
                      relogin=lambda: kopf.ConnectionInfo(server=server, token="new"))
        assert await api.get("/api/v1/namespaces/a/configmaps/x") == {"metadata": {"name": "x"}}
        assert seen == ["Bearer old", "Bearer new"]
        await api.close()
        stuck = KubeApi(kopf.ConnectionInfo(server=server, token="old"))  # no way to log in again
        with pytest.raises(KubeError) as error:
            await stuck.get("/api/v1/namespaces/a/configmaps/x")
        assert error.value.status == 401 and "HTTP 401" in str(error.value)
        await stuck.close()
    finally:
        await runner.cleanup()


async def test_list_filters_by_labels_itself(api: Any) -> None:
    """Listing by labels returns only matching objects (the adapter also filters client-side,
    for API servers or emulators that ignore selectors)."""
    from tests.support.kube import KubeClient
    kube = KubeClient(api.url)
    for name, track in (("a", "stable"), ("b", "canary")):
        kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": name, "namespace": "kube-list", "labels": {"asr.rollout.dev/track": track}},
                     "data": {}})
    client = KubeApi(kopf.ConnectionInfo(server=api.url))
    items = await client.list("/api/v1/namespaces/kube-list/configmaps", {"asr.rollout.dev/track": "canary"})
    await client.close()
    assert [item["metadata"]["name"] for item in items] == ["b"]
