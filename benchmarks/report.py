"""Write ``docs/performance.md`` and the README's performance table from a
benchmark run.

``make bench`` runs the benchmarks with ``--benchmark-json`` and then::

    python benchmarks/report.py .benchmarks/latest.json

The figures in the documents are therefore produced by a run, never typed,
and each names the machine, library versions and date of the run it comes
from. The JSON holds pytest-benchmark's timings and ``machine_info``, and,
from ``benchmarks/conftest.py``, the summary figures the benchmarks record
(features/s, ratios, errors) and the library versions.
"""
import argparse
import json
import re
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

BEGIN = "<!-- performance:begin -->"
END = "<!-- performance:end -->"
LIBRARIES = ("refinefit", "numba", "numpy", "pandas", "scipy", "trackpy",
             "picassosr")
# the README's short table: (label, summary figure); rows whose figure the
# run did not record are left out
README_ROWS = (
    ("W1, refinefit, features/s", "W1 refinefit features/s"),
    ("W1, trackpy `refine_leastsq`, features/s", "W1 trackpy features/s"),
    ("W1, refinefit / trackpy", "W1 ratio refinefit / trackpy"),
    ("First call in a fresh install (empty compile cache), s",
     "first call, cold compile cache (s)"),
    ("First call compiling the kernels (no ahead-of-time build), s",
     "first call, cold compile cache, compiling the kernels (s)"),
    ("5 features on one frame, trackpy / refinefit (median of calls)",
     "small call (quiet) ratio trackpy / refinefit (median)"),
    ("W2 (`dimer` constraint), refinefit / trackpy",
     "W2 ratio refinefit / trackpy"),
    ("I1 (isolated spots), refinefit / Picasso `gaussmle`, same cores",
     "I1 ratio refinefit / picasso gaussmle"),
    ("I1, refinefit / Picasso `fit_spots_gauss` (MLE), same cores",
     "I1 ratio refinefit / picasso gaussfit MLE"),
    ("I1, refinefit `estimator=\"poisson\"` / Picasso `gaussmle`, same cores",
     "I1 ratio refinefit poisson / picasso gaussmle"),
    ("I1, rms position error, refinefit `estimator=\"poisson\"` / `gaussmle`",
     "I1 rms refinefit poisson / rms picasso gaussmle"),
    ("D1 (overlapping pairs, triplets), refinefit Poisson / 3D-DAOSTORM",
     "D1 ratio refinefit poisson / daostorm"),
    ("D1, rms position error, refinefit Poisson / 3D-DAOSTORM",
     "D1 rms refinefit poisson / rms daostorm"),
    ("`refinefit refine` on the long movie / `refine_leastsq` in process",
     re.compile(r"CLI W1 long .* command / in-process warm \(end to end\)")),
    ("`refinefit refine` peak memory on the W1 movie (MB)",
     "CLI W1 command peak RSS (MB)"),
)
# the summary figures, grouped by the benchmark file that records them
GROUPS = (
    ("W1 and start-up (`test_bench_w1.py`)", ("W1 ", "first call", "one cluster")),
    ("I1, isolated spots against Picasso (`test_bench_peers.py`)", ("I1 ",)),
    ("D1, overlapping spots against 3D-DAOSTORM (`test_bench_daostorm.py`)",
     ("D1 ",)),
    ("Latency: first result per model, small calls (`test_bench_latency.py`)",
     ("first result", "small call")),
    ("W2, constrained dimers (`test_bench_constraints.py`)", ("W2 ",)),
    ("`global` size (`test_bench_shared.py`)", ("global size",)),
    ("Kernels (`test_bench_kernels.py`)", ("kernel:",)),
    ("The `refinefit` command (`test_bench_cli.py`)", ("CLI ",)),
    ("Dask (`test_bench_dask.py`)", ("Dask ",)),
)
# how to read a group's figures (text only: the figures come from the run)
_NOTES = {
    "Kernels (`test_bench_kernels.py`)": """\
The roofline of the solver: one pixel-evaluation of a 2D Gaussian (the
model and its four derivatives, the residual and cost, and the sums of
J^T J and J^T r) is the floating-point arithmetic counted from the loops
in `benchmarks/test_bench_kernels.py`. Its sums run alone, in one pass over data in the
first-level cache with every sum in a vector register, at the rate one
core sustains for this arithmetic; at that rate the arithmetic takes the
time in "that arithmetic at that rate". Memory is not the bound: a
pixel's data (a few hundred bytes, counting every pass) stays in the
first-level cache. The solver's measured cost per pixel-evaluation
includes the rest of a fit: each cluster's setup, the damped steps (small
dense systems), the products between overlapping features, and the calls
between kernels.""",
}
_PAIR = re.compile(r"^(?P<work>.+) refinefit features/s$")
_WORKLOADS = """\
Workloads (defined in the benchmarks' docstrings):

- W1: 2D Gaussian features (size 2.5, diameter 11) in 512×512 uint8 frames
  at S/N 10, 275 features per frame (150 singles, 40 dimers, 15 trimers),
  initial positions off by up to 0.6 px; DataFrame in, DataFrame out.
- W2: 200 touching dimers per frame, refined with `constraints=dimer(5)`.
- I1: 150 isolated Gaussian spots (standard deviation 1.77 px, peak 160
  photons, background 16 photons per pixel, Poisson noise) per 512×512
  frame, starts off by up to 0.6 px; refinefit (11 px masks, size fitted)
  against Picasso 0.11.3 (11×11 boxes: `gaussmle`, `gausslq` and its
  current MLE, `fit_spots_gauss`) on as many threads or processes; the
  refinefit rows are least squares unless they say Poisson
  (`estimator="poisson"`).
- D1: 100 spots per 256×256 uint16 frame in overlapping pairs and triplets
  (members 3–6 px apart; 2,000 photons a spot, standard deviation 1.41 px,
  background 10 photons per pixel, Poisson noise), the width fixed;
  refinefit's Poisson estimator against 3D-DAOSTORM's fitter
  (`sdt-python`'s `Fitter2DFixed`), frames split over as many threads.
- The command (`CLI`) runs on W1 as a 1,200-frame uint16 TIFF with Parquet
  features and output, and on a long movie of that movie five times over.
- Ratios against trackpy and Picasso are measured in the same run, so they
  hold on a busy machine where absolute times drift.
"""


