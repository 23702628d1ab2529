#!/usr/bin/env python3
"""Echo round trips and bulk throughput: the kernel's TCP against shardsock,
in one run, on this machine.

Targets (each a server on its own side of a link, the client in another
namespace or on the host side):
  kernel     build/echo_server (epoll, one SO_REUSEPORT thread per core) on
             the kernel's TCP, across a veth pair between two namespaces
  afpacket   shardsock instances (built-in echo/discard) on the same kind of
             veth pair, through the afpacket backend
  afxdp      the same through AF_XDP sockets (copy mode, native XDP on veth)
  tap        shardsock instances on a tap device, the client on its kernel side
Scenarios: 64-byte echo round trips with 1 and 64 connections, and one
connection writing to the discard service (Gbit/s one way).

CPU: busy time of the whole machine over the scenario (/proc/stat, client
included, both cores), divided by round trips; the servers' own CPU time is
reported beside it.  The machine is shared and has 2 cores, and a single run
swings widely: the targets take turns for BENCH_ROUNDS rounds (default 3)
and the table gives the median of each, with the range of the ratio.

    $ make bench-instances
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from topology import Netns, VethPair  # noqa: E402

BUILD = os.path.join(ROOT, "build")
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TARGETS = ("kernel", "afpacket", "afxdp", "tap")
SCENARIOS = [("rr-1", ["--mode", "rr", "--conns", "1", "--size", "64"]),
             ("rr-64", ["--mode", "rr", "--conns", "64", "--size", "64"]),
             ("bulk-1", ["--mode", "bulk", "--conns", "1", "--port", "9"])]
HZ = os.sysconf("SC_CLK_TCK")


def busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # all but idle and iowait


def proc_cpu(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().split(")")[-1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total


def run_scenarios(client_ns, host, server_pids):
    out = {}
    for name, args in SCENARIOS:
        b0, s0 = busy_jiffies(), proc_cpu(server_pids)
        r = client_ns.run([os.path.join(BUILD, "echo_bench"), "--host", host, "--seconds", str(SECONDS)] + args,
                          timeout=SECONDS + 60)
        b1, s1 = busy_jiffies(), proc_cpu(server_pids)
        res = json.loads(r.stdout)
        if not res.get("ok"):
            raise SystemExit("bench: %s against %s failed: %s" % (name, host, res))
        units = res["round_trips"] if res["mode"] == "rr" else res["bytes"] / 1460
        res["cpu_us_per_unit"] = round((b1 - b0) / HZ * 1e6 / max(units, 1), 2)
        res["server_cpu_us_per_unit"] = round((s1 - s0) / HZ * 1e6 / max(units, 1), 2)
        out[name] = res
    return out


def kernel():
    pair = VethPair(stack_kernel_address="198.18.1.2/24")
    try:
        p = subprocess.Popen(["ip", "netns", "exec", pair.stack.name, os.path.join(BUILD, "echo_server")],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(0.2)
            return run_scenarios(pair.client, "198.18.1.2", [p.pid])
        finally:
            p.kill()
            p.wait()
    finally:
        pair.delete()


def shardsock(backend):
    group = "bench%d" % os.getpid()
    args = ["--group", group, "--run-dir", "/run/shardsock-bench"]
    if backend in ("afpacket", "afxdp"):
        pair = VethPair(queues=os.cpu_count() if backend == "afxdp" else None)
        stack_ns, client_ns, host = pair.stack, pair.client, "198.18.1.2"
        extra = ["--backend", backend, "--interface", "vs", "--address", "198.18.1.2/24"]
    else:
        pair = None
        stack_ns = client_ns = Netns()
        host, extra = "198.18.0.2", []
    try:
        r = stack_ns.shardsock("up", *args, *extra, "--echo", "7", "--discard", "9")
        if r.returncode:
            raise SystemExit("bench: shardsock up (%s) failed: %s" % (backend, r.stderr))
        try:
            st = json.loads(stack_ns.shardsock("status", "--json", *args).stdout)
            return run_scenarios(client_ns, host, [i["pid"] for i in st["instances"]])
        finally:
            stack_ns.shardsock("down", *args)
    finally:
        if pair:
            pair.delete()
        else:
            stack_ns.delete()


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    if os.geteuid() != 0:
        sys.exit("bench: needs root (namespaces, devices)")
    runs = {t: [] for t in TARGETS}
    for _ in range(ROUNDS):
        for t in TARGETS:
            runs[t].append(kernel() if t == "kernel" else shardsock(t))
    print("echo benchmark: %d rounds of %.0f s per scenario, targets in turn, %d cores; medians.  CPU = whole "
          "machine per round trip (per 1460-byte segment for bulk)" % (ROUNDS, SECONDS, os.cpu_count()))
    print("%-8s %-9s %16s %9s %15s %12s %14s" % ("scenario", "target", "result", "vs kernel", "ratio range",
                                             "CPU us/unit", "server us/unit"))
    summary = {}
    for name, _ in SCENARIOS:
        metric = "round_trips_per_s" if name.startswith("rr") else "gbit_per_s"
        for t in TARGETS:
            vals = [r[name][metric] for r in runs[t]]
            ratios = [r[name][metric] / k[name][metric] for r, k in zip(runs[t], runs["kernel"])]
            row = {"median": median(vals), "ratio_median": median(ratios), "ratio_min": min(ratios),
                   "ratio_max": max(ratios), "cpu_us_per_unit": median([r[name]["cpu_us_per_unit"] for r in runs[t]]),
                   "server_cpu_us_per_unit": median([r[name]["server_cpu_us_per_unit"] for r in runs[t]])}
            summary.setdefault(name, {})[t] = row
            val = "%.0f rt/s" % row["median"] if metric == "round_trips_per_s" else "%.2f Gbit/s" % row["median"]
            print("%-8s %-9s %16s %8.2fx %15s %12.2f %14.2f" % (
                name, t, val, row["ratio_median"], "%.2f-%.2fx" % (row["ratio_min"], row["ratio_max"]),
                row["cpu_us_per_unit"], row["server_cpu_us_per_unit"]))
    with open(os.path.join(BUILD, "bench-instances.json"), "w") as f:
        json.dump({"runs": runs, "summary": summary}, f, indent=2)
    print("(JSON: build/bench-instances.json)")


if __name__ == "__main__":
    main()
