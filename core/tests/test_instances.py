"""shardsockd on real devices with the Linux kernel as the TCP peer, on each
backend: tap (a multi-queue TAP device; the kernel side in the same
namespace is the client) and afpacket (a veth pair between two namespaces
the test creates).  The built-in echo (port 7) and discard (port 9)
services answer kernel clients.

Each test brings a group up and takes it down again, checking that nothing
is left: no device, no process, no shared memory."""
import json
import os
import re
import sys
import time

import pytest

from topology import ECHO, ROOT, Netns, VethPair
from preload.stats import read_page

RUN_DIR = "/run/shardsock-test"

# Kernel clients of the echo service, shared with the impaired tests.
# A thousand connections open at once, each echoing its number.
THOUSAND = r"""
import asyncio, json, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
async def one(i):
    r, w = await asyncio.wait_for(asyncio.open_connection(sys.argv[1], 7), 60)
    return r, w
async def main():
    conns = await asyncio.gather(*(one(i) for i in range(1000)))
    for i, (r, w) in enumerate(conns):
        w.write(b"%06d" % i)
    ok = 0
    for i, (r, w) in enumerate(conns):
        ok += await asyncio.wait_for(r.readexactly(6), 60) == b"%06d" % i
    for r, w in conns:
        w.close()
    return ok
print(json.dumps({"ok": asyncio.run(main())}))
"""
# Closes from either side: the client first, then the service first.
CLOSE_BOTH_WAYS = r"""import json, socket, sys
# the client closes first: the service sees end of stream and closes too
a = socket.create_connection((sys.argv[1], 7), timeout=10)
a.sendall(b"bye")
assert a.recv(3) == b"bye"
a.close()
# the service closes first: after the client's half-close it finishes and sends FIN
b = socket.create_connection((sys.argv[1], 7), timeout=10)
b.sendall(b"x" * 5000)
b.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = b.recv(65536)
    if not d:
        break
    got += d
b.close()
print(json.dumps({"echoed": len(got)}))
"""
# A connection to a closed port is refused (the stack resets it).
REFUSED = r"""import json, socket, sys
try:
    socket.create_connection((sys.argv[1], 5555), timeout=5)
    r = "connected"
except ConnectionRefusedError:
    r = "refused"
print(json.dumps({"result": r}))
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices")


BACKENDS = {
    # backend: (stack address, extra `up` flags)
    "tap": ("198.18.0.2", []),
    "afpacket": ("198.18.1.2", ["--interface", "vs", "--address", "198.18.1.2/24"]),
    "afxdp": ("198.18.1.2", ["--interface", "vs", "--address", "198.18.1.2/24"]),
}


class Group:
    """A group up on one backend: ``ns`` runs the stack, ``client`` the
    kernel peers (the same namespace for tap), ``addr`` is the stack's."""

    def __init__(self, ns, name, *extra, backend="tap", client=None):
        self.ns, self.name, self.backend = ns, name, backend
        self.client = client or ns
        self.addr, flags = BACKENDS[backend]
        self.args = ["--group", name, "--run-dir", RUN_DIR]
        r = ns.shardsock("up", *self.args, "--backend", backend, *flags, "--echo", "7", "--discard", "9", *extra)
        assert r.returncode == 0, r.stderr
        self.up_output = r.stdout
        self.status = json.loads(self.cli("status", "--json").stdout)
        self.pids = [i["pid"] for i in self.status["instances"]]

    def cli(self, *args):
        return self.ns.shardsock(*args, *self.args)

    def stat(self):
        return json.loads(self.cli("stat", "--json").stdout)["instances"]

    def down(self):
        return self.cli("down")


@pytest.fixture(params=sorted(BACKENDS))
def group(request):
    backend = request.param
    # afxdp: one AF_XDP socket per instance, each on its own queue of vs
    pair = VethPair(queues=os.cpu_count() if backend == "afxdp" else None) if backend != "tap" else None
    ns = pair.stack if pair else Netns()
    g = None
    name = "t%d%d" % (os.getpid(), int(time.time() * 1000) % 100000)
    try:
        g = Group(ns, name, backend=backend, client=pair.client if pair else None)
        yield g
    finally:
        if g is not None:
            r = g.down()
            assert r.returncode == 0, r.stderr
            assert_clean(g)
        if pair:
            pair.delete()
        else:
            ns.delete()


def read_calls(pid):
    """read() calls a process made (/proc/PID/io syscr)."""
    with open("/proc/%d/io" % pid) as f:
        return int(re.search(r"^syscr: (\d+)", f.read(), re.M).group(1))


