"""Window management (RFC 9293 3.8.6, RFC 7323 window scaling, RFC 1122
4.2.3.3/4.2.3.4 silly window syndrome avoidance), Nagle (RFC 896) and the
zero-window persist timer (RFC 9293 3.8.6.1, RFC 1122 4.2.2.17).

Every test scripts one connection against a scapy peer on a virtual clock
and states exactly which segments the stack sends.  Helpers (Conn,
open_passive, open_active, ...) come from harness.py.
"""

from harness import (ERRNO, MSS, PEER_IP, describe, match, open_active, open_passive, pattern, peer_data, right_edge, tcp_options)
from preload.engine import lib


# ===========================================================================
# Send window: the peer's advertised window
# ===========================================================================

def test_never_send_beyond_peer_window(make_stack):
    """RFC 9293 3.8.6.2.1: no data beyond SND.UNA + SND.WND.  Window 3000:
    two full segments; the 80 bytes left are a silly window and wait."""
    st = make_stack()
    c = open_passive(st, win=3000)
    c.write(10 * MSS)
    c.expect(c.seg(0), c.seg(1))
    c.ack_seg(1, win=3000)  # right edge 1460 + 3000 = 4460
    c.expect(c.seg(2))
    c.ack_seg(3, win=3000)  # right edge 7380
    c.expect(c.seg(3), c.seg(4))
    assert c.info()["snd_wnd"] == 3000


def test_window_shrinking_to_less_than_flight_sends_nothing(make_stack):
    """A window update that leaves no usable window lets nothing out."""
    st = make_stack()
    c = open_passive(st, win=5000)
    c.write(10 * MSS)
    c.expect(c.seg(0), c.seg(1), c.seg(2))
    c.ack_seg(1, win=2000)  # right edge 3460 < SND.NXT 4380
    st.expect_nothing()
    c.ack_seg(3, win=3000)  # right edge 7380, in flight none
    c.expect(c.seg(3), c.seg(4))


def test_peer_window_scaled_after_handshake(make_stack):
    """RFC 7323 2.3: with WScale 7 a window field of 23 means 2944 bytes:
    two full segments fit, a third does not."""
    st = make_stack()
    c = open_passive(st, wscale=7)
    assert c.info()["snd_wscale"] == 7
    c.ack(0, win=23)
    assert c.info()["snd_wnd"] == 23 << 7
    c.write(10 * MSS)
    c.expect(c.seg(0), c.seg(1))


def test_syn_window_never_scaled(make_stack):
    """RFC 7323 2.2: the window of a SYN (here the peer's SYN-ACK) is not
    scaled; later windows are."""
    st = make_stack()
    c = open_active(st, win=2000, wscale=7)
    i = c.info()
    assert i["snd_wscale"] == 7
    assert i["snd_wnd"] == 2000
    c.write(10000)
    c.expect(c.seg(0))  # 540 bytes left of a 2000-byte window: SWS, wait
    c.ack_seg(1, win=2000)  # now 2000 << 7
    assert c.info()["snd_wnd"] == 2000 << 7
    # cwnd 10+ segments, 8540 bytes left: five full segments, the last
    # 1240 bytes wait behind them (Nagle)
    c.expect(*(c.seg(k) for k in range(1, 6)))


def test_stack_syn_ack_window_unscaled_and_offers_wscale(make_stack):
    """RFC 7323 2.2: our SYN-ACK window is the unscaled min(space, 65535);
    the WScale option is offered because the peer offered it."""
    st = make_stack()
    c = open_passive(st, wscale=7)
    sa = c.p_synack
    assert sa.window == 65535
    assert "WScale" in tcp_options(sa)
    assert tcp_options(sa)["WScale"] == c.info()["rcv_wscale"]


def test_stack_window_field_is_scaled(make_stack):
    """RFC 7323 2.3: after the handshake our window field is the free
    receive space shifted right by our scale."""
    st = make_stack()
    c = open_passive(st, wscale=7)
    ws = tcp_options(c.p_synack)["WScale"]
    assert ws > 0
    peer_data(c, 1000)
    st.expect_nothing()
    st.advance(40)
    (a,) = st.expect({"flags": "A", "ack": c.p.nxt, "len": 0})
    assert a.window == (262144 - 1000) >> ws
    assert c.info()["rcv_wnd"] == a.window << ws


def test_no_scaling_without_peer_wscale(make_stack):
    """RFC 7323 2.2: no WScale from the peer, so none in our SYN-ACK and our
    window fields are plain bytes (at most 65535).  1000 bytes arrive
    unread: the right edge stays, the window is 65535 - 1000."""
    st = make_stack()
    c = open_passive(st)
    assert "WScale" not in tcp_options(c.p_synack)
    assert c.info()["rcv_wscale"] == 0
    peer_data(c, 1000)
    st.advance(40)
    st.expect({"flags": "A", "ack": c.p.nxt, "window": 64535})


