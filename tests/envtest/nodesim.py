"""A test double for the kubelet: runs the Pods bound to one fake Node as real processes.

No kubelet or container runtime can run on the test machines, so this stands in for
both, and does only what a Riffle cluster's Pods need:

- registers a Node and binds unscheduled Pods to it (there is no scheduler either);
- starts each Pod's first container as a process: the image's entrypoint is mapped to a
  host binary (`binaries`), the command and args and environment are resolved the
  kubelet's way (`env` over `envFrom`, ConfigMap and downward-API references, `$(VAR)`
  expansion);
- gives each Pod its own loopback address (127.0.x.y) as its Pod IP, and since there is
  no network namespace per Pod, a listen address 0.0.0.0 in the environment means that
  IP; paths under a volume mount are mapped to a host directory per
  PersistentVolumeClaim, kept across Pod restarts (a restarted Pod gets its data back);
- writes the Pods' and Services' DNS names into a hosts file, which the test run
  bind-mounts over /etc/hosts (`scripts/envtest.sh`);
- reports Running, the Pod IP and Ready from the readiness probe; restarts a container
  that exits (restartPolicy Always);
- on deletion runs the container's `preStop` exec hook (in the container's environment;
  `127.0.0.1` in its arguments means the Pod's own address, as in a Pod's network
  namespace), then sends SIGTERM, waits up to the rest of the grace period, then SIGKILL,
  and removes the Pod.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kube import ApiError, Kube

NODE = "envtest-node"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    """One running Pod's process."""

    uid: str
    ip: str
    proc: subprocess.Popen
    probe: tuple[str, int, str] | None
    env: dict[str, str]
    pre_stop: list[str] | None
    ready: bool = False
    restarts: int = 0
    started: str = field(default_factory=now)


