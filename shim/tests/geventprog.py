"""gevent, monkey-patched: a StreamServer on 0.0.0.0 and 50 greenlet
clients of CONNECT_ADDR in one process, printing one JSON object.  Run on
the kernel and under libshardsock.so, the outputs must be equal (as
pyprog.py).

usage: python3 geventprog.py CONNECT_ADDR PORT
"""
from gevent import monkey

monkey.patch_all()

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

ADDR, PORT = sys.argv[1], int(sys.argv[2])


def echo(sock, _addr):
    with sock:
        while True:
            b = sock.recv(65536)
            if not b:
                break
            sock.sendall(b)


def client(i):
    data = os.urandom(20_000 + i)
    with socket.create_connection((ADDR, PORT), timeout=20) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            got += b
    return hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


server = StreamServer(("0.0.0.0", PORT), echo)
server.start()
jobs = [gevent.spawn(client, i) for i in range(50)]
gevent.joinall(jobs, timeout=60)
server.stop()
print(json.dumps({"clients": len(jobs), "same": sum(bool(j.value) for j in jobs)}))
