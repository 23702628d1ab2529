"""ARP (RFC 826, RFC 1122 2.3.2), ICMP (RFC 792, RFC 1122 3.2.2 and 4.2.3.9,
RFC 1191, RFC 5927) and IPv4 input and output (RFC 791, RFC 1122 3.2.1)."""
import errno

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet import IPOption
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from harness import (ERRNO, PEER_IP, PEER_MAC, STACK_IP, STACK_MAC, Peer, check_checksums,
                     ip2int, mac2bytes)
from preload.engine import ffi, lib

BCAST = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"
GW_IP = "198.18.0.254"
GW_MAC = "02:00:00:00:00:fe"
OTHER_IP = "198.18.0.77"
OTHER_MAC = "02:00:00:00:00:77"
FAR_IP = "203.0.113.7"  # TEST-NET-3, off-link


def arp_frame(op, hwsrc, psrc, pdst, hwdst=ZERO_MAC, eth_dst=BCAST, eth_src=None):
    return Ether(dst=eth_dst, src=eth_src or hwsrc, type=0x0806) / ARP(
        op=op, hwsrc=hwsrc, psrc=psrc, hwdst=hwdst, pdst=pdst)


def lookup(stack, ip):
    buf = ffi.new("uint8_t[6]")
    r = lib.ss_arp_lookup(stack.e, ip2int(ip), buf)
    return r, bytes(buf)


def is_arp_request_for(f, ip):
    return ARP in f and f[ARP].op == 1 and f[ARP].pdst == ip and f[ARP].psrc == STACK_IP \
        and f[ARP].hwsrc == STACK_MAC and f.src == STACK_MAC


def expect_arp_request(stack, ip, broadcast=True):
    frames = stack.take()
    assert len(frames) == 1, [f.summary() for f in frames]
    f = frames[0]
    assert is_arp_request_for(f, ip), f.summary()
    if broadcast:
        assert f.dst == BCAST
    return f


def connect(stack, ip=PEER_IP, port=80):
    sid = stack.socket()
    assert stack.connect(sid, ip, port) == ERRNO["EINPROGRESS"]
    return sid


# ---------------------------------------------------------------------------
# ARP (RFC 826, RFC 1122 2.3.2, RFC 5227)
# ---------------------------------------------------------------------------

def test_gratuitous_arp_at_creation(stack):
    assert len(stack.boot_frames) == 1
    f = stack.boot_frames[0]
    assert f.dst == BCAST and f.src == STACK_MAC and f.type == 0x0806
    a = f[ARP]
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, 1)
    assert a.hwsrc == STACK_MAC and a.psrc == STACK_IP and a.pdst == STACK_IP
    assert len(bytes(f)) >= 60  # padded to the ethernet minimum
    c = stack.counters()
    assert c["arp_tx_requests"] == 1
    assert c["eth_tx_frames"] == 1


@pytest.mark.parametrize("eth_dst", [BCAST, STACK_MAC])
def test_request_for_our_address_gets_reply(stack, eth_dst):
    stack.inject(arp_frame(1, OTHER_MAC, OTHER_IP, STACK_IP, eth_dst=eth_dst))
    (f,) = stack.take()
    assert f.dst == OTHER_MAC and f.src == STACK_MAC and f.type == 0x0806
    a = f[ARP]
    assert a.op == 2
    assert a.hwsrc == STACK_MAC and a.psrc == STACK_IP
    assert a.hwdst == OTHER_MAC and a.pdst == OTHER_IP
    c = stack.counters()
    assert c["arp_rx"] == 1
    assert c["arp_tx_replies"] == 1


def test_request_for_another_address_is_not_answered(stack):
    stack.inject(arp_frame(1, OTHER_MAC, OTHER_IP, "198.18.0.99"))
    stack.expect_nothing()
    assert stack.counters()["drop_arp_not_ours"] == 1
    # RFC 826: the sender is learned only when we are the target.
    assert lookup(stack, OTHER_IP)[0] == -errno.ENOENT


