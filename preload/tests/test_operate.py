"""Every command of the management layer, run for real: a group up on a tap
device in a namespace each test creates, programs under the library, and
the text, --json and error paths of up, restart, config show, run, status,
stat, netstat, top, completion and the supervisor (and the systemd unit's
command line).  doctor and bench have their own files."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from topology import Netns, stop_pids  # noqa: E402

from preload.config import KEYS, reference  # noqa: E402

RUN_DIR = "/run/shardsock-operate"
STACK = "198.18.0.2"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices")


def cli(*args, ns=None, env=None, user=None, timeout=60):
    """The shardsock command (in ns; as user 'nobody' when user)."""
    argv = [sys.executable, "-m", "preload.cli", *args]
    if user:
        # uid 65534; the interpreter may live under /root (0700), which
        # CAP_DAC_READ_SEARCH lets it reach: reading, never writing or
        # signalling what is root's
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
                "--ambient-caps=+dac_read_search", *argv]
    if ns:
        argv = ["ip", "netns", "exec", ns.name, *argv]
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e)


class Up:
    """A group up in a fresh namespace (with the echo service on port 7)."""

    def __init__(self, *extra, name=None):
        self.ns = Netns()
        self.name = name or "op%d%d" % (os.getpid(), int(time.time() * 1000) % 100000)
        self.args = ["--group", self.name, "--run-dir", RUN_DIR]
        r = self.cli("up", "--echo", "7", *extra)
        if r.returncode != 0:
            self.ns.delete()
        assert r.returncode == 0, r.stderr
        self.up_output = r.stdout

    def cli(self, *args, **kw):
        return cli(*args, *self.args, ns=self.ns, **kw)

    def json(self, *args):
        r = self.cli(*args, "--json")
        assert r.returncode in (0, 1), r.stderr
        return json.loads(r.stdout)

    def run(self, code, *args, run_args=()):
        """A Python program under the library, left running; it prints a
        line when ready."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "preload.cli", "run",
                              *self.args, *run_args, "--", sys.executable, "-c", code, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT))
        return p

    def down(self):
        try:
            r = self.cli("down")
            assert r.returncode == 0, r.stderr
            assert not os.path.exists(os.path.join(RUN_DIR, self.name))
            assert not [f for f in os.listdir("/dev/shm") if f.startswith("shardsock-%s-" % self.name)]
        finally:
            self.ns.delete()


@pytest.fixture
def up():
    g = Up()
    yield g
    g.down()


# A server under the library: accepts one connection on port 8000, echoes
# a line, and keeps the connection open until stdin closes.
SERVER = r"""
import os, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 8000)); l.listen(16)
print("listening %d" % os.getpid(), flush=True)
c, _ = l.accept()
c.sendall(c.recv(100))
sys.stdin.read() if False else None
print("accepted", flush=True)
try:
    print("recv", c.recv(100), flush=True)
except OSError as e:
    print("error", type(e).__name__, flush=True)
"""


def connect_client(ns):
    """A kernel client in ns holding a connection to port 8000."""
    return subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", r"""
