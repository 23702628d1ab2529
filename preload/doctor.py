"""``shardsock doctor``: what this machine supports, and for each backend
whether it can be used here and, if not, why and what to do.

Every check asks the kernel itself -- a system call, an ioctl, a netlink
request, a file under /proc or /sys -- rather than parsing the output of a
tool, and whatever a check creates is gone when it returns: the throwaway
TAP device lives in a network namespace of a forked child (or, where the
child may not make one, is non-persistent under a unique name), the bpffs
mount test happens in a private mount namespace of a child, and both vanish
with the child.  Nothing is attached to a real interface: native XDP is
read from the kernel's xdp-features (netdev netlink family, Linux 6.3+) or,
on older kernels, from the driver's name against the drivers known to have
native XDP.

    $ shardsock doctor
    $ shardsock doctor --interface eth1 --json

``--json`` prints one object, stable across releases (keys are only added):

    {"machine": {"kernel": "6.1.0-18-amd64", "arch": "x86_64", "euid": 0,
                 "cores": [0, 1],                 # usable here: 'up' starts one instance on each
                 "online_cpus": "0-1",            # /sys/devices/system/cpu/online, or null
                 "rlimit_nofile": {"soft": 1024, "hard": 524288},    # null = unlimited
                 "rlimit_memlock": {"soft": 8388608, "hard": 8388608},
                 "hugepages": {"total": 0, "free": 0, "size_kb": 2048}},
     "interface": "eth1" | null,                  # --interface, if given
     "default_backend": "tap",
     "checks": [{"name": "tun",                   # stable identifier, one of CHECKS, in that order
                 "status": "ok" | "warn" | "fail",
                 "detail": "...",                 # what was found
                 "fix": "..."}, ...],             # what to do; "" when nothing
     "backends": {"tap" | "afpacket" | "afxdp":
                  {"usable": true | false,        # no check it NEEDS failed
                   "why": "...",                  # why not; or how it runs, and caveats
                   "fix": "..."}}}                # what to do; "" when nothing

The interface checks (interface, native_xdp, xdp_queues, xdp_attached) are
present only with --interface.

"warn" means it works but something is worth changing; "fail" means what
the check is about cannot be used by this process (where the kernel
refused a probe for lack of privilege, the detail says "needs root: run as
root" and so does the fix).

Exit status: 0 when the default backend (tap) is usable, 1 otherwise
(also when --interface names no interface).
"""
import ctypes
import errno
import fcntl
import json
import os
import platform
import resource
import select
import signal
import socket
import struct
import time

from preload.instances import DAEMON, DEFAULTS, GroupError, online_cores
from preload.netsetup import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, TUNSETIFF

HELP = "what this machine supports, and for each backend that cannot be used, why and what to do"

# Check names, in report order; the JSON "name" of each check.
CHECKS = ("privileges", "shardsockd", "libraries", "cores", "nofile", "memlock", "hugepages", "tun",
          "tap_multiqueue", "tap_steering", "io_uring", "af_packet", "af_xdp", "bpf", "xdp_program", "bpffs",
          # with --interface
          "interface", "native_xdp", "xdp_queues", "xdp_attached")

# Which checks each backend needs; a "fail" in any makes it unusable.
NEEDS = {
    "tap": ("privileges", "shardsockd", "libraries", "tun", "tap_multiqueue", "tap_steering", "io_uring"),
    "afpacket": ("privileges", "shardsockd", "libraries", "af_packet", "interface"),
    "afxdp": ("privileges", "shardsockd", "libraries", "af_xdp", "bpf", "xdp_program", "bpffs", "memlock",
              "interface", "native_xdp", "xdp_queues", "xdp_attached"),
}

NOFILE_RECOMMENDED = 65536           # a descriptor per connection, plus the program's own
UMEM_BYTES = 4096 * 2048             # core/netdev/afxdp.c FRAMES * FRAME_SIZE: one UMEM per instance
SHARED_LIBRARIES = (("libxdp.so.1", "libxdp1"), ("libbpf.so.1", "libbpf1"), ("liburing.so.2", "liburing2"))

CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK, CAP_SYS_ADMIN, CAP_BPF = 12, 13, 14, 21, 39
CAP_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW", CAP_IPC_LOCK: "CAP_IPC_LOCK",
             CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_BPF: "CAP_BPF"}

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
BPF_FS_MAGIC = 0xCAFE4A11
TUNSETSTEERINGEBPF = 0x800454E0
SIOCETHTOOL, ETHTOOL_GDRVINFO = 0x8946, 3
AF_XDP = 44
SOL_PACKET, PACKET_RX_RING, PACKET_VERSION, TPACKET_V2 = 263, 5, 10, 1
BPF_PROG_LOAD, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 5, 13, 15
BPF_PROG_TYPE_SOCKET_FILTER, BPF_PROG_TYPE_XDP, XDP_PASS = 1, 6, 2
BPF_PROG_INFO_LEN = 80               # struct bpf_prog_info up to and including .name
PROG_NAME = "ss_xdp_redirect"        # core/netdev/afxdp.c: afxdp's own XDP program
NETDEV_XDP_ACT_BASIC, NETDEV_XDP_ACT_XSK_ZEROCOPY = 1, 8
SYS_IO_URING_SETUP = 425             # the same number on every architecture
SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280}.get(platform.machine())

# Drivers with native XDP, for kernels older than 6.3 that do not report
# xdp-features over netlink (the names ethtool's driver info gives).
NATIVE_XDP_DRIVERS = frozenset((
    "veth", "tun", "virtio_net", "bonding", "netdevsim", "mlx4_en", "mlx5_core", "i40e", "ice", "ixgbe",
    "ixgbevf", "igb", "igc", "bnxt_en", "nfp", "qede", "ena", "gve", "hv_netvsc", "mana", "sfc", "mvneta",
    "mvpp2", "netsec", "fec", "tsnep", "atlantic"))

PROBE_TIMEOUT_S = 3.0
AS_ROOT = "run as root: sudo shardsock doctor (and sudo shardsock up)"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def add_arguments(p):
    p.add_argument("--interface", help="also check this interface for the afpacket and afxdp backends "
                                       "(native XDP, queues, an XDP program already attached)")
    p.add_argument("--json", action="store_true", help="print JSON (keys documented in preload/doctor.py)")


def check(name, status, detail, fix=""):
    return {"name": name, "status": status, "detail": detail, "fix": fix}


def refused(what, err, fix):
    """(detail, fix) of a probe the kernel refused with errno err.  Refused
    for lack of privilege, the fix is to run as root -- unless we are root
    already, when a container or a security policy is in the way and fix
    (what to do about err otherwise) is all we can offer."""
    if err in (errno.EPERM, errno.EACCES):
        if os.geteuid() != 0:
            return "needs root: run as root (%s: %s)" % (what, os.strerror(err)), AS_ROOT
        return ("%s: %s even as root (a container without the capability, or a security policy such as "
                "seccomp or SELinux?)" % (what, os.strerror(err)), fix)
    return "%s: %s" % (what, os.strerror(err)), fix


