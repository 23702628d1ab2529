#!/bin/sh
# Installs what shardsock needs on a Debian 12 machine, as root, without
# questions, and safe to run twice:
#   1. Debian packages (apt-get update once, only when something is missing);
#   2. a virtual environment in the checkout (.venv), made from Debian's own
#      python3 and holding the Python packages (Debian's python3 is
#      externally managed, PEP 668: pip may not install into it);
#   3. the `shardsock` command, linked into a directory on the default PATH.
#
# Settings (environment):
#   SHARDSOCK_BASE_PYTHON  the interpreter the environment is made from
#                          (default /usr/bin/python3, Debian's; another
#                          interpreter first on PATH is not used)
#   SHARDSOCK_VENV         where the environment goes (default ./.venv)
#   SHARDSOCK_BIN_DIR      where `shardsock` is linked (default /usr/local/bin)
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)

BASE_PY=${SHARDSOCK_BASE_PYTHON:-/usr/bin/python3}
VENV=${SHARDSOCK_VENV:-$ROOT/.venv}
BIN_DIR=${SHARDSOCK_BIN_DIR:-/usr/local/bin}

# What the build, the instances and the environment need: a compiler, the
# Python headers and venv module for Debian's python3, libxdp/libbpf/liburing
# for shardsockd's backends, clang for the XDP program.
DEBS="build-essential python3 python3-dev python3-venv valgrind iproute2 pkg-config iputils-ping ethtool"
DEBS="$DEBS libxdp-dev libbpf-dev clang curl strace liburing-dev git linux-perf"
# the real programs the compatibility tests and benchmarks run (compat_tests/)
DEBS="$DEBS nginx redis-server redis-tools wrk apache2-utils memcached socat netcat-openbsd wget stress-ng nodejs"

missing=""
for p in $DEBS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: Debian packages missing:$missing; run 'make setup' as root" >&2
        exit 1
    fi
    echo "setup: installing Debian packages:$missing"
    # Installing a server must not start it (nginx, redis): the tests start
    # their own, in namespaces they make.  policy-rc.d says so to the
    # packages' scripts, unless the machine has one already.
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y $missing
    [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x "$BASE_PY" ]; then
    echo "setup: $BASE_PY not found; install Debian's python3 or set SHARDSOCK_BASE_PYTHON" >&2
    exit 1
fi

# The environment is remade when it was made from another interpreter (or
# that interpreter was upgraded away), so a stale one never lingers.
base_ver=$("$BASE_PY" -c 'import sys; print(sys.version.split()[0])')
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)" != "$base_ver" ]; then
    echo "setup: $VENV was made from another Python; making it again"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: making the environment $VENV from $BASE_PY ($base_ver)"
    "$BASE_PY" -m venv "$VENV"
fi

# Build dependencies first, so the editable install needs no isolated build
# environment (faster, and the same compiler flags as 'make build').  A
# marker that names pyproject.toml's hash skips pip when nothing changed.
stamp="$VENV/.shardsock-installed"
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c 'import preload, cffi, pytest' 2>/dev/null; then
    echo "setup: installing the Python packages into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "setuptools>=61" wheel "cffi>=1.15"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[test]'
    echo "$want" >"$stamp"
fi

# The command on the default PATH: a link to the environment's script, which
# names the environment's interpreter in its first line.
if [ -w "$BIN_DIR" ] || [ "$(id -u)" -eq 0 ]; then
    mkdir -p "$BIN_DIR"
    ln -sfn "$VENV/bin/shardsock" "$BIN_DIR/shardsock"
    "$BIN_DIR/shardsock" --help >/dev/null
    echo "setup: done; $BIN_DIR/shardsock -> $VENV/bin/shardsock"
else
    echo "setup: done; $BIN_DIR is not writable, so use $VENV/bin/shardsock" >&2
fi
