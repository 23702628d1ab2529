"""Connections queued on a listener are accepted by a forked child, as
from the kernel's one queue: the parent listens and has accepted (so an
instance accepts its connections ahead, into the parent's queue), three
clients connect and send, the parent forks, and the child must accept all
three with their bytes -- once while the parent closes its copy of the
listener (a prefork server's parent), once while it keeps it open and
only waits.  Prints one JSON object.  forkqueue.py CONNECT_ADDR PORT
(uses PORT and PORT+1)"""
import json
import os
import select
import socket
import sys
import time

addr, base = sys.argv[1], int(sys.argv[2])


def queued_then_forked(port, parent_closes):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(16)
    listener.setblocking(False)
    # the parent uses the listener: it accepts one connection
    first = socket.create_connection((addr, port))
    select.select([listener], [], [], 5)
    a, _ = listener.accept()
    a.close()
    first.close()
    clients = []
    for i in range(3):
        c = socket.create_connection((addr, port))
        c.sendall(b"q%d" % i)
        clients.append(c)
    time.sleep(0.3)  # queued, their bytes arrived: under the library, accepted ahead into the parent's queue
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            select.select([listener], [], [], 0.1)
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            try:
                got.append(conn.recv(10).decode())  # readable at once, as on the kernel
            except BlockingIOError:
                got.append("(not readable at once)")
            conn.close()
        os.write(w, json.dumps(sorted(got)).encode())
        os._exit(0)
    if parent_closes:
        listener.close()
    os.close(w)
    os.waitpid(pid, 0)
    got = json.loads(os.read(r, 4096).decode())
    os.close(r)
    if not parent_closes:
        listener.close()
    for c in clients:
        c.close()
    return got


out = {"parent closes": queued_then_forked(base, True), "parent keeps it": queued_then_forked(base + 1, False)}
print(json.dumps(out))
