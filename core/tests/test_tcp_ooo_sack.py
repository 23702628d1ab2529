"""Out-of-order reception, SACK (RFC 2018), reassembly (RFC 9293 3.10.7.4),
and timestamps / PAWS (RFC 7323), as packet scripts against the engine."""

from harness import ERRNO, Peer, passive_open, active_open, tcp_options

# A recognisable byte stream: byte i of the peer's stream is STREAM[i].
STREAM = bytes((i * 7 + i // 256) % 251 for i in range(20000))


def sack_conn(stack, listener, ts=None, **kw):
    """A passive connection with SACK negotiated (and timestamps if ts)."""
    peer = Peer(stack, sack=True, ts=ts, **kw)
    opts = {"SAckOK": True}
    if ts is not None:
        opts["Timestamp"] = None
    sid = passive_open(stack, listener, peer, expect_opts=opts)
    info = stack.info(sid)
    assert info["sack_ok"] == 1
    return sid, peer


def ts_opts(peer):
    return peer.ts_option(peer.stack_ts)


def send_part(peer, base, a, b, flags="A", ts=False):
    """Sends stream bytes [a, b) at sequence number base + a, without moving
    the peer's own sequence number."""
    opts = ts_opts(peer) if ts else None
    return peer.seg(flags, STREAM[a:b], seq=(base + a) % 2**32, options=opts)


def sack_blocks(seg):
    edges = tcp_options(seg).get("SAck", ())
    return [tuple(edges[i:i + 2]) for i in range(0, len(edges), 2)]


# ---------------------------------------------------------------------------
# Out-of-order reception and SACK (RFC 2018, RFC 5681 4.2, RFC 9293 3.10.7.4)
# ---------------------------------------------------------------------------

def test_gap_sends_immediate_dup_ack_with_sack_block(stack, listener):
    sid, peer = sack_conn(stack, listener)
    base = peer.nxt
    send_part(peer, base, 100, 200)
    # RFC 5681 4.2: an out-of-order segment is ACKed at once; RFC 2018 3:
    # the ACK carries a SACK block for the range received.
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": base, "opts": {"SAck": (base + 100, base + 200)}})
    assert stack.read(sid) == ERRNO["EAGAIN"]
    assert stack.counters()["tcp_ooo_segments"] == 1


def test_first_sack_block_is_most_recent_arrival(stack, listener):
    sid, peer = sack_conn(stack, listener)
    base = peer.nxt
    send_part(peer, base, 100, 200)
    stack.expect({"flags": "A", "ack": base})
    send_part(peer, base, 300, 400)
    (a,) = stack.expect({"flags": "A", "ack": base})
    assert sack_blocks(a) == [(base + 300, base + 400), (base + 100, base + 200)]
    send_part(peer, base, 500, 600)
    (a,) = stack.expect({"flags": "A", "ack": base})
    assert sack_blocks(a) == [(base + 500, base + 600), (base + 300, base + 400), (base + 100, base + 200)]
    # A segment extending an older block makes that block the first one.
    send_part(peer, base, 200, 250)
    (a,) = stack.expect({"flags": "A", "ack": base})
    assert sack_blocks(a) == [(base + 100, base + 250), (base + 500, base + 600), (base + 300, base + 400)]
    assert stack.counters()["tcp_ooo_segments"] == 4


def test_at_most_four_sack_blocks_without_timestamps(stack, listener):
    sid, peer = sack_conn(stack, listener)
    base = peer.nxt
    for k in range(5):
        send_part(peer, base, 100 + 200 * k, 200 + 200 * k)
        stack.take_tcp()
    send_part(peer, base, 1100, 1200)
    (a,) = stack.expect({"flags": "A", "ack": base})
    # RFC 2018 3: 40 bytes of option space hold four blocks.
    assert sack_blocks(a) == [(base + 1100, base + 1200), (base + 900, base + 1000), (base + 700, base + 800),
                              (base + 500, base + 600)]
    assert "Timestamp" not in tcp_options(a)
    assert stack.counters()["tcp_ooo_segments"] == 6


def test_at_most_three_sack_blocks_with_timestamps(stack, listener):
    sid, peer = sack_conn(stack, listener, ts=100)
    base = peer.nxt
    for k in range(4):
        send_part(peer, base, 100 + 200 * k, 200 + 200 * k, ts=True)
        stack.take_tcp()
    send_part(peer, base, 900, 1000, ts=True)
    (a,) = stack.expect({"flags": "A", "ack": base, "opts": {"Timestamp": None}})
    # RFC 2018 3: beside the 10-byte timestamp option only three fit.
    assert sack_blocks(a) == [(base + 900, base + 1000), (base + 700, base + 800), (base + 500, base + 600)]
    assert stack.counters()["tcp_ooo_segments"] == 5


def test_filling_the_gap_delivers_in_order_and_acks_at_once(stack, listener):
    sid, peer = sack_conn(stack, listener)
    base = peer.nxt
    send_part(peer, base, 100, 200)
    send_part(peer, base, 300, 400)
    stack.take_tcp()
    send_part(peer, base, 0, 100)
    # The first hole is filled: RCV.NXT jumps over the queued range and the
    # ACK goes out at once (RFC 5681 4.2), still reporting the other range.
    (a,) = stack.expect({"flags": "A", "ack": base + 200})
    assert sack_blocks(a) == [(base + 300, base + 400)]
    assert stack.read(sid) == STREAM[:200]
    send_part(peer, base, 200, 300)
    (a,) = stack.expect({"flags": "A", "ack": base + 400, "noopts": ["SAck"]})
    assert stack.read(sid) == STREAM[200:400]
    assert stack.info(sid)["rcv_nxt"] == base + 400
    assert stack.counters()["tcp_ooo_segments"] == 2


def test_partly_filling_the_gap_acks_at_once(stack, listener):
    sid, peer = sack_conn(stack, listener)
    base = peer.nxt
    send_part(peer, base, 200, 300)
    stack.take_tcp()
    send_part(peer, base, 0, 100)
    # RFC 5681 4.2: a segment filling part of a gap is ACKed at once.
    (a,) = stack.expect({"flags": "A", "ack": base + 100})
    assert sack_blocks(a) == [(base + 200, base + 300)]
    assert stack.read(sid) == STREAM[:100]
    assert stack.counters()["tcp_ooo_segments"] == 1


def test_filling_gap_delivers_everything_in_one_read(stack, listener):
    sid, peer = sack_conn(stack, listener)
    base = peer.nxt
    for a, b in [(400, 500), (300, 400), (100, 300)]:
        send_part(peer, base, a, b)
    stack.take_tcp()
    assert stack.read(sid) == ERRNO["EAGAIN"]
    send_part(peer, base, 0, 100)
    stack.expect({"flags": "A", "ack": base + 500, "noopts": ["SAck"]})
    assert stack.read(sid) == STREAM[:500]
    assert stack.counters()["tcp_ooo_segments"] == 3


def test_overlapping_out_of_order_segments_merge(stack, listener):
    sid, peer = sack_conn(stack, listener)
    base = peer.nxt
    send_part(peer, base, 200, 300)
    stack.take_tcp()
    send_part(peer, base, 250, 400)
    (a,) = stack.expect({"flags": "A", "ack": base})
    assert sack_blocks(a) == [(base + 200, base + 400)]
    send_part(peer, base, 150, 220)
    (a,) = stack.expect({"flags": "A", "ack": base})
    assert sack_blocks(a) == [(base + 150, base + 400)]
    send_part(peer, base, 0, 150)
    stack.expect({"flags": "A", "ack": base + 400, "noopts": ["SAck"]})
    assert stack.read(sid) == STREAM[:400]
    assert stack.counters()["tcp_ooo_segments"] == 3


def test_duplicate_out_of_order_segment(stack, listener):
    sid, peer = sack_conn(stack, listener)
    base = peer.nxt
    send_part(peer, base, 100, 200)
    stack.take_tcp()
    send_part(peer, base, 100, 200)
    (a,) = stack.expect({"flags": "A", "ack": base})
    assert sack_blocks(a)[0] == (base + 100, base + 200)
    send_part(peer, base, 0, 100)
    stack.expect({"flags": "A", "ack": base + 200})
    assert stack.read(sid) == STREAM[:200]
    assert stack.counters()["drop_tcp_ooo_full"] == 0


def test_overlap_with_received_data_keeps_only_new_bytes(passive):
    stack, sid, peer = passive
    base = peer.nxt
    peer.seg("A", STREAM[0:100], seq=base)
    # The second segment repeats bytes 50..99 with other contents; RFC 9293
    # 3.10.7.4: only the new part is processed.
    forged = bytes(50) + STREAM[100:150]
    peer.seg("A", forged, seq=base + 50)
    stack.advance(40)
    stack.expect({"flags": "A", "ack": base + 150})
    assert stack.read(sid) == STREAM[:150]
    assert stack.counters()["drop_tcp_out_of_window"] == 0


def test_duplicate_old_segment_is_acked_and_not_delivered_twice(passive):
    stack, sid, peer = passive
    base = peer.nxt
    peer.seg("A", STREAM[0:100], seq=base)
    stack.advance(40)
    stack.expect({"flags": "A", "ack": base + 100})
    assert stack.read(sid) == STREAM[:100]
    peer.seg("A", STREAM[0:100], seq=base)
    # RFC 9293 3.10.7.4: not acceptable; send an ACK and drop it.
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": base + 100})
    assert stack.read(sid) == ERRNO["EAGAIN"]
    assert stack.counters()["drop_tcp_out_of_window"] == 1


def test_out_of_order_fin_is_held_until_gap_fills(passive):
    stack, sid, peer = passive
    base = peer.nxt
    peer.seg("FA", STREAM[100:200], seq=base + 100)
    stack.expect({"flags": "A", "ack": base})
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.read(sid) == ERRNO["EAGAIN"]
    peer.seg("A", STREAM[0:100], seq=base)
    # The gap fills: the data and then the FIN are taken, ACKed at once.
    stack.expect({"flags": "A", "ack": base + 201})
    assert stack.state(sid) == "CLOSE_WAIT"
    assert stack.read(sid) == STREAM[:200]
    assert stack.read(sid) == b""
    assert stack.counters()["tcp_ooo_segments"] == 1


def test_data_beyond_the_window_is_trimmed(make_stack):
    stack = make_stack(rcvbuf=4096)
    lsid = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, lsid, peer)
    base = peer.nxt
    assert stack.info(sid)["rcv_wnd"] == 4096
    peer.seg("A", STREAM[:6000], seq=base)
    stack.advance(200)
    # Only the 4096 bytes inside the offered window are kept.
    stack.expect({"flags": "A", "ack": base + 4096, "window": 0})
    assert stack.read(sid) == STREAM[:4096]
    assert stack.counters()["drop_tcp_out_of_window"] == 0


def test_out_of_order_data_beyond_window_is_trimmed(make_stack):
    stack = make_stack(rcvbuf=4096)
    lsid = stack.listen(80)
    peer = Peer(stack, sack=True)
    sid = passive_open(stack, lsid, peer)
    base = peer.nxt
    peer.seg("A", STREAM[3000:5000], seq=base + 3000)
    (a,) = stack.expect({"flags": "A", "ack": base})
    assert sack_blocks(a) == [(base + 3000, base + 4096)]
    peer.seg("A", STREAM[0:3000], seq=base)
    stack.advance(200)
    segs = stack.take_tcp()
    assert segs and segs[-1].ack == base + 4096
    assert stack.read(sid) == STREAM[:4096]


def test_segment_starting_beyond_window_is_dropped_with_ack(make_stack):
    stack = make_stack(rcvbuf=4096)
    lsid = stack.listen(80)
    peer = Peer(stack, sack=True)
    sid = passive_open(stack, lsid, peer)
    base = peer.nxt
    peer.seg("A", STREAM[4096:4200], seq=base + 4096)
    stack.expect({"flags": "A", "ack": base, "noopts": ["SAck"]})
    c = stack.counters()
    assert c["drop_tcp_out_of_window"] == 1
    assert c["tcp_ooo_segments"] == 0


def test_no_sack_blocks_when_not_negotiated(passive):
    stack, sid, peer = passive
    assert stack.info(sid)["sack_ok"] == 0
    base = peer.nxt
    peer.seg("A", STREAM[100:200], seq=base + 100)
    stack.expect({"flags": "A", "ack": base, "noopts": ["SAck"]})
    assert stack.counters()["tcp_ooo_segments"] == 1
    peer.seg("A", STREAM[0:100], seq=base)
    stack.expect({"flags": "A", "ack": base + 200, "noopts": ["SAck"]})
    assert stack.read(sid) == STREAM[:200]


def test_sack_not_negotiated_when_stack_syn_ack_lacks_peer_offer(stack, listener):
    # The peer offers nothing: the SYN-ACK must not offer SACK either
    # (RFC 2018 2: SACK-permitted only in a SYN and only if offered).
    peer = Peer(stack, sack=False)
    peer.seg("S", options=peer.syn_options())
    stack.expect({"flags": "SA", "ack": peer.nxt, "noopts": ["SAckOK", "Timestamp", "WScale"]})
    assert stack.counters()["tcp_passive_opens"] == 1


def test_active_open_without_peer_sack_sends_no_blocks(stack):
    peer = Peer(stack, sack=False)
    sid = active_open(stack, peer)
    assert stack.info(sid)["sack_ok"] == 0
    base = peer.nxt
    peer.seg("A", STREAM[50:80], seq=base + 50)
    stack.expect({"flags": "A", "ack": base, "noopts": ["SAck"]})
    assert stack.counters()["tcp_ooo_segments"] == 1


def test_active_open_with_sack_reports_blocks(stack):
    peer = Peer(stack, sack=True)
    sid = active_open(stack, peer)
    assert stack.info(sid)["sack_ok"] == 1
    base = peer.nxt
    peer.seg("A", STREAM[50:80], seq=base + 50)
    stack.expect({"flags": "A", "ack": base, "opts": {"SAck": (base + 50, base + 80)}})
    assert stack.counters()["tcp_ooo_segments"] == 1


# ---------------------------------------------------------------------------
# Timestamps and PAWS (RFC 7323)
# ---------------------------------------------------------------------------

def test_timestamps_negotiated_when_both_offer(stack, listener):
    peer = Peer(stack, ts=5000)
    sid = passive_open(stack, listener, peer, expect_opts={"Timestamp": None})
    assert stack.info(sid)["ts_ok"] == 1
    # RFC 7323 / RFC 9293 3.7.1: the option's 12 bytes come out of the MSS.
    assert stack.info(sid)["mss"] == 1460 - 12
    assert stack.counters()["drop_tcp_paws"] == 0


def test_syn_ack_echoes_syn_tsval(stack, listener):
    peer = Peer(stack, ts=777)
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA"})
    assert tcp_options(sa)["Timestamp"][1] == 777
    assert stack.counters()["tcp_passive_opens"] == 1


def test_no_timestamps_when_peer_does_not_offer(passive):
    stack, sid, peer = passive
    assert stack.info(sid)["ts_ok"] == 0
    assert stack.write(sid, b"x" * 10) == 10
    stack.expect({"flags": "PA", "len": 10, "noopts": ["Timestamp"]})
    assert stack.counters()["tcp_tx_segments"] == 2  # SYN-ACK, data


def test_no_timestamps_when_peer_syn_ack_omits_them(stack):
    # The stack offers TS in its SYN; the peer does not answer with one.
    peer = Peer(stack, ts=None)
    sid = active_open(stack, peer)
    assert stack.info(sid)["ts_ok"] == 0
    assert stack.write(sid, b"abc") == 3
    stack.expect({"flags": "PA", "payload": b"abc", "noopts": ["Timestamp"]})
    assert stack.counters()["tcp_active_opens"] == 1


def test_every_segment_carries_timestamp_echoing_ts_recent(stack, listener):
    peer = Peer(stack, ts=100)
    sid = passive_open(stack, listener, peer)
    peer.tsval = 200
    peer.seg("PA", b"hello", options=ts_opts(peer))
    stack.advance(40)
    (a,) = stack.expect({"flags": "A", "ack": peer.nxt})
    tsval1, tsecr = tcp_options(a)["Timestamp"]
    assert tsecr == 200
    stack.advance(10)
    assert stack.write(sid, b"world") == 5
    (d,) = stack.expect({"flags": "PA", "payload": b"world"})
    tsval2, tsecr = tcp_options(d)["Timestamp"]
    assert tsecr == 200
    assert (tsval2 - tsval1) % 2**32 < 2**31  # TSval never goes back
    assert stack.counters()["tcp_delayed_acks"] == 1


def test_ts_recent_not_updated_by_out_of_order_segment(stack, listener):
    peer = Peer(stack, ts=100)
    sid = passive_open(stack, listener, peer)
    base = peer.nxt
    peer.tsval = 900
    peer.seg("A", STREAM[100:200], seq=base + 100, options=ts_opts(peer))
    # RFC 7323 4.3 (2): SEG.SEQ > Last.ACK.sent, TS.Recent stays 100.
    (a,) = stack.expect({"flags": "A", "ack": base})
    assert tcp_options(a)["Timestamp"][1] == 100
    assert stack.counters()["tcp_ooo_segments"] == 1


def test_paws_drops_old_timestamp_and_acks(stack, listener):
    peer = Peer(stack, ts=100)
    sid = passive_open(stack, listener, peer)
    peer.tsval = 200
    peer.seg("PA", b"first", options=ts_opts(peer))
    stack.advance(40)
    stack.expect({"flags": "A", "ack": peer.nxt})
    peer.tsval = 150  # older than TS.Recent (200)
    peer.seg("PA", b"stale", options=ts_opts(peer), advance=False)
    # RFC 7323 5.3 R1: not acceptable; ACK and drop.
    (a,) = stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert tcp_options(a)["Timestamp"][1] == 200
    assert stack.read(sid) == b"first"
    assert stack.read(sid) == ERRNO["EAGAIN"]
    assert stack.counters()["drop_tcp_paws"] == 1


def test_paws_exempts_rst(stack, listener):
    peer = Peer(stack, ts=100)
    sid = passive_open(stack, listener, peer)
    peer.tsval = 500
    peer.seg("PA", b"data", options=ts_opts(peer))
    stack.advance(40)
    stack.take_tcp()
    peer.tsval = 10  # old, but RSTs are not subject to PAWS
    peer.seg("R", options=ts_opts(peer))
    stack.expect_nothing()
    c = stack.counters()
    assert c["drop_tcp_paws"] == 0
    assert c["tcp_estab_resets"] == 1
    assert stack.state(sid) == "CLOSED"


def test_paws_accepts_equal_timestamp(stack, listener):
    peer = Peer(stack, ts=100)
    sid = passive_open(stack, listener, peer)
    peer.tsval = 100
    peer.seg("PA", b"same-ts", options=ts_opts(peer))
    stack.advance(40)
    stack.expect({"flags": "A", "ack": peer.nxt})
    assert stack.read(sid) == b"same-ts"
    assert stack.counters()["drop_tcp_paws"] == 0


def test_fin_beyond_the_window_is_not_processed(make_stack):
    stack = make_stack(rcvbuf=4096)
    lsid = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, lsid, peer)
    base = peer.nxt
    # Data past the window is cut, and the FIN after it with it.
    peer.seg("FA", STREAM[:5000], seq=base)
    stack.advance(200)
    stack.expect({"flags": "A", "ack": base + 4096})
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.read(sid) == STREAM[:4096]
    assert stack.read(sid) == ERRNO["EAGAIN"]  # no end of stream
    assert stack.counters()["drop_tcp_out_of_window"] == 0


