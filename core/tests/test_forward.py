"""Flow ownership across the instances of a group (engine.h flow_publish,
flow_owner, forward): a segment that reaches an instance which does not hold
its connection goes, whole and unanswered, to the instance that does.

Two engines share a directory kept in Python here; shardsockd keeps the same
directory in shared memory (core/daemon/fwd.c) and its tests run it on a real
device (test_instances.py)."""
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from harness import ERRNO, PEER_IP, PEER_MAC, STACK_IP, STACK_MAC, Peer, Stack, ip2int, passive_open, tcp_options
from preload.engine import ffi, lib


class Group:
    """A directory of flows -> owning instance, and the forwarding rings."""

    def __init__(self, n=2, ring_full=False):
        self.owner = {}            # (rip, rport, lport) -> instance
        self.listeners = {}        # port -> set of instances
        self.active = {}           # port -> set of instances whose listener is in use
        self.log = []              # (instance, add, key) in publish order
        self.rings = [[] for _ in range(n)]
        self.ring_full = ring_full
        self.ctx = [ffi.new_handle((self, k)) for k in range(n)]
        self.stacks = [Stack(flow_publish=lib.ss_py_flow_publish, flow_owner=lib.ss_py_flow_owner,
                             forward=lib.ss_py_forward, listen_publish=lib.ss_py_listen_publish,
                             listen_owner=lib.ss_py_listen_owner, flow_ctx=self.ctx[k]) for k in range(n)]

    def deliver(self, k):
        """Hands instance k the frames forwarded to it."""
        frames, self.rings[k] = self.rings[k], []
        s = self.stacks[k]
        for f in frames:
            lib.ss_engine_input_forwarded(s.e, f, len(f), s.now)
        return len(frames)

    def destroy(self):
        for s in self.stacks:
            s.destroy()


@ffi.def_extern()
def ss_py_flow_publish(ctx, rip, rport, lport, add):
    g, k = ffi.from_handle(ctx)
    key = (rip, rport, lport)
    g.log.append((k, add, key))
    if add:
        assert key not in g.owner, "a flow published twice"
        g.owner[key] = k
    else:
        assert g.owner.pop(key) == k, "a flow withdrawn by an instance that did not own it"


@ffi.def_extern()
def ss_py_flow_owner(ctx, rip, rport, lport):
    g, k = ffi.from_handle(ctx)
    o = g.owner.get((rip, rport, lport), -1)
    return -1 if o == k else o


@ffi.def_extern()
def ss_py_listen_publish(ctx, port, state):
    g, k = ffi.from_handle(ctx)
    (g.listeners.setdefault(port, set()).add if state else g.listeners.setdefault(port, set()).discard)(k)
    (g.active.setdefault(port, set()).add if state == 2 else g.active.setdefault(port, set()).discard)(k)


@ffi.def_extern()
def ss_py_listen_owner(ctx, rip, rport, lport, active):
    g, k = ffi.from_handle(ctx)
    used = sorted(g.active.get(lport, set()) - {k})
    others = used if (active or used) else sorted(g.listeners.get(lport, set()) - {k})
    return others[0] if others else -1


@ffi.def_extern()
def ss_py_forward(ctx, owner, frame, length):
    g, k = ffi.from_handle(ctx)
    assert owner != k
    if g.ring_full:
        return -1
    g.rings[owner].append(bytes(ffi.buffer(frame, length)))
    return 0


@pytest.fixture
def group():
    g = Group()
    yield g
    g.destroy()


def key(peer):
    return (ip2int(PEER_IP), peer.sport, peer.dport)


def test_segment_at_another_instance_reaches_the_owner(group):
    a, b = group.stacks
    lsid = a.listen(80)
    b.listen(80)                      # every instance listens, as the services do
    peer = Peer(a)
    sid = passive_open(a, lsid, peer)
    assert group.owner == {key(peer): 0}
    # The device steers the peer's next segment to b: b neither answers nor
    # resets it, and passes it on.
    peer.stack = b
    peer.seg("PA", b"hello")
    b.expect_nothing()
    assert b.counters()["fwd_frames"] == 1
    assert b.counters()["drop_tcp_no_socket"] == 0
    assert group.deliver(0) == 1
    assert a.read(sid) == b"hello"
    assert a.counters()["fwd_rx_frames"] == 1
    # counted once on the device: by b, which received it
    assert a.counters()["eth_rx_frames"] == 2 and b.counters()["eth_rx_frames"] == 1
    a.advance(40)
    a.expect({"flags": "A", "ack": peer.nxt})


