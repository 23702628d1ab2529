"""Packet scripts walking the TCP state diagram of RFC 9293 section 3.3.2.

Every test states exactly which segments the stack must send and where it
must stay silent.  The expected behaviour is RFC 9293's (with RFC 5961 and
RFC 7323 where they apply) and, where the RFC leaves a choice, the Linux
kernel's.
"""
import pytest

from harness import ERRNO, Peer, match, passive_open, tcp_options
from preload.engine import lib

M32 = 2**32

# RFC 9293 3.10.7.4 eighth step: a FIN is acknowledged.  Going to CLOSE-WAIT,
# Linux delays that ACK (pingpong mode, hoping to carry it on its own FIN)
# within the delayed-ACK bound; sending it at once is as good.  Tests allow
# either: exactly one ACK within FIN_ACK_MS.
FIN_ACK_MS = 100


def add(a, b):
    return (a + b) % M32


def seq_gt(a, b):
    return 0 < (a - b) % M32 < 2**31


def gauge(stack, state):
    return stack.counters()["tcp_state"][state]


def connections(stack):
    """Connections in any state but CLOSED and LISTEN."""
    g = stack.counters()["tcp_state"]
    return sum(v for k, v in g.items() if k not in ("CLOSED", "LISTEN"))


def snd_nxt(stack, sid):
    return stack.info(sid)["snd_nxt"]


def active_close_to_time_wait(stack, sid, peer, close=True):
    """The stack closes first (close() or shutdown(WR)); the peer ACKs the
    FIN, then sends its own.  Returns the sequence number of the stack's FIN."""
    fin = snd_nxt(stack, sid)
    if close:
        assert stack.close(sid) == 0
    else:
        assert stack.shutdown(sid, 1) == 0
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt, "len": 0})
    peer.rcv = add(fin, 1)
    peer.seg("A")
    stack.expect_nothing()
    peer.seg("FA")
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    return fin


# ===========================================================================
# LISTEN (RFC 9293 3.10.7.2)
# ===========================================================================

def test_listen_syn_with_mss_only_gets_synack_with_mss_only(stack, listener):
    peer = Peer(stack, mss=1400)
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": 1001, "opts": {"MSS": 1460},
                          "noopts": ["WScale", "SAckOK", "Timestamp"]})
    assert gauge(stack, "SYN_RECEIVED") == 1


def test_listen_syn_with_all_options_echoes_them(stack, listener):
    peer = Peer(stack, mss=1400, wscale=7, sack=True, ts=12345)
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": 1001,
                          "opts": {"MSS": 1460, "WScale": None, "SAckOK": True, "Timestamp": None}})
    o = tcp_options(sa)
    assert o["Timestamp"][1] == 12345  # TSecr echoes the SYN's TSval (RFC 7323 3.2)
    assert 0 <= o["WScale"] <= 14
    peer.rcv = add(sa.seq, 1)
    peer.seg("A", options=peer.ts_option(o["Timestamp"][0]))
    stack.expect_nothing()
    sid = stack.accept(listener)
    assert sid >= 0
    i = stack.info(sid)
    assert (i["ts_ok"], i["sack_ok"], i["snd_wscale"]) == (1, 1, 7)
    assert i["mss"] == 1400 - 12  # timestamps take 12 bytes of every segment


@pytest.mark.parametrize("opt", ["wscale", "sack", "ts"])
def test_listen_syn_single_option_echoed_alone(stack, listener, opt):
    kw = {"wscale": dict(wscale=2), "sack": dict(sack=True), "ts": dict(ts=777)}[opt]
    name = {"wscale": "WScale", "sack": "SAckOK", "ts": "Timestamp"}[opt]
    peer = Peer(stack, **kw)
    peer.seg("S", options=peer.syn_options())
    others = [n for n in ("WScale", "SAckOK", "Timestamp") if n != name]
    stack.expect({"flags": "SA", "ack": 1001, "opts": {"MSS": 1460, name: None}, "noopts": others})


def test_listen_syn_without_options_uses_default_mss_536(stack, listener):
    peer = Peer(stack, mss=None)
    sid = passive_open(stack, listener, peer, expect_opts={"MSS": 1460})
    assert stack.info(sid)["mss"] == 536  # RFC 9293 3.7.1 / RFC 1122 4.2.2.6


def test_listen_ack_only_gets_rst_seq_seg_ack(stack, listener):
    peer = Peer(stack)
    peer.seg("A", seq=5000, ack=777777)
    stack.expect({"flags": "R", "seq": 777777, "len": 0})
    assert connections(stack) == 0
    assert stack.accept(listener) == ERRNO["EAGAIN"]


def test_listen_synack_gets_rst_seq_seg_ack(stack, listener):
    peer = Peer(stack)
    peer.seg("SA", seq=5000, ack=4242, options=peer.syn_options())
    stack.expect({"flags": "R", "seq": 4242})
    assert connections(stack) == 0


@pytest.mark.parametrize("flags", ["R", "RA"])
def test_listen_rst_is_ignored(stack, listener, flags):
    peer = Peer(stack)
    peer.seg(flags, seq=5000, ack=1234)
    stack.expect_nothing()
    assert connections(stack) == 0


