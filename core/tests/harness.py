"""Packet-script harness for the engine: one engine, a virtual clock, and a
scapy peer.

Frames the engine sends are collected; a test feeds segments built with scapy
and states exactly which segments must come out and that nothing else does
(``Stack.expect``).  Modelled on smoltcp's ``send!``/``recv!`` tests.

Addresses come from the benchmarking range (RFC 2544): the stack is
198.18.0.2, the scripted peer 198.18.0.1.
"""
import ipaddress

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from preload.engine import TCP_STATES, ffi, lib, read_counters

STACK_MAC = "02:00:00:00:00:02"
STACK_IP = "198.18.0.2"
PEER_MAC = "02:00:00:00:00:01"
PEER_IP = "198.18.0.1"
START_US = 1_000_000

ERRNO = {name: -getattr(__import__("errno"), name) for name in (
    "EAGAIN", "EINPROGRESS", "EALREADY", "EISCONN", "ENOTCONN", "EPIPE", "ECONNRESET", "ECONNREFUSED",
    "ETIMEDOUT", "EBADF", "EINVAL", "EADDRINUSE", "EADDRNOTAVAIL", "ENETUNREACH", "EHOSTUNREACH",
    "ENOPROTOOPT", "EMFILE")}


def ip2int(a):
    return int(ipaddress.IPv4Address(a))


def mac2bytes(m):
    return bytes(int(x, 16) for x in m.split(":"))


@ffi.def_extern()
def ss_py_tx(ctx, frame, length):
    ffi.from_handle(ctx).out.append(bytes(ffi.buffer(frame, length)))
    return 0


def flags_of(tcp):
    """TCP flags as a set of scapy letters ('S', 'A', 'F', 'R', 'P', 'U')."""
    return set(str(tcp.flags))


