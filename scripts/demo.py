#!/usr/bin/env python3
"""`make demo`: what runs today, end to end, in a network namespace it makes
and removes.

1. Two engines move 100 MB each way through a simulated link that loses,
   reorders and duplicates 5% of frames (build/pair).
2. `shardsock up` starts one pinned instance per core on a tap device; the
   kernel on the host side pings the stack and sends 10 MB through its echo
   service; `status` and `stat` show the instances; `shardsock down` leaves
   nothing behind.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from topology import Netns  # noqa: E402

ECHO = r"""
import hashlib, os, socket, threading, time
data = os.urandom(10_000_000)
s = socket.create_connection(("198.18.0.2", 7), timeout=30)
got = bytearray()
def reader():
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        got.extend(b)
t = threading.Thread(target=reader)
t.start()
t0 = time.time()
s.sendall(data)
s.shutdown(socket.SHUT_WR)
t.join(60)
print("echo: 10 MB through the stack and back in %.2f s, byte-exact: %s"
      % (time.time() - t0, hashlib.sha256(got).digest() == hashlib.sha256(data).digest()))
"""


def step(title):
    print("\n== %s" % title, flush=True)


def main():
    if os.geteuid() != 0:
        sys.exit("demo: needs root (a namespace and a tap device)")
    step("two engines, 100 MB each way over a link losing, reordering and duplicating 5% of frames")
    r = subprocess.run([os.path.join(ROOT, "build", "pair"), "--bytes", "100000000", "--loss", "0.05",
                        "--reorder", "0.05", "--dup", "0.05", "--seed", "1"], capture_output=True, text=True)
    out = json.loads(r.stdout)
    print("byte-exact: %s, %d frames, %d lost, %d retransmitted, %.2f s" % (
        out["ok"], out["frames"], out["lost"], out["retransmits"], out["wall_s"]))
    ns = Netns()
    args = ["--group", "demo", "--run-dir", "/run/shardsock-demo"]
    try:
        step("shardsock up --echo 7 --discard 9")
        r = ns.shardsock("up", *args, "--echo", "7", "--discard", "9")
        print(r.stdout.strip() or r.stderr.strip())
        if r.returncode:
            sys.exit(1)
        step("ping 198.18.0.2 from the kernel")
        print(ns.run(["ping", "-c", "3", "-i", "0.2", "198.18.0.2"]).stdout.strip().splitlines()[-2])
        step("TCP echo from the kernel")
        print(ns.run([sys.executable, "-c", ECHO]).stdout.strip())
        step("shardsock status")
        print(ns.shardsock("status", *args).stdout.rstrip())
        step("shardsock stat")
        print(ns.shardsock("stat", *args).stdout.rstrip())
    finally:
        step("shardsock down")
        print(ns.shardsock("down", *args).stdout.strip())
        ns.delete()


if __name__ == "__main__":
    main()