def test_tap_receive_of_kernels_before_6_7(monkeypatch):
    """Kernels without the multishot read (before 6.7) receive by the
    multishot poll and read(); SHARDSOCKD_TAP_RECEIVE=read takes that path
    here: 10 MB echoed both ways, byte-exact, and the group comes down clean."""
    monkeypatch.setenv("SHARDSOCKD_TAP_RECEIVE", "read")
    ns = Netns()
    g = None
    try:
        g = Group(ns, "r%d%d" % (os.getpid(), int(time.time() * 1000) % 100000), backend="tap")
        before = sum(read_calls(pid) for pid in g.pids)
        out = ns.python(ECHO, g.addr, 10_000_000, timeout=120)
        assert out["received"] == 10_000_000 and out["same"]
        # that path it was: a read() per frame (the multishot read makes a handful)
        assert sum(read_calls(pid) for pid in g.pids) - before > 1000
    finally:
        if g is not None:
            assert g.down().returncode == 0
            assert_clean(g)
        ns.delete()


def assert_clean(g):
    for pid in g.pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                assert f.read().split(")")[-1].split()[0] == "Z", "instance %d still running" % pid
        except FileNotFoundError:
            pass
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("shardsock-%s-" % g.name)]
    assert not os.path.exists(os.path.join(RUN_DIR, g.name))
    if g.backend == "tap":
        assert "ss0" not in g.ns.run(["ip", "-o", "link"]).stdout




def test_up_reports_every_instance_ready(group):
    st = group.status
    assert len(st["instances"]) == os.cpu_count()
    assert all(i["healthy"] and i["state"] == "ready" and i["backend"] == group.backend for i in st["instances"])
    assert sorted(i["core"] for i in st["instances"]) == list(range(os.cpu_count()))
    assert "up: %d instance" % os.cpu_count() in group.up_output
    for i in st["instances"]:
        with open("/proc/%d/status" % i["pid"]) as f:
            allowed = [ln for ln in f if ln.startswith("Cpus_allowed_list")][0].split()[1]
        assert allowed == str(i["core"]), "instance not pinned to its core"


def test_stat_json_shape_and_live_counters(group):
    st = group.stat()
    assert [i["core"] for i in st] == [i["core"] for i in group.status["instances"]]
    assert all("eth_rx_frames" in i["counters"] and "tcp_state" in i["counters"] for i in st)
    # read straight from shared memory, no request to the instance
    page = read_page(group.name, 0)
    assert page["state"] == "ready" and page["pid"] == group.pids[0]


def test_handshake_and_small_echo(group):
    out = group.client.python(ECHO, group.addr, 100)
    assert out == {"sent": 100, "received": 100, "same": True}


def test_100mb_each_direction_byte_exact(group):
    out = group.client.python(ECHO, group.addr, 100_000_000, timeout=300)
    assert out["received"] == 100_000_000 and out["same"]


def test_discard_takes_100mb(group):
    out = group.client.python(r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], 9), timeout=30)
chunk = bytes(1 << 20)
for _ in range(100):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""   # the service closes once it has read everything
s.close()
print(json.dumps({"ok": True}))
""", group.addr, timeout=300)
    assert out["ok"]
    rx = sum(i["counters"]["eth_rx_bytes"] for i in group.stat())
    assert rx > 100 * (1 << 20)


def test_thousand_concurrent_connections(group):
    out = group.client.python(THOUSAND, group.addr, timeout=300)
    assert out["ok"] == 1000
    opens = [i["counters"]["tcp_passive_opens"] for i in group.stat()]
    assert sum(opens) >= 1000
    if len(opens) > 1:
        # the steering program spreads passive connections over the instances
        assert all(n > 100 for n in opens), opens
        if group.backend == "afpacket":
            # ARP reaches instance 0 only (the steering rule, in join order);
            # the others answered their SYNs with the MAC it learned (the
            # group's shared table)
            st = group.stat()
            assert st[0]["counters"]["arp_rx"] >= 1
            assert all(i["counters"]["neigh_shared_hits"] >= 1 for i in st[1:])


def test_close_from_either_side(group):
    out = group.client.python(CLOSE_BOTH_WAYS, group.addr)
    assert out["echoed"] == 5000
    time.sleep(0.3)
    states = [i["counters"]["tcp_state"] for i in group.stat()]
    assert sum(s["ESTABLISHED"] + s["CLOSE_WAIT"] + s["FIN_WAIT_1"] + s["LAST_ACK"] for s in states) == 0


def test_reset_for_a_closed_port(group):
    out = group.client.python(REFUSED, group.addr)
    assert out["result"] == "refused"
    assert sum(i["counters"]["tcp_rst_tx"] for i in group.stat()) >= 1


def test_icmp_echo(group):
    r = group.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", group.addr], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0% packet loss" in r.stdout
    assert sum(i["counters"]["icmp_echo_replies"] for i in group.stat()) == 3


def test_arp_resolution_from_the_kernel_side(group):
    group.client.python(r"""
