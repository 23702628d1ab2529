"""Python's socket layers, each as a server on 0.0.0.0 and a client of
CONNECT_ADDR in one process, printing one JSON object of outcomes.  Run on
the kernel (CONNECT_ADDR 127.0.0.1) and under libshardsock.so (the stack's
address: the servers' side is the stack's; the kernel side's: the
clients' is), the outputs must be equal.

usage: python3 pyprog.py CONNECT_ADDR BASE_PORT
"""
import asyncio
import faulthandler
import hashlib
import http.server
import json
import os
import selectors
import socket
import socketserver
import sys
import threading
import urllib.request

ADDR, BASE = sys.argv[1], int(sys.argv[2])
DATA = os.urandom(300_000)
out = {}


def digest(b):
    return hashlib.sha256(b).hexdigest()[:16]


def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    return s


def echo_once(srv):
    c, _ = srv.accept()
    with c:
        while True:
            b = c.recv(65536)
            if not b:
                break
            c.sendall(b)


def blocking():
    srv = listener(BASE)
    t = threading.Thread(target=echo_once, args=(srv,))
    t.start()
    c = socket.create_connection((ADDR, BASE), timeout=10)
    got = bytearray()
    reader = threading.Thread(target=lambda: [got.extend(b) for b in iter(lambda: c.recv(65536), b"")])
    reader.start()
    c.sendall(DATA)
    c.shutdown(socket.SHUT_WR)
    reader.join(20)
    c.close()
    t.join(20)
    srv.close()
    out["blocking"] = {"bytes": len(got), "same": digest(got) == digest(DATA)}


def timeouts():
    srv = listener(BASE + 1)
    c = socket.create_connection((ADDR, BASE + 1), timeout=10)
    s, _ = srv.accept()
    c.settimeout(0.2)
    try:
        c.recv(1)
        res = "data"
    except socket.timeout:
        res = "timeout"
    s.sendall(b"late")
    c.settimeout(5)
    late = c.recv(10)
    c.setblocking(False)
    try:
        c.recv(1)
        nb = "data"
    except BlockingIOError:
        nb = "EAGAIN"
    s.close()
    c.settimeout(5)
    eof = c.recv(10)
    c.close()
    srv.close()
    out["timeouts"] = {"recv": res, "late": late.decode(), "nonblocking": nb, "eof": eof.decode()}


def with_selector(cls, port):
    srv = listener(port)
    srv.setblocking(False)
    sel = cls()
    sel.register(srv, selectors.EVENT_READ, "listen")
    c = socket.socket()
    c.setblocking(False)
    err = c.connect_ex((ADDR, port))
    sel.register(c, selectors.EVENT_WRITE, "client")
    to_send, got, conns = memoryview(DATA), bytearray(), {}
    connected = False
    while len(got) < len(DATA):
        # the client stays writable while it has bytes left, and the echo
        # side is served on every pass
        if to_send:
            sel.modify(c, selectors.EVENT_READ | selectors.EVENT_WRITE, "client")
        for key, ev in sel.select(timeout=10) or [(None, None)]:
            if key is None:
                raise RuntimeError("selector timed out")
            if key.data == "listen":
                s, _ = srv.accept()
                s.setblocking(False)
                conns[s] = bytearray()
                sel.register(s, selectors.EVENT_READ, "server")
            elif key.data == "server":
                s = key.fileobj
                try:
                    b = s.recv(65536)
                except BlockingIOError:
                    b = b""
                if b:
                    conns[s] += b
            elif key.data == "client":
                if ev & selectors.EVENT_WRITE:
                    connected = True
                    try:
                        if to_send:
                            n = c.send(to_send[:65536])
                            to_send = to_send[n:]
                    except BlockingIOError:
                        pass
                    if not to_send:
                        sel.modify(c, selectors.EVENT_READ, "client")
                if ev & selectors.EVENT_READ:
                    try:
                        got += c.recv(65536)
                    except BlockingIOError:
                        pass
        # flush what the echo side still holds
        for s, pending in conns.items():
            if pending:
                try:
                    n = s.send(pending)
                    del pending[:n]
                except BlockingIOError:
                    pass
    for s in list(conns):
        sel.unregister(s)
        s.close()
    sel.unregister(c)
    sel.unregister(srv)
    sel.close()
    c.close()
    srv.close()
    return {"connect_ex": os.strerror(err) if err else 0, "connected": connected,
            "same": digest(got) == digest(DATA)}


def selectors_all():
    out["selectors"] = {cls.__name__: with_selector(cls, BASE + 2 + i) for i, cls in enumerate(
        [selectors.EpollSelector, selectors.PollSelector, selectors.SelectSelector])}


def asyncio_streams():
    async def handle(r, w):
        while True:
            b = await r.read(65536)
            if not b:
                break
            w.write(b)
            await w.drain()
        w.close()

    async def main():
        server = await asyncio.start_server(handle, "0.0.0.0", BASE + 5)
        r, w = await asyncio.open_connection(ADDR, BASE + 5)
        w.write(DATA)
        await w.drain()
        w.write_eof()
        got = await r.read()
        w.close()
        server.close()
        await server.wait_closed()
        return got

    got = asyncio.run(main())
    out["asyncio"] = {"bytes": len(got), "same": digest(got) == digest(DATA)}


