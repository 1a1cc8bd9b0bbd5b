"""Session fixtures of the real-API-server tier: the control plane, the node simulator,
the chart installed with helm, and the operator running under the chart's
ServiceAccount. Run through scripts/envtest.sh (it provides the private /etc/hosts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kube import REPO, ControlPlane, free_port  # noqa: E402
from nodesim import NodeSimulator  # noqa: E402

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
VENV_BIN = REPO / ".venv" / "bin"
RELEASE, OPERATOR_NS = "riffle", "riffle-system"
OPERATOR_SA = f"{RELEASE}-operator"
NS = "journey"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60, every: float = 0.25,
             explain: Callable[[], Any] | None = None):
    """Polls `check` until it returns something truthy; returns that. On a timeout the
    message carries what `explain` says about the state reached."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # the condition may not be checkable yet
            last = e
        time.sleep(every)
    state = ""
    if explain:
        try:
            state = f"; state: {explain()}"
        except Exception as e:
            state = f"; state unknown: {e!r}"
    raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                         f"(last error: {last}){state}")


class Load:
    """A producer thread (acks=all, idempotent) that keeps what was acknowledged: as
    fast as it goes, or `rate` records of `size` bytes per second."""

    def __init__(self, bootstrap: str, topic: str, rate: float | None = None, size: int = 0):
        from confluent_kafka import Producer
        self.p = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                           "enable.idempotence": True, "linger.ms": 5,
                           "message.timeout.ms": 120000})
        self.topic, self.rate, self.size = topic, rate, size
        self.acked: set[str] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        i, started = 0, time.monotonic()
        while not self.stop.is_set():
            if self.rate and i >= (time.monotonic() - started) * self.rate:
                self.p.poll(0.005)
                continue
            value = f"r{i}"

            def done(err, msg, value=value):
                if err is not None:
                    self.errors.append(str(err))
                else:
                    self.acked.add(value)

            try:
                self.p.produce(self.topic, value=value.encode().ljust(self.size, b"."),
                               on_delivery=done)
                i += 1
            except BufferError:
                pass
            self.p.poll(0 if self.rate else 0.01)
        self.p.flush(120)

    def finish(self) -> None:
        self.stop.set()
        self.t.join(180)

    def read_back(self, bootstrap: str, group: str) -> None:
        """Asserts that every acknowledged record can be consumed."""
        from confluent_kafka import Consumer
        self.finish()
        assert not self.errors, self.errors[:5]
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([self.topic])
        got: set[str] = set()
        deadline = time.monotonic() + 120
        while not self.acked <= got and time.monotonic() < deadline:
            m = c.poll(1)
            if m is not None and m.error() is None:
                got.add(m.value().rstrip(b".").decode())
        c.close()
        missing = self.acked - got
        assert not missing, f"{len(missing)} acknowledged records missing, e.g. {sorted(missing)[:5]}"
        print(f"{len(self.acked)} acknowledged records, all read back")


