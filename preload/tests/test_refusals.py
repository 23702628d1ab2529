"""Issue 12: what cannot work is refused up front, with the reason and the
fix, exit 1 (2 for bad usage), no traceback, and nothing left behind; `run`
says when a program will run on the kernel; operators are told what a
command acts on.  Each command runs for real (python3 -m preload.cli) in a
network namespace the test makes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from topology import Netns, stop_pids  # noqa: E402

RUN_DIR = "/run/shardsock-refusals"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices")


def cli(*args, ns=None, env=None, timeout=60):
    argv = [sys.executable, "-m", "preload.cli", *args]
    if ns:
        argv = ["ip", "netns", "exec", ns.name, *argv]
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e)


def group_name(tag):
    return "rf%s%d" % (tag, os.getpid())


def nothing_left(ns, group, interface="ss0"):
    assert not os.path.exists(os.path.join(RUN_DIR, group)), os.listdir(os.path.join(RUN_DIR, group))
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("shardsock-%s-" % group)]
    assert ns.run(["ip", "link", "show", interface]).returncode != 0


def refused(ns, group, *args, code=1, interface="ss0"):
    """up with args: refused with exit code, one short line, no traceback,
    nothing left behind.  Returns the message."""
    r = cli("up", "--group", group, "--run-dir", RUN_DIR, *args, ns=ns)
    assert r.returncode == code, (args, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert len(r.stderr) < 400 and r.stderr.count("\n") == 1, r.stderr
    nothing_left(ns, group, interface)
    return r.stderr


@root_only
def test_up_refuses_what_cannot_work():
    ns = Netns()
    g = group_name("a")
    ok = ["--cores", "0"]
    try:
        # not unicast host addresses
        for addr, host, why in (("198.18.50.0/24", "198.18.50.1/24", "is the network address of 198.18.50.0/24"),
                                ("198.18.50.255/24", "198.18.50.1/24", "is the broadcast address"),
                                ("224.0.0.5/24", "224.0.0.1/24", "is a multicast address"),
                                ("127.0.0.5/8", "127.0.0.1/8", "is a loopback address"),
                                ("0.0.0.5/8", "0.0.0.1/8", "is in 0.0.0.0/8"),
                                ("198.18.50.2/24", "198.18.50.255/24", "host_address 198.18.50.255/24 is the "
                                 "broadcast address")):
            err = refused(ns, g, "--address", addr, "--host-address", host, *ok)
            assert why in err and "unicast host address" in err, err
        base = ["--address", "198.18.50.2/24", "--host-address", "198.18.50.1/24"]
        err = refused(ns, g, *base, "--gateway", "198.18.51.1", *ok)
        assert "gateway 198.18.51.1 is outside the stack's subnet 198.18.50.0/24" in err
        # cores: repeated, not online, absurd (the message stays short)
        err = refused(ns, g, *base, "--cores", "0,0")
        assert "--cores names core 0 more than once" in err
        err = refused(ns, g, *base, "--cores", "0-100")
        assert "not online here; online: " in err and "2-100" in err
        err = refused(ns, g, *base, "--cores", "0-1000000")
        assert "cores = '0-1000000' is not valid" in err
        err = refused(ns, g, *base, "--cores", "9" * 100000)
        assert "is not valid" in err
        # the kernel holds the stack's address: it, not the stack, would answer
        ns.run(["ip", "addr", "add", "198.18.50.2/32", "dev", "lo"], check=True)
        err = refused(ns, g, *base, *ok)
        assert "the kernel holds the stack's address on lo (198.18.50.2/32)" in err and "ip addr del 198.18.50.2/32 " \
            "dev lo" in err
        ns.run(["ip", "addr", "del", "198.18.50.2/32", "dev", "lo"], check=True)
        ns.run(["ip", "addr", "add", "198.18.50.1/32", "dev", "lo"], check=True)
        err = refused(ns, g, *base, *ok)
        assert "the kernel holds host_address on lo (198.18.50.1/32)" in err
        ns.run(["ip", "addr", "del", "198.18.50.1/32", "dev", "lo"], check=True)
        # the subnet is routed elsewhere already
        ns.run(["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"], check=True)
        ns.run(["ip", "link", "set", "va", "up"], check=True)
        ns.run(["ip", "route", "add", "198.18.50.128/25", "dev", "va"], check=True)
        err = refused(ns, g, *base, *ok)
        assert "the subnet 198.18.50.0/24 is routed on va already (route 198.18.50.128/25)" in err
        ns.run(["ip", "link", "del", "va"], check=True)
        # another group's subnet, its device
        other = group_name("b")
        r = cli("up", "--group", other, "--run-dir", RUN_DIR, *base, *ok, ns=ns)
        assert r.returncode == 0, r.stderr
        try:
            err = refused(ns, g, "--address", "198.18.50.3/24", "--host-address", "198.18.50.4/24",
                          "--interface", "ss1", *ok, interface="ss1")
            assert "group %s uses the subnet 198.18.50.0/24" % other in err
            r = cli("up", "--group", g, "--run-dir", RUN_DIR, "--address", "198.18.51.2/24", "--host-address",
                    "198.18.51.1/24", *ok, ns=ns)
            assert r.returncode == 1 and "interface ss0 is group %s's" % other in r.stderr
            assert not os.path.exists(os.path.join(RUN_DIR, g))
            # a crash (kill -9 of every process): up says to run down, which cleans up
            st = json.load(open(os.path.join(RUN_DIR, other, "state.json")))
            for pid in [st["supervisor_pid"]] + [i["pid"] for i in st["instances"]]:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
            r = cli("up", "--group", other, "--run-dir", RUN_DIR, *base, *ok, ns=ns)
            assert r.returncode == 1 and "was not taken down" in r.stderr and \
                "run 'shardsock down --group %s --run-dir %s'" % (other, RUN_DIR) in r.stderr, r.stderr
            r = cli("up", "--group", g, "--run-dir", RUN_DIR, "--address", "198.18.51.2/24", "--host-address",
                    "198.18.51.1/24", *ok, ns=ns)
            assert r.returncode == 1 and "interface ss0 already exists: group %s made it" % other in r.stderr \
                and "shardsock down --group %s" % other in r.stderr, r.stderr
        finally:
            r = cli("down", "--group", other, "--run-dir", RUN_DIR, ns=ns)
            assert r.returncode == 0, r.stderr
        nothing_left(ns, other)
        # a device left with no group's state: down is named, and ip link del
        ns.run(["ip", "tuntap", "add", "ss0", "mode", "tap"], check=True)
        r = cli("up", "--group", g, "--run-dir", RUN_DIR, *base, *ok, ns=ns)
        assert r.returncode == 1 and "interface ss0 already exists" in r.stderr and "shardsock down" in r.stderr
        ns.run(["ip", "link", "del", "ss0"], check=True)
        # what was refused works once the reason is gone
        r = cli("up", "--group", g, "--run-dir", RUN_DIR, *base, *ok, ns=ns)
        assert r.returncode == 0, r.stderr
        assert cli("down", "--group", g, "--run-dir", RUN_DIR, ns=ns).returncode == 0
        nothing_left(ns, g)
    finally:
        for name in (g, group_name("b")):
            cli("down", "--group", name, "--run-dir", RUN_DIR, ns=ns)
        ns.delete()


class Group:
    """A group up in a namespace of its own (one instance per core)."""

    def __init__(self, tag, *extra):
        self.ns = Netns()
        self.name = group_name(tag)
        self.args = ["--group", self.name, "--run-dir", RUN_DIR]
        r = self.cli("up", "--echo", "7", *extra)
        if r.returncode != 0:
            self.ns.delete()
        assert r.returncode == 0, r.stderr

    def cli(self, *args, **kw):
        return cli(*args, *self.args, ns=self.ns, **kw)

    def run(self, *args, **kw):
        """shardsock run ARGS (options, then -- CMD)."""
        return cli("run", *self.args, *args, ns=self.ns, **kw)

    def down(self):
        try:
            r = self.cli("down")
            assert r.returncode == 0, r.stderr
            nothing_left(self.ns, self.name)
        finally:
            self.ns.delete()


@pytest.fixture
def group():
    g = Group("g")
    yield g
    g.down()


def as_nobody(*argv, caps="+dac_read_search"):
    """argv as uid 65534 (with caps: reading what root's, no more)."""
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=" + caps,
            "--ambient-caps=" + caps, *argv]


