"""SYN cookies (RFC 4987 3.6): a listener whose SYN queue is full answers
statelessly, and rebuilds the connection from a valid final ACK."""
import pytest

from harness import ERRNO, Peer, tcp_options


@pytest.fixture
def cstack(make_stack):
    """A stack whose listeners keep at most two half-open connections."""
    return make_stack(syn_backlog=2)


def full_options_peer(stack, sport, mss=1460):
    return Peer(stack, sport=sport, isn=10000 * sport % 2**32, mss=mss, sack=True, ts=4242, wscale=7)


def fill_syn_queue(stack, n=2, first_port=41000):
    peers = []
    for i in range(n):
        p = full_options_peer(stack, first_port + i)
        p.seg("S", options=p.syn_options())
        (sa,) = stack.expect({"flags": "SA", "ack": p.nxt, "opts": {"SAckOK": True, "Timestamp": None,
                                                                    "WScale": None, "MSS": 1460}})
        p.rcv = sa.seq + 1
        peers.append(p)
    return peers


def get_cookie(stack, peer):
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": peer.nxt})
    peer.rcv = (sa.seq + 1) % 2**32
    return sa


# ---------------------------------------------------------------------------
# Sending cookies
# ---------------------------------------------------------------------------

def test_third_syn_gets_cookie_syn_ack_with_only_mss(cstack):
    stack = cstack
    stack.listen(80)
    fill_syn_queue(stack)
    assert stack.counters()["tcp_syncookies_sent"] == 0
    peer = full_options_peer(stack, 42000)
    sa = get_cookie(stack, peer)
    # RFC 4987 3.6: no state, so no window scaling, SACK or timestamps.
    assert [name for name, _ in sa.options] == ["MSS"]
    assert tcp_options(sa)["MSS"] == 1460
    c = stack.counters()
    assert c["tcp_syncookies_sent"] == 1
    assert c["tcp_state"]["SYN_RECEIVED"] == 2  # nothing was queued for it


def test_retransmitted_syn_of_queued_pair_is_not_a_cookie(cstack):
    stack = cstack
    stack.listen(80)
    (p0, p1) = fill_syn_queue(stack)
    p0.seg("S", seq=p0.isn, options=p0.syn_options(), advance=False)
    (sa,) = stack.expect({"flags": "SA", "seq": p0.rcv - 1, "ack": p0.isn + 1})
    assert "SAckOK" in tcp_options(sa)
    assert stack.counters()["tcp_syncookies_sent"] == 0


def test_each_syn_beyond_the_queue_gets_a_cookie(cstack):
    stack = cstack
    stack.listen(80)
    fill_syn_queue(stack)
    for i in range(5):
        get_cookie(stack, full_options_peer(stack, 43000 + i))
    c = stack.counters()
    assert c["tcp_syncookies_sent"] == 5
    assert c["tcp_state"]["SYN_RECEIVED"] == 2


# ---------------------------------------------------------------------------
# Completing a connection from a cookie
# ---------------------------------------------------------------------------

def test_valid_cookie_ack_completes_connection_with_data_both_ways(cstack):
    stack = cstack
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    sa = get_cookie(stack, peer)
    peer.seg("A")
    stack.expect_nothing()
    sid = stack.accept(lsid)
    assert sid >= 0
    assert stack.state(sid) == "ESTABLISHED"
    info = stack.info(sid)
    assert info["irs"] == peer.isn
    assert info["iss"] == sa.seq
    assert info["rcv_nxt"] == peer.nxt
    assert info["snd_nxt"] == sa.seq + 1
    peer.seg("PA", b"ping")
    assert stack.read(sid) == b"ping"
    assert stack.write(sid, b"pong") == 4
    stack.expect({"flags": "PA", "seq": sa.seq + 1, "ack": peer.nxt, "payload": b"pong", "noopts": ["Timestamp"]})
    peer.seg("A", ack=sa.seq + 5)
    assert stack.info(sid)["snd_una"] == sa.seq + 5
    c = stack.counters()
    assert c["tcp_syncookies_ok"] == 1
    assert c["tcp_syncookies_failed"] == 0


def test_cookie_ack_wins_over_a_half_open_connection_from_a_duplicate_syn(cstack):
    """The SYN drew a cookie while the queue was full; a duplicate of it,
    arriving once there is room, makes a half-open connection with another
    ISN; the peer answers the cookie.  As in Linux, the cookie's connection
    is made (no reset, which would fail the peer's connect)."""
    stack = cstack
    lsid = stack.listen(80)
    queued = fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    sa = get_cookie(stack, peer)
    assert [name for name, _ in sa.options] == ["MSS"]  # a cookie
    for p in queued:
        p.seg("A")  # the queue empties
    assert stack.accept(lsid) >= 0 and stack.accept(lsid) >= 0
    peer.seg("S", seq=peer.isn, options=peer.syn_options(), advance=False)  # the duplicate
    (sa2,) = stack.expect({"flags": "SA", "ack": peer.nxt})
    assert sa2.seq != sa.seq
    peer.rcv = (sa.seq + 1) % 2**32
    peer.seg("A")  # the answer to the cookie
    stack.expect_nothing()
    sid = stack.accept(lsid)
    assert sid >= 0 and stack.state(sid) == "ESTABLISHED"
    assert stack.info(sid)["iss"] == sa.seq
    c = stack.counters()
    assert c["tcp_syncookies_ok"] == 1 and c["tcp_rst_tx"] == 0
    assert c["tcp_state"]["SYN_RECEIVED"] == 0