def test_arp_probe_is_answered_but_not_learned(stack):
    # RFC 5227 2.1.1: a probe has sender address 0.0.0.0.
    stack.inject(arp_frame(1, OTHER_MAC, "0.0.0.0", STACK_IP))
    (f,) = stack.take()
    assert f.dst == OTHER_MAC and f[ARP].op == 2 and f[ARP].psrc == STACK_IP
    assert f[ARP].hwdst == OTHER_MAC and f[ARP].pdst == "0.0.0.0"
    assert lookup(stack, "0.0.0.0")[0] == -errno.ENOENT
    c = stack.counters()
    assert c["arp_tx_replies"] == 1
    assert c["arp_cache_updates"] == 0


def test_requester_is_learned(stack):
    stack.inject(arp_frame(1, OTHER_MAC, OTHER_IP, STACK_IP))
    stack.take()
    assert lookup(stack, OTHER_IP) == (0, mac2bytes(OTHER_MAC))
    assert stack.counters()["arp_cache_updates"] == 1


def test_connect_to_learned_requester_needs_no_request(make_stack):
    stack = make_stack(static_peer=False)
    stack.inject(arp_frame(1, PEER_MAC, PEER_IP, STACK_IP))
    (rep,) = stack.take()
    assert rep[ARP].op == 2
    sid = connect(stack)
    (syn,) = stack.expect({"flags": "S", "dport": 80})  # straight to PEER_MAC
    assert stack.counters()["arp_tx_requests"] == 1  # the gratuitous one only


def test_learned_entry_is_updated_by_newer_packet(make_stack):
    stack = make_stack(static_peer=False)
    stack.inject(arp_frame(1, OTHER_MAC, PEER_IP, STACK_IP))
    stack.take()
    stack.advance(2000)  # past Linux's locktime (1 s)
    # RFC 826: an entry for the sender is updated by any ARP packet.
    stack.inject(arp_frame(1, PEER_MAC, PEER_IP, "198.18.0.99"))
    stack.expect_nothing()
    assert lookup(stack, PEER_IP) == (0, mac2bytes(PEER_MAC))
    assert stack.counters()["arp_cache_updates"] == 2


def test_unknown_next_hop_broadcast_request_retries_then_gives_up(make_stack):
    stack = make_stack(static_peer=False, arp_retry_ms=300, arp_retries=3)
    connect(stack)
    f = expect_arp_request(stack, PEER_IP)
    assert f[ARP].hwdst == ZERO_MAC
    stack.advance(299)
    stack.expect_nothing()
    stack.advance(1)
    expect_arp_request(stack, PEER_IP)
    stack.advance(300)
    expect_arp_request(stack, PEER_IP)
    stack.advance(300)
    stack.expect_nothing()  # three requests sent: give up
    c = stack.counters()
    assert c["arp_resolve_failed"] == 1
    assert c["arp_tx_requests"] == 1 + 3
    assert lookup(stack, PEER_IP)[0] == -errno.ENOENT
    # What waited was dropped: a late reply releases nothing.
    stack.inject(arp_frame(2, PEER_MAC, PEER_IP, STACK_IP, hwdst=STACK_MAC, eth_dst=STACK_MAC))
    stack.expect_nothing()


def test_reply_flushes_queued_packets_in_order(make_stack):
    stack = make_stack(static_peer=False)
    s1 = connect(stack)
    expect_arp_request(stack, PEER_IP)
    s2 = connect(stack, port=81)
    s3 = connect(stack, port=82)
    stack.expect_nothing()  # one request per next hop
    stack.inject(arp_frame(2, PEER_MAC, PEER_IP, STACK_IP, hwdst=STACK_MAC, eth_dst=STACK_MAC))
    segs = stack.expect({"flags": "S", "dport": 80}, {"flags": "S", "dport": 81}, {"flags": "S", "dport": 82})
    assert [s.sport for s in segs] == [stack.info(s)["local_port"] for s in (s1, s2, s3)]
    assert lookup(stack, PEER_IP) == (0, mac2bytes(PEER_MAC))
    # Resolved: the next packet goes out at once.
    connect(stack, port=83)
    stack.expect({"flags": "S", "dport": 83})
    c = stack.counters()
    assert c["arp_tx_requests"] == 2
    assert c["arp_cache_updates"] == 1


def test_arp_queue_is_bounded(make_stack):
    stack = make_stack(static_peer=False, arp_queue_max=2)
    connect(stack, port=80)
    expect_arp_request(stack, PEER_IP)
    connect(stack, port=81)
    connect(stack, port=82)
    stack.expect_nothing()
    assert stack.counters()["drop_arp_queue_full"] == 1
    stack.inject(arp_frame(2, PEER_MAC, PEER_IP, STACK_IP, hwdst=STACK_MAC, eth_dst=STACK_MAC))
    stack.expect({"flags": "S", "dport": 80}, {"flags": "S", "dport": 81})


