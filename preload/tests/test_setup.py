"""The README's two commands, as a new user on a stock Debian 12 runs them:
a fresh clone, a PATH of the system's directories only (no pyenv, no
virtualenv of ours), `make setup`, then `shardsock` from that PATH and
`make demo`.

The clone is of the committed HEAD: CI runs this on a clean clone of main,
so there it is exactly what is submitted."""
import os
import shutil
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LINK = "/usr/local/bin/shardsock"


def _env():
    """What a root login on a fresh machine has: nothing of this session's
    Python (PYTHONPATH, VIRTUAL_ENV, PYENV_*)."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "TERM", "CI") if k in os.environ}
    return dict(keep, PATH=SYSTEM_PATH, HOME=os.environ.get("HOME", "/root"))


@pytest.fixture
def clone():
    if os.geteuid() != 0:
        pytest.skip("make setup installs Debian packages and links into /usr/local/bin: needs root")
    tmp = tempfile.mkdtemp(prefix="shardsock-setup-")
    old_link = os.readlink(LINK) if os.path.islink(LINK) else None
    try:
        subprocess.run(["git", "clone", "--quiet", ROOT, os.path.join(tmp, "shardsock")], check=True)
        yield os.path.join(tmp, "shardsock")
    finally:
        # The link goes back to the checkout that had it (CI's or the
        # developer's): the clone is about to go.
        if old_link is not None:
            tmp_link = LINK + ".setup-test"
            os.symlink(old_link, tmp_link)
            os.replace(tmp_link, LINK)
        elif os.path.islink(LINK):
            os.unlink(LINK)
        shutil.rmtree(tmp, ignore_errors=True)


def _make(clone, target, timeout):
    return subprocess.run(["make", "-C", clone, target], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(1500)
def test_two_commands_on_the_system_python(clone):
    r = _make(clone, "setup", 900)
    assert r.returncode == 0, "make setup failed:\n%s\n%s" % (r.stdout[-3000:], r.stderr[-3000:])
    venv_python = os.path.join(clone, ".venv", "bin", "python")
    # The environment is made from Debian's interpreter, whatever was first
    # on the caller's PATH.
    base = subprocess.run([venv_python, "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert base == "/usr", "the environment was made from %s, not Debian's python3" % base
    # `shardsock` is on the default PATH and is this clone's.
    which = shutil.which("shardsock", path=SYSTEM_PATH)
    assert which and os.path.realpath(which) == os.path.realpath(os.path.join(clone, ".venv", "bin", "shardsock"))
    r = subprocess.run(["shardsock", "--help"], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage: shardsock" in r.stdout, r.stderr
    # Twice is harmless, and quick: nothing to install the second time.
    r = _make(clone, "setup", 300)
    assert r.returncode == 0 and "installing" not in r.stdout, r.stdout + r.stderr

    r = _make(clone, "demo", 900)
    assert r.returncode == 0, "make demo failed:\n%s\n%s" % (r.stdout[-4000:], r.stderr[-3000:])
    # What the README says the demo shows.
    assert "byte-exact: True" in r.stdout, r.stdout[-4000:]
    assert os.path.exists(os.path.join(clone, "build", "demo-bench.png"))
