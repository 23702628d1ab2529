"""Clients of the matrix's scenarios (compat_tests/scenarios/*.yaml), each
printing what it observed, so the kernel's run and shardsock's compare.

    client.py echo HOST PORT NBYTES         send NBYTES, half-close, read the echo
    client.py echo-many HOST PORT CONNS N   CONNS connections at once, N bytes each
    client.py asyncio-echo HOST PORT CONNS N
    client.py gevent-echo HOST PORT CONNS N (gevent, monkey-patched)
    client.py urllib URL                    GET with urllib.request
    client.py httpclient HOST PORT PATH     GET with http.client, keep-alive, 20 times
    client.py gevent-http URL               20 monkey-patched urllib GETs at once
    client.py xmlrpc URL
    client.py memcached HOST PORT
"""
import sys

if len(sys.argv) > 1 and sys.argv[1].startswith("gevent"):
    from gevent import monkey
    monkey.patch_all()

import hashlib  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402


def data(n, seed=0):
    """n bytes, the same on every run."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def echo_one(host, port, n, seed=0):
    c = socket.create_connection((host, port), timeout=20)
    payload = data(n, seed)
    t = threading.Thread(target=lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR)))
    t.start()
    got = bytearray()
    while True:
        b = c.recv(65536)
        if not b:
            break
        got += b
    t.join()
    c.close()
    return got == payload, len(got)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "echo":
        same, n = echo_one(args[0], int(args[1]), int(args[2]))
        print("echoed %d bytes, same: %s" % (n, same))
    elif mode in ("echo-many", "gevent-echo"):
        host, port, conns, n = args[0], int(args[1]), int(args[2]), int(args[3])
        results = [None] * conns
        if mode == "gevent-echo":
            import gevent
            jobs = [gevent.spawn(lambda i=i: results.__setitem__(i, echo_one(host, port, n, i)))
                    for i in range(conns)]
            gevent.joinall(jobs, timeout=30)
        else:
            ts = [threading.Thread(target=lambda i=i: results.__setitem__(i, echo_one(host, port, n, i)))
                  for i in range(conns)]
            [t.start() for t in ts]
            [t.join(30) for t in ts]
        print("%d connections, %d echoed whole" % (conns, sum(1 for r in results if r and r[0])))
    elif mode == "asyncio-echo":
        import asyncio

        async def one(i, host, port, n):
            r, w = await asyncio.open_connection(host, port)
            payload = data(n, i)
            w.write(payload)
            await w.drain()
            w.write_eof()
            got = await r.read()
            w.close()
            return got == payload

        async def run(host, port, conns, n):
            return await asyncio.gather(*(one(i, host, port, n) for i in range(conns)))
        ok = asyncio.run(run(args[0], int(args[1]), int(args[2]), int(args[3])))
        print("%d connections, %d echoed whole" % (len(ok), sum(ok)))
    elif mode == "urllib":
        import urllib.request
        body = urllib.request.urlopen(args[0], timeout=20).read()
        print("%d bytes, sha256 %s" % (len(body), hashlib.sha256(body).hexdigest()))
    elif mode == "gevent-http":
        import gevent
        import urllib.request
        jobs = [gevent.spawn(lambda: urllib.request.urlopen(args[0], timeout=20).read()) for _ in range(20)]
        gevent.joinall(jobs, timeout=30)
        print(sorted({"%d bytes, sha256 %s" % (len(j.value), hashlib.sha256(j.value).hexdigest()[:16])
                      if j.value else "failed" for j in jobs}), sum(1 for j in jobs if j.value))
    elif mode == "httpclient":
        import http.client
        c = http.client.HTTPConnection(args[0], int(args[1]), timeout=20)
        digests = set()
        for _ in range(20):
            c.request("GET", args[2])
            r = c.getresponse()
            digests.add((r.status, hashlib.sha256(r.read()).hexdigest()))
        print(sorted(digests))
    elif mode == "xmlrpc":
        import xmlrpc.client
        p = xmlrpc.client.ServerProxy(args[0])
        print(p.pow(3, 7), p.echo("x" * 100000) == "x" * 100000, p.system.listMethods())
    elif mode == "memcached":
        c = socket.create_connection((args[0], int(args[1])), timeout=10)
        value = data(5000).hex()
        c.sendall(b"set k 0 0 %d\r\n%s\r\nget k\r\ndelete k\r\nget k\r\nquit\r\n" % (len(value), value.encode()))
        got = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            got += b
        print(got.replace(value.encode(), b"<value>").decode())
    else:
        sys.exit("unknown mode %s" % mode)


if __name__ == "__main__":
    main()