def main(argv=None):
    """Write the performance page and the README's table from a run.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments: the pytest-benchmark JSON file (written by
        ``pytest --benchmark-json=PATH``), then optionally
        ``--performance PATH`` (default ``docs/performance.md``) and
        ``--readme PATH`` (default ``README.md``; an empty string leaves
        the README alone). Default: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 when both files are written, 2 when the JSON
        cannot be read or the README has no performance block.

    Notes
    -----
    The README keeps everything outside the lines ``<!-- performance:begin
    -->`` and ``<!-- performance:end -->``; the lines between them are
    replaced by a short table of the run's headline figures. Ratios of
    refinefit to trackpy are computed from each pair of summary figures
    ``<work> refinefit features/s`` and ``<work> trackpy features/s``.

    Examples
    --------
    >>> main([".benchmarks/latest.json"])  # doctest: +SKIP
    0
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON file")
    parser.add_argument("--performance", type=Path,
                        default=Path("docs/performance.md"))
    parser.add_argument("--readme", default="README.md",
                        help="README with a performance block ('' to skip)")
    args = parser.parse_args(argv)
    try:
        run = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        print(f"report: error: cannot read {args.json}: {exc}",
              file=sys.stderr)
        return 2
    figures = summary_figures(run)
    readme = Path(args.readme) if args.readme else None
    if readme is not None:
        try:
            text = replace_block(readme.read_text(), readme_block(run, figures))
        except (OSError, ValueError) as exc:
            print(f"report: error: {readme}: {exc}", file=sys.stderr)
            return 2
    args.performance.parent.mkdir(parents=True, exist_ok=True)
    args.performance.write_text(performance_page(run, figures))
    if readme is not None:
        readme.write_text(text)
    return 0


def summary_figures(run):
    """The run's summary figures, with the refinefit / trackpy ratios."""
    figures = dict(run.get("refinefit", {}).get("results", {}))
    for key in list(figures):
        match = _PAIR.match(key)
        theirs = match and figures.get(f"{match['work']} trackpy features/s")
        if theirs:
            figures[f"{match['work']} ratio refinefit / trackpy"] = \
                f"{figures[key] / theirs:.0f}×"
    return figures


def machine_lines(run):
    """What ran the benchmarks, and when, as Markdown list items."""
    info = run.get("machine_info", {})
    cpu = info.get("cpu", {})
    versions = info.get("versions") or _installed_versions()
    commit = run.get("commit_info", {})
    lines = [
        f"- Date of the run: {_date(run.get('datetime'))}",
        f"- Mode: {_mode(run)}",
        f"- CPU: {cpu.get('brand_raw', 'unknown')}, "
        f"{cpu.get('count', '?')} logical cores "
        f"({info.get('machine', cpu.get('arch', '?'))}, "
        f"{info.get('system', '?')} {info.get('release', '')})".rstrip(),
        f"- Python {info.get('python_version', '?')} "
        f"({info.get('python_implementation', '?')})",
    ]
    if versions:
        lines.append("- Libraries: " + ", ".join(
            f"{name} {version}" for name, version in versions.items()))
    if commit.get("id"):
        lines.append(f"- refinefit commit: {commit['id'][:12]}"
                     + (" (with uncommitted changes)" if commit.get("dirty")
                        else ""))
    return lines


