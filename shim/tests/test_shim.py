"""libshardsock.so against the kernel: the same programs run on the
kernel's sockets and under the library, with identical results, and the
instances' counters prove the sockets meant to be accelerated were.

Each test brings a group up on a tap device in a namespace it creates (two
instances on this machine), runs the programs there with `shardsock run`,
and takes everything down again.  Under the library a program's servers
listen on 0.0.0.0 (the stack and the kernel both) and its clients connect
either to the stack's address (the server side is the stack's; the client
is a kernel socket reaching it through the tap), to the kernel side's
(the client is the stack's), or to 127.0.0.1 (both ends are the stack's,
through its lo).

The programs' ports lie below 32768: a port inside the ephemeral range
(32768-60999) can be taken by some earlier client's connection, still in
TIME_WAIT, and then bind() fails even with SO_REUSEADDR."""
import json
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import topology  # noqa: E402
from topology import Netns  # noqa: E402

BUILD = os.path.join(ROOT, "build")
RUN_DIR = "/run/shardsock-shimtest"
STACK, HOST = "198.18.0.2", "198.18.0.1"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices")


class Group(topology.Group):
    def __init__(self, ns):
        super().__init__(ns, "s%d" % os.getpid(), RUN_DIR, "--echo", "7")


@pytest.fixture
def group():
    ns = Netns()
    g = None
    try:
        g = Group(ns)
        yield g
    finally:
        if g is not None:
            assert g.down().returncode == 0
        ns.delete()
        assert not [f for f in os.listdir("/dev/shm") if f.startswith("shardsock-%s-" % g.name)] if g else True


def kernel_run(ns, *cmd, timeout=120):
    return ns.run(list(cmd), timeout=timeout)


SIDES = ["server", "client", "loopback"]


def same_as_the_kernel(group, side, cmd, port, min_opens, parse=str.splitlines):
    """Runs cmd + [address, port] on the kernel (127.0.0.1) and under the
    library: to the stack's address for side "server" (the servers are the
    stack's), to the kernel side's for "client" (the clients are), and to
    127.0.0.1 for "loopback" (both, through the stack's lo).  The outputs
    must be equal, and at least min_opens sockets of that side the stack's.
    Returns the parsed output."""
    ref = kernel_run(group.ns, *cmd, "127.0.0.1", port)
    assert ref.returncode == 0, ref.stderr[-2000:]
    counters = {"server": ["tcp_passive_opens"], "client": ["tcp_active_opens"],
                "loopback": ["tcp_passive_opens", "tcp_active_opens"]}[side]
    before = [group.total(c) for c in counters]
    r = group.run(*cmd, {"server": STACK, "client": HOST, "loopback": "127.0.0.1"}[side], port)
    assert r.returncode == 0, r.stderr[-2000:]
    assert parse(r.stdout) == parse(ref.stdout)
    for c, b in zip(counters, before):
        assert group.total(c) - b >= min_opens, "the %s sockets were not the stack's (%s)" % (side, c)
    return parse(r.stdout)


@pytest.mark.parametrize("side", SIDES)
def test_sockcheck_same_as_the_kernel(group, side):
    """Every call of the scripted run, errno for errno."""
    same_as_the_kernel(group, side, [os.path.join(BUILD, "sockcheck")], "17001", 4)


@pytest.mark.parametrize("side", ["server", "loopback"])
def test_queued_connections_follow_the_listener_to_a_forked_child(side):
    """The parent's connections accepted ahead and never taken go back to
    the listener when it closes there, or when the forked child starts to
    accept on it too, bytes included, and the child accepts them.  One instance: connections queued at an instance
    where no holder remains cannot move to another instance's listener
    (listen spawn's limit, the same without accept-ahead)."""
    ns = Netns()
    g = None
    try:
        g = topology.Group(ns, "f%d" % os.getpid(), RUN_DIR, "--cores", "0")
        out = same_as_the_kernel(g, side, [sys.executable, os.path.join(HERE, "forkqueue.py")], "17060", 4,
                                 json.loads)
        assert out == {"parent closes": ["q0", "q1", "q2"], "parent keeps it": ["q0", "q1", "q2"]}, out
        assert g.total("accept_ahead_undone") >= 6, "the test did not exercise accept-ahead"
    finally:
        if g is not None:
            assert g.down().returncode == 0
        ns.delete()


@pytest.mark.parametrize("side", SIDES)
def test_threads_accept_and_connect_at_once_as_on_the_kernel(group, side):
    """Four threads accept on one listener (each connection taken once, by
    one thread: the records the instance accepted ahead are claimed with a
    compare-and-swap) while four others connect, 1000 connections."""
    out = same_as_the_kernel(group, side, [os.path.join(BUILD, "threadstress")], "17050", 1000)
    assert "accepted: 1000" in out and "echoed: 1000" in out, out


