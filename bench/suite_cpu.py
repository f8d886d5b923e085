"""Where the test suite's time goes: the machine's busy and idle CPU seconds during each test.

A pytest plugin; run the suite in one process (the counts are the whole machine's, so a test's
own subprocesses, Ray daemons and servers count with it, and nothing else may run beside it):

    .venv/bin/python -m pytest -p bench.suite_cpu -p no:cacheprovider
    .venv/bin/python -m bench.suite_cpu reports/bench/suite_cpu.jsonl

The first writes one line per test to SUITE_CPU_OUT (default reports/bench/suite_cpu.jsonl):
its wall seconds, the CPU seconds the machine spent busy and idle (over all cores) while it ran,
and the least memory available then. The second sums them, per file and the slowest tests. A
suite whose busy seconds are near cores x wall gains nothing from more pytest-xdist workers;
its idle seconds are what more workers can fill.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import threading
import time
from pathlib import Path

import pytest

OUT = Path(os.environ.get("SUITE_CPU_OUT", "reports/bench/suite_cpu.jsonl"))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / TICKS, idle / TICKS


def available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return -1


class _LeastMemory:
    """The least MemAvailable seen since `reset`, sampled every half second."""

    def __init__(self) -> None:
        self.least = available_mb()
        threading.Thread(target=self._watch, daemon=True, name="suite-cpu-memory").start()

    def _watch(self) -> None:
        while True:
            self.least = min(self.least, available_mb())
            time.sleep(0.5)

    def reset(self) -> None:
        self.least = available_mb()


_memory: _LeastMemory | None = None


def pytest_configure(config) -> None:
    global _memory
    _memory = _LeastMemory()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _memory.reset()
    busy, idle, start = *cpu_seconds(), time.monotonic()
    yield
    busy_after, idle_after = cpu_seconds()
    with OUT.open("a") as out:
        out.write(json.dumps({"test": item.nodeid, "wall": round(time.monotonic() - start, 2),
                              "busy": round(busy_after - busy, 1),
                              "idle": round(idle_after - idle, 1),
                              "least_available_mb": _memory.least}) + "\n")


def summary(rows: list[dict], slowest: int = 25) -> str:
    wall, busy, idle = (sum(r[k] for r in rows) for k in ("wall", "busy", "idle"))
    lines = [f"{len(rows)} tests: {wall:.0f} s wall, {busy:.0f} CPU s busy, {idle:.0f} idle "
             f"(busy {busy / (busy + idle):.0%} of the cores); least memory available "
             f"{min(r['least_available_mb'] for r in rows)} MB", "", "per file:"]
    files: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for row in rows:
        total = files[row["test"].split("::")[0]]
        total[0] += 1
        for i, key in enumerate(("wall", "busy", "idle"), 1):
            total[i] += row[key]
    for name, (n, w, b, i) in sorted(files.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {w:6.0f} s wall {b:6.0f} busy {i:6.0f} idle  {n:3d} tests  {name}")
    lines += ["", f"the {slowest} slowest tests:"]
    for row in sorted(rows, key=lambda r: -r["wall"])[:slowest]:
        lines.append(f"  {row['wall']:6.1f} s wall {row['busy']:6.1f} busy {row['idle']:6.1f} "
                     f"idle  {row['test']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.suite_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="?", default=str(OUT))
    parser.add_argument("--slowest", type=int, default=25)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.records).read_text().splitlines() if line]
    print(summary(rows, args.slowest))


if __name__ == "__main__":
    main()
