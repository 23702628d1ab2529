"""The user calls of the engine: errno values (the Linux kernel's for the
same misuse), readiness masks (Linux's tcp_poll), readiness events, backlog,
SO_LINGER, ephemeral ports, option inheritance and counters.

Each test also states which segments go out, and where silence is right.
"""
import pytest

from harness import ERRNO, PEER_IP, STACK_IP, Peer, active_open, ip2int, passive_open
from preload.engine import ffi, lib

IN, OUT, ERR, HUP, RDHUP = lib.SS_EV_IN, lib.SS_EV_OUT, lib.SS_EV_ERR, lib.SS_EV_HUP, lib.SS_EV_RDHUP
M32 = 2**32
FIN_ACK_MS = 100  # see test_tcp_states.py: the ACK of a FIN may be delayed


def add(a, b):
    return (a + b) % M32


def connections(stack):
    g = stack.counters()["tcp_state"]
    return sum(v for k, v in g.items() if k not in ("CLOSED", "LISTEN"))


def bind(stack, sid, port, ip=0):
    return lib.ss_tcp_bind(stack.e, sid, ip, port)


def listen(stack, sid, backlog=16):
    return lib.ss_tcp_listen(stack.e, sid, backlog)


def syn_sent(stack, port=80):
    sid = stack.socket()
    assert stack.connect(sid, PEER_IP, port) == ERRNO["EINPROGRESS"]
    (syn,) = stack.expect({"flags": "S", "dport": port})
    return sid, syn


# ===========================================================================
# errno of each call (Linux's answers)
# ===========================================================================

def test_send_on_unconnected_socket_is_epipe(stack):
    sid = stack.socket()
    assert stack.write(sid, b"x") == ERRNO["EPIPE"]
    stack.expect_nothing()


def test_recv_on_unconnected_socket_is_enotconn(stack):
    sid = stack.socket()
    assert stack.read(sid) == ERRNO["ENOTCONN"]


def test_recv_on_listener_is_enotconn(stack, listener):
    assert stack.read(listener) == ERRNO["ENOTCONN"]


def test_send_on_listener_is_epipe(stack, listener):
    assert stack.write(listener, b"x") == ERRNO["EPIPE"]
    stack.expect_nothing()


def test_send_and_recv_while_connecting_are_eagain(stack):
    sid, _ = syn_sent(stack)
    assert stack.write(sid, b"x") == ERRNO["EAGAIN"]
    assert stack.read(sid) == ERRNO["EAGAIN"]
    stack.expect_nothing()


def test_connect_while_connecting_is_ealready(stack):
    sid, _ = syn_sent(stack)
    assert stack.connect(sid, PEER_IP, 80) == ERRNO["EALREADY"]
    assert stack.connect(sid, PEER_IP, 81) == ERRNO["EALREADY"]
    stack.expect_nothing()  # no second SYN
    assert stack.state(sid) == "SYN_SENT"


def test_connect_on_connected_socket_is_eisconn(active):
    stack, sid, peer = active
    # Linux returns 0 once to the connect() that observes the completed
    # non-blocking connect, then EISCONN; POSIX says EISCONN.
    assert stack.connect(sid, PEER_IP, 80) in (0, ERRNO["EISCONN"])
    assert stack.connect(sid, PEER_IP, 80) == ERRNO["EISCONN"]
    stack.expect_nothing()


def test_connect_on_accepted_socket_is_eisconn(passive):
    stack, sid, peer = passive
    assert stack.connect(sid, PEER_IP, 80) == ERRNO["EISCONN"]
    stack.expect_nothing()


def test_connect_on_listener_is_eisconn(stack, listener):
    assert stack.connect(listener, PEER_IP, 80) == ERRNO["EISCONN"]
    stack.expect_nothing()
    assert stack.state(listener) == "LISTEN"


def test_listen_on_connected_socket_is_einval(active):
    stack, sid, peer = active
    assert listen(stack, sid) == ERRNO["EINVAL"]
    assert stack.state(sid) == "ESTABLISHED"


def test_listen_on_accepted_socket_is_einval(passive):
    stack, sid, peer = passive
    assert listen(stack, sid) == ERRNO["EINVAL"]


