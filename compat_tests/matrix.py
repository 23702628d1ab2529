"""The compatibility matrix: real programs, the same scenario on the kernel
and under shardsock, compared.

A scenario is a server command, a client command, and what to compare
(compat_tests/scenarios/*.yaml; README "Adding a program").  It runs in up
to three placements:

  server    the server under the library, a kernel client connecting to
            the stack's address
  client    a kernel server, the client under the library connecting
            through the stack to the kernel side of the tap
  loopback  both under the library, over 127.0.0.1 (the stack's own lo)

and each placement twice: first with nothing preloaded (the kernel: the
client connects to the same namespace's own address, or 127.0.0.1), then
under shardsock.  It passes when what the client observed is the same
(exit code, output after normalizing, expected lines) and the counters
show the stack carried the sockets: passive opens for the server,
active opens for the client, looped-back packets for loopback.  Sockets
that fell back to the kernel are counted (fallback_*) and shown; a
scenario whose sockets all fell back fails.
"""
import glob
import hashlib
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]
from topology import descendants, stop_pids  # noqa: E402

STACK = "198.18.0.2"   # the stack's address (shardsock up's default)
HOST = "198.18.0.1"    # the kernel's side of the tap
PLACEMENTS = ("server", "client", "loopback")
# What shows the stack carried a placement's sockets
SERVED_BY = {"server": "tcp_passive_opens", "client": "tcp_active_opens", "loopback": "ip_loop_packets"}


class Scenario:
    """One program's scenario, from its YAML description."""

    KEYS = {"name", "server", "client", "placements", "compare", "expect", "normalize", "ready", "timeout",
            "needs", "known", "server_under_library", "stdin"}

    def __init__(self, program, d, source, port):
        unknown = set(d) - self.KEYS
        if unknown:
            raise ValueError("%s: scenario %r: unknown keys %s; valid: %s"
                             % (source, d.get("name"), sorted(unknown), sorted(self.KEYS)))
        self.program = program
        self.source = source
        self.name = d["name"]
        self.server = d.get("server")
        self.client = d["client"]
        self.placements = d.get("placements", list(PLACEMENTS))
        bad = set(self.placements) - set(PLACEMENTS)
        if bad:
            raise ValueError("%s: %s: unknown placements %s" % (source, self.name, sorted(bad)))
        self.compare = d.get("compare", ["exit", "stdout"])
        self.expect = d.get("expect", [])
        self.normalize = d.get("normalize", [])
        self.ready = d.get("ready", "port")
        self.timeout = d.get("timeout", 60)
        self.needs = d.get("needs", [])
        self.known = d.get("known", {})  # placement -> why it cannot pass yet
        self.port = port

    @property
    def id(self):
        return "%s: %s" % (self.program, self.name)

    def missing(self):
        """Programs this scenario needs that are not installed."""
        from shutil import which
        return [n for n in self.needs if not which(n)]


def load(directory=os.path.join(HERE, "scenarios")):
    """Every scenario of every YAML file, each with a port of its own."""
    out = []
    port = 21000
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path) as f:
            doc = yaml.safe_load(f)
        for d in doc["scenarios"]:
            out.append(Scenario(doc["program"], d, os.path.relpath(path, ROOT), port))
            port += 10
    return out


def fill(template, **values):
    return template.format(**values) if template else template


class Outcome:
    """What a client observed in one run."""

    def __init__(self, exit, stdout, stderr, served=None, fallbacks=0, error=None):
        self.exit, self.stdout, self.stderr = exit, stdout, stderr
        self.served, self.fallbacks, self.error = served, fallbacks, error

    def summary(self, scenario):
        if self.error:
            return "error: %s" % self.error
        text = normalized(scenario, self.stdout)
        return "exit %s, %d bytes out (sha256 %s)" % (self.exit, len(text),
                                                       hashlib.sha256(text.encode()).hexdigest()[:8])


def normalized(scenario, text):
    for pattern in scenario.normalize:
        text = re.sub(pattern, "#", text)
    return text


def wait_port(ns, host, port, deadline):
    """Until host:port accepts a connection, from the namespace (a plain
    process: a probe under the library would count as a stack socket)."""
    code = ("import socket,sys,time\n"
            "d=time.time()+float(sys.argv[3])\n"
            "while time.time()<d:\n"
            "    try: socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1).close(); sys.exit(0)\n"
            "    except OSError: time.sleep(0.05)\n"
            "sys.exit(1)\n")
    left = max(0.5, deadline - time.monotonic())
    r = ns.run([sys.executable, "-c", code, host, str(port), str(left)], timeout=left + 10)
    return r.returncode == 0


def stop_session(pid):
    """Stops a process started with start_new_session, its descendants and
    anything else left in its session (orphans re-parented to init), by pid."""
    pids = {pid, *descendants(pid)}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.getsid(int(p)) == pid:
                    pids.add(int(p))
            except OSError:
                pass
    stop_pids(sorted(pids), grace=5)


def counters(group):
    """Every instance's counters, straight from shared memory (no process
    to start: the matrix reads them twice per run)."""
    from preload.stats import read_page
    out = []
    for k in range(64):
        page = read_page(group.name, k)
        if page is None:
            break
        out.append(page["counters"])
    return out


def run_once(group, scenario, placement, shardsock):
    """One run of a scenario: the server (if any) in the background, then
    the client; returns the client's Outcome and the counters' deltas."""
    port = scenario.port
    tmp = tempfile.mkdtemp(prefix="ss-compat-")
    os.chmod(tmp, 0o755)
    if placement == "loopback":
        bind, host = "127.0.0.1", "127.0.0.1"
    elif shardsock and placement == "server":
        bind, host = "0.0.0.0", STACK
    else:
        bind, host = "0.0.0.0", HOST
    values = dict(port=port, host=host, bind=bind, tmp=tmp, tools=os.path.join(HERE, "tools"),
                  python=sys.executable)
    server_lib = shardsock and placement in ("server", "loopback")
    client_lib = shardsock and placement in ("client", "loopback")

    def argv(cmd, under):
        a = shlex.split(fill(cmd, **values))
        return group.command(*a) if under else a

    env = group.env()
    srv = None
    deadline = time.monotonic() + scenario.timeout
    before = counters(group)
    try:
        if scenario.server:
            srv = subprocess.Popen(["ip", "netns", "exec", group.ns.name, *argv(scenario.server, server_lib)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   env=env, cwd=tmp, start_new_session=True)
            ready = wait_port(group.ns, bind if bind != "0.0.0.0" else host, port, time.monotonic() + 15)
            if not ready:
                stop_session(srv.pid)
                err = srv.stderr.read().decode(errors="replace")[-500:]
                return Outcome(None, "", err, error="server not listening on %d within 15 s: %s" % (port, err)), {}
        before = counters(group)  # after the readiness probe's connection
        cli = subprocess.Popen(["ip", "netns", "exec", group.ns.name, *argv(scenario.client, client_lib)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=tmp, start_new_session=True)
        try:
            stdout, stderr = cli.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out = Outcome(cli.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            out = Outcome(None, "", "", error="client did not finish within %ss" % scenario.timeout)
        finally:
            # the client's whole session: its children too (stress-ng's workers)
            stop_session(cli.pid)
            cli.wait(10)
    finally:
        if srv:
            stop_session(srv.pid)
            srv.wait(10)
        subprocess.run(["rm", "-rf", tmp])
    after = counters(group)
    delta = {k: sum(a[k] - b[k] for a, b in zip(after, before)) for k in after[0] if k != "tcp_state"}
    out.served = delta.get(SERVED_BY[placement], 0)
    out.fallbacks = sum(v for k, v in delta.items() if k.startswith("fallback_"))
    return out, delta


def verdict(scenario, placement, kernel, ss):
    """(passed, why): shardsock observed what the kernel did, and the stack
    carried the sockets."""
    if kernel.error:
        return False, "kernel run failed: %s" % kernel.error
    if ss.error:
        return False, "shardsock run failed: %s" % ss.error
    why = []
    if "exit" in scenario.compare and kernel.exit != ss.exit:
        why.append("exit %s on the kernel, %s under shardsock" % (kernel.exit, ss.exit))
    if "stdout" in scenario.compare and normalized(scenario, kernel.stdout) != normalized(scenario, ss.stdout):
        why.append("output differs: kernel %r, shardsock %r" % (normalized(scenario, kernel.stdout)[-200:],
                                                                 normalized(scenario, ss.stdout)[-200:]))
    for pattern in scenario.expect:
        for mode, o in (("kernel", kernel), ("shardsock", ss)):
            if not re.search(pattern, o.stdout + o.stderr, re.M):
                why.append("%s output lacks /%s/" % (mode, pattern))
    if kernel.exit != 0 and "exit" in scenario.compare:
        why.append("the client failed on the kernel too (exit %s): %s" % (kernel.exit, kernel.stderr[-300:]))
    if not ss.served:
        why.append("not served by the stack: %s did not move (fallbacks: %d)" % (SERVED_BY[placement],
                                                                                 ss.fallbacks))
    if why and ss.stderr:
        why.append("shardsock stderr: %s" % ss.stderr[-300:])
    return not why, "; ".join(why)


def write_matrix(rows, path, summary):
    """compat_tests/MATRIX.md: one row per program, scenario and placement."""
    lines = ["# Compatibility matrix", "",
             "Written by `make compat` (`shardsock compat`): every scenario of `compat_tests/scenarios/` run on "
             "the kernel and under shardsock in each placement, and the suite's own tests of nginx, redis "
             "and listen spawn. A row passes only when shardsock observed what the kernel did **and** the "
             "stack carried the sockets (a fallback to the kernel is counted). Placements: *server* (the "
             "program under shardsock, kernel clients), *client* (under shardsock, a kernel server), "
             "*loopback* (both under shardsock over 127.0.0.1).", "",
             "**%s**" % summary, "",
             "| program | scenario | placement | kernel | shardsock | verdict | fallbacks |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % tuple(
            str(x).replace("|", "\\|").replace("\n", " ") for x in (
                r["program"], r["scenario"], r["placement"], r["kernel"], r["shardsock"], r["verdict"],
                r["fallbacks"])))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