def line_server(cls, port, word, count):
    """socketserver's echo of upper-cased lines, each client one line."""
    class Upper(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line.upper())

    cls.allow_reuse_address = True
    with cls(("0.0.0.0", port), Upper) as srv:
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
        t.start()
        answers = []
        for i in range(count):
            with socket.create_connection((ADDR, port), timeout=10) as c, c.makefile("rwb") as f:
                f.write(b"%s %d\n" % (word, i))
                f.flush()
                answers.append(f.readline().decode().strip())
                # a handler forked later holds a copy of this socket too:
                # only shutdown ends the connection for every holder
                c.shutdown(socket.SHUT_RDWR)
        srv.shutdown()
        t.join()
    return answers


def threading_server():
    out["threading_server"] = line_server(socketserver.ThreadingTCPServer, BASE + 6, b"line", 5)


def http_urllib():
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    here = os.path.dirname(os.path.abspath(__file__))
    handler = lambda *a, **k: Quiet(*a, directory=here, **k)  # noqa: E731
    with http.server.ThreadingHTTPServer(("0.0.0.0", BASE + 7), handler) as srv:
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
        t.start()
        with urllib.request.urlopen("http://%s:%d/pyprog.py" % (ADDR, BASE + 7), timeout=10) as r:
            body = r.read()
        srv.shutdown()
        t.join()
    with open(os.path.join(here, "pyprog.py"), "rb") as f:
        out["http"] = {"status": r.status, "same": body == f.read()}


def forking_server():
    out["forking_server"] = line_server(socketserver.ForkingTCPServer, BASE + 8, b"fork", 3)


def fork_shares_a_connection():
    """A child writes on a connection it inherited, then exits; the
    parent's copy still works, and the connection ends only when both
    copies are closed."""
    srv = listener(BASE + 9)
    c = socket.create_connection((ADDR, BASE + 9), timeout=10)
    s, _ = srv.accept()
    pid = os.fork()
    if pid == 0:
        s.sendall(b"from child;")
        s.close()
        os._exit(0)
    os.waitpid(pid, 0)
    s.sendall(b"from parent")
    got = b""
    while len(got) < 22:
        got += c.recv(100)
    s.close()
    eof = c.recv(10)
    c.close()
    srv.close()
    out["fork_shares"] = {"got": got.decode(), "eof": eof.decode()}


def dual_stack():
    """An IPv6 wildcard listener takes IPv4 clients (mapped addresses), as
    Python's http.server binds by default where IPv6 is up; and an IPv6
    client reaches an IPv4 address through its mapped form."""
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", BASE + 10))
    srv.listen()
    c = socket.create_connection((ADDR, BASE + 10), timeout=10)
    s, peer = srv.accept()
    c.sendall(b"v4 to v6")
    first = s.recv(100)
    c6 = socket.socket(socket.AF_INET6)
    c6.settimeout(10)
    c6.connect(("::ffff:" + ADDR, BASE + 10))
    s6, peer6 = srv.accept()
    c6.sendall(b"mapped")
    second = s6.recv(100)
    out["dual_stack"] = {"listener": srv.getsockname()[0], "peer_mapped": peer[0] == "::ffff:" + c.getsockname()[0],
                         "first": first.decode(), "client6_peer": c6.getpeername()[0] == "::ffff:" + ADDR,
                         "second": second.decode(), "peer6_mapped": peer6[0].startswith("::ffff:")}
    for x in (c, s, c6, s6, srv):
        x.close()


def close_frees_the_port():
    """A closed listener's port is free at once: bound again (no
    SO_REUSEADDR) right after each close, 50 times, then it serves."""
    binds = 0
    for _ in range(50):
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", BASE + 9))
            s.listen(4)
            binds += 1
        except OSError as e:
            out["close_frees_the_port"] = {"error": e.errno}
            return
        finally:
            s.close()
    srv = listener(BASE + 9)
    threading.Thread(target=echo_once, args=(srv,), daemon=True).start()
    c = socket.create_connection((ADDR, BASE + 9), timeout=10)
    c.sendall(b"after")
    c.shutdown(socket.SHUT_WR)
    out["close_frees_the_port"] = {"binds": binds, "echo": c.recv(100).decode()}
    c.close()
    srv.close()


STEPS = (blocking, timeouts, selectors_all, asyncio_streams, threading_server, http_urllib, forking_server,
         fork_shares_a_connection, dual_stack, close_frees_the_port)
only = os.environ.get("PYPROG_STEPS")  # a comma-separated subset, for debugging
# A step that hangs shows where: every thread's stack on stderr, and exit,
# before the test's own time limit (120 s) kills it without a word.
faulthandler.dump_traceback_later(90, exit=True)
for step in STEPS:
    if not only or step.__name__ in only.split(","):
        print("pyprog: %s" % step.__name__, file=sys.stderr, flush=True)
        step()
print(json.dumps(out, sort_keys=True))