@pytest.mark.parametrize("flags,payload", [("F", b""), ("", b""), ("", b"data"), ("P", b"data"), ("FP", b"x")])
def test_listen_segment_without_syn_or_ack_is_ignored(stack, listener, flags, payload):
    peer = Peer(stack)
    peer.seg(flags, payload, seq=5000)
    stack.expect_nothing()
    assert connections(stack) == 0
    assert stack.accept(listener) == ERRNO["EAGAIN"]


def test_listen_syn_with_data_acks_only_the_syn(stack, listener):
    # Without TCP Fast Open Linux drops the data of a SYN; the SYN-ACK
    # acknowledges the SYN alone and the peer sends the data again.
    peer = Peer(stack)
    peer.seg("S", b"early", options=peer.syn_options(), advance=False)
    (sa,) = stack.expect({"flags": "SA", "ack": 1001})
    peer.nxt = 1001
    peer.rcv = add(sa.seq, 1)
    peer.seg("A")
    stack.expect_nothing()
    sid = stack.accept(listener)
    assert sid >= 0
    assert stack.read(sid) == ERRNO["EAGAIN"]
    peer.seg("PA", b"early")
    assert stack.read(sid) == b"early"


def test_listen_handshake_fills_tcb(stack, listener):
    peer = Peer(stack, isn=123456)
    sid = passive_open(stack, listener, peer)
    i = stack.info(sid)
    assert i["state"] == "ESTABLISHED"
    assert (i["local_port"], i["remote_port"]) == (80, 40000)
    assert (i["irs"], i["rcv_nxt"]) == (123456, 123457)
    assert i["snd_una"] == i["snd_nxt"] == add(i["iss"], 1)
    assert stack.counters()["tcp_passive_opens"] == 1


# ===========================================================================
# SYN-SENT (RFC 9293 3.10.7.3)
# ===========================================================================

def connect(stack, port=80):
    sid = stack.socket()
    assert stack.connect(sid, port=port) == ERRNO["EINPROGRESS"]
    (syn,) = stack.expect({"flags": "S", "dport": port, "ack": 0, "len": 0})
    return sid, syn


def test_syn_sent_syn_carries_options(stack):
    sid, syn = connect(stack)
    assert syn.seq == stack.info(sid)["iss"]
    match(syn, {"opts": {"MSS": 1460, "WScale": None, "SAckOK": True, "Timestamp": None}})
    o = tcp_options(syn)
    assert o["Timestamp"][1] == 0  # TSecr is zero in an initial SYN (RFC 7323 3.2)
    assert 0 <= o["WScale"] <= 14
    assert 32768 <= syn.sport <= 60999
    assert stack.state(sid) == "SYN_SENT"
    assert gauge(stack, "SYN_SENT") == 1


def test_syn_sent_synack_is_acked_and_established(stack):
    sid, syn = connect(stack)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=9000)
    peer.rcv = add(syn.seq, 1)
    peer.seg("SA", options=[("MSS", 1200)])
    stack.expect({"flags": "A", "seq": add(syn.seq, 1), "ack": 9001, "len": 0})
    i = stack.info(sid)
    assert i["state"] == "ESTABLISHED"
    assert (i["irs"], i["rcv_nxt"], i["snd_una"]) == (9000, 9001, add(syn.seq, 1))
    assert i["mss"] == 1200
    assert stack.counters()["tcp_active_opens"] == 1


def test_syn_sent_synack_without_options_disables_scaling_and_timestamps(stack):
    sid, syn = connect(stack)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=9000)
    peer.rcv = add(syn.seq, 1)
    peer.seg("SA", options=[("MSS", 1460)])
    (ack,) = stack.expect({"flags": "A", "seq": add(syn.seq, 1), "ack": 9001,
                           "noopts": ["Timestamp", "SAck"]})
    i = stack.info(sid)
    assert (i["ts_ok"], i["sack_ok"], i["snd_wscale"], i["rcv_wscale"]) == (0, 0, 0, 0)
    assert 0 < ack.window <= 65535


def test_syn_sent_synack_timestamp_is_echoed(stack):
    sid, syn = connect(stack)
    stack_tsval = tcp_options(syn)["Timestamp"][0]
    peer = Peer(stack, sport=80, dport=syn.sport, isn=9000)
    peer.rcv = add(syn.seq, 1)
    peer.seg("SA", options=[("MSS", 1460), ("Timestamp", (5555, stack_tsval))])
    (ack,) = stack.expect({"flags": "A", "seq": add(syn.seq, 1), "ack": 9001, "opts": {"Timestamp": None}})
    assert tcp_options(ack)["Timestamp"][1] == 5555
    assert stack.info(sid)["ts_ok"] == 1


@pytest.mark.parametrize("delta", [1000, 0, -5])
def test_syn_sent_synack_with_bad_ack_gets_rst(stack, delta):
    # SEG.ACK =< ISS or SEG.ACK > SND.NXT: <SEQ=SEG.ACK><CTL=RST>, stay.
    sid, syn = connect(stack)
    bad = add(syn.seq, delta)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=9000)
    peer.seg("SA", ack=bad, options=[("MSS", 1460)], advance=False)
    stack.expect({"flags": "R", "seq": bad})
    assert stack.state(sid) == "SYN_SENT"
    # The real SYN-ACK still completes the handshake.
    peer.seg("SA", ack=add(syn.seq, 1), options=[("MSS", 1460)])
    stack.expect({"flags": "A", "seq": add(syn.seq, 1), "ack": 9001})
    assert stack.state(sid) == "ESTABLISHED"


