"""Resets, RFC 5961 hardening (challenge ACKs and their rate limit) and the
resets a closed port sends (RFC 9293 3.10.7.1)."""
import pytest

from harness import ERRNO, PEER_IP, Peer, passive_open
from preload.engine import lib


def challenge_ack(peer):
    """What a challenge ACK looks like: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>."""
    return {"flags": "A", "seq": peer.rcv, "ack": peer.nxt, "len": 0}


# ---------------------------------------------------------------------------
# RST in synchronized states (RFC 9293 3.10.7.4, RFC 5961 3)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("flags", ["R", "RA"])
def test_rst_at_rcv_nxt_resets(passive, flags):
    stack, sid, peer = passive
    peer.seg(flags)
    stack.expect_nothing()
    assert stack.state(sid) == "CLOSED"
    # The reader sees ECONNRESET once, then end of stream.
    assert stack.read(sid) == ERRNO["ECONNRESET"]
    assert stack.read(sid) == b""
    c = stack.counters()
    assert c["tcp_estab_resets"] == 1
    assert c["tcp_rst_rx"] == 1
    assert c["tcp_challenge_acks"] == 0


def test_rst_at_rcv_nxt_after_data_resets(passive):
    stack, sid, peer = passive
    peer.seg("PA", b"abcdef")
    stack.advance(40)
    stack.expect({"flags": "A", "ack": peer.nxt})
    assert stack.read(sid) == b"abcdef"
    peer.seg("R")
    stack.expect_nothing()
    assert stack.read(sid) == ERRNO["ECONNRESET"]
    assert stack.read(sid) == b""
    assert stack.write(sid, b"x") == ERRNO["EPIPE"]
    assert stack.counters()["tcp_estab_resets"] == 1


@pytest.mark.parametrize("offset", [1, 100, 60000])
def test_rst_in_window_not_exact_gets_challenge_ack(passive, offset):
    stack, sid, peer = passive
    peer.seg("R", seq=peer.nxt + offset)
    # RFC 5961 3.2: in the window but not RCV.NXT: challenge ACK, live on.
    stack.expect(challenge_ack(peer))
    assert stack.state(sid) == "ESTABLISHED"
    c = stack.counters()
    assert c["tcp_challenge_acks"] == 1
    assert c["drop_tcp_bad_rst"] == 1
    assert c["tcp_estab_resets"] == 0
    # The connection still works.
    peer.seg("PA", b"still here")
    assert stack.read(sid) == b"still here"


def test_challenge_ack_answered_by_exact_rst_resets(passive):
    stack, sid, peer = passive
    peer.seg("R", seq=peer.nxt + 10)
    (ca,) = stack.expect(challenge_ack(peer))
    # RFC 5961 3.2: the legitimate peer answers with a RST at SEG.ACK.
    peer.seg("R", seq=ca.ack)
    stack.expect_nothing()
    assert stack.state(sid) == "CLOSED"
    assert stack.counters()["tcp_estab_resets"] == 1


@pytest.mark.parametrize("where", ["beyond", "before"])
def test_rst_outside_window_dropped_silently(passive, where):
    stack, sid, peer = passive
    seq = peer.nxt + 70000 if where == "beyond" else peer.nxt - 1
    peer.seg("R", seq=seq % 2**32)
    stack.expect_nothing()
    assert stack.state(sid) == "ESTABLISHED"
    c = stack.counters()
    assert c["tcp_challenge_acks"] == 0
    assert c["tcp_estab_resets"] == 0
    assert c["tcp_rst_rx"] == 0
    # counters.h: drop_tcp_bad_rst is "reset outside the window or not
    # exactly at RCV.NXT".
    assert c["drop_tcp_bad_rst"] == 1


def test_rst_to_listener_is_ignored(stack, listener):
    peer = Peer(stack)
    peer.seg("R", seq=12345)
    stack.expect_nothing()
    peer.seg("RA", seq=12345, ack=999)
    stack.expect_nothing()
    assert stack.counters()["tcp_rst_tx"] == 0
    # The listener still works.
    sid = passive_open(stack, listener, Peer(stack, sport=40001))
    assert stack.state(sid) == "ESTABLISHED"


