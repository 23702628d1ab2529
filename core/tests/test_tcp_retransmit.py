"""Retransmission (RFC 6298), fast retransmit and NewReno (RFC 5681,
RFC 6582) and the congestion window (RFC 5681, RFC 6928).

Every test scripts one connection against a scapy peer on a virtual clock
and states exactly which segments the stack sends.  Helpers (Conn,
open_passive, open_active, ...) come from harness.py.
"""

from harness import (ERRNO, MSS, PEER_IP, Peer, ctr, open_active, open_passive)


# ===========================================================================
# Retransmission timer (RFC 6298)
# ===========================================================================

def test_syn_first_rto_is_rto_initial(make_stack):
    """RFC 6298 2.1: before any RTT sample RTO = 1 s."""
    st = make_stack()
    sid = st.socket()
    assert st.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    (syn,) = st.expect({"flags": "S"})
    st.expect_at(1000, {"flags": "S", "seq": syn.seq, "len": 0})
    # 5.5: backed off to 2 s
    st.expect_at(2000, {"flags": "S", "seq": syn.seq})
    c = st.counters()
    assert c["tcp_rto_expired"] == 2 and c["tcp_retransmits"] == 2


def test_synack_first_rto_is_rto_initial(make_stack):
    st = make_stack()
    st.listen(80)
    peer = Peer(st)
    peer.seg("S", options=peer.syn_options())
    (sa,) = st.expect({"flags": "SA", "ack": peer.nxt})
    st.expect_at(1000, {"flags": "SA", "seq": sa.seq, "ack": peer.nxt})


def test_rto_initial_is_configurable(make_stack):
    st = make_stack(rto_initial_ms=3000)
    sid = st.socket()
    st.connect(sid, PEER_IP, 80)
    (syn,) = st.expect({"flags": "S"})
    st.expect_at(3000, {"flags": "S", "seq": syn.seq})


def test_rto_from_first_sample(make_stack):
    """RFC 6298 2.2: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR.
    R = 40 ms -> RTO = 120 ms (above rto_min 100)."""
    st = make_stack(rto_min_ms=100)
    c = open_passive(st, rtt_ms=40)
    i = c.info()
    assert i["srtt_us"] == 40000
    assert i["rto_us"] == 120000
    c.write(100)
    c.expect(c.d(0, 100))
    c.expect_at(120, c.d(0, 100))
    k = st.counters()
    assert k["tcp_retransmits"] == 1 and k["tcp_rto_expired"] == 1


def test_rto_from_subsequent_sample(make_stack):
    """RFC 6298 2.3: RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R'|, then
    SRTT = 7/8 SRTT + 1/8 R'.  Samples 40 then 80 ms:
    RTTVAR = 15 + 10 = 25, SRTT = 35 + 10 = 45, RTO = 45 + 100 = 145 ms."""
    st = make_stack(rto_min_ms=100)
    c = open_passive(st, rtt_ms=40)
    c.write(100)
    c.expect(c.d(0, 100))
    st.advance(80)
    c.ack(100)
    st.expect_nothing()
    i = c.info()
    assert i["srtt_us"] == 45000
    assert i["rto_us"] == 145000
    c.write(100)
    c.expect(c.d(100, 100))
    c.expect_at(145, c.d(100, 100))


def test_rto_clamped_to_rto_min_default(make_stack):
    """RFC 6298 2.4 with Linux's 200 ms floor: 40 + 80 = 120 ms -> 200 ms."""
    st = make_stack()
    c = open_passive(st, rtt_ms=40)
    assert c.info()["rto_us"] == 200000
    c.write(100)
    c.expect(c.d(0, 100))
    c.expect_at(200, c.d(0, 100))