def test_listen_on_connecting_socket_is_einval(stack):
    sid, _ = syn_sent(stack)
    assert listen(stack, sid) == ERRNO["EINVAL"]


def test_listen_twice_is_allowed(stack, listener):
    assert listen(stack, listener, 4) == 0
    assert stack.state(listener) == "LISTEN"


def test_bind_twice_is_einval(stack):
    sid = stack.socket()
    assert bind(stack, sid, 8080) == 0
    assert bind(stack, sid, 8081) == ERRNO["EINVAL"]
    assert bind(stack, sid, 8080) == ERRNO["EINVAL"]


def test_bind_after_listen_or_connect_is_einval(stack, listener):
    assert bind(stack, listener, 9000) == ERRNO["EINVAL"]
    sid, _ = syn_sent(stack)
    assert bind(stack, sid, 9001) == ERRNO["EINVAL"]


def test_bind_conflict_is_eaddrinuse(stack):
    a, b = stack.socket(), stack.socket()
    assert bind(stack, a, 8080) == 0
    assert bind(stack, b, 8080) == ERRNO["EADDRINUSE"]
    # The specific address overlaps the wildcard.
    assert bind(stack, b, 8080, ip2int(STACK_IP)) == ERRNO["EADDRINUSE"]
    assert bind(stack, b, 8081) == 0


def test_bind_reuseaddr_needed_on_both_sockets(stack):
    a, b = stack.socket(), stack.socket()
    assert stack.setopt(a, lib.SS_OPT_REUSEADDR, 1) == 0
    assert bind(stack, a, 8080) == 0
    assert bind(stack, b, 8080) == ERRNO["EADDRINUSE"]
    c, d = stack.socket(), stack.socket()
    assert bind(stack, c, 8090) == 0
    assert stack.setopt(d, lib.SS_OPT_REUSEADDR, 1) == 0
    assert bind(stack, d, 8090) == ERRNO["EADDRINUSE"]


def test_bind_reuseaddr_shares_port_but_only_one_listens(stack):
    a, b = stack.socket(), stack.socket()
    for s in (a, b):
        assert stack.setopt(s, lib.SS_OPT_REUSEADDR, 1) == 0
        assert bind(stack, s, 8080) == 0
    assert listen(stack, a) == 0
    assert listen(stack, b) == ERRNO["EADDRINUSE"]
    c = stack.socket()
    assert stack.setopt(c, lib.SS_OPT_REUSEADDR, 1) == 0
    assert bind(stack, c, 8080) == ERRNO["EADDRINUSE"]  # a listener never shares


def test_bind_port_of_time_wait_connection_needs_reuseaddr(stack):
    # The classic server restart: the old server's connection lingers in
    # TIME-WAIT on port 80.  Linux keeps TIME-WAIT sockets in the port's
    # bind bucket: bind() fails with EADDRINUSE unless SO_REUSEADDR is set
    # (on both, as servers do).
    lsid = stack.socket()
    assert stack.setopt(lsid, lib.SS_OPT_REUSEADDR, 1) == 0
    assert bind(stack, lsid, 80) == 0 and listen(stack, lsid) == 0
    peer = Peer(stack)
    sid = passive_open(stack, lsid, peer)
    fin = stack.info(sid)["snd_nxt"]
    assert stack.close(sid) == 0
    stack.expect({"flags": "FA", "seq": fin})
    peer.rcv = add(fin, 1)
    peer.seg("FA")
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    assert stack.counters()["tcp_state"]["TIME_WAIT"] == 1
    assert stack.close(lsid) == 0
    stack.expect_nothing()
    plain = stack.socket()
    assert bind(stack, plain, 80) == ERRNO["EADDRINUSE"]
    reuse = stack.socket()
    assert stack.setopt(reuse, lib.SS_OPT_REUSEADDR, 1) == 0
    assert bind(stack, reuse, 80) == 0
    assert listen(stack, reuse) == 0