def test_learned_entry_expires(make_stack):
    stack = make_stack(static_peer=False, arp_timeout_ms=5000)
    stack.inject(arp_frame(1, PEER_MAC, PEER_IP, STACK_IP))
    stack.take()
    stack.advance(4999)
    assert lookup(stack, PEER_IP) == (0, mac2bytes(PEER_MAC))
    stack.advance(2)
    assert lookup(stack, PEER_IP)[0] == -errno.ENOENT
    connect(stack)
    # Resolution starts again: a request, and the SYN waits for the answer.
    expect_arp_request(stack, PEER_IP, broadcast=False)
    stack.inject(arp_frame(2, PEER_MAC, PEER_IP, STACK_IP, hwdst=STACK_MAC, eth_dst=STACK_MAC))
    stack.expect({"flags": "S", "dport": 80})
    assert stack.counters()["arp_tx_requests"] == 2


@pytest.mark.parametrize("op", [1, 2])
def test_static_entry_not_changed_by_spoofed_packet(stack, op):
    evil = "02:66:66:66:66:66"
    stack.inject(arp_frame(op, evil, PEER_IP, STACK_IP, eth_dst=STACK_MAC))
    stack.take()  # a request is still answered
    assert lookup(stack, PEER_IP) == (0, mac2bytes(PEER_MAC))
    connect(stack)
    stack.expect({"flags": "S"})  # take_tcp checks the frame goes to PEER_MAC
    assert stack.counters()["arp_cache_updates"] == 0


def test_off_link_destination_goes_to_gateway_mac(make_stack):
    stack = make_stack(gateway=GW_IP)
    connect(stack, FAR_IP)
    # The next hop is the gateway: it is what ARP resolves.
    expect_arp_request(stack, GW_IP)
    stack.inject(arp_frame(2, GW_MAC, GW_IP, STACK_IP, hwdst=STACK_MAC, eth_dst=STACK_MAC))
    (f,) = stack.take()
    assert f.dst == GW_MAC and f.src == STACK_MAC
    assert f[IP].dst == FAR_IP and f[IP].src == STACK_IP
    assert f[TCP].flags == "S"
    check_checksums(f)
    c = stack.counters()
    assert c["arp_tx_requests"] == 2
    assert c["drop_ip_no_route"] == 0


def test_off_link_destination_without_gateway_is_unreachable(stack):
    sid = stack.socket()
    assert stack.connect(sid, FAR_IP, 80) == ERRNO["ENETUNREACH"]
    stack.expect_nothing()
    assert stack.counters()["tcp_active_opens"] == 0


def test_unsolicited_reply_for_another_target_is_not_learned(stack):
    stack.inject(arp_frame(2, OTHER_MAC, OTHER_IP, "198.18.0.99", hwdst=STACK_MAC, eth_dst=STACK_MAC))
    stack.expect_nothing()
    assert lookup(stack, OTHER_IP)[0] == -errno.ENOENT
    assert stack.counters()["drop_arp_not_ours"] == 1


@pytest.mark.parametrize("patch", ["htype", "ptype", "hlen", "op", "short"])
def test_malformed_arp_is_dropped(stack, patch):
    raw = bytearray(bytes(arp_frame(1, OTHER_MAC, OTHER_IP, STACK_IP)))
    if patch == "htype":
        raw[14:16] = b"\x00\x06"
    elif patch == "ptype":
        raw[16:18] = b"\x86\xdd"
    elif patch == "hlen":
        raw[18] = 8
    elif patch == "op":
        raw[20:22] = b"\x00\x03"
    else:
        raw = raw[:14 + 20]
    stack.inject(bytes(raw))
    stack.expect_nothing()
    assert stack.counters()["drop_arp_malformed"] == 1
    assert lookup(stack, OTHER_IP)[0] == -errno.ENOENT


# ---------------------------------------------------------------------------
# ICMP (RFC 792, RFC 1122 3.2.2 and 4.2.3.9, RFC 1191, RFC 5927)
# ---------------------------------------------------------------------------

