"""Timers: delayed ACK (RFC 1122 4.2.3.2, RFC 5681 4.2), keepalive
(RFC 1122 4.2.3.6) and ss_engine_next_deadline.

Every test scripts one connection against a scapy peer on a virtual clock
and states exactly which segments the stack sends.  Helpers are local to
this file (the shared harness is not modified).
"""
import pytest

from harness import ERRNO, PEER_IP, Peer, Stack, describe, flags_of, match
from preload.engine import lib

MSS = 1460


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def pattern(start, n):
    return bytes((k * 7 + 3) % 251 for k in range(start, start + n))


def expect_segs(stack, *wanted):
    """Like Stack.expect, but a description with psh_ok=True accepts the
    PSH bit whether set or not (PSH placement is the sender's business)."""
    segs = stack.take_tcp()
    assert len(segs) == len(wanted), "expected %d segments, got %d: %s" % (
        len(wanted), len(segs), [describe(s) for s in segs])
    for i, (s, w) in enumerate(zip(segs, wanted)):
        w = dict(w)
        if w.pop("psh_ok", False):
            want = set(w.pop("flags"))
            got = flags_of(s) - {"P"}
            assert got == want, "segment %d (%s): flags %s, wanted %s (+P)" % (i, describe(s), got, want)
        match(s, w, i)
    return segs


class Conn:
    """One established connection: the stack's socket, the scripted peer,
    and the bytes written so far (offsets count from the first data byte)."""

    def __init__(self, stack, sid, peer):
        self.s, self.sid, self.p = stack, sid, peer
        self.base = peer.rcv
        self.out = b""

    def write(self, n):
        b = pattern(len(self.out), n) if isinstance(n, int) else n
        assert self.s.write(self.sid, b) == len(b)
        self.out += b

    def seq(self, off):
        return (self.base + off) % 2**32

    def d(self, off, n, **kw):
        """Description of a data segment carrying bytes [off, off + n)."""
        w = {"flags": "A", "psh_ok": True, "seq": self.seq(off), "ack": self.p.nxt, "len": n,
             "payload": self.out[off:off + n]}
        w.update(kw)
        return w

    def seg(self, i, **kw):
        """Full-sized segment number i."""
        return self.d(i * MSS, MSS, **kw)

    def ack(self, off, win=None):
        """The peer acknowledges up to offset off (a pure ACK)."""
        self.p.seg("A", ack=self.seq(off), win=win)

    def ack_seg(self, i, win=None):
        """The peer acknowledges every full segment before number i."""
        self.ack(i * MSS, win=win)

    def expect(self, *w):
        return expect_segs(self.s, *w)

    def info(self):
        return self.s.info(self.sid)


def open_passive(stack, rtt_ms=0, **peer_kw):
    """The peer opens a connection to port 80; its final ACK arrives rtt_ms
    after the SYN-ACK (the stack's first RTT sample)."""
    lsid = stack.listen(80)
    peer = Peer(stack, **peer_kw)
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": peer.nxt})
    peer.rcv = (sa.seq + 1) % 2**32
    if rtt_ms:
        stack.advance(rtt_ms)
        stack.expect_nothing()
    peer.seg("A")
    stack.expect_nothing()
    sid = stack.accept(lsid)
    assert sid >= 0, sid
    return Conn(stack, sid, peer)


def open_active(stack, rtt_ms=0, syn_losses=0, **peer_kw):
    """The stack connects to the peer; the SYN-ACK comes rtt_ms after the
    (last) SYN.  syn_losses SYNs are lost first (each after its RTO)."""
    peer = Peer(stack, **peer_kw)
    sid = stack.socket()
    assert stack.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    (syn,) = stack.expect({"flags": "S", "dport": 80})
    rto = 1000
    for _ in range(syn_losses):
        stack.advance(rto)
        stack.expect({"flags": "S", "seq": syn.seq})
        rto *= 2
    peer.sport, peer.dport = 80, syn.sport
    peer.rcv = (syn.seq + 1) % 2**32
    if rtt_ms:
        stack.advance(rtt_ms)
        stack.expect_nothing()
    opts = [("MSS", peer.mss)] if peer.mss is not None else []
    if peer.wscale is not None:
        opts.append(("WScale", peer.wscale))
    peer.seg("SA", ack=peer.rcv, options=opts)
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert stack.state(sid) == "ESTABLISHED"
    return Conn(stack, sid, peer)


