"""A real Kubernetes control plane on loopback (etcd, kube-apiserver,
kube-controller-manager built by build-control-plane.sh) and a small REST client for it.

Run `python tests/envtest/kube.py` to start one for manual use with kubectl; it prints
the KUBECONFIG to export and runs until interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SERVICE_CIDR = "10.0.0.0/24"


class ApiError(Exception):
    """An API request answered with an error status."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(f"{status}: {body.get('message', body)}")
        self.status = status
        self.body = body


class Kube:
    """JSON REST client: a client certificate or a bearer token."""

    def __init__(self, server: str, ca: str, cert: tuple[str, str] | None = None,
                 token: str | None = None):
        self.server = server
        self.ctx = ssl.create_default_context(cafile=ca)
        if cert:
            self.ctx.load_cert_chain(*cert)
        self.token = token

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json", timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {"message": raw.decode(errors="replace")}
            raise ApiError(e.code, parsed) from None
        return json.loads(raw) if raw else None

    def ready(self) -> bool:
        """Whether the server answers /readyz with ok."""
        req = urllib.request.Request(self.server + "/readyz")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=2) as resp:
                return resp.read() == b"ok"
        except urllib.error.HTTPError:
            return False

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class ControlPlane:
    """etcd + kube-apiserver (RBAC, service-account tokens) + kube-controller-manager."""

    def __init__(self, workdir: Path | None = None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="riffle-envtest-"))
        self.pki = self.dir / "pki"
        self.procs: list[subprocess.Popen] = []
        self.bin = Path(subprocess.run(
            ["bash", str(HERE / "build-control-plane.sh")],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1])
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = self.dir / "admin.kubeconfig"

    # --- certificates -------------------------------------------------------------
    def _cert(self, name: str, subject: str, sans: str | None = None) -> None:
        key, csr, crt = (self.pki / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        openssl("genrsa", "-out", str(key), "2048")
        openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        ext = self.pki / f"{name}.ext"
        lines = ["basicConstraints=CA:FALSE",
                 "keyUsage=critical,digitalSignature,keyEncipherment",
                 "extendedKeyUsage=serverAuth,clientAuth"]
        if sans:
            lines.append(f"subjectAltName={sans}")
        ext.write_text("\n".join(lines) + "\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(self.pki / "ca.crt"),
                "-CAkey", str(self.pki / "ca.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(ext), "-out", str(crt))

    def _pki(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=riffle-envtest-ca", "-keyout", str(self.pki / "ca.key"),
                "-out", str(self.pki / "ca.crt"))
        self._cert("apiserver", "/CN=kube-apiserver",
                   "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
                   "DNS:kubernetes.default,DNS:kubernetes.default.svc")
        self._cert("admin", "/O=system:masters/CN=envtest-admin")
        self._cert("kcm", "/CN=system:kube-controller-manager")
        openssl("genrsa", "-out", str(self.pki / "sa.key"), "2048")
        openssl("rsa", "-in", str(self.pki / "sa.key"), "-pubout",
                "-out", str(self.pki / "sa.pub"))

    def write_kubeconfig(self, path: Path, user: dict[str, str], namespace: str = "default") -> Path:
        cfg = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "envtest", "cluster": {
                "server": self.server, "certificate-authority": str(self.pki / "ca.crt")}}],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "envtest", "context": {
                "cluster": "envtest", "user": "user", "namespace": namespace}}],
            "current-context": "envtest",
        }
        path.write_text(json.dumps(cfg, indent=1))
        return path

    # --- processes ----------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def start(self) -> "ControlPlane":
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "ControlPlane":
        started = time.monotonic()
        self._pki()
        etcd_port, peer_port = free_port(), free_port()
        etcd = f"http://127.0.0.1:{etcd_port}"
        self._spawn("etcd", [
            str(self.bin / "etcd"), "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
            # A throwaway store: durability of etcd itself is not under test.
            "--unsafe-no-fsync", "--log-level", "warn",
        ])
        pki = self.pki
        # Requests by service accounts are audited, so tests can compare what a
        # component did with what its RBAC grants.
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
                      {"level": "None"}]}))
        self.audit_log = self.dir / "audit.log"
        self._spawn("kube-apiserver", [
            str(self.bin / "kube-apiserver"),
            "--etcd-servers", etcd,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            # No kubernetes Service endpoints: nothing in-cluster talks to the API here.
            "--endpoint-reconciler-type", "none",
            "--secure-port", str(self.port),
            "--tls-cert-file", str(pki / "apiserver.crt"),
            "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--authorization-mode", "Node,RBAC",
            "--service-cluster-ip-range", SERVICE_CIDR,
            "--allow-privileged=true",
            # As on clusters that enforce it (OpenShift): owner references need rights
            # on the owner, which the chart's RBAC must grant.
            "--enable-admission-plugins", "OwnerReferencesPermissionEnforcement",
            "--cert-dir", str(self.dir / "apiserver-certs"),
            "--audit-policy-file", str(policy),
            "--audit-log-path", str(self.audit_log),
        ])
        admin = Kube(self.server, str(pki / "ca.crt"),
                     cert=(str(pki / "admin.crt"), str(pki / "admin.key")))
        self.admin = admin
        self.write_kubeconfig(self.kubeconfig, {
            "client-certificate": str(pki / "admin.crt"),
            "client-key": str(pki / "admin.key")})
        self._wait(admin.ready, "kube-apiserver /readyz", 120)
        kcm_cfg = self.write_kubeconfig(self.dir / "kcm.kubeconfig", {
            "client-certificate": str(pki / "kcm.crt"),
            "client-key": str(pki / "kcm.key")})
        self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"),
            "--kubeconfig", str(kcm_cfg),
            "--authentication-kubeconfig", str(kcm_cfg),
            "--authorization-kubeconfig", str(kcm_cfg),
            # What a Riffle cluster relies on; no kubelet runs, so node lifecycle
            # (which would evict every pod of a node that never heartbeats) stays off.
            "--controllers", "statefulset-controller,garbage-collector-controller,"
            "serviceaccount-controller,serviceaccount-token-controller,"
            "namespace-controller,disruption-controller,"
            "persistentvolumeclaim-protection-controller,"
            "horizontal-pod-autoscaler-controller,root-ca-certificate-publisher-controller",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"),
            "--use-service-account-credentials",
            "--leader-elect=false",
            "--secure-port", "0",
        ])
        self._wait(lambda: admin.get_or_none(
            "/api/v1/namespaces/default/serviceaccounts/default") is not None,
            "the default ServiceAccount (kube-controller-manager running)", 60)
        self.started_in = time.monotonic() - started
        return self

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: see {self.dir}")
            try:
                if ready():
                    return
            except (ApiError, OSError) as e:
                last = e
            time.sleep(0.2)
        raise TimeoutError(f"waiting for {what}: {last}")

    def audit(self, user: str) -> list[dict[str, Any]]:
        """Audit events of one user (service accounts only are audited)."""
        if not self.audit_log.exists():
            return []
        events = (json.loads(line) for line in self.audit_log.read_text().splitlines())
        return [e for e in events if e["user"]["username"] == user]

    def token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A bound token of a ServiceAccount (TokenRequest API)."""
        r = self.admin.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": seconds}})
        return r["status"]["token"]

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    cp = ControlPlane().start()
    print(f"control plane up in {cp.started_in:.1f} s; logs in {cp.dir}")
    print(f"export KUBECONFIG={cp.kubeconfig}")
    sys.stdout.flush()
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cp.cleanup()
