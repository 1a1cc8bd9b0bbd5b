"""Shared helpers for the Riffle client-compatibility suite.

Everything here is client-agnostic: the broker process wrapper, the
multi-broker ``Cluster`` wrapper, bounded waiting, test-data generation and
comparison.  Raw Kafka wire encoding lives in ``kafka_wire.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import kafka_wire

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every wait in the suite is bounded by one of these.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
DEFAULT_WAIT_S = 30.0
# Stopping a whole cluster at once: no broker can hand its leaderships to
# another, so allow a controlled shutdown that gives up after 30 s.
CLUSTER_STOP_TIMEOUT_S = 45.0


def _die_with_parent():
    """Runs in the forked child: SIGKILL the broker if the test runner dies,
    so an aborted run never leaves brokers behind."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class BrokerBinaryMissing(RuntimeError):
    pass


def riffle_binary() -> Path:
    """Location of the broker binary: $RIFFLE_BIN, else the release build."""
    env = os.environ.get("RIFFLE_BIN")
    if env:
        path = Path(env)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
        path = target / "release" / "riffle"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BrokerBinaryMissing(
            f"riffle broker binary not found or not executable at {path}. "
            "Build it with `cargo build --release -p riffle-broker` "
            "(honours CARGO_TARGET_DIR) or point RIFFLE_BIN at it."
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all bound at once while allocating)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(predicate, timeout: float = DEFAULT_WAIT_S, interval: float = 0.1,
               message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; return that value.

    Raises AssertionError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {message}{detail}")
        time.sleep(interval)


def unique_topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Broker:
    """A real ``riffle`` process bound to 127.0.0.1 on free ports.

    The data directory and ports stay the same across ``restart()`` so the
    broker recovers its own state.  stdout/stderr go to ``log_path``.

    Every broker gets its own RPC (Raft/replication) port too.  A standalone
    broker receives it only through ``RIFFLE_RPC_LISTEN`` /
    ``RIFFLE_ADVERTISED_RPC`` in its environment (binaries without the flag
    ignore the variables; binaries with it no longer all bind the default
    9093), cluster members (``rpc_flags=True``) on the command line.
    ``ports`` = (kafka, http, rpc) fixes the ports instead of allocating them.
    """

    def __init__(self, workdir: Path, node_id: int = 1, extra_args=(), env=None,
                 ports: tuple[int, int, int] | None = None, rpc_flags: bool = False,
                 host: str = "127.0.0.1", netns: str | None = None):
        self.binary = riffle_binary()
        self.host = host
        self.netns = netns
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "broker.log"
        self.node_id = node_id
        self.port, self.http_port, self.rpc_port = ports or free_ports(3)
        self.rpc_flags = rpc_flags
        self.extra_args = [str(a) for a in extra_args]
        self.env = dict(os.environ)
        self.env.setdefault("RUST_BACKTRACE", "1")
        if not rpc_flags:
            self.env["RIFFLE_RPC_LISTEN"] = self.rpc_address
            self.env["RIFFLE_ADVERTISED_RPC"] = self.rpc_address
        if env:
            self.env.update(env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.paused = False

    # -- addresses --------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def http_base(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def rpc_address(self) -> str:
        return f"{self.host}:{self.rpc_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        # `ip netns exec` execs the broker in place: the pid (and signals) stay the broker's.
        return [
            *(["ip", "netns", "exec", self.netns] if self.netns else []),
            str(self.binary),
            "--node-id", str(self.node_id),
            "--data-dir", str(self.data_dir),
            "--listen", self.bootstrap,
            "--advertised-listener", self.bootstrap,
            "--http-listen", f"{self.host}:{self.http_port}",
            *(["--rpc-listen", self.rpc_address, "--advertised-rpc", self.rpc_address]
              if self.rpc_flags else []),
            *self.extra_args,
        ]

    # -- lifecycle --------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> "Broker":
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self):
        """Start the process without waiting for readiness."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        self.paused = False
        log = open(self.log_path, "ab")
        rpc_env = "" if self.rpc_flags else f"RIFFLE_RPC_LISTEN={self.env.get('RIFFLE_RPC_LISTEN')} "
        log.write(f"\n===== start #{self.starts}: {rpc_env}{' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, cwd=self.workdir, preexec_fn=_die_with_parent,
        )
        log.close()

    def wait_ready(self, timeout: float = START_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(
                    f"riffle exited with code {rc} during startup\n{self.log_tail()}")
            if self.http_status("/readyz") == 200 and self.kafka_port_open():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"riffle not ready after {timeout}s (readyz/kafka port)\n{self.log_tail()}")
            time.sleep(0.1)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S, check: bool = True) -> int:
        """SIGTERM and wait; asserts a clean exit (code 0) when ``check``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        if self.paused:
            self.sigcont()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"riffle did not exit within {timeout}s of SIGTERM\n{self.log_tail()}")
        if check:
            assert rc == 0, f"riffle exited with code {rc} after SIGTERM\n{self.log_tail()}"
        return rc

    def kill9(self):
        assert self.is_running(), f"broker not running\n{self.log_tail()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)
        self.paused = False
        with open(self.log_path, "ab") as log:
            log.write(b"\n===== killed with SIGKILL\n")

    def sigstop(self):
        """Freeze the process (SIGSTOP): sockets stay open but nothing answers."""
        assert self.is_running(), f"broker not running\n{self.log_tail()}"
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def sigcont(self):
        if self.is_running():
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self, kill: bool = False, timeout: float = START_TIMEOUT_S) -> "Broker":
        if self.is_running():
            if kill:
                self.kill9()
            else:
                self.stop()
        return self.start(timeout)

    def cleanup(self):
        """Best-effort teardown used by fixtures; never raises."""
        if self.is_running():
            try:
                if self.paused:
                    self.sigcont()
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(STOP_TIMEOUT_S)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait(10)

    # -- probes -----------------------------------------------------------
    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.http_base + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def http_request(self, method: str, path: str, timeout: float = 15.0) -> tuple[int, dict]:
        """A JSON admin call (PUT/DELETE/GET): (status, decoded body)."""
        req = urllib.request.Request(self.http_base + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def http_status(self, path: str) -> int | None:
        try:
            return self.http_get(path, timeout=1.0)[0]
        except (OSError, urllib.error.URLError):
            return None

    def kafka_port_open(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- riffle log tail ({self.log_path}) ---\n" + "\n".join(text)

    def rss_kib(self) -> dict[str, int]:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
        return out


class Network:
    """Brokers on separate hosts of one machine: a network namespace per broker,
    each joined by a veth pair to a bridge in the test's own namespace.  The
    test (like any client) reaches every broker; ``cut`` drops all traffic
    between two brokers (blackhole routes on both sides: packets vanish, as in
    a real partition, instead of being refused) while clients still reach both.
    Needs root and iproute2; everything is removed by ``cleanup``."""

    def __init__(self):
        tag = uuid.uuid4().hex[:4]
        self.prefix = f"10.{200 + int(tag[0], 16)}.{int(tag[1:3], 16)}"
        self.bridge = f"rfbr{tag}"
        self.tag = tag
        self.hosts: dict[int, tuple[str, str]] = {}  # id -> (netns, ip)
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.prefix}.254/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")

    @staticmethod
    def _ip(*args, netns: str | None = None):
        cmd = ["ip", *(["-n", netns] if netns else []), *args]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")

    def add_host(self, node_id: int) -> tuple[str, str]:
        """A namespace with address ``prefix.node_id`` on the bridge: (netns, ip)."""
        ns, ip, veth = f"rf{self.tag}b{node_id}", f"{self.prefix}.{node_id}", f"rf{self.tag}v{node_id}"
        self._ip("netns", "add", ns)
        self.hosts[node_id] = (ns, ip)
        self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._ip("link", "set", veth, "master", self.bridge, "up")
        self._ip("addr", "add", f"{ip}/24", "dev", "eth0", netns=ns)
        self._ip("link", "set", "eth0", "up", netns=ns)
        self._ip("link", "set", "lo", "up", netns=ns)
        return ns, ip

    def cut(self, a: int, b: int):
        """Drop every packet between hosts ``a`` and ``b``."""
        for x, y in ((a, b), (b, a)):
            self._ip("route", "add", "blackhole", f"{self.hosts[y][1]}/32", netns=self.hosts[x][0])

    def heal(self, a: int, b: int):
        for x, y in ((a, b), (b, a)):
            self._ip("route", "del", "blackhole", f"{self.hosts[y][1]}/32", netns=self.hosts[x][0])

    def cleanup(self):
        for ns, _ip in self.hosts.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class Cluster:
    """``n`` riffle brokers (ids 1..n) on 127.0.0.1 forming one cluster.

    The first ``voters`` brokers are the metadata quorum (``--voters``); the
    rest, and brokers added later with ``add_broker()``, join as non-voters.
    Every broker keeps its ports and data directory (``workdir/broker<id>``)
    across restarts.  ``extra_args`` go to every broker.

    Broker HTTP endpoints relied on:

    * ``GET /readyz``: 200 once serving;
    * ``GET /v1/cluster``: ``{"controller": id|null, "brokers": [{"id": 1, "fenced": false, ...}]}``;
    * ``GET /v1/partitions/{topic}/{partition}``: ``{"role": "leader"|"follower"|"none",
      "leader_epoch", "log_start", "log_end", "high_watermark", "isr": [...],
      "batches": [{"base_offset", "last_offset", "epoch", "crc"}, ...]}`` where
      ``batches`` is every batch stored locally, log start to log end.

    Partition leaders/replicas/ISR come from Kafka Metadata (v4 over a raw
    socket, auto-creation off) asked of one specific live broker, so a frozen
    broker never stalls a probe.
    """

    def __init__(self, workdir: Path, n: int = 3, voters: int = 3, extra_args=(), env=None,
                 netns: bool = False):
        assert n >= 1 and voters >= 1
        # With ``netns`` every broker runs on its own host of a ``Network``.
        self.network = Network() if netns else None
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_args = [str(a) for a in extra_args]
        self.env = env
        self.voter_ids = list(range(1, min(voters, n) + 1))
        ports = free_ports(3 * n)
        self._ports = {i: tuple(ports[3 * (i - 1):3 * i]) for i in range(1, n + 1)}
        self.hosts = {i: self.network.add_host(i) if self.network else (None, "127.0.0.1")
                      for i in range(1, n + 1)}
        self.voters_arg = ",".join(f"{i}@{self.hosts[i][1]}:{self._ports[i][2]}"
                                   for i in self.voter_ids)
        self.brokers: dict[int, Broker] = {}
        for i in range(1, n + 1):
            self._new_broker(i, self._ports[i])

    def _new_broker(self, node_id: int, ports, extra_args=()) -> Broker:
        if node_id not in self.hosts:
            self.hosts[node_id] = (self.network.add_host(node_id) if self.network
                                   else (None, "127.0.0.1"))
        netns, host = self.hosts[node_id]
        b = Broker(self.workdir / f"broker{node_id}", node_id=node_id,
                   extra_args=["--voters", self.voters_arg, *self.extra_args, *extra_args],
                   env=self.env, ports=ports, rpc_flags=True, host=host, netns=netns)
        self.brokers[node_id] = b
        return b

    # -- membership and addresses ------------------------------------------
    @property
    def ids(self) -> list[int]:
        return sorted(self.brokers)

    def broker(self, node_id: int) -> Broker:
        return self.brokers[node_id]

    def live_ids(self) -> list[int]:
        """Brokers whose process runs and is not frozen."""
        return [i for i in self.ids if self.brokers[i].is_running() and not self.brokers[i].paused]

    @property
    def bootstrap(self) -> str:
        return ",".join(self.brokers[i].bootstrap for i in self.ids)

    @property
    def live_bootstrap(self) -> str:
        return ",".join(self.brokers[i].bootstrap for i in self.live_ids())

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> "Cluster":
        """Launch every broker not running, then wait until each answers
        ``/readyz`` and the cluster view lists all of them unfenced."""
        deadline = time.monotonic() + timeout
        for i in self.ids:
            if not self.brokers[i].is_running():
                self.brokers[i].launch()
        # Launch all before waiting: a voter may be ready only once a quorum is up.
        for i in self.ids:
            self.brokers[i].wait_ready(max(1.0, deadline - time.monotonic()))
        self.wait_unfenced(self.ids, timeout=max(1.0, deadline - time.monotonic()))
        return self

    def add_broker(self, start: bool = True, extra_args=(),
                   timeout: float = START_TIMEOUT_S) -> Broker:
        """A new broker (next id) with the same ``--voters``: joins as a non-voter."""
        node_id = max(self.ids) + 1
        b = self._new_broker(node_id, tuple(free_ports(3)), extra_args)
        if start:
            b.start(timeout)
            self.wait_unfenced([node_id], timeout=timeout)
        return b

    def kill9(self, node_id: int):
        self.brokers[node_id].kill9()

    def sigstop(self, node_id: int):
        self.brokers[node_id].sigstop()

    def sigcont(self, node_id: int):
        self.brokers[node_id].sigcont()

    def stop_broker(self, node_id: int, check: bool = True) -> int:
        """SIGTERM one broker and wait (exit code 0 asserted when ``check``)."""
        return self.brokers[node_id].stop(check=check)

    def restart(self, node_id: int, kill: bool = False, timeout: float = START_TIMEOUT_S,
                wait_unfenced: bool = True) -> Broker:
        """(Re)start a broker, stopping it first (SIGTERM, or SIGKILL when
        ``kill``) if it runs; wait for ``/readyz`` and, unless told otherwise,
        until the cluster view shows it unfenced."""
        b = self.brokers[node_id]
        if b.paused:
            b.sigcont()
        b.restart(kill=kill, timeout=timeout)
        if wait_unfenced:
            self.wait_unfenced([node_id], timeout=timeout)
        return b

    def stop(self, check: bool = True, timeout: float = CLUSTER_STOP_TIMEOUT_S) -> dict[int, int]:
        """SIGTERM every running broker at once (frozen ones are continued
        first) and wait for all; brokers already dead are skipped.  Asserts
        that each exited with code 0 within ``timeout`` when ``check``."""
        running = [b for b in self.brokers.values() if b.is_running()]
        for b in running:
            if b.paused:
                b.sigcont()
            b.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes, errors = {}, []
        for b in running:
            try:
                codes[b.node_id] = b.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait(10)
                codes[b.node_id] = None
                errors.append(f"broker {b.node_id} did not exit within {timeout}s of SIGTERM\n"
                              f"{b.log_tail()}")
                continue
            if codes[b.node_id] != 0:
                errors.append(f"broker {b.node_id} exited with code {codes[b.node_id]} "
                              f"after SIGTERM\n{b.log_tail()}")
        if check and errors:
            raise AssertionError("\n".join(errors))
        return codes

    def cleanup(self):
        """Best-effort teardown used by fixtures; never raises."""
        for b in self.brokers.values():
            try:
                b.cleanup()
            except Exception:  # noqa: BLE001
                pass
        if self.network:
            self.network.cleanup()

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(self.brokers[i].log_tail(lines) for i in self.ids)

    # -- HTTP views ------------------------------------------------------------
    def _http_json(self, node_id: int, path: str, timeout: float = 2.0):
        status, body = self.brokers[node_id].http_get(path, timeout=timeout)
        if status != 200:
            raise AssertionError(f"broker {node_id} GET {path}: HTTP {status}: {body[:500]}")
        return json.loads(body)

    def cluster_info(self, via: int | None = None) -> dict:
        """``/v1/cluster`` of broker ``via``, else of the first live broker that answers."""
        if via is not None:
            return self._http_json(via, "/v1/cluster")
        last = None
        for i in self.live_ids():
            try:
                return self._http_json(i, "/v1/cluster")
            except (OSError, ValueError, AssertionError) as exc:
                last = exc
        raise AssertionError(f"no live broker answered /v1/cluster (last error: {last!r})")

    @staticmethod
    def _unfenced(info: dict) -> set[int]:
        """Ids of brokers not fenced (nor, if a ``state`` is given, shutting down)."""
        return {b["id"] for b in info.get("brokers") or []
                if not b.get("fenced")
                and str(b.get("state", "")).lower().replace("_", "") != "shuttingdown"}

    def _views(self) -> dict[int, dict]:
        """``/v1/cluster`` of every live broker that answers."""
        views = {}
        for i in self.live_ids():
            try:
                views[i] = self._http_json(i, "/v1/cluster")
            except (OSError, ValueError, AssertionError):
                pass
        return views

    def wait_unfenced(self, ids, timeout: float = DEFAULT_WAIT_S) -> dict:
        """Until some live broker's ``/v1/cluster`` names a controller and
        lists every broker in ``ids`` unfenced; returns that view."""
        ids = set(ids)
        last = {}

        def probe():
            nonlocal last
            last = self._views()
            for info in last.values():
                if info.get("controller") is not None and ids <= self._unfenced(info):
                    return info
            return None

        try:
            return wait_until(probe, timeout=timeout, interval=0.2,
                              message=f"brokers {sorted(ids)} registered and unfenced")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast /v1/cluster views: {last}\n{self.log_tails()}") from None

    def wait_fenced(self, node_id: int, timeout: float = DEFAULT_WAIT_S) -> dict:
        """Until some live broker's ``/v1/cluster`` names a controller and
        shows ``node_id`` fenced (or no longer registered)."""
        last = {}

        def probe():
            nonlocal last
            last = self._views()
            for info in last.values():
                if info.get("controller") is not None and node_id not in self._unfenced(info):
                    return info
            return None

        try:
            return wait_until(probe, timeout=timeout, interval=0.2,
                              message=f"broker {node_id} fenced")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast /v1/cluster views: {last}") from None

    def controller(self, via: int | None = None) -> int | None:
        return self.cluster_info(via).get("controller")

    def wait_controller(self, exclude=(), timeout: float = DEFAULT_WAIT_S) -> int:
        """Until every live broker reports the same live controller, not in
        ``exclude``; returns its id."""
        exclude = set(exclude)
        last = {}

        def probe():
            nonlocal last
            live = self.live_ids()
            last = self._views()
            seen = {info.get("controller") for info in last.values()}
            if len(last) != len(live) or len(seen) != 1:
                return None
            (ctrl,) = seen
            if ctrl is None or ctrl in exclude or ctrl not in live:
                return None
            return ctrl

        try:
            return wait_until(probe, timeout=timeout, interval=0.1,
                              message=f"an agreed controller not in {sorted(exclude)}")
        except AssertionError as exc:
            views = {i: v.get("controller") for i, v in last.items()}
            raise AssertionError(f"{exc}\ncontroller per broker: {views}") from None

    def partition_state(self, node_id: int, topic: str, partition: int) -> dict:
        """``/v1/partitions/{topic}/{partition}`` of broker ``node_id``."""
        path = f"/v1/partitions/{urllib.parse.quote(topic, safe='')}/{partition}"
        return self._http_json(node_id, path)

    # -- Kafka metadata -----------------------------------------------------
    def metadata(self, topics: list[str] | None = None, via: int | None = None,
                 timeout: float = 5.0) -> dict:
        """Kafka Metadata v4 (no auto-creation) from broker ``via``, else
        from the first live broker that answers, as ``{"via", "controller",
        "cluster_id", "brokers": {id: (host, port, rack)}, "topics": {name:
        {"error_code", "partitions": {p: {"error_code", "leader", "replicas",
        "isr"}}}}}``."""
        last = None
        for i in [via] if via is not None else self.live_ids():
            try:
                with kafka_wire.Conn(self.brokers[i].port, timeout=timeout,
                                     host=self.brokers[i].host) as conn:
                    raw = kafka_wire.metadata_v4(conn, topics)
            except (OSError, ValueError, AssertionError) as exc:
                last = exc
                continue
            return {
                "via": i,
                "controller": raw["controller"],
                "cluster_id": raw["cluster_id"],
                "brokers": {bid: (host, port, rack) for bid, host, port, rack in raw["brokers"]},
                "topics": {t["name"]: {"error_code": t["error_code"],
                                       "partitions": {p["partition"]: p for p in t["partitions"]}}
                           for t in raw["topics"]},
            }
        raise AssertionError(f"no broker answered Metadata (last error: {last!r})")

    def partition_metadata(self, topic: str, partition: int, via: int | None = None) -> dict:
        md = self.metadata([topic], via)
        t = md["topics"].get(topic)
        assert t is not None and t["error_code"] == 0, f"topic {topic} in metadata: {t}"
        p = t["partitions"].get(partition)
        assert p is not None, f"partition {topic}-{partition} not in metadata: {t}"
        return p

    def leader_of(self, topic: str, partition: int, via: int | None = None,
                  source: str = "metadata") -> int | None:
        """Current leader: from Kafka Metadata (``source="metadata"``), or the
        live broker whose ``/v1/partitions`` says ``leader`` with the highest
        leader epoch (``source="http"``).  None when there is none."""
        if source == "metadata":
            leader = self.partition_metadata(topic, partition, via)["leader"]
            return leader if leader >= 0 else None
        assert source == "http", source
        best = None
        for i in self.live_ids():
            try:
                st = self.partition_state(i, topic, partition)
            except (OSError, ValueError, AssertionError):
                continue
            if st.get("role") == "leader" and (best is None or st["leader_epoch"] > best[0]):
                best = (st["leader_epoch"], i)
        return best[1] if best else None

    def isr_of(self, topic: str, partition: int, via: int | None = None) -> list[int]:
        return sorted(self.partition_metadata(topic, partition, via)["isr"])

    def replicas_of(self, topic: str, partition: int, via: int | None = None) -> list[int]:
        return list(self.partition_metadata(topic, partition, via)["replicas"])

    def wait_leader(self, topic: str, partition: int, exclude=(),
                    timeout: float = DEFAULT_WAIT_S) -> int:
        """Until Metadata names a live leader not in ``exclude`` and that
        broker's ``/v1/partitions`` agrees it leads; returns its id."""
        exclude = set(exclude)
        last = []

        def probe():
            for via in self.live_ids():
                try:
                    leader = self.leader_of(topic, partition, via)
                except AssertionError as exc:
                    last[:] = [f"metadata via {via}: {exc}"]
                    continue
                last[:] = [f"metadata via {via}: leader {leader}"]
                if leader is None or leader in exclude or leader not in self.live_ids():
                    return None
                role = self.partition_state(leader, topic, partition).get("role")
                last.append(f"/v1/partitions on {leader}: role {role}")
                return leader if role == "leader" else None
            return None

        try:
            return wait_until(probe, timeout=timeout, interval=0.1,
                              message=f"a leader of {topic}-{partition} not in {sorted(exclude)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast seen: {'; '.join(last)}") from None

    def wait_isr(self, topic: str, partitions, expected, timeout: float = DEFAULT_WAIT_S,
                 via: int | None = None) -> dict[int, list[int]]:
        """Until Metadata shows ISR == set(``expected``) for every partition."""
        partitions = list(partitions)
        want = sorted(set(expected))
        last = {}

        def probe():
            md = self.metadata([topic], via)
            parts = md["topics"][topic]["partitions"]
            last.clear()
            last.update({p: sorted(parts[p]["isr"]) if p in parts else None for p in partitions})
            return dict(last) if all(v == want for v in last.values()) else None

        try:
            return wait_until(probe, timeout=timeout, interval=0.2,
                              message=f"ISR of {topic} {list(partitions)} == {want}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast ISR per partition: {last}") from None

    # -- replica comparison ----------------------------------------------------
    def _replica_ids(self, topic: str, partition: int) -> list[int]:
        live = self.live_ids()
        try:
            return [r for r in self.replicas_of(topic, partition) if r in live]
        except AssertionError:
            return live

    def assert_replicas_consistent(self, topic: str, partitions, timeout: float = DEFAULT_WAIT_S,
                                   converge: bool = True) -> dict[int, dict[int, dict]]:
        """For each partition, compare ``/v1/partitions`` of every live replica.

        With ``converge`` (default) first wait until the replicas agree on the
        leader epoch, exactly one says ``leader`` and the others ``follower``,
        and all have the same log end offset and high watermark == log end.
        Then assert that every batch starting below the minimum high
        watermark (and ending at or after the largest log start) is identical
        (base_offset, last_offset, epoch, crc) on every replica, that these
        batches cover the offsets without gaps, and that batch epochs never
        decrease.  Returns ``{partition: {broker id: state}}``.
        """
        out = {}
        for p in partitions:
            replicas = self._replica_ids(topic, p)
            assert replicas, f"{topic}-{p}: no live replica"
            states = self._replica_states(topic, p, replicas, timeout if converge else None)
            _compare_replica_batches(f"{topic}-{p}", states)
            out[p] = states
        return out

    def _replica_states(self, topic, p, replicas, timeout):
        def fetch():
            return {r: self.partition_state(r, topic, p) for r in replicas}

        if timeout is None:
            return fetch()
        deadline = time.monotonic() + timeout
        states, last_exc = {}, None
        while True:
            try:
                states = fetch()
                if _converged(states):
                    return states
            except (OSError, ValueError, AssertionError) as exc:
                last_exc = exc
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{topic}-{p}: replicas {replicas} did not converge within {timeout}s "
                    f"(one leader, same epoch, same log end, high watermark == log end)\n"
                    f"{_summarise_states(states)}"
                    + (f"\nlast error: {last_exc!r}" if last_exc else ""))
            time.sleep(0.2)


