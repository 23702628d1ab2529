"""Instance groups: start one pinned ``shardsockd`` per core, wait until each
is ready, record the group, and stop it again leaving the machine as found.

State lives in the run directory (default /run/shardsock/<group>/):
``state.json`` (what ``up`` made: device, addresses, instances and pids),
``instance-K.sock`` (each instance's control socket) and ``instance-K.log``.
"""
import collections
import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
import time
import zlib

from preload import netsetup
from preload.config import DEFAULTS  # the keys and their defaults: preload/config.py
from preload.stats import create_fwd_region, fwd_path, page_path, read_page
from preload.supervisor import STOP_TIMEOUT_S, StartError, Supervisor, write_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAEMON = os.environ.get("SHARDSOCKD", os.path.join(ROOT, "build", "shardsockd"))

class GroupError(Exception):
    """The operation failed; the message says what failed and what to do."""


def online_cores():
    return sorted(os.sched_getaffinity(0))


MAX_CPU = 8192  # the kernel's largest NR_CPUS


def parse_cores(text):
    """'0-3,6' -> [0, 1, 2, 3, 6] (repeats kept: up refuses them); ValueError
    for what is not a CPU list, or names a CPU past MAX_CPU."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            a, b = int(a), int(b)
            if a > b:
                raise ValueError("range %d-%d runs backwards" % (a, b))
        elif part:
            a = b = int(part)
        else:
            continue
        if a < 0 or b >= MAX_CPU:
            raise ValueError("CPU numbers run from 0 to %d" % (MAX_CPU - 1))
        out.extend(range(a, b + 1))
    return out


def cpu_list(cores, limit=60):
    """[0, 1, 2, 3, 6] -> '0-3,6', cut short past limit characters."""
    parts, cs = [], sorted(set(cores))
    i = 0
    while i < len(cs):
        j = i
        while j + 1 < len(cs) and cs[j + 1] == cs[j] + 1:
            j += 1
        parts.append(str(cs[i]) if i == j else "%d-%d" % (cs[i], cs[j]))
        i = j + 1
    text = ",".join(parts)
    return text if len(text) <= limit else text[:limit].rsplit(",", 1)[0] + ",..."


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


def up(cfg, foreground=False, on_ready=None):
    """Creates the device, starts the supervisor, which starts the
    instances, and waits for them.  foreground: supervises in this process
    until SIGTERM, then takes the group down (on_ready(state) first)."""
    if cfg["backend"] not in ("tap", "afpacket", "afxdp"):
        raise GroupError("backend %r is not available in this build: use --backend tap, afpacket or afxdp"
                         % cfg["backend"])
    if not os.path.exists(DAEMON):
        raise GroupError("%s is missing: run 'make build'" % DAEMON)
    old = load_state(cfg)
    if old and group_alive(old):
        raise GroupError("group %r is already up; 'shardsock down' first" % cfg["group"])
    if old:
        raise GroupError("group %r was not taken down: its instances are gone (a crash, or kill -9) but %s%s "
                         "remain; run 'shardsock down%s' to remove them, then up again"
                         % (cfg["group"], state_path(cfg), " and device %s" % old["interface"]
                            if old.get("created_interface") else "", group_flag(cfg)))
    tap = cfg["backend"] == "tap"
    cores = check_cores(cfg)
    stack, host = check_addresses(cfg, tap)
    if os.geteuid() != 0:
        raise GroupError("opening device queues and pinning instances needs root; run as root")
    if not tap and netsetup.link_index(cfg["interface"]) is None:
        raise GroupError("interface %s does not exist; the %s backend runs on an existing interface "
                         "(name it with --interface)" % (cfg["interface"], cfg["backend"]))
    if tap and netsetup.link_index(cfg["interface"]) is not None:
        owner = [(name, st) for name, st in groups_here(cfg) if st.get("interface") == cfg["interface"]]
        if owner and group_alive(owner[0][1]):
            raise GroupError("interface %s is group %s's; choose another --interface" % (cfg["interface"],
                                                                                       owner[0][0]))
        if owner:
            raise GroupError("interface %s already exists: group %s made it and was not taken down (a crash?); "
                             "run 'shardsock down%s' to remove it, or choose another --interface"
                             % (cfg["interface"], owner[0][0], group_flag(dict(cfg, group=owner[0][0]))))
        raise GroupError("interface %s already exists; if a shardsock group crashed and left it, 'shardsock "
                         "down' removes it (or: ip link del %s); else choose another --interface"
                         % (cfg["interface"], cfg["interface"]))
    check_kernel(cfg, stack, host, tap)
    state = {"group": cfg["group"], "backend": cfg["backend"], "interface": cfg["interface"],
             "created_interface": tap, "address": str(stack), "host_address": str(host) if tap else None,
             "mac": stack_mac(cfg["group"]), "run_dir": cfg["run_dir"], "config": cfg, "supervisor_pid": None,
             "netns": netns_id(),
             "instances": [{"instance": k, "core": core, "pid": None, "state": "starting", "restarts": 0}
                           for k, core in enumerate(cores)],
             "started": time.time()}
    try:
        os.makedirs(group_dir(cfg), mode=0o750, exist_ok=True)
        gid = read_gid(cfg)
        if gid is not None:
            # status, stat and top for its members: the directory is theirs to read
            os.chown(group_dir(cfg), 0, gid)
        if tap:
            netsetup.create_tap(cfg["interface"])
        if len(cores) > 1:
            # frames one instance receives for another's flow go there
            # (core/daemon/fwd.c)
            create_fwd_region(cfg["group"], len(cores))
        if tap:
            state["peer_mac"] = netsetup.configure_host_side(cfg["interface"], str(host.ip), host.network.prefixlen)
        write_state(cfg, state)
        if foreground:
            sup = Supervisor(cfg, state, lambda k, core: instance_argv(cfg, state, k, core))
            try:
                sup.start_all()
            except StartError as e:
                raise GroupError(str(e))
            state["supervisor_pid"] = os.getpid()
            write_state(cfg, state)
        else:
            start_supervisor(cfg)
            state = load_state(cfg)
    except BaseException:
        teardown(cfg, state)
        raise
    if foreground:
        if on_ready:
            on_ready(state)
        # systemd (Type=notify): started once every instance is ready
        sd_notify("READY=1\nSTATUS=group %s up: %d instances\nMAINPID=%d"
                  % (cfg["group"], len(state["instances"]), os.getpid()))
        try:
            sup.loop()
        finally:
            sd_notify("STOPPING=1\nSTATUS=group %s going down" % cfg["group"])
            teardown(cfg, state)
    return state


def sd_notify(text):
    """A message to systemd's $NOTIFY_SOCKET (sd_notify(3)), when there is
    one; its absence, or a socket gone, is no error."""
    import socket
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(text.encode())
        return True
    except OSError:
        return False


def read_gid(cfg):
    """The gid of read_group (config), None when there is no such group."""
    import grp
    v = cfg.get("read_group")
    if v is None:
        return None
    if isinstance(v, int) or str(v).isdigit():
        return int(v)
    try:
        return grp.getgrnam(v).gr_gid
    except KeyError:
        return None


def may_ask(cfg, k):
    """Whether this user may ask instance k what it reads (netstat, procs)
    over its control socket: the instances answer root, their own user, and
    the members of the read group, which owns the socket file."""
    try:
        st = os.stat(os.path.join(group_dir(cfg), "instance-%d.sock" % k))
    except OSError:
        return False
    return os.geteuid() in (0, st.st_uid) or st.st_gid in os.getgroups() or st.st_gid == os.getegid()


def read_hint(cfg):
    """What a user refused a read-only command does about it: join the
    group the group's directory belongs to (read_group when up ran), or
    the one read_group names now."""
    import grp
    try:
        gid = os.stat(group_dir(cfg)).st_gid if cfg.get("group") else 0
    except OSError:
        gid = 0
    if gid:
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = str(gid)
        return "status, stat, top and netstat need root, or membership of the group %s (gid %d): usermod -aG %s " \
            "$USER" % (name, gid, name)
    v = str(cfg.get("read_group") or "shardsock")
    return ("status, stat, top and netstat need root, or membership of the group %s (read_group): groupadd --system %s, "
            "usermod -aG %s $USER, then 'shardsock restart' gives it the group's files" % (v, v, v))


def group_flag(cfg):
    """The --group/--run-dir a command for this group needs ('' for the defaults)."""
    from preload.config import DEFAULTS
    out = "" if cfg["group"] == DEFAULTS["group"] else " --group %s" % cfg["group"]
    return out + ("" if cfg["run_dir"] == DEFAULTS["run_dir"] else " --run-dir %s" % cfg["run_dir"])


def netns_id():
    """This process's network namespace (its inode): groups in other
    namespaces may use the same addresses."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None


