"""What one fine-tuning trial of the embedded default spends where: a training iteration, and one
evaluation of the whole validation set at validation batch 1 and at a larger batch.

    python -m bench.evaluation [--dataset synthetic_voc] [--batch 8] [--out ...]

One thread, as a trial has. The evaluation passes of both batch sizes are interleaved round by
round (bench.timing); the training iterations are timed alone, from mmengine's own iteration
timer. Prints the seconds of each, what a 160-iteration trial evaluated every 20 or 40
iterations spends on evaluation, and the batch's speed-up of an evaluation. Needs the dataset and
its pretrain model (dvc repro pretrain@<dataset>).
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

import torch
import yaml

from bench import record
from bench.timing import interleaved_medians

TRIAL_ITERATIONS = 160


def _spec(dataset: str, work_dir: str, **overrides):
    """The spec of a CE fine-tuning run of `dataset`, and where it runs."""
    from pipeline.train import Placement, RunSpec, load_train_params

    params = yaml.safe_load(Path("params.yaml").read_text())
    train = load_train_params()
    model = Path(params["pretrain"]["output"]) / dataset / "model.pth"
    values = dict(config=train.config_for(dataset), loss="ce", terms=train.terms_of("ce", "x"),
                  seed=0, lr=train.lr, overlays=0, threads=1)
    return (RunSpec(**{**values, **overrides}),
            Placement(work_dir, params["data"]["root"], str(model)))


def evaluation_runner(dataset: str, work_dir: str, batch: int):
    """A runner over the pretrained model whose val() evaluates the validation set at `batch`."""
    from pipeline.train import prepare
    from pipeline.train.engine import StudyRunner

    spec, placement = _spec(dataset, work_dir)
    cfg = prepare(spec, placement, world_size=1)
    cfg.load_from, cfg.resume = placement.init_checkpoint, False
    cfg.val_dataloader.batch_size = batch
    cfg.default_hooks.logger.interval = 10 ** 6  # quiet
    cfg.log_level = "WARNING"
    return StudyRunner.from_cfg(cfg)


def training_seconds_per_iteration(dataset: str, work_dir: str, iterations: int = 40) -> float:
    """Median of mmengine's per-iteration time over a short fine-tuning run (no evaluation)."""
    from pipeline.train import run
    from pipeline.train.engine import isolated_mmengine_state

    spec, placement = _spec(dataset, work_dir, iterations=iterations, val_interval=iterations)
    with isolated_mmengine_state():
        run(spec, placement)
    (log,) = Path(work_dir).glob("*/*.log")
    times = [float(match) for match in re.findall(r"Iter\(train\).* time: ([0-9.]+)",
                                                  log.read_text())]
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic_voc")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=record.default_out("evaluation"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from pipeline.train.engine import isolated_mmengine_state

    with tempfile.TemporaryDirectory() as tmp, isolated_mmengine_state():
        runners = {batch: evaluation_runner(args.dataset, str(Path(tmp, f"b{batch}")), batch)
                   for batch in (1, args.batch)}
        passes = interleaved_medians({f"batch {b}": r.val for b, r in runners.items()},
                                     args.repeats)
        iteration = training_seconds_per_iteration(args.dataset, str(Path(tmp, "train")))
    training = TRIAL_ITERATIONS * iteration
    report = {"dataset": args.dataset, "threads": 1, "train_seconds_per_iteration": iteration,
              "evaluation_seconds": passes,
              "speedup": passes["batch 1"] / passes[f"batch {args.batch}"],
              "trial": {f"every {k}": {name: {"evaluations": TRIAL_ITERATIONS // k + 1,
                                              "evaluation_share": round(
                                                  (TRIAL_ITERATIONS // k + 1) * s /
                                                  (training + (TRIAL_ITERATIONS // k + 1) * s), 3)}
                                       for name, s in passes.items()} for k in (20, 40)}}
    print(f"{args.dataset}, one thread: a training iteration {iteration * 1000:.0f} ms; an "
          f"evaluation of the validation set {passes['batch 1']:.2f} s at batch 1, "
          f"{passes[f'batch {args.batch}']:.2f} s at batch {args.batch} "
          f"({report['speedup']:.2f}x)")
    for cadence, rows in report["trial"].items():
        for name, row in rows.items():
            print(f"  a {TRIAL_ITERATIONS}-iteration trial evaluated {cadence} "
                  f"({row['evaluations']} evaluations), {name}: "
                  f"{row['evaluation_share']:.0%} of its time evaluating")
    record.write(args.out, "bench.evaluation", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
