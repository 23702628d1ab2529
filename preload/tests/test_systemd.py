"""The systemd unit, scripts/shardsock@.service: Type=notify, and the
notify protocol for real (a datagram socket as systemd's $NOTIFY_SOCKET):
READY=1 comes once every instance is ready, STOPPING=1 at SIGTERM; the
group's own configuration file wins over the shared one."""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from topology import Netns  # noqa: E402

RUN_DIR = "/run/shardsock-systemd"


def unit():
    with open(os.path.join(ROOT, "scripts", "shardsock@.service")) as f:
        return f.read()


def test_unit_is_type_notify_and_finds_shardsock_on_the_path():
    text = unit()
    assert re.search(r"^Type=notify$", text, re.M) and re.search(r"^NotifyAccess=main$", text, re.M)
    argv = shlex.split(re.search(r"^ExecStart=(.*)$", text, re.M).group(1))
    assert argv[0] == "shardsock" and argv[1:] == ["up", "--foreground", "--group", "%i"]


def test_the_group_file_wins_over_the_shared_one(tmp_path, monkeypatch):
    from preload import config
    (tmp_path / "web.toml").write_text("spin_us = 3\n")
    (tmp_path / "shardsock.toml").write_text("spin_us = 9\n")
    monkeypatch.delenv("SHARDSOCK_CONFIG", raising=False)
    monkeypatch.setattr(config, "SEARCH_PATH", (str(tmp_path / "{group}.toml"), str(tmp_path / "shardsock.toml")))
    cfg, source = config.effective(None, {"group": "web"})
    assert cfg["spin_us"] == 3 and source["spin_us"] == str(tmp_path / "web.toml")
    cfg, source = config.effective(None, {"group": "db"})
    assert cfg["spin_us"] == 9 and source["spin_us"] == str(tmp_path / "shardsock.toml")
    assert config.effective(str(tmp_path / "shardsock.toml"), {"group": "web"})[0]["spin_us"] == 9


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices")
def test_ready_and_stopping_on_the_notify_socket(tmp_path):
    name = "sd%d" % os.getpid()
    sock_path = str(tmp_path / "notify")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(sock_path)
    sd.settimeout(30)
    ns = Netns()
    argv = shlex.split(re.search(r"^ExecStart=(.*)$", unit(), re.M).group(1).replace("%i", name))
    p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-m", "preload.cli", *argv[1:],
                          "--run-dir", RUN_DIR, "--cores", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONPATH=ROOT, NOTIFY_SOCKET=sock_path))
    try:
        msg = sd.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in msg.splitlines())
        assert fields["READY"] == "1" and fields["MAINPID"] == str(p.pid), msg
        assert fields["STATUS"] == "group %s up: 1 instances" % name
        # READY=1 means ready: every instance answers now
        r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m", "preload.cli", "status",
                            "--group", name, "--run-dir", RUN_DIR, "--json"], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=ROOT))
        st = json.loads(r.stdout)
        assert r.returncode == 0 and all(i["healthy"] for i in st["instances"]), r.stdout
        # the instances do not see the socket: only the main process speaks
        with open("/proc/%d/environ" % st["instances"][0]["pid"], "rb") as f:
            assert b"NOTIFY_SOCKET=" not in f.read()
        p.send_signal(signal.SIGTERM)
        msg = sd.recv(4096).decode()
        assert msg.splitlines()[0] == "STOPPING=1", msg
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert not os.path.exists(os.path.join(RUN_DIR, name))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m", "preload.cli", "down", "--group", name,
                        "--run-dir", RUN_DIR], capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))
        ns.delete()
        sd.close()