import socket, sys
socket.create_connection((sys.argv[1], 7), timeout=10).close()
print("{}")
""", group.addr)
    neigh = group.client.run(["ip", "-j", "neigh", "show", group.addr]).stdout
    entries = json.loads(neigh)
    # the kernel resolved the stack's address to the stack's MAC by ARP: from
    # an instance's reply to its request, or from the request an instance
    # made of it (Linux learns the sender of a request for its address)
    mac = [e["lladdr"] for e in entries]
    with open(os.path.join(RUN_DIR, group.name, "state.json")) as f:
        state = json.load(f)
    assert mac == [state["mac"]]
    c = [i["counters"] for i in group.stat()]
    assert sum(x["arp_tx_replies"] + x["arp_tx_requests"] for x in c) >= 1


def test_counters_account_for_every_frame(group):
    dev = "ss0" if group.backend == "tap" else "vc"

    def quiet_snapshot():
        """Link stats of the kernel's side and the instances' counters, once
        two readings agree (the last segments may still be crossing)."""
        def read():
            link = json.loads(group.client.run(["ip", "-j", "-s", "link", "show", dev]).stdout)[0]["stats64"]
            st = group.stat()
            return (link["tx"]["packets"], link["rx"]["packets"],
                    sum(i["counters"]["eth_rx_frames"] for i in st), sum(i["counters"]["eth_tx_frames"] for i in st),
                    st)
        before = read()
        for _ in range(50):
            time.sleep(0.2)
            now = read()
            if now[:4] == before[:4]:
                return now
            before = now
        raise AssertionError("traffic never settled")

    # Frames the kernel sent before the instances attached (IPv6 at link-up)
    # are nobody's: count from a quiet moment after `up`.
    k_tx0, k_rx0, s_rx0, s_tx0, _ = quiet_snapshot()
    group.client.python(ECHO, group.addr, 2_000_000)
    k_tx1, k_rx1, s_rx1, s_tx1, st = quiet_snapshot()
    # what the kernel sent into the link is what the instances received, and back
    assert s_rx1 - s_rx0 == k_tx1 - k_tx0 > 1000
    assert s_tx1 - s_tx0 == k_rx1 - k_rx0
    for i in st:
        c = i["counters"]
        handled = sum(v for k, v in c.items() if k.startswith("drop_eth") or k == "arp_rx" or k == "ip_rx_packets")
        # a frame forwarded here by another instance is handled, not received
        assert handled == c["eth_rx_frames"] + c["fwd_rx_frames"], "frames not accounted for on core %d" % i["core"]
    assert sum(i["counters"]["fwd_rx_frames"] for i in st) == sum(i["counters"]["fwd_frames"] for i in st)


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two cores for two instances")
def test_afxdp_segments_on_another_queue_reach_the_owner():
    """Linux may move a connection to another transmit queue whenever it has
    nothing in flight (netdev_pick_tx re-picks on skb->ooo_okay); on veth
    the queue is the receive queue, so the stack's other instance gets the
    flow's segments.  XPS ties the client's queue to its CPU here, and the
    client moves to the other CPU mid-connection: the second instance must
    forward, not reset."""
    pair = VethPair(queues=2)
    g = None
    try:
        pair.client.run(["sh", "-c", "echo 1 > /sys/class/net/vc/queues/tx-0/xps_cpus && "
                                     "echo 2 > /sys/class/net/vc/queues/tx-1/xps_cpus"], check=True)
        g = Group(pair.stack, "f%d%d" % (os.getpid(), int(time.time() * 1000) % 100000), "--cores", "0,1",
                  backend="afxdp", client=pair.client)
        out = g.client.python(r"""
import json, os, socket, sys, time
def echo(s, n):
    data = os.urandom(n)
    s.sendall(data)
    got = b""
    while len(got) < n:
        got += s.recv(65536)
    return got == data
os.sched_setaffinity(0, {0})
s = socket.create_connection((sys.argv[1], 7), timeout=10)
ok = [echo(s, 5000)]
for cpu in (1, 0, 1):
    time.sleep(0.1)                      # nothing in flight: the queue may change
    os.sched_setaffinity(0, {cpu})
    ok.append(echo(s, 200000))
