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

The servers, the client, the turns and the CPU accounting are
preload/bench.py's (`shardsock bench`, whose echo scenario is rr-64 against
the tap target); this script picks the targets and scenarios and prints the
table with ranges.  scripts/bench_shim.py uses run_scenarios() below.

    $ make bench-instances
"""
import functools
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from preload import bench  # noqa: E402  (the servers, the client and the CPU accounting)
from preload.instances import GroupError  # noqa: E402

BUILD = bench.BUILD
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TARGETS = ("kernel", "afpacket", "afxdp", "tap")
SCENARIOS = [("rr-1", ["--mode", "rr", "--conns", "1", "--size", "64"]),
             ("rr-64", ["--mode", "rr", "--conns", "64", "--size", "64"]),
             ("bulk-1", ["--mode", "bulk", "--conns", "1", "--port", "9"])]


def per_unit(res):
    """bench.measure's CPU per request under this table's names: per round
    trip, or per 1460-byte segment for bulk."""
    res["cpu_us_per_unit"] = round(res["machine_cpu_us_per_request"], 2)
    res["server_cpu_us_per_unit"] = round(res["cpu_us_per_request"], 2)
    return res


def run_scenarios(client_ns, host, server_pids):
    """Every scenario against a server already running (bench_shim.py's
    programs under the library): {scenario: echo_bench's result + CPU}."""
    return {name: per_unit(bench.measure(lambda: bench.echo_bench(client_ns, host, SECONDS, args),
                                         lambda: server_pids)) for name, args in SCENARIOS}


def plan():
    """The targets in turn, each running every scenario (bench.run_rounds)."""
    loads = [(name, lambda srv, args=args: bench.echo_bench(srv.client, srv.target, SECONDS, args))
             for name, args in SCENARIOS]
    return [(t, bench.kernel_echo if t == "kernel" else functools.partial(bench.shardsock_echo, t), loads)
            for t in TARGETS]


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    if os.geteuid() != 0:
        sys.exit("bench: needs root (namespaces, devices)")
    try:
        with bench.SIGNALS.installed():
            out = bench.run_rounds(plan(), ROUNDS, SECONDS)
    except bench.Interrupted:
        sys.exit("bench: interrupted; everything it made is removed")
    except GroupError as e:
        sys.exit("bench: %s" % e)
    # {target: [{scenario: result} per round]}
    runs = {t: [{name: per_unit(out[name][t][i]) for name, _ in SCENARIOS} for i in range(ROUNDS)]
            for t in TARGETS}
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
