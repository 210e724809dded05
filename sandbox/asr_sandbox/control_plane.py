"""A real Kubernetes control plane on 127.0.0.1: etcd + kube-apiserver + kube-controller-manager.

The upstream binaries come from a folder named by `KUBEBUILDER_ASSETS` (the envtest convention;
`.ci/run` unpacks `../shared/kubernetes/*.xz` there); etcd is that folder's `etcd` or Debian's
`etcd-server` on PATH. There is no kubelet and no scheduler: pods stay Pending until a test's
stand-in kubelet writes their status. The controller-manager runs the real Deployment,
ReplicaSet and garbage-collector controllers, so ownerReferences really collect children.

The admin authenticates with a static token (`--token-auth-file`), so a plain HTTP client with a
bearer header works; TLS uses the API server's self-signed certificate (clients skip
verification, as `insecure-skip-tls-verify` does in the kubeconfig written here).
"""
from __future__ import annotations

import os
import secrets
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

import yaml

from .processes import ManagedProcess, free_port

ASSETS_ENV = "KUBEBUILDER_ASSETS"
BINARIES = ("kube-apiserver", "kube-controller-manager")
HOW_TO_ENABLE = (f"set {ASSETS_ENV} to a folder holding the upstream kube-apiserver and "
                 "kube-controller-manager binaries (v1.28; `.ci/run` unpacks ../shared/kubernetes/*.xz) "
                 "and install Debian's etcd-server")


class ControlPlaneError(RuntimeError):
    pass


def missing_parts(env: dict[str, str] | None = None) -> list[str]:
    """What is missing to run a control plane here (empty: it can run)."""
    env = dict(os.environ if env is None else env)
    folder = env.get(ASSETS_ENV)
    missing = []
    if not folder:
        missing.append(f"{ASSETS_ENV} is not set")
    else:
        for binary in BINARIES:
            if not os.access(Path(folder) / binary, os.X_OK):
                missing.append(f"{Path(folder) / binary} is missing or not executable")
    if etcd_binary(folder) is None:
        missing.append("etcd is not installed (apt-get install etcd-server)")
    return missing


def etcd_binary(folder: str | None) -> str | None:
    if folder and os.access(Path(folder) / "etcd", os.X_OK):
        return str(Path(folder) / "etcd")
    return shutil.which("etcd")