s.close()
print(json.dumps({"ok": ok}))
""", g.addr)
        assert out["ok"] == [True] * 4
        time.sleep(0.3)
        c = [i["counters"] for i in g.stat()]
        assert c[0]["tcp_passive_opens"] == 1 and c[1]["tcp_passive_opens"] == 0
        assert c[1]["fwd_frames"] > 0, "the client's second CPU never reached instance 1"
        assert c[0]["fwd_rx_frames"] == c[1]["fwd_frames"]
        assert c[0]["drop_fwd_full"] == c[1]["drop_fwd_full"] == 0
        assert c[1]["drop_tcp_no_socket"] == 0 and c[1]["tcp_rst_tx"] == 0
    finally:
        if g is not None:
            assert g.down().returncode == 0
            assert_clean(g)
        pair.delete()


def test_idle_instances_use_no_cpu(group):
    time.sleep(0.5)

    def cpu(pid):
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().split(")")[-1].split()
        return int(fields[11]) + int(fields[12])

    before = [cpu(p) for p in group.pids]
    time.sleep(2)
    after = [cpu(p) for p in group.pids]
    # clock ticks (1/100 s): an idle instance sleeps in epoll_wait
    assert all(a - b <= 1 for a, b in zip(after, before)), (before, after)


def test_sigterm_resets_open_connections():
    ns = Netns()
    try:
        g = Group(ns, "r%d" % os.getpid())
        out = ns.python(r"""
import json, socket, subprocess, sys
c = socket.create_connection(("198.18.0.2", 7), timeout=10)
c.sendall(b"hi"); assert c.recv(2) == b"hi"
r = subprocess.run([sys.executable, "-m", "preload.cli", "down", "--group", sys.argv[1], "--run-dir", sys.argv[2]],
                   capture_output=True, text=True)
try:
    d = c.recv(10)
    res = "eof" if d == b"" else "data"
except ConnectionResetError:
    res = "reset"
print(json.dumps({"down": r.returncode, "client": res}))
""", g.name, RUN_DIR)
        assert out == {"down": 0, "client": "reset"}
        assert_clean(g)
    finally:
        ns.delete()


def test_errors_are_clear():
    ns = Netns()
    try:
        r = ns.shardsock("down", "--group", "nothere", "--run-dir", RUN_DIR)
        assert r.returncode == 1 and "not up" in r.stderr and "Traceback" not in r.stderr
        r = ns.shardsock("up", "--group", "x", "--run-dir", RUN_DIR, "--backend", "nosuch")
        assert r.returncode == 1 and "nosuch" in r.stderr
        cfg = os.path.join(RUN_DIR + "-cfg.toml")
        with open(cfg, "w") as f:
            f.write('bakend = "tap"\n')
        r = ns.shardsock("up", "--group", "x", "--run-dir", RUN_DIR, "--config", cfg)
        os.unlink(cfg)
        assert r.returncode == 1 and "bakend" in r.stderr and "valid keys" in r.stderr
        r = ns.shardsock("up", "--group", "x", "--run-dir", RUN_DIR, "--cores", "99")
        assert r.returncode == 1 and "not online" in r.stderr
        r = ns.shardsock("frobnicate")
        assert r.returncode == 2
        g = Group(ns, "e%d" % os.getpid())
        try:
            r = ns.shardsock("up", *g.args)
            assert r.returncode == 1 and "already up" in r.stderr
        finally:
            assert g.down().returncode == 0
        assert_clean(g)
    finally:
        ns.delete()


def test_backend_errors_name_the_cause():
    """A backend that cannot run on what it was given fails `up` with exit 1,
    says what is missing and what to do, and leaves nothing behind:
    afpacket on an interface where the kernel holds the stack's address;
    afxdp on a driver without native XDP (a bridge), without BPF permission
    (CAP_BPF and CAP_SYS_ADMIN dropped), and with several instances where
    bpffs is not mounted and cannot be (CAP_SYS_ADMIN dropped; `ip netns
    exec` gives a fresh /sys with no bpffs)."""
    pair = VethPair(queues=2, stack_kernel_address="198.18.1.2/24")
    try:
        ns = pair.stack
        ns.run(["ip", "link", "add", "br0", "type", "bridge"], check=True)
        ns.run(["ip", "link", "set", "br0", "up"], check=True)
        name = "b%d" % os.getpid()
        base = ["up", "--group", name, "--run-dir", RUN_DIR, "--address", "198.18.1.2/24"]

        def up(*args, drop=None):
            argv = [sys.executable, "-m", "preload.cli", *base, *args]
            if drop:
                # the bounding set bounds what the instances may ever hold
                argv = ["setpriv", "--bounding-set", drop, "--inh-caps", drop, *argv]
            r = ns.run(argv, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
            assert r.returncode == 1, (r.stdout, r.stderr)
            assert "Traceback" not in r.stderr
            assert not os.path.exists(os.path.join(RUN_DIR, name))
            assert not [f for f in os.listdir("/dev/shm") if f.startswith("shardsock-%s-" % name)]
            return r.stderr

        err = up("--backend", "afpacket", "--interface", "vs", "--cores", "0")
        assert "the kernel holds the stack's address on vs" in err and "ip addr del" in err
        ns.run(["ip", "addr", "del", "198.18.1.2/24", "dev", "vs"], check=True)
        err = up("--backend", "afxdp", "--interface", "br0", "--cores", "0")
        assert "does not support native XDP" in err and "use the afpacket backend" in err
        err = up("--backend", "afxdp", "--interface", "vs", "--cores", "0", drop="-bpf,-sys_admin")
        assert "BPF permission denied" in err and "CAP_BPF" in err
        err = up("--backend", "afxdp", "--interface", "vs", "--cores", "0,1", drop="-sys_admin")
        assert "not a bpf filesystem" in err and "mount -t bpf bpf /sys/fs/bpf" in err
        # nothing was left attached: the same interface serves a group now
        g = Group(ns, name, "--cores", "0,1", backend="afxdp", client=pair.client)
        try:
            assert pair.client.python(CLOSE_BOTH_WAYS, g.addr) == {"echoed": 5000}
        finally:
            assert g.down().returncode == 0
        assert_clean(g)
    finally:
        pair.delete()


def control(group, k, request):
    """One request on instance k's control socket; the replies, as text."""
    import socket as so
    s = so.socket(so.AF_UNIX, so.SOCK_SEQPACKET)
    try:
        s.settimeout(5)
        s.connect(os.path.join(RUN_DIR, group.name, "instance-%d.sock" % k))
        s.send(request)
        out = []
        while True:
            m = s.recv(4096)
            if not m:
                return "".join(out)
            out.append(m.decode())
    finally:
        s.close()