@pytest.fixture
def make_stack():
    made = []

    def make(**cfg):
        s = Stack(**cfg)
        made.append(s)
        return s

    yield make
    for s in made:
        s.destroy()


def ctr(stack, name):
    return stack.counters()[name]



def peer_data(c, n, start=0, seq=None, advance=True):
    return c.p.seg("PA", pattern(1000 + start, n), seq=seq, advance=advance)


def ack_of(c, **kw):
    """Description of a pure ACK from the stack for all the peer sent."""
    w = {"flags": "A", "seq": c.seq(len(c.out)), "ack": c.p.nxt, "len": 0}
    w.update(kw)
    return w


# ===========================================================================
# Delayed ACK (RFC 1122 4.2.3.2, RFC 5681 4.2)
# ===========================================================================

def test_small_segment_acked_after_delack_ms(make_stack):
    st = make_stack()
    c = open_passive(st)
    peer_data(c, 100)
    st.expect_nothing()
    st.advance(39)
    st.expect_nothing()
    st.advance(1)
    st.expect(ack_of(c))
    assert st.counters()["tcp_delayed_acks"] == 1
    st.advance(1000)
    st.expect_nothing()


def test_delack_ms_is_configurable(make_stack):
    st = make_stack(delack_ms=100)
    c = open_passive(st)
    peer_data(c, 100)
    st.advance(99)
    st.expect_nothing()
    st.advance(1)
    st.expect(ack_of(c))


def test_delack_timer_not_extended_by_second_small_segment(make_stack):
    """The ACK is delayed from the first unacknowledged segment, not the
    last (RFC 1122: the delay is bounded)."""
    st = make_stack()
    c = open_passive(st)
    peer_data(c, 100)
    st.advance(20)
    peer_data(c, 100, 100)
    st.expect_nothing()
    st.advance(19)
    st.expect_nothing()
    st.advance(1)
    st.expect(ack_of(c))
    assert st.counters()["tcp_delayed_acks"] == 1


def test_two_full_segments_acked_at_once(make_stack):
    """RFC 5681 4.2 / RFC 1122 4.2.3.2: an ACK at least for every second
    full-sized segment."""
    st = make_stack()
    c = open_passive(st)
    c.p.seg("A", pattern(0, MSS))
    st.expect_nothing()
    c.p.seg("A", pattern(MSS, MSS))
    st.expect(ack_of(c))
    st.advance(100)
    st.expect_nothing()
    assert st.counters()["tcp_delayed_acks"] == 0


def test_one_full_segment_is_delayed(make_stack):
    st = make_stack()
    c = open_passive(st)
    c.p.seg("A", pattern(0, MSS))
    st.advance(39)
    st.expect_nothing()
    st.advance(1)
    st.expect(ack_of(c))


def test_out_of_order_segment_acked_immediately(make_stack):
    """RFC 5681 4.2: an out-of-order segment draws an immediate duplicate ACK."""
    st = make_stack()
    c = open_passive(st)
    expected = c.p.nxt
    c.p.seg("A", pattern(0, 500), seq=(c.p.nxt + 500) % 2**32, advance=False)
    st.expect(ack_of(c, ack=expected))
    assert st.counters()["tcp_ooo_segments"] == 1
    st.advance(100)
    st.expect_nothing()


def test_gap_filled_acked_immediately(make_stack):
    """RFC 5681 4.2: a segment that fills a gap is acknowledged at once."""
    st = make_stack()
    c = open_passive(st)
    start = c.p.nxt
    c.p.seg("A", pattern(500, 500), seq=(start + 500) % 2**32, advance=False)
    st.expect(ack_of(c, ack=start))
    c.p.seg("A", pattern(0, 500))
    st.expect(ack_of(c, ack=(start + 1000) % 2**32))
    c.p.nxt = (start + 1000) % 2**32
    assert st.read(c.sid) == pattern(0, 1000)


