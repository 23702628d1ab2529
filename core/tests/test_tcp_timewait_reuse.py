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


def loop_round(st, lsid, first="server"):
    """One connection to 127.0.0.1:80, closed by the server first, the
    client first, or both at once (a simultaneous close: TIME-WAIT at both
    ends); returns the client's port, or None when the connection failed."""
    c = st.socket()
    assert st.connect(c, LO, 80) == ERRNO["EINPROGRESS"]
    settle(st)
    s = st.accept(lsid)
    if s < 0 or st.state(c) != "ESTABLISHED":
        st.close(c)
        return None
    port = st.info(c)["local_port"]
    one, two = (s, c) if first == "server" else (c, s)
    assert st.close(one) == 0
    if first != "both":
        settle(st)
    assert st.close(two) == 0
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


def test_loopback_churn_on_one_port_with_time_wait_at_both_ends(make_stack):
    """The same with a simultaneous close, as wrk and nginx often have it
    (the client closes once it has the response, before the server's FIN
    arrives): TIME-WAIT at both ends.  A second later connect takes over
    its own TIME-WAIT and the SYN reopens the server's."""
    st = make_stack(port_lo=40000, port_hi=40000)
    lsid = st.listen(80)
    ports = []
    for _ in range(6):
        ports.append(loop_round(st, lsid, first="both"))
        assert st.counters()["tcp_state"]["TIME_WAIT"] == 2
        st.advance(1000)
    assert ports == [40000] * 6
    c = st.counters()
    assert c["tcp_timewait_reuse"] == 5 and c["tcp_timewait_reuse_connect"] == 5
    assert c["drop_tcp_paws"] == 0 and c["drop_tcp_bad_ack"] == 0
    assert c["tcp_rst_tx"] == 0 and c["tcp_retransmits"] == 0


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


# ===========================================================================
# The connecting side: connect takes over a TIME-WAIT pair (tcp_tw_reuse)
# ===========================================================================

def time_wait_at_stack(make_stack, ts=True):
    """The stack connects from its one ephemeral port, 40000, and closes
    first: the pair is in TIME-WAIT at the stack.  Returns (stack, peer,
    the old connection's SND.NXT, the TSval of the stack's last ACK)."""
    st = make_stack(port_lo=40000, port_hi=40000)
    peer = Peer(st, ts=100 if ts else None)
    sid = active_open(st, peer)
    assert peer.dport == 40000
    fin_seq = st.info(sid)["snd_nxt"]
    assert st.close(sid) == 0
    (fin,) = st.expect({"flags": "FA", "seq": fin_seq})
    peer.rcv = add(fin_seq, 1)
    if ts:
        peer.tsval += 1
    peer.seg("FA", options=peer.ts_option(tcp_options(fin)["Timestamp"][0] if ts else 0))
    (ack,) = st.expect({"flags": "A", "seq": add(fin_seq, 1), "ack": peer.nxt})
    assert st.counters()["tcp_state"]["TIME_WAIT"] == 1
    return st, peer, add(fin_seq, 1), (tcp_options(ack)["Timestamp"][0] if ts else None)


def test_connect_takes_over_a_time_wait_pair_a_second_old(make_stack):
    """Linux tcp_twsk_unique(): with timestamps, and the last one a second
    old, connect reuses the pair: the ISN lies at least 64 KiB above the old
    SND.NXT, the SYN's TSval continues the old connection's, the TIME-WAIT
    is gone, and the connection opens."""
    st, peer, old_nxt, old_ts = time_wait_at_stack(make_stack)
    st.advance(1000)
    sid = st.socket()
    assert st.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    (syn,) = st.expect({"flags": "S", "sport": 40000, "dport": 80})
    assert not seq_gt(add(old_nxt, 65537), syn.seq), (old_nxt, syn.seq)
    assert (tcp_options(syn)["Timestamp"][0] - old_ts) % M32 == 1000
    c = st.counters()
    assert c["tcp_timewait_reuse_connect"] == 1
    assert c["tcp_state"]["TIME_WAIT"] == 0 and c["tcp_state"]["SYN_SENT"] == 1
    peer.tsval += 1000
    peer.nxt = add(peer.nxt, 100000)
    peer.rcv = add(syn.seq, 1)
    peer.seg("SA", ack=peer.rcv, options=[("MSS", 1460), ("Timestamp", (peer.tsval, tcp_options(syn)["Timestamp"][0]))])
    st.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert st.state(sid) == "ESTABLISHED"


