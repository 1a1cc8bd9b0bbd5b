"""Shared helpers for the Riffle client-compatibility suite.

Everything here is client-agnostic: the broker process wrapper, bounded
waiting, test-data generation and comparison.  Raw Kafka wire encoding lives
in ``kafka_wire.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every wait in the suite is bounded by one of these.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
DEFAULT_WAIT_S = 30.0


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
    """

    def __init__(self, workdir: Path, node_id: int = 1, extra_args=(), env=None):
        self.binary = riffle_binary()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "broker.log"
        self.node_id = node_id
        self.port = free_port()
        self.http_port = free_port()
        while self.http_port == self.port:
            self.http_port = free_port()
        self.extra_args = [str(a) for a in extra_args]
        self.env = dict(os.environ)
        self.env.setdefault("RUST_BACKTRACE", "1")
        if env:
            self.env.update(env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # -- addresses --------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--node-id", str(self.node_id),
            "--data-dir", str(self.data_dir),
            "--listen", self.bootstrap,
            "--advertised-listener", self.bootstrap,
            "--http-listen", f"127.0.0.1:{self.http_port}",
            *self.extra_args,
        ]

    # -- lifecycle --------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> "Broker":
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, cwd=self.workdir, preexec_fn=_die_with_parent,
        )
        log.close()
        self.wait_ready(timeout)
        return self

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
        with open(self.log_path, "ab") as log:
            log.write(b"\n===== killed with SIGKILL\n")

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

    def http_status(self, path: str) -> int | None:
        try:
            return self.http_get(path, timeout=1.0)[0]
        except (OSError, urllib.error.URLError):
            return None

    def kafka_port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
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
