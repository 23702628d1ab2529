"""Writes an nginx configuration for the matrix into PREFIX: static files
(www/64.bin, www/1m.bin), serving on BIND:PORT.  nginx_conf.py PREFIX BIND PORT"""
import os
import sys

prefix, bind, port = sys.argv[1:4]
os.makedirs(os.path.join(prefix, "www"), exist_ok=True)
os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
with open(os.path.join(prefix, "www", "64.bin"), "wb") as f:
    f.write(b"6" * 64)
with open(os.path.join(prefix, "www", "1m.bin"), "wb") as f:
    f.write(bytes(range(256)) * 4096)
with open(os.path.join(prefix, "nginx.conf"), "w") as f:
    f.write("""worker_processes 2;
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp; fastcgi_temp_path {p}/tmp;
    uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;
    server {{ listen {b}:{port}; root {p}/www; }}
}}
""".format(p=prefix, b=bind, port=port))