def test_retransmitted_syn_at_another_instance_goes_to_the_half_open_owner(group):
    a, b = group.stacks
    a.listen(80)
    b.listen(80)
    peer = Peer(a)
    peer.seg("S", options=peer.syn_options())
    (sa,) = a.expect({"flags": "SA", "ack": peer.nxt})
    assert group.owner == {key(peer): 0}      # published while half-open
    peer.stack = b
    peer.seg("S", seq=peer.isn, options=peer.syn_options(), advance=False)
    b.expect_nothing()                        # no second connection at b
    assert b.counters()["tcp_passive_opens"] == 0
    group.deliver(0)
    (again,) = a.expect({"flags": "SA", "ack": peer.nxt})
    assert again.seq == sa.seq


def test_active_open_return_traffic_forwarded(group):
    a, b = group.stacks
    sid = a.socket()
    assert a.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    (syn,) = a.expect({"flags": "S", "dport": 80})
    assert group.owner == {(ip2int(PEER_IP), 80, syn.sport): 0}
    peer = Peer(b, sport=80, dport=syn.sport, isn=5000)
    peer.rcv = syn.seq + 1
    peer.seg("SA", options=[("MSS", 1460)])
    b.expect_nothing()
    group.deliver(0)
    a.expect({"flags": "A", "ack": 5001})
    assert a.state(sid) == "ESTABLISHED"


def test_unowned_segment_still_reset(group):
    a, b = group.stacks
    peer = Peer(b, sport=41000)
    peer.seg("A", b"x", ack=77)
    b.expect({"flags": "R", "seq": 77})
    assert b.counters()["fwd_frames"] == 0


def test_full_ring_drops_and_counts_never_resets(group):
    a, b = group.stacks
    lsid = a.listen(80)
    peer = Peer(a)
    passive_open(a, lsid, peer)
    group.ring_full = True
    peer.stack = b
    peer.seg("PA", b"lost")
    b.expect_nothing()
    c = b.counters()
    assert c["drop_fwd_full"] == 1 and c["fwd_frames"] == 0


def test_forwarded_frame_is_never_forwarded_again(group):
    # The directory says b owns the flow, but a's copy of the frame arrived
    # by forwarding: a answers it as a host would (a reset), no ping-pong.
    a, b = group.stacks
    group.owner[(ip2int(PEER_IP), 42000, 80)] = 1
    frame = bytes(Ether(src=PEER_MAC, dst=STACK_MAC) / IP(src=PEER_IP, dst=STACK_IP) /
                  TCP(sport=42000, dport=80, flags="A", seq=1, ack=9))
    lib.ss_engine_input_forwarded(a.e, frame, len(frame), a.now)
    a.expect({"flags": "R", "seq": 9})
    assert a.counters()["fwd_frames"] == 0 and a.counters()["fwd_rx_frames"] == 1
    del group.owner[(ip2int(PEER_IP), 42000, 80)]


def test_withdrawn_when_the_connection_ends(group):
    a, b = group.stacks
    lsid = a.listen(80)
    peer = Peer(a)
    passive_open(a, lsid, peer)
    peer.seg("R")
    assert group.owner == {}
    assert [(k, add) for k, add, _ in group.log] == [(0, 1), (0, 0)]


def test_time_wait_stays_published_until_it_ends(group):
    a, b = group.stacks
    lsid = a.listen(80)
    peer = Peer(a)
    sid = passive_open(a, lsid, peer)
    a.close(sid)
    (fin,) = a.expect({"flags": "FA"})
    peer.seg("FA", ack=fin.seq + 1)
    a.expect({"flags": "A"})
    assert key(peer) in group.owner           # TIME-WAIT still owns the pair
    a.advance(60_000 + 10)
    assert group.owner == {}


