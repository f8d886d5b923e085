"""Sweep parallel efficiency: N one-CPU trials on P CPUs, P at once, against the same N one
after another.

    python -m bench.sweep_parallel [--trials N] [--iterations I] [--out ...]

By default N and I are the study's: the trials of one dataset's sweep in params.yaml (both
arms, every seed: 40) and `train.iterations` (80). That is the sweep `dvc repro` runs, where the
sweep's fixed cost (its process, imports, Ray's and MLflow's start, its end: about 20 s) is
spread over its trials; `--trials 2` shows that fixed cost instead (docs/benchmarks.md).

Both sweeps are the real stage, run as `dvc repro` runs it (`python -m pipeline.sweep` in a
process of its own: Ray Tune trials, each training in its Tune actor's process as single-worker
CPU trials do, MLflow tracking) on the generated VOC data, each from empty storage, one right
after the other (not interleaved: each needs every CPU). Every trial is CE from the config's
initialisation, evaluated at half and at the end of its I iterations. Efficiency =
T(one after another) / (P x T(P at once)), P = min(N, CPUs); target >= 85%. The process's
start-up and Ray's are inside both times, as they are for a user: each sweep pays its own
imports. Needs data/synthetic_voc (dvc repro data@synthetic_voc).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import record

TARGET = 0.85


def sweep_seconds(workdir: Path, trials: int, iterations: int,
                  concurrent: int) -> tuple[float, float]:
    """(the stage's wall time, the mean time a trial spends in pipeline.train.run)"""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["study"].update(datasets=["synthetic_voc"], protocol="scratch")  # no pretrain model
    params["train"].update(iterations=iterations, val_interval=iterations // 2, lr=None)
    params["sweep"].update(losses=["ce"], seeds=list(range(trials)), cpu_workers_per_trial=1,
                           cpus_per_worker=1, max_concurrent_trials=concurrent,
                           storage=str(workdir / "sweeps"), lr_search={"samples": 0},
                           convergence={"losses": []})
    params["tracking"].update(uri=f"sqlite:///{workdir / 'mlflow.db'}",
                              artifacts=str(workdir / "mlartifacts"))
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.sweep", "synthetic_voc", "--params",
                    str(path), "--results-dir", str(workdir / "results")], check=True)
    seconds = time.perf_counter() - start
    results = json.loads((workdir / "results" / "synthetic_voc.json").read_text())
    assert all(t["status"] == "finished" for t in results["trials"]), results
    return seconds, sum(t["wall_time_s"] for t in results["trials"]) / trials


def study_shape(params_file: str = "params.yaml") -> tuple[int, int]:
    """(trials in one dataset's sweep, fine-tuning iterations) of the study in params.yaml."""
    from pipeline.params import for_dataset, load_params, lookup, parse_section
    from pipeline.sweep_params import SweepParams

    params = load_params(params_file)
    dataset = lookup(params, "study.datasets")[0]
    params = for_dataset(params, dataset)
    sweep = parse_section(SweepParams, lookup(params, "sweep"), "sweep")
    return sweep.trials(), lookup(params, "train.iterations") or 160


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trials, iterations = study_shape()
    parser.add_argument("--trials", type=int, default=trials,
                        help=f"default: one sweep of the study in params.yaml ({trials})")
    parser.add_argument("--iterations", type=int, default=iterations,
                        help=f"default: the study's train.iterations ({iterations})")
    parser.add_argument("--out", default=record.default_out("sweep_parallel"))
    args = parser.parse_args(argv)
    at_once = min(args.trials, os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        parallel_dir, serial_dir = Path(tmp, "parallel"), Path(tmp, "serial")
        parallel_dir.mkdir()
        serial_dir.mkdir()
        parallel, parallel_run = sweep_seconds(parallel_dir, args.trials, args.iterations,
                                               at_once)
        serial, serial_run = sweep_seconds(serial_dir, args.trials, args.iterations, 1)
    efficiency = serial / (at_once * parallel)
    # The same ratio for the training inside the trials alone, without Ray's per-trial start-up
    # (trial actor, Train controller and its helper actors, worker imports).
    run_efficiency = serial_run / parallel_run
    print(f"\n== {args.trials} one-CPU trials of {args.iterations} iterations on "
          f"{os.cpu_count()} CPUs ==")
    print(f"  one after another: {serial:7.1f} s")
    print(f"  {at_once} at once:        {parallel:7.1f} s")
    print(f"  parallel efficiency: {efficiency:.0%}  (target >= {TARGET:.0%})  "
          f"{'ok' if efficiency >= TARGET else 'MISSED'}")
    print(f"  inside the trials (pipeline.train.run): {serial_run:.1f} s alone, "
          f"{parallel_run:.1f} s side by side: {run_efficiency:.0%}")
    print(f"  the rest is per-trial start-up and the sweep's fixed cost: "
          f"{parallel - args.trials / at_once * parallel_run:.1f} s of the parallel sweep, "
          f"{serial - args.trials * serial_run:.1f} s of the serial one")
    record.write(args.out, "bench.sweep_parallel", dict(
        trials=args.trials, iterations=args.iterations, cpus=os.cpu_count(), serial_s=serial,
        parallel_s=parallel, efficiency=efficiency, run_s_serial=serial_run,
        run_s_parallel=parallel_run, run_efficiency=run_efficiency, target=TARGET))


if __name__ == "__main__":
    main()
