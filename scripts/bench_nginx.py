#!/usr/bin/env python3
"""`make bench-nginx`: `shardsock bench` on its nginx scenarios -- Debian's
nginx serving a 64-byte file, keep-alive (requests/s) and Connection: close
(connections/s), on the kernel across a veth pair and under `shardsock run`
on a tap device, wrk from a kernel client, CPU of every server-side process
per request.  The measuring is preload/bench.py's; this only picks the
scenarios, BENCH_ROUNDS rounds (default 3) of BENCH_SECONDS (default 5),
and writes the chart to build/bench-nginx.png.

    $ make bench-nginx
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from preload import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.main(["bench", "--scenario", "nginx-keepalive,nginx-close",
                       "--rounds", os.environ.get("BENCH_ROUNDS", "3"),
                       "--seconds", os.environ.get("BENCH_SECONDS", "5"),
                       "--chart", os.path.join(ROOT, "build", "bench-nginx.png")]))
