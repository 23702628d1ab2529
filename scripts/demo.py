#!/usr/bin/env python3
"""`make demo`: what runs today, end to end, in a network namespace it makes
and removes.

1. Two engines move 100 MB each way through a simulated link that loses,
   reorders and duplicates 5% of frames (build/pair).
2. `shardsock up` starts one pinned instance per core on a tap device; the
   kernel on the host side pings the stack and sends 10 MB through its echo
   service; nginx under `shardsock run` serves a page to curl on the host
   side through the stack; `netstat`, `status` and `stat` show the
   instances; `shardsock down` leaves nothing behind.
3. `shardsock bench`, one round of 1 s per scenario: nginx (keep-alive and
   close) and echo round trips on the kernel and on shardsock, the table and
   a chart (build/demo-bench.png).
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]
from topology import ECHO, Netns  # noqa: E402


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
        step("TCP echo from the kernel: 10 MB through the stack and back")
        out = ns.python(ECHO, "198.18.0.2", 10_000_000)
        print("sent %d bytes, received %d, byte-exact: %s" % (out["sent"], out["received"], out["same"]))
        step("shardsock run -- nginx (Debian's, worker_processes auto); curl from the host side")
        from preload import bench
        group_cmd = [sys.executable, "-m", "preload.cli", "run", *args, "--"]
        with bench.nginx_server(lambda d: ns.run(group_cmd + ["/usr/sbin/nginx", "-c", d + "/nginx.conf", "-p", d],
                                                 check=True, env=dict(os.environ, PYTHONPATH=ROOT))) as d:
            url = "http://198.18.0.2:8080/64.bin"
            bench.wait_serving(ns, url, d)
            r = ns.run(["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code} %{size_download} bytes", url])
            print("curl %s: HTTP %s, from nginx workers whose sockets are the stack's" % (url, r.stdout))
            step("shardsock netstat -l")
            print(ns.shardsock("netstat", "-l", *args).stdout.rstrip())
        step("shardsock status")
        print(ns.shardsock("status", *args).stdout.rstrip())
        step("shardsock stat")
        print(ns.shardsock("stat", *args).stdout.rstrip())
    finally:
        step("shardsock down")
        print(ns.shardsock("down", *args).stdout.strip())
        ns.delete()
    step("shardsock bench --seconds 1 --rounds 1: a glimpse (make bench-compare for numbers)")
    r = subprocess.run([sys.executable, "-m", "preload.cli", "bench", "--seconds", "1", "--rounds", "1",
                        "--no-progress", "--chart", os.path.join(ROOT, "build", "demo-bench.png")],
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    if r.returncode:
        sys.exit(r.returncode)


if __name__ == "__main__":
    main()