def refused(stack):
    sid, syn = connect(stack)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=0)
    peer.seg("RA", seq=0, ack=add(syn.seq, 1))
    stack.expect_nothing()
    return sid


def test_syn_sent_rst_with_acceptable_ack_refuses_read(stack):
    sid = refused(stack)
    assert stack.state(sid) == "CLOSED"
    assert stack.read(sid) == ERRNO["ECONNREFUSED"]
    assert stack.read(sid) == b""  # Linux: the error once, then end of stream
    c = stack.counters()
    assert c["tcp_attempt_fails"] == 1 and c["tcp_rst_rx"] == 1


def test_syn_sent_rst_with_acceptable_ack_refuses_send(stack):
    sid = refused(stack)
    assert stack.write(sid, b"x") == ERRNO["ECONNREFUSED"]
    assert stack.write(sid, b"x") == ERRNO["EPIPE"]
    stack.expect_nothing()


def test_syn_sent_rst_with_acceptable_ack_sets_so_error(stack):
    sid = refused(stack)
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == -ERRNO["ECONNREFUSED"]
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == 0  # reading SO_ERROR clears it


def test_syn_sent_rst_without_ack_is_ignored(stack):
    sid, syn = connect(stack)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=9000)
    peer.seg("R", seq=9000)
    stack.expect_nothing()
    assert stack.state(sid) == "SYN_SENT"
    peer.rcv = add(syn.seq, 1)
    peer.seg("SA", options=[("MSS", 1460)])
    stack.expect({"flags": "A", "ack": 9001})
    assert stack.state(sid) == "ESTABLISHED"


def test_syn_sent_rst_with_bad_ack_is_ignored(stack):
    sid, syn = connect(stack)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=9000)
    peer.seg("RA", seq=0, ack=add(syn.seq, 77))
    stack.expect_nothing()  # never answer a RST
    assert stack.state(sid) == "SYN_SENT"


def test_syn_sent_ack_without_syn_is_dropped(stack):
    sid, syn = connect(stack)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=9000)
    peer.seg("A", ack=add(syn.seq, 1))
    stack.expect_nothing()
    assert stack.state(sid) == "SYN_SENT"


def test_syn_sent_retransmits_with_backoff_then_times_out(make_stack):
    stack = make_stack(syn_retries=2)
    sid, syn = connect(stack)
    for wait in (1000, 2000):  # RTO 1 s (RFC 6298 2.1), doubled each time
        stack.advance(wait - 1)
        stack.expect_nothing()
        stack.advance(1)
        stack.expect({"flags": "S", "seq": syn.seq, "sport": syn.sport, "opts": {"MSS": 1460}})
        assert stack.state(sid) == "SYN_SENT"
    stack.advance(3999)
    stack.expect_nothing()
    assert stack.state(sid) == "SYN_SENT"
    stack.advance(1)
    stack.expect_nothing()  # no RST for a connection that never answered
    assert stack.state(sid) == "CLOSED"
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == -ERRNO["ETIMEDOUT"]
    assert stack.read(sid) == b""
    assert stack.counters()["tcp_attempt_fails"] == 1
    stack.advance(60000)
    stack.expect_nothing()


def test_syn_sent_timeout_reported_by_read(make_stack):
    stack = make_stack(syn_retries=1)
    sid, syn = connect(stack)
    stack.advance(1000)
    stack.expect({"flags": "S", "seq": syn.seq})
    stack.advance(2000)
    stack.expect_nothing()
    assert stack.read(sid) == ERRNO["ETIMEDOUT"]


def test_syn_sent_no_retransmission_after_synack(stack):
    sid, syn = connect(stack)
    stack.advance(1000)
    stack.expect({"flags": "S", "seq": syn.seq})
    peer = Peer(stack, sport=80, dport=syn.sport, isn=9000)
    peer.rcv = add(syn.seq, 1)
    peer.seg("SA", options=[("MSS", 1460)])
    stack.expect({"flags": "A", "seq": add(syn.seq, 1), "ack": 9001})
    stack.advance(30000)
    stack.expect_nothing()
    assert stack.state(sid) == "ESTABLISHED"


def test_simultaneous_open_syn_gets_synack_then_ack_establishes(stack):
    # RFC 9293 figure 7.
    sid, syn = connect(stack)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=300)
    peer.seg("S", options=[("MSS", 1460)])
    stack.expect({"flags": "SA", "seq": syn.seq, "ack": 301})
    assert stack.state(sid) == "SYN_RECEIVED"
    peer.rcv = add(syn.seq, 1)
    peer.seg("A")
    stack.expect_nothing()
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.write(sid, b"hi") == 2
    stack.expect({"flags": "PA", "seq": add(syn.seq, 1), "ack": 301, "payload": b"hi"})


