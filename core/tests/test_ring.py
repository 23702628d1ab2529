"""The channel's ring protocol (shardsock/ring.h) on its own, under threads:
core/tests/ring_stress.c, plain, with AddressSanitizer+UBSan, and with
ThreadSanitizer (which checks the orderings the header promises)."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("build", ["ring_stress", "ring_stress-san", "ring_stress-tsan"])
def test_ring_protocol_under_threads(build):
    # each build carries its own runtime: the sanitized run's LD_PRELOAD of
    # ASan's would crash the ThreadSanitizer build
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    r = subprocess.run([os.path.join(ROOT, "build", build), "240"], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "in order, each once" in r.stdout and "each taken once" in r.stdout, r.stdout
    assert "WARNING" not in r.stderr, r.stderr[-3000:]
