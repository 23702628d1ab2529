"""What the compatibility tests share: a group of instances on a tap device
in a namespace each test creates (one instance per core), taken down
again whatever happens."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from topology import Group, Netns  # noqa: E402

RUN_DIR = "/run/shardsock-compat"


@pytest.fixture
def group():
    ns = Netns()
    g = None
    try:
        g = Group(ns, "c%d" % os.getpid(), RUN_DIR)
        yield g
    finally:
        if g is not None:
            assert g.down().returncode == 0
        ns.delete()
