"""Fixtures for the Riffle client-compatibility suite.

Every test talks to a real ``riffle`` process on 127.0.0.1.  Two ways to get
one:

* ``broker``: one shared broker per test module (default configuration).  Its
  liveness is checked after every test; if a test crashed it, the test fails
  with the broker log tail and the broker is restarted for the next test.
* ``make_broker(*extra_args)``: a private broker for tests that kill, restart
  or reconfigure it.  Stopped (SIGTERM, exit code 0 asserted) at teardown.
* ``target``: parametrised, the module's broker and then a 3-broker cluster shared by
  the module, for tests that must pass against both.
* ``make_cluster(n=3, voters=3, extra_args=())``: a private multi-broker
  ``Cluster`` (started and formed unless ``start=False``).  At teardown frozen
  brokers are continued and every broker still running is stopped (SIGTERM,
  exit code 0 asserted); brokers the test killed are skipped.

Consumer-group tests are not part of this suite yet (the broker does not
implement groups); consumers use manual assignment everywhere.  Group tests
can be added as ``test_groups_<client>.py`` using the same fixtures.
"""

from __future__ import annotations

import pytest

from helpers import Broker, BrokerBinaryMissing, Cluster, riffle_binary, unique_topic


@pytest.fixture(scope="session")
def riffle_bin():
    try:
        return riffle_binary()
    except BrokerBinaryMissing as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def _module_broker(riffle_bin, tmp_path_factory, request):
    b = Broker(tmp_path_factory.mktemp(f"riffle-{request.module.__name__}"))
    b.start()
    yield b
    if b.is_running():
        b.stop()


@pytest.fixture
def broker(_module_broker, request):
    request.node._riffle_brokers = [_module_broker]
    if not _module_broker.is_running():
        _module_broker.start()
    yield _module_broker
    if not _module_broker.is_running():
        rc = _module_broker.proc.returncode
        tail = _module_broker.log_tail()
        _module_broker.start()
        pytest.fail(f"riffle died during the test (exit code {rc})\n{tail}", pytrace=False)


@pytest.fixture
def make_broker(riffle_bin, tmp_path, request):
    created: list[Broker] = []
    request.node._riffle_brokers = created

    def factory(*extra_args, env=None, start=True):
        b = Broker(tmp_path / f"broker{len(created)}", extra_args=extra_args, env=env)
        created.append(b)
        if start:
            b.start()
        return b

    yield factory
    errors = []
    for b in created:
        try:
            if b.is_running():
                b.stop()
        except AssertionError as exc:
            errors.append(str(exc))
        finally:
            b.cleanup()
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def make_cluster(riffle_bin, tmp_path, request):
    created: list[Cluster] = []
    request.node._riffle_clusters = created

    def factory(n=3, voters=3, extra_args=(), env=None, start=True, netns=False):
        c = Cluster(tmp_path / f"cluster{len(created)}", n=n, voters=voters,
                    extra_args=extra_args, env=env, netns=netns)
        created.append(c)
        if start:
            c.start()
        return c

    yield factory
    errors = []
    for c in created:
        try:
            c.stop()
        except AssertionError as exc:
            errors.append(str(exc))
        finally:
            c.cleanup()
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture(scope="module")
def _module_cluster(riffle_bin, tmp_path_factory, request):
    c = Cluster(tmp_path_factory.mktemp(f"cluster-{request.module.__name__}"), n=3, voters=3)
    c.start()
    yield c
    try:
        c.stop()
    finally:
        c.cleanup()


@pytest.fixture(params=["single", "cluster"])
def target(request):
    """A single broker, then a 3-broker cluster (shared per module): anything with a
    ``bootstrap`` address."""
    if request.param == "single":
        return request.getfixturevalue("broker")
    c = request.getfixturevalue("_module_cluster")
    request.node._riffle_clusters = [c]
    return c


@pytest.fixture
def topic():
    return unique_topic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for b in getattr(item, "_riffle_brokers", []) or []:
            rep.sections.append((f"riffle log (port {b.port})", b.log_tail(80)))
        for c in getattr(item, "_riffle_clusters", []) or []:
            for i in c.ids:
                rep.sections.append((f"riffle log (broker {i}, port {c.broker(i).port})",
                                     c.broker(i).log_tail(60)))
