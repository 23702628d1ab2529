"""Settings of an instance group and of the programs run under it: one
table of keys (name, default, meaning), the file search path, loading and
checking a TOML file, and the effective configuration.

Precedence, lowest first: the defaults below, the configuration file, the
command line.  The file is the one ``--config`` names, else the one
``$SHARDSOCK_CONFIG`` names, else ``/etc/shardsock/GROUP.toml`` (GROUP:
--group, default "default"), else ``/etc/shardsock/shardsock.toml``, the
first that exists.  docs/CONFIG.md is the reference; a test keeps it equal to KEYS.
"""
import ipaddress
import os
import re

CONFIG_DIR = "/etc/shardsock"
SEARCH_PATH = (CONFIG_DIR + "/{group}.toml", CONFIG_DIR + "/shardsock.toml")  # the group's own file first
BACKENDS = ("tap", "afpacket", "afxdp")
PROFILES = {
    # the library's settings each profile sets (shim/shim.c SS_SETTINGS)
    "throughput": {"SHARDSOCK_POLL_US": "0"},
    "latency": {"SHARDSOCK_POLL_US": "50"},
}


class ConfigError(Exception):
    """A bad key or value; the message names the key and the fix."""


def _cores(v):
    from preload.instances import parse_cores
    try:
        return bool(parse_cores(v))
    except ValueError:
        return False


def _cidr(v):
    try:
        ipaddress.ip_interface(v)
        return "/" in v
    except ValueError:
        return False


def _addr(v):
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return False