def test_cookie_connection_has_no_negotiated_options(cstack):
    stack = cstack
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    get_cookie(stack, peer)
    peer.seg("A")
    sid = stack.accept(lsid)
    info = stack.info(sid)
    assert (info["sack_ok"], info["ts_ok"], info["snd_wscale"], info["rcv_wscale"]) == (0, 0, 0, 0)
    assert stack.counters()["tcp_syncookies_ok"] == 1


def test_cookie_ack_carrying_data_delivers_it(cstack):
    stack = cstack
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    get_cookie(stack, peer)
    peer.seg("PA", b"early data")
    sid = stack.accept(lsid)
    assert sid >= 0
    assert stack.read(sid) == b"early data"
    stack.advance(40)
    stack.take_tcp()  # SYN-ACK retransmissions of the queued pairs may follow
    assert stack.info(sid)["rcv_nxt"] == peer.nxt
    assert stack.counters()["tcp_syncookies_ok"] == 1


@pytest.mark.parametrize("peer_mss", [1460, 1400, 1300, 1200, 1000, 600, 536])
def test_cookie_encodes_peer_mss(cstack, peer_mss):
    stack = cstack
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000, mss=peer_mss)
    get_cookie(stack, peer)
    peer.seg("A")
    sid = stack.accept(lsid)
    assert sid >= 0
    mss = stack.info(sid)["mss"]
    assert 0 < mss <= peer_mss
    # A write larger than the MSS leaves in segments the peer can take.
    assert stack.setopt(sid, 1, 1) == 0  # TCP_NODELAY
    assert stack.write(sid, bytes(3000)) == 3000
    for seg in stack.take_tcp():
        assert len(bytes(seg.payload)) <= peer_mss
    assert stack.counters()["tcp_syncookies_ok"] == 1


def test_cookie_without_peer_mss_uses_536(cstack):
    stack = cstack
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = Peer(stack, sport=42000, mss=None)
    get_cookie(stack, peer)
    peer.seg("A")
    sid = stack.accept(lsid)
    assert sid >= 0
    assert stack.info(sid)["mss"] <= 536
    assert stack.counters()["tcp_syncookies_ok"] == 1


def test_cookie_still_valid_after_seventy_seconds(make_stack):
    stack = make_stack(syn_backlog=2)
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    get_cookie(stack, peer)
    for _ in range(70):
        stack.advance(1000)
    stack.take()
    peer.seg("A")
    stack.expect_nothing()
    sid = stack.accept(lsid)
    assert sid >= 0
    assert stack.counters()["tcp_syncookies_ok"] == 1


# ---------------------------------------------------------------------------
# Refusing bad cookies
# ---------------------------------------------------------------------------

def test_forged_ack_wrong_ack_gets_rst(cstack):
    stack = cstack
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    sa = get_cookie(stack, peer)
    bad = (sa.seq + 1 + 0x1000) % 2**32
    peer.seg("A", ack=bad)
    stack.expect({"flags": "R", "seq": bad})
    assert stack.accept(lsid) == ERRNO["EAGAIN"]
    c = stack.counters()
    assert c["tcp_syncookies_failed"] == 1
    assert c["tcp_syncookies_ok"] == 0


def test_forged_ack_wrong_sequence_number_gets_rst(cstack):
    # The cookie hashes the client's ISN: an ACK with another SEQ fails.
    stack = cstack
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    sa = get_cookie(stack, peer)
    peer.seg("A", seq=peer.nxt + 5000)
    stack.expect({"flags": "R", "seq": sa.seq + 1})
    assert stack.accept(lsid) == ERRNO["EAGAIN"]
    assert stack.counters()["tcp_syncookies_failed"] == 1


def test_cookie_from_another_port_is_refused(cstack):
    stack = cstack
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    sa = get_cookie(stack, peer)
    other = Peer(stack, sport=42001, isn=peer.isn)
    other.rcv = peer.rcv
    other.nxt = peer.nxt
    other.seg("A")
    stack.expect({"flags": "R", "seq": sa.seq + 1, "dport": 42001})
    assert stack.accept(lsid) == ERRNO["EAGAIN"]
    assert stack.counters()["tcp_syncookies_failed"] == 1


def test_cookie_older_than_two_minutes_is_refused(make_stack):
    # SYN-ACK retries high enough that the queue stays full, so cookies are
    # still being sent when the old one comes back.
    stack = make_stack(syn_backlog=2, synack_retries=12)
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    sa = get_cookie(stack, peer)
    for _ in range(125):
        stack.advance(1000)
    stack.take()
    get_cookie(stack, full_options_peer(stack, 42001))  # cookies are current
    for _ in range(5):
        stack.advance(1000)
    stack.take()
    peer.seg("A")
    stack.expect({"flags": "R", "seq": sa.seq + 1})
    assert stack.accept(lsid) == ERRNO["EAGAIN"]
    c = stack.counters()
    assert c["tcp_syncookies_ok"] == 0
    assert c["tcp_syncookies_failed"] == 1


def test_cookie_ack_long_after_cookies_stopped_gets_rst(cstack):
    stack = cstack
    lsid = stack.listen(80)
    fill_syn_queue(stack)
    peer = full_options_peer(stack, 42000)
    get_cookie(stack, peer)
    for _ in range(200):
        stack.advance(1000)
    stack.take()
    peer.seg("A")
    stack.expect({"flags": "R", "seq": peer.rcv})
    assert stack.accept(lsid) == ERRNO["EAGAIN"]
    assert stack.counters()["tcp_syncookies_ok"] == 0


def test_ack_without_any_cookie_sent_is_not_checked(stack, listener):
    peer = Peer(stack)
    peer.seg("A", ack=99999)
    stack.expect({"flags": "R", "seq": 99999})
    c = stack.counters()
    assert c["tcp_syncookies_failed"] == 0
    assert c["tcp_syncookies_ok"] == 0
