"""Benchmark settings and the summary table.

Quick mode (the default, run by ``make test``) uses tiny inputs so that the
benchmarks cannot rot; ``REFINEFIT_BENCH=full`` (``make bench``) uses the
sizes the issues name. Every ratio is measured against trackpy (or Picasso)
in the same run. With ``--benchmark-json``, the JSON also holds the summary
figures and the library versions, which ``benchmarks/report.py`` turns into
``docs/performance.md``.
"""
import json
import os
from importlib import metadata
from pathlib import Path

import pytest

FULL = os.environ.get("REFINEFIT_BENCH", "quick") == "full"
RESULTS = {}


@pytest.fixture(scope="session")
def results():
    return RESULTS


def pytest_benchmark_update_machine_info(config, machine_info):
    """The versions of the libraries the figures depend on."""
    versions = {}
    for name in ("refinefit", "numba", "numpy", "pandas", "scipy", "trackpy",
                 "picassosr"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    machine_info["versions"] = versions


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """The summary figures (features/s, ratios, errors) beside the timings."""
    output_json["refinefit"] = {"mode": "full" if FULL else "quick",
                                "results": dict(RESULTS)}


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section(f"refinefit benchmarks ({'full' if FULL else 'quick'} mode)")
    for key, value in RESULTS.items():
        tr.write_line(f"{key:52s} {value}")
    for work in ("W1", "W2"):
        rf = RESULTS.get(f"{work} refinefit features/s")
        tp = RESULTS.get(f"{work} trackpy features/s")
        if rf and tp:
            tr.write_line(f"{work + ' ratio refinefit / trackpy':52s} "
                          f"{rf / tp:.0f}x")
    out = Path(".benchmarks")
    out.mkdir(exist_ok=True)
    (out / f"summary-{'full' if FULL else 'quick'}.json").write_text(
        json.dumps(RESULTS, indent=2))