def syscall(number, *args):
    """A raw system call; returns its result or raises OSError."""
    r = _libc.syscall(ctypes.c_long(number), *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def bpf_load(prog_type, ret):
    """Loads the smallest valid program of prog_type (r0 = ret; exit) and
    returns its fd: proof that the kernel has the BPF system call, that type,
    and lets us load it."""
    if SYS_BPF is None:
        raise OSError(errno.ENOSYS, "bpf(2) number unknown on %s" % platform.machine())
    insns = ctypes.create_string_buffer(struct.pack("=BBhiBBhi", 0xB7, 0, 0, ret, 0x95, 0, 0, 0))
    license_ = ctypes.create_string_buffer(b"GPL")
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license;
    # the kernel zeroes what a shorter attr leaves out.
    attr = ctypes.create_string_buffer(struct.pack("=IIQQ", prog_type, 2, ctypes.addressof(insns),
                                                   ctypes.addressof(license_)), 48)
    return syscall(SYS_BPF, ctypes.c_long(BPF_PROG_LOAD), attr, ctypes.c_long(48))


def effective_caps():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_cap(cap):
    return bool(effective_caps() >> cap & 1)


def in_child(probe):
    """probe() run in a forked child, its JSON-able result returned.  Probes
    that unshare a namespace must not move the doctor itself, and when the
    child exits the kernel removes what it made (its namespaces, a
    non-persistent tap).  A child that does not answer within
    PROBE_TIMEOUT_S is killed; the result then says so."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out = probe()
            except OSError as e:
                out = {"error": [e.errno, "%s" % e]}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                return {"error": [errno.ETIMEDOUT, "no answer within %ss" % PROBE_TIMEOUT_S]}
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return json.loads(data) if data else {"error": [errno.EIO, "the probe died"]}


def probe_tap():
    """In a child: a throwaway multi-queue TAP device with two queues and a
    steering program, as 'shardsock up' makes and instance 0 attaches.  In
    a fresh network namespace when the child may make one, else under a
    unique name; either way non-persistent, so it goes with the child."""
    fresh = _libc.unshare(CLONE_NEWNET) == 0
    name = "ssdoc0" if fresh else "ssdoc%d" % os.getpid()
    out = {"where": "a throwaway network namespace" if fresh else "this network namespace, as " + name,
           "open": None, "multiqueue": None, "steering": None}
    ifr = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE)
    fds = []
    try:
        for _ in range(2):
            try:
                fds.append(os.open("/dev/net/tun", os.O_RDWR))
            except OSError as e:
                out["open"] = [e.errno, "open /dev/net/tun"]
                return out
            try:
                fcntl.ioctl(fds[-1], TUNSETIFF, ifr)
            except OSError as e:
                out["multiqueue"] = [e.errno, "TUNSETIFF (multi-queue tap, queue %d)" % (len(fds) - 1)]
                return out
        try:
            prog = bpf_load(BPF_PROG_TYPE_SOCKET_FILTER, 0)
        except OSError as e:
            out["steering"] = [e.errno, "loading a socket-filter BPF program"]
            return out
        try:
            fcntl.ioctl(fds[0], TUNSETSTEERINGEBPF, struct.pack("i", prog))
        except OSError as e:
            out["steering"] = [e.errno, "TUNSETSTEERINGEBPF"]
        finally:
            os.close(prog)
        return out
    finally:
        for fd in fds:
            os.close(fd)


def probe_bpffs_mount():
    """In a child: can a bpffs be mounted at /sys/fs/bpf?  Tried in a
    private mount namespace, so the mount never reaches the machine."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        return {"error": [ctypes.get_errno(), "unshare(CLONE_NEWNS)"]}
    if _libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
        return {"error": [ctypes.get_errno(), "making / private in the child's mount namespace"]}
    if _libc.mount(b"bpf", b"/sys/fs/bpf", b"bpf", ctypes.c_ulong(0), b"mode=0700") != 0:
        return {"error": [ctypes.get_errno(), "mount -t bpf bpf /sys/fs/bpf"]}
    return {"error": None}


def fs_type(path):
    """statfs(2) f_type (the first field on every Linux ABI), or None."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(path.encode(), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def fmt_limit(v):
    return "unlimited" if v is None else str(v)


def fmt_bytes(v):
    if v is None:
        return "unlimited"
    return "%d MiB" % (v >> 20) if v >= 1 << 20 else "%d KiB" % (v >> 10)


# ---- the checks: each returns one check() ----

def check_privileges():
    caps = effective_caps()
    missing = [n for c, n in sorted(CAP_NAMES.items()) if not caps >> c & 1
               and not (c == CAP_BPF and caps >> CAP_SYS_ADMIN & 1)]
    if os.geteuid() != 0:
        return check("privileges", "fail", "not root (euid %d): 'shardsock up' needs root to create the device, "
                     "open its queues and load BPF programs" % os.geteuid(), AS_ROOT)
    if missing:
        return check("privileges", "fail", "root, but without %s (a container?)" % ", ".join(missing),
                     "run with those capabilities, e.g. docker run --cap-add NET_ADMIN --cap-add NET_RAW "
                     "--cap-add SYS_ADMIN --cap-add IPC_LOCK, or --privileged")
    return check("privileges", "ok", "root, with " + ", ".join(n for c, n in sorted(CAP_NAMES.items())
                                                              if caps >> c & 1))


def check_shardsockd():
    if os.access(DAEMON, os.X_OK):
        return check("shardsockd", "ok", DAEMON)
    return check("shardsockd", "fail", "%s is missing: every backend runs in it" % DAEMON,
                 "run 'make build' (or point SHARDSOCKD at the binary)")


def check_libraries():
    missing = []
    for soname, package in SHARED_LIBRARIES:
        try:
            ctypes.CDLL(soname)
        except OSError:
            missing.append((soname, package))
    names = ", ".join(s for s, _ in SHARED_LIBRARIES)
    if missing:
        return check("libraries", "fail", "shardsockd links %s; missing: %s" % (
            names, ", ".join(s for s, _ in missing)), "apt-get install " + " ".join(p for _, p in missing))
    return check("libraries", "ok", names + " (shardsockd links them)")


def check_cores(m):
    detail = "%d usable by this process (%s); online: %s; 'up' starts one instance per core" % (
        len(m["cores"]), ",".join(map(str, m["cores"])), m["online_cpus"])
    return check("cores", "ok", detail)


def check_nofile(m):
    soft, hard = m["rlimit_nofile"]["soft"], m["rlimit_nofile"]["hard"]
    detail = "RLIMIT_NOFILE soft %s, hard %s" % (fmt_limit(soft), fmt_limit(hard))
    if soft is None or soft >= NOFILE_RECOMMENDED:
        return check("nofile", "ok", detail)
    detail += ": below %d, a server under 'shardsock run' runs out of descriptors (each connection takes " \
              "one) sooner" % NOFILE_RECOMMENDED
    if hard is None or hard >= NOFILE_RECOMMENDED:
        fix = "ulimit -n %d in the shell that starts the server" % NOFILE_RECOMMENDED
    else:
        fix = ("raise the hard limit: LimitNOFILE=%d in the server's systemd unit, or '* - nofile %d' in "
               "/etc/security/limits.conf and log in again; then ulimit -n %d"
               % (NOFILE_RECOMMENDED, NOFILE_RECOMMENDED, NOFILE_RECOMMENDED))
    return check("nofile", "warn", detail, fix)


def check_memlock(m):
    soft, hard = m["rlimit_memlock"]["soft"], m["rlimit_memlock"]["hard"]
    need = UMEM_BYTES * len(m["cores"])
    detail = "RLIMIT_MEMLOCK soft %s, hard %s; afxdp locks %s (a %s UMEM per instance, %d instances)" % (
        fmt_bytes(soft), fmt_bytes(hard), fmt_bytes(need), fmt_bytes(UMEM_BYTES), len(m["cores"]))
    if soft is None or soft >= need:
        return check("memlock", "ok", detail)
    if has_cap(CAP_IPC_LOCK):
        return check("memlock", "ok", detail + "; CAP_IPC_LOCK lifts the limit")
    if os.geteuid() != 0:
        # The instances run as root ('up' insists), where the limit is
        # normally lifted: this user's limit says little about theirs.
        return check("memlock", "warn", detail + ": too little for this user, but the instances run as root, "
                     "whose CAP_IPC_LOCK normally lifts the limit; needs root to tell", AS_ROOT)
    return check("memlock", "fail", detail + ": registering the UMEM would fail (ENOBUFS)",
                 "ulimit -l unlimited before 'shardsock up' (or LimitMEMLOCK=infinity in its systemd unit), "
                 "or grant CAP_IPC_LOCK")


def check_hugepages(m):
    h = m["hugepages"]
    return check("hugepages", "ok", "%s of %s free, %s kB pages; shardsock does not use them (nothing to do)"
                 % (h["free"], h["total"], h["size_kb"]))


def machine_facts():
    """The numbers the checks judge, also for --json readers."""
    def limit(which):
        soft, hard = resource.getrlimit(which)
        return {"soft": None if soft == resource.RLIM_INFINITY else soft,
                "hard": None if hard == resource.RLIM_INFINITY else hard}

    meminfo = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            meminfo[key] = value.split()
    try:
        with open("/sys/devices/system/cpu/online") as f:
            online = f.read().strip()
    except OSError:
        online = None
    return {"kernel": platform.release(), "arch": platform.machine(), "euid": os.geteuid(),
            "cores": online_cores(), "online_cpus": online,
            "rlimit_nofile": limit(resource.RLIMIT_NOFILE), "rlimit_memlock": limit(resource.RLIMIT_MEMLOCK),
            "hugepages": {"total": int(meminfo.get("HugePages_Total", [0])[0]),
                          "free": int(meminfo.get("HugePages_Free", [0])[0]),
                          "size_kb": int(meminfo.get("Hugepagesize", [0])[0])}}


def check_tun():
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            return check("tun", "fail", "/dev/net/tun: %s (the tun driver is not loaded)" % e.strerror,
                         "modprobe tun (and if /dev/net/tun is still missing: mkdir -p /dev/net && "
                         "mknod /dev/net/tun c 10 200)")
        detail, fix = refused("open /dev/net/tun", e.errno, "chmod 0666 /dev/net/tun")
        return check("tun", "fail", detail, fix)
    return check("tun", "ok", "/dev/net/tun opens")


def check_tap(cores):
    """tap_multiqueue and tap_steering, from one throwaway device."""
    r = in_child(probe_tap)
    where = r.get("where", "a child process")
    failed = r.get("error") or r.get("open") or r.get("multiqueue")
    if failed:
        err, what = failed
        if err == errno.EINVAL:
            detail, fix = "%s: %s (the kernel's tun driver has no multi-queue support)" % (
                what, os.strerror(err)), "use a kernel with multi-queue tun (Linux 3.8 or newer)"
        else:
            detail, fix = refused(what, err, "see the tun check")
        mq = check("tap_multiqueue", "fail", detail + "; tried in " + where, fix)
        st = check("tap_steering", "fail", "not tried: no multi-queue tap device (see tap_multiqueue)", mq["fix"])
        return [mq, st]
    mq = check("tap_multiqueue", "ok", "created a multi-queue tap device and attached 2 queues, in %s; removed"
               % where)
    if r["steering"] is None:
        return [mq, check("tap_steering", "ok", "loaded a steering program and attached it (TUNSETSTEERINGEBPF)")]
    err, what = r["steering"]
    if what == "TUNSETSTEERINGEBPF" and err == errno.EINVAL:
        detail, fix = "%s: %s" % (what, os.strerror(err)), "use Linux 4.16 or newer"
    else:
        detail, fix = refused(what, err, "make sure the kernel has CONFIG_BPF_SYSCALL, and that nothing "
                              "(sysctl kernel.unprivileged_bpf_disabled applies to non-root only) blocks bpf(2)")
    # One instance needs no steering: the group still comes up.
    status = "fail" if len(cores) > 1 else "warn"
    return [mq, check("tap_steering", status, detail + ": instance 0 steers the other instances' flows to "
                      "them with it", fix)]


def check_io_uring():
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = f.read().strip()
    except FileNotFoundError:
        disabled = None          # before Linux 6.6: no such switch
    params = ctypes.create_string_buffer(120)   # struct io_uring_params, zeroed
    setting = "" if disabled is None else "; kernel.io_uring_disabled = %s" % disabled
    try:
        os.close(syscall(SYS_IO_URING_SETUP, ctypes.c_long(1), params))
    except OSError as e:
        fix = ("sysctl -w kernel.io_uring_disabled=0" if disabled in ("1", "2")
               else "use Linux 5.1 or newer, built with CONFIG_IO_URING, and no seccomp policy that blocks it")
        return check("io_uring", "warn", "io_uring_setup: %s%s: the tap backend then writes one frame per "
                     "system call (slower)" % (e.strerror, setting), fix)
    return check("io_uring", "ok", "io_uring_setup works%s (the tap backend batches transmits with it)" % setting)


def check_af_packet():
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
    except OSError as e:
        detail, fix = refused("socket(AF_PACKET)", e.errno, "grant CAP_NET_RAW, or run as root")
        return check("af_packet", "fail", detail, fix)
    with s:
        try:
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            # tpacket_req: block size, block count, frame size, frame count
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("IIII", 4096, 1, 2048, 2))
        except OSError as e:
            return check("af_packet", "fail", "TPACKET_V2 receive ring: %s" % e.strerror,
                         "the afpacket backend needs TPACKET_V2 rings (Linux 2.6.27 or newer): use a newer kernel")
    return check("af_packet", "ok", "socket(AF_PACKET) with a TPACKET_V2 ring works")


def check_af_xdp():
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as e:
        if e.errno == errno.EAFNOSUPPORT:
            return check("af_xdp", "fail", "socket(AF_XDP): %s: the kernel lacks AF_XDP" % e.strerror,
                         "use a kernel built with CONFIG_XDP_SOCKETS=y (Linux 4.18 or newer)")
        detail, fix = refused("socket(AF_XDP)", e.errno, "grant CAP_NET_RAW, or run as root")
        return check("af_xdp", "fail", detail, fix)
    return check("af_xdp", "ok", "socket(AF_XDP) works")


def check_bpf():
    try:
        os.close(bpf_load(BPF_PROG_TYPE_XDP, XDP_PASS))
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return check("bpf", "fail", "bpf(2): %s" % e.strerror, "use a kernel built with CONFIG_BPF_SYSCALL=y")
        if e.errno == errno.EINVAL:
            return check("bpf", "fail", "loading an XDP program: %s: the kernel lacks XDP" % e.strerror,
                         "use Linux 4.8 or newer built with CONFIG_XDP_SOCKETS=y")
        detail, fix = refused("loading an XDP program", e.errno, "grant CAP_BPF and CAP_NET_ADMIN, or run as root")
        return check("bpf", "fail", detail, fix)
    return check("bpf", "ok", "loaded an XDP program (afxdp loads its own redirect program)")


def check_xdp_program():
    path = os.environ.get("SHARDSOCK_XDP_OBJ") or os.path.join(os.path.dirname(DAEMON), "xdp_redirect.bpf.o")
    if os.access(path, os.R_OK):
        return check("xdp_program", "ok", path)
    return check("xdp_program", "fail", "%s is missing: afxdp attaches this program to the interface" % path,
                 "run 'make build' (or set SHARDSOCK_XDP_OBJ)")


def check_bpffs(cores):
    """afxdp's instance 0 pins the XSKMAP in /sys/fs/bpf for the others, and
    mounts a bpffs there itself when none is; so the question is whether
    one is mounted, or can be."""
    if fs_type("/sys/fs/bpf") == BPF_FS_MAGIC:
        return check("bpffs", "ok", "mounted at /sys/fs/bpf")
    r = in_child(probe_bpffs_mount)
    if r["error"] is None:
        return check("bpffs", "ok", "not mounted at /sys/fs/bpf, but mountable (tried in a private mount "
                     "namespace): afxdp mounts it when it runs more than one instance")
    err, what = r["error"]
    detail, fix = refused(what, err, "mount -t bpf bpf /sys/fs/bpf (if that fails, the kernel lacks "
                          "CONFIG_BPF_SYSCALL)")
    detail = "not mounted at /sys/fs/bpf; " + detail
    if len(cores) == 1:
        return check("bpffs", "warn", detail + " (one instance does not need it)", fix)
    return check("bpffs", "fail", detail + ": afxdp instances share their XSKMAP through it", fix)


# ---- --interface ----

def driver_name(name):
    """The driver's name, from the ethtool ioctl (ETHTOOL_GDRVINFO), or ""."""
    info = ctypes.create_string_buffer(struct.pack("I", ETHTOOL_GDRVINFO), 196)   # struct ethtool_drvinfo
    ifr = struct.pack("16sP", name.encode(), ctypes.addressof(info)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
        except OSError:
            return ""
    return info.raw[4:36].split(b"\0")[0].decode(errors="replace")


def xdp_features(index):
    """The interface's xdp-features bits from the netdev netlink family
    (Linux 6.3+), or None where the kernel has no such family."""
    from pyroute2.netlink import NLM_F_REQUEST, genlmsg
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket

    class netdevmsg(genlmsg):
        # include/uapi/linux/netdev.h
        nla_map = (("NETDEV_A_DEV_UNSPEC", "none"), ("NETDEV_A_DEV_IFINDEX", "uint32"),
                   ("NETDEV_A_DEV_PAD", "none"), ("NETDEV_A_DEV_XDP_FEATURES", "uint64"))

    msg = netdevmsg()
    msg["cmd"] = 1                   # NETDEV_CMD_DEV_GET
    msg["version"] = 1
    msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", index)]
    with GenericNetlinkSocket() as s:
        try:
            s.bind("netdev", netdevmsg)     # ENOENT before Linux 6.3
            for reply in s.nlm_request(msg, msg_type=s.prid, msg_flags=NLM_F_REQUEST):
                return reply.get_attr("NETDEV_A_DEV_XDP_FEATURES") or 0
        except NetlinkError:
            return None
    return None


def check_interface(name, cores):
    """interface, native_xdp, xdp_queues and xdp_attached for --interface."""
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        raise GroupError("interface %s does not exist: name an existing one with --interface (they are listed "
                         "in /sys/class/net)" % name)
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        link = ip.get_links(index)[0]
    out = []
    rxq = link.get_attr("IFLA_NUM_RX_QUEUES") or 1
    if link["flags"] & 1:    # IFF_UP
        out.append(check("interface", "ok", "%s (index %d) exists and is up" % (name, index)))
    else:
        out.append(check("interface", "warn", "%s (index %d) is down: nothing arrives on it" % (name, index),
                         "ip link set dev %s up" % name))

    drv = driver_name(name)
    driver = "driver " + drv if drv else "%s (no driver information)" % name
    feats = xdp_features(index)
    if feats is not None:
        if feats & NETDEV_XDP_ACT_BASIC:
            zc = "zero-copy" if feats & NETDEV_XDP_ACT_XSK_ZEROCOPY else "copy mode (no AF_XDP zero-copy)"
            out.append(check("native_xdp", "ok", "%s has native XDP (the kernel's xdp-features: 0x%x); "
                             "AF_XDP in %s" % (driver, feats, zc)))
        else:
            out.append(check("native_xdp", "fail", "%s has no native XDP (the kernel's xdp-features: "
                             "0x%x); afxdp attaches in native mode only" % (driver, feats),
                             "use afxdp on an interface whose driver has native XDP (e.g. veth, virtio_net, "
                             "mlx5_core, ice, i40e), or the afpacket backend here"))
    elif drv in NATIVE_XDP_DRIVERS:
        out.append(check("native_xdp", "ok", "%s is known to have native XDP (this kernel does not "
                         "report xdp-features; judged by the driver's name)" % driver))
    else:
        out.append(check("native_xdp", "warn", "%s is not known to have native XDP (this kernel does "
                         "not report xdp-features; judged by the driver's name)" % driver,
                         "try it: shardsock up --backend afxdp --interface %s (it says why if the driver "
                         "refuses), or use --backend afpacket" % name))

    if rxq >= len(cores):
        out.append(check("xdp_queues", "ok", "%d receive queues for %d instances" % (rxq, len(cores))))
    else:
        out.append(check("xdp_queues", "warn", "%d receive queue%s for %d instances: afxdp instance k binds "
                         "queue k" % (rxq, "" if rxq == 1 else "s", len(cores)),
                         "start at most %d instance%s (--cores %s), or give %s more queues (ethtool -L %s "
                         "combined %d; a veth pair: numrxqueues %d numtxqueues %d on both ends)" % (
                             rxq, "" if rxq == 1 else "s", ",".join(map(str, cores[:rxq])), name, name,
                             len(cores), len(cores), len(cores))))

    out.append(check_xdp_attached(name, link.get_attr("IFLA_XDP")))
    return out


def check_xdp_attached(name, xdp):
    """afxdp attaches its program in native mode: over a program attached
    natively through netlink it replaces it (breaking whatever used it),
    and it fails over a generic-mode program or a bpf_link.  Its own
    program, attached natively (a group up, or one killed), is no
    obstacle."""
    prog = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
    if not prog:
        return check("xdp_attached", "ok", "no XDP program attached")
    mode = xdp.get_attr("IFLA_XDP_ATTACHED")
    off = "if nothing needs it: ip link set dev %s %s off" % (name, "xdp" if mode == "xdp" else "xdpgeneric")
    try:
        owner = prog_name(prog) or "(no name)"
    except OSError as e:
        owner, why = None, refused("reading the attached XDP program's name", e.errno, "")
    what = "XDP program %s (id %d)" % (owner, prog) if owner else "XDP program id %d" % prog
    if mode != "xdp":
        return check("xdp_attached", "fail", "%s is attached in %s mode: afxdp attaches in native mode and fails "
                     "while it is there" % (what, mode), off)
    if owner is None:
        return check("xdp_attached", "warn", "%s is attached; whose is unknown: %s" % (what, why[0]), why[1])
    if owner == PROG_NAME:
        return check("xdp_attached", "ok", "shardsock's own %s is attached: a group is up on %s, or one was "
                     "killed (the next 'up' replaces it)" % (what, name))
    return check("xdp_attached", "warn", "%s is attached: afxdp would replace it, breaking what uses it" % what, off)


def prog_name(prog_id):
    """The name of the BPF program prog_id (needs CAP_SYS_ADMIN)."""
    attr = ctypes.create_string_buffer(struct.pack("=I", prog_id), 16)
    fd = syscall(SYS_BPF, ctypes.c_long(BPF_PROG_GET_FD_BY_ID), attr, ctypes.c_long(16))
    try:
        info = ctypes.create_string_buffer(BPF_PROG_INFO_LEN)
        attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, BPF_PROG_INFO_LEN, ctypes.addressof(info)), 16)
        syscall(SYS_BPF, ctypes.c_long(BPF_OBJ_GET_INFO_BY_FD), attr, ctypes.c_long(16))
    finally:
        os.close(fd)
    return info.raw[64:80].split(b"\0")[0].decode(errors="replace")   # struct bpf_prog_info .name