def icmp_error_quoting(stack, seg_frame, code, mtu=0, src=PEER_IP):
    """An ICMP destination unreachable quoting the IP header and the first
    8 bytes of the TCP segment in seg_frame (an Ether frame we sent)."""
    ip = seg_frame[IP]
    quoted = bytes(ip)[:ip.ihl * 4 + 8]
    msg = ICMP(type=3, code=code, nexthopmtu=mtu) if code == 4 else ICMP(type=3, code=code)
    stack.send(msg / Raw(quoted), src=src)


@pytest.mark.parametrize("payload", [b"", b"abc", bytes(range(256)) * 4])
def test_echo_request_gets_identical_reply(stack, payload):
    stack.send(ICMP(type=8, code=0, id=0x1234, seq=77) / Raw(payload))
    (f,) = stack.take()
    assert f.dst == PEER_MAC and f.src == STACK_MAC
    ip = f[IP]
    assert ip.src == STACK_IP and ip.dst == PEER_IP and ip.proto == 1
    assert ip.flags.DF and ip.ttl == 64
    m = f[ICMP]
    assert (m.type, m.code, m.id, m.seq) == (0, 0, 0x1234, 77)
    assert bytes(m.payload) == payload
    check_checksums(f)
    c = stack.counters()
    assert c["icmp_rx"] == 1
    assert c["icmp_echo_replies"] == 1


def test_icmp_bad_checksum_dropped(stack):
    good = ICMP(type=8, id=1, seq=1) / Raw(b"ping")
    csum = ICMP(bytes(good)).chksum
    stack.send(ICMP(type=8, id=1, seq=1, chksum=csum ^ 0x0101) / Raw(b"ping"))
    stack.expect_nothing()
    c = stack.counters()
    assert c["drop_icmp_checksum"] == 1
    assert c["icmp_echo_replies"] == 0


def test_icmp_unknown_type_dropped(stack):
    stack.send(ICMP(type=13, code=0))  # timestamp request
    stack.expect_nothing()
    assert stack.counters()["drop_icmp_type"] == 1


def test_port_unreachable_aborts_connect(stack):
    sid = connect(stack)
    (syn_frame,) = stack.take()
    assert syn_frame[TCP].flags == "S"
    icmp_error_quoting(stack, syn_frame, code=3)
    stack.expect_nothing()
    # RFC 1122 4.2.3.9: a hard error aborts a connection being opened.
    assert stack.state(sid) == "CLOSED"
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == errno.ECONNREFUSED
    c = stack.counters()
    assert c["icmp_hard_errors"] == 1
    assert c["tcp_attempt_fails"] == 1
    # No retransmission of the SYN follows.
    stack.advance(5000)
    stack.expect_nothing()


def test_port_unreachable_quoting_wrong_seq_does_not_abort_connect(stack):
    sid = connect(stack)
    (syn_frame,) = stack.take()
    raw = bytearray(bytes(syn_frame))
    seq_off = 14 + 20 + 4
    raw[seq_off:seq_off + 4] = ((syn_frame[TCP].seq + 1000) % 2**32).to_bytes(4, "big")
    icmp_error_quoting(stack, Ether(bytes(raw)), code=3)
    stack.expect_nothing()
    # RFC 5927 4.1: the quoted sequence number is not in flight.
    assert stack.state(sid) == "SYN_SENT"
    c = stack.counters()
    assert c["drop_icmp_no_conn"] == 1
    assert c["icmp_hard_errors"] == 0


def test_port_unreachable_does_not_abort_established(active):
    stack, sid, peer = active
    assert stack.setopt(sid, lib.SS_OPT_NODELAY, 1) == 0
    assert stack.write(sid, b"hello") == 5
    (f,) = stack.take()
    icmp_error_quoting(stack, f, code=3)
    stack.expect_nothing()
    # RFC 5927 7 / Linux: only recorded as a soft error.
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.getopt(sid, lib.SS_OPT_ERROR) == 0
    c = stack.counters()
    assert c["icmp_hard_errors"] == 0
    assert c["icmp_dest_unreach"] == 1
    peer.seg("PA", b"reply", ack=peer.rcv + 5)
    assert stack.read(sid) == b"reply"