def test_simultaneous_open_crossing_synack_establishes(stack):
    # RFC 9293 3.5 figure 7 line 6: the peer's SYN-ACK <SEQ=300><ACK=ISS+1>
    # moves SYN-RECEIVED to ESTABLISHED with nothing sent (Linux since 6.11,
    # tcp_validate_incoming: "accept a bare SYN+ACK for active-open
    # TCP_SYN_RECV sockets", and no ACK for it).
    sid, syn = connect(stack)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=300)
    peer.seg("S", options=[("MSS", 1460)])
    stack.expect({"flags": "SA", "seq": syn.seq, "ack": 301})
    peer.seg("SA", seq=300, ack=add(syn.seq, 1), options=[("MSS", 1460)], advance=False)
    stack.expect_nothing()
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.write(sid, b"x" * 100) == 100
    stack.expect({"flags": "PA", "seq": add(syn.seq, 1), "ack": 301, "len": 100})


def test_simultaneous_open_synack_retransmitted_on_timer(stack):
    sid, syn = connect(stack)
    peer = Peer(stack, sport=80, dport=syn.sport, isn=300)
    peer.seg("S", options=[("MSS", 1460)])
    stack.expect({"flags": "SA", "seq": syn.seq, "ack": 301})
    stack.advance(2000)
    segs = stack.take_tcp()
    assert len(segs) >= 1
    for s in segs:
        match(s, {"flags": "SA", "seq": syn.seq, "ack": 301})


# ===========================================================================
# SYN-RECEIVED
# ===========================================================================

def syn_received(stack, peer):
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": peer.nxt})
    peer.rcv = add(sa.seq, 1)
    return sa


def test_syn_received_duplicate_syn_retransmits_synack(stack, listener):
    peer = Peer(stack)
    sa = syn_received(stack, peer)
    peer.seg("S", seq=1000, options=peer.syn_options(), advance=False)
    stack.expect({"flags": "SA", "seq": sa.seq, "ack": 1001})
    assert gauge(stack, "SYN_RECEIVED") == 1
    peer.seg("A")
    stack.expect_nothing()
    assert stack.accept(listener) >= 0


def test_syn_received_synack_retransmitted_on_timer_then_dropped(make_stack):
    stack = make_stack(synack_retries=2)
    listener = stack.listen(80)
    peer = Peer(stack)
    sa = syn_received(stack, peer)
    for wait in (1000, 2000):
        stack.advance(wait - 1)
        stack.expect_nothing()
        stack.advance(1)
        stack.expect({"flags": "SA", "seq": sa.seq, "ack": 1001})
    stack.advance(4000)
    stack.expect_nothing()  # the half-open connection goes silently
    assert gauge(stack, "SYN_RECEIVED") == 0
    assert stack.accept(listener) == ERRNO["EAGAIN"]
    peer.seg("A")  # the ACK comes too late: no connection
    stack.expect({"flags": "R", "seq": add(sa.seq, 1)})
    assert stack.accept(listener) == ERRNO["EAGAIN"]


@pytest.mark.parametrize("delta", [0, 5, 100000])
def test_syn_received_bad_ack_gets_rst_and_handshake_survives(stack, listener, delta):
    # RFC 9293 3.10.7.4, SYN-RECEIVED: unacceptable ACK -> <SEQ=SEG.ACK><CTL=RST>.
    peer = Peer(stack)
    sa = syn_received(stack, peer)
    bad = add(sa.seq, delta)
    peer.seg("A", ack=bad)
    stack.expect({"flags": "R", "seq": bad})
    assert stack.accept(listener) == ERRNO["EAGAIN"]
    assert gauge(stack, "SYN_RECEIVED") == 1
    peer.seg("A")
    stack.expect_nothing()
    assert stack.accept(listener) >= 0


def test_syn_received_rst_drops_half_open_silently(stack, listener):
    peer = Peer(stack)
    sa = syn_received(stack, peer)
    peer.seg("R")
    stack.expect_nothing()
    assert gauge(stack, "SYN_RECEIVED") == 0
    assert stack.accept(listener) == ERRNO["EAGAIN"]
    stack.advance(10000)
    stack.expect_nothing()  # no SYN-ACK retransmission for a dead entry
    peer.seg("A")
    stack.expect({"flags": "R", "seq": add(sa.seq, 1)})
    assert stack.accept(listener) == ERRNO["EAGAIN"]


def test_syn_received_rst_out_of_window_is_ignored(stack, listener):
    peer = Peer(stack)
    syn_received(stack, peer)
    peer.seg("R", seq=add(peer.nxt, 10**6))
    stack.expect_nothing()
    assert gauge(stack, "SYN_RECEIVED") == 1
    peer.seg("A")
    stack.expect_nothing()
    assert stack.accept(listener) >= 0


def test_syn_received_data_with_final_ack_is_delivered(stack, listener):
    peer = Peer(stack)
    syn_received(stack, peer)
    peer.seg("PA", b"payload")
    sid = stack.accept(listener)
    assert sid >= 0
    assert stack.read(sid) == b"payload"
    stack.advance(200)
    stack.expect({"flags": "A", "ack": peer.nxt})


# ===========================================================================
# ESTABLISHED
# ===========================================================================

