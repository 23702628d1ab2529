"""Sockets across exec, run on the kernel and under libshardsock.so with the
same output expected (test_shim.py).

usage: execprog.py ADDR PORT
  Listens on 0.0.0.0:PORT and PORT+1 and connects to ADDR:PORT.

1. The program makes a listener and a connection (both ends), leaves
   bytes unread in it, and execs itself: in the new image the listener
   still accepts, the unread bytes are still there, the connection still
   works both ways, and a socket marked close-on-exec is gone (its peer
   sees the end).
2. inetd's way: a forked child puts an accepted connection on its
   standard input and output and execs /bin/sh, which answers with read
   and echo; then subprocess (close_fds) runs a program that must not
   hold the parent's sockets.
"""
import json
import os
import socket
import subprocess
import sys

ADDR, PORT = sys.argv[1], int(sys.argv[2])


def listener(port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen()
    return srv


def recv_exactly(s, n):
    got = b""
    while len(got) < n:
        b = s.recv(n - len(got))
        if not b:
            break
        got += b
    return got


def before_exec():
    srv = listener(PORT)
    c = socket.create_connection((ADDR, PORT), timeout=10)
    s, _ = srv.accept()
    c.sendall(b"sent before exec")
    gone_c = socket.create_connection((ADDR, PORT), timeout=10)
    gone_s, _ = srv.accept()  # close-on-exec (Python's default): closes at exec
    for x in (srv, c, s, gone_c):
        x.set_inheritable(True)
    # let the bytes arrive, unread, before the exec
    s.settimeout(10)
    s.recv(1, socket.MSG_PEEK)
    gone_c.settimeout(10)
    os.execv(sys.executable, [sys.executable, __file__, ADDR, str(PORT), "after",
                              str(srv.fileno()), str(c.fileno()), str(s.fileno()), str(gone_c.fileno())])


def after_exec(out, srv_fd, c_fd, s_fd, gone_fd):
    srv, c, s = (socket.socket(fileno=int(fd)) for fd in (srv_fd, c_fd, s_fd))
    gone_c = socket.socket(fileno=int(gone_fd))
    for x in (c, s, gone_c):
        x.settimeout(10)
    out["exec"] = {
        "unread": recv_exactly(s, 16).decode(),
        "listener": srv.getsockname()[1] == PORT and srv.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1,
        "close_on_exec_peer": gone_c.recv(10).decode(),
    }
    s.sendall(b"answered after exec")
    out["exec"]["answer"] = recv_exactly(c, 19).decode()
    c2 = socket.create_connection((ADDR, PORT), timeout=10)
    s2, _ = srv.accept()
    c2.sendall(b"new")
    out["exec"]["new_connection"] = recv_exactly(s2, 3).decode()
    for x in (c, s, c2, s2, gone_c, srv):
        x.close()


def inetd(out):
    srv = listener(PORT + 1)
    c = socket.create_connection((ADDR, PORT + 1), timeout=10)
    s, _ = srv.accept()
    pid = os.fork()
    if pid == 0:
        os.dup2(s.fileno(), 0)
        os.dup2(s.fileno(), 1)
        os.execvp("sh", ["sh", "-c", "read line; echo got: $line"])
    s.close()
    c.sendall(b"hello from the client\n")
    got = b""
    while True:
        b = c.recv(100)
        if not b:
            break
        got += b
    os.waitpid(pid, 0)
    c.close()
    # subprocess closes what it does not pass: the child holds no socket
    c = socket.create_connection((ADDR, PORT + 1), timeout=10)
    s, _ = srv.accept()
    r = subprocess.run(["sh", "-c", "ls /proc/self/fd | wc -l"], capture_output=True, text=True, timeout=30)
    s.close()
    c.settimeout(10)
    out["inetd"] = {"got": got.decode(), "subprocess_fds": int(r.stdout), "closed": c.recv(10).decode()}
    c.close()
    srv.close()


if len(sys.argv) == 3:
    before_exec()
out = {}
after_exec(out, *sys.argv[4:8])
inetd(out)
print(json.dumps(out, sort_keys=True))
