"""Reusing a port pair that is still in TIME-WAIT (issue 13 item 3).

Short connections between programs under the library over 127.0.0.1 meet
their own TIME-WAITs once the client's ephemeral ports wrap: at the server
(which closed first, for the reversed pair) and at the client.  The rules:

  - the receiving side (RFC 6191, RFC 1122 4.2.2.13): a SYN that hits a
    TIME-WAIT opens a new connection when its timestamp is newer than the
    last one seen (or, without timestamps, its sequence number is higher);
  - the connecting side (Linux tcp_tw_reuse, tcp_twsk_unique()): connect
    takes over a TIME-WAIT pair when the old connection had timestamps and
    the last one came at least a second ago; the new ISN lies above the old
    sequence space and TS.Recent is carried over;

and both need timestamps that grow across the connections of a pair
(RFC 6191 counts on it): the clock's offset a keyed hash of the 4-tuple,
as the ISN's in RFC 6528, not drawn per connection."""
from harness import ERRNO, PEER_IP, Peer, active_open, passive_open, tcp_options
from preload.engine import lib

M32 = 2**32
LO = "127.0.0.1"


def add(a, b):
    return (a + b) % M32


def seq_gt(a, b):
    return 0 < (a - b) % M32 < 2**31


def settle(st, rounds=50):
    """Runs the engine until its loopback queue is empty."""
    for _ in range(rounds):
        st.advance(0)
        if st.next_deadline_ms() != 0:
            return


def loop_round(st, lsid, server_closes_first=True):
    """One connection to 127.0.0.1:80 and back to CLOSED at the client;
    returns the client's port, or None when the connection failed."""
    c = st.socket()
    assert st.connect(c, LO, 80) == ERRNO["EINPROGRESS"]
    settle(st)
    s = st.accept(lsid)
    if s < 0 or st.state(c) != "ESTABLISHED":
        st.close(c)
        return None
    port = st.info(c)["local_port"]
    first, second = (s, c) if server_closes_first else (c, s)
    assert st.close(first) == 0
    settle(st)
    assert st.close(second) == 0
    settle(st)
    return port


# ===========================================================================
# The root cause: timestamps must grow across the connections of a pair
# ===========================================================================

def test_loopback_churn_on_one_port_reuses_the_servers_time_wait(make_stack):
    """One ephemeral port, so every connection meets the server's
    TIME-WAIT of the one before.  Each SYN carries a newer timestamp and
    reopens the pair at once: no PAWS drop, no ACK to refuse it, no reset,
    no SYN sent twice.  (With a timestamp offset drawn per connection, from
    its ISN, the new SYN's TSval was older than the TIME-WAIT's TS.Recent
    about half the time: PAWS dropped it, the client reset the TIME-WAIT on
    the ACK and its connect waited a full RTO.)"""
    st = make_stack(port_lo=40000, port_hi=40000)
    lsid = st.listen(80)
    ports = []
    for _ in range(12):
        ports.append(loop_round(st, lsid))
        st.advance(5)
    assert ports == [40000] * 12
    c = st.counters()
    assert c["tcp_timewait_reuse"] == 11
    assert c["drop_tcp_paws"] == 0 and c["drop_tcp_bad_ack"] == 0
    assert c["tcp_rst_tx"] == 0 and c["tcp_retransmits"] == 0
    assert c["tcp_state"]["TIME_WAIT"] == 1


def test_timestamps_of_a_reopened_pair_continue_the_old_ones(stack, listener):
    """RFC 6191: the timestamps of a new connection on a pair
    continue from the old connection's, so the peer's TIME-WAIT (or its
    TS.Recent) takes them as newer: the offset is the pair's, not the
    connection's."""
    peer = Peer(stack, ts=100)
    sid = passive_open(stack, listener, peer)
    old_ts = peer.stack_ts
    assert stack.close(sid) == 0
    (fin,) = stack.expect({"flags": "FA"})
    old_last = tcp_options(fin)["Timestamp"][0]
    peer.rcv = add(fin.seq, 1)
    peer.tsval = 101
    peer.seg("FA", options=peer.ts_option(old_last))
    stack.expect({"flags": "A"})
    assert stack.counters()["tcp_state"]["TIME_WAIT"] == 1
    stack.advance(1500)
    p2 = Peer(stack, sport=peer.sport, isn=add(peer.nxt, 5000), ts=5000)
    p2.seg("S", options=p2.syn_options())
    (sa,) = stack.expect({"flags": "SA"})
    new_ts = tcp_options(sa)["Timestamp"][0]
    assert stack.counters()["tcp_timewait_reuse"] == 1
    # 1.5 s later on a 1 ms clock, from the same offset
    assert (new_ts - old_last) % M32 == 1500, (old_ts, old_last, new_ts)