def test_rto_clamped_to_configured_rto_min(make_stack):
    """R = 10 ms: 10 + 20 = 30 ms, clamped to rto_min_ms = 100."""
    st = make_stack(rto_min_ms=100)
    c = open_passive(st, rtt_ms=10)
    assert c.info()["rto_us"] == 100000
    c.write(100)
    c.expect(c.d(0, 100))
    c.expect_at(100, c.d(0, 100))


def test_zero_rtt_sample_is_a_measurement(make_stack):
    """RFC 6298 2.2/2.3: a first measurement of 0 is still the first
    measurement; the next one, 8 ms, is a subsequent one:
    RTTVAR = 0 + 8/4 = 2 ms, SRTT = 0 + 8/8 = 1 ms, RTO = 1 + 8 = 9 -> 10 ms."""
    st = make_stack(rto_min_ms=10)
    c = open_passive(st, rtt_ms=0)
    assert c.info()["rto_us"] == 10000
    c.write(100)
    c.expect(c.d(0, 100))
    st.advance(8)
    c.ack(100)
    i = c.info()
    assert i["srtt_us"] == 1000
    assert i["rto_us"] == 10000
    c.write(100)
    c.expect(c.d(100, 100))
    c.expect_at(10, c.d(100, 100))


def test_backoff_doubles_up_to_rto_max(make_stack):
    """RFC 6298 5.5 and 2.5: each expiry doubles RTO, up to rto_max_ms."""
    st = make_stack(rto_max_ms=1000, retries=10)
    c = open_passive(st)
    assert c.info()["rto_us"] == 200000
    c.write(100)
    c.expect(c.d(0, 100))
    for wait in (200, 400, 800, 1000, 1000, 1000):
        st.advance(wait - 1)
        st.expect_nothing()
        st.advance(1)
        c.expect(c.d(0, 100))
    assert c.info()["rto_us"] == 1000000
    assert ctr(st, "tcp_rto_expired") == 6


def test_karn_no_sample_from_retransmitted_segment(make_stack):
    """Karn (RFC 6298 3): the ACK of a retransmitted segment gives no RTT
    sample; the backed-off RTO is kept (RFC 6298 5, last note)."""
    st = make_stack(rto_min_ms=100)
    c = open_passive(st, rtt_ms=40)  # SRTT 40, RTO 120
    c.write(100)
    c.expect(c.d(0, 100))
    st.advance(120)
    c.expect(c.d(0, 100))
    st.advance(10)
    c.ack(100)  # ambiguous: 130 ms after the original, 10 after the copy
    st.expect_nothing()
    i = c.info()
    assert i["srtt_us"] == 40000
    assert i["rto_us"] == 240000


def test_backed_off_rto_kept_until_valid_sample(make_stack):
    """After Karn's ambiguous ACK the next segment is timed with the
    backed-off RTO; a clean sample then recomputes RTO from SRTT/RTTVAR."""
    st = make_stack(rto_min_ms=100)
    c = open_passive(st, rtt_ms=40)
    c.write(100)
    c.expect(c.d(0, 100))
    st.advance(120)
    c.expect(c.d(0, 100))
    c.ack(100)
    # new data: RTO is still 240 ms
    c.write(100)
    c.expect(c.d(100, 100))
    c.expect_at(240, c.d(100, 100))  # RTO now 480 ms
    c.ack(200)
    c.write(100)
    c.expect(c.d(200, 100))
    st.advance(40)
    c.ack(300)  # a clean sample of 40 ms: RTTVAR 15, SRTT 40 -> 100 ms
    i = c.info()
    assert i["srtt_us"] == 40000
    assert i["rto_us"] == 100000


def test_rto_timer_restarts_on_new_ack(make_stack):
    """RFC 6298 5.3: an ACK for new data restarts the timer (RTO 1 s)."""
    st = make_stack(rto_min_ms=1000)
    c = open_passive(st, rtt_ms=10)
    c.write(2 * MSS)
    c.expect(c.seg(0), c.seg(1))
    st.advance(500)
    c.ack_seg(1)
    st.expect_nothing()
    st.advance(999)  # 1499 ms after the first transmission
    st.expect_nothing()
    st.advance(1)
    c.expect(c.seg(1))


