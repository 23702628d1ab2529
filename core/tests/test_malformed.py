"""Malformed input: every broken frame is dropped and counted by its reason,
nothing is sent in answer, and nothing crashes (RFC 1122 1.2.2: "be liberal
in what you accept" stops short of acting on garbage).  Frames are built as
bytes and patched where scapy would otherwise repair the field."""
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from harness import (ERRNO, PEER_IP, PEER_MAC, STACK_IP, STACK_MAC, Peer, check_checksums, passive_open)

ETH = 14


# ---- raw frame helpers -----------------------------------------------------

def csum(data):
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def frame(l4, src=PEER_IP, dst=STACK_IP, **ip):
    return bytearray(bytes(Ether(src=PEER_MAC, dst=STACK_MAC) / IP(src=src, dst=dst, **ip) / l4))


def ihl(raw):
    return (raw[ETH] & 0x0F) * 4


def fix_ip(raw):
    """Recomputes the IPv4 header checksum in place (header as the IHL says)."""
    h = ihl(raw)
    raw[ETH + 10:ETH + 12] = b"\x00\x00"
    raw[ETH + 10:ETH + 12] = struct.pack("!H", csum(bytes(raw[ETH:ETH + h])))
    return raw


def fix_tcp(raw):
    """Recomputes the TCP checksum in place over the IP payload (as the IP
    total length says), with the pseudo-header."""
    h = ihl(raw)
    total = struct.unpack("!H", raw[ETH + 2:ETH + 4])[0]
    seg_start, seg_end = ETH + h, ETH + total
    if seg_end - seg_start < 18:
        return raw
    raw[seg_start + 16:seg_start + 18] = b"\x00\x00"
    pseudo = bytes(raw[ETH + 12:ETH + 20]) + struct.pack("!BBH", 0, 6, seg_end - seg_start)
    raw[seg_start + 16:seg_start + 18] = struct.pack("!H", csum(pseudo + bytes(raw[seg_start:seg_end])))
    return raw


def set_total_len(raw, n):
    raw[ETH + 2:ETH + 4] = struct.pack("!H", n)


def with_tcp_options(tcp, opts, payload=b""):
    """A frame carrying tcp (a scapy TCP without options) with the raw option
    bytes opts (a multiple of 4) and payload; every length and checksum is
    made consistent, so only the options are wrong."""
    assert len(opts) % 4 == 0
    raw = frame(tcp)
    t = ETH + 20
    hdr = bytearray(raw[t:t + 20])
    hdr[12] = ((20 + len(opts)) // 4) << 4 | (hdr[12] & 0x0F)
    raw = raw[:t] + hdr + bytearray(opts) + bytearray(payload)
    set_total_len(raw, len(raw) - ETH)
    return fix_tcp(fix_ip(raw))


def counters_sum_ok(c):
    """Every frame received is accounted for, layer by layer."""
    eth = c["drop_eth_short"] + c["drop_eth_not_ours"] + c["drop_eth_type"] + c["arp_rx"] + c["ip_rx_packets"]
    ip = (c["drop_ip_short"] + c["drop_ip_version"] + c["drop_ip_hdrlen"] + c["drop_ip_len"] +
          c["drop_ip_checksum"] + c["drop_ip_bad_src"] + c["drop_ip_not_ours"] + c["drop_ip_fragment"] +
          c["drop_ip_proto"] + c["icmp_rx"] + c["tcp_rx_segments"] + c["drop_tcp_short"] + c["drop_tcp_doff"] +
          c["drop_tcp_checksum"] + c["drop_tcp_options"] + c["drop_tcp_flags"])
    return c["eth_rx_frames"] == eth and c["ip_rx_packets"] == ip


DROP_COUNTERS = ["drop_eth_short", "drop_eth_not_ours", "drop_eth_type", "drop_ip_short", "drop_ip_version",
                 "drop_ip_hdrlen", "drop_ip_len", "drop_ip_checksum", "drop_ip_bad_src", "drop_ip_not_ours",
                 "drop_ip_fragment", "drop_ip_proto", "drop_tcp_short", "drop_tcp_doff", "drop_tcp_checksum",
                 "drop_tcp_options", "drop_tcp_flags"]


def assert_dropped_by(stack, name, before=None):
    """Nothing was sent, and exactly one drop counter moved: name, by one."""
    stack.expect_nothing()
    c = stack.counters()
    moved = {k: c[k] - (before[k] if before else 0) for k in DROP_COUNTERS}
    assert moved[name] == 1, moved
    assert {k: v for k, v in moved.items() if v and k != name} == {}
    assert counters_sum_ok(c)


@pytest.fixture
def syn(stack, listener):
    """A valid SYN to the listener, as a scapy TCP layer."""
    p = Peer(stack)
    return p.build("S", options=[("MSS", 1460)])


# ---------------------------------------------------------------------------
# Truncated frames
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 6, 13])
def test_truncated_ethernet(stack, n):
    stack.inject(bytes(frame(TCP(sport=1234, dport=80)))[:n])
    assert_dropped_by(stack, "drop_eth_short")