def test_connect_refuses_a_time_wait_pair_younger_than_a_second(make_stack):
    """Within the second the pair stays in TIME-WAIT: the one port is not
    free, and connect fails as Linux's does when no port is."""
    st, peer, old_nxt, old_ts = time_wait_at_stack(make_stack)
    st.advance(999)
    sid = st.socket()
    assert st.connect(sid, PEER_IP, 80) == ERRNO["EADDRNOTAVAIL"]
    st.expect_nothing()
    assert st.counters()["tcp_state"]["TIME_WAIT"] == 1
    st.advance(1)
    assert st.connect(st.socket(), PEER_IP, 80) == ERRNO["EINPROGRESS"]
    st.expect({"flags": "S", "sport": 40000})


def test_connect_refuses_a_time_wait_pair_without_timestamps(make_stack):
    """Without timestamps nothing tells the peer's TIME-WAIT (or PAWS) the
    new connection from the old: the pair waits its 2 MSL."""
    st, peer, old_nxt, _ = time_wait_at_stack(make_stack, ts=False)
    st.advance(5000)
    assert st.connect(st.socket(), PEER_IP, 80) == ERRNO["EADDRNOTAVAIL"]
    assert st.counters()["tcp_state"]["TIME_WAIT"] == 1
    st.advance(60_000)
    assert st.counters()["tcp_state"]["TIME_WAIT"] == 0
    assert st.connect(st.socket(), PEER_IP, 80) == ERRNO["EINPROGRESS"]
    assert st.counters()["tcp_timewait_reuse_connect"] == 0


