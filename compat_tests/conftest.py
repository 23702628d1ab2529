"""What the compatibility tests share: a group of instances on a tap device
in a namespace a test (or the matrix module) creates, one instance per
core, taken down again whatever happens; and the rows of
compat_tests/MATRIX.md, written when the session ends."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Group, Netns  # noqa: E402

RUN_DIR = "/run/shardsock-compat"
# where the matrix goes: shardsock compat --matrix PATH sets SHARDSOCK_MATRIX;
# a run of part of the suite (-k, a file) writes MATRIX.partial.md, and the
# whole suite's table, the one the README links, stays as it was
HERE = os.path.dirname(os.path.abspath(__file__))
_deselected = []
_rows = []      # the matrix's own rows (test_matrix.py)
_results = {}   # every other compat test: nodeid -> outcome


def _group(name):
    ns = Netns()
    g = None
    try:
        g = Group(ns, name, RUN_DIR)
        yield g
    finally:
        if g is not None:
            assert g.down().returncode == 0
        ns.delete()


@pytest.fixture
def group():
    yield from _group("c%d" % os.getpid())


@pytest.fixture(scope="module")
def matrix_group():
    """One group for every scenario of the matrix (each has its own port)."""
    yield from _group("m%d" % os.getpid())


@pytest.fixture
def matrix_rows():
    return _rows


def pytest_deselected(items):
    _deselected.extend(items)


def _matrix_path(session):
    if os.environ.get("SHARDSOCK_MATRIX"):
        return os.environ["SHARDSOCK_MATRIX"]
    whole = not _deselected and [os.path.abspath(a) for a in session.config.args] in ([HERE], [HERE + "/"])
    return os.path.join(HERE, "MATRIX.md" if whole else "MATRIX.partial.md")


def pytest_runtest_logreport(report):
    if "test_matrix.py" in report.nodeid:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _results[report.nodeid] = ("skipped: %s" % report.longrepr[2] if report.skipped else report.outcome)


def pytest_sessionfinish(session):
    import matrix
    if not _rows and not _results:
        return
    rows = list(_rows)
    for nodeid, outcome in sorted(_results.items()):
        path, _, name = nodeid.partition("::")
        program = os.path.basename(path)[len("test_"):-len(".py")].replace("_", " ")
        rows.append({"program": program, "scenario": name, "placement": "(its own checks)", "kernel": "-",
                     "shardsock": "-", "verdict": "pass" if outcome == "passed" else outcome.upper(),
                     "fallbacks": "-"})
    passed = sum(r["verdict"] == "pass" for r in rows)
    known = sum(r["verdict"].startswith("KNOWN") for r in rows)
    summary = "compat: %d rows, %d pass, %d known not to pass yet, %d fail" % (
        len(rows), passed, known, len(rows) - passed - known)
    path = _matrix_path(session)
    matrix.write_matrix(rows, path, summary)
    print("\n%s (%s)" % (summary, path))
