"""benchmarks/report.py: the performance page and the README's table are
written from a benchmark run's JSON, and nothing else in the README moves."""
import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"
_SPEC = importlib.util.spec_from_file_location("bench_report", _PATH)
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)

HEAD = "# refinefit\n\nSome text.\n\n## Performance\n\nIntro line.\n\n"
TAIL = "\n\n## How to cite\n\nThe end.\n"
README = (f"{HEAD}{report.BEGIN}\n| old | table |\n|---|---|\n| 1 | 2 |\n"
          f"{report.END}{TAIL}")


def fake_run():
    """A small run as pytest-benchmark and benchmarks/conftest.py write it."""
    stats = dict(min=0.25, max=0.4, mean=0.3, median=0.28, rounds=5)
    return {
        "machine_info": {
            "machine": "x86_64", "system": "Linux", "release": "6.1",
            "python_version": "3.11.7", "python_implementation": "CPython",
            "cpu": {"brand_raw": "Test CPU 9000", "count": 7},
            "versions": {"numba": "0.99.1", "numpy": "9.8.7",
                         "trackpy": "0.7"},
        },
        "commit_info": {"id": "0123456789abcdef0123", "dirty": False},
        "datetime": "2030-01-02T03:04:05.123456+00:00",
        "benchmarks": [
            {"name": "test_w1_refinefit",
             "fullname": "benchmarks/test_bench_w1.py::test_w1_refinefit",
             "stats": stats, "extra_info": {"features_per_s": 51234.5}},
            {"name": "test_w1_trackpy",
             "fullname": "benchmarks/test_bench_w1.py::test_w1_trackpy",
             "stats": dict(stats, min=5.5, median=5.75, rounds=1),
             "extra_info": {}},
        ],
        "refinefit": {"mode": "full", "results": {
            "W1 refinefit features/s": 50000,
            "W1 trackpy features/s": 125.0,
            "W2 refinefit features/s": 20000,
            "W2 trackpy features/s": 80.0,
            "global size W1 refinefit features/s": 30000,
            "CLI W1 long (6000 frames) command / in-process warm "
            "(end to end)": 0.987,
            "CLI W1 command peak RSS (MB)": 531,
        }},
    }


def write_inputs(tmp_path, run, readme=README):
    json_path = tmp_path / "latest.json"
    json_path.write_text(json.dumps(run))
    readme_path = tmp_path / "README.md"
    readme_path.write_text(readme)
    return json_path, readme_path, tmp_path / "docs" / "performance.md"


def run_main(json_path, readme_path, page_path):
    return report.main([str(json_path), "--performance", str(page_path),
                        "--readme", str(readme_path)])


def test_page_names_machine_date_benchmarks_and_ratios(tmp_path):
    paths = write_inputs(tmp_path, fake_run())
    assert run_main(*paths) == 0
    page = paths[2].read_text()
    for text in ("Test CPU 9000", "7 logical cores", "Python 3.11.7",
                 "numba 0.99.1", "numpy 9.8.7", "trackpy 0.7",
                 "2030-01-02 03:04 UTC", "full mode", "0123456789ab",
                 "`test_bench_w1.py::test_w1_refinefit`",
                 "`test_bench_w1.py::test_w1_trackpy`",
                 "| 250 ms | 280 ms | 5 |", "| 5.5 s | 5.75 s | 1 |",
                 "features per s: 51,234",
                 "| W1 refinefit features/s | 50,000 |"):
        assert text in page, text
    # ratios computed from the refinefit / trackpy pairs: 50000 / 125
    assert "| W1 ratio refinefit / trackpy | 400× |" in page
    assert "| W2 ratio refinefit / trackpy | 250× |" in page
    # no trackpy figure, no ratio
    assert "global size W1 ratio" not in page
    # figures are grouped under the benchmark that records them
    assert page.index("## W2, constrained dimers") < page.index(
        "| W2 refinefit features/s |") < page.index("## `global` size")


def test_readme_block_is_replaced_and_the_rest_untouched(tmp_path):
    paths = write_inputs(tmp_path, fake_run())
    assert run_main(*paths) == 0
    text = paths[1].read_text()
    assert text.startswith(HEAD + report.BEGIN + "\n")
    assert text.endswith(report.END + TAIL)
    assert text.count(report.BEGIN) == text.count(report.END) == 1
    block = text[len(HEAD + report.BEGIN):-len(report.END + TAIL)]
    assert "| old | table |" not in block
    for text_in_block in ("| W1, refinefit, features/s | 50,000 |",
                          "| W1, refinefit / trackpy | 400× |",
                          "refinefit / trackpy | 250× |",
                          "| 0.987 |", "| 531 |", "2030-01-02 03:04 UTC",
                          "Test CPU 9000", "docs/performance.md"):
        assert text_in_block in block, text_in_block
    # a second run over its own output gives the same README
    assert run_main(*paths) == 0
    assert paths[1].read_text() == text


def test_quick_run_says_it_is_not_representative(tmp_path):
    run = fake_run()
    run["refinefit"]["mode"] = "quick"
    paths = write_inputs(tmp_path, run)
    assert run_main(*paths) == 0
    assert "not representative" in paths[2].read_text()
    assert "not representative" in paths[1].read_text()


def test_versions_fall_back_to_the_installed_ones(tmp_path):
    run = fake_run()
    del run["machine_info"]["versions"]
    paths = write_inputs(tmp_path, run)
    assert run_main(*paths) == 0
    assert "pytest" not in report.LIBRARIES  # only the listed libraries
    page = paths[2].read_text()
    assert "numba 0.99.1" not in page
    assert ("(installed at report)" in page) == any(
        _installed(name) for name in report.LIBRARIES)


def _installed(name):
    try:
        report.metadata.version(name)
    except report.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize("readme", [
    "# no block here\n",
    f"# only the end\n{report.END}\n",
    f"# reversed\n{report.END}\n{report.BEGIN}\n",
])
def test_readme_without_a_block_writes_nothing(tmp_path, readme, capsys):
    paths = write_inputs(tmp_path, fake_run(), readme)
    assert run_main(*paths) == 2
    assert paths[1].read_text() == readme
    assert not paths[2].exists()
    assert "no performance block" in capsys.readouterr().err


def test_unreadable_json_is_an_error(tmp_path, capsys):
    json_path, readme_path, page_path = write_inputs(tmp_path, fake_run())
    json_path.write_text("{not json")
    assert run_main(json_path, readme_path, page_path) == 2
    assert readme_path.read_text() == README
    assert not page_path.exists()
    assert "cannot read" in capsys.readouterr().err


def test_readme_can_be_left_alone(tmp_path):
    json_path, readme_path, page_path = write_inputs(tmp_path, fake_run())
    assert report.main([str(json_path), "--performance", str(page_path),
                        "--readme", ""]) == 0
    assert readme_path.read_text() == README
    assert page_path.exists()


def test_repository_readme_has_one_performance_block():
    text = (_PATH.parents[1] / "README.md").read_text()
    assert text.count(report.BEGIN) == text.count(report.END) == 1
    assert text.index(report.BEGIN) < text.index(report.END)