def test_rto_timer_stops_when_all_acked(make_stack):
    """RFC 6298 5.2: nothing outstanding, no timer, no retransmission."""
    st = make_stack()
    c = open_passive(st)
    c.write(2 * MSS)
    c.expect(c.seg(0), c.seg(1))
    st.advance(50)
    c.ack_seg(2)
    st.expect_nothing()
    st.advance(120000)
    st.expect_nothing()
    k = st.counters()
    assert k["tcp_rto_expired"] == 0 and k["tcp_retransmits"] == 0


def test_retries_exhausted_aborts_with_etimedout(make_stack):
    """RFC 1122 4.2.3.5 / RFC 9293: after `retries` retransmissions the
    next expiry aborts the connection; Linux sends no reset then."""
    st = make_stack(retries=3)
    c = open_passive(st)  # RTO 200 ms
    c.write(100)
    c.expect(c.d(0, 100))
    for wait in (200, 400, 800):
        st.advance(wait - 1)
        st.expect_nothing()
        st.advance(1)
        c.expect(c.d(0, 100))
    assert c.info()["retransmits"] == 3
    st.advance(1599)
    st.expect_nothing()
    assert c.info()["state"] == "ESTABLISHED"
    st.advance(1)
    st.expect_nothing()
    assert c.info()["state"] == "CLOSED"
    assert st.read(c.sid) == ERRNO["ETIMEDOUT"]
    k = st.counters()
    assert k["tcp_timeouts"] == 1
    assert k["tcp_rto_expired"] == 4
    assert k["tcp_retransmits"] == 3


def test_rto_after_retransmitted_syn_is_three_seconds(make_stack):
    """RFC 6298 5.7 (Linux TCP_TIMEOUT_FALLBACK): when the SYN timed out and
    no RTT sample came from the handshake, RTO is reset to 3 s once data
    transmission begins."""
    st = make_stack()
    c = open_active(st, syn_losses=1)
    assert c.info()["rto_us"] == 3000000
    c.write(100)
    c.expect(c.d(0, 100))
    c.expect_at(3000, c.d(0, 100))


def test_rto_collapses_cwnd_and_goes_back_n(make_stack):
    """RFC 5681 3.1: after RTO cwnd = 1 segment; only the first unacked
    segment is resent, and ACKs clock out the rest (go-back-N)."""
    st = make_stack()
    c = open_passive(st)
    c.write(4 * MSS)
    c.expect(*(c.seg(i) for i in range(4)))
    st.advance(200)
    c.expect(c.seg(0))
    assert c.info()["cwnd"] == MSS
    c.ack_seg(1)  # cwnd 2
    c.expect(c.seg(1), c.seg(2))
    c.ack_seg(2)
    c.expect(c.seg(3))
    c.ack_seg(4)
    st.expect_nothing()
    assert ctr(st, "tcp_retransmits") == 4


def test_rto_sets_ssthresh_to_half_flight(make_stack):
    """RFC 5681 eq. (4): ssthresh = max(FlightSize / 2, 2 * SMSS)."""
    st = make_stack()
    c = open_passive(st)
    c.write(8 * MSS)
    c.expect(*(c.seg(i) for i in range(8)))
    st.advance(200)
    c.expect(c.seg(0))
    i = c.info()
    assert i["ssthresh"] == 4 * MSS
    assert i["cwnd"] == MSS


def test_repeated_rto_keeps_ssthresh(make_stack):
    """RFC 5681 3.1: a segment timed out again keeps ssthresh (the flight
    size then is not a measure of the network)."""
    st = make_stack()
    c = open_passive(st)
    c.write(8 * MSS)
    c.expect(*(c.seg(i) for i in range(8)))
    st.advance(200)
    c.expect(c.seg(0))
    st.advance(400)
    c.expect(c.seg(0))
    i = c.info()
    assert i["ssthresh"] == 4 * MSS
    assert i["cwnd"] == MSS