def check_cores(cfg):
    """The cores up starts instances on: online, each once."""
    cores = parse_cores(cfg["cores"]) if cfg["cores"] is not None else online_cores()
    if not cores:
        raise GroupError("--cores names no core; online here: %s" % cpu_list(online_cores()))
    twice = sorted(c for c, n in collections.Counter(cores).items() if n > 1)
    if twice:
        raise GroupError("--cores names core %s more than once; one instance per core (online here: %s)"
                         % (cpu_list(twice), cpu_list(online_cores())))
    bad = sorted(set(cores) - set(online_cores()))
    if bad:
        raise GroupError("core%s %s %s not online here; online: %s" % (
            "s" if len(bad) > 1 else "", cpu_list(bad), "are" if len(bad) > 1 else "is", cpu_list(online_cores())))
    return cores


def not_a_host_address(ip, net):
    """Why ip cannot be a host's address on net (None: it can)."""
    if ip.version != 4:
        return "is not an IPv4 address (the stack speaks IPv4)"
    if ip in ipaddress.ip_network("0.0.0.0/8"):
        return "is in 0.0.0.0/8 ('this network'), no host's address"
    if ip.is_loopback:
        return "is a loopback address (127.0.0.0/8)"
    if ip.is_multicast:
        return "is a multicast address"
    if ip in ipaddress.ip_network("240.0.0.0/4"):
        return "is reserved (240.0.0.0/4) or the broadcast address"
    if net.prefixlen < 31 and ip == net.network_address:
        return "is the network address of %s" % net
    if net.prefixlen < 31 and ip == net.broadcast_address:
        return "is the broadcast address of %s" % net
    return None