@pytest.mark.parametrize("side", SIDES)
def test_python_socket_layers_same_as_the_kernel(group, side):
    """Blocking and non-blocking sockets, timeouts, the three selectors,
    asyncio streams, threading and forking socketservers, http.server with
    urllib, fork, dual stack."""
    same_as_the_kernel(group, side, [sys.executable, os.path.join(HERE, "pyprog.py")], "17100", 12, json.loads)


@pytest.mark.parametrize("side", SIDES)
def test_sockets_across_exec_same_as_the_kernel(group, side):
    """A listener, a connection with unread bytes and both its ends survive
    exec; a close-on-exec socket does not; inetd's dup2 + exec of /bin/sh;
    subprocess's children hold none of the parent's sockets."""
    out = same_as_the_kernel(group, side, [sys.executable, os.path.join(HERE, "execprog.py")], "17400", 3,
                             json.loads)
    assert out["exec"] == {"unread": "sent before exec", "listener": True, "close_on_exec_peer": "",
                           "answer": "answered after exec", "new_connection": "new"}
    assert out["inetd"]["got"] == "got: hello from the client\n" and out["inetd"]["closed"] == ""


@pytest.mark.parametrize("side", SIDES)
def test_gevent_same_as_the_kernel(group, side):
    """gevent monkey-patched: a StreamServer and 50 greenlet clients."""
    out = same_as_the_kernel(group, side, [sys.executable, os.path.join(HERE, "geventprog.py")], "17300", 50,
                             json.loads)
    assert out == {"clients": 50, "same": 50}


@pytest.mark.parametrize("side", SIDES)
def test_threads_with_epoll_sets_of_their_own(group, side):
    """memcached's shape: worker threads, each in epoll_wait on its own set
    (a pipe and its connections), a main thread handing them connections.
    No round trip is lost whichever thread drains the doorbell."""
    out = same_as_the_kernel(group, side, [sys.executable, os.path.join(HERE, "threadsprog.py")], "17500", 8,
                             json.loads)
    assert out == {"clients": [300] * 8}


@pytest.mark.parametrize("side", ["server", "loopback"])
def test_threads_asleep_in_poll_each_wake_for_their_own(group, side):
    """A thread asleep in poll with no timeout, on a pipe and a socket, wakes
    when its socket gets data, though eight threads asleep beside it (each
    on a pipe and a socket of its own) are woken by the same doorbell and
    one of them may drain it first (a threaded Python server's accept thread
    slept through its connection this way)."""
    out = same_as_the_kernel(group, side, [sys.executable, os.path.join(HERE, "pollthreadsprog.py")], "17650", 90,
                             json.loads)
    assert out == {"woke": [True] * 10}


# Writes 4 MB to its one client, closes and exits at once: what the stack
# had not sent yet must still go, as the kernel sends a dead process's
# last bytes.
WRITE_AND_EXIT = r"""
import os, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1]))); l.listen(1)
print("listening", flush=True)
c, _ = l.accept()
c.sendall(bytes(range(256)) * 16384)
c.close()
os._exit(0)
"""

SLOW_READER = r"""
import hashlib, json, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
got = b""
time.sleep(0.5)  # the writer has exited by now, most of the 4 MB unsent
while True:
    b = c.recv(65536)
    if not b:
        break
    got += b
    time.sleep(0.002)
print(json.dumps({"bytes": len(got), "same": got == bytes(range(256)) * 16384}))
"""