class NodeSimulator:
    """Polls the API server and keeps the Node's Pods running as processes."""

    def __init__(self, kube: Kube, root: Path, hosts_file: Path, binaries: dict[str, str],
                 interval: float = 0.2):
        self.kube = kube
        self.root = root
        self.hosts_file = hosts_file
        self.binaries = binaries
        self.interval = interval
        self.running: dict[str, Container] = {}  # "ns/name" -> container
        self.ips: dict[str, str] = {}  # "ns/name" -> stable pod IP
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="node-simulator", daemon=True)
        self.errors: list[str] = []
        self.terminating: set[str] = set()
        self.pre_stops: list[dict[str, Any]] = []  # preStop hooks run: pod, exit, seconds
        self.hosts_original = hosts_file.read_text() if hosts_file.exists() else ""

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> "NodeSimulator":
        self.root.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(30)
        for key, c in list(self.running.items()):
            self._kill(c, 5)
            del self.running[key]

    def _register_node(self) -> None:
        if self.kube.get_or_none(f"/api/v1/nodes/{NODE}") is None:
            self.kube.post("/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
            })
        self.kube.merge_patch(f"/api/v1/nodes/{NODE}/status", {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "Simulated",
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
        }})

    def _loop(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.sync()
            except Exception as e:  # keep simulating; the tests see the errors
                self.errors.append(repr(e))
            self.stop_flag.wait(self.interval)

    # --- one pass ----------------------------------------------------------------------
    def sync(self) -> None:
        pods = self.kube.get("/api/v1/pods")["items"]
        seen = set()
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            key = f"{meta['namespace']}/{meta['name']}"
            seen.add(key)
            if not spec.get("nodeName"):
                self._bind(pod)
                continue
            if spec["nodeName"] != NODE:
                continue
            c = self.running.get(key)
            if c and c.uid != meta["uid"]:  # replaced by a new Pod of the same name
                self._kill(c, 0)
                del self.running[key]
                c = None
            if meta.get("deletionTimestamp"):
                # Pods stop in parallel, as on a real node.
                if key not in self.terminating:
                    self.terminating.add(key)
                    threading.Thread(target=self._terminate, args=(pod, key), daemon=True,
                                     name=f"terminate {key}").start()
                continue
            if c is None:
                c = self._start(pod)
                self.running[key] = c
            elif c.proc.poll() is not None:
                c.restarts += 1
                c.ready = False
                c = self._start(pod, c.restarts)
                self.running[key] = c
            self._report(pod, c)
        for key in list(self.running):
            if key not in seen and key not in self.terminating:  # force-deleted
                self._kill(self.running.pop(key), 0)
        self._write_hosts(pods)

    def _bind(self, pod: dict[str, Any]) -> None:
        m = pod["metadata"]
        try:
            self.kube.post(f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}/binding", {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": m["name"], "namespace": m["namespace"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
            })
        except ApiError as e:
            if e.status not in (404, 409):
                raise

    def _ip(self, key: str) -> str:
        if key not in self.ips:
            n = len(self.ips) + 1
            self.ips[key] = f"127.0.{10 + n // 250}.{1 + n % 250}"
        return self.ips[key]

    # --- starting a container ----------------------------------------------------------
    def _start(self, pod: dict[str, Any], restarts: int = 0) -> Container:
        meta, spec = pod["metadata"], pod["spec"]
        key = f"{meta['namespace']}/{meta['name']}"
        ip = self._ip(key)
        ctr = spec["containers"][0]
        mounts = self._mounts(pod, ctr)
        env = self._env(pod, ctr, ip)
        env = {k: self._map_paths(self._listen(v, ip), mounts) for k, v in env.items()}
        command = ctr.get("command", []) + ctr.get("args", [])
        if not command:
            raise RuntimeError(f"{key}: the simulator needs an explicit command")
        command = self._exec_args(command, env, mounts)
        hook = (((ctr.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {})
        pre_stop = (self._exec_args([a.replace("127.0.0.1:", f"{ip}:") for a in hook["command"]],
                                    env, mounts) if hook.get("command") else None)
        log = self._log(meta)
        log.write(f"--- start {now()} {command}\n".encode())
        log.flush()
        env = {"PATH": os.environ.get("PATH", ""), **env}
        if "RIFFLE_LOG" in os.environ:  # a log filter for every broker, when debugging
            env.setdefault("RIFFLE_LOG", os.environ["RIFFLE_LOG"])
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        return Container(uid=meta["uid"], ip=ip, proc=proc, probe=self._probe(ctr, ip),
                         env=env, pre_stop=pre_stop, restarts=restarts)

    def _log(self, meta: dict[str, Any]):
        return open(self.root / f"{meta['namespace']}_{meta['name']}.log", "ab")

    def _exec_args(self, args: list[str], env: dict[str, str], mounts: dict[str, Path]
                   ) -> list[str]:
        """An exec command line as a host command: `$(VAR)` expanded, the image's binaries
        and volume paths mapped to the host's."""
        args = [expand(a, env) for a in args]
        args[0] = self.binaries.get(args[0], args[0])
        return [self._map_paths(a, mounts) for a in args]

    def _mounts(self, pod: dict[str, Any], ctr: dict[str, Any]) -> dict[str, Path]:
        """Mount path -> host directory, for volumes backed by a PVC or an emptyDir."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        out = {}
        for m in ctr.get("volumeMounts", []):
            v = volumes.get(m["name"], {})
            if "persistentVolumeClaim" in v:
                d = self.root / "pvc" / ns / v["persistentVolumeClaim"]["claimName"]
            elif "emptyDir" in v:
                d = self.root / "emptydir" / ns / name / m["name"]
            else:
                continue
            d.mkdir(parents=True, exist_ok=True)
            out[m["mountPath"].rstrip("/")] = d
        return out

    @staticmethod
    def _map_paths(value: str, mounts: dict[str, Path]) -> str:
        for path, host in mounts.items():
            if value == path or value.startswith(path + "/"):
                return str(host) + value[len(path):]
        return value

    @staticmethod
    def _listen(value: str, ip: str) -> str:
        return re.sub(r"^0\.0\.0\.0:", f"{ip}:", value)

    def _env(self, pod: dict[str, Any], ctr: dict[str, Any], ip: str) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for src in ctr.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = self._config_map(ns, src["configMapRef"]["name"],
                                        src["configMapRef"].get("optional", False))
                env.update({prefix + k: v for k, v in data.items()})
        for e in ctr.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
            elif "valueFrom" in e:
                env[e["name"]] = self._value_from(pod, e["valueFrom"], ip)
        return env

    def _config_map(self, ns: str, name: str, optional: bool) -> dict[str, str]:
        cm = self.kube.get_or_none(f"/api/v1/namespaces/{ns}/configmaps/{name}")
        if cm is None:
            if optional:
                return {}
            raise RuntimeError(f"configmap {ns}/{name} not found")
        return cm.get("data", {})

    def _value_from(self, pod: dict[str, Any], src: dict[str, Any], ip: str) -> str:
        if "fieldRef" in src:
            path = src["fieldRef"]["fieldPath"]
            meta = pod["metadata"]
            m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
            if m:
                return meta.get(m.group(1), {}).get(m.group(2), "")
            return {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                    "metadata.uid": meta["uid"], "spec.nodeName": NODE,
                    "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
                    "status.podIP": ip, "status.hostIP": "127.0.0.1"}[path]
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            return self._config_map(pod["metadata"]["namespace"], ref["name"],
                                    ref.get("optional", False)).get(ref["key"], "")
        raise RuntimeError(f"unsupported valueFrom {src}")

    @staticmethod
    def _probe(ctr: dict[str, Any], ip: str) -> tuple[str, int, str] | None:
        get = (ctr.get("readinessProbe") or {}).get("httpGet")
        if not get:
            return None
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in ctr.get("ports", []) if p.get("name") == port)
        return ip, port, get.get("path", "/")

    # --- status ------------------------------------------------------------------------
    def _probe_ok(self, c: Container) -> bool:
        if c.probe is None:
            return c.proc.poll() is None
        ip, port, path = c.probe
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=1) as r:
                return 200 <= r.status < 400
        except OSError:
            return False

    def _report(self, pod: dict[str, Any], c: Container) -> None:
        ready = c.proc.poll() is None and self._probe_ok(c)
        status = pod.get("status", {})
        if (ready == c.ready and status.get("phase") == "Running"
                and status.get("podIP") == c.ip):
            return
        c.ready = ready
        meta = pod["metadata"]
        ctr = pod["spec"]["containers"][0]
        flag = "True" if ready else "False"
        conds = [{"type": t, "status": s, "lastTransitionTime": now()} for t, s in (
            ("PodScheduled", "True"), ("Initialized", "True"),
            ("ContainersReady", flag), ("Ready", flag))]
        self.kube.merge_patch(
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
            {"status": {
                "phase": "Running", "podIP": c.ip, "podIPs": [{"ip": c.ip}],
                "hostIP": "127.0.0.1", "startTime": status.get("startTime") or c.started,
                "conditions": conds,
                "containerStatuses": [{
                    "name": ctr["name"], "image": ctr.get("image", ""), "imageID": "",
                    "ready": ready, "started": True, "restartCount": c.restarts,
                    "state": {"running": {"startedAt": c.started}}}],
            }})

    # --- stopping ----------------------------------------------------------------------
    @staticmethod
    def _kill(c: Container, grace: float) -> None:
        if c.proc.poll() is not None:
            return
        os.killpg(c.proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            c.proc.wait(grace if grace > 0 else 10)
        except subprocess.TimeoutExpired:
            os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait()

    def _terminate(self, pod: dict[str, Any], key: str) -> None:
        """The preStop hook, SIGTERM, up to the rest of the grace period, SIGKILL; then the
        Pod object goes."""
        try:
            c = self.running.get(key)
            if c and c.uid == pod["metadata"]["uid"]:
                grace = pod["metadata"].get("deletionGracePeriodSeconds") or 30
                if c.pre_stop and c.proc.poll() is None and grace > 0:
                    grace = max(grace - self._pre_stop(pod, key, c, grace), 2)
                self._kill(c, grace)
                self.running.pop(key, None)
            self._remove(pod)
        except Exception as e:
            self.errors.append(f"terminating {key}: {e!r}")
        finally:
            self.terminating.discard(key)

    def _pre_stop(self, pod: dict[str, Any], key: str, c: Container, grace: float) -> float:
        """Runs the hook within the grace period, as the kubelet does (a failing hook is
        reported and the container stops anyway); returns the seconds it took."""
        t0 = time.monotonic()
        with self._log(pod["metadata"]) as log:
            log.write(f"--- preStop start {now()} {c.pre_stop}\n".encode())
            log.flush()
            try:
                r = subprocess.run(c.pre_stop, env=c.env, stdout=log, stderr=subprocess.STDOUT,
                                   timeout=grace)
                rc: int | None = r.returncode
            except subprocess.TimeoutExpired:
                rc = None
            log.write(f"--- preStop exit {rc}\n".encode())
        took = time.monotonic() - t0
        self.pre_stops.append({"pod": key, "exit": rc, "seconds": took, "at": time.time()})
        return took

    def _remove(self, pod: dict[str, Any]) -> None:
        m = pod["metadata"]
        try:
            self.kube.delete(f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}", {
                "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": m["uid"]}})
        except ApiError as e:
            if e.status not in (404, 409):
                raise

    # --- DNS ---------------------------------------------------------------------------
    def _write_hosts(self, pods: list[dict[str, Any]]) -> None:
        lines = [self.hosts_original.rstrip("\n"), "# pods and services (node simulator)"]
        by_ns: dict[str, list[tuple[dict[str, Any], Container]]] = {}
        for pod in pods:
            m = pod["metadata"]
            c = self.running.get(f"{m['namespace']}/{m['name']}")
            if c is None or m.get("deletionTimestamp"):
                continue
            by_ns.setdefault(m["namespace"], []).append((pod, c))
            spec = pod["spec"]
            if spec.get("hostname") and spec.get("subdomain"):
                name = f"{spec['hostname']}.{spec['subdomain']}.{m['namespace']}.svc"
                lines.append(f"{c.ip} {name} {name}.cluster.local")
        for ns, members in sorted(by_ns.items()):
            for svc in self.kube.get(f"/api/v1/namespaces/{ns}/services")["items"]:
                sel = svc["spec"].get("selector")
                if not sel:
                    continue
                all_ok = svc["spec"].get("publishNotReadyAddresses", False)
                name = f"{svc['metadata']['name']}.{ns}.svc"
                for pod, c in members:
                    labels = pod["metadata"].get("labels", {})
                    if all(labels.get(k) == v for k, v in sel.items()) and (all_ok or c.ready):
                        lines.append(f"{c.ip} {name} {name}.cluster.local")
        text = "\n".join(lines) + "\n"
        # Rewritten in place: the file is bind-mounted, a rename would detach it.
        if self.hosts_file.read_text() != text:
            with open(self.hosts_file, "r+") as f:
                f.write(text)
                f.truncate()

    def restore_hosts(self) -> None:
        with open(self.hosts_file, "r+") as f:
            f.write(self.hosts_original)
            f.truncate()


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: known names are replaced, `$$` escapes."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)
