"""The engine's lo: connections to 127.0.0.0/8 (and to the stack's own
address) never reach the device; their segments loop back through the
engine's input, as Linux routes them through lo.  A segment from the wire
with a loopback address stays a martian."""

from harness import ERRNO, PEER_IP, PEER_MAC, STACK_IP, STACK_MAC, ctr, ip2int
from preload.engine import lib
from scapy.all import IP, TCP, Ether

LO = "127.0.0.1"


def settle(st, rounds=20):
    """Runs the engine until its loopback queue is empty."""
    for _ in range(rounds):
        st.advance(0)
        if st.next_deadline_ms() != 0:
            return


def test_loopback_connection_never_touches_the_device(make_stack):
    st = make_stack()
    lsid = st.listen(80)
    c = st.socket()
    assert st.connect(c, LO, 80) == ERRNO["EINPROGRESS"]
    settle(st)
    s = st.accept(lsid)
    assert s >= 0 and st.state(c) == "ESTABLISHED"
    assert st.write(c, b"to the server") == 13
    settle(st)
    assert st.read(s) == b"to the server"
    assert st.write(s, b"x" * 100000) == 100000
    got = b""
    for _ in range(400):
        settle(st)
        st.advance(5)  # delayed ACKs and timers run on the virtual clock
        r = st.read(c)
        if isinstance(r, bytes):
            got += r
        if len(got) == 100000:
            break
    assert got == b"x" * 100000
    assert st.take() == []
    assert ctr(st, "ip_loop_packets") > 0
    info = st.info(c)
    assert info["local_ip"] == ip2int(LO) and info["remote_ip"] == ip2int(LO)


def test_listener_bound_to_loopback_and_refused_port(make_stack):
    """A listener bound to 127.0.0.1 takes loopback connections; a port with
    no listener answers a loopback SYN with RST (ECONNREFUSED)."""
    st = make_stack()
    lsid = st.socket()
    assert lib.ss_tcp_bind(st.e, lsid, ip2int(LO), 8080) == 0
    assert lib.ss_tcp_listen(st.e, lsid, 8) == 0
    c = st.socket()
    assert st.connect(c, LO, 8080) == ERRNO["EINPROGRESS"]
    settle(st)
    assert st.accept(lsid) >= 0
    d = st.socket()
    assert st.connect(d, LO, 8081) == ERRNO["EINPROGRESS"]
    settle(st)
    assert st.state(d) == "CLOSED"
    assert st.getopt(d, lib.SS_OPT_ERROR) == -ERRNO["ECONNREFUSED"]
    assert st.take() == []


def test_loopback_source_cannot_leave(make_stack):
    st = make_stack()
    s = st.socket()
    assert lib.ss_tcp_bind(st.e, s, ip2int(LO), 0) == 0
    assert st.connect(s, PEER_IP, 80) == ERRNO["EINVAL"]


def test_loopback_address_from_the_wire_is_a_martian(make_stack):
    """RFC 1122 3.2.1.3: a datagram from 127/8 arriving on the device is
    dropped, even to a listening port."""
    st = make_stack()
    st.listen(80)
    before = ctr(st, "drop_ip_bad_src")
    st.inject(bytes(Ether(dst=STACK_MAC, src=PEER_MAC) / IP(src=LO, dst=STACK_IP) /
                    TCP(sport=1234, dport=80, flags="S", seq=1)))
    assert ctr(st, "drop_ip_bad_src") == before + 1
    assert st.take() == []