class Stack:
    """One engine instance with a virtual clock.

    ``cfg`` overrides fields of ``struct ss_engine_config``.  The peer's MAC
    is a static ARP entry unless ``static_peer`` is False.
    """

    def __init__(self, static_peer=True, **cfg):
        c = ffi.new("struct ss_engine_config *")
        lib.ss_engine_config_init(c)
        c.mac = list(mac2bytes(STACK_MAC))
        c.ip = ip2int(STACK_IP)
        c.secret = [0x0123456789ABCDEF, 0xFEDCBA9876543210]
        for k, v in cfg.items():
            if k in ("gateway", "netmask") and isinstance(v, str):
                v = ip2int(v)
            setattr(c, k, v)
        self.mtu = c.mtu
        self._handle = ffi.new_handle(self)
        c.tx = lib.ss_py_tx
        c.tx_ctx = self._handle
        self.out = []
        self.now = START_US
        self.e = lib.ss_engine_create(c, self.now)
        if self.e == ffi.NULL:
            raise ValueError("engine refused its configuration")
        self.boot_frames = [Ether(f) for f in self.out]
        self.out = []
        if static_peer:
            assert lib.ss_arp_add_static(self.e, ip2int(PEER_IP), mac2bytes(PEER_MAC)) == 0

    def destroy(self):
        if self.e is not None:
            lib.ss_engine_destroy(self.e)
            self.e = None

    # ---- time ----
    def advance(self, ms):
        """Moves the clock forward by ms milliseconds and runs due timers."""
        self.now += int(ms * 1000)
        lib.ss_engine_poll(self.e, self.now)

    def next_deadline_ms(self):
        d = lib.ss_engine_next_deadline(self.e)
        return None if d == 2**64 - 1 else (d - self.now) / 1000

    # ---- input ----
    def inject(self, frame):
        raw = bytes(frame)
        lib.ss_engine_input(self.e, raw, len(raw), self.now)

    def send(self, l4, src=PEER_IP, **ip_fields):
        """Sends an IPv4 packet from the peer (l4 is a scapy TCP/ICMP/...)."""
        self.inject(Ether(src=PEER_MAC, dst=STACK_MAC) / IP(src=src, dst=STACK_IP, **ip_fields) / l4)

    # ---- output ----
    def take(self):
        frames = [Ether(f) for f in self.out]
        self.out = []
        return frames

    def take_tcp(self):
        """Every frame sent since the last call; each must be a valid IPv4/TCP
        frame to the peer, with correct checksums.  Returns the TCP layers."""
        segs = []
        for f in self.take():
            assert len(f) <= self.mtu + 14, "frame of %d bytes exceeds the %d-byte MTU" % (len(f), self.mtu)
            assert f.type == 0x0800, "expected IPv4, got %r" % f
            assert f.dst == PEER_MAC and f.src == STACK_MAC
            ip = f[IP]
            assert ip.src == STACK_IP and ip.flags.DF and ip.ttl == 64
            assert TCP in f, "expected TCP, got %r" % f
            check_checksums(f)
            segs.append(f[TCP])
        return segs

    def expect(self, *wanted):
        """Asserts that exactly the segments described came out, in order.

        Each description is a dict of TCP fields: flags (a string of scapy
        letters, order free), seq, ack, window, payload (bytes), len, sport,
        dport, and opts (a dict of option name -> value that must be present)
        or noopts (option names that must be absent)."""
        segs = self.take_tcp()
        assert len(segs) == len(wanted), "expected %d segments, got %d: %s" % (
            len(wanted), len(segs), [describe(s) for s in segs])
        for i, (s, w) in enumerate(zip(segs, wanted)):
            match(s, w, i)
        return segs

    def expect_at(self, ms, *wanted):
        """Silence for ms - 1 milliseconds, then exactly these segments at ms."""
        self.advance(ms - 1)
        self.expect_nothing()
        self.advance(1)
        return self.expect(*wanted)

    def expect_nothing(self):
        frames = self.take()
        assert not frames, "expected silence, got %s" % [f.summary() for f in frames]

    # ---- sockets ----
    def socket(self):
        sid = lib.ss_tcp_socket(self.e)
        assert sid >= 0, sid
        return sid

    def listen(self, port=80, backlog=16, ip=0):
        sid = self.socket()
        assert lib.ss_tcp_bind(self.e, sid, ip, port) == 0
        assert lib.ss_tcp_listen(self.e, sid, backlog) == 0
        return sid

    def accept(self, lsid):
        return lib.ss_tcp_accept(self.e, lsid, self.now)

    def connect(self, sid, ip=PEER_IP, port=80):
        return lib.ss_tcp_connect(self.e, sid, ip2int(ip) if isinstance(ip, str) else ip, port, self.now)

    def write(self, sid, data):
        return lib.ss_tcp_send(self.e, sid, data, len(data), self.now)

    def read(self, sid, n=65536):
        """Bytes read, or the negative errno."""
        buf = ffi.new("char[]", max(n, 1))
        r = lib.ss_tcp_recv(self.e, sid, buf, n, self.now)
        return ffi.buffer(buf, r)[:] if r >= 0 else r

    def shutdown(self, sid, how):
        return lib.ss_tcp_shutdown(self.e, sid, how, self.now)

    def close(self, sid):
        return lib.ss_tcp_close(self.e, sid, self.now)

    def setopt(self, sid, opt, value):
        return lib.ss_tcp_setopt(self.e, sid, opt, value, self.now)

    def getopt(self, sid, opt):
        v = ffi.new("int *")
        r = lib.ss_tcp_getopt(self.e, sid, opt, v)
        return r if r < 0 else v[0]

    def poll(self, sid):
        return lib.ss_tcp_poll(self.e, sid)

    def info(self, sid):
        i = ffi.new("struct ss_tcp_info *")
        assert lib.ss_tcp_info(self.e, sid, i) == 0
        d = {f: getattr(i, f) for f, _ in ffi.typeof("struct ss_tcp_info").fields}
        d["state"] = TCP_STATES[i.state]
        return d

    def state(self, sid):
        return self.info(sid)["state"]

    def events(self):
        buf = ffi.new("int[64]")
        n = lib.ss_engine_take_events(self.e, buf, 64)
        return [buf[i] for i in range(n)]

    def counters(self):
        return read_counters(lib.ss_engine_counters(self.e))


