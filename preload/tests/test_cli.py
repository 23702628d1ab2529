import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "preload.cli", *args], capture_output=True, text=True, timeout=60)


def test_counters_json_lists_the_header():
    r = run("counters", "--json")
    assert r.returncode == 0
    desc = json.loads(r.stdout)
    assert desc["tcp_passive_opens"] == "connections opened by a peer's SYN"
    assert "drop_ip_checksum" in desc


def test_no_command_is_usage_error():
    r = run()
    assert r.returncode == 2