# ===========================================================================
# Fast retransmit and NewReno (RFC 5681 3.2, RFC 6582)
# ===========================================================================

def ten_in_flight(st, total_segs=10):
    c = open_passive(st)
    c.write(total_segs * MSS)
    c.expect(*(c.seg(i) for i in range(10)))
    return c


def test_three_dupacks_trigger_one_fast_retransmit(make_stack):
    st = make_stack()
    c = ten_in_flight(st)
    c.ack_seg(1)  # seg 1 lost; cwnd 11 -> one more... nothing left to send
    st.expect_nothing()
    c.ack_seg(1)
    c.ack_seg(1)
    st.expect_nothing()
    c.ack_seg(1)  # third duplicate
    c.expect(c.seg(1))
    c.ack_seg(1)  # fourth: no second retransmission
    st.expect_nothing()
    k = st.counters()
    assert k["tcp_fast_retransmits"] == 1
    assert k["tcp_retransmits"] == 1
    assert k["tcp_dup_acks_rx"] == 4


def test_fast_retransmit_sets_ssthresh_and_cwnd(make_stack):
    """RFC 5681 3.2 steps 2-3: ssthresh = max(FlightSize/2, 2 SMSS),
    cwnd = ssthresh + 3 SMSS."""
    st = make_stack()
    c = ten_in_flight(st)
    for _ in range(3):
        c.ack_seg(0)
    c.expect(c.seg(0))
    i = c.info()
    assert i["ssthresh"] == 5 * MSS
    assert i["cwnd"] == 8 * MSS


def test_two_dupacks_do_not_retransmit(make_stack):
    st = make_stack()
    c = ten_in_flight(st)
    c.ack_seg(0)
    c.ack_seg(0)
    st.expect_nothing()
    st.advance(100)
    st.expect_nothing()
    assert ctr(st, "tcp_fast_retransmits") == 0


def test_ack_carrying_data_is_not_a_duplicate(make_stack):
    """RFC 5681 2: a duplicate ACK carries no data.  Two dupacks and a data
    segment with the same ACK: no fast retransmit; a third pure one does."""
    st = make_stack()
    c = ten_in_flight(st)
    c.ack_seg(0)
    c.ack_seg(0)
    c.p.seg("PA", b"x" * 20, ack=c.seq(0))
    st.expect_nothing()  # the data's ACK is delayed
    assert ctr(st, "tcp_fast_retransmits") == 0
    c.ack_seg(0)
    c.expect(c.seg(0))  # carries the ACK of the 20 bytes
    assert ctr(st, "tcp_fast_retransmits") == 1


def test_window_change_is_not_a_duplicate(make_stack):
    """RFC 5681 2 (e): the advertised window must be unchanged."""
    st = make_stack()
    c = ten_in_flight(st)
    c.ack_seg(0, win=65535)
    c.ack_seg(0, win=65535)
    c.ack_seg(0, win=60000)  # a window update, not a duplicate
    st.expect_nothing()
    assert ctr(st, "tcp_fast_retransmits") == 0
    c.ack_seg(0, win=60000)
    c.expect(c.seg(0))
    assert ctr(st, "tcp_fast_retransmits") == 1


def test_dupacks_without_outstanding_data_ignored(make_stack):
    """RFC 5681 2 (a): only with outstanding data is an ACK a duplicate."""
    st = make_stack()
    c = open_passive(st)
    c.write(MSS)
    c.expect(c.seg(0))
    c.ack_seg(1)
    for _ in range(4):
        c.ack_seg(1)
    st.expect_nothing()
    k = st.counters()
    assert k["tcp_fast_retransmits"] == 0 and k["tcp_retransmits"] == 0


