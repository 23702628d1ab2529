"""Timers: delayed ACK (RFC 1122 4.2.3.2, RFC 5681 4.2), keepalive
(RFC 1122 4.2.3.6) and ss_engine_next_deadline.

Every test scripts one connection against a scapy peer on a virtual clock
and states exactly which segments the stack sends.  Helpers (Conn,
open_passive, open_active, ...) come from harness.py.
"""

from harness import (ERRNO, MSS, Conn, Peer, ack_of, open_passive, pattern, peer_data)
from preload.engine import lib


# ===========================================================================
# Delayed ACK (RFC 1122 4.2.3.2, RFC 5681 4.2)
# ===========================================================================

def test_small_segment_acked_after_delack_ms(make_stack):
    st = make_stack()
    c = open_passive(st)
    peer_data(c, 100)
    st.expect_nothing()
    st.expect_at(40, ack_of(c))
    assert st.counters()["tcp_delayed_acks"] == 1
    st.advance(1000)
    st.expect_nothing()


def test_delack_ms_is_configurable(make_stack):
    st = make_stack(delack_ms=100)
    c = open_passive(st)
    peer_data(c, 100)
    st.expect_at(100, ack_of(c))


def test_delack_timer_not_extended_by_second_small_segment(make_stack):
    """The ACK is delayed from the first unacknowledged segment, not the
    last (RFC 1122: the delay is bounded)."""
    st = make_stack()
    c = open_passive(st)
    peer_data(c, 100)
    st.advance(20)
    peer_data(c, 100, 100)
    st.expect_nothing()
    st.expect_at(20, ack_of(c))
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
    st.expect_at(40, ack_of(c))


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
    st.expect_at(10000, ka_probe(c))
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
    st.expect_at(10000, ka_probe(c))
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
    st.expect_at(2000, {"flags": "RA", "seq": c.seq(0), "ack": c.p.nxt, "len": 0})
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
    st.expect_at(10000, ka_probe(c))


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
    st.expect_at(10000, ka_probe(c))


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
