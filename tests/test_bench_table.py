"""The benchmark table of docs/benchmarks.md is generated from the committed records, each with
the command and date that measured it; a benchmark run never overwrites them unasked."""
from __future__ import annotations

import json

from bench import record, table
from tests.conftest import ROOT


def test_the_documented_table_is_the_one_the_committed_records_give(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert table.written_table() == table.markdown(record.COMMITTED)
    for name in ("losses", "train_step", "sweep_parallel", "evaluation"):
        measured = json.loads((record.COMMITTED / f"{name}.json").read_text()).get("measured")
        assert measured and measured["command"].startswith(f"python -m bench.{name}"), name
        assert measured["date"] in table.written_table()


def test_a_benchmark_run_writes_to_a_fresh_folder_and_says_when_it_replaces_a_record(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = record.default_out("losses")
    assert first.startswith(str(record.RUNS)) and first.endswith("/losses.json")
    record.write(first, "bench.losses", {"x": 1})
    assert json.loads(open(first).read())["measured"]["command"].startswith(
        "python -m bench.losses")
    assert "replacing the committed record" not in capsys.readouterr().out
    committed = record.COMMITTED / "losses.json"
    committed.parent.mkdir(parents=True, exist_ok=True)
    committed.write_text("{}")
    record.write(committed, "bench.losses", {"x": 2})
    assert "replacing the committed record" in capsys.readouterr().out


def test_the_suite_cpu_plugin_records_each_test_and_sums_them(tmp_path):
    """`pytest -p bench.suite_cpu`: a line per test with the machine's busy and idle CPU while
    it ran, which add up to the cores times its wall time; a test that computes for a second
    shows at least that second busy."""
    import os
    import subprocess
    import sys

    from bench import suite_cpu

    (tmp_path / "test_work.py").write_text(
        "import time\n"
        "def test_computes():\n    end = time.monotonic() + 1.0\n"
        "    while time.monotonic() < end:\n        pass\n"
        "def test_sleeps():\n    time.sleep(1.0)\n")
    out = tmp_path / "cpu.jsonl"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "bench.suite_cpu",
                           "-p", "no:cacheprovider", str(tmp_path / "test_work.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SUITE_CPU_OUT": str(out)})
    assert done.returncode == 0, done.stdout[-2000:]
    computes, sleeps = (json.loads(line) for line in out.read_text().splitlines())
    assert computes["test"].endswith("::test_computes") and sleeps["test"].endswith("::test_sleeps")
    assert computes["busy"] >= 0.8
    for row in (computes, sleeps):
        assert row["wall"] >= 1.0
        assert abs(row["busy"] + row["idle"] - os.cpu_count() * row["wall"]) \
            <= 0.25 * os.cpu_count() * row["wall"] + 0.1, row
    said = suite_cpu.summary([computes, sleeps])
    assert said.startswith("2 tests: ") and "test_work.py" in said