def test_syn_for_a_port_only_another_instance_listens_on_goes_there(group):
    a, b = group.stacks
    lsid = a.listen(80)
    assert group.listeners == {80: {0}}
    peer = Peer(b)
    peer.seg("S", options=peer.syn_options())
    b.expect_nothing()                       # no reset: a listens
    assert b.counters()["fwd_frames"] == 1
    group.deliver(0)
    (sa,) = a.expect({"flags": "SA", "ack": peer.nxt})
    assert group.owner == {key(peer): 0}
    # the handshake ends at b, which passes it on by the flow directory
    peer.rcv = sa.seq + 1
    peer.seg("A")
    b.expect_nothing()
    group.deliver(0)
    assert a.accept(lsid) >= 0


def test_syn_reset_when_no_instance_listens(group):
    a, b = group.stacks
    lsid = a.listen(80)
    a.close(lsid)
    assert group.listeners == {80: set()}
    peer = Peer(b)
    peer.seg("S", options=peer.syn_options())
    b.expect({"flags": "RA"})
    assert b.counters()["fwd_frames"] == 0


def test_config_needs_both_owner_and_forward():
    with pytest.raises(ValueError):
        Stack(flow_owner=lib.ss_py_flow_owner)


# ---------------------------------------------------------------------------
# Listen spawn: listeners in use first, here and across the group
# ---------------------------------------------------------------------------

def spawned_listener(st, port=80, used=True):
    sid = st.socket()
    assert st.setopt(sid, lib.SS_OPT_SPAWNED, 1) == 0
    assert lib.ss_tcp_bind(st.e, sid, 0, port) == 0
    assert lib.ss_tcp_listen(st.e, sid, 16) == 0
    if used:
        assert st.setopt(sid, lib.SS_OPT_ACTIVE, 1) == 0
    return sid


def syn_to(st, sport):
    p = Peer(st, sport=sport)
    p.seg("S", options=p.syn_options())
    return p


def test_unused_listener_hands_syns_to_a_used_one_elsewhere(group):
    """An nginx master's listener at a (never accepted from) and a worker's
    in use at b: a SYN reaching a goes to b (global fallback), is accepted
    there and counted as such; once a's listener is used too, a keeps its
    own."""
    a, b = group.stacks
    la = a.listen(80)
    lb = spawned_listener(b)
    assert group.active[80] == {1} and group.listeners[80] == {0, 1}
    p = syn_to(a, 41000)
    a.expect_nothing()
    assert a.counters()["fwd_syn_fallback"] == 1
    assert group.deliver(1) == 1
    (sa,) = b.expect({"flags": "SA", "ack": p.nxt})
    p.stack = b
    p.rcv = (sa.seq + 1) % 2**32
    p.seg("A")
    assert b.accept(lb) >= 0
    assert b.counters()["accept_global"] == 1 and b.counters()["accept_local"] == 0
    # a's listener in use: its SYNs stay there
    assert a.setopt(la, lib.SS_OPT_ACTIVE, 1) == 0
    p2 = syn_to(a, 41001)
    a.expect({"flags": "SA", "ack": p2.nxt})
    assert a.counters()["fwd_syn_fallback"] == 1


def test_no_listener_in_use_anywhere_keeps_the_syn_here(group):
    """Before any process uses a listener, an unused one takes the SYN
    where it arrives: nothing is reset, nothing waits on a forward."""
    a, b = group.stacks
    a.listen(80)
    spawned_listener(b, used=False)
    p = syn_to(a, 41002)
    a.expect({"flags": "SA", "ack": p.nxt})
    assert a.counters()["fwd_frames"] == 0


def test_use_is_counted_per_process(group):
    """Two users, one leaves: still in use; the second leaves: not."""
    a, _ = group.stacks
    la = a.listen(80)
    assert a.setopt(la, lib.SS_OPT_ACTIVE, 1) == 0
    assert a.setopt(la, lib.SS_OPT_ACTIVE, 1) == 0
    assert a.setopt(la, lib.SS_OPT_ACTIVE, 0) == 0
    assert a.getopt(la, lib.SS_OPT_ACTIVE) == 1 and group.active[80] == {0}
    assert a.setopt(la, lib.SS_OPT_ACTIVE, 0) == 0
    assert a.getopt(la, lib.SS_OPT_ACTIVE) == 0 and group.active[80] == set()