def test_recovery_dupacks_inflate_cwnd_and_release_new_data(make_stack):
    """RFC 6582 3.2 step 4 / RFC 5681 3.2 step 4-5: each further dupack adds
    one SMSS; new data goes out once cwnd exceeds the 10 in flight."""
    st = make_stack()
    c = ten_in_flight(st, total_segs=15)
    for _ in range(3):
        c.ack_seg(0)
    c.expect(c.seg(0))  # cwnd = 5 + 3 = 8 segments
    c.ack_seg(0)  # 9
    st.expect_nothing()
    assert c.info()["cwnd"] == 9 * MSS
    c.ack_seg(0)  # 10
    st.expect_nothing()
    c.ack_seg(0)  # 11 > 10 in flight
    c.expect(c.seg(10))
    c.ack_seg(0)  # 12
    c.expect(c.seg(11))
    assert ctr(st, "tcp_fast_retransmits") == 1


def test_partial_ack_retransmits_next_hole(make_stack):
    """RFC 6582 3.2 step 5: a partial ACK retransmits the first unacked
    segment at once and deflates cwnd by the amount acked, plus one SMSS."""
    st = make_stack()
    c = ten_in_flight(st)
    for _ in range(3):
        c.ack_seg(0)
    c.expect(c.seg(0))
    c.ack_seg(3)  # segments 0-2 acked, 3 lost too; recover is the end of 9
    c.expect(c.seg(3))
    assert ctr(st, "tcp_partial_acks") == 1
    assert c.info()["cwnd"] == (8 - 3 + 1) * MSS
    c.ack_seg(3)  # a dupack in recovery: inflate, no third retransmission
    st.expect_nothing()
    assert ctr(st, "tcp_fast_retransmits") == 1
    assert ctr(st, "tcp_retransmits") == 2


def test_full_ack_exits_recovery(make_stack):
    """RFC 6582 3.2 step 3: an ACK of everything up to `recover` ends
    recovery with cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS) or
    cwnd = ssthresh; the pending data then goes out under that cwnd."""
    st = make_stack()
    c = ten_in_flight(st, total_segs=20)
    for _ in range(3):
        c.ack_seg(0)
    c.expect(c.seg(0))
    c.ack_seg(10)
    i = c.info()
    assert i["ssthresh"] == 5 * MSS
    assert i["cwnd"] in (2 * MSS, 5 * MSS)
    n = i["cwnd"] // MSS
    c.expect(*(c.seg(10 + k) for k in range(n)))
    # out of recovery: further duplicates are counted afresh
    c.ack_seg(10)
    c.ack_seg(10)
    st.expect_nothing()
    assert ctr(st, "tcp_partial_acks") == 0


def test_no_fast_retransmit_for_dupacks_below_recover(make_stack):
    """RFC 6582 3.2 step 2: after an RTO (recover = highest sent), duplicate
    ACKs whose ACK does not exceed recover do not start fast retransmit."""
    st = make_stack()
    c = open_passive(st)
    c.write(4 * MSS)
    c.expect(*(c.seg(i) for i in range(4)))
    st.advance(200)
    c.expect(c.seg(0))
    c.ack_seg(1)
    c.expect(c.seg(1), c.seg(2))
    for _ in range(3):
        c.ack_seg(1)  # below recover (end of segment 3)
    st.expect_nothing()
    assert ctr(st, "tcp_fast_retransmits") == 0


# ===========================================================================
# Congestion window (RFC 5681 3.1, RFC 6928)
# ===========================================================================

def test_initial_window_ten_segments(make_stack):
    """RFC 6928: IW = min(10 MSS, max(2 MSS, 14600)) = 10 x 1460."""
    st = make_stack()
    c = open_passive(st)
    c.write(30 * MSS)
    c.expect(*(c.seg(i) for i in range(10)))
    st.advance(10)
    st.expect_nothing()