def test_rst_in_syn_received_removes_half_open(stack, listener):
    peer = Peer(stack)
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": peer.nxt})
    peer.rcv = sa.seq + 1
    peer.seg("R")
    stack.expect_nothing()
    assert stack.counters()["tcp_state"]["SYN_RECEIVED"] == 0
    # The pair is gone: its ACK now finds nothing but the listener.
    peer.seg("A")
    stack.expect({"flags": "R", "seq": peer.rcv})
    assert stack.accept(listener) == ERRNO["EAGAIN"]
    c = stack.counters()
    assert c["tcp_rst_rx"] == 1
    assert c["tcp_rst_tx"] == 1


# ---------------------------------------------------------------------------
# SYN in a synchronized state (RFC 5961 4)
# ---------------------------------------------------------------------------

def test_syn_in_window_in_established_gets_challenge_ack(passive):
    stack, sid, peer = passive
    peer.seg("S", seq=peer.nxt + 5, options=[("MSS", 1460)], advance=False)
    stack.expect(challenge_ack(peer))
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.counters()["tcp_challenge_acks"] == 1
    peer.seg("PA", b"ok")
    assert stack.read(sid) == b"ok"


def test_syn_at_rcv_nxt_minus_one_gets_challenge_ack(passive):
    # The retransmitted SYN of the same connection (seq = IRS).
    stack, sid, peer = passive
    peer.seg("S", seq=peer.isn, options=[("MSS", 1460)])
    stack.expect(challenge_ack(peer))
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.counters()["tcp_challenge_acks"] == 1


def test_syn_outside_window_in_established_gets_challenge_ack(passive):
    # RFC 5961 4.2: "If the SYN bit is set, irrespective of the sequence
    # number, TCP MUST send an ACK (also referred to as challenge ACK)".
    stack, sid, peer = passive
    peer.seg("S", seq=(peer.nxt + 2**30) % 2**32, options=[("MSS", 1460)])
    stack.expect(challenge_ack(peer))
    assert stack.state(sid) == "ESTABLISHED"
    c = stack.counters()
    assert c["tcp_challenge_acks"] == 1
    assert c["tcp_estab_resets"] == 0


# ---------------------------------------------------------------------------
# ACK validation (RFC 5961 5, RFC 9293 3.10.7.4 fifth step)
# ---------------------------------------------------------------------------

def test_ack_too_old_gets_challenge_ack(stack, listener):
    peer = Peer(stack, win=1000)
    sid = passive_open(stack, listener, peer)
    # SND.UNA - MAX.SND.WND = peer.rcv - 1000; go below it.
    peer.seg("PA", b"zzz", ack=(peer.rcv - 2000) % 2**32, advance=False)
    stack.expect(challenge_ack(peer))
    assert stack.read(sid) == ERRNO["EAGAIN"]  # the segment was discarded
    c = stack.counters()
    assert c["tcp_challenge_acks"] == 1
    assert c["drop_tcp_bad_ack"] == 1


def test_old_ack_within_max_window_is_accepted(stack, listener):
    peer = Peer(stack, win=1000)
    sid = passive_open(stack, listener, peer)
    peer.seg("PA", b"fine", ack=(peer.rcv - 500) % 2**32)
    stack.expect_nothing()  # old duplicate ACK: ignored, the data is taken
    assert stack.read(sid) == b"fine"
    c = stack.counters()
    assert c["tcp_challenge_acks"] == 0
    assert c["drop_tcp_bad_ack"] == 0


def test_ack_above_snd_nxt_is_acked_and_dropped(passive):
    stack, sid, peer = passive
    peer.seg("PA", b"future", ack=(peer.rcv + 1000) % 2**32, advance=False)
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt, "len": 0})
    assert stack.read(sid) == ERRNO["EAGAIN"]
    assert stack.info(sid)["snd_una"] == peer.rcv
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.counters()["drop_tcp_bad_ack"] == 1


def test_segment_without_ack_flag_is_dropped(passive):
    stack, sid, peer = passive
    peer.seg("P", b"noack", advance=False)
    stack.expect_nothing()
    assert stack.read(sid) == ERRNO["EAGAIN"]
    assert stack.counters()["drop_tcp_state"] == 1


