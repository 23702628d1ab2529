"""What `stat`, `netstat` and `top` show: counters since a reset, rates,
connections, and a live view of the instances and the processes attached.

Counters are read from the instances' shared memory (preload/stats.py);
connections and attached processes come from the control requests
"netstat" and "procs" (core/daemon/shardsockd.c).  Only ``tcp_state``
holds gauges (connections by state now); every other counter only grows.
"""
import datetime
import json
import os
import time

from preload.instances import (GroupError, attached, control, group_dir, load_state, may_ask, process_name,
                               stat, words)

BASELINE = "stat-baseline.json"


def _baseline_path(cfg):
    return os.path.join(group_dir(cfg), BASELINE)


def reset(cfg):
    """Records every instance's counters now (with its pid: a restarted
    instance counts from zero again); `stat` subtracts them, as nstat
    does with its history file.  The instances' own counters are untouched:
    they belong to the instance, and other readers may be watching."""
    state = load_state(cfg)
    snap = stat(cfg)
    base = {"time": time.time(), "instances": {}}
    for inst, s in zip(state["instances"], snap["instances"]):
        if s["counters"]:
            base["instances"][str(inst["instance"])] = {"pid": inst["pid"], "counters": {
                k: v for k, v in s["counters"].items() if k != "tcp_state"}}
    with open(_baseline_path(cfg), "w") as f:
        json.dump(base, f)
    return base


def since_reset(cfg, absolute=False):
    """stat(cfg), less the last reset's counts (unless absolute), with
    "since": the reset's time (None: since the instances started)."""
    snap = stat(cfg)
    snap["since"] = None
    if absolute:
        return snap
    try:
        with open(_baseline_path(cfg)) as f:
            base = json.load(f)
    except (FileNotFoundError, ValueError):
        return snap
    state = load_state(cfg)
    snap["since"] = base["time"]
    for inst, s in zip(state["instances"], snap["instances"]):
        b = base["instances"].get(str(inst["instance"]))
        if not s["counters"] or not b or b["pid"] != inst["pid"]:
            continue
        for k, v in b["counters"].items():
            if k in s["counters"]:
                s["counters"][k] = max(0, s["counters"][k] - v)
    return snap


def rates(cfg, interval):
    """Per-second deltas of every counter over interval seconds, and apart
    from them, under "gauges", the gauges' values at the end (tcp_state:
    connections by state now)."""
    a = stat(cfg)
    t0 = time.monotonic()
    time.sleep(interval)
    b = stat(cfg)
    dt = time.monotonic() - t0
    out = {"interval_s": round(dt, 3), "instances": []}
    for x, y in zip(a["instances"], b["instances"]):
        c = g = None
        if x["counters"] and y["counters"]:
            c = {k: round((y["counters"][k] - x["counters"][k]) / dt, 1) for k in y["counters"] if k != "tcp_state"}
            g = {"tcp_state": y["counters"]["tcp_state"]}
        out["instances"].append({"instance": y["instance"], "core": y["core"], "counters": c, "gauges": g})
    return out


def connections(cfg):
    """Every socket of every instance, as `ss -tan` has them, with the
    owning instance and processes (pid and command)."""
    state = load_state(cfg)
    if state is None:
        raise GroupError("group %r is not up; start it with 'shardsock up'" % cfg["group"])
    if not may_ask(cfg, 0):
        raise PermissionError(13, "the instances' control sockets answer root, their own user and the read "
                              "group's members", os.path.join(group_dir(cfg), "instance-0.sock"))
    out = []
    names = {}  # pid -> command: many sockets share few processes
    for inst in state["instances"]:
        text = control(cfg, inst["instance"], "netstat")
        if text is None:
            continue  # not running: status says so
        for line in text.splitlines():
            w = words(line)
            if "state" not in w:
                continue
            pids = sorted({int(x.split("=")[1]) for x in line.split() if x.startswith("pid=")})
            service = w.get("service")
            rec = {"instance": inst["instance"], "state": w["state"], "local": w["local"],
                   "remote": w["remote"], "recv_q": int(w["rcv_queued"]), "send_q": int(w["snd_queued"]),
                   "processes": [{"pid": p, "command": names[p] if p in names else names.setdefault(
                       p, process_name(p))} for p in pids],
                   "service": service, "retransmits": int(w["retransmits"]), "rto_us": int(w["rto_us"]),
                   "srtt_us": int(w["srtt_us"]), "cwnd": int(w["cwnd"])}
            if w["state"] == "LISTEN":
                # ss shows a listener's accept queue as Recv-Q and its backlog as Send-Q
                rec["recv_q"], rec["send_q"] = int(w["accept_queued"]), int(w["backlog"])
                rec["in_use"] = w["in_use"] == "1"
            out.append(rec)
    return out


def filter_connections(conns, port=None, state=None, pid=None, listening=False):
    def port_of(a):
        return int(a.rsplit(":", 1)[1])
    out = []
    for c in conns:
        if port is not None and port not in (port_of(c["local"]), port_of(c["remote"])):
            continue
        if state and c["state"] != state.upper().replace("-", "_"):
            continue
        if pid is not None and pid not in [p["pid"] for p in c["processes"]]:
            continue
        if listening and c["state"] != "LISTEN":
            continue
        out.append(c)
    return out


