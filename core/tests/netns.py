"""Network namespaces for tests that need a real kernel peer.

A test creates a namespace, runs ``shardsock`` and its clients inside it
(``ip netns exec``), and removes everything it made, whatever happens."""
import itertools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