def test_control_socket(group):
    path = os.path.join(RUN_DIR, group.name, "instance-0.sock")
    assert os.stat(path).st_mode & 0o777 == 0o660
    assert control(group, 0, b"ping") == "pong %d 0 %d\n" % (group.pids[0], group.status["instances"][0]["core"])
    n = len(group.pids)
    assert [control(group, 0, b"place") for _ in range(3)] == ["place %d %d\n" % (k % n, n) for k in range(3)]
    assert control(group, 0, b"frobnicate").startswith("error: unknown request")
    # netstat lists the service sockets with their TCP state, a held
    # connection included
    import subprocess
    import sys
    holder = subprocess.Popen(["ip", "netns", "exec", group.client.name, sys.executable, "-c", r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], 9), timeout=10)
c.sendall(b"x")
print("connected", flush=True)
time.sleep(5)
""", group.addr], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "connected"
        time.sleep(0.2)
        lines = "".join(control(group, k, b"netstat") for k in range(len(group.pids))).splitlines()
    finally:
        holder.kill()
        holder.wait()
    assert any("state=LISTEN" in ln and ":9 " in ln for ln in lines), lines
    # a listener says its queue, its backlog, and whether a process uses it
    assert all(re.search(r" accept_queued=\d+ backlog=\d+ in_use=[01]", ln) for ln in lines if "state=LISTEN" in ln)
    peer = group.addr.rsplit(".", 1)[0] + ".1"
    assert any("state=ESTABLISHED" in ln and ":9 remote=%s:" % peer in ln for ln in lines), lines
    # stop: the instance ends, and status reports it unhealthy
    assert control(group, 0, b"stop") == "stopping\n"
    for _ in range(100):
        if read_page(group.name, 0) is None:
            break
        time.sleep(0.05)
    # the supervisor does not restart an instance that was asked to stop
    for _ in range(100):
        st = json.loads(group.cli("status", "--json").stdout)
        if st["instances"][0]["state"] == "stopped":
            break
        time.sleep(0.05)
    assert st["instances"][0]["healthy"] is False and st["instances"][0]["state"] == "stopped"
    assert st["instances"][0]["restarts"] == 0