def cpu_seconds(pid):
    """CPU time of a process, in seconds (None: gone): the scheduler's
    nanosecond count summed over its threads (/proc/PID/task/*/schedstat),
    else user plus system time in clock ticks (10 ms: too coarse for a
    share to 0.1% over a second)."""
    try:
        total = 0
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


TOP_COUNTERS = ("eth_rx_frames", "eth_tx_frames", "accept_local", "accept_global", "tcp_retransmits")


def top_sample(cfg, prev):
    """One refresh of `top`: per instance, packets/s in and out, connections
    established, accepts/s local and global, retransmissions/s, drops/s,
    and the CPU share of the instance and of each attached process, since
    prev (the previous sample, or None)."""
    state = load_state(cfg)
    if state is None:
        raise GroupError("group %r is not up; start it with 'shardsock up'" % cfg["group"])
    now = time.monotonic()
    snap = stat(cfg)
    # "time": when, for a reader (ISO 8601, local time with its offset);
    # "monotonic": what the rates divide by
    sample = {"time": datetime.datetime.now().astimezone().isoformat(timespec="milliseconds"), "monotonic": now,
              "instances": []}
    for inst, s in zip(state["instances"], snap["instances"]):
        c = s["counters"] or {}
        row = {"instance": inst["instance"], "core": inst["core"], "pid": inst.get("pid"),
               "raw": {k: c.get(k, 0) for k in TOP_COUNTERS}, "drops": sum(v for k, v in c.items()
                                                                        if k.startswith("drop_")),
               "connections": (c.get("tcp_state") or {}).get("ESTABLISHED", 0),
               "cpu_s": cpu_seconds(inst["pid"]) if inst.get("pid") else None,
               "processes": [dict(p, cpu_s=cpu_seconds(p["pid"])) for p in
                             (attached(cfg, inst["instance"]) if c else [])]}
        p = next((x for x in prev["instances"] if x["instance"] == row["instance"]), None) if prev else None
        dt = now - prev["monotonic"] if prev else None

        def per_s(new, old, digits=1):
            """(new - old) per second, rounded to digits (None: not rounded)."""
            if not dt or new is None or old is None:
                return None
            return (new - old) / dt if digits is None else round((new - old) / dt, digits)
        row["rx_pps"] = per_s(row["raw"]["eth_rx_frames"], p and p["raw"]["eth_rx_frames"])
        row["tx_pps"] = per_s(row["raw"]["eth_tx_frames"], p and p["raw"]["eth_tx_frames"])
        row["accept_local_per_s"] = per_s(row["raw"]["accept_local"], p and p["raw"]["accept_local"])
        row["accept_global_per_s"] = per_s(row["raw"]["accept_global"], p and p["raw"]["accept_global"])
        row["retransmits_per_s"] = per_s(row["raw"]["tcp_retransmits"], p and p["raw"]["tcp_retransmits"])
        row["drops_per_s"] = per_s(row["drops"], p and p["drops"])
        # CPU seconds per second, as a percentage to 0.1: rounded once, at
        # the end (rounding the share first gave 10-point steps)
        # (a thread that ended takes its time away: never below 0)
        r = per_s(row["cpu_s"], p["cpu_s"], None) if p and p.get("pid") == row["pid"] else None
        row["cpu_pct"] = round(100 * max(r, 0.0), 1) if r is not None else None
        for proc in row["processes"]:
            old = next((x for x in p["processes"] if x["pid"] == proc["pid"]), None) if p else None
            r = per_s(proc["cpu_s"], old and old["cpu_s"], None)
            proc["cpu_pct"] = round(100 * max(r, 0.0), 1) if r is not None else None
        sample["instances"].append(row)
    return sample


def format_top(sample, group):
    def f(v, fmt="%.0f"):
        return "-" if v is None else fmt % v
    lines = ["shardsock top: group %s, %s" % (group, sample["time"][11:19]),
             "%-5s %-5s %10s %10s %7s %9s %9s %9s %8s %6s" % (
                 "INST", "CORE", "RX pkt/s", "TX pkt/s", "CONNS", "ACC-LOC/s", "ACC-GLB/s", "RETRANS/s",
                 "DROPS/s", "CPU%")]
    for r in sample["instances"]:
        lines.append("%-5d %-5d %10s %10s %7d %9s %9s %9s %8s %6s" % (
            r["instance"], r["core"], f(r["rx_pps"]), f(r["tx_pps"]), r["connections"],
            f(r["accept_local_per_s"]), f(r["accept_global_per_s"]), f(r["retransmits_per_s"]),
            f(r["drops_per_s"]), f(r["cpu_pct"], "%.1f")))
    procs = [(r["instance"], p) for r in sample["instances"] for p in r["processes"]]
    if procs:
        lines.append("")
        lines.append("%-5s %-8s %-16s %8s %6s" % ("INST", "PID", "COMMAND", "SOCKETS", "CPU%"))
        for k, p in procs:
            lines.append("%-5d %-8d %-16s %8d %6s" % (k, p["pid"], p["command"] or "?", p["sockets"],
                                                       f(p["cpu_pct"], "%.1f")))
    return "\n".join(lines)