# ---------------------------------------------------------------------------
# Challenge ACK rate limit (RFC 5961 7)
# ---------------------------------------------------------------------------

def test_challenge_ack_rate_limit(make_stack):
    stack = make_stack(challenge_ack_limit=2)
    lsid = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, lsid, peer)
    peer.seg("R", seq=peer.nxt + 1)
    stack.expect(challenge_ack(peer))
    peer.seg("R", seq=peer.nxt + 2)
    stack.expect(challenge_ack(peer))
    peer.seg("R", seq=peer.nxt + 3)
    stack.expect_nothing()
    c = stack.counters()
    assert c["tcp_challenge_acks"] == 2
    assert c["tcp_challenge_ack_limited"] == 1
    assert stack.state(sid) == "ESTABLISHED"


def test_challenge_ack_limit_window_is_one_second(make_stack):
    stack = make_stack(challenge_ack_limit=2)
    lsid = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, lsid, peer)
    peer.seg("S", seq=peer.nxt + 1, advance=False)
    stack.expect(challenge_ack(peer))
    peer.seg("S", seq=peer.nxt + 1, advance=False)
    stack.expect(challenge_ack(peer))
    stack.advance(999)
    stack.expect_nothing()
    peer.seg("R", seq=peer.nxt + 1)
    stack.expect_nothing()  # still inside the first second
    stack.advance(1)
    peer.seg("R", seq=peer.nxt + 1)
    stack.expect(challenge_ack(peer))  # a new second
    c = stack.counters()
    assert c["tcp_challenge_acks"] == 3
    assert c["tcp_challenge_ack_limited"] == 1
    assert stack.state(sid) == "ESTABLISHED"


def test_challenge_ack_limit_is_shared_by_kinds(make_stack):
    stack = make_stack(challenge_ack_limit=2)
    lsid = stack.listen(80)
    peer = Peer(stack, win=1000)
    sid = passive_open(stack, lsid, peer)
    peer.seg("R", seq=peer.nxt + 1)
    peer.seg("S", seq=peer.nxt + 1, advance=False)
    stack.expect(challenge_ack(peer), challenge_ack(peer))
    peer.seg("A", ack=(peer.rcv - 5000) % 2**32)  # too old an ACK
    stack.expect_nothing()
    assert stack.counters()["tcp_challenge_ack_limited"] == 1


# ---------------------------------------------------------------------------
# Segments for no connection (RFC 9293 3.10.7.1)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("flags,payload,ack_extra", [
    ("S", b"", 1),
    ("S", b"syndata", 8),
    ("", b"bare", 4),
    ("P", b"pushed", 6),
    ("F", b"", 1),
    ("F", b"fin-data", 9),
    ("U", b"", 0),
])
def test_closed_port_without_ack_gets_rst_ack(stack, flags, payload, ack_extra):
    peer = Peer(stack, dport=81, isn=5000)
    peer.seg(flags, payload)
    # <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    stack.expect({"flags": "RA", "seq": 0, "ack": 5000 + ack_extra, "sport": 81, "dport": 40000, "len": 0})
    c = stack.counters()
    assert c["tcp_rst_tx"] == 1
    assert c["drop_tcp_no_socket"] == 1


@pytest.mark.parametrize("flags,payload", [("A", b""), ("PA", b"data"), ("FA", b""), ("SA", b"")])
def test_closed_port_with_ack_gets_rst_at_seg_ack(stack, flags, payload):
    peer = Peer(stack, dport=81, isn=5000)
    peer.seg(flags, payload, ack=0xDEADBEEF)
    # <SEQ=SEG.ACK><CTL=RST>
    stack.expect({"flags": "R", "seq": 0xDEADBEEF, "sport": 81, "dport": 40000, "len": 0})
    assert stack.counters()["tcp_rst_tx"] == 1


@pytest.mark.parametrize("flags", ["R", "RA", "RP", "RF"])
def test_never_rst_in_answer_to_rst(stack, flags):
    peer = Peer(stack, dport=81)
    peer.seg(flags, ack=1234)
    stack.expect_nothing()
    c = stack.counters()
    assert c["tcp_rst_tx"] == 0
    assert c["drop_tcp_no_socket"] == 1


