"""The sender's side of SACK: the scoreboard (RFC 2018) and loss recovery
by it (RFC 6675), against a scripted peer that SACKs what it holds."""
from harness import MSS, ctr, open_passive


def sack(c, *ranges, ack=0, payload=b""):
    """The peer ACKs offset ack and SACKs the given [start, end) segment
    number ranges (full-sized segments)."""
    blocks = tuple(x for a, b in ranges for x in (c.seq(a * MSS), c.seq(b * MSS)))
    c.p.seg("PA" if payload else "A", payload=payload, ack=c.seq(ack * MSS), options=[("SAck", blocks)])


def sending(make_stack, nseg=10, **kw):
    """An established connection that has just sent nseg full segments,
    all unacknowledged; SACK negotiated."""
    s = make_stack(**kw)
    c = open_passive(s, sack=True, rtt_ms=10)
    c.write(nseg * MSS)
    c.expect(*[c.seg(i) for i in range(nseg)])
    return s, c


def test_three_sacked_segments_above_a_hole_resend_it(make_stack):
    s, c = sending(make_stack)
    sack(c, (1, 2))
    sack(c, (1, 3))
    s.expect_nothing()          # two segments SACKed: not yet lost (2 * SMSS)
    sack(c, (1, 4))
    c.expect(c.seg(0))          # IsLost(HighACK + 1): resent at once
    assert ctr(s, "tcp_sack_recoveries") == 1 and ctr(s, "tcp_fast_retransmits") == 1
    i = c.info()
    assert i["ssthresh"] == i["cwnd"] == 5 * MSS   # half the flight (RFC 6675 4.2)


def test_every_hole_is_resent_in_one_round_trip(make_stack):
    s, c = sending(make_stack)
    # segments 0, 3 and 6 lost; the rest SACKed as it arrives
    sack(c, (1, 2))
    sack(c, (1, 3))
    sack(c, (1, 3), (4, 5))
    c.expect(c.seg(0))
    sack(c, (1, 3), (4, 6))
    sack(c, (1, 3), (4, 6), (7, 8))
    # pipe fell below cwnd: the next lost hole goes (rule 1), not new data
    c.expect(c.seg(3))
    sack(c, (1, 3), (4, 6), (7, 9))
    sack(c, (1, 3), (4, 6), (7, 10))
    c.expect(c.seg(6))
    assert ctr(s, "tcp_sack_recoveries") == 1 and ctr(s, "tcp_retransmits") == 3
    assert ctr(s, "tcp_rto_expired") == 0


def test_acks_carrying_data_count_when_they_sack_new_data(make_stack):
    # RFC 5681 would not count these (they carry data); RFC 6675 does, so a
    # connection busy in both directions still repairs a loss at once.
    s, c = sending(make_stack)
    for k in (2, 3, 4):
        sack(c, (1, k), payload=b"x")
    out = s.take_tcp()
    assert [x.seq for x in out if len(x.payload) == MSS] == [c.seq(0)]
    assert ctr(s, "tcp_sack_recoveries") == 1


def test_full_ack_ends_the_recovery(make_stack):
    s, c = sending(make_stack)
    sack(c, (1, 4))
    c.expect(c.seg(0))
    c.ack_seg(10)
    i = c.info()
    assert i["cwnd"] <= i["ssthresh"] + MSS
    # a new loss after the recovery point starts a new recovery
    c.write(10 * MSS)
    c.expect(*[c.seg(i) for i in range(10, 10 + i["cwnd"] // MSS)])


def test_new_data_goes_while_holes_wait_for_their_acks(make_stack):
    s, c = sending(make_stack, nseg=10)
    c.write(10 * MSS)           # more waits in the buffer
    sack(c, (1, 4))
    c.expect(c.seg(0))
    # each further SACK takes a segment out of the network: room for one
    # more, and with no lost hole left the room goes to new data (rule 2)
    sack(c, (1, 5))
    sack(c, (1, 6))
    sack(c, (1, 7))
    sack(c, (1, 8))
    out = s.take_tcp()
    assert out and all(x.seq == c.seq(10 * MSS) + k * MSS for k, x in enumerate(out))


def test_dsack_block_is_counted_and_starts_nothing(make_stack):
    s, c = sending(make_stack)
    c.ack_seg(2)
    # the peer got segment 0 twice and says so (RFC 2883): a block below the ACK
    sack(c, (0, 1), ack=2)
    assert ctr(s, "tcp_dsack_rx") == 1
    assert ctr(s, "tcp_sack_recoveries") == 0
    s.expect_nothing()


def test_sack_beyond_what_was_sent_is_ignored(make_stack):
    s, c = sending(make_stack)
    sack(c, (11, 14))
    sack(c, (1, 2), (11, 14))
    assert ctr(s, "drop_tcp_bad_sack") == 2
    assert ctr(s, "tcp_sack_recoveries") == 0
    s.expect_nothing()
    assert c.info()["cwnd"] == 10 * MSS


def test_after_a_timeout_go_back_n_skips_what_the_peer_holds(make_stack):
    s, c = sending(make_stack, nseg=5)
    sack(c, (1, 3))             # not enough to call segment 0 lost
    s.advance(c.info()["rto_us"] / 1000)
    c.expect(c.seg(0))
    c.ack_seg(3)                # the hole filled: the peer had 1 and 2
    c.expect(c.seg(3), c.seg(4))   # slow start resumes past them
    assert ctr(s, "tcp_retransmits") == 3


def test_sack_reneging_forgets_the_scoreboard(make_stack):
    # The peer SACKed 1-2, then acknowledges only up to 1 after the timeout:
    # it discarded what it SACKed (RFC 2018 8), so 1 and 2 go again.
    s, c = sending(make_stack, nseg=5)
    sack(c, (1, 3))
    s.advance(c.info()["rto_us"] / 1000)
    c.expect(c.seg(0))
    c.ack_seg(1)
    assert ctr(s, "tcp_sack_reneging") == 1
    c.expect(c.seg(1), c.seg(2))


def test_sack_ignored_when_not_negotiated(make_stack):
    s = make_stack()
    c = open_passive(s, rtt_ms=10)          # the peer offered no SACK
    c.write(10 * MSS)
    c.expect(*[c.seg(i) for i in range(10)])
    for k in (2, 3, 4):
        sack(c, (1, k), payload=b"x")       # data-carrying: not duplicates
    out = s.take_tcp()
    assert not [x for x in out if len(x.payload) == MSS]
    assert ctr(s, "tcp_sack_recoveries") == 0
