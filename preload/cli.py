"""The ``shardsock`` command.

    $ shardsock up --echo 7
    shardsock: group default up: 2 instances on cores 0,1, stack 198.18.0.2/24 on ss0
    $ shardsock status
    INSTANCE  CORE  PID    BACKEND  QUEUE  UPTIME  STATE  HEALTHY
    0         0     4242   tap      0      3.1s    ready  yes
    ...
    $ shardsock stat --json | head -3
    $ shardsock down

Exit codes: 0 success, 1 the operation failed, 2 bad usage.  Errors say what
failed and what to do; --debug shows the Python traceback.
"""
import argparse
import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

from preload import __version__


class UsageError(Exception):
    """Bad usage: exit code 2, as argparse's own errors."""


def _number(kind, what, low, high=None):
    """An argparse type: a kind (int, float) from low (exclusive for floats) to high."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%s is not %s" % (text[:40], what))
        if v != v or v < low or (kind is float and v == low) or (high is not None and v > high):
            raise argparse.ArgumentTypeError("%s is not %s" % (text[:40], what))
        return v
    return parse


INTERVAL = _number(float, "a number of seconds more than 0", 0.0, 86400.0)
PORT = _number(int, "a port, 1-65535", 1, 65535)
COUNT = _number(int, "a count, 1 or more", 1)
PID = _number(int, "a process id, 1 or more", 1)
MICROSECONDS = _number(int, "microseconds, 0-1000000", 0, 1000000)


def tcp_state(text):
    """netstat --state: a TCP state by name, as ss names them (any case, - or _)."""
    from preload.engine import TCP_STATES
    name = text.upper().replace("-", "_")
    if name not in TCP_STATES:
        raise argparse.ArgumentTypeError("%s is not a TCP state; one of %s" % (text[:40], ", ".join(TCP_STATES)))
    return name


def build_parser():
    p = argparse.ArgumentParser(prog="shardsock", description="Unmodified Linux servers on a per-core "
                                "user-space TCP/IP stack.")
    p.add_argument("--version", action="version", version="shardsock " + __version__)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def group_opts(sp):
        sp.add_argument("--group", "--instance-group", dest="group", help="instance group name (default: default)")
        sp.add_argument("--run-dir", dest="run_dir", help="run directory (default: /run/shardsock)")
        sp.add_argument("--config", help="TOML file of settings (command-line flags override it)")

    def up_opts(sp):
        group_opts(sp)
        sp.add_argument("--backend", help="packet I/O backend: tap (default), afpacket or afxdp")
        sp.add_argument("--interface", help="device name (default: ss0)")
        sp.add_argument("--address", help="the stack's address, CIDR (default: 198.18.0.2/24)")
        sp.add_argument("--host-address", dest="host_address",
                        help="the kernel side's address, CIDR (default: 198.18.0.1/24)")
        sp.add_argument("--gateway", help="next hop for destinations off the subnet")
        sp.add_argument("--cores", help="CPU list, e.g. 0-3,6 (default: every online core)")
        sp.add_argument("--echo", type=PORT, metavar="PORT", help="built-in TCP echo service on PORT (RFC 862)")
        sp.add_argument("--discard", type=PORT, metavar="PORT",
                        help="built-in TCP discard service on PORT (RFC 863)")
        sp.add_argument("--spin-us", dest="spin_us", type=MICROSECONDS, help="busy-poll this long after work (default: 20)")

    u = sub.add_parser("up", help="create the device and start one pinned instance per core")
    up_opts(u)
    u.add_argument("--foreground", action="store_true",
                   help="supervise the instances in this process until SIGTERM, then take the group down "
                        "(for systemd: scripts/shardsock@.service)")
    rs = sub.add_parser("restart", help="down, then up with the settings the group was started with "
                        "(and any given here)")
    up_opts(rs)
    cf = sub.add_parser("config", help="config show: the effective configuration, and where each value "
                        "comes from")
    cf.add_argument("action", choices=["show"])
    up_opts(cf)
    cf.add_argument("--json", action="store_true", help="print JSON {\"settings\": {...}, \"source\": {...}, "
                    "\"file\": PATH}")
    d = sub.add_parser("down", help="stop every instance and remove what 'up' created")
    group_opts(d)
    s = sub.add_parser("status", help="instances: core, pid, backend, queue, uptime, state, health")
    group_opts(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    st = sub.add_parser("stat", help="counters per instance, read from shared memory")
    group_opts(st)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--rate", action="store_true", help="per-second deltas over --interval")
    st.add_argument("--interval", type=INTERVAL, default=1.0, help="seconds between the two samples of --rate")
    st.add_argument("--reset", action="store_true",
                    help="from now on show counts since this moment (the instances keep counting; like nstat)")
    st.add_argument("--absolute", action="store_true", help="counts since the instances started, ignoring "
                    "--reset")
    ns = sub.add_parser("netstat", help="connections, like ss -tan: addresses, state, instance, process, "
                        "queues")
    group_opts(ns)
    ns.add_argument("--json", action="store_true", help="print JSON")
    ns.add_argument("--port", type=PORT, help="only sockets with this local or remote port")
    ns.add_argument("--state", type=tcp_state, help="only sockets in this TCP state (e.g. ESTABLISHED, LISTEN, "
                    "TIME_WAIT)")
    ns.add_argument("--pid", type=PID, help="only sockets held by this process")
    ns.add_argument("--listening", "-l", action="store_true", help="only listeners")
    tp = sub.add_parser("top", help="live per-instance view: packets/s, connections, accepts, retransmissions, "
                        "drops, CPU")
    group_opts(tp)
    tp.add_argument("--interval", type=INTERVAL, default=1.0, help="seconds between refreshes")
    tp.add_argument("--iterations", "-n", type=COUNT, help="stop after N refreshes (default: until Ctrl-C)")
    tp.add_argument("--json", action="store_true", help="print one JSON object per refresh, one per line")
    cm = sub.add_parser("compat", help="the compatibility suite: real programs on the kernel and under "
                        "shardsock, compared; writes compat_tests/MATRIX.md")
    cm.add_argument("-k", dest="select", metavar="EXPR", help="only the scenarios pytest's -k EXPR selects "
                    "(e.g. redis, 'nginx and not wrk')")
    cm.add_argument("--matrix-only", action="store_true",
                    help="only the matrix's scenarios (compat_tests/scenarios/), not the nginx, redis and "
                         "listen spawn tests")
    cm.add_argument("--list", action="store_true", help="list the scenarios and their placements, run nothing")
    cm.add_argument("--matrix", metavar="PATH", help="write the matrix here (default: compat_tests/MATRIX.md)")
    cp = sub.add_parser("completion", help="print the bash completion script (source it, or install it in "
                        "/etc/bash_completion.d/shardsock)")
    cp.add_argument("shell", choices=["bash"])
    r = sub.add_parser("run", help="run a program with its TCP sockets served by the instances: run -- CMD ARGS")
    group_opts(r)
    r.add_argument("--instance", type=_number(int, "an instance number", -2 ** 31), default=None,
                   help="attach every process to this instance (default: place each process on the next "
                        "instance, round-robin, and run it on that instance's core)")
    r.add_argument("--no-pin", dest="pin", action="store_const", const=False,
                   help="leave placement to the program: each process attaches to the instance of the core "
                        "it runs on")
    r.add_argument("--profile", choices=("throughput", "latency"),
                   help="the library's settings: throughput (sleep at once, the default) or latency "
                        "(busy-poll 50 us before sleeping: SHARDSOCK_POLL_US=50)")
    r.add_argument("--force", action="store_true",
                   help="override SHARDSOCK_* variables already set in the environment")
    r.add_argument("--verbose", action="store_true", help="print a banner of the settings that are not the "
                   "defaults; the library says on stderr where each process attaches and why a socket stays "
                   "on the kernel")
    r.add_argument("--quiet", "-q", action="store_true", help="say nothing when the program will run on the "
                   "kernel (no group up, an instance not running, the control socket refuses this user)")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="the program and its arguments, after --")
    c = sub.add_parser("counters", help="list every counter an instance keeps, with its meaning")
    c.add_argument("--json", action="store_true", help="print a JSON object name -> description")
    # commands with a module of their own: each adds its options
    from preload import bench, doctor
    doctor.add_arguments(sub.add_parser("doctor", help=doctor.HELP))
    bench.add_arguments(sub.add_parser("bench", help=bench.HELP))
    return p


def settings(args, with_source=False):
    """Defaults, then the config file, then the command line."""
    from preload.config import KEYS, effective
    flags = {k: getattr(args, k, None) for k in KEYS}
    cfg, source = effective(getattr(args, "config", None), flags)
    return (cfg, source) if with_source else cfg


def up_line(state):
    cores = ",".join(str(i["core"]) for i in state["instances"])
    n = len(state["instances"])
    return "shardsock: group %s up: %d instance%s on core%s %s, %s backend, stack %s on %s%s" % (
        state["group"], n, "s" if n > 1 else "", "s" if n > 1 else "", cores, state["backend"], state["address"],
        state["interface"], " (host side %s)" % state["host_address"] if state["host_address"] else "")


def cmd_up(args):
    from preload.instances import up
    cfg = settings(args)
    if args.foreground:
        up(cfg, foreground=True, on_ready=lambda state: print(up_line(state), flush=True))
        print("shardsock: group %s down" % cfg["group"])
    else:
        print(up_line(up(cfg)))
    return 0


def duration(s):
    """Seconds as an operator reads them: 4.2s, 12m05s, 3h07m, 2d05h."""
    if s is None:
        return "-"
    if s < 60:
        return "%.1fs" % s
    s = int(s)
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def tell_attached(cfg, what):
    """Before down or restart: the programs that lose their sockets."""
    from preload.instances import attached_programs, load_state, may_ask
    state = load_state(cfg)
    if state is None or not all(may_ask(cfg, i["instance"]) for i in state["instances"]):
        return  # not up, or not root: the command fails next
    progs = attached_programs(cfg, state)
    if not progs:
        print("shardsock: %s group %s: no program attached" % (what, cfg["group"]), flush=True)
        return
    print("shardsock: %s group %s: %d program%s attached lose%s %s stack sockets (ECONNRESET):" % (
        what, cfg["group"], len(progs), "s" if len(progs) > 1 else "", "" if len(progs) > 1 else "s",
        "their" if len(progs) > 1 else "its"), flush=True)
    print("  %-8s %-16s %-8s %s" % ("PID", "COMMAND", "SOCKETS", "LISTENERS"))
    for p in progs:
        print("  %-8d %-16s %-8d %d" % (p["pid"], p["command"] or "?", p["sockets"], p["listeners"]), flush=True)


def cmd_down(args):
    from preload.instances import down
    cfg = settings(args)
    tell_attached(cfg, "stopping")
    state = down(cfg)
    print("shardsock: group %s down: %d instances stopped%s" % (
        state["group"], len(state["instances"]),
        ", %s removed" % state["interface"] if state["created_interface"] else ""))
    return 0


def cmd_status(args):
    from preload.instances import status
    st = status(settings(args))
    healthy = all(i["healthy"] for i in st["instances"]) and st["supervisor"]["running"]
    if args.json:
        print(json.dumps(st, indent=2))
        return 0 if healthy else 1
    sup = st["supervisor"]
    print("group %s: stack %s%s, supervisor %s" % (
        st["group"], st["address"], ", host side %s" % st["host_address"] if st["host_address"] else "",
        "pid %d" % sup["pid"] if sup["running"] else "NOT RUNNING (instances that die stay down)"))
    print("%-9s %-5s %-8s %-8s %-6s %-9s %-9s %-9s %s" % ("INSTANCE", "CORE", "PID", "BACKEND", "QUEUE", "UPTIME",
                                                       "STATE", "RESTARTS", "HEALTHY"))
    for i in st["instances"]:
        print("%-9d %-5d %-8s %-8s %-6d %-9s %-9s %-9d %s" % (
            i["instance"], i["core"], i["pid"] or "-", i["backend"], i["queue"],
            duration(i["uptime_s"]), i["state"], i["restarts"],
            "yes" if i["healthy"] else "NO"))
    procs = [(i["instance"], p) for i in st["instances"] for p in i["processes"]]
    if not st.get("processes_visible", True):
        print("\n(attached programs: the instances tell root, their own user and the read group's members)")
    if procs:
        print("\n%-9s %-8s %-16s %-8s %s" % ("INSTANCE", "PID", "COMMAND", "SOCKETS", "LISTENERS"))
        for k, p in procs:
            print("%-9d %-8d %-16s %-8d %d%s" % (k, p["pid"], p["command"] or "?", p["sockets"], p["listeners"],
                                                 "  (exited; kept for a child)" if p["exited"] else ""))
    for i in st["instances"]:
        if not i["healthy"]:
            print("\ninstance %d is NOT healthy (%s); the supervisor's log says:" % (i["instance"], i["state"]))
            for line in i.get("log") or ["(nothing about it)"]:
                print("  " + line)
    return 0 if healthy else 1


def cmd_stat(args):
    from preload import observe
    cfg = settings(args)
    if args.reset:
        observe.reset(cfg)
        if not args.json:
            print("shardsock: counters of group %s reset (stat shows counts from now on; --absolute: all)"
                  % cfg["group"])
        else:
            print(json.dumps({"reset": True}))
        return 0
    st = observe.rates(cfg, args.interval) if args.rate else observe.since_reset(cfg, args.absolute)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    rows = [i for i in st["instances"] if i["counters"]]
    names = [k for k in rows[0]["counters"] if k != "tcp_state"] if rows else []
    if args.rate:
        print("per second, over %.1fs" % st["interval_s"])
    elif st.get("since"):
        print("since the reset at %s" % time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["since"])))
    fmt = "%14.1f" if args.rate else "%14d"
    print("%-28s %s %s" % ("COUNTER", " ".join("%14s" % ("core %d" % i["core"]) for i in rows), "%14s" % "total"))
    for name in names:
        vals = [i["counters"][name] for i in rows]
        if any(vals):
            print("%-28s %s %s" % (name, " ".join(fmt % v for v in vals), fmt % sum(vals)))
    gauges = [(i.get("gauges") or i["counters"])["tcp_state"] for i in rows]
    states = sorted({k for g in gauges for k, v in g.items() if v})
    if args.rate and states:
        # gauges are not rates: connections by state now, in a table apart
        print("\nnow (gauges, not rates)")
        print("%-28s %s %s" % ("GAUGE", " ".join("%14s" % ("core %d" % i["core"]) for i in rows), "%14s" % "total"))
    for name in states:
        vals = [g[name] for g in gauges]
        print("%-28s %s %14d" % ("tcp_state " + name, " ".join("%14d" % v for v in vals), sum(vals)))
    return 0


def cmd_netstat(args):
    from preload import observe
    conns = observe.filter_connections(observe.connections(settings(args)), args.port, args.state, args.pid,
                                       args.listening)
    if args.json:
        print(json.dumps({"connections": conns}, indent=2))
        return 0
    print("%-12s %8s %8s %-22s %-22s %-5s %s" % ("State", "Recv-Q", "Send-Q", "Local Address:Port",
                                                 "Peer Address:Port", "Inst", "Process"))
    for c in conns:
        who = ",".join("%s(%d)" % (p["command"] or "?", p["pid"]) for p in c["processes"])
        if c["service"]:
            who = "[%s service]" % c["service"]
        print("%-12s %8d %8d %-22s %-22s %-5d %s" % (c["state"], c["recv_q"], c["send_q"], c["local"],
                                                     c["remote"] if c["state"] != "LISTEN" else "*:*",
                                                     c["instance"], who))
    return 0


def cmd_top(args):
    from preload import observe
    cfg = settings(args)
    prev = None
    n = 0
    live = sys.stdout.isatty() and not args.json
    try:
        while args.iterations is None or n < args.iterations:
            sample = observe.top_sample(cfg, prev)
            if prev is not None:  # rates need two samples: the first refresh comes after one interval
                if args.json:
                    out = dict({k: v for k, v in sample.items() if k != "monotonic"},
                               instances=[{k: v for k, v in r.items() if k != "raw"} for r in sample["instances"]])
                    print(json.dumps(out), flush=True)
                else:
                    print(("\033[H\033[J" if live else "") + observe.format_top(sample, cfg["group"]), flush=True)
                    if not live:
                        print()
                n += 1
            prev = sample
            if args.iterations is None or n < args.iterations:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_restart(args):
    from preload.instances import down, load_state, up
    cfg, source = settings(args, with_source=True)
    state = load_state(cfg)
    if state is not None:
        # the settings it was started with, and what this command changes
        base = dict(state.get("config") or cfg)
        base.update({k: v for k, v in cfg.items() if source[k] != "default"})
        cfg = base
        tell_attached(cfg, "restarting")
        down(cfg)
    print(up_line(up(cfg)))
    return 0


def cmd_config(args):
    from preload.config import find_file, show
    cfg, source = settings(args, with_source=True)
    if args.json:
        print(json.dumps({"settings": cfg, "source": source, "file": find_file(args.config, args.group or "default")},
                         indent=2))
    else:
        path = find_file(args.config, args.group or "default")
        print("# effective configuration: defaults, then %s, then the command line" %
              (path or "no file (none in $SHARDSOCK_CONFIG, /etc/shardsock/%s.toml or /etc/shardsock/shardsock.toml)"
               % (args.group or "default")))
        print(show(cfg, source))
    return 0


def cmd_compat(args):
    """pytest on compat_tests/ of this checkout: its conftest writes the
    matrix and prints the summary line."""
    from preload.instances import GroupError, ROOT
    tests = os.path.join(ROOT, "compat_tests")
    if not os.path.isdir(tests):
        raise GroupError("%s is missing: the suite runs from a checkout of shardsock" % tests)
    if args.matrix:
        # the suite takes minutes: a matrix it cannot write is found first
        out = os.path.abspath(args.matrix)
        try:
            if os.path.isdir(out):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
            if os.path.exists(out):
                open(out, "a").close()
            else:
                open(out, "x").close()  # the name itself may be what cannot be
                os.unlink(out)
        except OSError as e:
            raise UsageError("--matrix %s: cannot write there (%s); name a file in a directory you can write"
                             % (args.matrix[:200], e.strerror or e))
    if args.list:
        sys.path.insert(0, tests)
        import matrix
        for s in matrix.load():
            print("%-10s %-50s %s" % (s.program, s.name, ",".join(s.placements)))
        return 0
    for module, package in (("pytest", "pytest"), ("yaml", "PyYAML")):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError("No module named %r" % module, name=module)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           os.path.join(tests, "test_matrix.py") if args.matrix_only else tests]
    if args.select:
        cmd += ["-k", args.select]
    env = dict(os.environ, PYTHONPATH=ROOT)
    if args.matrix:
        env["SHARDSOCK_MATRIX"] = os.path.abspath(args.matrix)
    r = subprocess.run(cmd, cwd=ROOT, env=env)
    return 0 if r.returncode == 0 else 1


def cmd_completion(args):
    print(bash_completion(build_parser()))
    return 0


def bash_completion(parser):
    """A bash completion script from the parser itself: commands, then each
    command's options, and the choices of those that have them."""
    from preload.config import BACKENDS
    from preload.engine import TCP_STATES
    # checked by preload/config.py (exit 1 and the fix) and by tcp_state, not by argparse's choices
    values = {"backend": BACKENDS, "state": TCP_STATES}
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, sp in subs.choices.items():
        opts = [o for a in sp._actions for o in a.option_strings]
        choices = [c for a in sp._actions if not a.option_strings and a.choices for c in a.choices]
        prev_cases = ["            %s) COMPREPLY=($(compgen -W \"%s\" -- \"$cur\")); return;;"
                      % ("|".join(a.option_strings), " ".join(map(str, a.choices or values[a.dest])))
                      for a in sp._actions if a.option_strings and (a.choices or a.dest in values)]
        cases.append("        %s)\n            case \"$prev\" in\n%s\n            esac\n"
                     "            COMPREPLY=($(compgen -W \"%s\" -- \"$cur\"));;"
                     % (name, "\n".join(prev_cases + ["            --config) COMPREPLY=($(compgen -f -- \"$cur\")); "
                                                      "return;;"]), " ".join(opts + choices)))
    top = [o for a in parser._actions for o in a.option_strings]
    return """# bash completion for shardsock: source this file, or put it in /etc/bash_completion.d/shardsock
_shardsock() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --) return;;  # run -- CMD: the program's own arguments
            -*) ;;
            *) cmd=${COMP_WORDS[i]}; break;;
        esac
    done
    case "$cmd" in
        "") COMPREPLY=($(compgen -W "%s %s" -- "$cur"));;
%s
    esac
}
complete -F _shardsock shardsock
""" % (" ".join(subs.choices), " ".join(top), "\n".join(cases))


