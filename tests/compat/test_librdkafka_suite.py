"""librdkafka's own integration tests (its tests/ directory, built by
scripts/setup-librdkafka-tests.sh) against a Riffle broker, run by its test runner as
librdkafka's CI runs them against Kafka.

0081 is the Admin API test: topics and partitions, ACLs, configs (incremental too),
DeleteRecords, consumer groups and their offsets, DescribeTopics/DescribeCluster with
authorized operations, ListOffsets and SCRAM users, with a producer and with a consumer
handle. The runner is told the broker is Kafka 4.1 (RIFFLE_LIBRDKAFKA_KAFKA_VERSION
overrides it), so it also checks the GROUP config resource.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("RIFFLE_CACHE", Path.home() / ".cache" / "riffle"))
LIBRDKAFKA = CACHE / "librdkafka-tests-3.6.1"


def run_suite(broker, tmp_path: Path, *tests: str) -> subprocess.CompletedProcess:
    runner = LIBRDKAFKA / "tests" / "test-runner"
    assert runner.is_file(), f"{runner} missing: run scripts/setup-librdkafka-tests.sh"
    # The runner reads test.conf from its working directory; its timeouts are sized for
    # a quiet machine next to the broker.
    (tmp_path / "test.conf").write_text(
        f"bootstrap.servers={broker.bootstrap}\ntest.timeout.multiplier=4\n")
    env = dict(os.environ, TEST_KAFKA_VERSION=os.environ.get("RIFFLE_LIBRDKAFKA_KAFKA_VERSION", "4.1.0"),
               LD_LIBRARY_PATH=f"{LIBRDKAFKA / 'src'}:{LIBRDKAFKA / 'src-cpp'}")
    return subprocess.run([str(runner), "-p1", *tests], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)


@pytest.mark.timeout(1500)  # the runner's own sub-test timeouts bound it (about 6 min)
def test_librdkafka_0081_admin(make_broker, tmp_path):
    # ACL tests need an authorizer; resources without ACLs stay open to the test client.
    b = make_broker("--authorizer-enabled", "true", "--allow-everyone-if-no-acl-found", "true")
    proc = run_suite(b, tmp_path, "0081")
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    failures = [ln for ln in out.splitlines() if "failed at" in ln or "TEST FAILURE" in ln]
    assert proc.returncode == 0 and not failures, "\n".join(failures + out.splitlines()[-40:])
    passed = re.findall(r"\[ (do_test_\w+):\d+:.*?PASS", out)
    assert len(passed) > 50, f"only {len(passed)} sub-tests passed:\n{out[-3000:]}"
