"""Debian's nginx, unmodified, under `shardsock run` with one worker per
instance (worker_processes auto): its workers accept on their own cores
(listen spawn), served to kernel clients (curl, wrk) in the namespace
through the stack's address.

Each test brings a group up on a tap device in a namespace it creates,
starts nginx with a configuration written to a temporary prefix, stops it
by its pid, and takes everything down again."""
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from topology import stop_pids  # noqa: E402  (conftest.py puts scripts/ on the path)

from preload.bench import wrk_errors  # noqa: E402

STACK = "198.18.0.2"
PORT = 8080
NGINX = "/usr/sbin/nginx"  # by its path: the binary upgrade execs argv[0]
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices"),
              pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (make setup)")]

CONF = """
worker_processes auto;{main}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
daemon {daemon};
events {{
    worker_connections 4096;
    accept_mutex {accept_mutex};
    multi_accept {multi_accept};
}}
http {{
    access_log off;
    sendfile {sendfile};
    keepalive_requests 100000;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen {port}{reuseport};
        root {prefix}/www;{locations}
    }}{servers}
}}
"""

# proxy_pass to an upstream in the same nginx on 127.0.0.1 (both ends the
# stack's: active opens from its workers, kept alive) and to one on the
# kernel (a program not preloaded: the library leaves those to the kernel)
PROXY = dict(locations="""
        location /up/ {{
            proxy_pass http://upstream_stack/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location /kernel/ {{
            proxy_pass http://127.0.0.1:{kernel_port}/;
        }}""", servers="""
    upstream upstream_stack {{
        server 127.0.0.1:{up_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{up_port};
        root {prefix}/www;
    }}""")

SIZES = {"64.bin": 64, "100k.bin": 100 * 1024, "10m.bin": 10 * 1024 * 1024}