def _port(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536


# name: (default, check, what a good value is, meaning)
KEYS = {
    "group": ("default", lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,32}", v) is not None,
              "a name of 1-32 letters, digits, _ and -",
              "the instance group's name: its run directory and shared memory carry it"),
    "run_dir": ("/run/shardsock", lambda v: isinstance(v, str) and v.startswith("/"), "an absolute path",
                "where groups keep their state, control sockets and logs (<run_dir>/<group>/)"),
    "backend": ("tap", lambda v: v in BACKENDS, "one of " + ", ".join(BACKENDS),
                "packet I/O: tap (a multi-queue TAP device up creates), afpacket or afxdp (an existing "
                "interface)"),
    "interface": ("ss0", lambda v: isinstance(v, str) and 0 < len(v) < 16, "an interface name (1-15 characters)",
                  "the TAP device to create, or the interface afpacket/afxdp run on"),
    "address": ("198.18.0.2/24", lambda v: isinstance(v, str) and _cidr(v), "an IPv4 address with prefix, "
                "e.g. 198.18.0.2/24", "the stack's address and subnet"),
    "host_address": ("198.18.0.1/24", lambda v: isinstance(v, str) and _cidr(v), "an IPv4 address with prefix",
                     "tap: the kernel side's address on the device (programs on the host reach the stack "
                     "through it)"),
    "gateway": (None, lambda v: v is None or (isinstance(v, str) and _addr(v)), "an IPv4 address",
                "next hop for destinations off the subnet (none: only the subnet is reachable)"),
    "cores": (None, lambda v: v is None or (isinstance(v, str) and _cores(v)),
              "a CPU list such as \"0-3,6\" (CPUs 0-8191)",
              "one instance per listed core (none: every online core)"),
    "echo": (None, lambda v: v is None or _port(v), "a port, 1-65535",
             "port of the built-in TCP echo service (RFC 862); none: off"),
    "discard": (None, lambda v: v is None or _port(v), "a port, 1-65535",
                "port of the built-in TCP discard service (RFC 863); none: off"),
    "spin_us": (20, lambda v: isinstance(v, int) and 0 <= v <= 1000000, "microseconds, 0-1000000",
                "how long an instance busy-polls after work before it sleeps"),
    "ready_timeout_s": (10, lambda v: isinstance(v, (int, float)) and v > 0, "seconds, more than 0",
                        "how long up waits for each instance to attach its queue"),
    "restart_limit": (5, lambda v: isinstance(v, int) and v >= 0, "a count, 0 or more",
                      "restarts of one instance the supervisor makes within restart_window_s; then it stays "
                      "down (0: never restart)"),
    "restart_window_s": (60, lambda v: isinstance(v, (int, float)) and v > 0, "seconds, more than 0",
                         "the window restart_limit counts in"),
    "read_group": ("shardsock", lambda v: isinstance(v, (str, int)) and not isinstance(v, bool) and (
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", str(v)) is not None or (isinstance(v, int) and v >= 0)),
                   "a group name or a gid",
                   "members of this Unix group may run status, stat, top and netstat (read-only) without root; "
                   "up gives it the group's run directory and the instances' control sockets, which answer its "
                   "members only what reads (none such on the system: root only)"),
    "profile": (None, lambda v: v is None or v in PROFILES, "one of " + ", ".join(PROFILES),
                "run: the library's settings for throughput (sleep at once) or latency (busy-poll 50 us "
                "before sleeping); none: throughput's"),
    "pin": (True, lambda v: isinstance(v, bool), "true or false",
            "run: place each process on the next instance and run it on that core (false: the instance "
            "of the core the program chose, as --no-pin)"),
    "loopback": (True, lambda v: isinstance(v, bool), "true or false",
                 "run: 127.0.0.0/8 connections between programs under the library go through the stack"),
}
DEFAULTS = {k: v[0] for k, v in KEYS.items()}


def find_file(explicit=None, group=None):
    """The configuration file to read: --config, else $SHARDSOCK_CONFIG,
    else the group's own /etc/shardsock/GROUP.toml, else the shared
    /etc/shardsock/shardsock.toml (None: no file)."""
    if explicit:
        return explicit
    env = os.environ.get("SHARDSOCK_CONFIG")
    if env:
        return env
    for path in SEARCH_PATH:
        if "{group}" in path and not group:
            continue
        path = path.format(group=group)
        if os.path.exists(path):
            return path
    return None


def short(value, limit=40):
    """repr(value), cut short: an error message stays one line whatever the input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...'"


def short_path(path, limit=200):
    """A path for a message: its end, when it is long."""
    return path if len(path) <= limit else "..." + path[-limit:]


def check(key, value, where):
    if key not in KEYS:
        raise ConfigError("%s: unknown key %s; valid keys: %s (see docs/CONFIG.md)"
                          % (where, short(key), ", ".join(sorted(KEYS))))
    if not KEYS[key][1](value):
        raise ConfigError("%s: %s = %s is not valid; use %s" % (where, key, short(value), KEYS[key][2]))


def load_file(path):
    import tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("cannot read config %s: %s" % (short_path(path), e.strerror))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config %s is not valid TOML: %s" % (short_path(path), e))
    for key, value in data.items():
        check(key, value, "config %s" % short_path(path))
    return data


def effective(file=None, flags=None):
    """(settings, source of each): defaults, then the file, then the flags
    given (None: not given)."""
    cfg, source = dict(DEFAULTS), {k: "default" for k in KEYS}
    group = (flags or {}).get("group") or DEFAULTS["group"]
    path = find_file(file, group)
    if path:
        for key, value in load_file(path).items():
            cfg[key], source[key] = value, path
    for key, value in (flags or {}).items():
        if value is not None and key in KEYS:
            check(key, value, "--" + key.replace("_", "-"))
            cfg[key], source[key] = value, "command line"
    return cfg, source


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return '"%s"' % str(v).replace("\\", "\\\\").replace('"', '\\"')


def show(cfg, source):
    """The effective configuration as TOML a file could hold, each key with
    where its value came from; unset keys commented out."""
    lines = []
    for key in KEYS:
        v = cfg[key]
        line = ("%s = %s" % (key, toml_value(v))) if v is not None else "# %s (unset)" % key
        lines.append("%-40s # %s" % (line, source[key]))
    return "\n".join(lines)


def reference():
    """docs/CONFIG.md's table of keys."""
    rows = ["| key | default | values | meaning |", "|---|---|---|---|"]
    for key, (default, _, values, meaning) in KEYS.items():
        rows.append("| `%s` | %s | %s | %s |" % (key, "`%s`" % toml_value(default) if default is not None
                                                 else "unset", values, meaning))
    return "\n".join(rows)
