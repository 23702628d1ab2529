#!/usr/bin/env python3
"""Engine cost, measured with callgrind (instructions are repeatable on a
shared machine; seconds are not) and with the heap allocator's counters.

Method: ``build/pair`` runs two engines back to back on a virtual clock.
callgrind collects instructions only inside the engine's entry points
(ss_engine_input, ss_engine_poll, the ss_tcp_* calls the tool makes), and
not inside the tool's transmit callback (the simulated link), so the count
is the engine's own work: building, sending, receiving and acknowledging
segments on both ends.

    $ make bench-engine
    bulk transfer   20000000 B each way   ... instructions per segment
"""
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIR = os.path.join(ROOT, "build", "pair")
ENTRY_POINTS = ["ss_engine_input", "ss_engine_poll", "ss_engine_next_deadline", "ss_tcp_send", "ss_tcp_recv",
                "ss_tcp_connect", "ss_tcp_accept", "ss_tcp_close", "ss_tcp_shutdown", "ss_tcp_poll",
                "ss_tcp_socket"]


def callgrind(args):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, "--collect-atstart=no"]
        cmd += ["--toggle-collect=" + f for f in ENTRY_POINTS] + ["--toggle-collect=tx"]
        r = subprocess.run(cmd + [PAIR] + [str(a) for a in args], capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            sys.exit("bench: %s failed: %s" % (" ".join(cmd), r.stderr[-2000:]))
        with open(out) as f:
            text = f.read()
        m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
        return int(m.group(1)), json.loads(r.stdout)


def run(args):
    r = subprocess.run([PAIR] + [str(a) for a in args], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(r.stdout)


def main():
    if not os.path.exists(PAIR):
        sys.exit("bench: build/pair is missing: run 'make build'")
    results = {}
    bulk_bytes = 20_000_000
    ir, out = callgrind(["--bytes", bulk_bytes, "--seed", 1])
    results["bulk"] = {"bytes_each_way": bulk_bytes, "segments": out["tcp_segments"], "instructions": ir,
                       "instructions_per_segment": round(ir / out["tcp_segments"], 1),
                       "instructions_per_kib": round(ir / (2 * bulk_bytes / 1024), 1)}
    conns = 2000
    ir, out = callgrind(["--conns", conns, "--seed", 1])
    results["open_close"] = {"connections": conns, "segments": out["tcp_segments"], "instructions": ir,
                             "instructions_per_connection": round(ir / conns, 1)}
    lossy = run(["--bytes", 100_000_000, "--loss", 0.05, "--reorder", 0.05, "--dup", 0.05, "--seed", 1])
    results["lossy_100mb"] = {k: lossy[k] for k in ("ok", "wall_s", "virtual_s", "tcp_segments", "retransmits",
                                                    "fast_retransmits", "rto_expired")}
    idle = run(["--idle", 10000, "--seed", 1])
    results["idle_memory"] = {"connections": idle["connections"],
                              "heap_bytes_per_connection_end": idle["heap_bytes_per_connection_end"]}
    print("engine benchmark (callgrind instructions inside engine calls, both ends together)")
    print("  bulk transfer    %d B each way: %d segments, %.0f instructions/segment, %.0f instructions/KiB"
          % (bulk_bytes, results["bulk"]["segments"], results["bulk"]["instructions_per_segment"],
             results["bulk"]["instructions_per_kib"]))
    print("  open+close       %d connections: %.0f instructions/connection (handshake and close, both ends)"
          % (conns, results["open_close"]["instructions_per_connection"]))
    print("  lossy 100 MB     each way, 5%% loss/reorder/dup: %.2f s wall, %d retransmits, ok=%s"
          % (lossy["wall_s"], lossy["retransmits"], lossy["ok"]))
    print("  idle memory      %d established idle connections: %.0f heap bytes per connection end"
          % (idle["connections"], idle["heap_bytes_per_connection_end"]))
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "bench-engine.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("  (JSON: build/bench-engine.json)")


if __name__ == "__main__":
    main()
