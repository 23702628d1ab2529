"""The matrix: every scenario of compat_tests/scenarios/*.yaml in each of
its placements, on the kernel and under shardsock, compared
(compat_tests/matrix.py).  conftest.py writes MATRIX.md at the end."""
import os

import pytest

import matrix

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tap devices")

CASES = [(s, p) for s in matrix.load() for p in s.placements]


@pytest.mark.parametrize("scenario,placement", CASES, ids=["%s-%s" % (s.id, p) for s, p in CASES])
def test_same_as_the_kernel(matrix_group, matrix_rows, scenario, placement):
    row = {"program": scenario.program, "scenario": scenario.name, "placement": placement, "kernel": "-",
           "shardsock": "-", "fallbacks": "-"}
    matrix_rows.append(row)
    missing = scenario.missing()
    if missing:
        row["verdict"] = "NOT RUN: %s not installed (make setup)" % ", ".join(missing)
        pytest.fail(row["verdict"])
    kernel, _ = matrix.run_once(matrix_group, scenario, placement, shardsock=False)
    ss, delta = matrix.run_once(matrix_group, scenario, placement, shardsock=True)
    ok, why = matrix.verdict(scenario, placement, kernel, ss)
    row.update(kernel=kernel.summary(scenario), shardsock=ss.summary(scenario), fallbacks=ss.fallbacks)
    known = scenario.known.get(placement)
    if ok:
        row["verdict"] = "pass"
    elif known:
        row["verdict"] = "KNOWN: %s (%s)" % (known, why)
        pytest.xfail(known)
    else:
        row["verdict"] = "FAIL: %s" % why
    assert ok, why