def _converged(states: dict[int, dict]) -> bool:
    roles = sorted(s.get("role") for s in states.values())
    return (roles.count("leader") == 1 and roles.count("follower") == len(roles) - 1
            and len({s["leader_epoch"] for s in states.values()}) == 1
            and len({s["log_end"] for s in states.values()}) == 1
            and all(s["high_watermark"] == s["log_end"] for s in states.values()))


def _summarise_states(states: dict[int, dict]) -> str:
    return "\n".join(
        f"  broker {i}: role={s.get('role')} epoch={s.get('leader_epoch')} "
        f"log_start={s.get('log_start')} log_end={s.get('log_end')} "
        f"hw={s.get('high_watermark')} isr={s.get('isr')} batches={len(s.get('batches') or [])}"
        for i, s in sorted(states.items())) or "  (no state fetched)"


def _compare_replica_batches(what: str, states: dict[int, dict]):
    lo = max(s["log_start"] for s in states.values())
    hw = min(s["high_watermark"] for s in states.values())
    summary = _summarise_states(states)

    def committed(s):
        return [(b["base_offset"], b["last_offset"], b["epoch"], b["crc"])
                for b in s["batches"] if b["base_offset"] < hw and b["last_offset"] >= lo]

    lists = {i: committed(s) for i, s in states.items()}
    ref_id = next((i for i, s in states.items() if s.get("role") == "leader"), min(states))
    ref = lists[ref_id]
    for i, got in lists.items():
        if got == ref:
            continue
        idx = next((k for k, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
        raise AssertionError(
            f"{what}: broker {i} disagrees with broker {ref_id} below high watermark {hw} "
            f"(log start {lo}) at batch #{idx}: "
            f"{got[idx] if idx < len(got) else 'missing'} vs "
            f"{ref[idx] if idx < len(ref) else 'missing'} "
            f"(base_offset, last_offset, epoch, crc)\n{summary}")
    if hw > lo:
        assert ref, f"{what}: no batches below high watermark {hw} (log start {lo})\n{summary}"
        assert ref[0][0] <= lo, f"{what}: first batch {ref[0]} starts after log start {lo}\n{summary}"
        assert ref[-1][1] >= hw - 1, (
            f"{what}: batches end at {ref[-1][1]}, below high watermark {hw}\n{summary}")
    for prev, cur in zip(ref, ref[1:]):
        assert cur[0] == prev[1] + 1, f"{what}: gap or overlap between batches {prev} and {cur}"
        assert cur[2] >= prev[2], f"{what}: batch epoch decreases: {prev} then {cur}"


def disk_usage_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


# -- test data ---------------------------------------------------------------

def sample_records(n: int, prefix: str = "rec", value_size: int = 0):
    """Deterministic records exercising keys, null keys, null values, headers.

    Returns a list of dicts with ``key`` (bytes|None), ``value`` (bytes|None)
    and ``headers`` (list of (str, bytes)).  Every 5th record has a null key,
    every 7th a null value (with a key), every 3rd has two headers.
    """
    out = []
    for i in range(n):
        key = None if i % 5 == 0 else f"{prefix}-key-{i}".encode()
        value = f"{prefix}-value-{i}".encode()
        if value_size:
            value = value + b"x" * max(0, value_size - len(value))
        if i % 7 == 3:
            value = None
            key = key or f"{prefix}-key-{i}".encode()
        headers = []
        if i % 3 == 0:
            headers = [("h1", f"v{i}".encode()), ("trace-id", uuid.UUID(int=i).bytes)]
        out.append({"key": key, "value": value, "headers": headers})
    return out


def compressible_records(n: int, prefix: str = "z"):
    return [{"key": f"{prefix}-{i}".encode(),
             "value": (f"{prefix}-payload-{i}-" * 40).encode(),
             "headers": [("codec-test", b"1")]} for i in range(n)]


def assert_same_records(expected, got, what: str = "records"):
    """Compare produced vs consumed records (key, value, headers) in order."""
    assert len(got) == len(expected), (
        f"{what}: expected {len(expected)} records, consumed {len(got)}")
    for i, (e, g) in enumerate(zip(expected, got)):
        assert g["key"] == e["key"], f"{what}[{i}] key {g['key']!r} != {e['key']!r}"
        assert g["value"] == e["value"], f"{what}[{i}] value {g['value']!r} != {e['value']!r}"
        eh = [(k, bytes(v) if v is not None else None) for k, v in e.get("headers") or []]
        gh = [(k, bytes(v) if v is not None else None) for k, v in g.get("headers") or []]
        assert gh == eh, f"{what}[{i}] headers {gh!r} != {eh!r}"


def which(name: str) -> str | None:
    return shutil.which(name)


# -- Apache Kafka's command-line tools (resolved by scripts/setup-java-tools.sh) --

KAFKA_TOOLS_CLASSPATH = REPO_ROOT / "tests" / "java" / "target" / "classpath.txt"

# Short-lived JVMs on a 2-core machine: start fast, stay small.
JVM_FLAGS = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


def kafka_tool(main_class: str, *args, timeout: float = 120.0, check: bool = True,
               input: str | None = None) -> subprocess.CompletedProcess:
    """Runs one of Apache Kafka's tools by its main class, as Kafka's bin/*.sh wrappers
    do (``kafka-configs`` is ``kafka.admin.ConfigCommand``, ...). Output is text;
    ``input`` goes to its standard input."""
    if not KAFKA_TOOLS_CLASSPATH.is_file():
        raise RuntimeError(f"{KAFKA_TOOLS_CLASSPATH} missing: run scripts/setup-java-tools.sh")
    cp = KAFKA_TOOLS_CLASSPATH.read_text().strip()
    proc = subprocess.run(["java", *JVM_FLAGS, "-cp", cp, main_class, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{main_class} {' '.join(map(str, args))} exited "
                             f"{proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


JAVA_CLASSES = REPO_ROOT / "tests" / "java" / "target" / "classes"


def java_command(main_class: str, *args) -> list[str]:
    """The command that runs a class of tests/java/src (compiled by
    scripts/setup-java-tools.sh) with Kafka's jars on the classpath."""
    if not JAVA_CLASSES.is_dir():
        raise RuntimeError(f"{JAVA_CLASSES} missing: run scripts/setup-java-tools.sh")
    cp = f"{JAVA_CLASSES}:{KAFKA_TOOLS_CLASSPATH.read_text().strip()}"
    return ["java", "-Xmx384m", "-XX:+UseSerialGC", "-cp", cp, main_class, *map(str, args)]


def java_main(main_class: str, *args, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Runs a class of tests/java/src to its end."""
    return subprocess.run(java_command(main_class, *args), capture_output=True, text=True,
                          timeout=timeout)


# -- topic management through kafka-python (used by the kcat and raw suites) --

def kp_admin(bootstrap: str):
    from kafka import KafkaAdminClient
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="riffle-compat-admin",
                            request_timeout_ms=20000)


def create_topic(bootstrap: str, name: str, partitions: int = 1, configs: dict | None = None):
    """Create a topic with kafka-python's admin client and wait until it is usable."""
    admin = kp_admin(bootstrap)
    try:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1,
                                    "configs": {k: str(v) for k, v in (configs or {}).items()}}})
        def ready():
            topics = admin.describe_topics([name])
            return (topics and topics[0]["error_code"] == 0
                    and len(topics[0]["partitions"]) == partitions
                    and all(p["leader_id"] >= 0 for p in topics[0]["partitions"]))
        wait_until(ready, timeout=20, message=f"topic {name} to appear in metadata")
    finally:
        admin.close()
    return name


def kp_consume_all(bootstrap: str, topic: str, expected: int, partitions=(0,),
                   timeout: float = 30.0, **config):
    """Read ``expected`` records from the start of the given partitions with a
    manually assigned kafka-python consumer (no group).  Returns ConsumerRecords
    ordered by (partition, offset)."""
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             client_id="riffle-compat-reader", **config)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for _tp, recs in consumer.poll(timeout_ms=500).items():
                got.extend(recs)
        # Anything beyond the expected count is a duplicate: give it a moment.
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            for _tp, recs in consumer.poll(timeout_ms=200).items():
                got.extend(recs)
        got.sort(key=lambda r: (r.partition, r.offset))
        return got
    finally:
        consumer.close(autocommit=False)


def kp_record_dict(rec):
    return {"key": rec.key, "value": rec.value, "headers": list(rec.headers or [])}