def performance_page(run, figures):
    """The text of ``docs/performance.md``."""
    lines = [
        "# Performance",
        "",
        "<!-- Written by benchmarks/report.py from one `make bench` run, not "
        "by hand: figures come from runs, and their history lives in git. -->",
        "",
        "Produced by `make bench`, which runs the benchmarks in "
        "`benchmarks/` at full size and writes this page.",
        "",
        *machine_lines(run),
        "",
        _WORKLOADS,
    ]
    for title, keys in _grouped(figures):
        lines += [f"## {title}", ""]
        if title in _NOTES:
            lines += [_NOTES[title], ""]
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {key} | {_value(figures[key])} |" for key in keys]
        lines.append("")
    lines += ["## Timings", "",
              "Per benchmark: pytest-benchmark's timing of the call it "
              "measures, and what the benchmark records beside it.", "",
              "| benchmark | min | median | rounds | recorded |",
              "|---|---|---|---|---|"]
    for bench in run.get("benchmarks", []):
        stats = bench.get("stats", {})
        lines.append(
            f"| `{_name(bench)}` | {_seconds(stats.get('min'))} | "
            f"{_seconds(stats.get('median'))} | {stats.get('rounds', '')} | "
            f"{_extra(bench.get('extra_info', {}))} |")
    return "\n".join(lines) + "\n"


def readme_block(run, figures):
    """The lines that go between the README's performance markers."""
    rows = []
    for label, key in README_ROWS:
        if isinstance(key, re.Pattern):
            key = next((k for k in figures if key.fullmatch(k)), None)
        if key in figures:
            rows.append(f"| {label} | {_value(figures[key])} |")
    info = run.get("machine_info", {})
    cpu = info.get("cpu", {})
    lines = [
        f"From `make bench` on {_date(run.get('datetime'))} ({_mode(run)}): "
        f"{cpu.get('brand_raw', 'unknown CPU')}, "
        f"{cpu.get('count', '?')} logical cores, Python "
        f"{info.get('python_version', '?')}. Details: "
        "[docs/performance.md](docs/performance.md).",
        "",
    ]
    if rows:
        lines += ["| figure | value |", "|---|---|", *rows]
    else:
        lines.append("(This run recorded no summary figures.)")
    return "\n".join(lines)


def replace_block(text, block):
    """``text`` with the lines between the performance markers replaced.

    Raises ValueError when the markers are missing or out of order.
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no performance block: the lines {BEGIN} and "
                         f"{END} must both be there, in that order")
    head = text[:start + len(BEGIN)]
    return f"{head}\n{block}\n{text[end:]}"


def _grouped(figures):
    """(title, keys) per group of GROUPS that has figures, then the rest."""
    left = list(figures)
    groups = []
    for title, prefixes in GROUPS + (("Other figures", ("",)),):
        keys = [key for key in left if key.startswith(prefixes)]
        left = [key for key in left if key not in keys]
        if keys:
            groups.append((title, keys))
    return groups


def _installed_versions():
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name) + " (installed at report)"
        except metadata.PackageNotFoundError:
            pass
    return versions


def _mode(run):
    mode = run.get("refinefit", {}).get("mode", "unknown")
    if mode == "quick":
        return "quick mode: tiny inputs that keep the benchmarks alive, " \
            "not representative"
    return f"{mode} mode"


def _date(stamp):
    if not stamp:
        return "unknown date"
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _name(bench):
    fullname = bench.get("fullname", bench.get("name", "?"))
    return fullname.removeprefix("benchmarks/")


def _seconds(value):
    if value is None:
        return ""
    if value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def _value(value):
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"
    return str(value)


def _extra(extra):
    items = []
    for key, value in extra.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {_value(round(v))}" if isinstance(v, float)
                              else f"{k} {_value(v)}" for k, v in value.items())
        elif isinstance(value, float):
            value = _value(round(value) if abs(value) >= 10 else value)
        items.append(f"{key.replace('_', ' ')}: {value}")
    return "; ".join(items)


if __name__ == "__main__":
    sys.exit(main())