def test_ack_piggybacks_on_data(make_stack):
    """RFC 1122 4.2.3.2: data sent within the delay carries the ACK; no
    separate ACK follows."""
    st = make_stack()
    c = open_passive(st)
    peer_data(c, 100)
    st.advance(10)
    st.expect_nothing()
    c.write(50)
    c.expect(c.d(0, 50))  # ack = the peer's 100 bytes
    st.advance(100)
    st.expect_nothing()
    assert st.counters()["tcp_delayed_acks"] == 0


# ===========================================================================
# Keepalive (RFC 1122 4.2.3.6)
# ===========================================================================

def keepalive(st, sid, idle=10, intvl=2, cnt=3, first="params"):
    opts = [(lib.SS_OPT_KEEPIDLE, idle), (lib.SS_OPT_KEEPINTVL, intvl), (lib.SS_OPT_KEEPCNT, cnt)]
    on = [(lib.SS_OPT_KEEPALIVE, 1)]
    for opt, v in (opts + on if first == "params" else on + opts):
        assert st.setopt(sid, opt, v) == 0


def ka_probe(c):
    """RFC 1122 4.2.3.6: SEG.SEQ = SND.NXT - 1 (Linux: SND.UNA - 1), no data."""
    return {"flags": "A", "seq": (c.seq(len(c.out)) - 1) % 2**32, "ack": c.p.nxt, "len": 0}


def test_keepalive_off_by_default(make_stack):
    st = make_stack()
    c = open_passive(st)
    assert st.getopt(c.sid, lib.SS_OPT_KEEPALIVE) == 0
    st.advance(3 * 3600 * 1000)
    st.expect_nothing()
    assert st.counters()["tcp_keepalive_probes"] == 0
    assert c.info()["state"] == "ESTABLISHED"


def test_keepalive_probe_after_idle(make_stack):
    st = make_stack()
    c = open_passive(st)
    keepalive(st, c.sid)
    st.advance(9999)
    st.expect_nothing()
    st.advance(1)
    st.expect(ka_probe(c))
    assert st.counters()["tcp_keepalive_probes"] == 1


def test_keepalive_answered_probe_postpones_next(make_stack):
    """RFC 1122 4.2.3.6: probes are sent only when nothing, data or ACK,
    has been received for the idle interval.  The answer at 10 s is such an
    ACK: the next probe is due at 20 s, not at 12 s."""
    st = make_stack()
    c = open_passive(st)
    keepalive(st, c.sid)
    st.advance(10000)
    st.expect(ka_probe(c))
    c.ack(0)  # the peer's answer
    st.expect_nothing()
    st.advance(9999)
    st.expect_nothing()
    st.advance(1)
    st.expect(ka_probe(c))
    assert c.info()["state"] == "ESTABLISHED"


def test_keepalive_unanswered_probes_reset(make_stack):
    """After KEEPCNT unanswered probes Linux resets the connection and
    reports ETIMEDOUT."""
    st = make_stack()
    c = open_passive(st)
    keepalive(st, c.sid)
    st.advance(10000)
    st.expect(ka_probe(c))
    for _ in range(2):
        st.advance(1999)
        st.expect_nothing()
        st.advance(1)
        st.expect(ka_probe(c))
    st.advance(1999)
    st.expect_nothing()
    st.advance(1)
    st.expect({"flags": "RA", "seq": c.seq(0), "ack": c.p.nxt, "len": 0})
    assert c.info()["state"] == "CLOSED"
    assert st.read(c.sid) == ERRNO["ETIMEDOUT"]
    k = st.counters()
    assert k["tcp_keepalive_probes"] == 3
    assert k["tcp_timeouts"] == 1


def test_keepalive_postponed_by_incoming_data(make_stack):
    st = make_stack()
    c = open_passive(st)
    keepalive(st, c.sid)
    st.advance(5000)
    peer_data(c, 100)
    st.advance(40)
    st.expect(ack_of(c))
    st.advance(9959)  # 14999 ms
    st.expect_nothing()
    st.advance(1)
    st.expect(ka_probe(c))