def test_peer_window_unscaled_when_synack_lacks_wscale(make_stack):
    """RFC 7323 2.2: our SYN offered WScale, the SYN-ACK did not: neither
    side scales.  A later window of 3000 is 3000 bytes."""
    st = make_stack()
    c = open_active(st)
    assert c.info()["snd_wscale"] == 0 and c.info()["rcv_wscale"] == 0
    c.ack(0, win=3000)
    assert c.info()["snd_wnd"] == 3000
    c.write(10 * MSS)
    c.expect(c.seg(0), c.seg(1))


def test_active_open_segment_beyond_offered_window_dropped(make_stack):
    """RFC 9293 3.10.7.4: a segment beyond RCV.NXT + RCV.WND is not
    acceptable: ACK and drop.  After an active open we offered 65535 bytes
    (no scaling); a segment 100000 bytes ahead is outside, whatever the
    peer's ISN."""
    st = make_stack()
    c = open_active(st, isn=3_000_000_000)
    assert c.info()["rcv_wnd"] == 65535
    c.p.seg("PA", b"x" * 100, seq=(c.p.nxt + 100000) % 2**32, advance=False)
    st.expect({"flags": "A", "ack": c.p.nxt, "seq": c.seq(0)})
    k = st.counters()
    assert k["drop_tcp_out_of_window"] == 1
    assert k["tcp_ooo_segments"] == 0


# ===========================================================================
# Receive window: shrinking, reopening, receiver SWS avoidance
# ===========================================================================

def small_rcv(make_stack):
    st = make_stack(rcvbuf=4096)
    c = open_passive(st)
    assert c.p_synack.window == 4096
    return st, c


def test_receive_window_shrinks_as_data_arrives(make_stack):
    """RFC 9293 3.8.6.2.2: unread data takes window; the right edge stays."""
    st, c = small_rcv(make_stack)
    edge = (c.p.nxt + 4096) % 2**32
    peer_data(c, 1000)
    st.advance(40)
    (a,) = st.expect({"flags": "A", "ack": c.p.nxt, "window": 3096})
    peer_data(c, 1000, 1000)
    st.advance(40)
    (b,) = st.expect({"flags": "A", "ack": c.p.nxt, "window": 2096})
    assert right_edge(a) == right_edge(b) == edge
    assert c.info()["rcv_wnd"] == 2096


def test_receive_window_grows_when_read(make_stack):
    """Reading 2920 of 2920 bytes: the window can go from 1176 to 4096, at
    least double and more than one MSS: an update ACK is sent at once."""
    st, c = small_rcv(make_stack)
    c.p.seg("A", pattern(0, MSS))
    c.p.seg("A", pattern(MSS, MSS))
    (a,) = st.expect({"flags": "A", "ack": c.p.nxt, "window": 4096 - 2 * MSS})
    assert len(st.read(c.sid)) == 2 * MSS
    (u,) = st.expect({"flags": "A", "ack": c.p.nxt, "window": 4096, "len": 0})
    assert right_edge(u) == (right_edge(a) + 2 * MSS) % 2**32


def fill_window(st, c):
    """The peer fills the 4096-byte window; returns the stack's ACKs."""
    c.p.seg("A", pattern(0, MSS))
    c.p.seg("A", pattern(MSS, MSS))
    acks = st.expect({"flags": "A", "ack": c.p.nxt, "window": 4096 - 2 * MSS})
    c.p.seg("PA", pattern(2 * MSS, 4096 - 2 * MSS))
    st.advance(40)
    acks += st.expect({"flags": "A", "ack": c.p.nxt, "window": 0})
    return acks


def test_right_edge_never_moves_left(make_stack):
    """RFC 9293 3.8.6.2.2: every window we advertise keeps the right edge
    where it was or moves it right."""
    st, c = small_rcv(make_stack)
    edge0 = (c.p.nxt + 4096) % 2**32
    acks = fill_window(st, c)
    assert [right_edge(a) for a in acks] == [edge0, edge0]
    # a zero-window probe is answered with the same edge
    c.p.seg("A", b"z", advance=False)
    (p,) = st.expect({"flags": "A", "ack": c.p.nxt, "window": 0})
    assert right_edge(p) == edge0