def test_bind_port_of_live_accepted_connection_is_eaddrinuse(stack):
    # Linux: an accepted socket inherits its listener's port binding, so a
    # restarted server (no SO_REUSEADDR) cannot bind while it lives.
    lsid = stack.listen(80)
    peer = Peer(stack)
    sid = passive_open(stack, lsid, peer)
    assert stack.close(lsid) == 0
    stack.expect_nothing()
    assert stack.state(sid) == "ESTABLISHED"
    again = stack.socket()
    assert bind(stack, again, 80) == ERRNO["EADDRINUSE"]


def test_bind_to_foreign_address_is_eaddrnotavail(stack):
    sid = stack.socket()
    assert bind(stack, sid, 8080, ip2int("198.18.0.77")) == ERRNO["EADDRNOTAVAIL"]
    assert bind(stack, sid, 8080, ip2int(STACK_IP)) == 0


def test_accept_on_non_listener_is_einval(stack, active):
    _, sid, _ = active
    fresh = stack.socket()
    assert stack.accept(fresh) == ERRNO["EINVAL"]
    assert stack.accept(sid) == ERRNO["EINVAL"]


def test_accept_with_empty_queue_is_eagain(stack, listener):
    assert stack.accept(listener) == ERRNO["EAGAIN"]
    peer = Peer(stack)
    peer.seg("S", options=peer.syn_options())
    stack.expect({"flags": "SA", "ack": peer.nxt})
    assert stack.accept(listener) == ERRNO["EAGAIN"]  # still half-open


def test_shutdown_unconnected_is_enotconn(stack):
    sid = stack.socket()
    for how in (0, 1, 2):
        assert stack.shutdown(sid, how) == ERRNO["ENOTCONN"]
    stack.expect_nothing()


@pytest.mark.parametrize("how", [-1, 3, 7])
def test_shutdown_invalid_how_is_einval(passive, how):
    stack, sid, peer = passive
    assert stack.shutdown(sid, how) == ERRNO["EINVAL"]
    stack.expect_nothing()
    assert stack.state(sid) == "ESTABLISHED"


def test_shutdown_wr_on_listener_does_nothing(stack, listener):
    # Linux inet_shutdown: TCP_LISTEN without RCV_SHUTDOWN -> break, err 0.
    assert stack.shutdown(listener, 1) == 0
    assert stack.state(listener) == "LISTEN"
    peer = Peer(stack)
    peer.seg("S", options=peer.syn_options())
    stack.expect({"flags": "SA", "ack": peer.nxt})


def test_shutdown_rd_on_listener_stops_listening(stack, listener):
    assert stack.shutdown(listener, 0) == 0
    assert stack.accept(listener) == ERRNO["EINVAL"]
    peer = Peer(stack)
    peer.seg("S", options=peer.syn_options())
    stack.expect({"flags": "RA", "seq": 0, "ack": peer.nxt})


def test_send_after_shutdown_wr_is_epipe(passive):
    stack, sid, peer = passive
    fin = stack.info(sid)["snd_nxt"]
    assert stack.shutdown(sid, 1) == 0
    stack.expect({"flags": "FA", "seq": fin, "ack": peer.nxt})
    assert stack.write(sid, b"late") == ERRNO["EPIPE"]
    stack.expect_nothing()


def test_recv_after_shutdown_rd_returns_zero(passive):
    stack, sid, peer = passive
    assert stack.shutdown(sid, 0) == 0
    stack.expect_nothing()  # SHUT_RD sends nothing
    assert stack.read(sid) == b""


def test_connect_to_unroutable_address_is_enetunreach(stack):
    sid = stack.socket()
    for ip in ("10.0.0.1", "8.8.8.8", "224.0.0.1", "255.255.255.255"):
        assert stack.connect(sid, ip, 80) == ERRNO["ENETUNREACH"], ip
    stack.expect_nothing()
    assert stack.state(sid) == "CLOSED"
    assert stack.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    stack.expect({"flags": "S", "dport": 80})


def test_recv_and_send_after_reset(passive):
    stack, sid, peer = passive
    peer.seg("R")
    stack.expect_nothing()
    assert stack.read(sid) == ERRNO["ECONNRESET"]
    assert stack.read(sid) == b""
    assert stack.write(sid, b"x") == ERRNO["EPIPE"]


