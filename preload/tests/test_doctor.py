"""``shardsock doctor``, run for real on this machine: as root, as an
unprivileged user, and on a veth pair in a namespace of the test's own."""
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import pytest

from preload.doctor import CHECKS, NEEDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XDP_OBJ = os.path.join(ROOT, "build", "xdp_redirect.bpf.o")
NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creates namespaces and devices: run as root")


def run(*args, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "preload.cli", "doctor", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def as_nobody():
    """setpriv to uid/gid 65534 with no groups.  The interpreter lives under
    /root (mode 0700), so the process keeps one capability,
    CAP_DAC_READ_SEARCH, to reach it; it has none of the ones the doctor
    looks for and is not root."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is missing (util-linux)")
    return ("setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")


def by_name(report):
    return {c["name"]: c for c in report["checks"]}


def leftovers():
    """What a doctor run could leave behind: its tap devices, namespaces,
    and a bpffs mount at /sys/fs/bpf."""
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    with open("/proc/self/mounts") as f:
        bpf_mounts = [line for line in f if line.split()[1] == "/sys/fs/bpf"]
    return ([n for n in os.listdir("/sys/class/net") if n.startswith("ssdoc")],
            [n for n in netns if n.startswith("ssdoc")], bpf_mounts)


def assert_well_formed(report):
    assert set(report) >= {"machine", "interface", "default_backend", "checks", "backends"}
    names = [c["name"] for c in report["checks"]]
    assert names == [n for n in CHECKS if n in names], "checks out of the documented order"
    for c in report["checks"]:
        assert set(c) == {"name", "status", "detail", "fix"}
        assert c["status"] in ("ok", "warn", "fail")
        assert c["detail"]
        assert c["status"] == "ok" or c["fix"], "%s: %s without a fix" % (c["name"], c["status"])
    assert set(report["backends"]) == {"tap", "afpacket", "afxdp"}
    checks = by_name(report)
    for backend, b in report["backends"].items():
        assert set(b) == {"usable", "why", "fix"}
        failed = [n for n in NEEDS[backend] if n in checks and checks[n]["status"] == "fail"]
        assert b["usable"] == (not failed), (backend, failed)
        assert b["why"]
        assert b["usable"] or b["fix"]
    assert report["default_backend"] == "tap"


@needs_root
def test_json_as_root_matches_the_machine():
    before = leftovers()
    t = time.monotonic()
    r = run("--json")
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert took < 5, "doctor took %.1fs" % took
    report = json.loads(r.stdout)
    assert_well_formed(report)
    assert report["interface"] is None
    m = report["machine"]
    assert m["euid"] == 0
    assert m["kernel"] == os.uname().release
    assert m["cores"] == sorted(os.sched_getaffinity(0))
    assert len(m["cores"]) <= os.cpu_count()
    for key, which in (("rlimit_nofile", resource.RLIMIT_NOFILE), ("rlimit_memlock", resource.RLIMIT_MEMLOCK)):
        soft, hard = resource.getrlimit(which)
        inf = resource.RLIM_INFINITY
        assert m[key] == {"soft": None if soft == inf else soft, "hard": None if hard == inf else hard}
    with open("/proc/meminfo") as f:
        meminfo = dict(line.split(":", 1) for line in f)
    assert m["hugepages"]["size_kb"] == int(meminfo["Hugepagesize"].split()[0])
    assert m["hugepages"]["total"] == int(meminfo["HugePages_Total"])

    checks = by_name(report)
    assert set(checks) == set(CHECKS) - {"interface", "native_xdp", "xdp_queues", "xdp_attached"}
    # This machine: root with a tun driver and a multi-queue tap.
    for name in ("privileges", "tun", "tap_multiqueue", "tap_steering", "af_packet", "af_xdp", "bpf"):
        assert checks[name]["status"] == "ok", checks[name]
    nofile_soft = m["rlimit_nofile"]["soft"]
    assert checks["nofile"]["status"] == ("ok" if nofile_soft is None or nofile_soft >= 65536 else "warn")
    assert str(len(m["cores"])) in checks["cores"]["detail"]
    assert report["backends"]["tap"]["usable"] is True
    # Without --interface the interface backends are judged on the machine
    # alone, and say so.
    assert "--interface" in report["backends"]["afxdp"]["why"]
    assert leftovers() == before


@needs_root
def test_table_as_root():
    r = run()
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].startswith("shardsock doctor: Linux ")
    rows = {line.split()[0]: line.split()[1] for line in lines[2:] if line and line.split()[0] in CHECKS}
    assert set(rows.values()) <= {"OK", "WARN", "FAIL"}
    assert {"privileges", "tun", "tap_multiqueue", "nofile", "memlock", "hugepages", "io_uring", "bpffs"} <= set(rows)
    tap = next(line for line in lines if line.startswith("tap (default)"))
    assert tap.split()[2] == "yes"


def test_unprivileged_user_is_told_to_run_as_root():
    if os.geteuid() != 0:
        prefix = ()        # already unprivileged
    else:
        prefix = as_nobody()
    r = run("--json", prefix=prefix)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    report = json.loads(r.stdout)
    assert_well_formed(report)
    assert report["machine"]["euid"] != 0
    checks = by_name(report)
    assert checks["privileges"]["status"] == "fail"
    for name in ("tap_multiqueue", "af_packet", "af_xdp", "bpf"):
        assert checks[name]["status"] == "fail"
        assert "needs root: run as root" in checks[name]["detail"], checks[name]
    assert not report["backends"]["tap"]["usable"]
    assert "needs root" in report["backends"]["tap"]["why"]
    assert "run as root" in report["backends"]["tap"]["fix"]

    r = run(prefix=prefix)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "needs root: run as root" in r.stdout
    assert any(line.startswith("tap (default)") and " NO " in line for line in r.stdout.splitlines())


def test_missing_interface_is_a_clear_error():
    r = run("--interface", "ssdoc-nosuch")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert "interface ssdoc-nosuch does not exist" in r.stderr


@pytest.fixture
def veth_netns():
    """A namespace with a veth pair v0/v1, one queue per core; removed after."""
    if not shutil.which("ip"):
        pytest.skip("iproute2 is missing")
    ns = "ssdoc-test-%d" % os.getpid()
    n = len(os.sched_getaffinity(0))
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "v0", "numtxqueues", str(n), "numrxqueues", str(n), "type",
                        "veth", "peer", "name", "v1", "numtxqueues", str(n), "numrxqueues", str(n)],
                       check=True, timeout=10)
        subprocess.run(["ip", "-n", ns, "link", "set", "v0", "up"], check=True, timeout=10)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True, timeout=10)
    assert ns not in os.listdir("/run/netns")


@needs_root
def test_veth_has_native_xdp(veth_netns):
    r = run("--interface", "v0", "--json", prefix=("ip", "netns", "exec", veth_netns))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert_well_formed(report)
    assert report["interface"] == "v0"
    checks = by_name(report)
    assert checks["interface"]["status"] == "ok", checks["interface"]
    assert checks["native_xdp"]["status"] == "ok", checks["native_xdp"]
    assert "veth" in checks["native_xdp"]["detail"]
    assert checks["xdp_queues"]["status"] == "ok", checks["xdp_queues"]
    assert checks["xdp_attached"]["status"] == "ok"
    assert report["backends"]["afxdp"]["usable"] is True
    assert report["backends"]["afpacket"]["usable"] is True


@needs_root
def test_generic_xdp_program_blocks_afxdp(veth_netns):
    """afxdp attaches in native mode, which the kernel refuses while a
    generic-mode program is attached: the doctor says so and how to fix it."""
    if not os.path.exists(XDP_OBJ):
        pytest.skip("%s is missing: make build" % XDP_OBJ)
    subprocess.run(["ip", "-n", veth_netns, "link", "set", "v0", "xdpgeneric", "obj", XDP_OBJ, "sec", "xdp"],
                   check=True, timeout=10, capture_output=True)
    r = run("--interface", "v0", "--json", prefix=("ip", "netns", "exec", veth_netns))
    assert r.returncode == 0, r.stderr       # tap is still usable
    report = json.loads(r.stdout)
    attached = by_name(report)["xdp_attached"]
    assert attached["status"] == "fail"
    assert "xdpgeneric" in attached["detail"]
    assert attached["fix"].endswith("ip link set dev v0 xdpgeneric off")
    assert report["backends"]["afxdp"]["usable"] is False
    assert "xdpgeneric off" in report["backends"]["afxdp"]["fix"]


def test_interface_of_no_driver_in_a_table_row():
    """lo reports no xdp-features and no driver: afxdp is refused there with
    the reason, in one line per check."""
    r = run("--interface", "lo")
    assert "Traceback" not in r.stderr
    native = next(line for line in r.stdout.splitlines() if line.startswith("native_xdp"))
    assert native.split()[1] in ("FAIL", "WARN")
    assert "-> fix:" in native
