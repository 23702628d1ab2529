"""Instance groups: start one pinned ``shardsockd`` per core, wait until each
is ready, record the group, and stop it again leaving the machine as found.

State lives in the run directory (default /run/shardsock/<group>/):
``state.json`` (what ``up`` made: device, addresses, instances and pids),
``instance-K.sock`` (each instance's control socket) and ``instance-K.log``.
"""
import ipaddress
import json
import os
import select
import signal
import subprocess
import time
import zlib

from preload import netsetup
from preload.stats import create_fwd_region, fwd_path, page_path, read_page

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAEMON = os.environ.get("SHARDSOCKD", os.path.join(ROOT, "build", "shardsockd"))

DEFAULTS = {
    "group": "default",
    "backend": "tap",
    "interface": "ss0",
    "address": "198.18.0.2/24",
    "host_address": "198.18.0.1/24",
    "gateway": None,
    "cores": None,          # every online core
    "echo": None,
    "discard": None,
    "spin_us": 20,
    "run_dir": "/run/shardsock",
    "ready_timeout_s": 10,
}


class GroupError(Exception):
    """The operation failed; the message says what failed and what to do."""


def online_cores():
    return sorted(os.sched_getaffinity(0))


def parse_cores(text):
    """'0-3,6' -> [0, 1, 2, 3, 6]"""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def group_dir(cfg):
    return os.path.join(cfg["run_dir"], cfg["group"])


def state_path(cfg):
    return os.path.join(group_dir(cfg), "state.json")


def load_state(cfg):
    try:
        with open(state_path(cfg)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is not alive.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stack_mac(group):
    h = zlib.crc32(group.encode())
    return "02:53:53:%02x:%02x:%02x" % ((h >> 16) & 0xFF, (h >> 8) & 0xFF, h & 0xFF)


def up(cfg):
    """Creates the device, starts the instances and waits for them."""
    if cfg["backend"] not in ("tap", "afpacket", "afxdp"):
        raise GroupError("backend %r is not available in this build: use --backend tap, afpacket or afxdp"
                         % cfg["backend"])
    if not os.path.exists(DAEMON):
        raise GroupError("%s is missing: run 'make build'" % DAEMON)
    old = load_state(cfg)
    if old and any(pid_alive(i["pid"]) for i in old["instances"]):
        raise GroupError("group %r is already up; 'shardsock down' first" % cfg["group"])
    cores = parse_cores(cfg["cores"]) if cfg["cores"] is not None else online_cores()
    bad = [c for c in cores if c not in online_cores()]
    if not cores or bad:
        raise GroupError("cores %s are not online here (online: %s)" % (bad or cores, online_cores()))
    tap = cfg["backend"] == "tap"
    stack = ipaddress.ip_interface(cfg["address"])
    host = ipaddress.ip_interface(cfg["host_address"]) if tap else None
    if tap and (stack.network != host.network or stack.ip == host.ip):
        raise GroupError("address %s and host_address %s must be two addresses of one subnet"
                         % (cfg["address"], cfg["host_address"]))
    if os.geteuid() != 0:
        raise GroupError("opening device queues and pinning instances needs root; run as root")
    if not tap and netsetup.link_index(cfg["interface"]) is None:
        raise GroupError("interface %s does not exist; the %s backend runs on an existing interface "
                         "(name it with --interface)" % (cfg["interface"], cfg["backend"]))
    os.makedirs(group_dir(cfg), mode=0o750, exist_ok=True)
    if tap:
        netsetup.create_tap(cfg["interface"])
    state = {"group": cfg["group"], "backend": cfg["backend"], "interface": cfg["interface"],
             "created_interface": tap, "address": str(stack), "host_address": str(host) if tap else None,
             "mac": stack_mac(cfg["group"]), "run_dir": cfg["run_dir"], "instances": [],
             "started": time.time()}
    procs = []
    doorbells = []
    try:
        if len(cores) > 1:
            # frames one instance receives for another's flow go there
            # (core/daemon/fwd.c); each instance sleeps on its own doorbell
            create_fwd_region(cfg["group"], len(cores))
            doorbells = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in cores]
        peer = []
        if tap:
            host_mac = netsetup.configure_host_side(cfg["interface"], str(host.ip), host.network.prefixlen)
            peer = ["--peer", str(host.ip), "--peer-mac", host_mac]
        deadline = time.monotonic() + cfg["ready_timeout_s"]

        def wait_ready(k, core, r):
            left = max(0.0, deadline - time.monotonic())
            ready = select.select([r], [], [], left)[0] and os.read(r, 16) == b"ready\n"
            os.close(r)
            if not ready:
                with open(os.path.join(group_dir(cfg), "instance-%d.log" % k)) as f:
                    why = f.read().strip() or "no answer within %ss" % cfg["ready_timeout_s"]
                raise GroupError("instance %d (core %d) did not become ready: %s" % (k, core, why))

        # A fanout group numbers its members in the order they join, and the
        # steering rule names instances by number: afpacket instances start
        # one after another.  The others start together.
        in_order = cfg["backend"] == "afpacket"
        for k, core in enumerate(cores):
            args = [DAEMON, "--group", cfg["group"], "--instance", str(k), "--instances", str(len(cores)),
                    "--core", str(core), "--backend", cfg["backend"], "--interface", cfg["interface"],
                    "--address", str(stack.ip), "--netmask", str(stack.network.netmask), "--mac", state["mac"],
                    *peer, "--spin-us", str(cfg["spin_us"]),
                    "--run-dir", group_dir(cfg)]
            if cfg["gateway"]:
                args += ["--gateway", cfg["gateway"]]
            if cfg["echo"]:
                args += ["--echo", str(cfg["echo"])]
            if cfg["discard"]:
                args += ["--discard", str(cfg["discard"])]
            if doorbells:
                args += ["--doorbells", ",".join(map(str, doorbells))]
            r, w = os.pipe()
            log = open(os.path.join(group_dir(cfg), "instance-%d.log" % k), "w")
            p = subprocess.Popen(args + ["--ready-fd", str(w)], pass_fds=(w, *doorbells), stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, start_new_session=True)
            os.close(w)
            log.close()
            procs.append((k, core, p, r))
            if in_order:
                wait_ready(k, core, r)
        for k, core, p, r in procs:
            if not in_order:
                wait_ready(k, core, r)
            state["instances"].append({"instance": k, "core": core, "pid": p.pid})
    except BaseException:
        for _, _, p, _ in procs:
            p.kill()
            p.wait()
        if tap:
            netsetup.delete_link(cfg["interface"])
        remove_files(cfg, len(procs))
        raise
    finally:
        for fd in doorbells:
            os.close(fd)
    with open(state_path(cfg), "w") as f:
        json.dump(state, f, indent=2)
    return state