def test_send_after_reset_reports_econnreset_first(passive):
    stack, sid, peer = passive
    peer.seg("R")
    assert stack.write(sid, b"x") == ERRNO["ECONNRESET"]
    assert stack.write(sid, b"x") == ERRNO["EPIPE"]
    stack.expect_nothing()


def test_so_error_after_reset_is_econnreset(passive):
    stack, sid, peer = passive
    peer.seg("R")
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == -ERRNO["ECONNRESET"]
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == 0
    assert stack.read(sid) == b""


def reset_in_close_wait(stack, sid, peer):
    peer.seg("FA")
    stack.advance(FIN_ACK_MS)
    stack.expect({"flags": "A", "ack": peer.nxt})
    assert stack.state(sid) == "CLOSE_WAIT"
    peer.seg("R")
    stack.expect_nothing()
    assert stack.state(sid) == "CLOSED"


def test_reset_in_close_wait_read_returns_end_of_stream(passive):
    # Linux tcp_recvmsg checks SOCK_DONE (set by the FIN) before sk_err:
    # the reader already saw the end of the stream and gets 0 again.
    stack, sid, peer = passive
    reset_in_close_wait(stack, sid, peer)
    assert stack.read(sid) == b""


def test_reset_in_close_wait_send_is_epipe(passive):
    # Linux tcp_reset: "case TCP_CLOSE_WAIT: err = EPIPE".
    stack, sid, peer = passive
    reset_in_close_wait(stack, sid, peer)
    assert stack.write(sid, b"x") == ERRNO["EPIPE"]
    stack.expect_nothing()


def test_reset_in_close_wait_so_error_is_epipe(passive):
    stack, sid, peer = passive
    reset_in_close_wait(stack, sid, peer)
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == -ERRNO["EPIPE"]


BAD_CALLS = {
    "bind": lambda s, sid: lib.ss_tcp_bind(s.e, sid, 0, 1234),
    "listen": lambda s, sid: lib.ss_tcp_listen(s.e, sid, 5),
    "accept": lambda s, sid: lib.ss_tcp_accept(s.e, sid, s.now),
    "connect": lambda s, sid: s.connect(sid, PEER_IP, 80),
    "send": lambda s, sid: s.write(sid, b"x"),
    "recv": lambda s, sid: s.read(sid),
    "shutdown": lambda s, sid: s.shutdown(sid, 2),
    "close": lambda s, sid: s.close(sid),
    "setopt": lambda s, sid: s.setopt(sid, lib.SS_OPT_NODELAY, 1),
    "getopt": lambda s, sid: s.getopt(sid, lib.SS_OPT_NODELAY),
    "poll": lambda s, sid: s.poll(sid),
    "info": lambda s, sid: lib.ss_tcp_info(s.e, sid, ffi.new("struct ss_tcp_info *")),
}


@pytest.mark.parametrize("call", sorted(BAD_CALLS))
def test_bad_socket_id_is_ebadf(stack, call):
    for sid in (-1, 7, 10**6):
        assert BAD_CALLS[call](stack, sid) == ERRNO["EBADF"], sid
    stack.expect_nothing()


def test_closed_id_is_ebadf(stack):
    sid = stack.socket()
    assert stack.close(sid) == 0
    assert stack.close(sid) == ERRNO["EBADF"]
    assert stack.poll(sid) == ERRNO["EBADF"]


@pytest.mark.parametrize("opt,value", [
    ("KEEPIDLE", 0), ("KEEPIDLE", 32768), ("KEEPIDLE", -1),
    ("KEEPINTVL", 0), ("KEEPINTVL", 32768),
    ("KEEPCNT", 0), ("KEEPCNT", 128),
    ("MAXSEG", 87), ("MAXSEG", 32768), ("MAXSEG", -1),
])
def test_setopt_invalid_value_is_einval(stack, opt, value):
    sid = stack.socket()
    o = getattr(lib, "SS_OPT_" + opt)
    before = stack.getopt(sid, o)
    assert stack.setopt(sid, o, value) == ERRNO["EINVAL"]
    assert stack.getopt(sid, o) == before