def test_ack_to_listener_gets_rst(stack, listener):
    peer = Peer(stack)
    peer.seg("A", ack=777)
    stack.expect({"flags": "R", "seq": 777})
    assert stack.accept(listener) == ERRNO["EAGAIN"]
    assert stack.counters()["tcp_rst_tx"] == 1


# ---------------------------------------------------------------------------
# SYN-SENT (RFC 9293 3.10.7.3, RFC 5961 3.2)
# ---------------------------------------------------------------------------

def connect_syn_sent(stack):
    sid = stack.socket()
    assert stack.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    (syn,) = stack.expect({"flags": "S", "dport": 80})
    peer = Peer(stack, sport=80, dport=syn.sport)
    peer.rcv = syn.seq + 1
    return sid, peer, syn


def test_syn_sent_rst_with_acceptable_ack_refuses(stack):
    sid, peer, syn = connect_syn_sent(stack)
    peer.seg("RA", ack=syn.seq + 1)
    stack.expect_nothing()
    assert stack.state(sid) == "CLOSED"
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == -ERRNO["ECONNREFUSED"]
    c = stack.counters()
    assert c["tcp_attempt_fails"] == 1
    assert c["tcp_rst_rx"] == 1


def test_syn_sent_rst_without_ack_is_ignored(stack):
    sid, peer, syn = connect_syn_sent(stack)
    peer.seg("R")
    stack.expect_nothing()
    assert stack.state(sid) == "SYN_SENT"
    assert stack.counters()["drop_tcp_bad_rst"] == 1


def test_syn_sent_rst_with_bad_ack_is_ignored(stack):
    sid, peer, syn = connect_syn_sent(stack)
    peer.seg("RA", ack=syn.seq + 100)
    stack.expect_nothing()  # never a RST for a RST
    assert stack.state(sid) == "SYN_SENT"
    assert stack.counters()["tcp_rst_tx"] == 0


def test_syn_sent_bad_ack_gets_rst(stack):
    sid, peer, syn = connect_syn_sent(stack)
    peer.seg("SA", ack=syn.seq + 100, options=[("MSS", 1460)])
    stack.expect({"flags": "R", "seq": syn.seq + 100})
    assert stack.state(sid) == "SYN_SENT"
    assert stack.counters()["drop_tcp_bad_ack"] == 1


def test_reset_connection_rst_in_answer_to_later_segment(passive):
    # After a reset, the pair is closed: a later segment gets a reset.
    stack, sid, peer = passive
    peer.seg("R")
    assert stack.read(sid) == ERRNO["ECONNRESET"]
    peer.seg("PA", b"late")
    stack.expect({"flags": "R", "seq": peer.rcv})
    c = stack.counters()
    assert c["tcp_rst_tx"] == 1
    assert c["drop_tcp_no_socket"] == 1


def test_syn_outside_window_is_subject_to_challenge_ack_limit(make_stack):
    # RFC 5961 4.2 and 7: the ACK answering an out-of-window SYN is a
    # challenge ACK, so it counts against the rate limit like any other.
    stack = make_stack(challenge_ack_limit=1)
    lsid = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, lsid, peer)
    peer.seg("R", seq=peer.nxt + 1)
    stack.expect(challenge_ack(peer))
    peer.seg("S", seq=(peer.nxt + 2**30) % 2**32, options=[("MSS", 1460)])
    stack.expect_nothing()
    c = stack.counters()
    assert c["tcp_challenge_acks"] == 1
    assert c["tcp_challenge_ack_limited"] == 1
    assert stack.state(sid) == "ESTABLISHED"


def test_bound_but_not_listening_port_gets_rst(stack):
    sid = stack.socket()
    assert lib.ss_tcp_bind(stack.e, sid, 0, 81) == 0
    peer = Peer(stack, dport=81, isn=777)
    peer.seg("S", options=[("MSS", 1460)])
    stack.expect({"flags": "RA", "seq": 0, "ack": 778})
    assert stack.counters()["drop_tcp_no_socket"] == 1