def test_established_peer_data_read_and_acked(passive):
    stack, sid, peer = passive
    peer.seg("PA", b"hello")
    stack.advance(200)
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt, "len": 0})
    peer.seg("PA", b" world")
    stack.advance(200)
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt, "len": 0})
    assert stack.read(sid) == b"hello world"
    stack.advance(1000)
    stack.expect_nothing()


def test_established_stack_data_has_exact_seq_and_ack(passive):
    stack, sid, peer = passive
    iss = stack.info(sid)["iss"]
    assert stack.write(sid, b"abc") == 3
    stack.expect({"flags": "PA", "seq": add(iss, 1), "ack": peer.nxt, "payload": b"abc"})
    peer.seg("A", ack=add(iss, 4))
    stack.expect_nothing()
    assert stack.write(sid, b"defg") == 4
    stack.expect({"flags": "PA", "seq": add(iss, 4), "ack": peer.nxt, "payload": b"defg"})


def test_established_ack_frees_send_buffer(passive):
    stack, sid, peer = passive
    s = snd_nxt(stack, sid)
    assert stack.write(sid, b"x" * 100) == 100
    stack.expect({"flags": "PA", "seq": s, "len": 100})
    assert stack.info(sid)["snd_queued"] == 100
    peer.seg("A", ack=add(s, 40))
    assert stack.info(sid)["snd_queued"] == 60
    assert stack.info(sid)["snd_una"] == add(s, 40)
    peer.seg("A", ack=add(s, 100))
    stack.expect_nothing()
    i = stack.info(sid)
    assert i["snd_queued"] == 0 and i["snd_una"] == add(s, 100)
    stack.advance(5000)
    stack.expect_nothing()  # nothing left to retransmit


def test_established_data_both_ways_ack_piggybacked(passive):
    stack, sid, peer = passive
    s = snd_nxt(stack, sid)
    peer.seg("PA", b"ping")
    stack.expect_nothing()
    assert stack.read(sid) == b"ping"
    assert stack.write(sid, b"pong") == 4
    stack.expect({"flags": "PA", "seq": s, "ack": peer.nxt, "payload": b"pong"})
    stack.advance(100)  # past the delayed-ACK bound, short of the RTO
    stack.expect_nothing()  # the data segment carried the ACK


def test_established_peer_fin_acked_close_wait_read_zero_after_data(passive):
    stack, sid, peer = passive
    s = snd_nxt(stack, sid)
    peer.seg("PA", b"abc")
    stack.advance(FIN_ACK_MS)
    stack.expect({"flags": "A", "seq": s, "ack": peer.nxt})
    peer.seg("FA")
    stack.advance(FIN_ACK_MS)
    stack.expect({"flags": "A", "seq": s, "ack": peer.nxt})
    assert stack.state(sid) == "CLOSE_WAIT"
    assert stack.read(sid) == b"abc"
    assert stack.read(sid) == b""
    assert stack.read(sid) == b""


def test_established_data_with_fin_in_one_segment(passive):
    stack, sid, peer = passive
    peer.seg("FPA", b"xyz")
    stack.advance(FIN_ACK_MS)
    stack.expect({"flags": "A", "ack": peer.nxt})
    assert stack.info(sid)["rcv_nxt"] == peer.nxt
    assert stack.state(sid) == "CLOSE_WAIT"
    assert stack.read(sid) == b"xyz"
    assert stack.read(sid) == b""


def test_established_rst_not_at_rcv_nxt_gets_challenge_ack(passive):
    # RFC 5961 3.2: in window but not exactly RCV.NXT -> challenge ACK.
    stack, sid, peer = passive
    peer.seg("R", seq=add(peer.nxt, 10))
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.counters()["tcp_challenge_acks"] == 1


def test_established_rst_out_of_window_is_dropped(passive):
    stack, sid, peer = passive
    peer.seg("R", seq=add(peer.nxt, 10**7))
    stack.expect_nothing()
    assert stack.state(sid) == "ESTABLISHED"


def test_established_rst_at_rcv_nxt_resets(passive):
    stack, sid, peer = passive
    peer.seg("R")
    stack.expect_nothing()
    assert stack.state(sid) == "CLOSED"
    assert stack.read(sid) == ERRNO["ECONNRESET"]
    assert stack.read(sid) == b""
    assert stack.counters()["tcp_estab_resets"] == 1


def test_established_rst_leaves_received_data_readable(passive):
    stack, sid, peer = passive
    peer.seg("PA", b"before reset")
    peer.seg("R")
    stack.expect_nothing()
    assert stack.state(sid) == "CLOSED"
    assert stack.read(sid) == b"before reset"
    assert stack.read(sid) == ERRNO["ECONNRESET"]
    assert stack.read(sid) == b""


def test_established_syn_gets_challenge_ack(passive):
    # RFC 5961 4.2: any SYN in a synchronized state -> challenge ACK.
    stack, sid, peer = passive
    peer.seg("S", seq=peer.nxt, options=[("MSS", 1460)], advance=False)
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert stack.state(sid) == "ESTABLISHED"