@pytest.mark.parametrize("n", [0, 1, 10, 19])
def test_truncated_ip_header(stack, listener, n):
    stack.inject(bytes(frame(TCP(sport=1234, dport=80, flags="S")))[:ETH + n])
    assert_dropped_by(stack, "drop_ip_short")


@pytest.mark.parametrize("n", [0, 1, 12, 19])
def test_truncated_tcp_header(stack, listener, n):
    # A consistent IP packet whose TCP part is shorter than 20 bytes.
    raw = frame(Raw(bytes(TCP(sport=1234, dport=80, flags="S"))[:n]), proto=6)
    stack.inject(bytes(raw))
    assert_dropped_by(stack, "drop_tcp_short")


def test_frame_cut_inside_tcp_header_keeps_ip_length(stack, syn):
    # Cut the frame but leave the IP total length claiming the whole packet.
    raw = bytes(frame(syn))
    stack.inject(raw[:ETH + 20 + 10])
    assert_dropped_by(stack, "drop_ip_len")


# ---------------------------------------------------------------------------
# IPv4 header
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", [6, 0, 5, 15])
def test_ip_version_not_4(stack, syn, version):
    raw = frame(syn)
    raw[ETH] = version << 4 | 5
    stack.inject(bytes(fix_ip(raw)))
    assert_dropped_by(stack, "drop_ip_version")


@pytest.mark.parametrize("hl", [0, 1, 4])
def test_ihl_below_5(stack, syn, hl):
    raw = frame(syn)
    raw[ETH] = 0x40 | hl
    stack.inject(bytes(raw))
    assert_dropped_by(stack, "drop_ip_hdrlen")


@pytest.mark.parametrize("hl", [11, 15])
def test_ihl_beyond_packet(stack, hl):
    raw = frame(TCP(sport=1234, dport=80, flags="S"))  # 40 bytes of IP
    raw[ETH] = 0x40 | hl
    stack.inject(bytes(raw))
    assert_dropped_by(stack, "drop_ip_hdrlen")


def test_ihl_beyond_total_length_with_padding(stack):
    # The frame is long enough (ethernet padding) but the header claims more
    # than the IP total length: the header runs past the packet.
    raw = frame(TCP(sport=1234, dport=80, flags="S"))  # 40 bytes of IP
    raw[ETH] = 0x4F  # 60-byte header
    raw += bytes(30)
    stack.inject(bytes(fix_ip(raw)))
    assert_dropped_by(stack, "drop_ip_hdrlen")


@pytest.mark.parametrize("delta", [1, 100, 65535])
def test_total_length_larger_than_frame(stack, syn, delta):
    raw = frame(syn)
    total = min(len(raw) - ETH + delta, 65535)
    set_total_len(raw, total)
    stack.inject(bytes(fix_ip(raw)))
    assert_dropped_by(stack, "drop_ip_len")


@pytest.mark.parametrize("total", [0, 19])
def test_total_length_smaller_than_header(stack, syn, total):
    raw = frame(syn)
    set_total_len(raw, total)
    stack.inject(bytes(fix_ip(raw)))
    assert_dropped_by(stack, "drop_ip_len")


def test_bad_ip_checksum(stack, syn):
    raw = fix_ip(frame(syn))
    raw[ETH + 10] ^= 0x5A
    stack.inject(bytes(raw))
    assert_dropped_by(stack, "drop_ip_checksum")
    assert stack.counters()["tcp_passive_opens"] == 0


# ---------------------------------------------------------------------------
# TCP header
# ---------------------------------------------------------------------------