def check_addresses(cfg, tap):
    """The stack's and the host side's addresses and the gateway: host
    addresses of one subnet.  Returns (stack, host) as ip_interface."""
    stack = ipaddress.ip_interface(cfg["address"])
    host = ipaddress.ip_interface(cfg["host_address"]) if tap else None
    for what, flag, a in (("the stack's address", "--address", stack), ("host_address", "--host-address", host)):
        why = a is not None and not_a_host_address(a.ip, a.network)
        if why:
            raise GroupError("%s %s %s; give %s a unicast host address, such as the default %s"
                             % (what, a, why, flag, DEFAULTS[flag[2:].replace("-", "_")]))
    if tap and (stack.network != host.network or stack.ip == host.ip):
        raise GroupError("address %s and host_address %s must be two addresses of one subnet"
                         % (cfg["address"], cfg["host_address"]))
    if cfg["gateway"]:
        gw = ipaddress.ip_address(cfg["gateway"])
        why = not_a_host_address(gw, stack.network)
        if why:
            raise GroupError("gateway %s %s; the gateway is a host on the stack's subnet" % (gw, why))
        if gw not in stack.network:
            raise GroupError("gateway %s is outside the stack's subnet %s: the stack reaches a gateway directly; "
                             "give one in %s" % (gw, stack.network, stack.network))
        if gw == stack.ip:
            raise GroupError("gateway %s is the stack's own address; give another host of %s"
                             % (gw, stack.network))
    return stack, host