def test_timestamps_negotiated_on_active_open(stack):
    peer = Peer(stack, ts=3000)
    sid = stack.socket()
    assert stack.connect(sid, "198.18.0.1", 80) == ERRNO["EINPROGRESS"]
    (syn,) = stack.expect({"flags": "S", "opts": {"Timestamp": None}})
    assert tcp_options(syn)["Timestamp"][1] == 0
    peer.sport, peer.dport = 80, syn.sport
    peer.rcv = syn.seq + 1
    peer.seg("SA", ack=peer.rcv, options=[("MSS", 1460), ("Timestamp", (3000, tcp_options(syn)["Timestamp"][0]))])
    (a,) = stack.expect({"flags": "A", "ack": peer.nxt})
    assert tcp_options(a)["Timestamp"][1] == 3000
    assert stack.info(sid)["ts_ok"] == 1
    assert stack.counters()["tcp_active_opens"] == 1


# ---------------------------------------------------------------------------
# Segment size with SACK blocks (RFC 9293 3.7.1: options come out of the MSS)
# ---------------------------------------------------------------------------

def test_data_segments_make_room_for_sack_blocks(stack, listener):
    """While out-of-order data waits, every segment carries SACK blocks; a
    data segment shrinks by their size so the packet stays within the MTU."""
    peer = Peer(stack, sack=True, ts=100)
    sid = passive_open(stack, listener, peer)
    # one hole: the peer's bytes 100..199 arrive before 0..99
    o = peer.ts_option(peer.stack_ts)
    peer.seg("PA", b"y" * 100, seq=(peer.nxt + 100) % 2**32, options=o, advance=False)
    (dup,) = stack.expect({"flags": "A", "ack": peer.nxt})
    assert "SAck" in tcp_options(dup)
    assert stack.write(sid, bytes(4000)) == 4000
    segs = stack.take_tcp()
    assert segs, "nothing sent"
    for s in segs:
        opts = tcp_options(s)
        assert "SAck" in opts and "Timestamp" in opts
        # 1460 - 12 (timestamps) - 12 (one SACK block with its NOPs and header)
        assert len(bytes(s.payload)) <= 1460 - 12 - 12
        assert len(bytes(s.underlayer)) <= 1500
    assert len(bytes(segs[0].payload)) == 1460 - 12 - 12
