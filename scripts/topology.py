"""Network namespaces and veth pairs for tests and benchmarks that need a
real kernel peer.

A caller creates a namespace, runs ``shardsock`` and its clients inside it
(``ip netns exec``), and removes everything it made, whatever happens."""
import itertools
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_seq = itertools.count()


class Netns:
    def __init__(self):
        self.name = "sstest-%d-%d" % (os.getpid(), next(_seq))
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"], check=True)

    def run(self, argv, timeout=120, check=False, text=True, **kw):
        return subprocess.run(["ip", "netns", "exec", self.name] + list(argv), capture_output=True, text=text,
                              timeout=timeout, check=check, **kw)

    def shardsock(self, *args, timeout=60):
        env = dict(os.environ, PYTHONPATH=ROOT)
        return self.run([sys.executable, "-m", "preload.cli"] + list(args), timeout=timeout, env=env)

    def python(self, code, *args, timeout=120):
        """Runs a Python client in the namespace; it prints one JSON object."""
        r = self.run([sys.executable, "-c", code] + [str(a) for a in args], timeout=timeout)
        assert r.returncode == 0, "client failed: %s %s" % (r.stdout, r.stderr[-2000:])
        return json.loads(r.stdout.strip().splitlines()[-1])

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def descendants(pid):
    """pid's children, grandchildren...: from /proc, by pid."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = [int(c) for c in f.read().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in descendants(k)]


def _alive(pid):
    """Running, not a zombie waiting for its parent."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stop_pids(pids, grace=10):
    """Stops the processes we started and their descendants, by pid:
    SIGTERM, up to grace seconds, then SIGKILL."""
    pids = [p for p in pids if p]
    pids += [d for p in list(pids) for d in descendants(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)


class Group:
    """A group of instances on a tap device in the namespace ns (one per
    core), with what runs programs under the library there and reads the
    instances' counters."""

    def __init__(self, ns, name, run_dir, *up_args):
        self.ns = ns
        self.name = name
        self.args = ["--group", name, "--run-dir", run_dir]
        r = ns.shardsock("up", *self.args, *up_args)
        assert r.returncode == 0, r.stderr

    def command(self, *cmd, verbose=False, run_args=()):
        """The command line that runs cmd under the library."""
        return [sys.executable, "-m", "preload.cli", "run", *self.args, *(["--verbose"] if verbose else []),
                *run_args, "--", *cmd]

    def env(self, extra=None):
        return dict(os.environ, PYTHONPATH=ROOT, **(extra or {}))

    def run(self, *cmd, timeout=120, verbose=False, env=None, run_args=()):
        """A program under the library; returns the CompletedProcess."""
        return self.ns.run(self.command(*cmd, verbose=verbose, run_args=run_args), timeout=timeout,
                           env=self.env(env))

    def popen(self, *cmd, run_args=(), **kw):
        """A program under the library, left running (stop it by its pid)."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns.name, *self.command(*cmd, run_args=run_args)],
                                env=self.env(kw.pop("env", None)), **kw)

    def status(self):
        return json.loads(self.ns.shardsock("status", *self.args, "--json").stdout)

    def counters(self):
        r = self.ns.shardsock("stat", *self.args, "--json")
        return [i["counters"] for i in json.loads(r.stdout)["instances"]]

    def total(self, name):
        return sum(c[name] for c in self.counters())

    def down(self):
        return self.ns.shardsock("down", *self.args)


def _veth(a, a_ns, b, b_ns, queues=None):
    """A veth pair a (in namespace a_ns) -- b (in b_ns), IPv4 only, with the
    kernel's offloads off as on a real wire: MTU-sized frames with complete
    checksums cross it."""
    q = ["numtxqueues", str(queues), "numrxqueues", str(queues)] if queues else []
    subprocess.run(["ip", "link", "add", a, *q, "netns", a_ns.name, "type", "veth", "peer", "name",
                    b, *q, "netns", b_ns.name], check=True)
    for ns, dev in ((a_ns, a), (b_ns, b)):
        # no IPv6 duplicate-address checks or multicast reports that a frame
        # count would have to explain
        ns.run(["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % dev], check=True)
        ns.run(["ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off"], check=True)


class VethPair:
    """Two namespaces joined by a veth pair: ``client`` (the kernel peer,
    addressed 198.18.1.1/24 on ``vc``) and ``stack`` (``vs``, no kernel
    address: the stack's backend owns it).  ``queues`` > 1 gives both ends
    that many transmit and receive queues (an AF_XDP socket per queue;
    native XDP on veth needs at least as many receive queues as the peer has
    transmit queues)."""

    def __init__(self, stack_kernel_address=None, queues=None):
        self.client, self.stack = Netns(), Netns()
        _veth("vc", self.client, "vs", self.stack, queues)
        self.client.run(["ip", "addr", "add", "198.18.1.1/24", "dev", "vc"], check=True)
        if stack_kernel_address:
            # the kernel itself serves this side (the baseline of a benchmark)
            self.stack.run(["ip", "addr", "add", stack_kernel_address, "dev", "vs"], check=True)
        self.client.run(["ip", "link", "set", "vc", "up"], check=True)
        self.stack.run(["ip", "link", "set", "vs", "up"], check=True)

    def delete(self):
        self.client.delete()
        self.stack.delete()


LINKEM = os.path.join(ROOT, "build", "linkem")


class ImpairedPath:
    """``client`` (vc, 198.18.1.1/24) -- ``mid`` -- ``stack`` (vs): the mid
    namespace bridges its two veth ends (ma, mb) through linkem, a netem in
    user space (apps/linkem.c; this kernel has no netem), which delays,
    reorders, loses and duplicates frames in both directions.

    ``routed``: the stack namespace's kernel holds 198.18.1.254 on vs and
    routes to 198.18.0.0/24 (a tap device there), so a tap group is reached
    across the impaired link; the stack then needs --gateway 198.18.0.1.
    ``impair`` are linkem's options: delay_ms=5, loss=0.02, ..."""

    def __init__(self, queues=None, routed=False, **impair):
        self.client, self.mid, self.stack = Netns(), Netns(), Netns()
        self.link = None
        try:
            _veth("vc", self.client, "ma", self.mid, queues)
            _veth("mb", self.mid, "vs", self.stack, queues)
            self.client.run(["ip", "addr", "add", "198.18.1.1/24", "dev", "vc"], check=True)
            for ns, dev in ((self.client, "vc"), (self.mid, "ma"), (self.mid, "mb"), (self.stack, "vs")):
                ns.run(["ip", "link", "set", "dev", dev, "up"], check=True)
            if routed:
                self.stack.run(["ip", "addr", "add", "198.18.1.254/24", "dev", "vs"], check=True)
                self.stack.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
                self.client.run(["ip", "route", "add", "198.18.0.0/24", "via", "198.18.1.254"], check=True)
            args = []
            for k, v in impair.items():
                args += ["--" + k.replace("_", "-"), str(v)]
            self.link = subprocess.Popen(["ip", "netns", "exec", self.mid.name, LINKEM, "ma", "mb", *args],
                                         stdout=subprocess.PIPE, text=True)
            if self.link.stdout.readline().strip() != "ready":
                raise RuntimeError("linkem did not start (is build/linkem built?)")
        except BaseException:
            self.delete()
            raise

    def stop_link(self):
        """Stops linkem (by its pid) and returns what it did to each
        direction: {"a_to_b": {"frames", "lost", "duplicated", ...},
        "b_to_a": {...}}; a_to_b is client to stack."""
        if self.link is None:
            return None
        self.link.terminate()
        out, _ = self.link.communicate(timeout=10)
        self.link = None
        return json.loads(out.strip().splitlines()[-1])

    def delete(self):
        if self.link is not None:
            self.link.kill()
            self.link.wait()
            self.link = None
        for ns in (self.client, self.mid, self.stack):
            ns.delete()


# A kernel client for an echo service: sends N random bytes to ADDR port 7,
# half-closes, reads everything back; prints {"sent", "received", "same"}.
# Run as: python3 -c ECHO ADDR N
ECHO = r"""
import hashlib, json, os, socket, sys, threading
addr, n = sys.argv[1], int(sys.argv[2])
data = os.urandom(n)
s = socket.create_connection((addr, 7), timeout=30)
got = bytearray()
def reader():
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        got.extend(b)
t = threading.Thread(target=reader)
t.start()
s.sendall(data)
s.shutdown(socket.SHUT_WR)   # half-close: the service finishes echoing, then closes
t.join(60)
s.close()
print(json.dumps({"sent": n, "received": len(got),
                  "same": hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()}))
"""