def check_kernel(cfg, stack, host, tap):
    """What the kernel and the other groups of this namespace hold already:
    the stack's address (the kernel would answer its traffic: curl would
    reach the kernel, not the stack), the host side's address, the subnet
    (routed elsewhere, two routes), another group's subnet."""
    for ifname, addr, plen in netsetup.kernel_addresses():
        if addr == str(stack.ip):
            raise GroupError("the kernel holds the stack's address on %s (%s/%d): it would answer the stack's "
                             "traffic. Give the stack another --address, or remove it (ip addr del %s/%d dev %s)"
                             % (ifname, addr, plen, addr, plen, ifname))
        if host is not None and addr == str(host.ip):
            raise GroupError("the kernel holds host_address on %s (%s/%d) already; give --host-address another "
                             "address of %s, or remove it (ip addr del %s/%d dev %s)"
                             % (ifname, addr, plen, host.network, addr, plen, ifname))
    for name, other in groups_here(cfg):
        try:
            net = ipaddress.ip_interface(other["address"]).network
        except (ValueError, TypeError, KeyError):
            continue
        if not net.overlaps(stack.network):
            continue
        alive = group_alive(other)
        raise GroupError("group %s %s the subnet %s (stack %s); give this group another subnet (--address, "
                         "--host-address)%s" % (name, "uses" if alive else "crashed and still holds", net,
                                                other["address"], "" if alive else ", or run 'shardsock down%s'"
                                                % group_flag(dict(cfg, group=name))))
    if tap:
        for ifname, dst in netsetup.kernel_routes():
            if ipaddress.ip_network(dst).overlaps(stack.network):
                raise GroupError("the subnet %s is routed on %s already (route %s): a second route would split "
                                 "its traffic. Give the stack another subnet (--address, --host-address), or "
                                 "remove the route" % (stack.network, ifname, dst))


def group_alive(state):
    """Whether any process of the group (supervisor, instance) runs."""
    pids = [i.get("pid") for i in state.get("instances", [])] + [state.get("supervisor_pid")]
    return any(pid_alive(p) for p in pids if p)


def groups_here(cfg):
    """[(name, state)] of the other groups of the run directory in this
    network namespace (up, or left by a crash)."""
    here = netns_id()
    try:
        names = sorted(os.listdir(cfg["run_dir"]))
    except OSError:
        return []
    out = []
    for name in names:
        if name == cfg["group"]:
            continue
        try:
            st = load_state(dict(cfg, group=name))
        except (OSError, ValueError):
            continue  # not a group's directory
        if isinstance(st, dict) and st.get("netns") == here:
            out.append((name, st))
    return out


def instance_argv(cfg, state, k, core):
    """Instance k's command line (the supervisor adds --doorbells and --ready-fd)."""
    stack = ipaddress.ip_interface(state["address"])
    args = [DAEMON, "--group", cfg["group"], "--instance", str(k), "--instances", str(len(state["instances"])),
            "--core", str(core), "--backend", cfg["backend"], "--interface", cfg["interface"],
            "--address", str(stack.ip), "--netmask", str(stack.network.netmask), "--mac", state["mac"],
            "--spin-us", str(cfg["spin_us"]), "--run-dir", group_dir(cfg)]
    if state.get("peer_mac"):
        args += ["--peer", str(ipaddress.ip_interface(state["host_address"]).ip), "--peer-mac", state["peer_mac"]]
    if cfg["gateway"]:
        args += ["--gateway", cfg["gateway"]]
    if cfg["echo"]:
        args += ["--echo", str(cfg["echo"])]
    if cfg["discard"]:
        args += ["--discard", str(cfg["discard"])]
    gid = read_gid(cfg)
    if gid is not None:
        args += ["--read-gid", str(gid)]
    return args


def load_config_of_state(state):
    return state["config"]


