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
import json
import os
import sys

from preload import __version__


def build_parser():
    p = argparse.ArgumentParser(prog="shardsock", description="Unmodified Linux servers on a per-core "
                                "user-space TCP/IP stack.")
    p.add_argument("--version", action="version", version="shardsock " + __version__)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def group_opts(sp):
        sp.add_argument("--group", help="instance group name (default: default)")
        sp.add_argument("--run-dir", dest="run_dir", help="run directory (default: /run/shardsock)")
        sp.add_argument("--config", help="TOML file of settings (command-line flags override it)")

    u = sub.add_parser("up", help="create the device and start one pinned instance per core")
    group_opts(u)
    u.add_argument("--backend", help="packet I/O backend: tap (default), afpacket or afxdp")
    u.add_argument("--interface", help="device name (default: ss0)")
    u.add_argument("--address", help="the stack's address, CIDR (default: 198.18.0.2/24)")
    u.add_argument("--host-address", dest="host_address",
                   help="the kernel side's address, CIDR (default: 198.18.0.1/24)")
    u.add_argument("--gateway", help="next hop for destinations off the subnet")
    u.add_argument("--cores", help="CPU list, e.g. 0-3,6 (default: every online core)")
    u.add_argument("--echo", type=int, metavar="PORT", help="built-in TCP echo service on PORT (RFC 862)")
    u.add_argument("--discard", type=int, metavar="PORT", help="built-in TCP discard service on PORT (RFC 863)")
    u.add_argument("--spin-us", dest="spin_us", type=int, help="busy-poll this long after work (default: 20)")
    d = sub.add_parser("down", help="stop every instance and remove what 'up' created")
    group_opts(d)
    s = sub.add_parser("status", help="instances: core, pid, backend, queue, uptime, state, health")
    group_opts(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    st = sub.add_parser("stat", help="counters per instance, read from shared memory")
    group_opts(st)
    st.add_argument("--json", action="store_true", help="print JSON")
    r = sub.add_parser("run", help="run a program with its TCP sockets served by the instances: run -- CMD ARGS")
    group_opts(r)
    r.add_argument("--instance", type=int, default=None,
                   help="attach every process to this instance (default: place each process on the next "
                        "instance, round-robin, and run it on that instance's core)")
    r.add_argument("--no-pin", action="store_true",
                   help="leave placement to the program: each process attaches to the instance of the core "
                        "it runs on")
    r.add_argument("--verbose", action="store_true", help="the library says on stderr why a socket stays on "
                   "the kernel")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="the program and its arguments, after --")
    c = sub.add_parser("counters", help="list every counter an instance keeps, with its meaning")
    c.add_argument("--json", action="store_true", help="print a JSON object name -> description")
    return p


def settings(args):
    """Defaults, then the config file, then the command line."""
    from preload.instances import DEFAULTS, GroupError
    cfg = dict(DEFAULTS)
    if getattr(args, "config", None):
        import tomllib
        try:
            with open(args.config, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise GroupError("cannot read config %s: %s" % (args.config, e.strerror))
        except tomllib.TOMLDecodeError as e:
            raise GroupError("config %s is not valid TOML: %s" % (args.config, e))
        for key, value in data.items():
            if key not in DEFAULTS:
                raise GroupError("config %s: unknown key %r; valid keys: %s"
                                 % (args.config, key, ", ".join(sorted(DEFAULTS))))
            cfg[key] = value
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    return cfg


def cmd_up(args):
    from preload.instances import up
    cfg = settings(args)
    state = up(cfg)
    cores = ",".join(str(i["core"]) for i in state["instances"])
    n = len(state["instances"])
    print("shardsock: group %s up: %d instance%s on core%s %s, %s backend, stack %s on %s%s" % (
        state["group"], n, "s" if n > 1 else "", "s" if n > 1 else "", cores, state["backend"], state["address"],
        state["interface"], " (host side %s)" % state["host_address"] if state["host_address"] else ""))
    return 0


def cmd_down(args):
    from preload.instances import down
    state = down(settings(args))
    print("shardsock: group %s down: %d instances stopped%s" % (
        state["group"], len(state["instances"]),
        ", %s removed" % state["interface"] if state["created_interface"] else ""))
    return 0


def cmd_status(args):
    from preload.instances import status
    st = status(settings(args))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0 if all(i["healthy"] for i in st["instances"]) else 1
    print("group %s: stack %s%s" % (st["group"], st["address"],
                                    ", host side %s" % st["host_address"] if st["host_address"] else ""))
    print("%-9s %-5s %-8s %-8s %-6s %-9s %-9s %s" % ("INSTANCE", "CORE", "PID", "BACKEND", "QUEUE", "UPTIME",
                                                  "STATE", "HEALTHY"))
    for i in st["instances"]:
        print("%-9d %-5d %-8d %-8s %-6d %-9s %-9s %s" % (
            i["instance"], i["core"], i["pid"], i["backend"], i["queue"],
            "%.1fs" % i["uptime_s"] if i["uptime_s"] is not None else "-", i["state"],
            "yes" if i["healthy"] else "NO"))
    return 0 if all(i["healthy"] for i in st["instances"]) else 1


def cmd_stat(args):
    from preload.instances import stat
    st = stat(settings(args))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    rows = [i for i in st["instances"] if i["counters"]]
    names = [k for k in rows[0]["counters"] if k != "tcp_state"] if rows else []
    print("%-28s %s %s" % ("COUNTER", " ".join("%14s" % ("core %d" % i["core"]) for i in rows), "%14s" % "total"))
    for name in names:
        vals = [i["counters"][name] for i in rows]
        if any(vals):
            print("%-28s %s %14d" % (name, " ".join("%14d" % v for v in vals), sum(vals)))
    return 0


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
    from preload.instances import GroupError, run_env
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise GroupError("name the program to run: shardsock run -- CMD ARGS")
    env = run_env(settings(args), args.instance, args.verbose, pin=not args.no_pin)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        raise GroupError("cannot run %s: %s" % (cmd[0], e.strerror))


COMMANDS = {"run": cmd_run, "up": cmd_up, "down": cmd_down, "status": cmd_status, "stat": cmd_stat, "counters": cmd_counters}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from preload.instances import GroupError
    from preload.netsetup import SetupError
    try:
        return COMMANDS[args.command](args)
    except (GroupError, SetupError, OSError) as e:
        if args.debug:
            raise
        print("shardsock %s: %s" % (args.command, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