def test_port_choice_skips_a_young_time_wait_and_takes_an_old_one(make_stack):
    """Two ephemeral ports, one of them in TIME-WAIT for this peer: within
    the second connect takes the other; with both taken, none is left
    (EADDRNOTAVAIL); a second on, the TIME-WAIT pair is taken over, as
    Linux's __inet_hash_connect takes the first port that is free or
    reusable."""
    st = make_stack(port_lo=40000, port_hi=40001)
    peer = Peer(st, ts=100)
    sid = active_open(st, peer)
    tw_port = peer.dport
    fin_seq = st.info(sid)["snd_nxt"]
    assert st.close(sid) == 0
    (fin,) = st.expect({"flags": "FA"})
    peer.rcv = add(fin_seq, 1)
    peer.tsval += 1
    peer.seg("FA", options=peer.ts_option(tcp_options(fin)["Timestamp"][0]))
    st.expect({"flags": "A"})
    a = st.socket()
    assert st.connect(a, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    (syn,) = st.expect({"flags": "S"})
    assert syn.sport != tw_port
    assert st.connect(st.socket(), PEER_IP, 80) == ERRNO["EADDRNOTAVAIL"]
    st.advance(1000)
    st.expect({"flags": "S", "sport": syn.sport})  # a's SYN again, its RTO
    b = st.socket()
    assert st.connect(b, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    st.expect({"flags": "S", "sport": tw_port})
    assert st.counters()["tcp_timewait_reuse_connect"] == 1


def test_connect_from_a_bound_port_takes_over_its_time_wait(make_stack):
    """bind (SO_REUSEADDR, which a TIME-WAIT yields to) then connect to the
    same peer: the same rule, EADDRNOTAVAIL within the second."""
    st, peer, old_nxt, old_ts = time_wait_at_stack(make_stack)
    sid = st.socket()
    assert st.setopt(sid, lib.SS_OPT_REUSEADDR, 1) == 0
    assert lib.ss_tcp_bind(st.e, sid, 0, 40000) == 0
    st.advance(500)
    assert st.connect(sid, PEER_IP, 80) == ERRNO["EADDRNOTAVAIL"]
    st.advance(500)
    assert st.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    (syn,) = st.expect({"flags": "S", "sport": 40000})
    assert not seq_gt(add(old_nxt, 65537), syn.seq)
    assert st.counters()["tcp_timewait_reuse_connect"] == 1


def test_reused_pair_in_syn_sent_drops_a_syn_older_than_the_old_connection(make_stack):
    """TS.Recent carries over from the TIME-WAIT: a SYN without ACK (what a
    simultaneous open would be) older than it is an old duplicate (RFC 7323
    5.3); it is dropped, not answered with a SYN-ACK."""
    st, peer, old_nxt, old_ts = time_wait_at_stack(make_stack)
    st.advance(1000)
    sid = st.socket()
    assert st.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    st.expect({"flags": "S"})
    old = Peer(st, sport=80, isn=add(peer.nxt, 7), ts=peer.tsval - 5)
    old.dport = 40000
    old.seg("S", options=old.syn_options())
    st.expect_nothing()
    assert st.counters()["drop_tcp_paws"] == 1
    assert st.state(sid) == "SYN_SENT"


def test_syn_refused_by_an_ack_goes_again_at_once(stack):
    """A SYN that meets the peer's TIME-WAIT may draw an ACK for the old
    connection: we reset (which ends that TIME-WAIT) and send the SYN again
    2 ms later, not after the initial RTO of a second (Linux,
    tcp_rcv_synsent_state_process).  Only once: the retransmission backs
    off as usual."""
    sid = stack.socket()
    assert stack.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    (syn,) = stack.expect({"flags": "S"})
    tw = Peer(stack, sport=80, isn=5000)
    tw.dport = syn.sport
    tw.seg("A", ack=add(syn.seq, -12345))
    stack.expect({"flags": "R", "seq": add(syn.seq, -12345)})
    stack.expect_at(2, {"flags": "S", "seq": syn.seq})
    tw.seg("A", ack=add(syn.seq, -12345))
    stack.expect({"flags": "R"})
    stack.expect_at(2000, {"flags": "S", "seq": syn.seq})
    assert stack.counters()["drop_tcp_bad_ack"] == 2


# ===========================================================================
# The receiving side: a SYN that meets a TIME-WAIT (RFC 6191)
# ===========================================================================

def time_wait_at_server(stack, listener, ts=True):
    peer = Peer(stack, ts=100 if ts else None)
    sid = passive_open(stack, listener, peer)
    assert stack.close(sid) == 0
    (fin,) = stack.expect({"flags": "FA"})
    peer.rcv = add(fin.seq, 1)
    peer.tsval = 200 if ts else None
    peer.seg("FA", options=peer.ts_option(tcp_options(fin)["Timestamp"][0]) if ts else [])
    stack.expect({"flags": "A"})
    assert stack.counters()["tcp_state"]["TIME_WAIT"] == 1
    return peer


def test_time_wait_takes_a_syn_with_a_newer_timestamp_and_a_lower_seq(stack, listener):
    """RFC 6191: with timestamps on both incarnations the timestamp decides,
    whatever the sequence number."""
    peer = time_wait_at_server(stack, listener)
    p2 = Peer(stack, sport=peer.sport, isn=add(peer.nxt, -100000), ts=201)
    p2.seg("S", options=p2.syn_options())
    stack.expect({"flags": "SA", "ack": add(p2.isn, 1)})
    c = stack.counters()
    assert c["tcp_timewait_reuse"] == 1 and c["drop_tcp_paws"] == 0


def test_time_wait_refuses_a_syn_with_an_older_timestamp_and_a_higher_seq(stack, listener):
    """RFC 6191: an older (or equal) timestamp keeps the TIME-WAIT, even
    above RCV.NXT.  An older one fails PAWS, an equal one the sequence
    check (RFC 5961 4.2: a challenge ACK); either way the ACK tells the peer
    where the old connection stands (its reset ends the TIME-WAIT, as in
    Linux)."""
    peer = time_wait_at_server(stack, listener)
    for tsval in (199, 200):
        p2 = Peer(stack, sport=peer.sport, isn=add(peer.nxt, 100000), ts=tsval)
        p2.seg("S", options=p2.syn_options())
        stack.expect({"flags": "A", "ack": peer.nxt})
    c = stack.counters()
    assert c["tcp_timewait_reuse"] == 0 and c["drop_tcp_paws"] == 1 and c["drop_tcp_out_of_window"] == 1
    assert c["tcp_state"]["TIME_WAIT"] == 1
