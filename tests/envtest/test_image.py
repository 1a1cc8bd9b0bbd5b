"""The project's image, built from its Dockerfile by buildah (tests/envtest/build-image.sh),
run from the image's own root filesystem with the image's user, entrypoint and
environment: the binaries find their shared libraries there, the non-root user owns the
data directory, and the broker serves Kafka clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from kube import REPO, free_port

TAG = "localhost/riffle:envtest"


class Image:
    """A built image mounted as a root filesystem, and its runtime configuration."""

    def __init__(self, storage: list[str]):
        self.buildah = ["buildah", *storage]
        self.container = self.run_buildah("from", "--pull=never", TAG)
        self.root = Path(self.run_buildah("mount", self.container))
        config = json.loads(self.run_buildah("inspect", "--type", "image", TAG))["OCIv1"]["config"]
        self.entrypoint: list[str] = config["Entrypoint"]
        self.user = config["User"]
        if ":" not in self.user:  # the group is the user's primary group in the image
            gid = next(line.split(":")[3] for line in (self.root / "etc/passwd").read_text()
                       .splitlines() if self.user in line.split(":")[:3:2])
            self.user += f":{gid}"
        self.env = dict(e.split("=", 1) for e in config.get("Env", []))

    def run_buildah(self, *args: str) -> str:
        return subprocess.run([*self.buildah, *args], check=True, capture_output=True,
                              text=True, timeout=120).stdout.strip()

    def command(self, argv: list[str], volume: Path | None = None) -> list[str]:
        """`argv` run inside the root filesystem as the image's user, in a private mount
        namespace with /proc and /dev from the host, as a container runtime provides them.
        With `volume`: the root filesystem is read-only and `volume` is the writable data
        directory, as in the operator's StatefulSet (readOnlyRootFilesystem, a PVC)."""
        root = str(self.root)
        script = 'mount --bind "$0" "$0" && mount --rbind /proc "$0/proc" && mount --rbind /dev "$0/dev"'
        if volume is not None:
            data = self.env["RIFFLE_DATA_DIR"]
            script += (f' && mount --bind {volume} "$0{data}"'
                       ' && mount -o remount,bind,ro "$0"')
        script += ' && exec chroot --userspec="$1" "$0" "${@:2}"'
        return ["unshare", "--mount", "--propagation", "private", "--fork", "--",
                "bash", "-c", script, root, self.user, "/usr/bin/env", "-i",
                *[f"{k}={v}" for k, v in self.env.items()], *argv]

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), capture_output=True, text=True,
                              timeout=60)

    def remove(self):
        subprocess.run([*self.buildah, "umount", self.container], capture_output=True)
        subprocess.run([*self.buildah, "rm", self.container], capture_output=True)


@pytest.fixture(scope="module")
def image():
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    started = time.monotonic()
    out = subprocess.run(["bash", str(REPO / "tests/envtest/build-image.sh"), TAG],
                         env={**os.environ, "CARGO_TARGET_DIR": target},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"image build failed:\n{out.stdout}\n{out.stderr}"
    print(f"image {TAG} built in {time.monotonic() - started:.0f} s")
    img = Image(out.stdout.strip().splitlines()[-1].split())
    yield img
    img.remove()


def test_image_runs_as_the_charts_non_root_user(image: Image):
    values = yaml.safe_load((REPO / "charts/riffle/values.yaml").read_text())
    uid = image.user.split(":")[0]
    assert uid != "0" and uid == str(values["podSecurityContext"]["runAsUser"])
    who = image.run(["id", "-u"])
    assert who.returncode == 0 and who.stdout.strip() == uid, who.stderr


@pytest.mark.parametrize("binary", ["riffle", "riffle-operator"])
def test_binaries_have_their_libraries_and_start(image: Image, binary: str):
    path = f"/usr/local/bin/{binary}"
    libs = image.run(["ldd", path])
    assert libs.returncode == 0 and "not found" not in libs.stdout, libs.stdout + libs.stderr
    helped = image.run([path, "--help"])
    assert helped.returncode == 0 and "Usage" in helped.stdout, helped.stderr


def test_entrypoint_serves_produce_and_consume(image: Image, tmp_path: Path):
    # The data directory as the StatefulSet provides it: a volume the pod's group owns.
    volume = tmp_path / "data"
    volume.mkdir()
    uid, gid = (int(x) for x in image.user.split(":"))
    os.chown(volume, uid, gid)
    kafka, http, rpc = free_port(), free_port(), free_port()
    broker = subprocess.Popen(
        image.command([*image.entrypoint, "--listen", f"127.0.0.1:{kafka}",
                       "--advertised-listener", f"127.0.0.1:{kafka}",
                       "--http-listen", f"127.0.0.1:{http}", "--rpc-listen", f"127.0.0.1:{rpc}"],
                      volume=volume),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert broker.poll() is None, broker.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "broker from the image never became ready"
            time.sleep(0.2)

        bootstrap = f"127.0.0.1:{kafka}"
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                             "enable.idempotence": True})
        acked: list[bytes] = []
        for i in range(100):
            producer.produce("image-check", value=f"v{i}".encode(),
                             on_delivery=lambda err, msg: err is None and acked.append(msg.value()))
        assert producer.flush(30) == 0
        assert len(acked) == 100

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "image-check",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.assign([TopicPartition("image-check", 0, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 100 and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        consumer.close()
        assert got == acked

        # The records went to the volume, through the image's RIFFLE_DATA_DIR.
        assert any(volume.iterdir())
        image_dir = image.root / image.env["RIFFLE_DATA_DIR"].lstrip("/")
        assert image_dir.stat().st_uid == uid and not any(image_dir.iterdir())
    finally:
        # SIGTERM to the broker inside as well as to unshare around it.
        os.killpg(broker.pid, signal.SIGTERM)
        broker.wait(60)