def test_initial_cwnd_is_exactly_iw_active_open(make_stack):
    """RFC 6928 / RFC 5681 3.1: cwnd starts at IW = 14600 bytes."""
    st = make_stack()
    c = open_active(st)
    assert c.info()["cwnd"] == 14600
    assert c.info()["ssthresh"] >= 65535  # "arbitrarily high"


def test_initial_cwnd_is_exactly_iw_passive_open(make_stack):
    """The same on the passive side: the ACK of our SYN-ACK completes the
    handshake and is no slow-start increment (Linux: tcp_init_transfer sets
    the initial cwnd after that ACK is processed)."""
    st = make_stack()
    c = open_passive(st)
    assert c.info()["cwnd"] == 14600


def test_initial_window_small_mss(make_stack):
    """MSS 536: min(5360, max(1072, 14600)) = 5360, ten segments."""
    st = make_stack()
    c = open_passive(st, mss=536)
    assert c.info()["mss"] == 536
    c.write(20 * 536)
    c.expect(*(c.d(i * 536, 536) for i in range(10)))


def test_initial_window_jumbo_mss(make_stack):
    """MSS 8960: min(89600, max(17920, 14600)) = 17920, two segments."""
    st = make_stack(mtu=9000)
    c = open_passive(st, mss=8960)
    assert c.info()["mss"] == 8960
    c.write(5 * 8960)
    c.expect(c.d(0, 8960), c.d(8960, 8960))


def test_slow_start_adds_one_segment_per_ack(make_stack):
    """RFC 5681 3.1 eq. (2): cwnd += min(N, SMSS) per ACK: every ACK of one
    segment releases two."""
    st = make_stack()
    c = ten_in_flight(st, total_segs=30)
    w0 = c.info()["cwnd"]
    c.ack_seg(1)
    c.expect(c.seg(10), c.seg(11))
    assert c.info()["cwnd"] == w0 + MSS
    c.ack_seg(2)
    c.expect(c.seg(12), c.seg(13))
    assert c.info()["cwnd"] == w0 + 2 * MSS


def test_congestion_avoidance_about_one_segment_per_rtt(make_stack):
    """RFC 5681 3.1: above ssthresh cwnd grows by one SMSS per RTT, counted
    in bytes acknowledged (RFC 3465 3.1): one SMSS once a cwnd of bytes is
    acknowledged."""
    st = make_stack()
    c = open_passive(st)
    c.write(40 * MSS)
    c.expect(*(c.seg(i) for i in range(10)))
    # RTO: ssthresh = 5 segments, cwnd 1; grow back to ssthresh
    st.advance(200)
    c.expect(c.seg(0))
    acked = 0
    while c.info()["cwnd"] < c.info()["ssthresh"]:
        acked += 1
        before = c.info()["cwnd"]
        c.ack_seg(acked)
        assert c.info()["cwnd"] == before + MSS  # slow start below ssthresh
        st.take_tcp()
    assert c.info()["ssthresh"] == 5 * MSS
    # one window's worth of ACKs in congestion avoidance
    start = c.info()["cwnd"]
    per_ack = []
    for _ in range(start // MSS):
        acked += 1
        before = c.info()["cwnd"]
        c.ack_seg(acked)
        st.take_tcp()
        per_ack.append(c.info()["cwnd"] - before)
    grown = c.info()["cwnd"] - start
    assert sorted(per_ack) == [0] * (len(per_ack) - 1) + [MSS], per_ack
    assert grown == MSS, grown


def test_delayed_acks_do_not_slow_the_growth(make_stack):
    """RFC 3465: an ACK of two segments grows slow start by two SMSS (L =
    2 SMSS), and congestion avoidance by bytes, so a peer that ACKs every
    other segment sees the same growth per round trip."""
    st = make_stack()
    c = ten_in_flight(st, total_segs=40)
    w0 = c.info()["cwnd"]
    c.ack_seg(2)
    assert c.info()["cwnd"] == w0 + 2 * MSS
    c.expect(*(c.seg(i) for i in range(10, 14)))
