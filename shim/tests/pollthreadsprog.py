"""Threads asleep in poll() at once, each on a pipe and a socket of its
own: the one whose socket gets data must wake, whichever thread drains the
library's doorbell first.

Each round: thread A goes to sleep first, alone and with no timeout; then
eight B threads go to sleep beside it; then A's peer writes one byte.  On
the kernel A always wakes.  Prints {"woke": [...]} (one entry per round).
Args: ADDRESS PORT (the listener is bound to 0.0.0.0:PORT)."""
import json
import os
import select
import socket
import sys
import threading
import time

addr, port = sys.argv[1], int(sys.argv[2])
ROUNDS, SLEEPERS = 10, 8

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen(64)


def pair():
    c = socket.create_connection((addr, port), timeout=10)
    s, _ = listener.accept()
    return c, s


def sleep_in_poll(rfd, sock, woke=None):
    p = select.poll()
    p.register(rfd, select.POLLIN)
    p.register(sock, select.POLLIN)
    p.poll()  # no timeout
    if woke is not None:
        woke.set()


woke_rounds = []
for r in range(ROUNDS):
    # every connection is made before anyone sleeps: no other news wakes A
    a_peer, a = pair()
    bs = [pair() + os.pipe() for _ in range(SLEEPERS)]
    a_stop_r, a_stop_w = os.pipe()
    woke = threading.Event()
    ta = threading.Thread(target=sleep_in_poll, args=(a_stop_r, a, woke))
    ta.start()
    time.sleep(0.1)  # A is asleep, the only one
    tbs = [threading.Thread(target=sleep_in_poll, args=(rb, s)) for c, s, rb, wb in bs]
    for t in tbs:
        t.start()
    time.sleep(0.1)  # they sleep beside it
    a_peer.send(b"x")
    woke_rounds.append(woke.wait(3))
    os.write(a_stop_w, b"x")
    ta.join()
    for (c, s, rb, wb), t in zip(bs, tbs):
        os.write(wb, b"x")
        t.join()
        for x in (rb, wb):
            os.close(x)
        c.close()
        s.close()
    for x in (a_stop_r, a_stop_w):
        os.close(x)
    a_peer.close()
    a.close()
print(json.dumps({"woke": woke_rounds}))