def test_used_listener_preferred_among_several_here(group):
    """Two workers' local listeners on one instance, one in use: the
    connections go to the used one."""
    a, _ = group.stacks
    spawned_listener(a, used=False)
    mine = spawned_listener(a)
    for i in range(4):
        p = syn_to(a, 41100 + i)
        (sa,) = a.expect({"flags": "SA", "ack": p.nxt})
        p.rcv = (sa.seq + 1) % 2**32
        p.seg("A")
        assert a.accept(mine) >= 0


def test_closing_local_listener_moves_its_queue(group):
    """A worker leaving (nginx reload) closes its local listener with
    connections queued: they move to the new worker's listener of the
    port instead of being reset."""
    a, _ = group.stacks
    old = spawned_listener(a)
    p = syn_to(a, 41200)
    (sa,) = a.expect({"flags": "SA", "ack": p.nxt})
    p.rcv = (sa.seq + 1) % 2**32
    p.seg("A")
    new = spawned_listener(a)
    assert lib.ss_tcp_close(a.e, old, a.now) == 0
    a.expect_nothing()                      # no reset
    assert a.counters()["accept_queue_moved"] == 1
    sid = a.accept(new)
    assert sid >= 0 and a.state(sid) == "ESTABLISHED"


def _time_wait_at(a, b):
    """Port 80 listens in both instances; a connection to a, closed by a
    first, ends in TIME-WAIT there (timestamps on).  Returns a's listener
    and the peer."""
    la = a.listen(80)
    b.listen(80)
    peer = Peer(a, ts=100)
    sid = passive_open(a, la, peer)
    a.close(sid)
    (fin,) = a.expect({"flags": "FA"})
    peer.rcv = fin.seq + 1
    peer.tsval = 200
    peer.seg("FA", options=peer.ts_option(tcp_options(fin)["Timestamp"][0]))
    a.expect({"flags": "A"})
    return la, peer


def test_syn_reopening_a_time_wait_goes_to_a_listener_in_another_instance(group):
    """A SYN that may reopen a pair in TIME-WAIT (RFC 6191: a newer
    timestamp) where the TIME-WAIT's instance no longer listens, but
    another does (the process that listened here left): the TIME-WAIT ends
    and the SYN goes to that listener, as any SYN for no connection does.
    It used to meet the TIME-WAIT's sequence check instead: a challenge
    ACK, and the peer's connect waited for the TIME-WAIT to end."""
    a, b = group.stacks
    la, peer = _time_wait_at(a, b)
    a.close(la)
    p2 = Peer(a, sport=peer.sport, isn=(peer.nxt + 100000) % 2**32, ts=300)
    p2.seg("S", options=p2.syn_options())
    a.expect_nothing()
    assert a.counters()["tcp_timewait_reuse"] == 1
    assert a.counters()["tcp_state"]["TIME_WAIT"] == 0
    assert group.deliver(1) == 1
    b.expect({"flags": "SA", "ack": (p2.isn + 1) % 2**32})
    assert group.owner == {key(p2): 1}


def test_syn_for_a_pair_in_time_wait_at_another_instance_reopens_it_there(group):
    """The flow directory lists a TIME-WAIT until it ends, so a SYN for the
    pair that reaches another instance (over 127.0.0.1, a client whose
    instance is not the server's) goes to the TIME-WAIT's and reopens the
    pair there (RFC 6191).  The client's port choice need not know of a
    TIME-WAIT in another instance: the timestamps decide where it is."""
    a, b = group.stacks
    _, peer = _time_wait_at(a, b)
    p2 = Peer(b, sport=peer.sport, isn=(peer.nxt - 100000) % 2**32, ts=300)
    p2.seg("S", options=p2.syn_options())
    b.expect_nothing()
    assert b.counters()["fwd_frames"] == 1
    assert group.deliver(0) == 1
    a.expect({"flags": "SA", "ack": (p2.isn + 1) % 2**32})
    assert a.counters()["tcp_timewait_reuse"] == 1
    assert group.owner == {key(p2): 0}