def test_setopt_boundary_values_accepted(stack):
    sid = stack.socket()
    for opt, value in (("KEEPIDLE", 1), ("KEEPIDLE", 32767), ("KEEPINTVL", 1), ("KEEPINTVL", 32767),
                       ("KEEPCNT", 1), ("KEEPCNT", 127), ("MAXSEG", 88), ("MAXSEG", 32767)):
        o = getattr(lib, "SS_OPT_" + opt)
        assert stack.setopt(sid, o, value) == 0, (opt, value)
        assert stack.getopt(sid, o) == value, (opt, value)


def test_setopt_maxseg_zero_is_accepted(stack):
    # Linux do_tcp_setsockopt: "if (val && (val < TCP_MIN_MSS || val >
    # MAX_TCP_WINDOW)) return -EINVAL": 0 means "no user MSS".
    sid = stack.socket()
    assert stack.setopt(sid, lib.SS_OPT_MAXSEG, 0) == 0


def test_setopt_rcvbuf_is_doubled_as_linux(stack):
    sid = stack.socket()
    assert stack.setopt(sid, lib.SS_OPT_RCVBUF, 65536) == 0
    assert stack.getopt(sid, lib.SS_OPT_RCVBUF) == 131072
    assert stack.setopt(sid, lib.SS_OPT_SNDBUF, 32768) == 0
    assert stack.getopt(sid, lib.SS_OPT_SNDBUF) == 65536


def test_unknown_option_is_enoprotoopt(stack):
    sid = stack.socket()
    assert stack.setopt(sid, 999, 1) == ERRNO["ENOPROTOOPT"]
    assert stack.getopt(sid, 999) == ERRNO["ENOPROTOOPT"]
    assert stack.setopt(sid, 0, 1) == ERRNO["ENOPROTOOPT"]
    # SO_ERROR can be read, not written.
    assert stack.setopt(sid, lib.SS_OPT_ERROR, 0) == ERRNO["ENOPROTOOPT"]
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == 0


# ===========================================================================
# poll() masks (Linux tcp_poll)
# ===========================================================================

def test_poll_fresh_socket_is_out_hup(stack):
    sid = stack.socket()
    assert stack.poll(sid) == OUT | HUP


def test_poll_connecting_socket_is_zero(stack):
    sid, _ = syn_sent(stack)
    assert stack.poll(sid) == 0


def test_poll_established_is_out_then_in_with_data(passive):
    stack, sid, peer = passive
    assert stack.poll(sid) == OUT
    peer.seg("PA", b"data")
    assert stack.poll(sid) == IN | OUT
    assert stack.read(sid) == b"data"
    assert stack.poll(sid) == OUT


def test_poll_listener_in_when_connection_waits(stack, listener):
    assert stack.poll(listener) == 0
    peer = Peer(stack)
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA"})
    assert stack.poll(listener) == 0  # half-open connections do not count
    peer.rcv = add(sa.seq, 1)
    peer.seg("A")
    assert stack.poll(listener) == IN
    assert stack.accept(listener) >= 0
    assert stack.poll(listener) == 0


def test_poll_after_peer_fin_is_in_rdhup(passive):
    stack, sid, peer = passive
    peer.seg("FA")
    stack.advance(FIN_ACK_MS)
    stack.expect({"flags": "A", "ack": peer.nxt})
    assert stack.poll(sid) == IN | OUT | RDHUP


def test_poll_after_rst_is_err(passive):
    stack, sid, peer = passive
    peer.seg("R")
    assert stack.poll(sid) == IN | OUT | ERR | HUP | RDHUP
    assert stack.read(sid) == ERRNO["ECONNRESET"]
    assert stack.poll(sid) == IN | OUT | HUP | RDHUP


def test_poll_after_refused_connect_is_err(stack):
    sid, syn = syn_sent(stack)
    peer = Peer(stack, sport=80, dport=syn.sport)
    peer.seg("RA", seq=0, ack=add(syn.seq, 1))
    stack.expect_nothing()
    assert stack.poll(sid) == IN | OUT | ERR | HUP | RDHUP