@root_only
def test_run_says_when_the_program_runs_on_the_kernel(group):
    probe = [sys.executable, "-c", "print('ran')"]
    # served: nothing said
    r = group.run("--", *probe)
    assert r.returncode == 0 and r.stdout == "ran\n" and r.stderr == "", r.stderr
    # no such group: one line, why and what to do; --quiet: silent
    r = cli("run", "--group", "nosuch", "--run-dir", RUN_DIR, "--", *probe, ns=group.ns)
    assert r.returncode == 0 and r.stdout == "ran\n"
    assert r.stderr == ("shardsock run: python3 runs on the kernel: group nosuch (%s/nosuch) is not up; start it "
                        "with 'shardsock up --group nosuch --run-dir %s' (--quiet: say nothing)\n"
                        % (RUN_DIR, RUN_DIR)).replace("python3", os.path.basename(sys.executable)), r.stderr
    r = cli("run", "--group", "nosuch", "--run-dir", RUN_DIR, "--quiet", "--", *probe, ns=group.ns)
    assert r.returncode == 0 and r.stdout == "ran\n" and r.stderr == ""
    # a user the control socket refuses (it may read the files: still refused)
    for caps in ("+dac_read_search", "+dac_read_search,+dac_override"):
        r = group.ns.run(as_nobody(sys.executable, "-m", "preload.cli", "run", *group.args, "--", *probe,
                                   caps=caps), env=dict(os.environ, PYTHONPATH=ROOT))
        assert r.returncode == 0 and r.stdout == "ran\n", r.stderr
        assert r.stderr.count("\n") == 1 and "runs on the kernel" in r.stderr and "uid 65534" in r.stderr and \
            "run as root" in r.stderr, r.stderr
    # --instance outside the group: usage errors
    n = len(json.loads(group.cli("status", "--json").stdout)["instances"])
    for k in (str(n), "5", "-1"):
        r = group.run("--instance", k, "--", *probe)
        assert r.returncode == 2 and r.stdout == "" and "--instance %s" % k in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = group.run("--instance", str(n - 1), "--", *probe)
    assert r.returncode == 0 and r.stderr == ""