class Nginx:
    """nginx under the library in the group's namespace, with its own
    prefix (configuration, files, pid, logs)."""

    def __init__(self, group, daemon=False, run_args=(), **conf):
        self.group = group
        self.dir = tempfile.TemporaryDirectory(prefix="ss-nginx-")
        self.prefix = self.dir.name
        os.chmod(self.prefix, 0o755)  # the workers run as www-data
        os.makedirs(os.path.join(self.prefix, "www"))
        os.makedirs(os.path.join(self.prefix, "tmp"))
        for name, size in SIZES.items():
            with open(os.path.join(self.prefix, "www", name), "wb") as f:
                f.write(os.urandom(size))
        self.conf = dict(prefix=self.prefix, port=PORT, daemon="on" if daemon else "off", accept_mutex="off",
                         multi_accept="off", sendfile="on", reuseport="", locations="", servers="", main="")
        self.conf.update(conf)
        for k in ("locations", "servers"):
            self.conf[k] = self.conf[k].format(**self.conf)
        self.write_conf()
        self.proc = group.popen(NGINX, "-c", self.conf_path, "-p", self.prefix, run_args=run_args,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            if daemon:
                assert self.proc.wait(30) == 0, self.proc.stderr.read()
            self.wait_serving()
        except BaseException:
            self.stop()
            raise

    @property
    def conf_path(self):
        return os.path.join(self.prefix, "nginx.conf")

    def write_conf(self):
        with open(self.conf_path, "w") as f:
            f.write(CONF.format(**self.conf))

    def master(self):
        with open(os.path.join(self.prefix, "nginx.pid")) as f:
            return int(f.read())

    def workers(self):
        """The master's children: its worker processes."""
        with open("/proc/%d/task/%d/children" % (self.master(), self.master())) as f:
            return [int(p) for p in f.read().split()]

    def wait_serving(self):
        for _ in range(100):
            if os.path.exists(os.path.join(self.prefix, "nginx.pid")) and self.get("64.bin")[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError("nginx does not serve: %s" % self.log())

    def get(self, name, close=False):
        """curl from the namespace's kernel: (status, sha256 of the body)."""
        hdr = ["-H", "Connection: close"] if close else []
        r = self.group.ns.run(["curl", "-sS", "-m", "10", *hdr, "-o", "-", "-w", "%{http_code}",
                               "http://%s:%d/%s" % (STACK, PORT, name)], timeout=30, text=False)
        if r.returncode != 0 or len(r.stdout) < 3:
            return 0, None
        return int(r.stdout[-3:]), hashlib.sha256(r.stdout[:-3]).hexdigest()

    def expected(self, name):
        with open(os.path.join(self.prefix, "www", name), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def log(self):
        try:
            with open(os.path.join(self.prefix, "error.log")) as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self):
        """Stops every master this test made (the binary upgrade leaves two:
        nginx.pid and nginx.pid.oldbin) and their workers, by pid."""
        masters = {self.proc.pid}
        for name in ("nginx.pid", "nginx.pid.oldbin"):
            try:
                with open(os.path.join(self.prefix, name)) as f:
                    masters.add(int(f.read()))
            except (FileNotFoundError, ValueError):
                pass
        stop_pids(masters)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.dir.cleanup()


def wrk(ns, seconds, conns, path="64.bin", close=False, threads=2):
    """wrk from the namespace's kernel: requests, errors (socket and
    non-2xx) and requests/s, parsed from its report."""
    hdr = ["-H", "Connection: close"] if close else []
    r = ns.run(["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % seconds, "--timeout", "5s", *hdr,
                "http://%s:%d/%s" % (STACK, PORT, path)], timeout=seconds + 60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = wrk_errors(out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return requests, errors, rate, out


def grew(before, after, name):
    return [a[name] - b[name] for b, a in zip(before, after)]


@pytest.mark.parametrize("accept_mutex,multi_accept,reuseport", [
    ("off", "off", False), ("on", "on", False), ("off", "on", True), ("on", "off", True)])
def test_workers_accept_on_their_own_instances(group, accept_mutex, multi_accept, reuseport):
    """With one worker per instance, the files are served whole, no request
    of a keep-alive wrk run or of a run of new connections (Connection:
    close) fails.  With accept_mutex off, each instance accepts locally
    and few connections come from the other instance; with it on, nginx
    gives the connections to whichever worker holds the mutex (as on the
    kernel), and the instance of a worker that has not used its listener
    hands its SYNs to the one that does (accept_global)."""
    ngx = Nginx(group, accept_mutex=accept_mutex, multi_accept=multi_accept,
                reuseport=" reuseport" if reuseport else "")
    try:
        assert len(ngx.workers()) == len(group.status()["instances"])
        for name in SIZES:
            assert ngx.get(name) == (200, ngx.expected(name)), name
        requests, errors, rate, out = wrk(group.ns, 2, 64)
        assert requests > 1000 and errors == 0, out
        before = group.counters()
        requests, errors, rate, out = wrk(group.ns, 3, 32, close=True)
        after = group.counters()
        assert requests > 500 and errors == 0, out
        local, remote = grew(before, after, "accept_local"), grew(before, after, "accept_global")
        assert sum(local) + sum(remote) >= requests, (local, remote)
        if accept_mutex == "off":
            assert all(n > 0 for n in local), (local, remote)
            assert sum(remote) <= 0.2 * (sum(local) + sum(remote)), (local, remote)
    finally:
        ngx.stop()


@pytest.mark.parametrize("sendfile", ["on", "off"])
def test_files_keepalive_and_close(group, sendfile):
    """64 B to 10 MB, keep-alive and Connection: close, sendfile on and off."""
    ngx = Nginx(group, sendfile=sendfile)
    try:
        for name in SIZES:
            for close in (False, True):
                assert ngx.get(name, close=close) == (200, ngx.expected(name)), (name, close)
        requests, errors, rate, out = wrk(group.ns, 2, 32, close=True)
        assert requests > 200 and errors == 0, out
    finally:
        ngx.stop()


# 100 requests in one send, the last with Connection: close; the
# responses' statuses and bodies, read to the end of the stream
PIPELINE = r"""
import hashlib, json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
req = "GET /64.bin HTTP/1.1\r\nHost: x\r\n\r\n"
c = socket.create_connection((host, port), timeout=10)
c.sendall((req * (n - 1) + req.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")).encode())
data = b""
while True:
    b = c.recv(65536)
    if not b:
        break
    data += b
bodies, statuses = [], []
while data:
    head, _, rest = data.partition(b"\r\n\r\n")
    statuses.append(int(head.split()[1]))
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    bodies.append(hashlib.sha256(rest[:length]).hexdigest())
    data = rest[length:]
print(json.dumps({"statuses": statuses, "bodies": sorted(set(bodies))}))
"""


def ab(ns, n, conns, keepalive):
    """ab (apache2-utils) from the namespace's kernel: complete and failed requests."""
    r = ns.run(["ab", "-q", "-n", str(n), "-c", str(conns), "-s", "10", *(["-k"] if keepalive else []),
                "http://%s:%d/64.bin" % (STACK, PORT)], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    complete = int(re.search(r"Complete requests:\s+(\d+)", r.stdout).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", r.stdout).group(1))
    return complete, failed, r.stdout


def test_pipelined_requests_and_ab(group):
    """100 pipelined requests on one connection are answered in order, each
    body whole; ab, keep-alive and not, completes every request."""
    ngx = Nginx(group)
    try:
        got = group.ns.python(PIPELINE, STACK, PORT, 100)
        assert got == {"statuses": [200] * 100, "bodies": [ngx.expected("64.bin")]}
        for keepalive in (True, False):
            complete, failed, out = ab(group.ns, 2000, 16, keepalive)
            assert (complete, failed) == (2000, 0), out
    finally:
        ngx.stop()


def test_quit_finishes_requests_in_flight(group):
    """`nginx -s quit` while slow downloads of 10 MB are on their way: the
    workers finish them, whole, then nginx exits."""
    ngx = Nginx(group)
    try:
        curls = [subprocess.Popen(["ip", "netns", "exec", group.ns.name, "curl", "-sS", "-m", "60", "--limit-rate",
                                   "3M", "-o", "-", "http://%s:%d/10m.bin" % (STACK, PORT)], stdout=subprocess.PIPE)
                 for _ in range(4)]
        time.sleep(1)
        r = group.run(NGINX, "-c", ngx.conf_path, "-p", ngx.prefix, "-s", "quit")
        assert r.returncode == 0, r.stderr
        for c in curls:
            body, _ = c.communicate(timeout=90)
            assert c.returncode == 0 and hashlib.sha256(body).hexdigest() == ngx.expected("10m.bin")
        assert ngx.proc.wait(30) == 0, ngx.log()
        assert ngx.get("64.bin")[0] == 0  # nobody listens any more
    finally:
        ngx.stop()


def test_daemon_mode_and_reload_during_load(group):
    """nginx daemonizes (its parent exits first), then `nginx -s reload`
    during a wrk run of new connections: new workers take over, the old
    ones leave, none of the requests fails.  (Keep-alive connections an
    old worker closes while a request is on its way end with a reset on
    the kernel too: each request has its own connection here.)"""
    ngx = Nginx(group, daemon=True)
    try:
        old = set(ngx.workers())
        w = subprocess.Popen(["ip", "netns", "exec", group.ns.name, "wrk", "-t2", "-c32", "-d4s", "--timeout", "5s",
                              "-H", "Connection: close", "http://%s:%d/64.bin" % (STACK, PORT)],
                             stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        r = group.run(NGINX, "-c", ngx.conf_path, "-p", ngx.prefix, "-s", "reload")
        assert r.returncode == 0, r.stderr
        out, _ = w.communicate(timeout=60)
        assert "Socket errors" not in out and "Non-2xx" not in out, out
        for _ in range(100):
            if not old & set(ngx.workers()):
                break
            time.sleep(0.1)
        assert not old & set(ngx.workers()), "the old workers did not leave"
        assert ngx.get("100k.bin") == (200, ngx.expected("100k.bin"))
    finally:
        ngx.stop()


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two cores for two instances")
def test_no_pin_follows_worker_cpu_affinity(group):
    """--no-pin leaves the cores to nginx: worker_cpu_affinity puts worker 0
    on core 1 and worker 1 on core 0 after fork, once the workers are
    www-data, and each worker's listeners go to the instance of the core
    nginx gave it (the library attached to every instance at fork)."""
    ngx = Nginx(group, run_args=("--no-pin", "--verbose"), main="\nworker_cpu_affinity 10 01;")
    try:
        requests, errors, rate, out = wrk(group.ns, 2, 32, close=True)
        assert requests > 200 and errors == 0, out
        attached = {int(pid): (int(inst), int(core)) for pid, inst, core in
                    re.findall(r"pid (\d+) attached to instance (\d+) \(core (\d+)\)", ngx.log())}
        workers = ngx.workers()
        assert len(workers) == 2
        for pid in workers:
            with open("/proc/%d/status" % pid) as f:
                cpus = [x.split()[1] for x in f if x.startswith("Cpus_allowed_list:")][0]
            assert pid in attached, ngx.log()
            assert cpus == str(attached[pid][1]), (pid, cpus, attached)
        assert {attached[pid][0] for pid in workers} == {0, 1}
    finally:
        ngx.stop()


def test_2000_concurrent_connections(group):
    """wrk holds 2000 keep-alive connections at once: none fails."""
    ngx = Nginx(group)
    try:
        requests, errors, rate, out = wrk(group.ns, 3, 2000)
        assert requests > 2000 and errors == 0, out
    finally:
        ngx.stop()


def test_binary_upgrade_keeps_serving(group):
    """The upgrade sequence: USR2 makes the master exec a new master, which
    finds the listening sockets again (the library after exec); WINCH
    retires the old workers, QUIT the old master; the new ones serve,
    during a wrk run of new connections that loses no request."""
    ngx = Nginx(group, daemon=True)
    try:
        old_master = ngx.master()
        w = subprocess.Popen(["ip", "netns", "exec", group.ns.name, "wrk", "-t2", "-c16", "-d6s", "--timeout", "5s",
                              "-H", "Connection: close", "http://%s:%d/64.bin" % (STACK, PORT)],
                             stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        os.kill(old_master, signal.SIGUSR2)
        new_master = None
        for _ in range(100):
            # nginx renames nginx.pid to nginx.pid.oldbin, then the new
            # master writes nginx.pid: between the two there is none
            try:
                new_master = ngx.master()
            except (FileNotFoundError, ValueError):
                new_master = None
            if new_master not in (None, old_master):
                break
            time.sleep(0.1)
        assert new_master not in (None, old_master), ngx.log()
        os.kill(old_master, signal.SIGWINCH)
        time.sleep(1)
        os.kill(old_master, signal.SIGQUIT)
        for _ in range(100):
            if not os.path.exists("/proc/%d" % old_master):
                break
            time.sleep(0.1)
        assert not os.path.exists("/proc/%d" % old_master)
        out, _ = w.communicate(timeout=60)
        assert "Socket errors" not in out and "Non-2xx" not in out, out
        assert len(ngx.workers()) == len(group.status()["instances"])
        assert ngx.get("100k.bin") == (200, ngx.expected("100k.bin"))
    finally:
        ngx.stop()


def test_proxy_pass_to_upstreams_in_the_stack_and_on_the_kernel(group):
    """proxy_pass to an upstream under the library (over 127.0.0.1 in the
    stack, kept-alive connections opened by the workers) and to one on the
    kernel (a plain program: its connections stay the kernel's)."""
    kernel = subprocess.Popen(["ip", "netns", "exec", group.ns.name, sys.executable, "-m", "http.server", "18082",
                               "--bind", "127.0.0.1", "--directory", "/usr/share/doc"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ngx = Nginx(group, up_port=18081, kernel_port=18082, **PROXY)
    try:
        before = group.counters()
        for name in SIZES:
            assert ngx.get("up/" + name) == (200, ngx.expected(name)), name
        requests, errors, rate, out = wrk(group.ns, 2, 16, path="up/64.bin")
        assert requests > 500 and errors == 0, out
        after = group.counters()
        opened = sum(grew(before, after, "tcp_active_opens"))
        assert 0 < opened < requests / 10, "upstream connections: %d for %d requests" % (opened, requests)
        for _ in range(50):
            if ngx.get("kernel/")[0] == 200:
                break
            time.sleep(0.1)
        assert ngx.get("kernel/")[0] == 200
        assert sum(grew(after, group.counters(), "fallback_destination")) >= 1
    finally:
        ngx.stop()
        kernel.kill()
        kernel.wait()


def test_connection_churn_over_loopback_wraps_the_ports(group):
    """wrk under the library too, over 127.0.0.1 with Connection: close, for
    12 s: enough connections that the client's ephemeral ports (those of
    its instance) wrap several times while every pair is still in
    TIME-WAIT at the server, or at the client too after a simultaneous
    close.  Every new connection reopens its pair: no request fails, and
    from the first second to the eleventh no PAWS drop, no unacceptable ACK
    and no reset.  (wrk's exit drops connections mid-way, which ends some
    with resets, on the kernel too: that is left out.)  Issue 13: with a
    timestamp offset drawn per connection, half the reopening SYNs failed
    PAWS and waited a second, and the rate fell from 2.8k to 60 conn/s once
    the ports wrapped.  `make soak-connections` runs this for a minute."""
    ngx = Nginx(group)
    try:
        ports = (60999 - 32768 + 1) // len(group.status()["instances"])
        p = group.popen("wrk", "-t1", "-c32", "-d12s", "--timeout", "5s", "-H", "Connection: close",
                        "http://127.0.0.1:%d/64.bin" % PORT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
        try:
            time.sleep(1)
            before = group.counters()
            time.sleep(10)
            after = group.counters()
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                stop_pids([p.pid])
        assert p.returncode == 0, err
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        assert "Socket errors" not in out and "Non-2xx" not in out, out
        d = {k: sum(grew(before, after, k)) for k in ("drop_tcp_paws", "drop_tcp_bad_ack", "tcp_rst_tx",
                                                       "tcp_timewait_reuse")}
        assert requests > 1.5 * ports, "%d connections did not wrap %d ports: %s %s" % (requests, ports, d, out)
        assert d["drop_tcp_paws"] == 0 and d["drop_tcp_bad_ack"] == 0 and d["tcp_rst_tx"] == 0, d
        assert d["tcp_timewait_reuse"] > 0, d
    finally:
        ngx.stop()
