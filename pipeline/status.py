"""Where the study stands, read from MLflow and results/ while it runs in another terminal.

    python -m pipeline.status [--params params.yaml]      # or: make status

For each dataset of `study.datasets`: its CE pre-training (the iteration and mIoU it reached),
its latest sweep (MLflow parent run), how many of its
planned trials are done, running and waiting, the time since it started and, at the pace so
far, the time left; and what results/<dataset>.json holds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .contracts import PRETRAIN_KEY
from .params import ParamsError, load_params, lookup, parse_section
from .progress import duration, standing
from .tracking import SWEEP_KEY, StudyRuns, TrackingParams

TERMINAL = ("FINISHED", "FAILED", "KILLED")


def planned_trials(params: dict[str, str]) -> int:
    """losses x seeds x learning rates, and the convergence arm's losses x seeds, from the
    sweep's parent-run params."""
    count = lambda key: len([v for v in params.get(key, "").split(",") if v])  # noqa: E731
    return count("seeds") * (count("losses") * max(1, int(params.get("lr_search.samples", 0)))
                             + count("convergence.losses"))


def pretrain_line(runs: StudyRuns, dataset: str) -> str | None:
    """The dataset's CE pre-training (its MLflow run), if one has started."""
    run = runs.latest(dataset, PRETRAIN_KEY)
    if run is None:
        return None
    history = runs.history(run.info.run_id, "mIoU")
    latest = max(history, key=lambda m: m.step) if history else None
    reached = (f"iteration {latest.step} of {run.data.params.get('iterations', '?')}, mIoU "
               f"{latest.value:.2f}") if latest else "no evaluation yet"
    return f"pretrain {run.info.status}: {reached}"


def sweep_line(runs: StudyRuns, dataset: str, now: float) -> str:
    parent = runs.latest(dataset, SWEEP_KEY)
    if parent is None:
        return "no sweep has started"
    statuses = [c.info.status for c in runs.children(parent)]
    done = sum(s in TERMINAL for s in statuses)
    running = sum(s == "RUNNING" for s in statuses)
    total = max(planned_trials(parent.data.params), done + running)
    started = parent.info.start_time / 1000
    if parent.info.status == "RUNNING":
        return f"sweep RUNNING: {standing(done, running, total, now - started)}"
    ended = (parent.info.end_time or parent.info.start_time) / 1000
    counts = ", ".join(f"{int(v)} {k.removeprefix('trials.')}"
                       for k, v in sorted(parent.data.metrics.items())
                       if k.startswith("trials."))
    return (f"sweep {parent.info.status} {time.strftime('%Y-%m-%d %H:%M', time.localtime(ended))}"
            f" after {duration(ended - started)}: {counts or f'{done} of {total} trials ended'}")


def results_line(results_dir: Path, dataset: str) -> str:
    path = results_dir / f"{dataset}.json"
    if not path.is_file():
        return f"{path}: not written yet"
    trials = json.loads(path.read_text())["trials"]
    counts = {}
    for trial in trials:
        counts[trial["status"]] = counts.get(trial["status"], 0) + 1
    return f"{path}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        datasets = lookup(params, "study.datasets")
        tracking = parse_section(TrackingParams, params.get("tracking", {}), "tracking")
        results_dir = Path(lookup(params, "report.results_dir"))
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = StudyRuns(tracking)  # reads only: a missing store is not created
    now = time.time()
    width = max(map(len, datasets))
    print(f"MLflow {runs.uri}, experiment {tracking.experiment}")
    for dataset in datasets:
        try:
            lines = [pretrain_line(runs, dataset), sweep_line(runs, dataset, now)] \
                if runs.exists else ["no MLflow store yet"]
        except Exception as error:  # noqa: BLE001 - the store's failures vary; say it
            lines = [f"MLflow not readable ({type(error).__name__}: {str(error)[:200]})"]
        for i, line in enumerate(line for line in lines if line):
            print(f"{dataset if i == 0 else '':<{width}}  {line}")
        print(f"{'':<{width}}  {results_line(results_dir, dataset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
