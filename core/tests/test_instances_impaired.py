"""The instance tests' scenarios again, across an impaired link: 5 ms of
delay each way, 2% loss, 2% duplication and 5% reordering in both
directions, made by linkem (apps/linkem.c: netem in user space, since this
kernel has no netem) in a namespace between the kernel's TCP and the stack.
Every backend, with one instance per core; tap is reached through the stack
namespace's kernel, which routes to it."""
import os
import time

import pytest

from topology import ECHO, ImpairedPath
from test_instances import Group, assert_clean

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices")

IMPAIR = dict(delay_ms=5, loss=0.02, dup=0.02, reorder=0.05)
# 20 MB each way in `make test` (about 20 s a backend here); `make soak`
# moves 100 MB each way.
ECHO_BYTES = int(os.environ.get("SHARDSOCK_IMPAIRED_MB", "20")) * 1_000_000


@pytest.fixture(params=["tap", "afpacket", "afxdp"])
def lossy_group(request):
    backend = request.param
    path = ImpairedPath(queues=os.cpu_count() if backend == "afxdp" else None, routed=backend == "tap",
                        seed=os.getpid(), **IMPAIR)
    g = None
    try:
        extra = ["--gateway", "198.18.0.1"] if backend == "tap" else []
        g = Group(path.stack, "l%d%d" % (os.getpid(), int(time.time() * 1000) % 100000), *extra, backend=backend,
                  client=path.client)
        g.path = path
        yield g
    finally:
        if g is not None:
            assert g.down().returncode == 0
            assert_clean(g)
        path.delete()


def link_did_its_job(g):
    """linkem's report: it really delayed, lost, duplicated and reordered
    in both directions."""
    st = g.path.stop_link()
    for d in ("a_to_b", "b_to_a"):
        x = st[d]
        assert x["lost"] > 0 and x["duplicated"] > 0 and x["reordered"] > 0, st
        assert x["overflow"] == 0 and x["send_errors"] == 0, st
    return st


def test_echo_byte_exact_under_impairment(lossy_group):
    g = lossy_group
    out = g.client.python(ECHO.replace("timeout=30", "timeout=120"), g.addr, ECHO_BYTES, timeout=900)
    assert out["received"] == ECHO_BYTES and out["same"]
    c = [i["counters"] for i in g.stat()]
    assert sum(x["tcp_retransmits"] for x in c) > 0           # it lost, and recovered
    assert sum(x["tcp_ooo_segments"] for x in c) > 0          # losses and reordering from the kernel
    assert sum(x["drop_tcp_out_of_window"] for x in c) > 0    # duplicates from the kernel
    link_did_its_job(g)


def test_many_connections_under_impairment(lossy_group):
    g = lossy_group
    out = g.client.python(r"""
import json, socket, sys
conns = [socket.create_connection((sys.argv[1], 7), timeout=60) for _ in range(200)]
for i, c in enumerate(conns):
    c.sendall(b"%06d" % i * 100)
ok = 0
for i, c in enumerate(conns):
    want, got = b"%06d" % i * 100, b""
    while len(got) < len(want):
        d = c.recv(65536)
        if not d:
            break
        got += d
    ok += got == want
for c in conns:
    c.close()
print(json.dumps({"ok": ok}))
""", g.addr, timeout=300)
    assert out["ok"] == 200
    link_did_its_job(g)


def test_ping_under_impairment(lossy_group):
    g = lossy_group
    r = g.client.run(["ping", "-c", "100", "-i", "0.01", "-W", "1", g.addr], timeout=60)
    received = int(r.stdout.split(" received")[0].split()[-1])
    # 2% loss each way: most answers arrive, after about 10 ms
    assert received >= 85, r.stdout
    avg = float(r.stdout.split("rtt min/avg/max/mdev = ")[1].split("/")[1])
    assert avg > 5, r.stdout
    replies = sum(i["counters"]["icmp_echo_replies"] for i in g.stat())
    assert replies >= received