import socket, sys
c = socket.create_connection((sys.argv[1], 8000), timeout=10)
c.sendall(b"hello"); assert c.recv(5) == b"hello"
print("connected %d" % c.getsockname()[1], flush=True)
sys.stdin.read()
""", STACK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@root_only
def test_up_status_stat_and_config(up, tmp_path):
    assert re.match(r"shardsock: group \S+ up: \d+ instances? on cores? [\d,]+, tap backend, stack 198.18.0.2/24 "
                    r"on ss0 \(host side 198.18.0.1/24\)", up.up_output), up.up_output
    # status: text and JSON
    r = up.cli("status")
    assert r.returncode == 0
    assert re.search(r"supervisor pid \d+", r.stdout)
    assert "INSTANCE  CORE  PID      BACKEND  QUEUE  UPTIME    STATE     RESTARTS  HEALTHY" in r.stdout
    st = up.json("status")
    n = len(os.sched_getaffinity(0))
    assert st["supervisor"]["running"] and len(st["instances"]) == n
    for i in st["instances"]:
        assert set(i) >= {"instance", "core", "pid", "backend", "interface", "queue", "state", "uptime_s",
                          "restarts", "healthy", "processes"}
        assert i["healthy"] and i["state"] == "ready" and i["restarts"] == 0 and i["backend"] == "tap"
    # stat: counters move with traffic; --reset makes them count from now
    up.ns.run(["ping", "-c", "3", "-i", "0.2", STACK], check=True)
    s = up.json("stat")
    assert sum(i["counters"]["icmp_echo_replies"] for i in s["instances"]) >= 3
    assert s["since"] is None
    r = up.cli("stat", "--reset")
    assert r.returncode == 0 and "reset" in r.stdout
    s = up.json("stat")
    assert s["since"] and sum(i["counters"]["icmp_echo_replies"] for i in s["instances"]) == 0
    up.ns.run(["ping", "-c", "2", "-i", "0.2", STACK], check=True)
    assert sum(i["counters"]["icmp_echo_replies"] for i in up.json("stat")["instances"]) == 2
    assert sum(i["counters"]["icmp_echo_replies"] for i in up.json("stat", "--absolute")["instances"]) >= 5
    r = up.cli("stat")
    assert r.returncode == 0 and "since the reset at" in r.stdout and re.search(r"icmp_echo_replies\s+\d+", r.stdout)
    # --rate: per-second deltas while a ping runs
    ping = subprocess.Popen(["ip", "netns", "exec", up.ns.name, "ping", "-c", "20", "-i", "0.1", STACK],
                            stdout=subprocess.DEVNULL)
    try:
        rate = up.json("stat", "--rate", "--interval", "1")
    finally:
        ping.wait(10)
    assert 0.9 <= rate["interval_s"] < 3
    assert 3 <= sum(i["counters"]["icmp_echo_replies"] for i in rate["instances"]) <= 15
    r = up.cli("stat", "--rate", "--interval", "0.3")
    assert r.returncode == 0 and r.stdout.startswith("per second, over")


@root_only
def test_config_file_show_and_bad_keys(tmp_path):
    cfg = tmp_path / "ss.toml"
    cfg.write_text('backend = "tap"\nspin_us = 5\necho = 7\n')
    r = cli("config", "show", "--config", str(cfg), "--spin-us", "9")
    assert r.returncode == 0
    assert re.search(r'^spin_us = 9\s+# command line$', r.stdout, re.M), r.stdout
    assert re.search(r'^echo = 7\s+# %s$' % re.escape(str(cfg)), r.stdout, re.M)
    assert re.search(r'^backend = "tap"\s+# %s$' % re.escape(str(cfg)), r.stdout, re.M)
    assert re.search(r'^# gateway \(unset\)\s+# default$', r.stdout, re.M)
    j = json.loads(cli("config", "show", "--config", str(cfg), "--json").stdout)
    assert j["file"] == str(cfg) and j["settings"]["echo"] == 7 and j["source"]["spin_us"] == str(cfg)
    assert set(j["settings"]) == set(KEYS)
    # $SHARDSOCK_CONFIG names the file when --config does not
    j = json.loads(cli("config", "show", "--json", env={"SHARDSOCK_CONFIG": str(cfg)}).stdout)
    assert j["file"] == str(cfg) and j["settings"]["spin_us"] == 5
    # an unknown key, a bad value, an unknown backend: exit 1, the key and the fix named
    cfg.write_text('bakend = "tap"\n')
    r = cli("config", "show", "--config", str(cfg))
    assert r.returncode == 1 and "unknown key 'bakend'" in r.stderr and "valid keys" in r.stderr
    cfg.write_text('spin_us = "fast"\n')
    r = cli("up", "--config", str(cfg), "--group", "never", "--run-dir", RUN_DIR)
    assert r.returncode == 1 and "spin_us = 'fast' is not valid; use microseconds" in r.stderr
    r = cli("up", "--backend", "nosuch", "--group", "never", "--run-dir", RUN_DIR)
    assert r.returncode == 1 and "backend = 'nosuch' is not valid; use one of tap, afpacket, afxdp" in r.stderr
    cfg.write_text("this is not toml")
    r = cli("config", "show", "--config", str(cfg))
    assert r.returncode == 1 and "not valid TOML" in r.stderr
    for r in (cli("config", "show", "--config", str(cfg)), cli("up", "--backend", "nosuch")):
        assert "Traceback" not in r.stderr
    # --debug shows the traceback
    assert "Traceback" in cli("--debug", "config", "show", "--config", str(cfg)).stderr


def test_config_reference_is_the_table_of_keys():
    """docs/CONFIG.md documents every key with its default: the table the
    code checks against."""
    with open(os.path.join(ROOT, "docs", "CONFIG.md")) as f:
        assert reference() in f.read()


@root_only
def test_netstat_top_and_attached_processes(up):
    srv = up.run(SERVER)
    client = None
    try:
        line = srv.stdout.readline().split()
        assert line[0] == "listening", srv.stderr.read()
        pid = int(line[1])
        client = connect_client(up.ns)
        cport = int(client.stdout.readline().split()[1])
        assert srv.stdout.readline().strip() == "accepted"
        conns = up.json("netstat")["connections"]
        mine = [c for c in conns if any(p["pid"] == pid for p in c["processes"])]
        states = sorted(c["state"] for c in mine)
        assert states == ["ESTABLISHED", "LISTEN"], conns
        est = [c for c in mine if c["state"] == "ESTABLISHED"][0]
        assert est["local"] == "%s:8000" % STACK and est["remote"] == "198.18.0.1:%d" % cport
        assert est["processes"] == [{"pid": pid, "command": "python3"}]
        assert {"recv_q", "send_q", "instance", "retransmits", "srtt_us"} <= set(est)
        lis = [c for c in mine if c["state"] == "LISTEN"][0]
        assert lis["send_q"] == 16 and lis["in_use"] is True  # ss: a listener's Send-Q is its backlog
        # filters
        assert all(c["state"] == "LISTEN" for c in up.json("netstat", "-l")["connections"])
        assert [c["state"] for c in up.json("netstat", "--pid", str(pid), "--state", "established")[
            "connections"]] == ["ESTABLISHED"]
        assert {c["local"] for c in up.json("netstat", "--port", "7")["connections"]} == {"0.0.0.0:7"}
        assert up.json("netstat", "--port", "1")["connections"] == []
        r = up.cli("netstat", "--port", "8000")
        assert r.returncode == 0
        assert re.search(r"^ESTABLISHED\s+0\s+0\s+198.18.0.2:8000\s+198.18.0.1:%d\s+\d+\s+python3\(%d\)$"
                         % (cport, pid), r.stdout, re.M), r.stdout
        assert re.search(r"^LISTEN\s+0\s+16\s+0.0.0.0:8000\s+\*:\*\s+\d+\s+python3\(%d\)$" % pid, r.stdout, re.M)
        # status lists the attached process
        st = up.json("status")
        procs = [p for i in st["instances"] for p in i["processes"]]
        assert [(p["pid"], p["command"], p["sockets"], p["listeners"]) for p in procs] == [(pid, "python3", 2, 1)]
        assert re.search(r"^\d+\s+%d\s+python3\s+2\s+1$" % pid, up.cli("status").stdout, re.M)
        # top: two refreshes, JSON lines, the process and its CPU share
        r = up.cli("top", "-n", "2", "--interval", "0.3", "--json")
        assert r.returncode == 0
        samples = [json.loads(x) for x in r.stdout.splitlines()]
        assert len(samples) == 2
        rows = samples[-1]["instances"]
        assert {"rx_pps", "tx_pps", "connections", "accept_local_per_s", "accept_global_per_s",
                "retransmits_per_s", "drops_per_s", "cpu_pct", "processes"} <= set(rows[0])
        assert sum(r["connections"] for r in rows) >= 1
        assert all(r["cpu_pct"] is not None and r["rx_pps"] is not None for r in rows)
        tp = [p for r in rows for p in r["processes"]]
        assert [p["pid"] for p in tp] == [pid] and tp[0]["cpu_pct"] is not None
        r = up.cli("top", "-n", "1")
        assert r.returncode == 0 and "RX pkt/s" in r.stdout and "python3" in r.stdout
    finally:
        if client:
            client.kill()
            client.wait()
        stop_pids([srv.pid])
        srv.wait(10)


@root_only
def test_supervisor_restarts_and_programs_get_errors(tmp_path):
    """kill -9 of an instance: the program holding a connection on it gets
    an error (not a hang), the supervisor starts the instance again, and a
    new program is served by it; past restart_limit it stays down and
    status says failed (exit 1)."""
    cfg = tmp_path / "ss.toml"
    cfg.write_text("restart_limit = 1\n")
    g = Up("--config", str(cfg))
    srv = client = None
    try:
        srv = g.run(SERVER)
        pid = int(srv.stdout.readline().split()[1])
        client = connect_client(g.ns)
        client.stdout.readline()
        assert srv.stdout.readline().strip() == "accepted"
        st = g.json("status")
        k = [i for i in st["instances"] if any(p["pid"] == pid for p in i["processes"])][0]
        os.kill(k["pid"], signal.SIGKILL)
        # the program's recv fails: within a second or so, not a hang
        out, _ = srv.communicate(timeout=20)
        assert "error ConnectionResetError" in out, out
        for _ in range(100):
            st = g.json("status")
            if st["instances"][k["instance"]]["healthy"]:
                break
            time.sleep(0.1)
        i = st["instances"][k["instance"]]
        assert i["healthy"] and i["restarts"] == 1 and i["pid"] != k["pid"]
        with open(os.path.join(RUN_DIR, g.name, "supervisor.log")) as f:
            log = f.read()
        assert "instance %d (pid %d) died: signal 9" % (k["instance"], k["pid"]) in log
        # served again: the echo service through every instance
        r = g.ns.run([sys.executable, "-c", r"""
