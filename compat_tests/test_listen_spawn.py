"""Listen spawn with plain programs: a prefork server (one listener made
before fork, accepted from by every child) and independent processes with
SO_REUSEPORT listeners on one port are spread over the instances, and each
instance accepts the connections it receives (accept_local).

Each test brings a group up on a tap device in a namespace it creates, stops
what it started by pid, and takes everything down again."""
import json
import os
import subprocess
import sys

import pytest

from topology import stop_pids  # noqa: E402  (conftest.py puts scripts/ on the path)

STACK = "198.18.0.2"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices")

# Answers each connection with the pid that accepted it; the listener is
# made before fork (prefork) or in each process with SO_REUSEPORT.
SERVER = r"""
import os, socket, sys
mode, n = sys.argv[1], int(sys.argv[2])
def listener():
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if mode == "reuseport":
        l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    l.bind(("0.0.0.0", 17700)); l.listen(128)
    return l
def serve(l):
    while True:
        c, _ = l.accept()
        c.sendall(b"%d\n" % os.getpid())
        c.close()
l = listener() if mode == "prefork" else None
for _ in range(n):
    if os.fork() == 0:
        serve(l or listener())
print("serving", flush=True)
sys.stdin.read()
"""

# Connects n times, one connection after the other; prints the pids seen.
CLIENT = r"""
import json, socket, sys
seen = {}
for _ in range(int(sys.argv[2])):
    c = socket.create_connection((sys.argv[1], 17700), timeout=10)
    pid = c.makefile().readline().strip()
    seen[pid] = seen.get(pid, 0) + 1
    c.close()
print(json.dumps(seen))
"""


@pytest.mark.parametrize("mode", ["prefork", "reuseport"])
def test_processes_accept_on_their_own_instances(group, mode):
    n = len(group.status()["instances"])
    srv = group.popen(sys.executable, "-c", SERVER, mode, str(n), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      text=True)
    try:
        assert srv.stdout.readline().strip() == "serving"
        before = group.counters()
        r = group.ns.run([sys.executable, "-c", CLIENT, STACK, "400"], timeout=120)
        assert r.returncode == 0, r.stderr
        seen = json.loads(r.stdout)
        after = group.counters()
        local = [a["accept_local"] - b["accept_local"] for b, a in zip(before, after)]
        remote = [a["accept_global"] - b["accept_global"] for b, a in zip(before, after)]
        assert sum(seen.values()) == 400 and len(seen) == n, seen
        # placed: each child runs on the core of the instance it attached to
        cores = sorted(i["core"] for i in group.status()["instances"])
        assert sorted(affinity(int(p)) for p in seen) == [[c] for c in cores]
        assert all(x > 0 for x in local), (local, remote)
        assert sum(remote) <= 0.2 * 400, (local, remote)
    finally:
        stop_pids([srv.pid])
        srv.wait(10)



def affinity(pid):
    with open("/proc/%d/status" % pid) as f:
        line = [x for x in f if x.startswith("Cpus_allowed_list:")][0]
    return [int(c) for c in line.split()[1].split(",")] if "-" not in line else None


PROBE = "import socket; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()"


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two cores for two instances")
def test_placement_options(group):
    """--no-pin: the instance of the core the process runs on (here
    taskset's), its affinity left alone; --instance K: K, whatever the
    core; by default the next instance, round-robin, and its core."""
    for core in (1, 0):
        r = group.run("taskset", "-c", str(core), sys.executable, "-c", PROBE, verbose=True, run_args=("--no-pin",))
        assert "attached to instance %d (core %d)" % (core, core) in r.stderr, r.stderr
    r = group.run("taskset", "-c", "0", sys.executable, "-c", PROBE, verbose=True, run_args=("--instance", "1"))
    assert "attached to instance 1 (core 1)" in r.stderr, r.stderr
    seen = set()
    for _ in range(2):
        r = group.run(sys.executable, "-c", PROBE + "; import os; print(sorted(os.sched_getaffinity(0)))",
                      verbose=True)
        inst = int(r.stderr.split("attached to instance ")[1].split()[0])
        assert r.stdout.strip() == "[%d]" % inst, (r.stdout, r.stderr)
        seen.add(inst)
    assert seen == {0, 1}
