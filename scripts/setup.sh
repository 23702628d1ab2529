#!/bin/sh
# Installs what shardsock needs on a Debian 12 machine: Debian packages
# (apt-get update once, only when something is missing) and the Python
# package in editable mode with its test extras.  Safe to run twice.
set -eu
cd "$(dirname "$0")/.."

PY=${PY:-python3}
DEBS="build-essential python3-dev valgrind iproute2 pkg-config iputils-ping ethtool libxdp-dev libbpf-dev clang curl strace liburing-dev"
# the real programs the compatibility tests run (compat_tests/)
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

# Build dependencies first, so the editable install needs no isolated build
# environment (faster, and the same compiler flags as 'make build').
"$PY" -m pip install --quiet --disable-pip-version-check "setuptools>=61" wheel "cffi>=1.15"
"$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[test]'
