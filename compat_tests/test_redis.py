"""Debian's redis-server, unmodified, under `shardsock run`: redis-benchmark
(its default test set) from a kernel client through the stack's address
and from a preloaded client over 127.0.0.1 through the stack, and BGSAVE
(a fork whose child holds every connection) during load.

Each test brings a group up on a tap device in a namespace it creates,
stops redis by its pid, and takes everything down again."""
import os
import re
import subprocess
import tempfile
import time

import pytest

from topology import stop_pids  # noqa: E402  (conftest.py puts scripts/ on the path)

STACK = "198.18.0.2"
PORT = 16379
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices"),
              pytest.mark.skipif(not os.path.exists("/usr/bin/redis-server"),
                                 reason="redis is not installed (make setup)")]


@pytest.fixture
def redis(group):
    srv = None
    tmp = tempfile.TemporaryDirectory(prefix="ss-redis-")
    try:
        srv = group.popen("redis-server", "--port", str(PORT), "--bind", "0.0.0.0", "--protected-mode", "no",
                          "--save", "", "--appendonly", "no", "--dir", tmp.name, "--daemonize", "no",
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if cli(group.ns, STACK, "PING").stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        else:
            raise AssertionError("redis does not answer")
        yield group
    finally:
        if srv is not None:
            stop_pids([srv.pid])
            srv.wait(10)
        tmp.cleanup()


def cli(ns, host, *cmd):
    return ns.run(["redis-cli", "-h", host, "-p", str(PORT), *cmd], timeout=30)


def benchmark_ok(out):
    """Every test of the default set reported a rate, and nothing else was said."""
    rates = re.findall(r"^(\S[^:]*): ([\d.]+) requests per second", out, re.M)
    assert len(rates) >= 15, out
    assert all(float(r) > 0 for _, r in rates), out
    assert "rror" not in out, out


def test_benchmark_from_a_kernel_client(redis):
    before = redis.total("tcp_passive_opens")
    r = redis.ns.run(["redis-benchmark", "-h", STACK, "-p", str(PORT), "-q", "-n", "5000", "-c", "20"], timeout=300)
    assert r.returncode == 0, r.stderr
    benchmark_ok(r.stdout)
    assert redis.total("tcp_passive_opens") - before >= 20


def test_benchmark_from_a_preloaded_client(redis):
    """Both ends in the stack: the client's over 127.0.0.1 through its lo."""
    before = [redis.total(c) for c in ("tcp_active_opens", "tcp_passive_opens")]
    r = redis.run("redis-benchmark", "-h", "127.0.0.1", "-p", str(PORT), "-q", "-n", "5000", "-c", "20",
                  timeout=300)
    assert r.returncode == 0, r.stderr
    benchmark_ok(r.stdout)
    after = [redis.total(c) for c in ("tcp_active_opens", "tcp_passive_opens")]
    assert all(a - b >= 20 for a, b in zip(after, before))


def test_bgsave_during_load(redis):
    """BGSAVE forks while clients are connected: the child holds every
    connection while it writes, exits, and the load goes on unharmed."""
    bench = subprocess.Popen(["ip", "netns", "exec", redis.ns.name, "redis-benchmark", "-h", STACK, "-p", str(PORT),
                              "-q", "-n", "200000", "-c", "20", "-t", "set,get", "-r", "10000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        assert cli(redis.ns, STACK, "BGSAVE").stdout.strip().startswith("Background saving")
        for _ in range(100):
            info = cli(redis.ns, STACK, "INFO", "persistence").stdout
            if "rdb_bgsave_in_progress:0" in info:
                break
            time.sleep(0.1)
        assert "rdb_last_bgsave_status:ok" in info, info
        out, err = bench.communicate(timeout=300)
        assert bench.returncode == 0, err
        assert re.search(r"SET: [\d.]+ requests per second", out) and "rror" not in out, out
        assert cli(redis.ns, STACK, "DBSIZE").stdout.strip() != "0"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