def cmd_counters(args):
    from preload.engine import counter_descriptions
    desc = counter_descriptions()
    if args.json:
        print(json.dumps(desc, indent=2))
    else:
        width = max(map(len, desc))
        for name, text in desc.items():
            print("%-*s  %s" % (width, name, text))
    return 0


def cmd_run(args):
    from preload.instances import GroupError, run_env, serving
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UsageError("name the program to run: shardsock run -- CMD ARGS")
    if args.instance is not None and args.instance < 0:
        raise UsageError("--instance %d: instances are numbered from 0" % args.instance)
    cfg, source = settings(args, with_source=True)
    n, why = serving(cfg, args.instance)
    if n and args.instance is not None and args.instance >= n:
        raise UsageError("--instance %d: group %s has %d instance%s, 0-%d" % (
            args.instance, cfg["group"], n, "s" if n > 1 else "", n - 1))
    env, banner = run_env(cfg, args.instance, args.verbose, args.force, source)
    if args.verbose:
        print(banner, file=sys.stderr, flush=True)
    if why and not args.quiet:
        print("shardsock run: %s runs on the kernel: %s (--quiet: say nothing)" % (os.path.basename(cmd[0]), why),
              file=sys.stderr, flush=True)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        raise GroupError("cannot run %s: %s" % (cmd[0], e.strerror))


