#!/usr/bin/env python3
"""Debian's nginx serving a 64-byte file, on the kernel and under shardsock,
in one run, with wrk from a kernel client:

  kernel     nginx (worker_processes auto) on the kernel's TCP, across a veth
             pair between two namespaces
  shardsock  the same nginx under `shardsock run` (one worker per instance,
             listen spawn), instances on a tap device, wrk on the tap's
             kernel side

For keep-alive requests (requests/s) and Connection: close (connections/s),
with the CPU time of every process of the server side (nginx's, and the
instances' for shardsock) per request.  Medians of BENCH_ROUNDS rounds
(default 3) of BENCH_SECONDS (default 5).

    $ make bench-nginx
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from topology import Group, Netns, VethPair, stop_pids  # noqa: E402

NGINX = "/usr/sbin/nginx"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONF = """worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    server {{ listen 8080; root {d}/www; }}
}}
"""


def prefix():
    d = tempfile.mkdtemp(prefix="ss-bench-nginx-")
    os.chmod(d, 0o755)
    os.makedirs(os.path.join(d, "www"))
    os.makedirs(os.path.join(d, "tmp"))
    with open(os.path.join(d, "www", "64.bin"), "wb") as f:
        f.write(b"x" * 64)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(CONF.format(d=d))
    return d


def cpu_s(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def nginx_pids(d):
    with open(os.path.join(d, "nginx.pid")) as f:
        master = int(f.read())
    with open("/proc/%d/task/%d/children" % (master, master)) as f:
        return [master] + [int(p) for p in f.read().split()]


def wrk(ns, url, close):
    hdr = ["-H", "Connection: close"] if close else []
    r = ns.run(["wrk", "-t2", "-c64" if not close else "-c32", "-d%ds" % SECONDS, *hdr, url], timeout=SECONDS + 60)
    requests = int(re.search(r"(\d+) requests in", r.stdout).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", r.stdout))
    return requests, errors


def measure(ns, url, pids):
    out = {}
    for close in (False, True):
        rates, cpus, errs = [], [], 0
        for _ in range(ROUNDS):
            c0 = cpu_s(pids())
            t0 = time.time()
            n, e = wrk(ns, url, close)
            dt = time.time() - t0
            rates.append(n / SECONDS)
            cpus.append((cpu_s(pids()) - c0) / max(n, 1) * 1e6)
            errs += e
        rates.sort()
        cpus.sort()
        out["close" if close else "keepalive"] = {"per_s": rates[len(rates) // 2], "cpu_us": cpus[len(cpus) // 2],
                                                   "errors": errs}
    return out


def wait_serving(ns, url):
    for _ in range(100):
        r = ns.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url], timeout=10)
        if r.stdout == "200":
            return
        time.sleep(0.1)
    raise SystemExit("nginx does not serve %s" % url)


def kernel():
    pair = VethPair(stack_kernel_address="198.18.1.2/24")
    d = prefix()
    try:
        subprocess.run(["ip", "netns", "exec", pair.stack.name, NGINX, "-c", d + "/nginx.conf", "-p", d], check=True)
        url = "http://198.18.1.2:8080/64.bin"
        wait_serving(pair.client, url)
        return measure(pair.client, url, lambda: nginx_pids(d))
    finally:
        stop(d)
        pair.delete()


def shardsock():
    ns = Netns()
    g = Group(ns, "b%d" % os.getpid(), "/run/shardsock-bench")
    d = prefix()
    try:
        r = g.run(NGINX, "-c", d + "/nginx.conf", "-p", d)
        assert r.returncode == 0, r.stderr
        url = "http://198.18.0.2:8080/64.bin"
        wait_serving(ns, url)
        instances = [i["pid"] for i in g.status()["instances"]]
        return measure(ns, url, lambda: nginx_pids(d) + instances)
    finally:
        stop(d)
        g.down()
        ns.delete()


def stop(d):
    try:
        stop_pids(nginx_pids(d))
    except (FileNotFoundError, ValueError):
        pass
    subprocess.run(["rm", "-rf", d])


def main():
    k = kernel()
    s = shardsock()
    print("nginx, 64-byte file, wrk from the kernel side, %d x %d s rounds (medians)" % (ROUNDS, SECONDS))
    print("%-22s %12s %12s %8s" % ("", "kernel", "shardsock", "ratio"))
    for mode, unit in (("keepalive", "requests/s"), ("close", "connections/s")):
        print("%-22s %12.0f %12.0f %7.2fx" % (unit, k[mode]["per_s"], s[mode]["per_s"],
                                             s[mode]["per_s"] / k[mode]["per_s"]))
        print("%-22s %12.1f %12.1f %7.2fx" % ("  CPU us per request", k[mode]["cpu_us"], s[mode]["cpu_us"],
                                             s[mode]["cpu_us"] / k[mode]["cpu_us"]))
    print(json.dumps({"kernel": k, "shardsock": s}))
    return 0 if all(v[m]["errors"] == 0 for v in (k, s) for m in v) else 1


if __name__ == "__main__":
    sys.exit(main())
