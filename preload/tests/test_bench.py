"""`shardsock bench`, run for real: one short run of every scenario on both
sides (nginx keep-alive and close, echo), read back as JSON and as the human
table; then the ways it must refuse to run."""
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from preload import bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIDE_KEYS = {"requests_per_s", "connections_per_s", "latency_us", "latency_source", "cpu_us_per_request",
             "machine_cpu_us_per_request", "ctx_switches_per_request", "syscalls_per_request", "errors", "per_round"}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creates namespaces and devices: needs root")


def shardsock(*args, timeout=180, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "preload.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of every scenario, 1 round of 1 s: the JSON and the chart
    (about 12 s)."""
    chart = str(tmp_path_factory.mktemp("bench") / "bench.png")
    r = shardsock("bench", "--seconds", "1", "--rounds", "1", "--json", "--chart", chart)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), chart


@needs_root
def test_json_has_every_scenario_and_both_sides(run):
    out, chart = run
    assert set(out) == {"rounds", "seconds", "cores", "chart", "scenarios"}
    assert out["chart"] == chart and out["rounds"] == 1 and out["seconds"] == 1
    assert [s["name"] for s in out["scenarios"]] == ["nginx-keepalive", "nginx-close", "echo", "loopback-keepalive",
                                                     "loopback-close"]
    for s in out["scenarios"]:
        assert set(s) == {"name", "description", "connections", "kernel", "shardsock", "ratio", "cpu_ratio"}
        for side in ("kernel", "shardsock"):
            v = s[side]
            assert set(v) == SIDE_KEYS, s["name"]
            assert v["requests_per_s"] > 0 and v["cpu_us_per_request"] > 0, (s["name"], side, v)
            assert v["machine_cpu_us_per_request"] > 0 and v["errors"] == 0
            # counted (make setup installs perf); on the kernel a connection costs nginx at least an accept
            # and a close
            assert v["ctx_switches_per_request"] >= 0 and v["syscalls_per_request"] is not None
            if s["name"].endswith("close") and side == "kernel":
                assert v["syscalls_per_request"] >= 2, (s["name"], side, v)
            assert set(v["latency_us"]) == {"mean", "p50", "p75", "p90", "p99"}
            assert v["latency_us"]["mean"] > 0
            assert len(v["per_round"]) == 1
        assert s["ratio"] == pytest.approx(s["shardsock"]["requests_per_s"] / s["kernel"]["requests_per_s"])
        assert s["cpu_ratio"] == pytest.approx(s["shardsock"]["cpu_us_per_request"] /
                                               s["kernel"]["cpu_us_per_request"])


@needs_root
def test_latency_is_what_was_measured(run):
    """wrk measures percentiles; echo_bench does not, so echo has none."""
    by = {s["name"]: s for s in run[0]["scenarios"]}
    for side in ("kernel", "shardsock"):
        lat = by["nginx-keepalive"][side]["latency_us"]
        assert 0 < lat["p50"] <= lat["p75"] <= lat["p90"] <= lat["p99"]
        assert by["echo"][side]["latency_us"]["p50"] is None
        assert by["echo"][side]["latency_us"]["p99"] is None
    # a connection per request: the two rates are one
    close = by["nginx-close"]["kernel"]
    assert close["connections_per_s"] == close["requests_per_s"]
    assert by["nginx-keepalive"]["kernel"]["connections_per_s"] is None


@needs_root
def test_chart_is_a_png(run):
    with open(run[1], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(run[1]) > 10000


@needs_root
def test_table_has_rows_and_ratio(tmp_path):
    """The human output, on the quickest scenario (the full run's table is
    checked below, from its JSON)."""
    chart = str(tmp_path / "echo.png")
    r = shardsock("bench", "--scenario", "echo", "--seconds", "1", "--rounds", "1", "--chart", chart)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("shardsock bench: 1 round of 1 s")
    assert "requests/s" in lines[1] and "p99 us" in lines[1] and "CPU us/req" in lines[1]
    assert lines[2].split()[:2] == ["echo", "kernel"]
    assert lines[3].split()[0] == "shardsock"
    assert lines[4].split()[0] == "ratio" and lines[4].split()[1].endswith("x")
    assert "chart: %s" % chart in r.stdout
    assert r.stderr == ""  # no progress bar when stderr is not a terminal
    assert os.path.exists(chart)


@needs_root
def test_table_of_the_full_run(run):
    text = bench.table(run[0])
    for name in ("nginx-keepalive", "nginx-close", "echo", "loopback-keepalive", "loopback-close"):
        assert any(line.startswith(name) for line in text.splitlines())
    k = run[0]["scenarios"][0]
    ratio_line = text.splitlines()[4]
    assert ratio_line.split()[:2] == ["ratio", "%.2fx" % k["ratio"]]


def test_unknown_scenario_is_a_usage_error():
    r = shardsock("bench", "--scenario", "echo,redis", timeout=60)
    assert r.returncode == 2
    assert ("unknown scenario 'redis'; choose from nginx-keepalive, nginx-close, echo, loopback-keepalive, "
            "loopback-close") in r.stderr


def test_bad_numbers_are_usage_errors():
    r = shardsock("bench", "--seconds", "0", timeout=60)
    assert r.returncode == 2 and "not a positive whole number" in r.stderr


def _nobody():
    """setpriv to uid/gid 65534.  A Python installed under /root (pyenv) is
    out of that user's reach (it starts, but finds none of its packages):
    CAP_DAC_READ_SEARCH, and nothing else, lets it read them; it is still not
    root."""
    base = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*base, sys.executable, "-c", "import preload.instances"], capture_output=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=ROOT))
    if probe.returncode == 0:
        return base
    return base + ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


@needs_root
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_not_root_says_so():
    r = shardsock("bench", "--seconds", "1", timeout=60, prefix=_nobody())
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("shardsock bench: needs root"), r.stderr
    assert "Traceback" not in r.stderr


def test_progress_bar_draws_one_line():
    out = io.StringIO()
    p = bench.Progress(4, 1.0, stream=out)
    p.step("round 1/1: echo on kernel")
    p.advance()
    p.advance()
    line = p.line(width=10)
    assert line.startswith("[#####") and "round 1/1: echo on kernel" in line
    p.draw()
    assert out.getvalue().startswith("\r[") and "\n" not in out.getvalue()


def test_parse_wrk():
    out = """Running 1s test @ http://198.18.1.2:8080/64.bin
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.08ms    1.40ms  15.07ms   86.00%
    Req/Sec    39.77k     2.71k   43.49k    70.00%
  Latency Distribution
     50%  344.00us
     75%    1.72ms
     90%    2.92ms
     99%    5.14ms
  79080 requests in 1.00s, 23.08MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  79080.00
"""
    r = bench.parse_wrk(out)
    assert r["requests"] == 79080 and r["seconds"] == 1.0 and r["errors"] == 7
    assert r["latency_us"] == {"mean": 1080.0, "p50": 344.0, "p75": 1720.0, "p90": 2920.0, "p99": 5140.0}


@needs_root
def test_unwritable_chart_is_refused_before_measuring():
    r = shardsock("bench", "--chart", "/nonexistent/b.png", timeout=60)
    assert r.returncode == 1
    assert "cannot write the chart to /nonexistent/b.png" in r.stderr and "--no-chart" in r.stderr