def test_established_out_of_window_data_gets_ack_and_is_dropped(passive):
    stack, sid, peer = passive
    peer.seg("PA", b"far", seq=add(peer.nxt, 10**6))
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert stack.read(sid) == ERRNO["EAGAIN"]


def test_established_old_duplicate_data_gets_ack(passive):
    stack, sid, peer = passive
    old = peer.nxt
    peer.seg("PA", b"once")
    assert stack.read(sid) == b"once"
    stack.advance(200)
    stack.expect({"flags": "A", "ack": peer.nxt})
    peer.seg("PA", b"once", seq=old)
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert stack.read(sid) == ERRNO["EAGAIN"]


def test_established_ack_of_unsent_data_gets_ack_and_is_dropped(passive):
    # RFC 9293 3.10.7.4 / RFC 5961 5.2: SEG.ACK > SND.NXT -> send ACK, drop.
    stack, sid, peer = passive
    peer.seg("PA", b"bogus", ack=add(peer.rcv, 5000), advance=False)
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert stack.read(sid) == ERRNO["EAGAIN"]
    assert stack.state(sid) == "ESTABLISHED"


# ===========================================================================
# FIN-WAIT-1, FIN-WAIT-2, TIME-WAIT
# ===========================================================================

def test_close_sends_fin_and_enters_fin_wait_1(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    assert stack.close(sid) == 0
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt, "len": 0})
    assert gauge(stack, "FIN_WAIT_1") == 1


def test_close_sends_pending_data_then_fin(passive):
    stack, sid, peer = passive
    s = snd_nxt(stack, sid)
    stack.setopt(sid, lib.SS_OPT_NODELAY, 0)
    assert stack.write(sid, b"tail") == 4
    stack.expect({"flags": "PA", "seq": s, "payload": b"tail"})
    assert stack.close(sid) == 0
    stack.expect({"flags": "FA", "seq": add(s, 4), "ack": peer.nxt})


def test_ack_of_fin_moves_to_fin_wait_2(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    assert stack.shutdown(sid, 1) == 0
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt})
    assert stack.state(sid) == "FIN_WAIT_1"
    peer.rcv = add(fin, 1)
    peer.seg("A")
    stack.expect_nothing()
    assert stack.state(sid) == "FIN_WAIT_2"


def test_fin_wait_1_unacked_fin_is_retransmitted(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    rto_ms = stack.info(sid)["rto_us"] // 1000
    assert stack.shutdown(sid, 1) == 0
    stack.expect({"flags": "FA", "seq": fin})
    stack.advance(rto_ms - 1)
    stack.expect_nothing()
    stack.advance(1)
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt})
    assert stack.state(sid) == "FIN_WAIT_1"


def test_fin_wait_2_peer_fin_acked_and_time_wait(passive):
    stack, sid, peer = passive
    fin = active_close_to_time_wait(stack, sid, peer, close=False)
    assert stack.state(sid) == "TIME_WAIT"
    assert stack.info(sid)["snd_nxt"] == add(fin, 1)
    assert stack.read(sid) == b""


def test_fin_wait_1_fin_acking_our_fin_goes_to_time_wait(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    assert stack.shutdown(sid, 1) == 0
    stack.expect({"flags": "FA", "seq": fin})
    peer.rcv = add(fin, 1)
    peer.seg("FA")
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    assert stack.state(sid) == "TIME_WAIT"


def test_time_wait_lasts_exactly_2msl(make_stack):
    stack = make_stack(msl_ms=1000)
    listener = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, listener, peer)
    active_close_to_time_wait(stack, sid, peer, close=True)
    assert gauge(stack, "TIME_WAIT") == 1
    stack.advance(1999)
    assert gauge(stack, "TIME_WAIT") == 1
    stack.advance(1)
    stack.expect_nothing()
    assert gauge(stack, "TIME_WAIT") == 0
    assert connections(stack) == 0


def test_time_wait_lasts_2msl_on_kept_socket(make_stack):
    stack = make_stack(msl_ms=1000)
    listener = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, listener, peer)
    active_close_to_time_wait(stack, sid, peer, close=False)
    stack.advance(1999)
    assert stack.state(sid) == "TIME_WAIT"
    stack.advance(1)
    stack.expect_nothing()
    assert stack.state(sid) == "CLOSED"
    assert stack.read(sid) == b""


def test_time_wait_retransmitted_fin_reacked_and_timer_restarted(make_stack):
    stack = make_stack(msl_ms=1000)
    listener = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, listener, peer)
    fin = active_close_to_time_wait(stack, sid, peer, close=True)
    peer_fin = add(peer.nxt, -1)
    stack.advance(1500)
    peer.seg("FA", seq=peer_fin, advance=False)
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    stack.advance(1999)  # RFC 9293: "restart the 2 MSL timeout"
    assert gauge(stack, "TIME_WAIT") == 1
    stack.advance(1)
    stack.expect_nothing()
    assert gauge(stack, "TIME_WAIT") == 0


def test_time_wait_rst_closes(passive):
    # RFC 9293 3.10.7.4 TIME-WAIT: RST -> CLOSED (Linux, tcp_rfc1337=0).
    stack, sid, peer = passive
    active_close_to_time_wait(stack, sid, peer, close=True)
    peer.seg("R")
    stack.expect_nothing()
    assert gauge(stack, "TIME_WAIT") == 0


