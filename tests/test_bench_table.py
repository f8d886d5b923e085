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