def test_a_process_that_exits_after_writing_delivers_everything(group):
    """The tail of what a process wrote before it exited reaches the peer
    (the instance keeps the gone channel's ring until it drained, then
    sends the FIN), however slowly the peer reads."""
    srv = group.popen(sys.executable, "-c", WRITE_AND_EXIT, "17600", stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "listening"
        out = group.ns.python(SLOW_READER, STACK, 17600, timeout=120)
        assert out == {"bytes": 4194304, "same": True}
        assert srv.wait(10) == 0
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def test_http_server_serves_curl_through_the_stack(group):
    """The issue's acceptance: `shardsock run -- python3 -m http.server`
    serves curl at the stack's address."""
    port = "8000"
    srv = group.popen(sys.executable, "-m", "http.server", port, "--directory", HERE,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        before = group.total("tcp_passive_opens")
        body = None
        for _ in range(50):
            r = group.ns.run(["curl", "-sS", "-m", "5", "http://%s:%s/pyprog.py" % (STACK, port)], timeout=20)
            if r.returncode == 0:
                body = r.stdout
                break
            time.sleep(0.1)
        with open(os.path.join(HERE, "pyprog.py")) as f:
            assert body == f.read()
        assert group.total("tcp_passive_opens") > before
        assert group.total("chan_attaches") >= 1
    finally:
        srv.terminate()
        srv.wait(10)


def test_other_sockets_stay_the_kernels(group):
    """UDP, AF_UNIX, and loopback TCP with SHARDSOCK_LOOPBACK=0: the
    kernel's, working, unaccelerated, and counted by reason."""
    code = r"""
import json, socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); v.sendto(b"udp", u.getsockname())
a, b = socket.socketpair()
a.sendall(b"unix")
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); s, _ = l.accept(); c.sendall(b"loop")
w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # after the first TCP socket: counted
f = socket.socket(); f.setsockopt(socket.SOL_IP, 15, 1); f.bind(("0.0.0.0", 0))  # IP_FREEBIND: the kernel's
print(json.dumps([u.recv(10).decode(), b.recv(10).decode(), s.recv(10).decode()]))
"""
    before = group.counters()
    r = group.run(sys.executable, "-c", code, verbose=True, env={"SHARDSOCK_LOOPBACK": "0"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["udp", "unix", "loop"]
    assert "stays on the kernel" in r.stderr   # the loopback TCP socket, and why
    after = group.counters()
    for b, a in zip(before, after):
        assert a["tcp_passive_opens"] == b["tcp_passive_opens"] and a["tcp_active_opens"] == b["tcp_active_opens"]
    # counted by reason: the listener's address, the client's destination,
    # the UDP socket, the socket with an option only the kernel honours
    grew = {k: sum(a[k] - b[k] for b, a in zip(before, after)) for k in after[0] if k.startswith("fallback_")}
    assert grew == {"fallback_address": 1, "fallback_destination": 1, "fallback_not_tcp": 1, "fallback_port": 0,
                    "fallback_listen_unbound": 0, "fallback_fd_table": 0, "fallback_option": 1}


def test_no_instance_means_the_kernel():
    """With no group up, a program under the library runs on the kernel
    and, when asked, says why."""
    ns = Netns()
    try:
        code = ("import socket; l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(); "
                "c = socket.create_connection(l.getsockname()); s, _ = l.accept(); c.sendall(b'ok'); "
                "print(s.recv(2).decode())")
        r = ns.run([sys.executable, "-m", "preload.cli", "run", "--group", "nothing", "--run-dir", RUN_DIR,
                    "--verbose", "--", sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "ok"
        assert "no instance" in r.stderr
    finally:
        ns.delete()


def test_a_crashed_program_leaves_the_instance_clean(group):
    """A process killed with connections open: the instance closes them
    (the peer sees them end) and keeps serving."""
    code = r"""
import os, signal, socket, sys
c = socket.create_connection((sys.argv[1], 7), timeout=10)
c.sendall(b"hi"); assert c.recv(2) == b"hi"
print("connected", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    # a kernel echo server on the kernel side: what the killed client talks to
    echo = subprocess.Popen(["ip", "netns", "exec", group.ns.name, sys.executable, "-c", KERNEL_ECHO],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout.readline().strip() == "listening"
        r = group.run(sys.executable, "-c", code.replace(", 7)", ", 17200)"), HOST)
        assert "connected" in r.stdout and r.returncode == -9
        deadline = time.time() + 5
        while time.time() < deadline and group.total("chan_detaches") < group.total("chan_attaches"):
            time.sleep(0.1)
        assert group.total("chan_detaches") == group.total("chan_attaches")
        # the kernel's end saw the connection end, and the instance still serves
        assert echo.stdout.readline().strip() == "closed"
        r = group.run(sys.executable, "-c", "import socket; c = socket.create_connection(('%s', 17200), "
                      "timeout=10); c.sendall(b'again'); print(c.recv(5).decode())" % HOST)
        assert r.stdout.strip() == "again", r.stderr
    finally:
        echo.kill()
        echo.wait()


# Echoes each connection in turn on 0.0.0.0:17200, saying "closed" when one ends.
KERNEL_ECHO = r"""
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 17200)); l.listen()
print("listening", flush=True)
while True:
    c, _ = l.accept()
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            c.sendall(b)
    except ConnectionResetError:
        pass
    c.close()
    print("closed", flush=True)
"""


CHANNEL_MAPPING = "/memfd:shardsock-channel"


def instances_rss_kib(pids, names):
    """Rss of the instances' mappings with these names, summed."""
    total = 0
    for pid in pids:
        name = None
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                head = line.split()
                if "-" in head[0] and ":" not in head[0]:
                    name = head[5] if len(head) > 5 else ""
                elif line.startswith("Rss:") and name in names:
                    total += int(head[1])
    return total


# 20 connections at once, 256 KiB echoed on each, then all closed.
TWENTY_ECHOES = r"""
import socket, sys, threading
# all twenty open at once, from the first byte to the last: twenty slots'
# rings, however fast each echo goes (a closed slot is reused, warm)
opened, done = threading.Barrier(20), threading.Barrier(20)
def one():
    c = socket.create_connection((sys.argv[1], 17600), timeout=30)
    opened.wait(30)
    data = b"x" * 262144
    t = threading.Thread(target=c.sendall, args=(data,)); t.start()
    got = 0
    while got < len(data):
        got += len(c.recv(65536))
    t.join()
    done.wait(30)
    c.close()
ts = [threading.Thread(target=one) for _ in range(20)]
for t in ts: t.start()
for t in ts: t.join()
print("done", flush=True)
"""


def test_closed_sockets_give_their_buffers_back(group):
    """The ring buffers of a closed socket keep their pages for a second,
    so that a program that opens and closes connections all the time
    reuses them warm; after that they go back to the system, whether the
    instance is busy or asleep."""
    pids = [i["pid"] for i in group.status()["instances"]]
    srv = group.popen(sys.executable, "-c", LOOP_SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "listening"
        before = instances_rss_kib(pids, (CHANNEL_MAPPING,))
        # the clients are the kernel's: only the server's channel holds buffers
        r = kernel_run(group.ns, sys.executable, "-c", TWENTY_ECHOES, STACK)
        assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr[-2000:]
        touched = instances_rss_kib(pids, (CHANNEL_MAPPING,)) - before
        # 20 sockets, each 64 KiB in each direction through its rings
        assert touched >= 20 * 64, "the rings were not used: %d KiB" % touched
        deadline = time.time() + 5
        while time.time() < deadline and instances_rss_kib(pids, (CHANNEL_MAPPING,)) - before > touched // 10:
            time.sleep(0.2)
        left = instances_rss_kib(pids, (CHANNEL_MAPPING,)) - before
        assert left <= touched // 10, "%d of %d KiB still held 5 s after the close" % (left, touched)
    finally:
        srv.stdin.close()
        topology.stop_pids([srv.pid])


def test_idle_connections_cost_little(group):
    """1000 idle accepted connections: what they add to the instances'
    memory, engine state and channel slots together, stays under 2 KiB
    each (the buffers come with data).  The group's flow directory, a
    fixed-size shared table whose pages are touched as it fills, is not
    counted per connection."""
    if os.environ.get("SHARDSOCKD", "").endswith("-san"):
        pytest.skip("under ASan the heap is ASan's, with red zones: the figure means nothing")
    n = 1000
    server = r"""
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 17500)); l.listen(4096)
print("ready", flush=True)
conns = [l.accept()[0] for _ in range(%d)]
print("all", flush=True)
sys.stdin.read()
""" % n
    client = r"""
import resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
cs = [socket.create_connection((sys.argv[1], 17500), timeout=10) for _ in range(%d)]
print("connected", flush=True)
sys.stdin.read()
""" % n
    pids = [i["pid"] for i in group.status()["instances"]]

    def private_kib():
        return instances_rss_kib(pids, ("[heap]", CHANNEL_MAPPING))

    srv = group.popen(sys.executable, "-c", server, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cli = None
    try:
        assert srv.stdout.readline().strip() == "ready"
        before = private_kib()
        cli = subprocess.Popen(["ip", "netns", "exec", group.ns.name, sys.executable, "-c", client, STACK],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert cli.stdout.readline().strip() == "connected"
        assert srv.stdout.readline().strip() == "all"
        per_conn = (private_kib() - before) * 1024 / n
        print("idle connection: %.0f bytes in the instances" % per_conn)
        assert 0 < per_conn < 2048
    finally:
        for p in (cli, srv):
            if p:
                p.kill()
                p.wait()


# Echoes every connection on 0.0.0.0:17600 and 127.0.0.1:17601, a thread each.
LOOP_SERVER = r"""
import socket, threading
def serve(l):
    while True:
        c, _ = l.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
def echo(c):
    while True:
        b = c.recv(65536)
        if not b:
            break
        c.sendall(b)
    c.close()
for addr in (("0.0.0.0", 17600), ("127.0.0.1", 17601)):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(addr); l.listen()
    threading.Thread(target=serve, args=(l,), daemon=True).start()
print("listening", flush=True)
import sys; sys.stdin.read()
"""

# 1 MB to each port given, echoed back; prints what came back and the names.
LOOP_CLIENT = r"""
import hashlib, json, socket, sys, threading
out = {}
for port in map(int, sys.argv[1:]):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = bytes(range(256)) * 4096
    t = threading.Thread(target=c.sendall, args=(data,)); t.start()
    got = b""
    while len(got) < len(data):
        b = c.recv(65536)
        if not b:
            break
        got += b
    t.join()
    out[port] = {"same": got == data, "peer": c.getpeername(), "local": c.getsockname()[0]}
    c.close()
print(json.dumps(out))
"""


def test_loopback_between_preloaded_programs_stays_in_the_stack(group):
    """Preloaded clients reach preloaded servers (wildcard and 127.0.0.1
    listeners) over 127.0.0.1 inside the stack; a client that is not
    preloaded reaches the same servers through the kernel; a preloaded
    client of a server that is not preloaded goes to the kernel; with
    SHARDSOCK_LOOPBACK=0 everything on 127/8 is the kernel's."""
    srv = group.popen(sys.executable, "-c", LOOP_SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    plain = None
    try:
        assert srv.stdout.readline().strip() == "listening"
        before = group.counters()

        def grew(name):
            return sum(a[name] - b[name] for b, a in zip(before, group.counters()))

        r = group.run(sys.executable, "-c", LOOP_CLIENT, "17600", "17601")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        for port in ("17600", "17601"):
            assert out[port] == {"same": True, "peer": ["127.0.0.1", int(port)], "local": "127.0.0.1"}
        assert grew("tcp_active_opens") == 2 and grew("tcp_passive_opens") == 2
        assert grew("ip_loop_packets") > 1000 and grew("fallback_destination") == 0
        # not preloaded: the kernel sockets of the same listeners
        before = group.counters()
        r = group.ns.run([sys.executable, "-c", LOOP_CLIENT, "17600", "17601"], timeout=60)
        assert r.returncode == 0 and all(v["same"] for v in json.loads(r.stdout).values()), r.stderr
        assert grew("tcp_passive_opens") == 0
        # a server that is not preloaded: the preloaded client goes to the kernel
        plain = subprocess.Popen(["ip", "netns", "exec", group.ns.name, sys.executable, "-c",
                                  LOOP_SERVER.replace("17600", "17602").replace("17601", "17603")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert plain.stdout.readline().strip() == "listening"
        before = group.counters()
        r = group.run(sys.executable, "-c", LOOP_CLIENT, "17602")
        assert r.returncode == 0 and json.loads(r.stdout)["17602"]["same"], r.stderr
        assert grew("tcp_active_opens") == 0 and grew("fallback_destination") == 1
        # loopback off: the kernel's, although the stack listens
        before = group.counters()
        r = group.run(sys.executable, "-c", LOOP_CLIENT, "17600", env={"SHARDSOCK_LOOPBACK": "0"})
        assert r.returncode == 0 and json.loads(r.stdout)["17600"]["same"], r.stderr
        assert grew("tcp_active_opens") == 0 and grew("ip_loop_packets") == 0
    finally:
        for p in (plain, srv):
            if p:
                p.kill()
                p.wait()


LISTENED_CACHE = r"""
import json, socket, sys
port = int(sys.argv[1])
def attempt():
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", port))
        r = "connected"
    except OSError as e:
        r = e.strerror
    c.close()
    return r
out = [attempt()]                  # nobody listens: the kernel refuses
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", port))
l.listen()
out.append(attempt())              # a stack listener now: through the stack
s, _ = l.accept()
s.close()
l.close()
out.append(attempt())              # gone: the kernel refuses again
print(json.dumps(out))
"""


def test_loopback_connects_follow_the_stack_listeners(group):
    """A client asks the instance once whether a stack listener holds a
    127/8 port, and keeps the answer until the group's listeners change
    (the channel's listen_gen): a listener that appears or closes after
    the answer must change where the next connect goes."""
    before = group.counters()
    r = group.run(sys.executable, "-c", LISTENED_CACHE, "17700")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["Connection refused", "connected", "Connection refused"]
    after = group.counters()
    grew = {k: sum(a[k] - b[k] for b, a in zip(before, after))
            for k in ("tcp_active_opens", "tcp_passive_opens", "fallback_destination")}
    assert grew == {"tcp_active_opens": 1, "tcp_passive_opens": 1, "fallback_destination": 2}, grew