def test_time_wait_old_duplicate_data_gets_ack(passive):
    # Not acceptable (RFC 9293 3.10.7.4 first check): ACK and drop.
    stack, sid, peer = passive
    peer.seg("PA", b"12345678")
    fin = active_close_to_time_wait(stack, sid, peer, close=False)
    assert stack.read(sid) == b"12345678"
    peer.seg("PA", b"5678", seq=add(peer.nxt, -5), advance=False)
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    assert gauge(stack, "TIME_WAIT") == 1


# ===========================================================================
# CLOSE-WAIT, LAST-ACK
# ===========================================================================

def to_close_wait(stack, sid, peer):
    peer.seg("FA")
    stack.advance(FIN_ACK_MS)
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert stack.state(sid) == "CLOSE_WAIT"


def test_close_wait_close_sends_fin_then_ack_ends_connection(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    to_close_wait(stack, sid, peer)
    assert stack.close(sid) == 0
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt})
    assert gauge(stack, "LAST_ACK") == 1
    peer.rcv = add(fin, 1)
    peer.seg("A")
    stack.expect_nothing()
    assert connections(stack) == 0
    stack.advance(120000)
    stack.expect_nothing()


def test_last_ack_kept_socket_closed_after_ack(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    to_close_wait(stack, sid, peer)
    assert stack.shutdown(sid, 1) == 0
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt})
    assert stack.state(sid) == "LAST_ACK"
    peer.rcv = add(fin, 1)
    peer.seg("A")
    stack.expect_nothing()
    assert stack.state(sid) == "CLOSED"
    assert stack.read(sid) == b""


def test_last_ack_connection_gone_later_segment_gets_rst(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    to_close_wait(stack, sid, peer)
    stack.close(sid)
    stack.expect({"flags": "FA", "seq": fin})
    peer.rcv = add(fin, 1)
    peer.seg("A")
    stack.expect_nothing()
    peer.seg("PA", b"zombie", advance=False)
    stack.expect({"flags": "R", "seq": add(fin, 1)})


def test_last_ack_fin_retransmitted(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    rto_ms = stack.info(sid)["rto_us"] // 1000
    to_close_wait(stack, sid, peer)
    stack.close(sid)
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt})
    stack.advance(rto_ms - 1)
    stack.expect_nothing()
    stack.advance(1)
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt})
    assert gauge(stack, "LAST_ACK") == 1


def test_close_wait_stack_keeps_sending(passive):
    stack, sid, peer = passive
    s = snd_nxt(stack, sid)
    to_close_wait(stack, sid, peer)
    assert stack.write(sid, b"more") == 4
    stack.expect({"flags": "PA", "seq": s, "ack": peer.nxt, "payload": b"more"})
    peer.seg("A", ack=add(s, 4))
    stack.expect_nothing()
    assert stack.info(sid)["snd_queued"] == 0


# ===========================================================================
# CLOSING (simultaneous close)
# ===========================================================================

def test_simultaneous_close_closing_then_time_wait(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    assert stack.shutdown(sid, 1) == 0
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt})
    # The peer's FIN crosses ours: it does not acknowledge our FIN.
    peer.rcv = fin
    peer.seg("FA")
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    assert stack.state(sid) == "CLOSING"
    peer.seg("A", ack=add(fin, 1))
    stack.expect_nothing()
    assert stack.state(sid) == "TIME_WAIT"


def test_closing_time_wait_expires_after_2msl(make_stack):
    stack = make_stack(msl_ms=500)
    listener = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, listener, peer)
    fin = snd_nxt(stack, sid)
    stack.close(sid)
    stack.expect({"flags": "FA", "seq": fin})
    peer.rcv = fin
    peer.seg("FA")
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    assert gauge(stack, "CLOSING") == 1
    peer.seg("A", ack=add(fin, 1))
    assert gauge(stack, "TIME_WAIT") == 1
    stack.advance(999)
    assert gauge(stack, "TIME_WAIT") == 1
    stack.advance(1)
    assert connections(stack) == 0
    stack.expect_nothing()


# ===========================================================================
# Half-close
# ===========================================================================

def test_half_close_still_receives_data(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    assert stack.shutdown(sid, 1) == 0
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt})
    peer.rcv = add(fin, 1)
    peer.seg("A")
    assert stack.state(sid) == "FIN_WAIT_2"
    for chunk in (b"still ", b"talking"):
        peer.seg("PA", chunk)
        stack.advance(200)
        stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    assert stack.read(sid) == b"still talking"
    assert stack.write(sid, b"no") == ERRNO["EPIPE"]
    peer.seg("FA")
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    assert stack.state(sid) == "TIME_WAIT"
    assert stack.read(sid) == b""


def test_half_close_data_before_fin_is_acked(passive):
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    assert stack.shutdown(sid, 1) == 0
    stack.expect({"flags": "FA", "seq": fin})
    peer.rcv = fin  # the peer has not seen our FIN yet
    peer.seg("PA", b"crossing")
    assert stack.state(sid) == "FIN_WAIT_1"
    assert stack.read(sid) == b"crossing"
    stack.advance(100)  # past the delayed-ACK bound, short of the FIN's RTO
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})