LIBRARY = os.environ.get("SHARDSOCK_LIBRARY", os.path.join(ROOT, "build", "libshardsock.so"))


def run_env(cfg, instance=None, verbose=False, pin=True):
    """The environment of a program run under the library: preloaded, and
    pointed at the group's run directory.  Each process is placed on the
    next instance and its core (instance None), or attached to the given
    instance; pin False leaves placement to the program (the instance of
    the core a process runs on).  A group that is not up is no error: the
    program runs on the kernel (the library says so when verbose)."""
    if not os.path.exists(LIBRARY):
        raise GroupError("%s is missing: run 'make build'" % LIBRARY)
    env = dict(os.environ)
    pre = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != LIBRARY]
    env["LD_PRELOAD"] = " ".join([LIBRARY] + pre)
    env["SHARDSOCK_RUN_DIR"] = group_dir(cfg)
    env.pop("SHARDSOCK_INSTANCE", None)
    env.pop("SHARDSOCK_PIN", None)
    if instance is not None:
        env["SHARDSOCK_INSTANCE"] = str(instance)
    if not pin:
        env["SHARDSOCK_PIN"] = "0"
    if verbose:
        env["SHARDSOCK_VERBOSE"] = "1"
    return env


def remove_files(cfg, n):
    for k in range(n):
        for path in (page_path(cfg["group"], k), os.path.join(group_dir(cfg), "instance-%d.sock" % k)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    for path in ("/dev/shm/shardsock-%s-neigh" % cfg["group"], fwd_path(cfg["group"])):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def down(cfg, timeout_s=5.0):
    """Stops every instance (SIGTERM, then SIGKILL after timeout_s) and
    removes what ``up`` created.  Returns the state that was taken down."""
    state = load_state(cfg)
    if state is None:
        raise GroupError("group %r is not up (no %s)" % (cfg["group"], state_path(cfg)))
    pids = [i["pid"] for i in state["instances"]]
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    if state.get("created_interface"):
        netsetup.delete_link(state["interface"])
    remove_files(cfg, len(state["instances"]))
    for name in os.listdir(group_dir(cfg)):
        os.unlink(os.path.join(group_dir(cfg), name))
    os.rmdir(group_dir(cfg))
    return state


def status(cfg):
    """Every instance: core, pid, backend, queue, uptime, state, healthy."""
    state = load_state(cfg)
    if state is None:
        raise GroupError("group %r is not up" % cfg["group"])
    out = []
    now_us = time.time() * 1e6
    for inst in state["instances"]:
        page = read_page(cfg["group"], inst["instance"])
        alive = pid_alive(inst["pid"])
        out.append({
            "instance": inst["instance"], "core": inst["core"], "pid": inst["pid"],
            "backend": state["backend"], "interface": state["interface"], "queue": inst["instance"],
            "state": page["state"] if page and alive else "dead",
            "uptime_s": round((now_us - page["started_unix_us"]) / 1e6, 1) if page else None,
            "healthy": bool(alive and page and page["state"] == "ready"),
        })
    return {"group": cfg["group"], "address": state["address"], "host_address": state["host_address"],
            "instances": out}


def stat(cfg):
    state = load_state(cfg)
    if state is None:
        raise GroupError("group %r is not up" % cfg["group"])
    out = []
    for inst in state["instances"]:
        page = read_page(cfg["group"], inst["instance"])
        out.append({"instance": inst["instance"], "core": inst["core"],
                    "counters": page["counters"] if page else None})
    return {"instances": out}
