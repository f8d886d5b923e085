"""python -m pipeline.sweep <dataset> [--params params.yaml] [--results-dir results] [--fetch]
[--force]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..params import ParamsError, load_params, lookup, parse_section
from ..tracking import TrackingError
from . import __doc__ as DOC
from .datasets import DatasetMismatch
from .driver import run_sweep
from .plan import SweepParams
from .results import fetch_results
from .storage import Storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a key of params.yaml study.datasets")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--results-dir", help="default: params.yaml report.results_dir (where "
                        "the report stage reads them)")
    parser.add_argument("--fetch", action="store_true",
                        help="train nothing: copy the results that a sweep (e.g. a Ray job) "
                             "left in sweep.storage to <results-dir>/<dataset>.json")
    parser.add_argument("--force", action="store_true",
                        help="take over another driver's lock on the storage at once (it is "
                             "dead, but its heartbeat is not yet stale); logged")
    args = parser.parse_args(argv)
    try:
        results_dir = Path(args.results_dir or lookup(load_params(args.params),
                                                      "report.results_dir"))
        if args.fetch:
            sweep = parse_section(SweepParams, lookup(load_params(args.params), "sweep"),
                                  "sweep")
            out = fetch_results(Storage.parse(sweep.storage), args.dataset, results_dir)
            print(f"[sweep] {args.dataset}: results fetched -> {out}")
            return 0
        results = run_sweep(args.dataset, args.params, results_dir, force_lock=args.force)
    except (ParamsError, TrackingError, DatasetMismatch, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if any(t["status"] == "failed" for t in results["trials"]) or \
            not any(t["status"] == "finished" for t in results["trials"]):
        return 1  # a trial failed (its error is in the results): the study is not whole
    return 0 if results["mlflow_complete"] else 3


if __name__ == "__main__":
    sys.exit(main())