# ---- the verdict ----

def verdict(backend, checks, interface):
    """usable/why/fix of one backend from the checks it needs."""
    mine = [c for c in checks if c["name"] in NEEDS[backend]]
    failed = [c for c in mine if c["status"] == "fail"]
    warned = [c for c in mine if c["status"] == "warn"]
    if failed:
        # What only root can do or tell is said once.
        as_root = [c["name"] for c in failed if c["fix"] == AS_ROOT]
        why = ["needs root (%s)" % ", ".join(as_root)] if as_root else []
        why += ["%s: %s" % (c["name"], c["detail"]) for c in failed if c["fix"] != AS_ROOT]
        return {"usable": False, "why": "; ".join(why),
                "fix": "; ".join(dict.fromkeys(c["fix"] for c in failed if c["fix"]))}
    why = {"tap": "a multi-queue tap device, one queue per instance",
           "afpacket": "TPACKET_V2 rings on an interface the kernel holds no address of the stack on",
           "afxdp": "AF_XDP sockets on an interface whose driver has native XDP"}[backend]
    if backend != "tap" and interface is None:
        why += "; name the interface with --interface to check it"
    why += "".join("; %s: %s" % (c["name"], c["detail"]) for c in warned)
    return {"usable": True, "why": why, "fix": "; ".join(dict.fromkeys(c["fix"] for c in warned if c["fix"]))}