def test_poll_after_shutdown_wr_then_peer_fin(passive):
    stack, sid, peer = passive
    fin = stack.info(sid)["snd_nxt"]
    stack.shutdown(sid, 1)
    stack.expect({"flags": "FA", "seq": fin})
    assert stack.poll(sid) == OUT
    peer.rcv = add(fin, 1)
    peer.seg("FA")
    stack.expect({"flags": "A", "seq": add(fin, 1), "ack": peer.nxt})
    assert stack.poll(sid) == IN | OUT | HUP | RDHUP


# ===========================================================================
# ss_engine_take_events
# ===========================================================================

def test_take_events_coalesces_changes(passive):
    stack, sid, peer = passive
    stack.events()
    assert stack.events() == []
    peer.seg("PA", b"a")
    peer.seg("PA", b"b")
    peer.seg("PA", b"c")
    peer.seg("FA")
    stack.advance(FIN_ACK_MS)
    # Pure ACKs only (how many depends on the ACK policy), the last one
    # covering the FIN.
    segs = stack.take_tcp()
    assert segs and all(str(x.flags) == "A" and not bytes(x.payload) for x in segs)
    assert segs[-1].ack == peer.nxt
    assert stack.events() == [sid]
    assert stack.events() == []
    assert stack.write(sid, b"x") == 1
    stack.expect({"flags": "PA", "len": 1})
    peer.seg("A", ack=stack.info(sid)["snd_nxt"])
    assert stack.events().count(sid) == 1


def test_take_events_listener_once_for_several_connections(stack, listener):
    stack.events()
    for port in (40001, 40002, 40003):
        peer = Peer(stack, sport=port)
        passive_open_no_accept(stack, peer)
    ev = stack.events()
    assert ev == [listener]
    assert stack.events() == []


def test_take_events_reports_connect_outcome(stack):
    sid, syn = syn_sent(stack)
    stack.events()
    peer = Peer(stack, sport=80, dport=syn.sport, isn=5000)
    peer.rcv = add(syn.seq, 1)
    peer.seg("SA", options=[("MSS", 1460)])
    stack.expect({"flags": "A", "ack": 5001})
    assert stack.events() == [sid]
    assert stack.poll(sid) == OUT


def test_take_events_respects_max(stack):
    sids = [stack.socket() for _ in range(3)]
    stack.events()
    peers = []
    for i, s in enumerate(sids):
        assert bind(stack, s, 1000 + i) == 0 and listen(stack, s) == 0
        p = Peer(stack, dport=1000 + i, sport=41000 + i)
        passive_open_no_accept(stack, p)
        peers.append(p)
    buf = ffi.new("int[8]")
    assert lib.ss_engine_take_events(stack.e, buf, 2) == 2
    first = [buf[0], buf[1]]
    assert lib.ss_engine_take_events(stack.e, buf, 8) == 1
    assert sorted(first + [buf[0]]) == sorted(sids)
    assert lib.ss_engine_take_events(stack.e, buf, 8) == 0


def passive_open_no_accept(stack, peer):
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": peer.nxt})
    peer.rcv = add(sa.seq, 1)
    peer.seg("A")
    stack.expect_nothing()
    return sa


# ===========================================================================
# Backlog
# ===========================================================================

def test_accept_queue_holds_backlog_plus_one_then_drops_syn(stack):
    lsid = stack.listen(80, backlog=1)
    for port in (40001, 40002):
        passive_open_no_accept(stack, Peer(stack, sport=port))
    late = Peer(stack, sport=40003)
    late.seg("S", options=late.syn_options())
    stack.expect_nothing()  # Linux: SYN dropped when the accept queue is full
    c = stack.counters()
    assert c["drop_tcp_listen_overflow"] == 1
    assert c["tcp_state"]["SYN_RECEIVED"] == 0
    assert stack.accept(lsid) >= 0
    late.seg("S", seq=late.isn, options=late.syn_options(), advance=False)
    stack.expect({"flags": "SA", "ack": late.isn + 1})
    assert stack.accept(lsid) >= 0
    assert stack.accept(lsid) == ERRNO["EAGAIN"]


def test_backlog_zero_holds_one_connection(stack):
    lsid = stack.listen(80, backlog=0)
    passive_open_no_accept(stack, Peer(stack, sport=40001))
    p = Peer(stack, sport=40002)
    p.seg("S", options=p.syn_options())
    stack.expect_nothing()
    assert stack.counters()["drop_tcp_listen_overflow"] == 1
    assert stack.accept(lsid) >= 0