@root_only
def test_arguments_are_checked_up_front(tmp_path):
    """Bad values are usage errors (exit 2) that say what a good value is,
    before anything runs: no traceback."""
    for argv, says in ((["top", "--interval", "-1"], "-1 is not a number of seconds more than 0"),
                       (["stat", "--rate", "--interval", "-2"], "-2 is not a number of seconds more than 0"),
                       (["stat", "--rate", "--interval", "nan"], "nan is not a number of seconds"),
                       (["top", "-n", "0"], "0 is not a count, 1 or more"),
                       (["netstat", "--state", "establishd"], "establishd is not a TCP state; one of CLOSED, LISTEN, "
                        "SYN_SENT, SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, "
                        "LAST_ACK, TIME_WAIT"),
                       (["netstat", "--port", "70000"], "70000 is not a port, 1-65535"),
                       (["netstat", "--port", "0"], "0 is not a port, 1-65535"),
                       (["up", "--echo", "70000"], "70000 is not a port"),
                       (["run"], "name the program to run"),
                       (["run", "--instance", "-1", "--", "true"], "--instance -1: instances are numbered from 0"),
                       (["compat", "--matrix", "/nonexistent/dir/MATRIX.md"], "--matrix /nonexistent/dir/MATRIX.md: "
                        "cannot write there"),
                       (["compat", "--matrix", str(tmp_path)], "cannot write there (is a directory)")):
        t0 = time.monotonic()
        r = cli(*argv, "--group", "nothere", "--run-dir", RUN_DIR) if argv[0] != "compat" else cli(*argv)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)
        assert time.monotonic() - t0 < 10  # compat: refused before the suite runs
    # whatever the input, the message stays short
    big = "9" * 100000
    for argv in (["up", "--cores", big], ["up", "--config", big], ["up", "--address", big], ["up", "--group", big],
                 ["up", "--echo", big], ["run", "--instance", big, "--", "true"], ["netstat", "--state", big],
                 ["top", "--interval", big], ["compat", "--matrix", big]):
        t0 = time.monotonic()
        r = cli(*argv)
        assert r.returncode in (1, 2) and len(r.stderr) < 1000 and "Traceback" not in r.stderr, (argv[:2], r.stderr)
        assert time.monotonic() - t0 < 10
    # completion offers the states
    script = tmp_path / "shardsock.bash"
    script.write_text(cli("completion", "bash").stdout)
    r = subprocess.run(["bash", "-c", 'source "$0"; COMP_WORDS=(shardsock netstat --state E); COMP_CWORD=3; '
                        '_shardsock; echo "${COMPREPLY[@]}"', str(script)], capture_output=True, text=True)
    assert r.stdout.split() == ["ESTABLISHED"], r.stdout + r.stderr
    # the states are ss's names, in any case
    r = cli("netstat", "--state", "time-wait", "--group", "nothere", "--run-dir", RUN_DIR)
    assert r.returncode == 1 and "not up" in r.stderr