def check_checksums(frame):
    """Recomputes the IP and TCP checksums with scapy and compares."""
    ip = frame[IP]
    raw_ip = bytes(ip)
    fresh = IP(raw_ip)
    del fresh.chksum
    if TCP in fresh:
        del fresh[TCP].chksum
    if ICMP in fresh:
        del fresh[ICMP].chksum
    fresh = IP(bytes(fresh))
    assert fresh.chksum == ip.chksum, "bad IP checksum"
    if TCP in ip:
        assert fresh[TCP].chksum == ip[TCP].chksum, "bad TCP checksum"
    if ICMP in ip:
        assert fresh[ICMP].chksum == ip[ICMP].chksum, "bad ICMP checksum"


def tcp_options(seg):
    """TCP options as a dict: MSS, WScale, SAckOK (True), Timestamp (tuple),
    SAck (tuple of edges)."""
    out = {}
    for name, val in seg.options:
        if name == "SAckOK":
            val = True
        out[name] = val
    return out


def describe(s):
    return "%s seq=%d ack=%d win=%d len=%d opts=%s" % (
        "".join(sorted(flags_of(s))), s.seq, s.ack, s.window, len(bytes(s.payload)), tcp_options(s))


def match(s, w, i=0):
    where = "segment %d (%s)" % (i, describe(s))
    for k, v in w.items():
        if k == "flags":
            assert flags_of(s) == set(v), "%s: flags %s, wanted %s" % (where, flags_of(s), v)
        elif k == "payload":
            assert bytes(s.payload) == v, "%s: payload differs" % where
        elif k == "len":
            assert len(bytes(s.payload)) == v, "%s: len %d, wanted %d" % (where, len(bytes(s.payload)), v)
        elif k == "opts":
            o = tcp_options(s)
            for name, val in v.items():
                assert name in o, "%s: option %s missing" % (where, name)
                if val is not None:
                    assert o[name] == val, "%s: option %s=%r, wanted %r" % (where, name, o[name], val)
        elif k == "noopts":
            o = tcp_options(s)
            for name in v:
                assert name not in o, "%s: option %s present" % (where, name)
        else:
            assert getattr(s, k) == v, "%s: %s=%r, wanted %r" % (where, k, getattr(s, k), v)


class Peer:
    """The scripted remote end of one connection.

    Tracks the peer's own next sequence number (``nxt``) and what it has
    received from the stack (``rcv``); ``seg`` sends a segment built from
    them.  Options for the SYN come from the constructor."""

    def __init__(self, stack, sport=40000, dport=80, isn=1000, mss=1460, wscale=None, sack=False, ts=None,
                 win=65535):
        self.stack = stack
        self.sport, self.dport = sport, dport
        self.isn = isn
        self.nxt = isn
        self.rcv = 0
        self.mss, self.wscale, self.sack, self.ts, self.win = mss, wscale, sack, ts, win
        self.tsval = ts

    def syn_options(self):
        o = []
        if self.mss is not None:
            o.append(("MSS", self.mss))
        if self.sack:
            o.append(("SAckOK", b""))
        if self.ts is not None:
            o.append(("Timestamp", (self.tsval, 0)))
        if self.wscale is not None:
            o.append(("WScale", self.wscale))
        return o

    def ts_option(self, tsecr):
        return [("Timestamp", (self.tsval, tsecr))] if self.ts is not None else []

    def build(self, flags="A", payload=b"", seq=None, ack=None, win=None, options=None):
        return TCP(sport=self.sport, dport=self.dport, flags=flags,
                   seq=self.nxt if seq is None else seq,
                   ack=(self.rcv if ack is None else ack) if "A" in flags else 0,
                   window=self.win if win is None else win,
                   options=options if options is not None else []) / payload

    def seg(self, flags="A", payload=b"", seq=None, ack=None, win=None, options=None, advance=True):
        """Sends one segment; by default it continues the peer's sequence
        space and advances it by the payload and SYN/FIN."""
        s = self.build(flags, payload, seq, ack, win, options)
        self.stack.send(s)
        if advance and seq is None:
            self.nxt = (self.nxt + len(payload) + ("S" in flags) + ("F" in flags)) % 2**32
        return s