# ===========================================================================
# TIME-WAIT reuse (RFC 9293 3.6.1, RFC 1122 4.2.2.13, RFC 6191)
# ===========================================================================

def test_time_wait_reused_by_syn_with_higher_seq(passive, listener):
    stack, sid, peer = passive
    fin = active_close_to_time_wait(stack, sid, peer, close=True)
    old_snd_nxt = add(fin, 1)
    new_isn = add(peer.nxt, 100000)
    p2 = Peer(stack, sport=peer.sport, isn=new_isn)
    p2.seg("S", options=p2.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": add(new_isn, 1)})
    assert seq_gt(sa.seq, old_snd_nxt), "new ISN must lie above the old sequence space"
    c = stack.counters()
    assert c["tcp_timewait_reuse"] == 1
    assert c["tcp_state"]["TIME_WAIT"] == 0
    p2.rcv = add(sa.seq, 1)
    p2.seg("A")
    stack.expect_nothing()
    nsid = stack.accept(listener)
    assert nsid >= 0 and stack.state(nsid) == "ESTABLISHED"


def test_time_wait_old_syn_gets_ack_not_reuse(passive):
    stack, sid, peer = passive
    fin = active_close_to_time_wait(stack, sid, peer, close=True)
    p2 = Peer(stack, sport=peer.sport, isn=500)  # below the old RCV.NXT
    p2.seg("S", options=p2.syn_options())
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    c = stack.counters()
    assert c["tcp_timewait_reuse"] == 0
    assert c["tcp_state"]["TIME_WAIT"] == 1
    assert c["tcp_state"]["SYN_RECEIVED"] == 0


# ===========================================================================
# Orphans and aborts
# ===========================================================================

def test_orphan_fin_wait_2_times_out(make_stack):
    stack = make_stack(fin_timeout_ms=5000)
    listener = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, listener, peer)
    fin = snd_nxt(stack, sid)
    stack.close(sid)
    stack.expect({"flags": "FA", "seq": fin})
    peer.rcv = add(fin, 1)
    peer.seg("A")
    stack.expect_nothing()
    assert gauge(stack, "FIN_WAIT_2") == 1
    stack.advance(4999)
    assert gauge(stack, "FIN_WAIT_2") == 1
    stack.advance(1)
    stack.expect_nothing()  # Linux lets it go silently
    assert connections(stack) == 0
    peer.seg("FA")  # the peer's FIN after the orphan is gone: no connection
    stack.expect({"flags": "R", "seq": add(fin, 1)})


def test_kept_socket_fin_wait_2_does_not_time_out(make_stack):
    stack = make_stack(fin_timeout_ms=5000)
    listener = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, listener, peer)
    fin = snd_nxt(stack, sid)
    stack.shutdown(sid, 1)
    stack.expect({"flags": "FA", "seq": fin})
    peer.rcv = add(fin, 1)
    peer.seg("A")
    stack.advance(20000)
    stack.expect_nothing()
    assert stack.state(sid) == "FIN_WAIT_2"
    peer.seg("PA", b"ok")
    assert stack.read(sid) == b"ok"


def test_close_with_unread_data_sends_rst(passive):
    stack, sid, peer = passive
    s = snd_nxt(stack, sid)
    peer.seg("PA", b"unread")
    assert stack.close(sid) == 0
    stack.expect({"flags": "RA", "seq": s, "ack": peer.nxt, "len": 0})
    c = stack.counters()
    assert c["tcp_rst_on_close"] == 1
    assert connections(stack) == 0
    stack.advance(60000)
    stack.expect_nothing()


def test_close_in_close_wait_with_unread_data_sends_rst(passive):
    stack, sid, peer = passive
    s = snd_nxt(stack, sid)
    peer.seg("FPA", b"left")
    stack.advance(FIN_ACK_MS)
    stack.expect({"flags": "A", "ack": peer.nxt})
    assert stack.close(sid) == 0
    stack.expect({"flags": "RA", "seq": s, "ack": peer.nxt})
    assert stack.counters()["tcp_rst_on_close"] == 1
    assert connections(stack) == 0


def test_data_arriving_after_close_gets_rst(passive):
    # RFC 1122 4.2.2.13 (and Linux's TCPAbortOnData): new data for a closed
    # application is answered with a reset, the connection is dropped.
    stack, sid, peer = passive
    fin = snd_nxt(stack, sid)
    assert stack.close(sid) == 0
    stack.expect({"flags": "FA", "seq": fin})
    peer.rcv = add(fin, 1)
    peer.seg("A")
    stack.expect_nothing()
    peer.seg("PA", b"nobody reads this")
    segs = stack.take_tcp()
    assert len(segs) == 1, [str(s.flags) for s in segs]
    r = segs[0]
    # Linux answers <SEQ=SEG.ACK><CTL=RST>; RST,ACK at SND.NXT is the same
    # sequence number here.  Either way: a reset the peer will accept.
    assert "R" in str(r.flags) and r.seq == add(fin, 1) and len(bytes(r.payload)) == 0
    assert stack.counters()["tcp_rst_on_close"] == 1
    assert connections(stack) == 0
