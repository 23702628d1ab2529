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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from topology import Group, Netns  # noqa: E402

RUN_DIR = "/run/shardsock-compat"
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


@pytest.fixture
def group():
    ns = Netns()
    g = None
    try:
        g = Group(ns, "l%d" % os.getpid(), RUN_DIR)
        yield g
    finally:
        if g is not None:
            assert g.down().returncode == 0
        ns.delete()


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
        assert all(x > 0 for x in local), (local, remote)
        assert sum(remote) <= 0.2 * 400, (local, remote)
    finally:
        kill_tree(srv.pid)
        srv.wait(10)


def kill_tree(pid):
    """Stops pid and its descendants, by pid."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            children = [int(c) for c in f.read().split()]
    except FileNotFoundError:
        children = []
    for c in children:
        kill_tree(c)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
