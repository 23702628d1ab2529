"""Socket options that change when segments go and who gets a connection:
TCP_CORK and MSG_MORE (SS_OPT_CORK), TCP_DEFER_ACCEPT and SO_REUSEPORT,
each as Linux has it.  Scripted peers on a virtual clock (harness.py)."""

from harness import MSS, Peer, ctr, open_passive, peer_data
from preload.engine import lib


# ---------------------------------------------------------------------------
# TCP_CORK, MSG_MORE
# ---------------------------------------------------------------------------

def test_cork_holds_partial_segments_sends_full_ones(make_stack):
    """Corked, only full segments leave; the tail waits although nothing is
    in flight (Nagle alone would send it)."""
    st = make_stack()
    c = open_passive(st)
    assert st.setopt(c.sid, lib.SS_OPT_CORK, 1) == 0
    c.write(100)
    st.expect_nothing()
    c.write(MSS)
    c.expect(c.d(0, MSS))
    c.ack(MSS)
    st.expect_nothing()


def test_uncork_pushes_what_was_held(make_stack):
    st = make_stack()
    c = open_passive(st)
    assert st.setopt(c.sid, lib.SS_OPT_CORK, 1) == 0
    c.write(100)
    c.write(50)
    st.expect_nothing()
    assert st.setopt(c.sid, lib.SS_OPT_CORK, 0) == 0
    c.expect(c.d(0, 150))


def test_cork_gives_up_after_the_probe_timer(make_stack):
    """Linux's ceiling: corked bytes with nothing in flight go when the
    probe timer fires, an RTO (at least 200 ms) later."""
    st = make_stack(rto_min_ms=200)
    c = open_passive(st)
    assert st.setopt(c.sid, lib.SS_OPT_CORK, 1) == 0
    c.write(100)
    c.expect_at(200, c.d(0, 100))  # the handshake measured ~0: RTO = rto_min
    assert ctr(st, "tcp_cork_timeouts") == 1
    assert ctr(st, "tcp_zero_window_probes") == 0


def test_fin_pushes_corked_bytes(make_stack):
    st = make_stack()
    c = open_passive(st)
    assert st.setopt(c.sid, lib.SS_OPT_CORK, 1) == 0
    c.write(100)
    st.expect_nothing()
    assert lib.ss_tcp_shutdown(st.e, c.sid, 1, st.now) == 0
    segs = st.take_tcp()
    assert sum(len(bytes(s.payload)) for s in segs) == 100 and "F" in str(segs[-1].flags)


def test_msg_more_holds_only_its_own_send(make_stack):
    """MSG_MORE (cork bit 1) holds the bytes of that send; the next ACK
    sends them under Nagle's rule, as Linux's tcp_push does."""
    st = make_stack()
    c = open_passive(st)
    c.write(100)
    c.expect(c.d(0, 100))
    assert st.setopt(c.sid, lib.SS_OPT_CORK, 2) == 0
    c.write(40)
    st.expect_nothing()
    c.ack(100)
    c.expect(c.d(100, 40))


def test_clearing_msg_more_pushes(make_stack):
    st = make_stack()
    c = open_passive(st)
    assert st.setopt(c.sid, lib.SS_OPT_CORK, 2) == 0
    c.write(40)
    st.expect_nothing()
    assert st.setopt(c.sid, lib.SS_OPT_CORK, 0) == 0
    c.expect(c.d(0, 40))


# ---------------------------------------------------------------------------
# TCP_DEFER_ACCEPT
# ---------------------------------------------------------------------------

def deferring_handshake(st, seconds, **peer_kw):
    lsid = st.socket()
    assert st.setopt(lsid, lib.SS_OPT_DEFER_ACCEPT, seconds) == 0
    assert lib.ss_tcp_bind(st.e, lsid, 0, 80) == 0
    assert lib.ss_tcp_listen(st.e, lsid, 16) == 0
    p = Peer(st, **peer_kw)
    p.seg("S", options=p.syn_options())
    (sa,) = st.expect({"flags": "SA", "ack": p.nxt})
    p.rcv = (sa.seq + 1) % 2**32
    return lsid, p, sa


def test_defer_accept_ignores_a_bare_ack_then_data_completes(make_stack):
    st = make_stack()
    lsid, p, sa = deferring_handshake(st, 5)
    p.seg("A")
    assert st.accept(lsid) < 0 and st.poll(lsid) == 0
    assert ctr(st, "tcp_defer_accept_drops") == 1
    p.seg("PA", b"GET /")
    sid = st.accept(lsid)
    assert sid >= 0 and st.read(sid) == b"GET /"


def test_defer_accept_completes_on_an_ack_after_the_time(make_stack):
    """The SYN-ACK is retransmitted; the ACK answering it once the deferral
    has passed completes the connection without data."""
    st = make_stack()
    lsid, p, sa = deferring_handshake(st, 2)
    p.seg("A")
    st.advance(1000)
    st.expect({"flags": "SA", "seq": sa.seq})
    p.seg("A")  # 1 s: still deferred
    assert st.accept(lsid) < 0
    st.advance(2000)
    st.expect({"flags": "SA", "seq": sa.seq})
    p.seg("A")  # 3 s: past the 2 s
    assert st.accept(lsid) >= 0


def test_no_defer_accept_completes_on_the_bare_ack(make_stack):
    st = make_stack()
    lsid, p, sa = deferring_handshake(st, 0)
    p.seg("A")
    assert st.accept(lsid) >= 0


# ---------------------------------------------------------------------------
# SO_REUSEPORT
# ---------------------------------------------------------------------------

def reuseport_listener(st, port=80, reuse=True):
    sid = st.socket()
    if reuse:
        assert st.setopt(sid, lib.SS_OPT_REUSEPORT, 1) == 0
    r = lib.ss_tcp_bind(st.e, sid, 0, port)
    if r == 0:
        assert lib.ss_tcp_listen(st.e, sid, 64) == 0
    return sid, r


def test_reuseport_listeners_share_a_port_others_may_not(make_stack):
    st = make_stack()
    a, ra = reuseport_listener(st)
    b, rb = reuseport_listener(st)
    c, rc = reuseport_listener(st, reuse=False)
    assert (ra, rb) == (0, 0) and rc < 0


def test_reuseport_spreads_connections_and_keeps_each_on_one_listener(make_stack):
    """Each connection's segments reach the listener a hash of the peer
    picked: all its handshake on one, and both listeners get some of 32."""
    st = make_stack()
    a, _ = reuseport_listener(st)
    b, _ = reuseport_listener(st)
    got = {a: 0, b: 0}
    for i in range(32):
        p = Peer(st, sport=41000 + i)
        p.seg("S", options=p.syn_options())
        (sa,) = st.expect({"flags": "SA", "ack": p.nxt})
        p.rcv = (sa.seq + 1) % 2**32
        p.seg("A")
        accepted = [l for l in (a, b) if st.accept(l) >= 0]
        assert len(accepted) == 1
        got[accepted[0]] += 1
    assert got[a] > 0 and got[b] > 0 and got[a] + got[b] == 32


def test_closing_one_reuseport_listener_leaves_the_port_to_the_other(make_stack):
    st = make_stack()
    a, _ = reuseport_listener(st)
    b, _ = reuseport_listener(st)
    assert lib.ss_tcp_close(st.e, a, st.now) == 0
    for i in range(8):
        p = Peer(st, sport=42000 + i)
        p.seg("S", options=p.syn_options())
        (sa,) = st.expect({"flags": "SA", "ack": p.nxt})
        p.rcv = (sa.seq + 1) % 2**32
        p.seg("A")
        assert st.accept(b) >= 0