def test_data_beyond_window_is_trimmed(make_stack):
    """RFC 9293 3.10.7.4: only the part of a segment inside the window is
    accepted; three full segments into 4096 bytes: 4096 acknowledged."""
    st, c = small_rcv(make_stack)
    start = c.p.nxt
    c.p.seg("A", pattern(0, MSS))
    c.p.seg("A", pattern(MSS, MSS))
    st.expect({"flags": "A", "ack": (start + 2 * MSS) % 2**32, "window": 4096 - 2 * MSS})
    c.p.seg("PA", pattern(2 * MSS, MSS), advance=False)
    segs = st.take_tcp()
    if not segs:
        st.advance(40)
        segs = st.take_tcp()
    assert len(segs) == 1, [describe(s) for s in segs]
    match(segs[0], {"flags": "A", "ack": (start + 4096) % 2**32, "window": 0, "len": 0})
    assert st.read(c.sid) == pattern(0, 4096)


def test_receiver_sws_small_read_opens_no_window(make_stack):
    """RFC 1122 4.2.3.3 / RFC 9293 3.8.6.2.2: reading 100 bytes from a full
    buffer does not offer a 100-byte window: no update, and an ACK sent for
    another reason still says 0."""
    st, c = small_rcv(make_stack)
    fill_window(st, c)
    assert len(st.read(c.sid, 100)) == 100
    st.expect_nothing()
    c.p.seg("A", b"z", advance=False)  # the peer's zero-window probe
    st.expect({"flags": "A", "ack": c.p.nxt, "window": 0})
    st.advance(1000)
    st.expect_nothing()


def test_window_update_after_read_reopens_zero_window(make_stack):
    """The window reopens once the increase reaches min(buffer/2, MSS) =
    1460: reads of 1000 and 459 say nothing, one more byte sends the update."""
    st, c = small_rcv(make_stack)
    fill_window(st, c)
    assert len(st.read(c.sid, 1000)) == 1000
    st.expect_nothing()
    assert len(st.read(c.sid, 459)) == 459
    st.expect_nothing()
    assert len(st.read(c.sid, 1)) == 1
    st.expect({"flags": "A", "ack": c.p.nxt, "window": 1460, "len": 0})
    # the peer may now send 1460 bytes
    c.p.seg("A", pattern(4096, MSS))
    st.advance(40)
    st.expect({"flags": "A", "ack": c.p.nxt, "window": 0})


def test_rcvbuf_setopt_before_connect_sets_syn_window(make_stack):
    """SO_RCVBUF before connect (Linux doubles it): the SYN offers that
    buffer and needs no window scaling."""
    st = make_stack()
    sid = st.socket()
    assert st.setopt(sid, lib.SS_OPT_RCVBUF, 2048) == 0
    assert st.getopt(sid, lib.SS_OPT_RCVBUF) == 4096
    assert st.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    st.expect({"flags": "S", "window": 4096, "opts": {"WScale": 0}})


def test_sndbuf_limits_write(make_stack):
    """A 4096-byte send buffer takes 4096 bytes; the rest is EAGAIN."""
    st = make_stack(sndbuf=4096)
    c = open_passive(st, win=0)
    assert st.write(c.sid, pattern(0, 10000)) == 4096
    assert st.write(c.sid, b"x") == ERRNO["EAGAIN"]
    st.expect_nothing()


# ===========================================================================
# Nagle (RFC 896, RFC 1122 4.2.3.4) and sender SWS avoidance
# ===========================================================================

def test_nagle_holds_second_small_write_until_ack(make_stack):
    st = make_stack()
    c = open_passive(st)
    c.write(100)
    c.expect(c.d(0, 100))
    c.write(100)
    st.expect_nothing()
    st.advance(100)
    st.expect_nothing()
    c.ack(100)
    c.expect(c.d(100, 100))


def test_nagle_coalesces_held_writes(make_stack):
    st = make_stack()
    c = open_passive(st)
    c.write(100)
    c.expect(c.d(0, 100))
    for _ in range(3):
        c.write(50)
    st.expect_nothing()
    c.ack(100)
    c.expect(c.d(100, 150))


def test_nodelay_sends_small_writes_at_once(make_stack):
    st = make_stack()
    c = open_passive(st)
    assert st.setopt(c.sid, lib.SS_OPT_NODELAY, 1) == 0
    assert st.getopt(c.sid, lib.SS_OPT_NODELAY) == 1
    c.write(100)
    c.expect(c.d(0, 100))
    c.write(100)
    c.expect(c.d(100, 100))


def test_nagle_never_holds_full_segments(make_stack):
    """Nagle holds only a partial segment: a full one goes out although
    data is unacknowledged; the 540-byte tail waits."""
    st = make_stack()
    c = open_passive(st)
    c.write(100)
    c.expect(c.d(0, 100))
    c.write(2000)
    c.expect(c.d(100, MSS))
    c.ack(100)
    st.expect_nothing()
    c.ack(100 + MSS)
    c.expect(c.d(100 + MSS, 540))