def test_closing_listener_resets_unaccepted_connections(stack):
    lsid = stack.listen(80)
    p = Peer(stack, sport=40001)
    sa = passive_open_no_accept(stack, p)
    assert stack.close(lsid) == 0
    stack.expect({"flags": "RA", "seq": add(sa.seq, 1), "ack": p.nxt})
    assert connections(stack) == 0


# ===========================================================================
# SO_LINGER zero
# ===========================================================================

def test_linger_zero_close_sends_rst(passive):
    stack, sid, peer = passive
    s = stack.info(sid)["snd_nxt"]
    assert stack.setopt(sid, lib.SS_OPT_LINGER_ZERO, 1) == 0
    assert stack.getopt(sid, lib.SS_OPT_LINGER_ZERO) == 1
    assert stack.close(sid) == 0
    stack.expect({"flags": "RA", "seq": s, "ack": peer.nxt, "len": 0})
    assert connections(stack) == 0
    stack.advance(60000)
    stack.expect_nothing()
    peer.seg("A", ack=s)
    stack.expect({"flags": "R", "seq": s})


def test_linger_zero_discards_unsent_data(passive):
    stack, sid, peer = passive
    s = stack.info(sid)["snd_nxt"]
    assert stack.write(sid, b"sent") == 4
    stack.expect({"flags": "PA", "seq": s, "len": 4})
    assert stack.write(sid, b"queued") == 6  # Nagle holds it: "sent" is unacked
    stack.expect_nothing()
    stack.setopt(sid, lib.SS_OPT_LINGER_ZERO, 1)
    stack.close(sid)
    stack.expect({"flags": "RA", "seq": add(s, 4), "ack": peer.nxt})
    stack.advance(5000)
    stack.expect_nothing()


# ===========================================================================
# Ephemeral ports
# ===========================================================================

def test_connect_ports_within_range_then_eaddrnotavail(make_stack):
    stack = make_stack(port_lo=50000, port_hi=50002)
    ports = set()
    for _ in range(3):
        sid = stack.socket()
        assert stack.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
        (syn,) = stack.expect({"flags": "S", "dport": 80})
        assert 50000 <= syn.sport <= 50002
        assert stack.info(sid)["local_port"] == syn.sport
        ports.add(syn.sport)
    assert len(ports) == 3
    sid = stack.socket()
    assert stack.connect(sid, PEER_IP, 80) == ERRNO["EADDRNOTAVAIL"]
    stack.expect_nothing()
    # Another destination may reuse the same local ports.
    assert stack.connect(sid, PEER_IP, 81) == ERRNO["EINPROGRESS"]
    (syn,) = stack.expect({"flags": "S", "dport": 81})
    assert 50000 <= syn.sport <= 50002


def test_bind_port_zero_picks_ephemeral_port(make_stack):
    stack = make_stack(port_lo=45000, port_hi=45009)
    seen = set()
    for _ in range(3):
        sid = stack.socket()
        assert bind(stack, sid, 0) == 0
        p = stack.info(sid)["local_port"]
        assert 45000 <= p <= 45009
        seen.add(p)
    assert len(seen) == 3


def test_listen_without_bind_picks_ephemeral_port(make_stack):
    stack = make_stack(port_lo=45000, port_hi=45009)
    sid = stack.socket()
    assert listen(stack, sid) == 0
    p = stack.info(sid)["local_port"]
    assert 45000 <= p <= 45009
    peer = Peer(stack, dport=p)
    peer.seg("S", options=peer.syn_options())
    stack.expect({"flags": "SA", "sport": p, "ack": peer.nxt})


# ===========================================================================
# Options inherited by accepted sockets
# ===========================================================================