def test_bad_tcp_checksum(stack, syn):
    raw = fix_tcp(frame(syn))
    raw[ETH + 20 + 16] ^= 0x01
    stack.inject(bytes(raw))
    assert_dropped_by(stack, "drop_tcp_checksum")
    assert stack.counters()["tcp_passive_opens"] == 0


def test_bad_tcp_checksum_in_established(passive):
    stack, sid, peer = passive
    raw = frame(peer.build("PA", b"payload"))
    raw[-1] ^= 0xFF  # payload corrupted, checksum left as it was
    before = stack.counters()
    stack.inject(bytes(raw))
    assert_dropped_by(stack, "drop_tcp_checksum", before)
    assert stack.read(sid) == ERRNO["EAGAIN"]


@pytest.mark.parametrize("doff", [0, 1, 4])
def test_tcp_data_offset_below_5(stack, syn, doff):
    raw = frame(syn)  # header of 24 bytes: MSS option
    raw[ETH + 20 + 12] = doff << 4
    stack.inject(bytes(fix_tcp(raw)))
    assert_dropped_by(stack, "drop_tcp_doff")


@pytest.mark.parametrize("doff", [6, 10, 15])
def test_tcp_data_offset_beyond_segment(stack, listener, doff):
    raw = frame(TCP(sport=40000, dport=80, flags="S", seq=1))  # 20 bytes, no payload
    raw[ETH + 20 + 12] = doff << 4
    stack.inject(bytes(fix_tcp(raw)))
    assert_dropped_by(stack, "drop_tcp_doff")


def test_tcp_data_offset_beyond_segment_into_padding(stack, listener):
    # The segment ends where the IP total length says, not at the frame's end.
    raw = frame(TCP(sport=40000, dport=80, flags="S", seq=1))
    raw[ETH + 20 + 12] = 6 << 4
    fix_tcp(raw)
    raw += b"\x02\x04\x05\xb4" + bytes(2)  # padding that looks like an MSS option
    stack.inject(bytes(raw))
    assert_dropped_by(stack, "drop_tcp_doff")


@pytest.mark.parametrize("opts", [
    b"\x02\x00\x05\xb4",                  # MSS with length 0
    b"\x08\x00\x00\x00",                  # timestamp with length 0
    b"\x02\x01\x05\xb4",                  # MSS with length 1
    b"\x1e\x01\x00\x00",                  # unknown kind, length 1
    b"\x01\x01\x01\x08",                  # a kind byte with no room for its length
    b"\x08\x0a\x00\x00",                  # timestamp running past the header
    b"\x01\x1e\x20\x00\x00\x00\x00\x00",  # unknown kind running past the header
    b"\x02\x03\x05\x00",                  # MSS with length 3
    b"\x02\x06\x05\xb4\x00\x00\x00\x00",  # MSS with length 6
    b"\x01\x03\x04\x0e",                  # window scale with length 4
    b"\x04\x03\x00\x00",                  # SACK-permitted with length 3
    b"\x08\x08\x00\x00\x00\x01\x00\x00",  # timestamp with length 8
])
def test_illegal_tcp_option_length(stack, listener, opts):
    raw = with_tcp_options(TCP(sport=40000, dport=80, flags="S", seq=1000), opts)
    stack.inject(bytes(raw))
    assert_dropped_by(stack, "drop_tcp_options")
    assert stack.counters()["tcp_passive_opens"] == 0


def test_illegal_option_in_established_segment(passive):
    stack, sid, peer = passive
    tcp = peer.build("PA", b"")
    before = stack.counters()
    stack.inject(bytes(with_tcp_options(tcp, b"\x08\x01\x00\x00", b"hidden")))
    assert_dropped_by(stack, "drop_tcp_options", before)
    assert stack.read(sid) == ERRNO["EAGAIN"]


@pytest.mark.parametrize("opts", [
    b"\x1e\x04\xaa\xbb",          # unknown option, legal length: skipped
    b"\x00\xff\xff\xff",          # EOL: what follows is not parsed
    b"\x01\x01\x01\x01",          # NOPs
])
def test_legal_unusual_options_accepted(stack, listener, opts):
    stack.inject(bytes(with_tcp_options(TCP(sport=40000, dport=80, flags="S", seq=1000), opts)))
    stack.expect({"flags": "SA", "ack": 1001})
    assert stack.counters()["drop_tcp_options"] == 0


