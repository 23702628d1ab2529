#!/usr/bin/env python3
"""The preload library's cost: the same unmodified program, build/echo_server
(epoll, one thread), on the kernel's TCP and under libshardsock.so, in one
run.

  kernel   echo_server on the kernel, across a veth pair between namespaces
  shim     echo_server under `shardsock run`, its sockets served by one
           instance on a tap device (instance pinned to core 0, the program
           to core 1), the client on the tap's kernel side

Then the same shim run under `strace -c -f` for the 1-connection echo: the
system calls the program makes per round trip (the library's promise: none
while busy, only wake-ups).  Medians of BENCH_ROUNDS rounds.

    $ make bench-shim
"""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_instances as bi  # noqa: E402
from topology import Netns, VethPair  # noqa: E402

BUILD, ROOT = bi.BUILD, bi.ROOT
SERVER = [os.path.join(BUILD, "echo_server"), "--threads", "1"]


def kernel():
    pair = VethPair(stack_kernel_address="198.18.1.2/24")
    try:
        p = subprocess.Popen(["ip", "netns", "exec", pair.stack.name, "taskset", "-c", "1", *SERVER],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(0.2)
            return bi.run_scenarios(pair.client, "198.18.1.2", [p.pid])
        finally:
            p.kill()
            p.wait()
    finally:
        pair.delete()


def shim(strace=None):
    ns = Netns()
    args = ["--group", "sb%d" % os.getpid(), "--run-dir", "/run/shardsock-bench"]
    try:
        r = ns.shardsock("up", *args, "--cores", "0")
        if r.returncode:
            raise SystemExit("bench: shardsock up failed: %s" % r.stderr)
        try:
            wrap = ["strace", "-f", "-c", "-o", strace] if strace else []
            # its own process group: strace and the program it traces stop together
            p = subprocess.Popen(["ip", "netns", "exec", ns.name, "taskset", "-c", "1", sys.executable, "-m",
                                  "preload.cli", "run", *args, "--", *wrap, *SERVER], stdout=subprocess.PIPE,
                                 text=True, env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True)
            try:
                assert p.stdout.readline().strip() == "ready"
                time.sleep(0.2)
                pids = [i["pid"] for i in json.loads(ns.shardsock("status", "--json", *args).stdout)["instances"]]
                if strace:
                    r = ns.run([os.path.join(BUILD, "echo_bench"), "--host", "198.18.0.2", "--seconds",
                                str(bi.SECONDS), *bi.SCENARIOS[0][1]], timeout=bi.SECONDS + 60)
                    return json.loads(r.stdout)
                return bi.run_scenarios(ns, "198.18.0.2", [p.pid] + pids)
            finally:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait()
                p.stdout.close()
        finally:
            ns.shardsock("down", *args)
    finally:
        ns.delete()


def syscalls_per_round_trip():
    path = "/tmp/shardsock-bench-strace-%d" % os.getpid()
    try:
        res = shim(strace=path)
        with open(path) as f:
            lines = f.read().splitlines()
    finally:
        if os.path.exists(path):
            os.unlink(path)
    calls = {}
    for ln in lines:
        parts = ln.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    rt = max(res["round_trips"], 1)
    return {"round_trips": res["round_trips"], "calls": calls,
            "per_round_trip": round(sum(calls.values()) / rt, 4)}


def main():
    if os.geteuid() != 0:
        sys.exit("bench: needs root (namespaces, devices)")
    runs = {"kernel": [], "shim": []}
    for _ in range(bi.ROUNDS):
        runs["kernel"].append(kernel())
        runs["shim"].append(shim())
    sc = syscalls_per_round_trip()
    print("echo_server (one thread) on the kernel and under libshardsock.so: %d rounds of %.0f s, medians"
          % (bi.ROUNDS, bi.SECONDS))
    print("%-8s %-7s %16s %9s %15s %12s" % ("scenario", "target", "result", "vs kernel", "ratio range",
                                          "CPU us/unit"))
    summary = {}
    for name, _ in bi.SCENARIOS:
        metric = "round_trips_per_s" if name.startswith("rr") else "gbit_per_s"
        for t in runs:
            vals = [r[name][metric] for r in runs[t]]
            ratios = [r[name][metric] / k[name][metric] for r, k in zip(runs[t], runs["kernel"])]
            row = {"median": bi.median(vals), "ratio_median": bi.median(ratios), "ratio_min": min(ratios),
                   "ratio_max": max(ratios), "cpu_us_per_unit": bi.median([r[name]["cpu_us_per_unit"]
                                                                          for r in runs[t]])}
            summary.setdefault(name, {})[t] = row
            val = "%.0f rt/s" % row["median"] if metric == "round_trips_per_s" else "%.2f Gbit/s" % row["median"]
            print("%-8s %-7s %16s %8.2fx %15s %12.2f" % (name, t, val, row["ratio_median"], "%.2f-%.2fx" % (
                row["ratio_min"], row["ratio_max"]), row["cpu_us_per_unit"]))
    print("system calls of the program under the library, 1-connection echo: %.4f per round trip (%d round "
          "trips; by call: %s)" % (sc["per_round_trip"], sc["round_trips"], json.dumps(sc["calls"])))
    with open(os.path.join(BUILD, "bench-shim.json"), "w") as f:
        json.dump({"runs": runs, "summary": summary, "syscalls": sc}, f, indent=2)
    print("(JSON: build/bench-shim.json)")


if __name__ == "__main__":
    main()
