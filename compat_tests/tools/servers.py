"""Servers of the matrix's scenarios, Python's own: each serves until it
is stopped.

    servers.py threading|forking BIND PORT   socketserver echo
    servers.py asyncio BIND PORT             asyncio streams echo
    servers.py xmlrpc BIND PORT              xmlrpc.server: pow, echo
    servers.py gevent-stream BIND PORT       gevent StreamServer echo
    servers.py gevent-wsgi BIND PORT         gevent pywsgi, a 100 KB body
"""
import sys

mode, bind, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode.startswith("gevent"):
    from gevent import monkey
    monkey.patch_all()

import socketserver  # noqa: E402


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            b = self.request.recv(65536)
            if not b:
                break
            self.request.sendall(b)


if mode in ("threading", "forking"):
    cls = socketserver.ThreadingTCPServer if mode == "threading" else socketserver.ForkingTCPServer
    cls.allow_reuse_address = True
    with cls((bind, port), Echo) as s:
        s.serve_forever()
elif mode == "asyncio":
    import asyncio

    async def echo(r, w):
        while True:
            b = await r.read(65536)
            if not b:
                break
            w.write(b)
            await w.drain()
        w.close()

    async def main():
        s = await asyncio.start_server(echo, bind, port)
        async with s:
            await s.serve_forever()
    asyncio.run(main())
elif mode == "xmlrpc":
    from xmlrpc.server import SimpleXMLRPCServer
    with SimpleXMLRPCServer((bind, port), logRequests=False) as s:
        s.register_introspection_functions()
        s.register_function(pow)
        s.register_function(lambda x: x, "echo")
        s.serve_forever()
elif mode == "gevent-stream":
    from gevent.server import StreamServer

    def handle(sock, addr):
        while True:
            b = sock.recv(65536)
            if not b:
                break
            sock.sendall(b)
        sock.close()
    StreamServer((bind, port), handle).serve_forever()
elif mode == "gevent-wsgi":
    from gevent.pywsgi import WSGIServer
    body = bytes(range(256)) * 400

    def app(env, start):
        start("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    WSGIServer((bind, port), app, log=None).serve_forever()
else:
    sys.exit("unknown mode %s" % mode)