def cmd_doctor(args):
    from preload import doctor
    return doctor.main(args)


def cmd_bench(args):
    from preload import bench
    return bench.main(args)


COMMANDS = {"run": cmd_run, "up": cmd_up, "down": cmd_down, "status": cmd_status, "stat": cmd_stat,
            "counters": cmd_counters, "doctor": cmd_doctor, "bench": cmd_bench, "restart": cmd_restart,
            "config": cmd_config, "netstat": cmd_netstat, "top": cmd_top, "completion": cmd_completion,
            "compat": cmd_compat}


# What a member of read_group may run (stat --reset writes: root's).
READ_ONLY = ("status", "stat", "top", "netstat")


# Python modules the commands import, and the package that gives each.
PACKAGES = {"yaml": "PyYAML", "pyroute2": "pyroute2", "cffi": "cffi", "pytest": "pytest", "matplotlib": "matplotlib"}


def missing_module(name):
    """What to do about a Python module that is not installed."""
    name = (name or "?").split(".")[0]
    if name == "preload" or name == "_engine":
        return "the engine's Python module is not built: run 'make build'"
    pkg = PACKAGES.get(name, name)
    return "the Python package %s is missing (module %s): pip install %s" % (pkg, name, pkg)


def main(argv=None):
    # As a C tool: a closed pipe ends the command quietly (shardsock stat |
    # head), and the program `run` execs gets SIGPIPE's default, not the
    # SIG_IGN Python gives itself.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
    except ModuleNotFoundError as e:
        if debug:
            raise
        print("shardsock: %s" % missing_module(e.name), file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from preload.config import ConfigError
    from preload.instances import GroupError
    from preload.netsetup import SetupError
    try:
        return COMMANDS[args.command](args)
    except ModuleNotFoundError as e:
        if args.debug:
            raise
        print("shardsock %s: %s" % (args.command, missing_module(e.name)), file=sys.stderr)
        return 1
    except UsageError as e:
        if args.debug:
            raise
        print("shardsock %s: %s (see shardsock %s --help)" % (args.command, e, args.command), file=sys.stderr)
        return 2
    except PermissionError as e:
        if args.debug:
            raise
        if args.command in READ_ONLY and not getattr(args, "reset", False):
            from preload.instances import read_hint
            try:
                how = read_hint(settings(args))
            except Exception:
                how = read_hint({})
            print("shardsock %s: permission denied: %s; %s" % (args.command, e.filename or e, how), file=sys.stderr)
            return 1
        print("shardsock %s: permission denied: %s; this needs root (the group's files and devices are "
              "root's)" % (args.command, e.filename or e), file=sys.stderr)
        return 1
    except (ConfigError, GroupError, SetupError, OSError) as e:
        if args.debug:
            raise
        print("shardsock %s: %s" % (args.command, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if args.debug:
            raise
        print("shardsock %s: internal error: %s: %s (--debug shows where; please report it)"
              % (args.command, type(e).__name__, str(e)[:200]), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
