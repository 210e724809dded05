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


def exec_plugin(folder: Any, token: str) -> str:
    """A kubectl `exec` credential plugin: a script printing an ExecCredential (as EKS's
    `aws eks get-token` or GKE's `gke-gcloud-auth-plugin` do)."""
    import json
    import stat
    import sys
    script = folder / "get-token"
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": token}}
    script.write_text(f"#!{sys.executable}\nprint({json.dumps(json.dumps(credential))})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_login_runs_exec_plugins_and_picks_the_context(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from asr_operator.kube import login_info
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "static",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "static", "user": {"token": "abc"}},
                  {"name": "plugin", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                       "command": exec_plugin(tmp_path, "from-plugin"),
                                                       "interactiveMode": "Never"}}}],
        "contexts": [{"name": "static", "context": {"cluster": "c", "user": "static", "namespace": "one"}},
                     {"name": "eks", "context": {"cluster": "c", "user": "plugin", "namespace": "two"}}],
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    current = login_info()
    assert (current.token, current.default_namespace, current.insecure) == ("abc", "one", True)
    chosen = login_info(context="eks")
    assert (chosen.scheme, chosen.token, chosen.default_namespace) == ("Bearer", "from-plugin", "two")
    assert chosen.as_http_headers()["Authorization"] == "Bearer from-plugin"
    with pytest.raises(kopf.LoginError, match="context 'nope' is not in the kubeconfig"):
        login_info(context="nope")
    with pytest.raises(kopf.LoginError, match="pass --kubeconfig FILE"):
        login_info(kubeconfig=str(tmp_path / "missing"))


def test_insecure_skip_verify_still_presents_a_client_certificate(tmp_path: Any) -> None:
    """An exec plugin or kubeconfig may log in by client certificate on an unverified server."""
    import ssl
    import subprocess
    from asr_operator.kube import _ssl_context
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=tester"], check=True, capture_output=True)
    context = _ssl_context(kopf.ConnectionInfo(server="https://x", insecure=True,
                                               certificate_path=str(cert), private_key_path=str(key)))
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE
    assert _ssl_context(kopf.ConnectionInfo(server="https://x", insecure=True)) is False
