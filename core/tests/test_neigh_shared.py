"""A neighbour table shared by the instances of a group (engine.h
neigh_learn/neigh_lookup): what one instance learns from ARP, another uses
without asking the network."""
from harness import PEER_IP, PEER_MAC, STACK_IP, STACK_MAC, Stack, ip2int, mac2bytes
from preload.engine import ffi, lib
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether


class Table:
    def __init__(self):
        self.entries = {}
        self.handle = ffi.new_handle(self)


@ffi.def_extern()
def ss_py_neigh_learn(ctx, ip, mac):
    ffi.from_handle(ctx).entries[ip] = bytes(ffi.buffer(mac, 6))


@ffi.def_extern()
def ss_py_neigh_lookup(ctx, ip, mac_out):
    mac = ffi.from_handle(ctx).entries.get(ip)
    if mac is None:
        return -1
    ffi.memmove(mac_out, mac, 6)
    return 0


def shared_stack(table):
    return Stack(static_peer=False, arp_retry_ms=500, neigh_learn=lib.ss_py_neigh_learn, neigh_lookup=lib.ss_py_neigh_lookup,
                 neigh_ctx=table.handle)


def test_learned_by_one_instance_used_by_another():
    table = Table()
    a, b = shared_stack(table), shared_stack(table)
    try:
        # The peer asks instance a for the stack's address: a learns the peer.
        a.inject(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") /
                 ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=STACK_IP))
        (reply,) = a.take()
        assert reply[ARP].op == 2
        assert table.entries[ip2int(PEER_IP)] == mac2bytes(PEER_MAC)
        # Instance b answers a SYN without an ARP request of its own.
        lsid = b.listen(80)
        b.inject(Ether(src=PEER_MAC, dst=STACK_MAC) /
                 IP(src=PEER_IP, dst=STACK_IP) /
                 TCP(sport=40000, dport=80, flags="S", seq=1, options=[("MSS", 1460)]))
        (synack,) = b.take()
        assert synack.dst == PEER_MAC and TCP in synack and synack[TCP].flags == "SA"
        assert b.counters()["neigh_shared_hits"] == 1
        assert b.counters()["arp_tx_requests"] == 1  # its gratuitous ARP only
        assert lsid >= 0
    finally:
        a.destroy()
        b.destroy()


def test_waiting_packets_flushed_when_another_instance_learns():
    table = Table()
    b = shared_stack(table)
    try:
        sid = b.socket()
        assert b.connect(sid, PEER_IP, 80) < 0
        (req,) = b.take()
        assert req[ARP].op == 1 and req[ARP].pdst == PEER_IP
        # Another instance receives the reply; b finds it at its next retry.
        table.entries[ip2int(PEER_IP)] = mac2bytes(PEER_MAC)
        b.advance(500)
        (syn,) = b.take()
        assert syn.dst == PEER_MAC and syn[TCP].flags == "S"
    finally:
        b.destroy()