def test_setting_nodelay_pushes_held_data(make_stack):
    """Linux: setting TCP_NODELAY sends what Nagle held."""
    st = make_stack()
    c = open_passive(st)
    c.write(100)
    c.expect(c.d(0, 100))
    c.write(100)
    st.expect_nothing()
    assert st.setopt(c.sid, lib.SS_OPT_NODELAY, 1) == 0
    c.expect(c.d(100, 100))


def test_sender_sws_no_tiny_segment_into_tiny_window(make_stack):
    """RFC 1122 4.2.3.4: with a 100-byte window (max window 65535) and 1000
    bytes queued, no 100-byte segment is sent, even with NODELAY."""
    st = make_stack()
    c = open_passive(st)
    st.setopt(c.sid, lib.SS_OPT_NODELAY, 1)
    c.ack(0, win=100)
    c.write(1000)
    st.expect_nothing()
    st.advance(100)
    st.expect_nothing()


def test_sender_sws_sends_all_data_that_fits(make_stack):
    """RFC 1122 4.2.3.4 (2): all the queued data fits the window: send."""
    st = make_stack()
    c = open_passive(st)
    c.ack(0, win=100)
    c.write(50)
    c.expect(c.d(0, 50))


def test_sender_sws_override_timeout_fills_small_window(make_stack):
    """RFC 1122 4.2.3.4 (4) / Linux tcp_write_wakeup: when the override
    (persist) timeout fires, what fits the small window is sent."""
    st = make_stack()
    c = open_passive(st)  # RTO 200 ms
    c.ack(0, win=100)
    c.write(1000)
    st.expect_nothing()
    c.expect_at(200, c.d(0, 100))
    # a window probe, not a cork (nothing corked the data)
    assert st.counters()["tcp_zero_window_probes"] == 1 and st.counters()["tcp_cork_timeouts"] == 0


# ===========================================================================
# Zero window and persist timer (RFC 9293 3.8.6.1, RFC 1122 4.2.2.17)
# ===========================================================================

def zero_window_conn(make_stack, **cfg):
    st = make_stack(**cfg)
    c = open_passive(st)  # RTO 200 ms
    c.ack(0, win=0)
    assert c.info()["snd_wnd"] == 0
    c.write(100)
    st.expect_nothing()
    return st, c


def probe(c, off=0):
    return c.d(off, 1)


def test_zero_window_sends_nothing_then_probes(make_stack):
    """A zero window lets no data out; after the persist timeout (RTO) a
    probe of one new byte at SND.NXT."""
    st, c = zero_window_conn(make_stack)
    c.expect_at(200, probe(c))
    assert st.counters()["tcp_zero_window_probes"] == 1


def test_persist_backoff_doubles(make_stack):
    """RFC 1122 4.2.2.17 / Linux: probe intervals back off exponentially."""
    st, c = zero_window_conn(make_stack)
    for wait in (200, 400, 800, 1600, 3200):
        st.advance(wait - 1)
        st.expect_nothing()
        st.advance(1)
        c.expect(probe(c))
        c.ack(0, win=0)  # answered, window still zero
        st.expect_nothing()
    assert st.counters()["tcp_zero_window_probes"] == 5


def test_persist_never_aborts_while_peer_answers(make_stack):
    """RFC 1122 4.2.2.17: the connection stays open while the receiver
    keeps answering, however many probes (here far more than retries=3);
    every segment sent is a one-byte probe."""
    st, c = zero_window_conn(make_stack, retries=3, rto_max_ms=2000)
    for wait in (200, 400, 800, 1600, 2000, 2000, 2000, 2000, 2000, 2000):
        st.advance(wait - 1)
        st.expect_nothing()
        st.advance(1)
        c.expect(probe(c))
        c.ack(0, win=0)
        st.expect_nothing()
    assert c.info()["state"] == "ESTABLISHED"
    k = st.counters()
    assert k["tcp_zero_window_probes"] == 10
    assert k["tcp_timeouts"] == 0
    assert k["tcp_fast_retransmits"] == 0


def test_data_flows_when_window_opens(make_stack):
    st, c = zero_window_conn(make_stack)
    st.advance(200)
    c.expect(probe(c))
    c.ack(0, win=0)
    st.advance(100)
    st.expect_nothing()
    c.ack(0, win=65535)  # the window update
    c.expect(c.d(0, 100))
    c.ack(100)
    st.advance(10000)
    st.expect_nothing()  # no more probes, nothing to retransmit
    assert st.counters()["tcp_zero_window_probes"] == 1


def test_window_opened_by_probe_ack(make_stack):
    """The answer to a probe opens the window: the rest goes at once."""
    st, c = zero_window_conn(make_stack)
    st.advance(200)
    c.expect(probe(c))
    c.ack(1, win=1000)  # the peer took the probe byte and has room
    c.expect(c.d(1, 99))
    c.ack(100)
    st.advance(10000)
    st.expect_nothing()