@pytest.mark.parametrize("flags", ["SF", "SR", "SRA", "SFA", "SFRPAU"])
def test_illegal_flag_combinations(stack, syn, flags):
    syn.flags = flags
    syn.ack = 1 if "A" in flags else 0
    stack.inject(bytes(frame(syn)))
    assert_dropped_by(stack, "drop_tcp_flags")
    assert stack.counters()["tcp_passive_opens"] == 0


def test_syn_fin_in_established(passive):
    stack, sid, peer = passive
    before = stack.counters()
    stack.inject(bytes(frame(peer.build("SFA", seq=peer.nxt))))
    assert_dropped_by(stack, "drop_tcp_flags", before)
    assert stack.state(sid) == "ESTABLISHED"


@pytest.mark.parametrize("sport,dport", [(0, 80), (40000, 0), (0, 0)])
def test_port_zero(stack, listener, sport, dport):
    stack.inject(bytes(frame(TCP(sport=sport, dport=dport, flags="S", seq=1))))
    assert_dropped_by(stack, "drop_tcp_flags")
    assert stack.counters()["tcp_rst_tx"] == 0


# ---------------------------------------------------------------------------
# Sequence numbers far outside the window (RFC 9293 3.10.7.4)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [2**30, -(2**30), 2**31 - 1, 70000, -70000])
def test_sequence_far_outside_window(passive, delta):
    stack, sid, peer = passive
    peer.seg("PA", b"intruder", seq=(peer.nxt + delta) % 2**32)
    # Not acceptable: ACK what we expect, drop the segment.
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt, "len": 0})
    assert stack.read(sid) == ERRNO["EAGAIN"]
    assert stack.state(sid) == "ESTABLISHED"
    assert stack.counters()["drop_tcp_out_of_window"] == 1


# ---------------------------------------------------------------------------
# Ethernet padding (IEEE 802.3 minimum frame; RFC 894)
# ---------------------------------------------------------------------------

def test_ethernet_padding_after_ip_total_length_ignored_syn(stack, syn):
    raw = bytes(frame(syn))
    raw = raw + b"\xee" * (60 - len(raw)) if len(raw) < 60 else raw + b"\xee" * 6
    stack.inject(raw)
    stack.expect({"flags": "SA", "ack": syn.seq + 1})
    c = stack.counters()
    assert c["drop_ip_len"] == 0 and c["drop_tcp_checksum"] == 0


@pytest.mark.parametrize("payload", [b"A", b"xyz", b"01234"])
def test_ethernet_padding_after_ip_total_length_ignored_data(passive, payload):
    stack, sid, peer = passive
    raw = bytes(frame(peer.build("PA", payload)))
    assert len(raw) < 60
    stack.inject(raw + b"\x99" * (60 - len(raw)))  # garbage padding
    peer.nxt += len(payload)
    assert stack.read(sid) == payload
    assert stack.info(sid)["rcv_nxt"] == peer.nxt
    stack.advance(40)
    stack.expect({"flags": "A", "ack": peer.nxt})


# ---------------------------------------------------------------------------
# Seeded fuzzing: bit flips, truncations and extensions of valid frames
# ---------------------------------------------------------------------------

def _mutate(rng, raw):
    raw = bytearray(raw)
    op = rng.randrange(6)
    if op == 0 or op == 1:  # flip 1..8 bits anywhere
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(raw))
            raw[i] ^= 1 << rng.randrange(8)
    elif op == 2:  # flip bits in the IP/TCP headers only
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(ETH, min(len(raw), ETH + 60))
            raw[i] ^= 1 << rng.randrange(8)
    elif op == 3:  # truncate
        raw = raw[:rng.randrange(len(raw))]
    elif op == 4:  # extend
        raw += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    else:  # overwrite a random header byte
        i = rng.randrange(min(len(raw), ETH + 60))
        raw[i] = rng.randrange(256)
    # Half the time make the checksums right again, so the mutation reaches
    # the state machine instead of the checksum check.
    if rng.random() < 0.5 and len(raw) >= ETH + 20 and raw[12:14] == b"\x08\x00":
        h = ihl(raw)
        if 20 <= h and ETH + h <= len(raw):
            fix_ip(raw)
            total = struct.unpack("!H", raw[ETH + 2:ETH + 4])[0]
            if raw[ETH + 9] == 6 and h + 20 <= total and ETH + total <= len(raw):
                fix_tcp(raw)
                fix_ip(raw)
    return bytes(raw)