def test_icmp_quoting_sequence_outside_flight_is_ignored(active):
    stack, sid, peer = active
    assert stack.setopt(sid, lib.SS_OPT_NODELAY, 1) == 0
    assert stack.write(sid, bytes(1460)) == 1460
    (f,) = stack.take()
    raw = bytearray(bytes(f))
    seq_off = 14 + 20 + 4
    raw[seq_off:seq_off + 4] = ((f[TCP].seq - 10000) % 2**32).to_bytes(4, "big")
    icmp_error_quoting(stack, Ether(bytes(raw)), code=4, mtu=1000)
    stack.expect_nothing()
    assert stack.info(sid)["mss"] == 1460
    c = stack.counters()
    assert c["drop_icmp_no_conn"] == 1
    assert c["icmp_frag_needed"] == 0


def test_icmp_for_unknown_connection_is_ignored(active):
    stack, sid, peer = active
    assert stack.setopt(sid, lib.SS_OPT_NODELAY, 1) == 0
    assert stack.write(sid, b"x") == 1
    (f,) = stack.take()
    raw = bytearray(bytes(f))
    raw[14 + 20 + 2:14 + 20 + 4] = (9999).to_bytes(2, "big")  # another remote port
    icmp_error_quoting(stack, Ether(bytes(raw)), code=3)
    stack.expect_nothing()
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.counters()["drop_icmp_no_conn"] == 1


def test_port_unreachable_during_syn_received(stack, listener):
    peer = Peer(stack)
    peer.seg("S", options=peer.syn_options())
    (f,) = stack.take()
    icmp_error_quoting(stack, f, code=3)
    stack.expect_nothing()
    assert stack.counters()["tcp_state"]["SYN_RECEIVED"] == 0
    assert stack.counters()["icmp_hard_errors"] == 1


def test_frag_needed_lowers_mss_and_retransmits_at_once(active):
    stack, sid, peer = active
    assert stack.setopt(sid, lib.SS_OPT_NODELAY, 1) == 0
    data = bytes((i * 13) % 256 for i in range(2880))
    assert stack.write(sid, data) == 2880
    frames = stack.take()
    assert [len(bytes(f[TCP].payload)) for f in frames] == [1460, 1420]
    icmp_error_quoting(stack, frames[0], code=4, mtu=1000)
    # RFC 1191: segments now fit 1000 bytes, and what was lost is resent now.
    out = stack.take()
    assert out, "nothing retransmitted"
    seq = peer.rcv
    got = b""
    for f in out:
        assert f[IP].len <= 1000 and f[IP].flags.DF
        check_checksums(f)
        assert f[TCP].seq == seq
        p = bytes(f[TCP].payload)
        assert 0 < len(p) <= 960
        got += p
        seq += len(p)
    assert got == data[:len(got)] and len(got) == 2880
    assert stack.info(sid)["mss"] == 960
    assert stack.counters()["icmp_frag_needed"] == 1


@pytest.mark.parametrize("mtu", [0, 20, 67])
def test_frag_needed_below_68_is_ignored(active, mtu):
    stack, sid, peer = active
    assert stack.setopt(sid, lib.SS_OPT_NODELAY, 1) == 0
    assert stack.write(sid, bytes(1000)) == 1000
    (f,) = stack.take()
    icmp_error_quoting(stack, f, code=4, mtu=mtu)
    stack.expect_nothing()
    assert stack.info(sid)["mss"] == 1460
    assert stack.counters()["icmp_frag_needed"] == 0


def test_icmp_error_too_short_to_quote_is_dropped(active):
    stack, sid, peer = active
    stack.send(ICMP(type=3, code=3) / Raw(b"\x45" + bytes(10)))
    stack.expect_nothing()
    assert stack.counters()["drop_icmp_short"] == 1
    assert stack.state(sid) == "ESTABLISHED"


# ---------------------------------------------------------------------------
# IPv4 (RFC 791, RFC 1122 3.2.1)
# ---------------------------------------------------------------------------

def test_outgoing_ipv4_has_df_and_ttl_64(stack):
    connect(stack)
    (f,) = stack.take()
    ip = f[IP]
    assert ip.version == 4 and ip.ihl == 5
    assert ip.flags.DF and not ip.flags.MF and ip.frag == 0
    assert ip.ttl == 64
    check_checksums(f)
    assert stack.counters()["ip_tx_packets"] == 1