def passive_open(stack, lsid, peer, expect_opts=None):
    """Runs the three-way handshake from the peer to listener lsid and
    accepts.  Returns the accepted socket id; peer.rcv is set."""
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": peer.nxt})
    if expect_opts:
        match(sa, {"opts": expect_opts})
    peer.rcv = (sa.seq + 1) % 2**32
    o = tcp_options(sa)
    peer.stack_ts = o.get("Timestamp", (0, 0))[0]
    peer.seg("A", options=peer.ts_option(peer.stack_ts))
    stack.expect_nothing()
    sid = stack.accept(lsid)
    assert sid >= 0, sid
    return sid


def active_open(stack, peer, port=80):
    """The stack connects to the peer; the peer answers SYN-ACK with its
    options.  Returns the socket id; peer.sport is the stack's port."""
    sid = stack.socket()
    assert stack.connect(sid, PEER_IP, port) == ERRNO["EINPROGRESS"]
    (syn,) = stack.expect({"flags": "S", "dport": port})
    peer.sport, peer.dport = port, syn.sport
    peer.rcv = (syn.seq + 1) % 2**32
    o = tcp_options(syn)
    peer.stack_ts = o.get("Timestamp", (0, 0))[0]
    peer.seg("SA", ack=peer.rcv, options=_synack_opts(peer, o))
    stack.expect({"flags": "A", "ack": peer.nxt})
    assert stack.state(sid) == "ESTABLISHED"
    return sid


def _synack_opts(peer, stack_syn_opts):
    o = []
    if peer.mss is not None:
        o.append(("MSS", peer.mss))
    if peer.sack and "SAckOK" in stack_syn_opts:
        o.append(("SAckOK", b""))
    if peer.ts is not None and "Timestamp" in stack_syn_opts:
        o.append(("Timestamp", (peer.tsval, stack_syn_opts["Timestamp"][0])))
    if peer.wscale is not None and "WScale" in stack_syn_opts:
        o.append(("WScale", peer.wscale))
    return o


# ---------------------------------------------------------------------------
# Connection scripting: a Conn tracks one established connection's bytes so
# tests can describe segments by stream offset.
# ---------------------------------------------------------------------------

MSS = 1460


def pattern(start, n):
    return bytes((k * 7 + 3) % 251 for k in range(start, start + n))


def expect_segs(stack, *wanted):
    """Like Stack.expect, but a description with psh_ok=True accepts the
    PSH bit whether set or not (PSH placement is the sender's business)."""
    segs = stack.take_tcp()
    assert len(segs) == len(wanted), "expected %d segments, got %d: %s" % (
        len(wanted), len(segs), [describe(s) for s in segs])
    for i, (s, w) in enumerate(zip(segs, wanted)):
        w = dict(w)
        if w.pop("psh_ok", False):
            want = set(w.pop("flags"))
            got = flags_of(s) - {"P"}
            assert got == want, "segment %d (%s): flags %s, wanted %s (+P)" % (i, describe(s), got, want)
        match(s, w, i)
    return segs