def test_accepted_socket_inherits_nodelay_and_keepalive(stack):
    lsid = stack.socket()
    assert stack.setopt(lsid, lib.SS_OPT_NODELAY, 1) == 0
    assert stack.setopt(lsid, lib.SS_OPT_KEEPALIVE, 1) == 0
    assert stack.setopt(lsid, lib.SS_OPT_KEEPIDLE, 60) == 0
    assert bind(stack, lsid, 80) == 0 and listen(stack, lsid) == 0
    sid = passive_open(stack, lsid, Peer(stack))
    assert stack.getopt(sid, lib.SS_OPT_NODELAY) == 1
    assert stack.getopt(sid, lib.SS_OPT_KEEPALIVE) == 1
    assert stack.getopt(sid, lib.SS_OPT_KEEPIDLE) == 60


def test_accepted_socket_defaults_without_listener_options(passive):
    stack, sid, peer = passive
    assert stack.getopt(sid, lib.SS_OPT_NODELAY) == 0
    assert stack.getopt(sid, lib.SS_OPT_KEEPALIVE) == 0


def test_inherited_nodelay_sends_small_segments_at_once(stack):
    lsid = stack.socket()
    stack.setopt(lsid, lib.SS_OPT_NODELAY, 1)
    assert bind(stack, lsid, 80) == 0 and listen(stack, lsid) == 0
    peer = Peer(stack)
    sid = passive_open(stack, lsid, peer)
    s = stack.info(sid)["snd_nxt"]
    assert stack.write(sid, b"a") == 1
    assert stack.write(sid, b"b") == 1  # Nagle off: not held back
    stack.expect({"flags": "PA", "seq": s, "payload": b"a"},
                 {"flags": "PA", "seq": add(s, 1), "payload": b"b"})


# ===========================================================================
# Counters and state gauges
# ===========================================================================

def test_open_counters(stack, listener):
    c = stack.counters()
    assert (c["tcp_passive_opens"], c["tcp_active_opens"]) == (0, 0)
    passive_open(stack, listener, Peer(stack, sport=40001))
    active_open(stack, Peer(stack))
    c = stack.counters()
    assert (c["tcp_passive_opens"], c["tcp_active_opens"]) == (1, 1)


def test_state_gauges_follow_the_connection(stack):
    g = lambda: {k: v for k, v in stack.counters()["tcp_state"].items() if v}
    assert g() == {}
    lsid = stack.socket()
    assert g() == {"CLOSED": 1}
    assert bind(stack, lsid, 80) == 0 and listen(stack, lsid) == 0
    assert g() == {"LISTEN": 1}
    peer = Peer(stack)
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA"})
    assert g() == {"LISTEN": 1, "SYN_RECEIVED": 1}
    peer.rcv = add(sa.seq, 1)
    peer.seg("A")
    assert g() == {"LISTEN": 1, "ESTABLISHED": 1}
    sid = stack.accept(lsid)
    peer.seg("FA")
    stack.advance(FIN_ACK_MS)
    stack.expect({"flags": "A", "ack": peer.nxt})
    assert g() == {"LISTEN": 1, "CLOSE_WAIT": 1}
    fin = stack.info(sid)["snd_nxt"]
    stack.close(sid)
    stack.expect({"flags": "FA", "seq": fin})
    assert g() == {"LISTEN": 1, "LAST_ACK": 1}
    peer.seg("A", ack=add(fin, 1))
    assert g() == {"LISTEN": 1}
    stack.close(lsid)
    assert g() == {}


# ---------------------------------------------------------------------------
# Ephemeral ports that steer home (port_mod/port_rem, Receive Flow Deliver)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mod,rem", [(2, 0), (2, 1), (3, 2), (7, 5)])
def test_connect_ports_encode_the_instance(make_stack, mod, rem):
    stack = make_stack(port_mod=mod, port_rem=rem)
    for _ in range(20):
        sid = stack.socket()
        assert stack.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
        (syn,) = stack.expect({"flags": "S"})
        assert syn.sport % mod == rem and 32768 <= syn.sport <= 60999


def test_port_rem_out_of_range_is_refused(make_stack):
    with pytest.raises(ValueError):
        make_stack(port_mod=2, port_rem=2)
    from preload.engine import ffi, lib
    c = ffi.new("struct ss_engine_config *")
    lib.ss_engine_config_init(c)
    c.ip, c.port_mod, c.port_rem = 1, 2, 2
    c.tx = lib.ss_py_tx
    assert b"port_mod/port_rem" in ffi.string(lib.ss_engine_config_check(c))
