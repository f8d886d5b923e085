"""A benchmark's record: its numbers plus where they come from (the command, the commit, the
date, the machine), written where `--out` says. `make bench` gives every run a fresh folder, so
the records committed in reports/bench/ change only when someone copies a run there."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from pipeline.provenance import git_commit

#: Where the benchmarks write unless told otherwise (git-ignored): a folder per run.
RUNS = Path("reports/bench/runs")
COMMITTED = Path("reports/bench")  # the records docs/benchmarks.md's table comes from


def default_out(name: str) -> str:
    """reports/bench/runs/<date-time>/<name>.json: a fresh place, never the committed record."""
    return str(RUNS / datetime.datetime.now().strftime("%Y%m%d-%H%M%S") / f"{name}.json")


def provenance(module: str) -> dict:
    commit = git_commit()
    return {"command": shlex.join(["python", "-m", module, *sys.argv[1:]]),
            "date": datetime.date.today().isoformat(), "commit": commit[:7] if commit else None,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}


def write(out: Path | str, module: str, report: dict) -> Path:
    out = Path(out)
    replaced = out.is_file() and out.resolve().parent == COMMITTED.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "measured": provenance(module)}, indent=2) + "\n")
    print(f"wrote {out}" + (" (replacing the committed record: regenerate docs/benchmarks.md's "
                            "table with `python -m bench.table --write`)" if replaced else ""))
    return out
