"""Loss and duplication on a real kernel link, for tests and benchmarks.

This machine's kernel has no netem (CONFIG_NET_SCH_NETEM is off) and no fq
or etf, so neither delay nor reordering can be made in the kernel here.
Loss and duplication can: a small eBPF program on the link's clsact hook
(cls_bpf, direct action) drops a frame with probability `loss` and clones it
back onto the same hook with probability `dup` (marked, so the copy is not
copied again).  The program is assembled here and loaded with bpf(2); the
filter is attached through netlink (pyroute2).

    with Impairment(netns_name, "ss0", "egress", loss=0.02, dup=0.02):
        ...
"""
import ctypes
import os
import struct

from pyroute2 import IPRoute, NetNS

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SCHED_CLS = 3
# STOLEN, not SHOT: a shot frame on egress is reported to the local sender
# (NET_XMIT_DROP) and TCP simply sends it again; a stolen one is silently
# gone, as on a lossy wire.
TC_ACT_OK, TC_ACT_STOLEN = 0, 4
MARK = 0x53530D0D          # "this frame is our duplicate"
SKB_MARK, SKB_IFINDEX = 8, 40  # offsets in struct __sk_buff
BPF_F_INGRESS = 1
FN_GET_PRANDOM_U32, FN_CLONE_REDIRECT = 7, 13
CLSACT_INGRESS, CLSACT_EGRESS = "ffff:fff2", "ffff:fff3"


def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm & 0xFFFFFFFF if imm < 0 else imm)


def program(loss, dup, ingress):
    """The eBPF instructions; probabilities are compared on a 16-bit scale.
    Jump offsets count instructions from the next one: keep them in step
    with the numbers in the comments."""
    lo, du = int(loss * 65536), int(dup * 65536)
    mov_x, mov_k, ldx_w, stx_w = 0xBF, 0xB7, 0x61, 0x63
    and_k, rsh_k, call, exit_ = 0x57, 0x77, 0x85, 0x95
    jne_k, jlt_k, jge_k, ja = 0x55, 0xA5, 0x35, 0x05
    p = [
        _insn(mov_x, 6, 1),                         # 0  r6 = skb
        _insn(ldx_w, 2, 6, SKB_MARK),               # 1  r2 = skb->mark
        _insn(jne_k, 2, 0, 1, MARK),                # 2  not our copy -> 4
        _insn(ja, 0, 0, 13),                        # 3  our copy -> 17 (clear the mark, pass)
        _insn(call, 0, 0, 0, FN_GET_PRANDOM_U32),   # 4
        _insn(mov_x, 7, 0),                         # 5  r7 = random
        _insn(and_k, 0, 0, 0, 0xFFFF),              # 6
        _insn(jlt_k, 0, 0, 13, lo),                 # 7  lost -> 21
        _insn(mov_x, 0, 7),                         # 8
        _insn(rsh_k, 0, 0, 0, 16),                  # 9
        _insn(jge_k, 0, 0, 6, du),                  # 10 not duplicated -> 17
        _insn(mov_k, 2, 0, 0, MARK),                # 11 duplicate: mark,
        _insn(stx_w, 6, 2, SKB_MARK),               # 12
        _insn(mov_x, 1, 6),                         # 13 clone onto the same hook,
        _insn(ldx_w, 2, 6, SKB_IFINDEX),            # 14
        _insn(mov_k, 3, 0, 0, BPF_F_INGRESS if ingress else 0),  # 15
        _insn(call, 0, 0, 0, FN_CLONE_REDIRECT),    # 16 then pass the original:
        _insn(mov_k, 2, 0, 0, 0),                   # 17 clear the mark
        _insn(stx_w, 6, 2, SKB_MARK),               # 18
        _insn(mov_k, 0, 0, 0, TC_ACT_OK),           # 19
        _insn(exit_),                               # 20
        _insn(mov_k, 0, 0, 0, TC_ACT_STOLEN),       # 21 lost
        _insn(exit_),                               # 22
    ]
    return b"".join(p)


def load(loss, dup, ingress):
    code = program(loss, dup, ingress)
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    # union bpf_attr for BPF_PROG_LOAD, fields up to log_buf
    attr = struct.pack("<IIQQIIQ", BPF_PROG_TYPE_SCHED_CLS, len(code) // 8, ctypes.addressof(insns),
                       ctypes.addressof(lic), 1, len(log), ctypes.addressof(log))
    buf = ctypes.create_string_buffer(attr, 128)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(SYS_BPF, BPF_PROG_LOAD, buf, 128)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "impair: cannot load the program: %s %s" % (
            os.strerror(ctypes.get_errno()), log.value.decode(errors="replace")[-500:]))
    return fd


class Impairment:
    """Loss and duplication on one direction of an interface in a namespace."""

    def __init__(self, netns, ifname, direction, loss=0.0, dup=0.0):
        self.netns, self.ifname, self.direction = netns, ifname, direction
        self.loss, self.dup = loss, dup

    def __enter__(self):
        ingress = self.direction == "ingress"
        fd = load(self.loss, self.dup, ingress)
        try:
            with NetNS(self.netns) if self.netns else IPRoute() as ip:
                idx = ip.link_lookup(ifname=self.ifname)[0]
                try:
                    ip.tc("add", "clsact", idx)
                except Exception:
                    pass  # already there (the other direction)
                ip.tc("add-filter", "bpf", idx, ":1", fd=fd, name="ss-impair",
                      parent=CLSACT_INGRESS if ingress else CLSACT_EGRESS, classid=1, direct_action=True)
        finally:
            os.close(fd)  # the filter holds the program
        return self

    def __exit__(self, *exc):
        with NetNS(self.netns) if self.netns else IPRoute() as ip:
            found = ip.link_lookup(ifname=self.ifname)
            if found:
                try:
                    ip.tc("del", "clsact", found[0])
                except Exception:
                    pass
        return False