def write_kubeconfig(path: Path, server: str, token: str, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "admin",
        "clusters": [{"name": "real", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "admin", "context": {"cluster": "real", "user": "admin", "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


class ControlPlane:
    """Start with `with ControlPlane(workdir) as cp:`; `cp.url`, `cp.token`, `cp.kubeconfig`."""

    def __init__(self, workdir: Path, assets: str | None = None) -> None:
        self.workdir = workdir
        self.assets = Path(assets or os.environ.get(ASSETS_ENV, ""))
        self.token = secrets.token_hex(16)
        self.api_port = 0
        self.processes: dict[str, ManagedProcess] = {}
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.audit_log = workdir / "audit.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Self:
        missing = missing_parts({ASSETS_ENV: str(self.assets)} if str(self.assets) else {})
        if missing:
            raise ControlPlaneError("cannot start a control plane: " + "; ".join(missing) + ". " + HOW_TO_ENABLE)
        self.workdir.mkdir(parents=True, exist_ok=True)
        key, pub = self._service_account_keys()
        (self.workdir / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        etcd_port, peer_port, self.api_port, kcm_port = (free_port() for _ in range(4))
        try:
            self._spawn("etcd", [
                etcd_binary(str(self.assets)) or "etcd", "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync"])  # a throwaway store: fsync only slows the tests down
            self._spawn("kube-apiserver", [
                str(self.assets / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--secure-port={self.api_port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--cert-dir={self.workdir / 'certs'}", f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pub}", f"--service-account-signing-key-file={key}",
                "--service-cluster-ip-range=10.96.0.0/16", "--endpoint-reconciler-type=none",
                # Every request, with its user and answer: tests read who called what (RBAC).
                f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self.audit_log}",
                # OpenShift runs this plugin: owner references need finalizers permission.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement"])
            self._wait_ready(timeout)
            write_kubeconfig(self.kubeconfig, self.url, self.token)
            self._spawn("kube-controller-manager", [
                str(self.assets / "kube-controller-manager"), f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
                f"--service-account-private-key-file={key}", f"--root-ca-file={self.workdir / 'certs' / 'apiserver.crt'}",
                "--leader-elect=false", "--use-service-account-credentials=false", "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}", "--cluster-cidr=10.244.0.0/16", "--service-cluster-ip-range=10.96.0.0/16",
                "--controllers=*,-nodeipam,-nodelifecycle,-ttl,-cloud-node-lifecycle"])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # kube-apiserver drains watches for up to a minute on SIGTERM: SIGKILL everything.
        for process in reversed(list(self.processes.values())):
            process.kill()
        self.processes.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, component: str, chars: int = 4000) -> str:
        process = self.processes.get(component)
        return process.log_tail(chars) if process else ""

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.processes[name] = ManagedProcess(argv, self.workdir / f"{name}.log", die_with_parent=True).start()

    def _audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                        "omitStages": ["RequestReceived", "ResponseStarted"],
                                        "rules": [{"level": "Metadata"}]}))
        return path

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        """The audit log's entries so far (optionally only `user`'s): verb, objectRef, responseStatus."""
        import json
        events = []
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if user is None or (event.get("user") or {}).get("username") == user:
                events.append(event)
        return events

    def _service_account_keys(self) -> tuple[Path, Path]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_path, pub_path = self.workdir / "sa.key", self.workdir / "sa.pub"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
        return key_path, pub_path

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if not process.running:
                    raise ControlPlaneError(f"{name} exited during start-up:\n{process.log_tail(3000)}")
            try:
                if self.request("GET", "/readyz") == "ok":
                    return
            except (OSError, urllib.error.URLError) as error:
                last = str(error)
            time.sleep(0.3)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout:.0f}s ({last}):\n"
                                f"{self.log_tail('kube-apiserver', 3000)}")

    # --- a minimal admin client (the tests have their own richer one) -----------------------

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        import json
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type, "Accept": "application/json"})
        context = ssl._create_unverified_context()  # the API server's own self-signed certificate
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            text = response.read().decode()
        try:
            return json.loads(text)
        except ValueError:
            return text

    def apply_crd(self, crd: dict[str, Any], timeout: float = 30.0) -> None:
        """Create (or replace) a CustomResourceDefinition and wait until it is Established."""
        name = crd["metadata"]["name"]
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        try:
            self.request("POST", path, crd)
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise ControlPlaneError(f"CRD {name} refused: {error.read().decode()[:2000]}") from None
            live = self.request("GET", f"{path}/{name}")
            self.request("PUT", f"{path}/{name}", {**crd, "metadata": {
                **crd["metadata"], "resourceVersion": live["metadata"]["resourceVersion"]}})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.request("GET", f"{path}/{name}")
            conditions = {c["type"]: c["status"] for c in (live.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                # Discovery of the new group lags Established by a moment.
                group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
                try:
                    self.request("GET", f"/apis/{group}/{version}")
                    return
                except urllib.error.HTTPError:
                    pass
            time.sleep(0.2)
        raise ControlPlaneError(f"CRD {name} not established after {timeout:.0f}s")

    def delete_crd(self, name: str, timeout: float = 60.0) -> None:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        try:
            self.request("DELETE", path)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return
            raise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.request("GET", path)
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return
                raise
            time.sleep(0.2)
        raise ControlPlaneError(f"CRD {name} still present after {timeout:.0f}s")

    def ensure_namespace(self, namespace: str) -> None:
        try:
            self.request("POST", "/api/v1/namespaces",
                         {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise

