"""`shardsock bench`: the same scenarios on the kernel's TCP and on shardsock,
in one run, on this machine.

    $ shardsock bench                      # every scenario, 3 rounds of 5 s
    $ shardsock bench --scenario echo --seconds 2 --rounds 1 --json

Scenarios (a kernel client drives both sides, from another namespace, but
in the loopback ones):

  nginx-keepalive  Debian's nginx serving a 64-byte file; wrk, 64 keep-alive
                   connections: requests/s
  nginx-close      the same with ``Connection: close``, 32 connections: a
                   connection per request, so connections/s = requests/s
  echo             64-byte round trips on 64 connections (build/echo_bench)
  loopback-keepalive, loopback-close
                   nginx and wrk on one host over 127.0.0.1, as nginx-*: on
                   the kernel both on its TCP, on shardsock both under
                   ``shardsock run`` (both ends of each connection in the
                   stack)

Sides:

  kernel     nginx, or build/echo_server, on the kernel's TCP, across a veth
             pair between two namespaces
  shardsock  the same nginx under ``shardsock run`` (one worker per instance),
             or the instances' built-in echo service (RFC 862); the instances
             on a tap device in a namespace, the client on its kernel side

The sides take turns in every round (the machine is shared and swings), and
every number is the median over the rounds.  The ratio is always shardsock
divided by kernel.

What is measured, and where it comes from:

  requests_per_s       requests (nginx) or round trips (echo) / the client's
                       own measured duration
  connections_per_s    for nginx-close only (null where connections stay open)
  latency_us           nginx: wrk --latency (mean, p50, p75, p90, p99).  echo:
                       echo_bench measures no distribution, so the percentiles
                       are null and the mean is connections / round trips per
                       second (a closed loop: each connection has one request
                       in flight at all times)
  cpu_us_per_request   CPU time (user + system, /proc/PID/stat) of every
                       server-side process -- nginx master and workers, or
                       echo_server; plus the instances for shardsock, spinning
                       included -- per request
  machine_cpu_us_per_request
                       the whole machine's busy time (/proc/stat: client,
                       softirq, anything else running) per request; counts
                       the kernel's network work the server processes are not
                       charged for, and anything else this machine runs
  ctx_switches_per_request
                       the server-side processes' context switches, voluntary
                       and not, every thread (/proc/PID/task/TID/status)
  syscalls_per_request the server-side processes' system calls (perf stat -e
                       raw_syscalls:sys_enter -p PIDS); null without perf

JSON (--json), stable keys:

  {"rounds": N, "seconds": S, "cores": C, "chart": PATH or null,
   "scenarios": [{"name", "description", "connections",
                  "kernel": SIDE, "shardsock": SIDE,
                  "ratio": shardsock requests_per_s / kernel requests_per_s,
                  "cpu_ratio": shardsock cpu_us_per_request / kernel's}]}
  SIDE = {"requests_per_s", "connections_per_s", "latency_us": {"mean", "p50",
          "p75", "p90", "p99"}, "latency_source", "cpu_us_per_request",
          "machine_cpu_us_per_request", "ctx_switches_per_request",
          "syscalls_per_request", "errors", "per_round": [...]}

Everything the run makes (namespaces, veth pairs, the tap device, instance
groups, nginx, echo_server, temporary files) is removed before it returns,
after a failure, Ctrl-C or SIGTERM too; processes are stopped by pid.  Every
command it runs has a time limit.

scripts/bench_nginx.py (`make bench-nginx`) is this command on the nginx
scenarios; scripts/bench_instances.py (`make bench-instances`) drives the
same servers and clients (kernel_echo, shardsock_echo, echo_bench, measure)
on more backends.
"""
import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from preload.instances import GroupError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
SCRIPTS = os.path.join(ROOT, "scripts")
NGINX = "/usr/sbin/nginx"
HZ = os.sysconf("SC_CLK_TCK")
# seconds a command may take beyond its own duration (set-up, a slow shared machine)
SLACK_S = 60

HELP = ("nginx, echo round trips, and nginx with wrk both preloaded over 127.0.0.1, on the kernel and on shardsock "
        "in one run: table, ratio, PNG chart")

# name -> (server, load, default connections, description)
SCENARIOS = {
    "nginx-keepalive": ("nginx", "keepalive", 64, "nginx, 64-byte file, keep-alive (wrk)"),
    "nginx-close": ("nginx", "close", 32, "nginx, 64-byte file, Connection: close (wrk)"),
    "echo": ("echo", "rr", 64, "64-byte echo round trips (echo_bench)"),
    "loopback-keepalive": ("loopback", "keepalive", 64,
                           "nginx and wrk on one host over 127.0.0.1, keep-alive (both under shardsock run)"),
    "loopback-close": ("loopback", "close", 32,
                       "nginx and wrk on one host over 127.0.0.1, Connection: close (both under shardsock run)"),
}
SIDES = ("kernel", "shardsock")
PERCENTILES = ("p50", "p75", "p90", "p99")


def _topology():
    """scripts/topology.py: the namespaces, veth pairs and groups the tests
    use as well; one definition of each."""
    if SCRIPTS not in sys.path:
        sys.path.insert(0, SCRIPTS)
    import topology
    return topology


# --- signals: undo steps run to the end -------------------------------------

class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; the run stops and cleans up."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """While ``deferred()`` is held, a signal is remembered and raised when it
    is released: creating a resource and registering its undo step, and the
    undo steps themselves, are not cut in half (a namespace made but never
    deleted, a group half taken down)."""

    def __init__(self):
        self.depth = 0
        self.pending = None

    def handler(self, signum, frame):
        if self.depth:
            self.pending = signum
        else:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self):
        """The handler for the length of a run (main thread only); the
        previous handlers after it."""
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {s: signal.signal(s, self.handler) for s in sigs}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


SIGNALS = _Signals()


class Cleanup(contextlib.ExitStack):
    """An ExitStack whose undo steps run with signals deferred, each step
    whatever the one before did (a step that fails is reported on stderr and
    the next one runs)."""

    def add(self, fn, *args):
        def step():
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 -- the remaining steps must run
                print("shardsock bench: cleanup step %s failed: %s" % (getattr(fn, "__name__", fn), e),
                      file=sys.stderr)
        self.callback(step)

    def __exit__(self, *exc):
        with SIGNALS.deferred():
            return super().__exit__(*exc)


# --- CPU accounting ----------------------------------------------------------

def process_jiffies(pids):
    """User + system time of pids (all their threads), in clock ticks; a
    process that has gone counts nothing."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def busy_jiffies():
    """The machine's busy time: every CPU, all but idle and iowait."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def context_switches(pids):
    """Voluntary and involuntary context switches of pids, all their threads
    (/proc/PID/task/TID/status)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir("/proc/%d/task" % pid):
                with contextlib.suppress(OSError), open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                            total += int(line.split()[1])
    return total


class SyscallCounter:
    """System calls entered by pids (every thread) while it runs: `perf stat
    -e raw_syscalls:sys_enter -p` (the tracepoint counts each entry, whatever
    the call).  Without perf, or where the kernel refuses, it counts None."""

    def __init__(self, pids):
        self.p = None
        self.out = None
        perf = shutil.which("perf")
        if not perf or not pids:
            return
        self.out = tempfile.NamedTemporaryFile(mode="w+", prefix="ss-bench-perf-", suffix=".csv")
        self.p = subprocess.Popen([perf, "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p",
                                   ",".join(map(str, pids)), "-o", self.out.name],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        if not self.p:
            return None
        self.p.send_signal(signal.SIGINT)  # perf prints its counts on SIGINT
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            _topology().stop_pids([self.p.pid])
            return None
        with self.out:
            for line in self.out.read().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2].startswith("raw_syscalls:sys_enter") and fields[0].isdigit():
                    return int(fields[0])
        return None


def measure(load, pids):
    """Runs load() -- which returns a dict with at least ``requests`` (the
    units the CPU is divided by) and ``seconds`` -- and adds, per request,
    the CPU time of the serving processes (pids(), asked before and after:
    nginx's workers, the instances), of the whole machine, and the serving
    processes' context switches and system calls."""
    before = pids()
    s0, b0, c0 = process_jiffies(before), busy_jiffies(), context_switches(before)
    calls = SyscallCounter(before)
    try:
        res = load()
    finally:
        n_calls = calls.stop()
    after = pids()
    s1, b1, c1 = process_jiffies(after), busy_jiffies(), context_switches(after)
    n = max(res["requests"], 1)
    res["cpu_us_per_request"] = (s1 - s0) / HZ * 1e6 / n
    res["machine_cpu_us_per_request"] = (b1 - b0) / HZ * 1e6 / n
    res["ctx_switches_per_request"] = (c1 - c0) / n
    res["syscalls_per_request"] = n_calls / n if n_calls is not None else None
    return res


# --- clients -----------------------------------------------------------------

_WRK_UNITS = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _wrk_time(text):
    """wrk's '612.34us', '1.20ms', '2.00s', '1.00m' -> microseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError("not a wrk time: %r" % text)
    return float(m.group(1)) * _WRK_UNITS[m.group(2)]


def wrk_errors(out):
    """The requests wrk's report counts as failed: socket errors (connect,
    read, write, timeout) and answers other than 2xx or 3xx."""
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in m.groups()) if m else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return errors + (int(non2xx.group(1)) if non2xx else 0)


def parse_wrk(out):
    """wrk --latency's report -> requests, seconds, errors (socket errors and
    non-2xx/3xx answers), latency_us {mean, p50, p75, p90, p99}."""
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    if not m:
        raise ValueError("no request count in wrk's output")
    lat = re.search(r"^\s*Latency\s+(\S+)", out, re.M)
    latency = {"mean": _wrk_time(lat.group(1)) if lat else None}
    for p in PERCENTILES:
        d = re.search(r"^\s*%s%%\s+(\S+)" % p[1:], out, re.M)
        latency[p] = _wrk_time(d.group(1)) if d else None
    return {"requests": int(m.group(1)), "seconds": _wrk_time(m.group(2)) / 1e6, "errors": wrk_errors(out),
            "latency_us": latency}


def wrk(ns, url, seconds, connections, close, wrap=None):
    """wrk from namespace ns: `connections` connections on up to 2 threads,
    keep-alive or a connection per request; wrap(argv) -> (argv, env) runs
    it otherwise (under `shardsock run`)."""
    hdr = ["-H", "Connection: close"] if close else []
    argv = ["wrk", "--latency", "-t%d" % min(2, connections), "-c%d" % connections, "-d%ds" % seconds, *hdr, url]
    argv, env = wrap(argv) if wrap else (argv, None)
    r = ns.run(argv, timeout=seconds + SLACK_S, env=env)
    try:
        res = parse_wrk(r.stdout)
    except ValueError:
        raise GroupError("wrk against %s failed (exit %d): %s" % (url, r.returncode, (r.stderr or r.stdout)[-500:]))
    res["connections_per_s"] = res["requests"] / res["seconds"] if close else None
    res["latency_source"] = "wrk --latency"
    return res


def echo_bench(ns, host, seconds, args):
    """build/echo_bench from namespace ns; args are its options (--mode,
    --conns, --size, --port).  Returns its JSON, with ``requests`` = round
    trips (rr) or 1460-byte segments (bulk) and, for rr, the mean latency
    the closed loop implies."""
    r = ns.run([os.path.join(BUILD, "echo_bench"), "--host", host, "--seconds", str(seconds), *args],
               timeout=seconds + SLACK_S)
    try:
        res = json.loads(r.stdout)
    except ValueError:
        res = {"ok": False, "error": "exit %d: %s" % (r.returncode, r.stderr[-500:])}
    if not res.get("ok"):
        raise GroupError("echo_bench %s against %s failed: %s" % (" ".join(args), host, res.get("error")))
    rr = res["mode"] == "rr"
    res["requests"] = res["round_trips"] if rr else res["bytes"] / 1460
    res["errors"] = 0
    res["connections_per_s"] = None
    mean = res["conns"] * res["seconds"] / res["round_trips"] * 1e6 if rr and res["round_trips"] else None
    res["latency_us"] = dict({"mean": mean}, **{p: None for p in PERCENTILES})
    res["latency_source"] = "connections / round trips per second (echo_bench measures no percentiles)"
    return res


# --- servers -------------------------------------------------------------------

class Server:
    """A running server side: where its clients run (``client``, a Netns),
    what they connect to (``target``: an address for echo_bench, a URL for
    wrk), and its processes (``pids()``)."""

    def __init__(self, client, target, pids, wrap=None):
        self.client, self.target, self.pids, self.wrap = client, target, pids, wrap


def _checked(ns, argv, what, timeout=SLACK_S, **kw):
    r = ns.run(argv, timeout=timeout, **kw)
    if r.returncode:
        raise GroupError("%s failed (exit %d): %s" % (what, r.returncode, (r.stderr or r.stdout).strip()[-800:]))
    return r


@contextlib.contextmanager
def _veth_pair(**kw):
    """topology.VethPair, deleted on the way out."""
    with Cleanup() as undo:
        with SIGNALS.deferred():
            pair = _topology().VethPair(**kw)
            undo.add(pair.delete)
        yield pair


@contextlib.contextmanager
def _netns():
    with Cleanup() as undo:
        with SIGNALS.deferred():
            ns = _topology().Netns()
            undo.add(ns.delete)
        yield ns


@contextlib.contextmanager
def _run_dir():
    """A run directory of our own for the groups, removed after."""
    with Cleanup() as undo:
        with SIGNALS.deferred():
            d = tempfile.mkdtemp(prefix="shardsock-bench-", dir="/run")
            undo.add(shutil.rmtree, d, True)
        yield d


_groups = iter(range(1 << 30))


def _group_down(ns, args):
    """`shardsock down`; if that fails for a group that is up, stop what
    status names, by pid (the supervisor first, or it would restart the
    instances)."""
    r = ns.shardsock("status", *args, "--json")
    try:
        st = json.loads(r.stdout)
    except ValueError:
        st = None  # never came up: down only sweeps what a failed up left
    r = ns.shardsock("down", *args)
    if r.returncode and st:
        for pid in [st.get("supervisor", {}).get("pid")] + [i.get("pid") for i in st["instances"]]:
            if pid:
                _topology().stop_pids([pid])
        raise RuntimeError("shardsock down failed: %s" % r.stderr.strip()[-300:])


@contextlib.contextmanager
def group(ns, *up_args):
    """An instance group in namespace ns (`shardsock up` there, in a run
    directory of its own), taken down after; yields the topology.Group and
    the instances' pids."""
    topo = _topology()
    with _run_dir() as run_dir, Cleanup() as undo:
        name = "bench%d_%d" % (os.getpid(), next(_groups))
        with SIGNALS.deferred():
            # registered first: an up cut short leaves what down removes
            undo.add(_group_down, ns, ["--group", name, "--run-dir", run_dir])
            try:
                g = topo.Group(ns, name, run_dir, *up_args)
            except AssertionError as e:  # Group asserts that up succeeded; its message is up's stderr
                raise GroupError("shardsock up failed: %s" % str(e).strip()[-800:])
        pids = [i["pid"] for i in g.status()["instances"] if i.get("pid")]
        yield g, pids


NGINX_CONF = """worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    server {{ listen 8080; root {d}/www; }}
}}
"""


def _nginx_prefix():
    """A prefix with the config and www/64.bin (readable by the workers,
    which run as nobody)."""
    d = tempfile.mkdtemp(prefix="ss-bench-nginx-")
    os.chmod(d, 0o755)
    os.makedirs(os.path.join(d, "www"))
    os.makedirs(os.path.join(d, "tmp"))
    with open(os.path.join(d, "www", "64.bin"), "wb") as f:
        f.write(b"x" * 64)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(d=d))
    return d


def nginx_pids(d):
    """The master (from its pid file) and its workers."""
    try:
        with open(os.path.join(d, "nginx.pid")) as f:
            master = int(f.read())
        with open("/proc/%d/task/%d/children" % (master, master)) as f:
            return [master] + [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _stop_nginx(d, started):
    """By pid.  The command that starts nginx returns when it has forked the
    master, which writes the pid file a moment later: a stop right after a
    start waits for it (up to 5 s)."""
    deadline = time.monotonic() + (5 if started else 0)
    while not nginx_pids(d) and time.monotonic() < deadline:
        time.sleep(0.05)
    _topology().stop_pids(nginx_pids(d))


@contextlib.contextmanager
def nginx_server(start):
    """nginx with a prefix of its own, started by start(prefix) (it
    daemonizes), answering on port 8080; stopped by pid and its prefix
    removed after."""
    with Cleanup() as undo:
        with SIGNALS.deferred():
            d = _nginx_prefix()
            undo.add(shutil.rmtree, d, True)
            started = []
            undo.add(lambda: _stop_nginx(d, bool(started)))
            start(d)
            started.append(True)
        yield d


def wait_serving(ns, url, d):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = ns.run(["curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", url], timeout=10)
        if r.stdout == "200":
            return
        time.sleep(0.1)
    log = ""
    with contextlib.suppress(OSError), open(os.path.join(d, "error.log")) as f:
        log = f.read()[-500:]
    raise GroupError("nginx does not serve %s after 10 s%s" % (url, "; its error log: " + log if log else ""))


@contextlib.contextmanager
def kernel_nginx():
    """nginx on the kernel's TCP in one namespace, the client across a veth
    pair in another."""
    with _veth_pair(stack_kernel_address="198.18.1.2/24") as pair, \
            nginx_server(lambda d: _checked(pair.stack, [NGINX, "-c", d + "/nginx.conf", "-p", d], "nginx")) as d:
        url = "http://198.18.1.2:8080/64.bin"
        wait_serving(pair.client, url, d)
        yield Server(pair.client, url, lambda: nginx_pids(d))


@contextlib.contextmanager
def shardsock_nginx():
    """nginx under `shardsock run` (one worker per instance, listen spawn),
    instances on a tap device; the client on the tap's kernel side."""
    with _netns() as ns, group(ns) as (g, instances):
        with nginx_server(lambda d: _checked(ns, g.command(NGINX, "-c", d + "/nginx.conf", "-p", d),
                                       "nginx under shardsock run", env=g.env())) as d:
            url = "http://198.18.0.2:8080/64.bin"
            wait_serving(ns, url, d)
            yield Server(ns, url, lambda: nginx_pids(d) + instances)


@contextlib.contextmanager
def kernel_echo():
    """build/echo_server (epoll, one SO_REUSEPORT thread per core) on the
    kernel's TCP, the client across a veth pair."""
    with _veth_pair(stack_kernel_address="198.18.1.2/24") as pair, Cleanup() as undo:
        with SIGNALS.deferred():
            # `ip netns exec` execs: the pid is echo_server's
            p = subprocess.Popen(["ip", "netns", "exec", pair.stack.name, os.path.join(BUILD, "echo_server")],
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            undo.add(p.wait, 10)
            undo.add(_topology().stop_pids, [p.pid])
            undo.add(p.stdout.close)
        ready = select.select([p.stdout], [], [], 10)[0] and p.stdout.readline().strip() == "ready"
        if not ready:
            raise GroupError("build/echo_server did not say ready within 10 s (exit status %s); run make build"
                             % p.poll())
        time.sleep(0.2)
        yield Server(pair.client, "198.18.1.2", lambda: [p.pid])


@contextlib.contextmanager
def shardsock_echo(backend="tap"):
    """Instances with their built-in echo (port 7) and discard (port 9)
    services: on a tap device (the client on its kernel side), or for
    afpacket/afxdp on a veth pair to a client namespace."""
    with contextlib.ExitStack() as stack:
        if backend == "tap":
            stack_ns = client = stack.enter_context(_netns())
            host, extra = "198.18.0.2", []
        else:
            pair = stack.enter_context(_veth_pair(queues=os.cpu_count() if backend == "afxdp" else None))
            stack_ns, client, host = pair.stack, pair.client, "198.18.1.2"
            extra = ["--backend", backend, "--interface", "vs", "--address", "198.18.1.2/24"]
        _, instances = stack.enter_context(group(stack_ns, *extra, "--echo", "7", "--discard", "9"))
        yield Server(client, host, lambda: instances)


@contextlib.contextmanager
def kernel_loopback():
    """nginx and its client in one namespace, over 127.0.0.1, on the
    kernel's TCP."""
    with _netns() as ns, nginx_server(lambda d: _checked(ns, [NGINX, "-c", d + "/nginx.conf", "-p", d],
                                                         "nginx")) as d:
        url = "http://127.0.0.1:8080/64.bin"
        wait_serving(ns, url, d)
        yield Server(ns, url, lambda: nginx_pids(d))


@contextlib.contextmanager
def shardsock_loopback():
    """nginx and its client both under `shardsock run`, over 127.0.0.1: both
    ends of every connection in the stack (the instances are counted as the
    server's, though they serve the client's sockets too: compare the
    machine's CPU)."""
    with _netns() as ns, group(ns) as (g, instances):
        with nginx_server(lambda d: _checked(ns, g.command(NGINX, "-c", d + "/nginx.conf", "-p", d),
                                       "nginx under shardsock run", env=g.env())) as d:
            url = "http://127.0.0.1:8080/64.bin"
            wait_serving(ns, url, d)
            yield Server(ns, url, lambda: nginx_pids(d) + instances, wrap=lambda argv: (g.command(*argv), g.env()))


SERVERS = {("nginx", "kernel"): kernel_nginx, ("nginx", "shardsock"): shardsock_nginx,
           ("echo", "kernel"): kernel_echo, ("echo", "shardsock"): shardsock_echo,
           ("loopback", "kernel"): kernel_loopback, ("loopback", "shardsock"): shardsock_loopback}


def load_of(scenario, connections, seconds):
    """The client run of a scenario: server -> result dict."""
    _, kind, default_conns, _ = SCENARIOS[scenario]
    conns = connections or default_conns
    if kind == "rr":
        return lambda srv: echo_bench(srv.client, srv.target, seconds,
                                      ["--mode", "rr", "--conns", str(conns), "--size", "64"])
    return lambda srv: wrk(srv.client, srv.target, seconds, conns, kind == "close", srv.wrap)


# --- the run -------------------------------------------------------------------

class Progress:
    """A one-line bar on a terminal, redrawn with \\r a few times a second by a
    thread (the clients block for whole seconds): the finished measurements
    plus the elapsed share of the current one."""

    def __init__(self, total, expected_s, stream=None, enabled=True):
        self.total, self.expected_s = total, expected_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done, self.label, self.started = 0, "", time.monotonic()
        self._shown = 0.0  # never backwards: a set-up longer than guessed must not undo the bar
        self._stop = threading.Event()
        self._thread = None

    def line(self, width=30):
        part = min((time.monotonic() - self.started) / self.expected_s, 0.99) if self.done < self.total else 0
        frac = self._shown = max(min((self.done + part) / self.total, 1.0), self._shown)
        fill = int(frac * width)
        return "[%s%s] %3d%% %s" % ("#" * fill, "." * (width - fill), frac * 100, self.label)

    def draw(self):
        cols = shutil.get_terminal_size((80, 24)).columns
        self.stream.write("\r" + self.line()[:cols - 1].ljust(cols - 1))
        self.stream.flush()

    def step(self, label, timed=True):
        """The next measurement (timed) or set-up starts."""
        self.label = label
        if timed:
            self.started = time.monotonic()

    def advance(self):
        self.done += 1

    def __enter__(self):
        if self.enabled:
            def loop():
                while not self._stop.wait(0.25):
                    self.draw()
            self._thread = threading.Thread(target=loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread:
            self._stop.set()
            self._thread.join()
            cols = shutil.get_terminal_size((80, 24)).columns
            self.stream.write("\r" + " " * (cols - 1) + "\r")
            self.stream.flush()


def run_rounds(plan, rounds, seconds, progress=None):
    """plan: [(side, server_factory, [(scenario, load)])], a load taking a
    Server.  In every round each entry's server comes up, its scenarios run
    in order, and it goes down before the next: the sides take turns.
    Returns {scenario: {side: [one result per round]}}."""
    out = {}
    for rnd in range(rounds):
        for side, factory, loads in plan:
            if progress:
                progress.step("round %d/%d: starting %s for %s" % (rnd + 1, rounds, side, loads[0][0]), timed=False)
            with factory() as srv:
                for scenario, load in loads:
                    if progress:
                        progress.step("round %d/%d: %s on %s" % (rnd + 1, rounds, scenario, side))
                    res = measure(lambda: load(srv), srv.pids)
                    out.setdefault(scenario, {}).setdefault(side, []).append(res)
                    if progress:
                        progress.advance()
    return out


def _round_floats(d):
    """Microseconds to 0.001, rates to 0.1: more digits than that are noise
    (and JSON readers see the same numbers the ratios were made of)."""
    for k, v in d.items():
        if isinstance(v, dict):
            _round_floats(v)
        elif isinstance(v, list):
            for x in v:
                _round_floats(x)
        elif isinstance(v, float):
            d[k] = round(v, 1 if k.endswith("_per_s") else 3)


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarize(scenario, connections, per_side):
    """The medians over rounds of one scenario, per side, and the ratios."""
    row = {"name": scenario, "description": SCENARIOS[scenario][3],
           "connections": connections or SCENARIOS[scenario][2]}
    for side in SIDES:
        runs = per_side[side]
        row[side] = {
            "requests_per_s": _median([r["requests"] / r["seconds"] for r in runs]),
            "connections_per_s": _median([r["connections_per_s"] for r in runs]),
            "latency_us": {k: _median([r["latency_us"][k] for r in runs]) for k in ("mean",) + PERCENTILES},
            "latency_source": runs[0]["latency_source"],
            "cpu_us_per_request": _median([r["cpu_us_per_request"] for r in runs]),
            "machine_cpu_us_per_request": _median([r["machine_cpu_us_per_request"] for r in runs]),
            "ctx_switches_per_request": _median([r["ctx_switches_per_request"] for r in runs]),
            "syscalls_per_request": _median([r["syscalls_per_request"] for r in runs]),
            "errors": sum(r["errors"] for r in runs),
            "per_round": [{"requests": r["requests"], "seconds": r["seconds"],
                           "requests_per_s": r["requests"] / r["seconds"], "errors": r["errors"],
                           "latency_us": r["latency_us"], "cpu_us_per_request": r["cpu_us_per_request"],
                           "machine_cpu_us_per_request": r["machine_cpu_us_per_request"]} for r in runs],
        }
    for side in SIDES:
        _round_floats(row[side])
    row["ratio"] = _ratio(row["shardsock"]["requests_per_s"], row["kernel"]["requests_per_s"])
    row["cpu_ratio"] = _ratio(row["shardsock"]["cpu_us_per_request"], row["kernel"]["cpu_us_per_request"])
    return row


# --- output ----------------------------------------------------------------------

COLUMNS = [("requests/s", lambda s: s["requests_per_s"], "{:,.0f}"),
           ("conns/s", lambda s: s["connections_per_s"], "{:,.0f}"),
           ("mean us", lambda s: s["latency_us"]["mean"], "{:,.0f}"),
           ("p50 us", lambda s: s["latency_us"]["p50"], "{:,.0f}"),
           ("p90 us", lambda s: s["latency_us"]["p90"], "{:,.0f}"),
           ("p99 us", lambda s: s["latency_us"]["p99"], "{:,.0f}"),
           ("CPU us/req", lambda s: s["cpu_us_per_request"], "{:.1f}"),
           ("machine us/req", lambda s: s["machine_cpu_us_per_request"], "{:.1f}"),
           ("ctxsw/req", lambda s: s["ctx_switches_per_request"], "{:.2f}"),
           ("syscalls/req", lambda s: s["syscalls_per_request"], "{:.2f}")]


def table(result):
    """The human report: per scenario a kernel row, a shardsock row and a
    ratio row (shardsock / kernel for every column both sides measured)."""
    r = result["rounds"]
    lines = ["shardsock bench: %d round%s of %d s per scenario and side, sides in turn%s; %d cores" % (
        r, "s" if r > 1 else "", result["seconds"], ", medians" if r > 1 else "", result["cores"])]
    widths = [max(len(c[0]), 9) for c in COLUMNS]
    lines.append("%-16s %-9s" % ("scenario", "") + "".join("  %*s" % (w, c[0]) for w, c in zip(widths, COLUMNS)))
    notes = []
    for row in result["scenarios"]:
        for i, side in enumerate(SIDES + ("ratio",)):
            cells = []
            for _, get, fmt in COLUMNS:
                if side == "ratio":
                    v = _ratio(get(row["shardsock"]), get(row["kernel"]))
                    cells.append("%.2fx" % v if v is not None else "")
                else:
                    v = get(row[side])
                    cells.append(fmt.format(v) if v is not None else "-")
            lines.append("%-16s %-9s" % (row["name"] if i == 0 else "", side) +
                         "".join("  %*s" % (w, c) for w, c in zip(widths, cells)))
        if row["kernel"]["latency_us"]["p50"] is None:
            notes.append("%s: latency percentiles not measured; mean = %s" % (
                row["name"], row["kernel"]["latency_source"]))
    notes.append("ratio: shardsock / kernel.  CPU us/req: the server side's processes (nginx or echo_server; "
                 "plus the instances for shardsock); machine: all busy CPU, client included; ctxsw and syscalls: "
                 "the server side's context switches and system calls per request (a connection, with close)")
    if any(row["name"].startswith("loopback") for row in result["scenarios"]):
        notes.append("loopback: the client is under shardsock run too, and the instances serve both ends: "
                     "compare machine us/req")
    lines += ["  " + n for n in notes]
    if result["chart"]:
        lines.append("chart: %s" % result["chart"])
    return "\n".join(lines)


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise GroupError("the chart needs matplotlib, which is not installed: run make setup "
                         "(or pip install matplotlib), or pass --no-chart")
    matplotlib.use("Agg")  # files only: no display on a server


def chart(result, path):
    """Grouped bars, kernel and shardsock per scenario: requests/s (with the
    ratio over each pair) and server CPU per request."""
    _require_matplotlib()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    rows = result["scenarios"]
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    w = 0.38
    colors = {"kernel": "#7f7f7f", "shardsock": "#1f77b4"}
    for ax, key, title in ((axes[0], "requests_per_s", "requests/s (round trips/s for echo)"),
                           (axes[1], "cpu_us_per_request", "server CPU us per request")):
        for j, side in enumerate(SIDES):
            xs = [i + (j - 0.5) * w for i in range(len(rows))]
            ax.bar(xs, [r[side][key] or 0 for r in rows], w, label=side, color=colors[side])
        for i, r in enumerate(rows):
            ratio = _ratio(r["shardsock"][key], r["kernel"][key])
            top = max(r["kernel"][key] or 0, r["shardsock"][key] or 0)
            if ratio is not None:
                ax.annotate("%.2fx" % ratio, (i, top), ha="center", va="bottom", fontsize=9,
                            xytext=(0, 3), textcoords="offset points")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names)
        ax.set_title(title)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "{:,.0f}".format(v)))
        ax.margins(y=0.15)
        ax.legend()
    fig.suptitle("shardsock bench: kernel vs shardsock, %d round%s of %d s%s, %d cores" % (
        result["rounds"], "s" if result["rounds"] > 1 else "", result["seconds"],
        ", medians" if result["rounds"] > 1 else "", result["cores"]))
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as e:
        raise GroupError("cannot write the chart to %s: %s" % (path, e.strerror or e))
    finally:
        plt.close(fig)


# --- the command -----------------------------------------------------------------

def _scenario_list(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    for s in names:
        if s not in SCENARIOS:
            raise argparse.ArgumentTypeError(
                "unknown scenario %r; choose from %s" % (s, ", ".join(SCENARIOS)))
    return names


def _positive(text):
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError("%r is not a positive whole number" % text)
    return v


def add_arguments(p):
    p.add_argument("--scenario", action="append", type=_scenario_list, metavar="NAME[,NAME]",
                   help="%s (repeatable or a comma list; default: all)" % ", ".join(SCENARIOS))
    p.add_argument("--seconds", type=_positive, default=5, help="length of each measurement (default: 5)")
    p.add_argument("--rounds", type=_positive, default=3,
                   help="rounds, the sides taking turns in each; the numbers are medians (default: 3)")
    p.add_argument("--connections", type=_positive,
                   help="client connections for every scenario (default: 64 keep-alive, 32 close, 64 echo)")
    p.add_argument("--chart", default="shardsock-bench.png", metavar="PATH",
                   help="where to write the PNG chart (default: ./shardsock-bench.png)")
    p.add_argument("--no-chart", dest="no_chart", action="store_true", help="write no chart")
    p.add_argument("--json", action="store_true", help="print the results as JSON (keys: see the module's doc)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar (it is drawn on stderr when stderr is a terminal)")


def preflight(scenarios, chart_path):
    """What a run needs, checked before anything is made."""
    if os.geteuid() != 0:
        raise GroupError("needs root: it creates network namespaces, veth pairs and a tap device, and starts "
                         "nginx and instances in them; run it as root (sudo shardsock bench)")
    need = ["ip", "ethtool"]
    files = [os.path.join(BUILD, "shardsockd")]
    if any(SCENARIOS[s][0] in ("nginx", "loopback") for s in scenarios):
        need += ["wrk", "curl"]
        files += [NGINX, os.path.join(BUILD, "libshardsock.so")]
    if "echo" in scenarios:
        files += [os.path.join(BUILD, "echo_server"), os.path.join(BUILD, "echo_bench")]
    missing = [c for c in need if not shutil.which(c)] + [f for f in files if not os.path.exists(f)]
    if missing:
        raise GroupError("missing %s: run make setup and make build" % ", ".join(missing))
    if chart_path:
        _require_matplotlib()
        # known before minutes of measuring, not after
        folder = os.path.dirname(chart_path)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise GroupError("cannot write the chart to %s: %s is not a writable directory; pass --chart PATH "
                             "or --no-chart" % (chart_path, folder))


def bench(scenarios, rounds, seconds, connections=None, progress=True):
    """Runs the scenarios; returns the result without the chart."""
    plan = []
    for server in ("nginx", "echo", "loopback"):
        mine = [s for s in scenarios if SCENARIOS[s][0] == server]
        for side in SIDES if mine else ():
            plan.append((side, SERVERS[(server, side)], [(s, load_of(s, connections, seconds)) for s in mine]))
    total = rounds * sum(len(loads) for _, _, loads in plan)
    with Progress(total, seconds + 1.5, enabled=progress) as bar:
        runs = run_rounds(plan, rounds, seconds, bar)
    return {"rounds": rounds, "seconds": seconds, "cores": os.cpu_count(), "chart": None,
            "scenarios": [summarize(s, connections, runs[s]) for s in scenarios]}


def main(args):
    scenarios = list(dict.fromkeys(s for names in (args.scenario or [list(SCENARIOS)]) for s in names))
    chart_path = None if args.no_chart else os.path.abspath(args.chart)
    preflight(scenarios, chart_path)
    try:
        with SIGNALS.installed():
            result = bench(scenarios, args.rounds, args.seconds, args.connections,
                           progress=sys.stderr.isatty() and not args.no_progress)
            if chart_path:
                chart(result, chart_path)
                result["chart"] = chart_path
    except Interrupted as e:
        print("shardsock bench: interrupted by %s; everything it made is removed"
              % signal.Signals(e.signum).name, file=sys.stderr)
        return 128 + e.signum
    except subprocess.TimeoutExpired as e:
        raise GroupError("%s did not finish within %.0f s: the machine may be overloaded; try fewer --seconds, "
                         "or look for a stuck process" % (" ".join(map(str, e.cmd)), e.timeout))
    except subprocess.CalledProcessError as e:
        raise GroupError("%s failed (exit %d): %s" % (" ".join(map(str, e.cmd)), e.returncode,
                                                      (e.stderr or "").strip()[-500:]))
    print(json.dumps(result, indent=2) if args.json else table(result))
    errors = [(r["name"], side, r[side]["errors"]) for r in result["scenarios"] for side in SIDES
              if r[side]["errors"]]
    for name, side, n in errors:
        print("shardsock bench: %s on %s: %d failed requests (socket errors or non-2xx answers); the rates "
              "count only completed requests" % (name, side, n), file=sys.stderr)
    return 1 if errors else 0