def test_a_missing_python_package_is_named_with_the_fix(tmp_path):
    """pyroute2 and PyYAML are imported by the commands that need them:
    --help and the read-only commands run without; those that need one
    name the package and how to install it."""
    for module in ("pyroute2", "yaml"):
        (tmp_path / (module + ".py")).write_text("raise ModuleNotFoundError(\"No module named '%s'\", name='%s')\n"
                                                 % (module, module))
    env = {"PYTHONPATH": "%s:%s" % (tmp_path, ROOT)}
    r = cli("--help", env=env)
    assert r.returncode == 0 and "COMMAND" in r.stdout, r.stderr
    r = cli("status", "--group", "nothere", "--run-dir", RUN_DIR, env=env)
    assert r.returncode == 1 and "not up" in r.stderr and "Traceback" not in r.stderr
    r = cli("compat", "--list", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "the Python package PyYAML is missing (module yaml): pip install PyYAML" in r.stderr, r.stderr
    if os.geteuid() == 0:
        ns = Netns()
        try:
            g = group_name("m")
            r = cli("up", "--group", g, "--run-dir", RUN_DIR, env=env, ns=ns)
            assert r.returncode == 1 and "Traceback" not in r.stderr
            assert "the Python package pyroute2 is missing" in r.stderr and "pip install pyroute2" in r.stderr
            nothing_left(ns, g)
        finally:
            ns.delete()
    assert "Traceback" in cli("--debug", "compat", "--list", env=env).stderr


# Forks children that each hold the listener, then prints its pid and theirs.
FORKER = r"""
import os, socket, sys, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 8000)); l.listen(16)
kids = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        l.getsockname()
        sys.stdin.read()
        os._exit(0)
    kids.append(pid)
print(os.getpid(), *kids, flush=True)
sys.stdin.read()
"""


@root_only
def test_netstat_lists_every_holder(group):
    """A listener held by 24 processes (a server's forked workers): netstat
    names every one (a fixed 512-byte list cut it after four, mid pid=)."""
    p = subprocess.Popen(["ip", "netns", "exec", group.ns.name, sys.executable, "-m", "preload.cli", "run",
                          *group.args, "--instance", "0", "--", sys.executable, "-c", FORKER, "24"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        pids = sorted(int(x) for x in p.stdout.readline().split())
        assert len(pids) == 25
        r = group.cli("netstat", "--port", "8000", "--json")
        assert r.returncode == 0, r.stderr
        conns = json.loads(r.stdout)["connections"]
        assert [c["state"] for c in conns] == ["LISTEN"]
        assert sorted(x["pid"] for x in conns[0]["processes"]) == pids
        r = group.cli("netstat", "--port", "8000")
        assert r.returncode == 0 and all("(%d)" % pid in r.stdout for pid in pids), r.stdout
    finally:
        p.stdin.close()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            stop_pids([p.pid])


def test_durations_read_as_an_operator_reads_them():
    from preload.cli import duration
    assert [duration(s) for s in (None, 4.24, 59.9, 60, 725, 3600 * 3 + 7 * 60 + 5, 86400 * 2 + 5 * 3600 + 1)] == \
        ["-", "4.2s", "59.9s", "1m00s", "12m05s", "3h07m", "2d05h"]


# Burns about a third of a CPU until stdin closes, holding a listener.
BURNER = r"""
import os, socket, sys, threading, time
l = socket.socket(); l.bind(("0.0.0.0", 8001)); l.listen()
print(os.getpid(), flush=True)
def burn():
    while True:
        t = time.monotonic()
        while time.monotonic() - t < 0.01:
            pass
        time.sleep(0.02)
threading.Thread(target=burn, daemon=True).start()
sys.stdin.read()
"""


@root_only
def test_operators_are_told(tmp_path):
    """down and restart name the programs that lose their sockets; status
    says why an instance is unhealthy; top's CPU% is to 0.1 and its time a
    wall-clock time; stat --rate keeps gauges apart from rates."""
    cfg = tmp_path / "ss.toml"
    cfg.write_text("restart_limit = 0\n")
    g = Group("t", "--config", str(cfg))
    p = None
    try:
        p = subprocess.Popen(["ip", "netns", "exec", g.ns.name, sys.executable, "-m", "preload.cli", "run",
                              *g.args, "--instance", "0", "--", sys.executable, "-c", BURNER],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT))
        pid = int(p.stdout.readline())
        # top: CPU% to 0.1 (it came in steps of 10), an ISO time
        r = g.cli("top", "-n", "3", "--interval", "0.5", "--json")
        assert r.returncode == 0, r.stderr
        samples = [json.loads(x) for x in r.stdout.splitlines()]
        for s in samples:
            t = time.mktime(time.strptime(s["time"][:19], "%Y-%m-%dT%H:%M:%S"))
            assert abs(t - time.time()) < 30, s["time"]
            assert "monotonic" not in s
        shares = [q["cpu_pct"] for s in samples for i in s["instances"] for q in i["processes"] if q["pid"] == pid]
        assert len(shares) == 3 and all(10 <= x <= 80 for x in shares), shares
        assert any(round(x * 10) % 100 for x in shares), shares  # not all whole tens
        # stat --rate: the gauges in a table of their own, and under "gauges" in JSON
        r = g.cli("stat", "--rate", "--interval", "0.3")
        assert r.returncode == 0
        rates, _, gauges = r.stdout.partition("\nnow (gauges, not rates)\n")
        assert "tcp_state" not in rates and "tcp_state LISTEN" in gauges, r.stdout
        j = json.loads(g.cli("stat", "--rate", "--interval", "0.3", "--json").stdout)
        assert all("tcp_state" not in i["counters"] and "LISTEN" in i["gauges"]["tcp_state"] for i in j["instances"])
        # an instance that died and stays down: status shows the supervisor's words
        st = json.loads(g.cli("status", "--json").stdout)
        victim = st["instances"][-1]
        os.kill(victim["pid"], signal.SIGKILL)
        for _ in range(100):
            r = g.cli("status")
            if "is NOT healthy" in r.stdout:
                break
            time.sleep(0.1)
        assert r.returncode == 1
        assert "instance %d is NOT healthy" % victim["instance"] in r.stdout, r.stdout
        assert "instance %d (pid %d) died: signal 9" % (victim["instance"], victim["pid"]) in r.stdout, r.stdout
        j = json.loads(g.cli("status", "--json").stdout)
        assert any("died: signal 9" in line for line in j["instances"][-1]["log"])
        # restart and down list what is attached before they act
        r = g.cli("restart")
        assert r.returncode == 0, r.stderr
        head = r.stdout.splitlines()
        assert head[0] == "shardsock: restarting group %s: 1 program attached loses its stack sockets " \
            "(ECONNRESET):" % g.name, r.stdout
        assert head[1].split() == ["PID", "COMMAND", "SOCKETS", "LISTENERS"]
        assert head[2].split() == [str(pid), "python3" if "python3" in head[2] else head[2].split()[1], "1", "1"]
        assert "up:" in head[3]
        p.stdin.close()
        p.wait(10)
        r = g.cli("down")
        assert r.returncode == 0 and r.stdout.splitlines()[0] == "shardsock: stopping group %s: no program " \
            "attached" % g.name, r.stdout
        nothing_left(g.ns, g.name)
    finally:
        if p and p.poll() is None:
            stop_pids([p.pid])
        g.cli("down")  # after a failure: what the test made goes
        g.ns.delete()


@root_only
def test_read_only_commands_for_the_read_group(tmp_path):
    """A member of read_group (a gid here: no group is added to the system)
    runs status, stat, top and netstat; anyone else is told which group to
    join; what changes the group stays root's, and the instances serve no
    program of the member's."""
    gid = 40000 + os.getpid() % 20000
    cfg = tmp_path / "ss.toml"
    cfg.write_text("read_group = %d\n" % gid)
    g = Group("r", "--config", str(cfg))
    try:
        assert os.stat(os.path.join(RUN_DIR, g.name)).st_gid == gid

        def as_user(*argv, groups):
            return g.ns.run(["setpriv", "--reuid=65534", "--regid=65534", "--groups=%s" % groups, sys.executable,
                             "-m", "preload.cli", *argv, *g.args], env=dict(os.environ, PYTHONPATH=ROOT))
        for argv in (["status"], ["stat"], ["stat", "--json"], ["top", "-n", "1", "--interval", "0.2"]):
            r = as_user(*argv, groups=gid)
            assert r.returncode == 0 and "Traceback" not in r.stderr, (argv, r.stderr)
        # netstat and the attached programs come from the instances, which
        # answer the read group's members what reads, and serve them nothing
        r = as_user("status", groups=gid)
        assert "ready" in r.stdout and "attached programs" not in r.stdout, r.stdout
        r = as_user("netstat", groups=gid)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "LISTEN" in r.stdout and ":7 " in r.stdout, r.stdout  # the echo service's listener
        r = as_user("run", *g.args, "--", "true", groups=gid)
        assert r.returncode == 0 and "does not serve you" in r.stderr, r.stderr
        for argv in (["stat", "--reset"], ["down"]):
            r = as_user(*argv, groups=gid)
            assert r.returncode == 1 and "needs root" in r.stderr, r.stderr
        for argv in (["status"], ["stat"], ["top", "-n", "1"], ["netstat"]):
            r = as_user(*argv, groups=gid + 1)
            assert r.returncode == 1 and "permission denied" in r.stderr and \
                "membership of the group %d (gid %d)" % (gid, gid) in r.stderr, r.stderr
        assert all(i["healthy"] for i in json.loads(g.cli("status", "--json").stdout)["instances"])
    finally:
        g.down()


# Holds int(argv[1]) connections to the echo service from four source
# addresses, prints "connected N", and keeps them until stdin closes.
MANY = r"""
import resource, socket, sys
n, k = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket()
    s.bind(("198.18.0.%d" % (11 + (i + k) % 4), 0))
    s.settimeout(20)
    s.connect(("198.18.0.2", 7))
    socks.append(s)
print("connected", len(socks), flush=True)
sys.stdin.read()
"""


@root_only
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="100,000 sockets need two instances (65,536 each)")
def test_netstat_at_100000_connections(group):
    """netstat lists 100,000 connections, every one, in seconds."""
    import resource
    total = 100000
    for i in range(11, 15):
        group.ns.run(["ip", "addr", "add", "198.18.0.%d/24" % i, "dev", "ss0"], check=True)
    group.ns.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"], check=True)
    per = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200
    counts = [min(per, total - i * per) for i in range((total + per - 1) // per)]
    clients = [subprocess.Popen(["ip", "netns", "exec", group.ns.name, sys.executable, "-c", MANY, str(n), str(k)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for k, n in enumerate(counts)]
    try:
        for c, n in zip(clients, counts):
            assert c.stdout.readline().split() == ["connected", str(n)]
        t0 = time.monotonic()
        r = group.cli("netstat", "--json", timeout=120)
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr[-2000:]
        conns = json.loads(r.stdout)["connections"]
        est = [c for c in conns if c["state"] == "ESTABLISHED" and c["local"] == "198.18.0.2:7"]
        assert len(est) == total and all(c["service"] == "echo" for c in est)
        assert len({c["remote"] for c in est}) == total
        assert took < 60, took
        r = group.cli("netstat", "--state", "listen", "--port", "7")
        assert r.returncode == 0 and r.stdout.count("[echo service]") == len(os.sched_getaffinity(0))
    finally:
        for c in clients:
            c.stdin.close()
        for c in clients:
            try:
                c.wait(30)
            except subprocess.TimeoutExpired:
                stop_pids([c.pid])