def _input_has_rst(raw):
    if len(raw) < ETH + 20 or raw[12:14] != b"\x08\x00" or raw[ETH + 9] != 6:
        return False
    h = ihl(raw)
    return h >= 20 and len(raw) >= ETH + h + 14 and bool(raw[ETH + h + 13] & 0x04)


def _check_output(frames, rst_in):
    for f in frames:
        e = Ether(f)
        assert e.src == STACK_MAC
        if e.type == 0x0806:
            assert e[ARP].psrc == STACK_IP
            continue
        assert e.type == 0x0800
        ip = e[IP]
        assert ip.src == STACK_IP and ip.ttl == 64 and ip.flags.DF
        check_checksums(e)
        if TCP in e and rst_in:
            assert not (e[TCP].flags & 0x04), "a RST answered a RST"


def _fuzz(stack, seeds, rng, n):
    sent = 0
    start = stack.counters()["eth_rx_frames"]
    for i in range(n):
        raw = _mutate(rng, rng.choice(seeds))
        stack.out = []
        stack.inject(raw)
        sent += 1
        _check_output(stack.out, _input_has_rst(raw))
        stack.out = []
        if i % 50 == 49:
            stack.advance(rng.randint(1, 3000))
            stack.out = []
        c = stack.counters()
        assert c["eth_rx_frames"] == start + sent
        assert counters_sum_ok(c), c
        assert all(v < 2**40 for v in c["tcp_state"].values()), c["tcp_state"]
    return stack.counters()


def test_fuzz_established_connection(stack, listener):
    rng = random.Random(0x5EED)
    peer = Peer(stack, sack=True, ts=100, wscale=7)
    sid = passive_open(stack, listener, peer)
    assert stack.write(sid, bytes(3000)) == 3000
    stack.take()
    o = peer.ts_option(peer.stack_ts)
    seeds = [bytes(frame(s)) for s in [
        peer.build("A", options=o),
        peer.build("PA", b"hello world" * 10, options=o),
        peer.build("PA", b"x" * 500, seq=peer.nxt + 1000, options=o),
        peer.build("FA", options=o),
        peer.build("R", options=o),
        peer.build("A", ack=peer.rcv + 1460, options=o + [("SAck", (peer.rcv + 2920, peer.rcv + 3000))]),
        peer.build("S", options=peer.syn_options()),
    ]]
    quoted = bytes(IP(src=STACK_IP, dst=PEER_IP) / TCP(sport=80, dport=40000, seq=peer.rcv))[:28]
    seeds.append(bytes(Ether(src=PEER_MAC, dst=STACK_MAC) / IP(src=PEER_IP, dst=STACK_IP) /
                       ICMP(type=3, code=4, nexthopmtu=1000) / Raw(quoted)))
    c = _fuzz(stack, seeds, rng, 2000)
    assert c["tcp_rx_segments"] > 200  # the mutations did reach TCP
    # The engine still serves a new connection afterwards.
    p2 = Peer(stack, sport=50123)
    sid2 = passive_open(stack, listener, p2)
    p2.seg("PA", b"alive")
    assert stack.read(sid2) == b"alive"


def test_fuzz_listener(stack, listener):
    rng = random.Random(0xF00D)
    peer = Peer(stack, sack=True, ts=1, wscale=3)
    seeds = [bytes(frame(s)) for s in [
        peer.build("S", options=peer.syn_options()),
        peer.build("S", payload=b"syn data", options=[("MSS", 536)]),
        peer.build("A", ack=12345),
        peer.build("R"),
        peer.build("SA", ack=1),
        peer.build("FA", b"bye", ack=1),
    ]] + [bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) /
                ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=STACK_IP)),
          bytes(Ether(src=PEER_MAC, dst=STACK_MAC) / IP(src=PEER_IP, dst=STACK_IP) / ICMP(type=8, id=1, seq=2) /
                Raw(b"ping"))]
    c = _fuzz(stack, seeds, rng, 2000)
    assert c["tcp_rx_segments"] > 200
    p2 = Peer(stack, sport=50124)
    sid2 = passive_open(stack, listener, p2)
    assert stack.state(sid2) == "ESTABLISHED"