class GroupReader:
    """A consumer-group member reading `topic` from a thread (auto commit): counts the
    records it gets and keeps the errors the client reports as fatal."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        from confluent_kafka import Consumer
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                           "auto.offset.reset": "earliest", "session.timeout.ms": 10000})
        self.c.subscribe([topic])
        self.read = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            for m in self.c.consume(num_messages=100, timeout=0.2):
                if m.error() is None:
                    self.read += 1
                elif m.error().fatal():
                    self.errors.append(str(m.error()))

    def finish(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            self.t.join(30)
            self.c.close()


class Env:
    """Everything a test needs: API access, kubectl/helm, the operator process."""

    def __init__(self, cp: ControlPlane, sim: NodeSimulator, workdir: Path):
        self.cp, self.kube, self.sim, self.dir = cp, cp.admin, sim, workdir
        self.operator: subprocess.Popen | None = None
        self.operator_port = free_port()
        self.helm_home = workdir / "helm"

    def kubectl(self, *args: str, check: bool = True, input: str | None = None
                ) -> subprocess.CompletedProcess:
        r = subprocess.run([str(VENV_BIN / "kubectl"), "--kubeconfig", str(self.cp.kubeconfig),
                            *args], capture_output=True, text=True, input=input, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {r.stderr}")
        return r

    def helm(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "HELM_CACHE_HOME": str(self.helm_home / "cache"),
               "HELM_CONFIG_HOME": str(self.helm_home / "config"),
               "HELM_DATA_HOME": str(self.helm_home / "data"),
               "KUBECONFIG": str(self.cp.kubeconfig)}
        r = subprocess.run([str(VENV_BIN / "helm"), *args], capture_output=True, text=True,
                           env=env, timeout=300)
        if r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {r.stderr}")
        return r

    # --- the operator, as the chart deploys it --------------------------------------
    def operator_deployment(self) -> dict[str, Any]:
        return self.kube.get(
            f"/apis/apps/v1/namespaces/{OPERATOR_NS}/deployments/{OPERATOR_SA}")

    def start_operator(self) -> None:
        """Runs riffle-operator as the chart deploys it (see `spawn_operator`)."""
        assert self.operator is None or self.operator.poll() is not None
        self.operator = self.spawn_operator("riffle-operator-envtest", self.operator_port)
        wait_for(self.operator_ready, "the operator's /readyz", 60)

    def spawn_operator(self, pod_name: str, port: int) -> subprocess.Popen:
        """riffle-operator with the Deployment's args and environment, as its
        ServiceAccount (a token from the TokenRequest API), so the chart's RBAC is what
        the operator gets; `pod_name` is its identity in leader election."""
        pod = self.operator_deployment()["spec"]["template"]["spec"]
        ctr = pod["containers"][0]
        token = self.cp.token(OPERATOR_NS, pod["serviceAccountName"])
        kubeconfig = self.cp.write_kubeconfig(self.dir / f"{pod_name}.kubeconfig",
                                              {"token": token}, OPERATOR_NS)
        env = {"PATH": os.environ["PATH"], "KUBECONFIG": str(kubeconfig),
               "POD_NAME": pod_name, "POD_NAMESPACE": OPERATOR_NS}
        for e in ctr.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
        args = [a.replace("0.0.0.0:", "127.0.0.1:").replace(
            f":{ctr['ports'][0]['containerPort']}", f":{port}")
            for a in ctr.get("args", [])]
        assert ctr["command"] == ["riffle-operator"], ctr["command"]
        log = open(self.dir / f"{pod_name}.log", "ab")
        return subprocess.Popen([str(TARGET / "riffle-operator"), *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)

    def operator_ready(self) -> bool:
        assert self.operator and self.operator.poll() is None, "operator exited"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.operator_port}/readyz",
                                    timeout=1) as r:
            return r.status == 200

    def stop_operator(self, sig: int = 9) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.send_signal(sig)
            self.operator.wait(30)

    def operator_log(self) -> str:
        return (self.dir / "riffle-operator-envtest.log").read_text(errors="replace")

    # --- shortcuts --------------------------------------------------------------------
    def get(self, path: str) -> Any:
        return self.kube.get(path)

    def cluster(self, name: str, ns: str = NS) -> dict[str, Any]:
        return self.kube.get(f"/apis/riffle.dev/v1alpha1/namespaces/{ns}/clusters/{name}")

    def apply(self, doc: dict[str, Any] | str, ns: str = NS, *flags: str,
              check: bool = True) -> subprocess.CompletedProcess:
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
        return self.kubectl("apply", "-n", ns, *flags, "-f", "-", input=text, check=check)


@pytest.fixture(scope="session")
def env():
    if not os.environ.get("RIFFLE_ENVTEST_HOSTS"):
        pytest.exit("run this tier through scripts/envtest.sh (it owns /etc/hosts)", 2)
    for binary in ("riffle", "riffle-operator"):
        assert (TARGET / binary).exists(), f"build {binary} first (cargo build --release)"
    workdir = Path(tempfile.mkdtemp(prefix="riffle-envtest-"))
    cp = ControlPlane(workdir / "control-plane").start()
    print(f"\ncontrol plane started in {cp.started_in:.1f} s ({workdir})")
    sim = NodeSimulator(cp.admin, workdir / "node", Path("/etc/hosts"),
                        {"/usr/local/bin/riffle": str(TARGET / "riffle")}).start()
    e = Env(cp, sim, workdir)
    try:
        yield e
    finally:
        e.stop_operator()
        sim.stop()
        sim.restore_hosts()
        cp.stop()
        if os.environ.get("RIFFLE_ENVTEST_KEEP"):
            print(f"envtest files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "finale: runs after every other test of the tier")


def pytest_collection_modifyitems(items):
    """The chart's RBAC audit and its uninstall end the session, after every test."""
    items.sort(key=lambda i: i.get_closest_marker("finale") is not None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach what the operator and the simulator said."""
    report = yield
    e = item.funcargs.get("installed") or item.funcargs.get("env")
    if report.failed and isinstance(e, Env):
        tail = "\n".join(e.operator_log().splitlines()[-60:]) if e.operator else ""
        report.sections.append(("operator log (tail)", tail))
        report.sections.append(("node simulator errors", "\n".join(e.sim.errors[-20:])))
        report.sections.append(("broker events", broker_events(e)))
    return report


# Log lines that tell a cluster's story: membership, controller moves, fencing,
# maintenance, restarts (not the per-partition replication chatter).
STORY = ("starting riffle", "SIGTERM", "now the active controller", "fencing broker",
         "maintenance", "leaderships", "preferred", "metadata locally", "panicked")


def broker_events(e: Env, per_broker: int = 25) -> str:
    """The last story lines of every broker process written to in the last 5 minutes."""
    out = []
    recent = time.time() - 300
    for log in sorted(e.sim.root.glob("*.log")):
        if log.stat().st_mtime < recent:
            continue
        lines = [ln[:300] for ln in log.read_text(errors="replace").splitlines()
                 if any(k in ln for k in STORY)]
        if lines:
            out.append(f"-- {log.stem}")
            out.extend(lines[-per_broker:])
    return "\n".join(out)


@pytest.fixture(scope="session")
def installed(env: Env) -> Env:
    """The chart installed by helm as users install it, and its operator running."""
    # Shorter than the defaults (300 s each) so that the tier sees a stuck roll stop and
    # the operator's preferred-leader elections within seconds.
    env.helm("install", RELEASE, str(REPO / "charts" / "riffle"), "--namespace", OPERATOR_NS,
             "--create-namespace", "--set",
             "extraArgs={--broker-restart-timeout=30,--leader-election-interval=2}")
    env.kubectl("create", "namespace", NS)
    env.start_operator()
    return env


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
