"""Network namespaces and veth pairs for tests and benchmarks that need a
real kernel peer.

A caller creates a namespace, runs ``shardsock`` and its clients inside it
(``ip netns exec``), and removes everything it made, whatever happens."""
import itertools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_seq = itertools.count()


class Netns:
    def __init__(self):
        self.name = "sstest-%d-%d" % (os.getpid(), next(_seq))
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"], check=True)

    def run(self, argv, timeout=120, check=False, **kw):
        return subprocess.run(["ip", "netns", "exec", self.name] + list(argv), capture_output=True, text=True,
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


class VethPair:
    """Two namespaces joined by a veth pair: ``client`` (the kernel peer,
    addressed 198.18.1.1/24 on ``vc``) and ``stack`` (``vs``, no kernel
    address: the stack's backend owns it).  Offloads are off on the kernel's
    side, as on a real wire: the stack sees MTU-sized frames with complete
    checksums.  ``queues`` > 1 gives both ends that many transmit and receive
    queues (an AF_XDP socket per queue; native XDP on veth needs at least
    as many receive queues as the peer has transmit queues)."""

    def __init__(self, stack_kernel_address=None, queues=None):
        self.client, self.stack = Netns(), Netns()
        q = ["numtxqueues", str(queues), "numrxqueues", str(queues)] if queues else []
        subprocess.run(["ip", "link", "add", "vc", *q, "netns", self.client.name, "type", "veth", "peer", "name",
                        "vs", *q, "netns", self.stack.name], check=True)
        # IPv4 only on the link: no IPv6 duplicate-address checks or
        # multicast reports that a frame count would have to explain
        self.client.run(["sysctl", "-qw", "net.ipv6.conf.vc.disable_ipv6=1"], check=True)
        self.stack.run(["sysctl", "-qw", "net.ipv6.conf.vs.disable_ipv6=1"], check=True)
        self.client.run(["ip", "addr", "add", "198.18.1.1/24", "dev", "vc"], check=True)
        self.client.run(["ethtool", "-K", "vc", "tx", "off", "tso", "off", "gso", "off", "gro", "off"], check=True)
        self.stack.run(["ethtool", "-K", "vs", "tx", "off", "tso", "off", "gso", "off", "gro", "off"], check=True)
        if stack_kernel_address:
            # the kernel itself serves this side (the baseline of a benchmark)
            self.stack.run(["ip", "addr", "add", stack_kernel_address, "dev", "vs"], check=True)
        self.client.run(["ip", "link", "set", "vc", "up"], check=True)
        self.stack.run(["ip", "link", "set", "vs", "up"], check=True)

    def delete(self):
        self.client.delete()
        self.stack.delete()


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