def test_keepidle_set_after_keepalive_takes_effect(make_stack):
    """Linux (tcp_sock_set_keepidle): changing TCP_KEEPIDLE on a socket with
    SO_KEEPALIVE on re-arms the timer; the usual order SO_KEEPALIVE then
    TCP_KEEPIDLE gives a probe after 10 s, not after two hours."""
    st = make_stack()
    c = open_passive(st)
    keepalive(st, c.sid, first="keepalive")
    st.advance(9999)
    st.expect_nothing()
    st.advance(1)
    st.expect(ka_probe(c))


def test_keepalive_inherited_from_listener(make_stack):
    """Linux: an accepted socket inherits SO_KEEPALIVE and its timings."""
    st = make_stack()
    lsid = st.listen(80)
    keepalive(st, lsid)
    peer = Peer(st)
    peer.seg("S", options=peer.syn_options())
    (sa,) = st.expect({"flags": "SA"})
    peer.rcv = (sa.seq + 1) % 2**32
    peer.seg("A")
    sid = st.accept(lsid)
    assert sid >= 0
    c = Conn(st, sid, peer)
    assert st.getopt(sid, lib.SS_OPT_KEEPALIVE) == 1
    st.advance(9999)
    st.expect_nothing()
    st.advance(1)
    st.expect(ka_probe(c))


def test_keepalive_disabled_sends_nothing(make_stack):
    st = make_stack()
    c = open_passive(st)
    keepalive(st, c.sid)
    st.advance(5000)
    assert st.setopt(c.sid, lib.SS_OPT_KEEPALIVE, 0) == 0
    st.advance(60000)
    st.expect_nothing()
    assert st.counters()["tcp_keepalive_probes"] == 0


def test_keepalive_probe_after_data_exchange_uses_snd_una(make_stack):
    """Once our data is acknowledged the probe is SND.UNA - 1 = SND.NXT - 1."""
    st = make_stack()
    c = open_passive(st)
    keepalive(st, c.sid)
    c.write(300)
    c.expect(c.d(0, 300))
    c.ack(300)
    st.advance(10000)
    st.expect(ka_probe(c))
    assert ka_probe(c)["seq"] == c.seq(299)


# ===========================================================================
# ss_engine_next_deadline
# ===========================================================================

def test_next_deadline_none_on_fresh_stack(make_stack):
    st = make_stack()
    assert st.next_deadline_ms() is None
    st.listen(80)
    assert st.next_deadline_ms() is None


def test_next_deadline_reports_rto(make_stack):
    st = make_stack()
    c = open_passive(st)  # RTO 200 ms
    c.write(100)
    c.expect(c.d(0, 100))
    assert st.next_deadline_ms() == 200
    st.advance(200)
    c.expect(c.d(0, 100))
    assert st.next_deadline_ms() == 400  # backed off


def test_next_deadline_reports_delack(make_stack):
    st = make_stack()
    c = open_passive(st)
    st.advance(5000)
    peer_data(c, 100)
    assert st.next_deadline_ms() == 40
    st.advance(40)
    st.expect(ack_of(c))


def test_next_deadline_nearest_of_rto_and_delack(make_stack):
    st = make_stack()
    c = open_passive(st)
    c.write(100)
    c.expect(c.d(0, 100))  # RTO due in 200 ms
    st.advance(100)
    peer_data(c, 100)  # acknowledges nothing of ours; delayed ACK due in 40
    assert st.next_deadline_ms() == 40
    st.advance(40)
    st.expect(ack_of(c))
    assert st.next_deadline_ms() == 60  # the RTO


def test_next_deadline_reports_keepalive(make_stack):
    st = make_stack()
    c = open_passive(st)
    st.advance(5000)
    keepalive(st, c.sid)
    assert st.next_deadline_ms() == 10000


def test_next_deadline_none_when_idle(make_stack):
    """Header: UINT64_MAX when no timer is armed.  After the handshake and
    an exchange fully acknowledged both ways, nothing is armed."""
    st = make_stack()
    c = open_passive(st)
    peer_data(c, 100)
    c.write(100)
    c.expect(c.d(0, 100))
    c.ack(100)
    st.expect_nothing()
    assert st.next_deadline_ms() is None
