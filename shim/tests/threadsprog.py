"""Threads with epoll sets of their own, as memcached's workers: the main
thread accepts and hands each connection to a worker over a queue and a
pipe; each worker waits in epoll_wait on its pipe and its connections and
echoes.  Eight client threads make 300 one-byte round trips each.  Under
the library every worker sleeps in the kernel beside the same doorbell,
and news for one worker's socket must reach it whichever thread took the
ring.  Prints what the clients saw.  threadsprog.py ADDRESS PORT"""
import json
import os
import queue
import select
import socket
import sys
import threading

addr, port = sys.argv[1], int(sys.argv[2])
WORKERS, CLIENTS, TRIPS = 4, 8, 300


class Worker(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.q = queue.Queue()
        self.r, self.w = os.pipe()
        self.ep = select.epoll()
        self.ep.register(self.r, select.EPOLLIN)
        self.conns = {}

    def run(self):
        while True:
            for fd, _ in self.ep.poll():
                if fd == self.r:
                    os.read(self.r, 1)
                    c = self.q.get()
                    self.conns[c.fileno()] = c
                    self.ep.register(c.fileno(), select.EPOLLIN)
                    continue
                c = self.conns[fd]
                try:
                    b = c.recv(100)
                except BlockingIOError:
                    continue
                if not b:
                    self.ep.unregister(fd)
                    del self.conns[fd]
                    c.close()
                else:
                    c.sendall(b)


workers = [Worker() for _ in range(WORKERS)]
for w in workers:
    w.start()
lis = socket.socket()
lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lis.bind(("0.0.0.0", port))
lis.listen(64)


def acceptor():
    for i in range(CLIENTS):
        c, _ = lis.accept()
        c.setblocking(False)
        w = workers[i % WORKERS]
        w.q.put(c)
        os.write(w.w, b"x")


threading.Thread(target=acceptor, daemon=True).start()
results = [None] * CLIENTS


def client(i):
    c = socket.create_connection((addr, port), timeout=5)
    n = 0
    try:
        for k in range(TRIPS):
            c.sendall(bytes([k % 256]))
            if c.recv(1) != bytes([k % 256]):
                break
            n += 1
    except OSError as e:
        results[i] = "error after %d: %s" % (n, type(e).__name__)
        return
    c.close()
    results[i] = n


ts = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
for t in ts:
    t.start()
for t in ts:
    t.join(60)
print(json.dumps({"clients": results}))