def diagnose(interface=None):
    """The report: the machine's numbers, every check, then the verdict per
    backend."""
    m = machine_facts()
    cores = m["cores"]
    checks = [check_privileges(), check_shardsockd(), check_libraries(), check_cores(m), check_nofile(m),
              check_memlock(m), check_hugepages(m), check_tun(), *check_tap(cores), check_io_uring(),
              check_af_packet(), check_af_xdp(), check_bpf(), check_xdp_program(), check_bpffs(cores)]
    if interface is not None:
        checks += check_interface(interface, cores)
    return {"machine": m, "interface": interface, "default_backend": DEFAULTS["backend"], "checks": checks,
            "backends": {b: verdict(b, checks, interface) for b in ("tap", "afpacket", "afxdp")}}


def print_report(report):
    m = report["machine"]
    print("shardsock doctor: Linux %s %s, euid %d%s" % (m["kernel"], m["arch"], m["euid"],
                                                         ", interface " + report["interface"]
                                                         if report["interface"] else ""))
    width = max(len("afpacket"), len(report["default_backend"] + " (default)"),
                *(len(c["name"]) for c in report["checks"]))
    print("%-*s  %-6s %s" % (width, "CHECK", "STATUS", "DETAIL"))
    for c in report["checks"]:
        print("%-*s  %-6s %s%s" % (width, c["name"], c["status"].upper(), c["detail"],
                                   "  -> fix: " + c["fix"] if c["fix"] else ""))
    print()
    print("%-*s  %-6s %s" % (width, "BACKEND", "USABLE", "WHY"))
    for name, b in report["backends"].items():
        print("%-*s  %-6s %s%s" % (width, name + (" (default)" if name == report["default_backend"] else ""),
                                   "yes" if b["usable"] else "NO", b["why"],
                                   "  -> fix: " + b["fix"] if b["fix"] else ""))


def main(args):
    report = diagnose(args.interface)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["backends"][report["default_backend"]]["usable"] else 1