def test_ip_options_are_skipped_and_packet_processed(stack, listener):
    peer = Peer(stack)
    syn = peer.build("S", options=peer.syn_options())
    # Four bytes of options: NOP, NOP, NOP, EOL.
    stack.inject(Ether(src=PEER_MAC, dst=STACK_MAC) /
                 IP(src=PEER_IP, dst=STACK_IP, options=[IPOption(b"\x01\x01\x01\x00")]) / syn)
    stack.expect({"flags": "SA", "ack": peer.isn + 1})
    assert stack.counters()["ip_options_skipped"] == 1


@pytest.mark.parametrize("frag", [{"flags": "MF"}, {"frag": 185}, {"flags": "MF", "frag": 1}])
def test_fragments_dropped(stack, listener, frag):
    peer = Peer(stack)
    stack.send(peer.build("S", options=peer.syn_options()), **frag)
    stack.expect_nothing()
    c = stack.counters()
    assert c["drop_ip_fragment"] == 1
    assert c["tcp_passive_opens"] == 0


def test_df_flag_is_not_a_fragment(stack, listener):
    peer = Peer(stack)
    stack.send(peer.build("S", options=peer.syn_options()), flags="DF")
    stack.expect({"flags": "SA"})
    assert stack.counters()["drop_ip_fragment"] == 0


def test_packet_for_another_address_dropped(stack, listener):
    peer = Peer(stack)
    stack.inject(Ether(src=PEER_MAC, dst=STACK_MAC) / IP(src=PEER_IP, dst="198.18.0.3") /
                 peer.build("S", options=peer.syn_options()))
    stack.expect_nothing()
    assert stack.counters()["drop_ip_not_ours"] == 1


@pytest.mark.parametrize("src", ["0.0.0.0", "127.0.0.1", "127.9.9.9", "224.0.0.1", "239.1.2.3",
                                 "255.255.255.255", "198.18.0.255"])
def test_martian_source_dropped(stack, listener, src):
    peer = Peer(stack)
    stack.send(peer.build("S", options=peer.syn_options()), src=src)
    stack.expect_nothing()
    c = stack.counters()
    assert c["drop_ip_bad_src"] == 1
    assert c["tcp_passive_opens"] == 0


def test_martian_source_echo_not_answered(stack):
    stack.send(ICMP(type=8, id=1, seq=1), src="127.0.0.1")
    stack.expect_nothing()
    assert stack.counters()["drop_ip_bad_src"] == 1


@pytest.mark.parametrize("proto", [17, 47, 58])
def test_other_ip_protocols_dropped(stack, proto):
    stack.send(Raw(b"\x00" * 16), proto=proto)
    stack.expect_nothing()
    assert stack.counters()["drop_ip_proto"] == 1


def test_udp_dropped(stack):
    stack.send(UDP(sport=5000, dport=53) / Raw(b"query"))
    stack.expect_nothing()
    assert stack.counters()["drop_ip_proto"] == 1


def test_frame_for_another_mac_dropped(stack, listener):
    peer = Peer(stack)
    stack.inject(Ether(src=PEER_MAC, dst="02:00:00:00:00:99") / IP(src=PEER_IP, dst=STACK_IP) /
                 peer.build("S", options=peer.syn_options()))
    stack.expect_nothing()
    c = stack.counters()
    assert c["drop_eth_not_ours"] == 1
    assert c["ip_rx_packets"] == 0


@pytest.mark.parametrize("etype", [0x86DD, 0x8100, 0x88CC, 0x0801])
def test_non_ip_ethertype_dropped(stack, etype):
    stack.inject(Ether(src=PEER_MAC, dst=STACK_MAC, type=etype) / Raw(bytes(46)))
    stack.expect_nothing()
    c = stack.counters()
    assert c["drop_eth_type"] == 1
    assert c["ip_rx_packets"] == 0 and c["arp_rx"] == 0


def test_broadcast_mac_ipv4_for_us_is_accepted(stack):
    stack.inject(Ether(src=PEER_MAC, dst=BCAST) / IP(src=PEER_IP, dst=STACK_IP) / ICMP(type=8, id=5, seq=6))
    (f,) = stack.take()
    assert f[ICMP].type == 0 and f[ICMP].id == 5
    assert stack.counters()["drop_eth_not_ours"] == 0