def start_supervisor(cfg):
    """The background supervisor (preload/supervisor.py) starts the
    instances; it answers on a pipe once they are ready, or why not."""
    r, w = os.pipe()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    with open(os.path.join(group_dir(cfg), "supervisor.log"), "a") as logf:
        p = subprocess.Popen([sys.executable, "-m", "preload.supervisor", state_path(cfg), str(w)], pass_fds=(w,),
                             stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, env=env)
    os.close(w)
    answer = b""
    deadline = time.monotonic() + cfg["ready_timeout_s"] + 10
    try:
        while not answer.endswith(b"\n") and time.monotonic() < deadline:
            if not select.select([r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            chunk = os.read(r, 4096)
            if not chunk:
                break
            answer += chunk
    finally:
        os.close(r)
    if answer != b"ready\n":
        if p.poll() is None:
            p.kill()
        p.wait()
        why = answer.decode(errors="replace").strip().removeprefix("error: ")
        if not why:
            with open(os.path.join(group_dir(cfg), "supervisor.log"), errors="replace") as f:
                tail = f.read().strip().splitlines()[-5:]
            why = "the supervisor did not start the instances: %s" % (" / ".join(tail) or "it said nothing")
        raise GroupError(why)
    # it stays, the instances' parent; it is not ours to wait for
    p.returncode = 0


def serving(cfg, instance=None):
    """Whether a program run now would be served by the group: (number of
    instances, None) or (number or 0, why it would run on the kernel).  Asks
    the instance the library would ask first (instance, else 0) for a ping,
    as the library does: the control socket answers only root and the
    instances' own user."""
    import socket
    where = "%s (%s)" % (cfg["group"], group_dir(cfg))
    try:
        state = load_state(cfg)
    except PermissionError:
        return 0, ("you (uid %d) may not read group %s's files; run as root"
                   % (os.geteuid(), where))
    except (OSError, ValueError) as e:
        return 0, "group %s has no readable state (%s)" % (where, e)
    if state is None:
        return 0, "group %s is not up; start it with 'shardsock up%s'" % (where, group_flag(cfg))
    n = len(state["instances"])
    k = instance if instance is not None and 0 <= instance < n else 0
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        c.settimeout(2.0)
        c.connect(os.path.join(group_dir(cfg), "instance-%d.sock" % k))
        c.send(b"ping")
        answer = c.recv(256)
    except PermissionError:
        return n, "the control socket of instance %d refuses you (uid %d); run as root" % (k, os.geteuid())
    except (BrokenPipeError, ConnectionResetError):
        answer = b""  # accepted, then closed: the instance's check of the peer's user
    except OSError as e:
        return n, "instance %d of group %s does not answer (%s); see 'shardsock status%s'" % (
            k, cfg["group"], e.strerror or e, group_flag(cfg))
    finally:
        c.close()
    if answer.startswith(b"readonly"):
        return n, ("instance %d reads to you (uid %d) but does not serve you: the instances serve only root's "
                   "programs and their own user's; run as root" % (k, os.geteuid()))
    if not answer.startswith(b"pong"):
        return n, ("instance %d refuses you (uid %d): the instances serve only root's programs and their own "
                   "user's; run as root" % (k, os.geteuid()))
    return n, None


LIBRARY = os.environ.get("SHARDSOCK_LIBRARY", os.path.join(ROOT, "build", "libshardsock.so"))


def run_env(cfg, instance=None, verbose=False, force=False, source=None, environ=None):
    """(environment, banner) of a program run under the library: preloaded,
    pointed at the group's run directory, with the library's settings
    (shim/shim.c SS_SETTINGS) the configuration asks for.  A variable the
    user set already is kept (it is their choice) unless force; when the
    command line asked for another value, that is an error.  A group that
    is not up is no error: the program runs on the kernel (the library says
    so when verbose).  The banner names the settings that are not the
    defaults."""
    from preload.config import PROFILES
    if not os.path.exists(LIBRARY):
        raise GroupError("%s is missing: run 'make build'" % LIBRARY)
    env = dict(os.environ if environ is None else environ)
    source = source or {}
    pre = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != LIBRARY]
    env["LD_PRELOAD"] = " ".join([LIBRARY] + pre)
    want = {"SHARDSOCK_RUN_DIR": (group_dir(cfg), ("group", "run_dir"))}
    if instance is not None:
        want["SHARDSOCK_INSTANCE"] = (str(instance), ("instance",))
    if not cfg["pin"]:
        want["SHARDSOCK_PIN"] = ("0", ("pin",))
    if not cfg["loopback"]:
        want["SHARDSOCK_LOOPBACK"] = ("0", ("loopback",))
    if verbose:
        want["SHARDSOCK_VERBOSE"] = ("1", ("verbose",))
    for var, value in PROFILES.get(cfg["profile"] or "throughput").items():
        want[var] = (value, ("profile",))
    kept = []
    for var, (value, keys) in want.items():
        mine = env.get(var)
        if mine is not None and mine != value and not force:
            # --instance and --verbose exist only on the command line
            if var in ("SHARDSOCK_INSTANCE", "SHARDSOCK_VERBOSE") or any(
                    source.get(k) == "command line" for k in keys):
                raise GroupError("%s=%s is set in your environment and the command line asks for %s; unset it, "
                                 "or add --force to override it" % (var, mine, value))
            kept.append("%s=%s" % (var, mine))
            continue
        env[var] = value
    notes = ["group %s (%s)" % (cfg["group"], group_dir(cfg))]
    if cfg["profile"]:
        notes.append("profile %s (%s)" % (cfg["profile"], ", ".join("%s=%s" % kv for kv in
                                                                      PROFILES[cfg["profile"]].items())))
    if instance is not None:
        notes.append("every process on instance %d" % instance)
    if not cfg["pin"]:
        notes.append("no pinning (the instance of the core each process runs on)")
    if not cfg["loopback"]:
        notes.append("127/8 on the kernel")
    if kept:
        notes.append("kept from your environment: " + " ".join(kept))
    return env, "shardsock run: " + ", ".join(notes)


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


def teardown(cfg, state):
    """Removes what up made (device, shared memory, run files); what is
    gone already is no error (a foreground supervisor and down both call it)."""
    if state.get("created_interface"):
        netsetup.delete_link(state["interface"])
    remove_files(cfg, len(state["instances"]))
    try:
        for name in os.listdir(group_dir(cfg)):
            os.unlink(os.path.join(group_dir(cfg), name))
        os.rmdir(group_dir(cfg))
    except FileNotFoundError:
        pass


def down(cfg, timeout_s=STOP_TIMEOUT_S):
    """Stops the supervisor, which stops the instances (SIGTERM, then
    SIGKILL), makes sure none is left, and removes what ``up`` created.
    Returns the state that was taken down."""
    state = load_state(cfg)
    if state is None:
        raise GroupError("group %r is not up (no %s)" % (cfg["group"], state_path(cfg)))
    sup = state.get("supervisor_pid")
    if sup and pid_alive(sup):
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s + 5
        while pid_alive(sup) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(sup):
            os.kill(sup, signal.SIGKILL)
    state = load_state(cfg) or state  # the supervisor's last word on the pids
    pids = [i["pid"] for i in state["instances"] if i.get("pid")]
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    teardown(cfg, state)
    return state


def control(cfg, k, request, timeout_s=2.0):
    """One request on instance k's control socket: its answer, as text
    (None when the instance does not answer)."""
    import socket
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        c.settimeout(timeout_s)
        c.connect(os.path.join(group_dir(cfg), "instance-%d.sock" % k))
        c.send(request.encode())
        out = []
        while True:
            m = c.recv(65536)
            if not m:
                return "".join(out)
            out.append(m.decode(errors="replace"))
    except OSError:
        return None
    finally:
        c.close()


def words(line):
    """'a=1 b=x' -> {'a': '1', 'b': 'x'} (repeated keys: the first)."""
    out = {}
    for w in line.split():
        k, _, v = w.partition("=")
        out.setdefault(k, v)
    return out


def process_name(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def attached(cfg, k):
    """The processes attached to instance k: pid, command, sockets held."""
    text = control(cfg, k, "procs")
    out = []
    for line in (text or "").splitlines():
        w = words(line)
        if "pid" not in w:
            continue
        pid = int(w["pid"])
        out.append({"pid": pid, "command": process_name(pid), "sockets": int(w["sockets"]),
                    "listeners": int(w["listeners"]), "exited": w["gone"] == "1"})
    return out


def attached_programs(cfg, state=None):
    """Every process attached to the group's running instances, by pid:
    pid, command, sockets, listeners, instances."""
    state = state or load_state(cfg)
    out = {}
    for inst in (state or {}).get("instances", []):
        if not (inst.get("pid") and pid_alive(inst["pid"])):
            continue
        for p in attached(cfg, inst["instance"]):
            if p["exited"]:
                continue
            q = out.setdefault(p["pid"], dict(p, sockets=0, listeners=0, instances=[]))
            q["sockets"] += p["sockets"]
            q["listeners"] += p["listeners"]
            q["instances"].append(inst["instance"])
    return sorted(out.values(), key=lambda p: p["pid"])


def log_tail(cfg, k, n=3):
    """The supervisor log's last n lines about instance k, and the last line
    of the instance's own log (why it stopped, often)."""
    import re
    out = []
    try:
        with open(os.path.join(group_dir(cfg), "supervisor.log"), errors="replace") as f:
            out = [line.rstrip() for line in f if re.search(r"\binstance %d\b" % k, line)][-n:]
    except OSError:
        pass
    try:
        with open(os.path.join(group_dir(cfg), "instance-%d.log" % k), errors="replace") as f:
            last = [line.rstrip() for line in f if line.strip()][-1:]
        out += ["instance-%d.log: %s" % (k, line[:300]) for line in last]
    except OSError:
        pass
    return out


def status(cfg):
    """The supervisor and every instance: core, pid, backend, queue,
    uptime, state, restarts, healthy, and the processes attached to it."""
    state = load_state(cfg)
    if state is None:
        raise GroupError("group %r is not up; start it with 'shardsock up'" % cfg["group"])
    out = []
    now_us = time.time() * 1e6
    sup = state.get("supervisor_pid")
    for inst in state["instances"]:
        page = read_page(cfg["group"], inst["instance"])
        alive = bool(inst.get("pid")) and pid_alive(inst["pid"])
        if alive and page:
            st = page["state"]
        else:
            st = inst.get("state") if inst.get("state") in ("failed", "stopped") else "dead"
        out.append({
            "instance": inst["instance"], "core": inst["core"], "pid": inst.get("pid"),
            "backend": state["backend"], "interface": state["interface"], "queue": inst["instance"],
            "state": st,
            "uptime_s": round((now_us - page["started_unix_us"]) / 1e6, 1) if page and alive else None,
            "restarts": inst.get("restarts", 0),
            "healthy": bool(alive and page and page["state"] == "ready"),
            "processes": attached(cfg, inst["instance"]) if alive and may_ask(cfg, inst["instance"]) else [],
        })
        if not out[-1]["healthy"]:
            out[-1]["log"] = log_tail(cfg, inst["instance"])
    return {"group": cfg["group"], "address": state["address"], "host_address": state["host_address"],
            "started": state.get("started"),
            "processes_visible": all(may_ask(cfg, i["instance"]) for i in state["instances"]),
            "supervisor": {"pid": sup, "running": bool(sup) and pid_alive(sup)},
            "instances": out}


def stat(cfg):
    """Every instance's counters, read from its stats page."""
    state = load_state(cfg)
    if state is None:
        raise GroupError("group %r is not up; start it with 'shardsock up'" % cfg["group"])
    out = []
    for inst in state["instances"]:
        page = read_page(cfg["group"], inst["instance"])
        out.append({"instance": inst["instance"], "core": inst["core"],
                    "counters": page["counters"] if page else None})
    return {"instances": out}