import socket, sys
for _ in range(8):
    c = socket.create_connection((sys.argv[1], 7), timeout=5); c.sendall(b"x"); assert c.recv(1) == b"x"; c.close()
""", STACK])
        assert r.returncode == 0, r.stderr
        # a second death within the window: left down
        os.kill(i["pid"], signal.SIGKILL)
        for _ in range(100):
            st = g.json("status")
            if st["instances"][k["instance"]]["state"] == "failed":
                break
            time.sleep(0.1)
        assert st["instances"][k["instance"]]["state"] == "failed"
        r = g.cli("status")
        assert r.returncode == 1 and re.search(r"failed\s+1\s+NO", r.stdout)
    finally:
        for p in (srv, client):
            if p and p.poll() is None:
                p.kill()
                p.wait()
        g.down()


@root_only
def test_restart_keeps_the_settings_it_was_started_with():
    g = Up("--spin-us", "7")
    try:
        before = g.json("status")
        r = g.cli("restart")
        assert r.returncode == 0 and "up:" in r.stdout
        after = g.json("status")
        assert all(i["healthy"] for i in after["instances"])
        assert {i["pid"] for i in before["instances"]}.isdisjoint(i["pid"] for i in after["instances"])
        with open(os.path.join(RUN_DIR, g.name, "state.json")) as f:
            assert json.load(f)["config"]["spin_us"] == 7
        # the echo service (--echo 7 at up) is still there
        r = g.ns.run(["bash", "-c", "exec 3<>/dev/tcp/%s/7; echo hi >&3; head -c 3 <&3" % STACK], timeout=10)
        assert r.stdout == "hi\n"
    finally:
        g.down()


@root_only
def test_foreground_mode_runs_the_systemd_unit():
    """The unit's ExecStart (shardsock up --foreground --group %i) brings
    the group up and keeps it, supervised, until SIGTERM, which takes it
    down and removes what it made."""
    with open(os.path.join(ROOT, "scripts", "shardsock@.service")) as f:
        unit = f.read()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
    argv = shlex.split(exec_start.replace("%i", "unit%d" % os.getpid()))
    assert os.path.basename(argv[0]) == "shardsock" and argv[1:3] == ["up", "--foreground"]
    ns = Netns()
    name = "unit%d" % os.getpid()
    p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-m", "preload.cli", *argv[1:],
                          "--run-dir", RUN_DIR], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert "up:" in p.stdout.readline()
        st = json.loads(cli("status", "--group", name, "--run-dir", RUN_DIR, "--json", ns=ns).stdout)
        assert st["supervisor"]["pid"] == p.pid and all(i["healthy"] for i in st["instances"])
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "down" in out
        assert not os.path.exists(os.path.join(RUN_DIR, name))
        assert ns.run(["ip", "link", "show", "ss0"]).returncode != 0
        for i in st["instances"]:
            assert not os.path.exists("/proc/%d" % i["pid"]) or open("/proc/%d/stat" % i["pid"]).read().split(
                ")")[-1].split()[0] == "Z"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        cli("down", "--group", name, "--run-dir", RUN_DIR, ns=ns)
        ns.delete()


@root_only
def test_run_options(up):
    probe = "import socket; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); print('ok')"
    # --verbose: the banner names what is not the default
    r = cli("run", "--instance-group", up.name, "--run-dir", RUN_DIR, "--verbose", "--profile", "latency",
            "--no-pin", "--", sys.executable, "-c", probe, ns=up.ns)
    assert r.returncode == 0 and r.stdout.strip() == "ok"
    banner = r.stderr.splitlines()[0]
    assert banner == ("shardsock run: group %s (%s/%s), profile latency (SHARDSOCK_POLL_US=50), no pinning (the "
                      "instance of the core each process runs on)" % (up.name, RUN_DIR, up.name)), banner
    assert re.search(r"pid \d+ attached to instance \d+", r.stderr)
    # the program sees the settings
    r = cli("run", *up.args, "--profile", "latency", "--", "sh", "-c", "echo $SHARDSOCK_POLL_US $LD_PRELOAD",
            ns=up.ns)
    assert r.stdout.split()[0] == "50" and r.stdout.split()[1].endswith("libshardsock.so")
    # a variable the user set is kept; asked for otherwise: an error, unless --force
    r = cli("run", *up.args, "--verbose", "--", "sh", "-c", "echo $SHARDSOCK_POLL_US", ns=up.ns,
            env={"SHARDSOCK_POLL_US": "7"})
    assert r.stdout.strip() == "7" and "kept from your environment: SHARDSOCK_POLL_US=7" in r.stderr
    r = cli("run", *up.args, "--profile", "latency", "--", "true", ns=up.ns, env={"SHARDSOCK_POLL_US": "7"})
    assert r.returncode == 1 and "SHARDSOCK_POLL_US=7 is set in your environment" in r.stderr and "--force" in \
        r.stderr
    r = cli("run", *up.args, "--profile", "latency", "--force", "--", "sh", "-c", "echo $SHARDSOCK_POLL_US",
            ns=up.ns, env={"SHARDSOCK_POLL_US": "7"})
    assert r.stdout.strip() == "50"
    # the latency profile busy-polls and still works: a request through the stack
    r = cli("run", *up.args, "--profile", "latency", "--", sys.executable, "-c", r"""
