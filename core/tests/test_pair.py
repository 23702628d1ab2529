"""Two engines back to back (core/tests/pair.c): bulk transfers checked byte
for byte through a seeded lossy link, connection churn, idle memory.

Under ``make test-engine-sanitized`` (SHARDSOCK_SANITIZED=1) the same runs use
the ASan+UBSan build of the tool, with leak detection on.
"""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANITIZED = bool(os.environ.get("SHARDSOCK_SANITIZED"))
TOOL = os.path.join(ROOT, "build", "pair-san" if SANITIZED else "pair")


def pair(*args, timeout=240):
    if not os.path.exists(TOOL):
        pytest.fail("%s is missing: run 'make build'" % TOOL)
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # the sanitized tool links its own runtime
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=1"
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, "pair %s failed (%d): %s %s" % (" ".join(map(str, args)), r.returncode, r.stdout,
                                                              r.stderr[-3000:])
    return json.loads(r.stdout)


def test_100mb_each_way_under_loss_reordering_and_duplication():
    out = pair("--bytes", 100_000_000, "--loss", 0.05, "--reorder", 0.05, "--dup", 0.05, "--seed", 1)
    assert out["ok"]
    assert out["a_received"] == out["b_received"] == 100_000_000
    assert out["hash_a_to_b"][0] == out["hash_a_to_b"][1]
    # The link really was hostile, and the stack really recovered.
    assert all(out[k] > 0.04 * out["frames"] for k in ("lost", "reordered", "duplicated"))
    assert out["fast_retransmits"] > 0 and out["rto_expired"] > 0 and out["ooo_segments"] > 0
    assert out["sack_recoveries"] > 0  # RFC 6675 recovery: both ends negotiated SACK


def test_sack_recovery_repairs_loss_without_timeouts():
    # 2% loss: recovery by SACK resends the holes within a round trip; a
    # timeout is rare (a lost retransmission, or a loss at the tail).
    out = pair("--bytes", 20_000_000, "--loss", 0.02, "--seed", 3)
    assert out["ok"]
    assert out["sack_recoveries"] > 10 * out["rto_expired"] > 0


@pytest.mark.parametrize("seed", range(2, 14))
def test_2mb_many_seeds(seed):
    out = pair("--bytes", 2_000_000, "--loss", 0.05, "--reorder", 0.05, "--dup", 0.05, "--seed", seed)
    assert out["ok"], out


@pytest.mark.parametrize("loss", [0.2, 0.3])
def test_heavy_loss_still_completes(loss):
    out = pair("--bytes", 300_000, "--loss", loss, "--seed", 7)
    assert out["ok"], out


def test_clean_link_has_no_retransmissions():
    out = pair("--bytes", 20_000_000, "--seed", 3)
    assert out["ok"]
    assert out["retransmits"] == 0 and out["rto_expired"] == 0 and out["ooo_segments"] == 0


def test_connection_churn():
    out = pair("--conns", 2000, "--seed", 4)
    assert out["ok"] and out["connections"] == 2000


def test_idle_connection_holds_no_buffers():
    """Buffers are allocated as data arrives and released when drained: an
    idle established connection costs its control block only."""
    out = pair("--idle", 2000, "--seed", 5)
    assert out["ok"]
    assert out["heap_bytes_per_connection_end"] < 1024, out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_timer_wheel_against_model(seed):
    """core/tests/wheel_test.c: random timers, cancels and clock steps;
    every timer expires exactly when due and next-deadline never lies."""
    tool = os.path.join(ROOT, "build", "wheel_test-san" if SANITIZED else "wheel_test")
    r = subprocess.run([tool, str(seed)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"]
