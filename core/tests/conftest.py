"""Fixtures for the engine's packet-script tests: a fresh engine, a peer,
and connections already in ESTABLISHED from either side."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Namespaces and veth pairs, shared with the benchmark drivers.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))

from harness import Peer, Stack, active_open, passive_open  # noqa: E402


@pytest.fixture
def make_stack():
    """A factory of engines with configuration overrides, all destroyed
    after the test: make_stack(rto_min_ms=100, ...)."""
    made = []

    def make(**cfg):
        s = Stack(**cfg)
        made.append(s)
        return s

    yield make
    for s in made:
        s.destroy()


@pytest.fixture
def stack():
    s = Stack()
    yield s
    s.destroy()


@pytest.fixture
def listener(stack):
    return stack.listen(80)


@pytest.fixture
def peer(stack):
    return Peer(stack)


@pytest.fixture
def passive(stack, listener, peer):
    """(stack, sid, peer): a connection the peer opened to port 80, accepted;
    no options beyond MSS 1460."""
    sid = passive_open(stack, listener, peer)
    return stack, sid, peer


@pytest.fixture
def active(stack, peer):
    """(stack, sid, peer): a connection the stack opened to the peer."""
    sid = active_open(stack, peer)
    return stack, sid, peer
