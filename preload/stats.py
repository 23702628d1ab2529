"""Instance stats pages, read straight from shared memory through cffi
(``struct ss_instance_stats`` in core/include/shardsock/stats.h): no
request to the instance.

    >>> from preload.stats import read_page
    >>> read_page("default", 0)["counters"]["eth_rx_frames"]
    1234
"""
import mmap
import os

from preload.engine import ffi, lib, read_counters

STATE_NAMES = {lib.SS_INSTANCE_STARTING: "starting", lib.SS_INSTANCE_READY: "ready",
               lib.SS_INSTANCE_STOPPING: "stopping", lib.SS_INSTANCE_STOPPED: "stopped"}


def page_path(group, instance):
    return "/dev/shm/shardsock-%s-%d" % (group, instance)


def read_page(group, instance):
    """The instance's page as a dict, or None when it has none (not
    running, or not yet initialised)."""
    path = page_path(group, instance)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = ffi.sizeof("struct ss_instance_stats")
        if os.fstat(fd).st_size < size:
            return None
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mm:
            p = ffi.cast("struct ss_instance_stats *", ffi.from_buffer(mm))
            if p.magic != lib.SS_STATS_MAGIC or p.version != lib.SS_STATS_VERSION or p.size != size:
                return None
            page = {
                "instance": p.instance, "ninstances": p.ninstances, "core": p.core, "pid": p.pid,
                "state": STATE_NAMES.get(p.state, "unknown"), "started_unix_us": p.started_unix_us,
                "heartbeat_us": p.heartbeat_us, "loops": p.loops, "sleeps": p.sleeps,
                "busy_loops": p.busy_loops, "backend": ffi.string(p.backend).decode(),
                "device": ffi.string(p.device).decode(), "queue": p.queue,
                "counters": read_counters(ffi.addressof(p.counters)),
            }
            del p
            return page
    finally:
        os.close(fd)


def fwd_path(group):
    return "/dev/shm/shardsock-%s-fwd" % group


def create_fwd_region(group, ninstances):
    """Creates the group's forwarding region (``struct ss_fwd_region``: the
    flow directory and the rings between instances) before the instances
    start, with fresh secrets for the directory's hash and the instances' ISNs
    and SYN cookies.  The file is sized
    for the rings but tmpfs allocates only the pages that are touched."""
    size = ffi.sizeof("struct ss_fwd_region") + ninstances * ninstances * ffi.sizeof("struct ss_fwd_ring")
    fd = os.open(fwd_path(group), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, ffi.sizeof("struct ss_fwd_region")) as mm:
            p = ffi.cast("struct ss_fwd_region *", ffi.from_buffer(mm))
            p.version = lib.SS_FWD_VERSION
            p.ninstances = ninstances
            p.secret = list(int.from_bytes(os.urandom(8), "little") for _ in range(2))
            p.engine_key = list(int.from_bytes(os.urandom(8), "little") for _ in range(2))
            p.magic = lib.SS_FWD_MAGIC  # last: instances check it
            del p
    finally:
        os.close(fd)