class Conn:
    """One established connection: the stack's socket, the scripted peer,
    and the bytes written so far (offsets count from the first data byte)."""

    def __init__(self, stack, sid, peer):
        self.s, self.sid, self.p = stack, sid, peer
        self.base = peer.rcv
        self.out = b""

    def write(self, n):
        b = pattern(len(self.out), n) if isinstance(n, int) else n
        assert self.s.write(self.sid, b) == len(b)
        self.out += b

    def seq(self, off):
        return (self.base + off) % 2**32

    def d(self, off, n, **kw):
        """Description of a data segment carrying bytes [off, off + n)."""
        w = {"flags": "A", "psh_ok": True, "seq": self.seq(off), "ack": self.p.nxt, "len": n,
             "payload": self.out[off:off + n]}
        w.update(kw)
        return w

    def seg(self, i, **kw):
        """Full-sized segment number i."""
        return self.d(i * MSS, MSS, **kw)

    def ack(self, off, win=None):
        """The peer acknowledges up to offset off (a pure ACK)."""
        self.p.seg("A", ack=self.seq(off), win=win)

    def ack_seg(self, i, win=None):
        """The peer acknowledges every full segment before number i."""
        self.ack(i * MSS, win=win)

    def expect(self, *w):
        return expect_segs(self.s, *w)

    def expect_at(self, ms, *w):
        """Silence for ms - 1 milliseconds, then exactly these segments at ms."""
        self.s.advance(ms - 1)
        self.s.expect_nothing()
        self.s.advance(1)
        return self.expect(*w)

    def info(self):
        return self.s.info(self.sid)


def open_passive(stack, rtt_ms=0, **peer_kw):
    """The peer opens a connection to port 80; its final ACK arrives rtt_ms
    after the SYN-ACK (the stack's first RTT sample)."""
    lsid = stack.listen(80)
    peer = Peer(stack, **peer_kw)
    peer.seg("S", options=peer.syn_options())
    (sa,) = stack.expect({"flags": "SA", "ack": peer.nxt})
    peer.rcv = (sa.seq + 1) % 2**32
    if rtt_ms:
        stack.advance(rtt_ms)
        stack.expect_nothing()
    peer.seg("A")
    stack.expect_nothing()
    sid = stack.accept(lsid)
    assert sid >= 0, sid
    c = Conn(stack, sid, peer)
    c.p_synack = sa
    return c


def open_active(stack, rtt_ms=0, syn_losses=0, **peer_kw):
    """The stack connects to the peer; the SYN-ACK comes rtt_ms after the
    (last) SYN.  syn_losses SYNs are lost first (each after its RTO)."""
    peer = Peer(stack, **peer_kw)
    sid = stack.socket()
    assert stack.connect(sid, PEER_IP, 80) == ERRNO["EINPROGRESS"]
    (syn,) = stack.expect({"flags": "S", "dport": 80})
    rto = 1000
    for _ in range(syn_losses):
        stack.advance(rto)
        stack.expect({"flags": "S", "seq": syn.seq})
        rto *= 2
    peer.sport, peer.dport = 80, syn.sport
    peer.rcv = (syn.seq + 1) % 2**32
    if rtt_ms:
        stack.advance(rtt_ms)
        stack.expect_nothing()
    opts = [("MSS", peer.mss)] if peer.mss is not None else []
    if peer.wscale is not None:
        opts.append(("WScale", peer.wscale))
    peer.seg("SA", ack=peer.rcv, options=opts)
    stack.expect({"flags": "A", "seq": peer.rcv, "ack": peer.nxt})
    assert stack.state(sid) == "ESTABLISHED"
    return Conn(stack, sid, peer)


def ctr(stack, name):
    return stack.counters()[name]



def peer_data(c, n, start=0, seq=None, advance=True):
    return c.p.seg("PA", pattern(1000 + start, n), seq=seq, advance=advance)


def ack_of(c, **kw):
    """Description of a pure ACK from the stack for all the peer sent."""
    w = {"flags": "A", "seq": c.seq(len(c.out)), "ack": c.p.nxt, "len": 0}
    w.update(kw)
    return w


def right_edge(seg):
    """The right edge of the window a segment offers."""
    return (seg.ack + seg.window) % 2**32