import socket
l = socket.socket(); l.bind(("127.0.0.1", 8100)); l.listen()
c = socket.create_connection(("127.0.0.1", 8100)); a, _ = l.accept()
for i in range(200):
    c.sendall(b"x"); assert a.recv(1) == b"x"
print("ok")
""", ns=up.ns)
    assert r.stdout.strip() == "ok", r.stderr
    # SHARDSOCK_POLL_US busy-polls before sleeping: a blocking recv that
    # waits half a second spends the poll time on the CPU, and none without
    wait = r"""
import resource, socket, threading, time
l = socket.socket(); l.bind(("127.0.0.1", 8101)); l.listen()
c = socket.create_connection(("127.0.0.1", 8101)); a, _ = l.accept()
threading.Timer(0.5, lambda: c.sendall(b"x")).start()
t0 = resource.getrusage(resource.RUSAGE_SELF)
assert a.recv(1) == b"x"
t1 = resource.getrusage(resource.RUSAGE_SELF)
print(round(t1.ru_utime + t1.ru_stime - t0.ru_utime - t0.ru_stime, 3))
"""
    cpu = {}
    for us in ("0", "300000"):
        r = cli("run", *up.args, "--", sys.executable, "-c", wait, ns=up.ns,
                env={"SHARDSOCK_POLL_US": us})
        assert r.returncode == 0, r.stderr
        cpu[us] = float(r.stdout)
    assert cpu["0"] < 0.1 and cpu["300000"] > 0.1, cpu
    # usage errors: exit 2
    assert cli("run", *up.args, "--profile", "fast", "--", "true").returncode == 2
    r = cli("run", *up.args)
    assert r.returncode == 2 and "name the program" in r.stderr


@root_only
def test_errors_when_the_group_is_down_or_permission_is_missing():
    ns = Netns()
    try:
        args = ["--group", "nothere", "--run-dir", RUN_DIR]
        for cmd in (["status"], ["stat"], ["stat", "--rate"], ["netstat"], ["top", "-n", "1"], ["down"],
                    ["status", "--json"]):
            r = cli(*cmd, *args, ns=ns)
            assert r.returncode == 1 and "not up" in r.stderr and "Traceback" not in r.stderr, (cmd, r.stderr)
        # not root: up says root is needed; status of a root's group: permission, and what to do
        r = cli("up", "--group", "x", "--run-dir", "/tmp/ss-nobody", ns=ns, user=True)
        assert r.returncode == 1 and "needs root" in r.stderr and "Traceback" not in r.stderr, r.stderr
    finally:
        ns.delete()
    g = Up()
    try:
        for cmd in (["down"], ["stat", "--reset"]):
            r = g.cli(*cmd, user=True)
            assert r.returncode == 1 and "permission denied" in r.stderr and "needs root" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
        assert all(i["healthy"] for i in g.json("status")["instances"])
    finally:
        g.down()


def test_usage_errors_and_completion(tmp_path):
    assert cli("frobnicate").returncode == 2
    assert cli("stat", "--frob").returncode == 2
    assert cli().returncode == 2
    r = cli("completion", "bash")
    assert r.returncode == 0
    script = tmp_path / "shardsock.bash"
    script.write_text(r.stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    def complete(*words):
        line = " ".join(["shardsock", *words])
        r = subprocess.run(["bash", "-c", 'source "$0"; COMP_WORDS=(%s); COMP_CWORD=%d; _shardsock; '
                            'echo "${COMPREPLY[@]}"' % (line, len(words)), str(script)],
                           capture_output=True, text=True)
        return r.stdout.split()
    assert complete("st") == ["status", "stat"]
    assert set(complete("stat", "--r")) == {"--run-dir", "--rate", "--reset"}
    assert complete("up", "--backend", "af") == ["afpacket", "afxdp"]
    assert complete("run", "--profile", "") == ["throughput", "latency"]
    assert "--no-pin" in complete("run", "--")


@root_only
def test_compat_command(tmp_path):
    """shardsock compat: --list names every scenario; a selection runs for
    real and writes its matrix where --matrix says."""
    r = cli("compat", "--list")
    assert r.returncode == 0
    assert re.search(r"^redis\s+redis-cli set, get, incr\s+server,client,loopback$", r.stdout, re.M), r.stdout
    out = tmp_path / "MATRIX.md"
    r = cli("compat", "--matrix-only", "-k", "memcached and server", "--matrix", str(out), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "compat: 1 rows, 1 pass, 0 known not to pass yet, 0 fail (%s)" % out in r.stdout
    assert re.search(r"^\| memcached \| set, get, delete \| server \| exit 0, .* \| pass \| 0 \|$",
                     out.read_text(), re.M), out.read_text()
    r = cli("compat", "--matrix-only", "-k", "nosuchprogram", "--matrix", str(tmp_path / "none.md"), timeout=120)
    assert r.returncode == 1
    # without --matrix, part of the suite leaves the whole suite's MATRIX.md as it was
    full = os.path.join(ROOT, "compat_tests", "MATRIX.md")
    before = open(full).read() if os.path.exists(full) else None
    r = cli("compat", "--matrix-only", "-k", "memcached and server", timeout=300)
    assert r.returncode == 0 and "compat_tests/MATRIX.partial.md)" in r.stdout, r.stdout[-2000:]
    assert (open(full).read() if os.path.exists(full) else None) == before
