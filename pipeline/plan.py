"""What the study in params.yaml will cost, before anything starts.

    python -m pipeline.plan [--params params.yaml] [--json]      (make plan)

For each dataset of `study.datasets`, from params.yaml alone (no data, no downloads, no Ray):
its trials, iterations, evaluations and checkpoints per trial, the GPUs a trial holds, and the
estimated GPU-hours split into training, evaluation and checkpointing. The figures are
`plan.cost.<dataset>` (each with its source); a figure that was never measured says so. A
warning flags a trial whose evaluation or checkpointing takes more than `plan.warn_share` of
its time. `sweep.max_gpu_hours` caps each dataset's sweep: the sweep stage refuses to start one
whose plan exceeds it (exit status 2).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .params import ParamsError, for_dataset, load_params, lookup, parse_section
from .sweep_params import SweepParams

#: The arms of a sweep (pipeline.sweep.plan's names).
ARMS = ("finetune", "convergence")


@dataclass
class CostFigures:
    """params.yaml: plan.cost.<dataset>. Device-seconds (one GPU, or one CPU core for CPU
    trials) per image, so a trial's cost follows its batch and GPU count."""

    train_s_per_image: float  # forward, backward and step, at the config's crop
    eval_s_per_image: float  # one validation image in the config's test mode
    checkpoint_gb: float  # a full resume checkpoint: weights and optimizer state
    source: str  # where the three figures come from
    # training time in fp32 / under train.amp, measured (make gpu-check); null: not measured,
    # and AMP trials are priced at fp32
    amp_speedup: float | None = None

    def validate(self, where: str) -> None:
        for key in ("train_s_per_image", "eval_s_per_image", "checkpoint_gb"):
            if not getattr(self, key) > 0:
                raise ParamsError(f"params.yaml: {where}.{key} must be > 0")
        if self.amp_speedup is not None and not self.amp_speedup > 0:
            raise ParamsError(f"params.yaml: {where}.amp_speedup must be > 0 or null")


@dataclass
class PlanParams:
    """params.yaml: plan."""

    cost: dict[str, CostFigures] = field(default_factory=dict)
    # a node's upload to the sweep's storage; the ranks wait while rank 0 uploads a checkpoint
    upload_gb_per_s: float = 0.1
    warn_share: float = 0.15  # of a trial's time, spent evaluating or checkpointing


@dataclass
class ArmPlan:
    """One arm of one dataset's sweep: its trials are alike."""

    arm: str
    trials: int
    iterations_per_trial: int
    evaluations_per_trial: int  # validation passes while training (every val_interval)
    # validation images a trial scores in all: the passes above on val_subset images, the
    # starting weights' pass (fine-tuning) and the final pass on the whole set (val_subset)
    images_evaluated_per_trial: int
    checkpoints_per_trial: int
    checkpoint_gb_per_trial: float  # uploaded
    gpu_hours: dict[str, float]  # training, evaluation, checkpointing, total (all trials)
    trial_hours: float  # one trial's wall time on its devices

    def shares(self) -> dict[str, float]:
        total = self.gpu_hours["total"] or 1.0
        return {k: self.gpu_hours[k] / total for k in ("evaluation", "checkpointing")}


@dataclass
class DatasetPlan:
    dataset: str
    config: str
    gpus_per_trial: float  # 0: CPU trials (their device-hours are CPU-core-hours)
    devices_per_trial: float
    batch_per_worker: int
    amp: str | None
    arms: list[ArmPlan]
    source: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def trials(self) -> int:
        return sum(a.trials for a in self.arms)

    def hours(self, part: str = "total") -> float:
        return sum(a.gpu_hours[part] for a in self.arms)

    def gpu_hours(self) -> float:
        return self.hours() if self.gpus_per_trial else 0.0

    def to_json(self) -> dict:
        main = self.arms[0]
        return {"dataset": self.dataset, "config": self.config, "trials": self.trials,
                "iterations_per_trial": main.iterations_per_trial,
                "evaluations_per_trial": main.evaluations_per_trial,
                "checkpoints_per_trial": main.checkpoints_per_trial,
                "checkpoint_gb_per_trial": main.checkpoint_gb_per_trial,
                "gpus_per_trial": self.gpus_per_trial, "amp": self.amp,
                "gpu_hours": self.gpu_hours(),
                "gpu_hours_split": {p: self.hours(p) if self.gpus_per_trial else 0.0
                                    for p in ("training", "evaluation", "checkpointing")},
                "cpu_core_hours": 0.0 if self.gpus_per_trial else self.hours(),
                "arms": [asdict(a) for a in self.arms], "source": self.source,
                "notes": self.notes, "warnings": self.warnings}


def validation_images(params: dict, dataset: str) -> int:
    """The size of the dataset's validation set, from its datasets section."""
    section = (params.get("datasets") or {}).get(dataset) or {}
    count = (section.get("expected") or {}).get("val", section.get("val"))
    if not isinstance(count, int) or count < 1:
        raise ParamsError(f"params.yaml: datasets.{dataset} gives no validation set size "
                          "(expected.val, or val for a generated dataset)")
    return count


def config_world(config: str) -> tuple[int, int, int | None, int | None]:
    """(batch per GPU, iterations, val_interval, checkpoint interval) of an mmseg config."""
    from mmengine.config import Config

    cfg = Config.fromfile(config, import_custom_modules=False)
    train_cfg = cfg.get("train_cfg", {})
    checkpoint = cfg.get("default_hooks", {}).get("checkpoint", {}).get("interval")
    return (int(cfg.train_dataloader.batch_size), int(train_cfg.get("max_iters", 0)),
            train_cfg.get("val_interval"), checkpoint)


def _arm(arm: str, trials: int, iterations: int, val_interval: int, checkpoint_interval: int,
         val_images: int, subset: int | None, start_pass: bool, images_per_iteration: int,
         devices: float, cost: CostFigures, upload_gb_per_s: float,
         speedup: float) -> ArmPlan:
    evaluations = iterations // val_interval
    per_pass = min(subset, val_images) if subset else val_images
    images = (evaluations + int(start_pass)) * per_pass + (val_images if subset else 0)
    checkpoints = math.ceil(iterations / checkpoint_interval)
    gb = checkpoints * cost.checkpoint_gb
    seconds = {"training": iterations * images_per_iteration * cost.train_s_per_image / speedup,
               "evaluation": images * cost.eval_s_per_image,
               # every device of the trial waits while its checkpoint is uploaded
               "checkpointing": gb / upload_gb_per_s * devices}
    seconds["total"] = sum(seconds.values())
    return ArmPlan(arm, trials, iterations, evaluations, images, checkpoints, round(gb, 3),
                   {k: trials * v / 3600 for k, v in seconds.items()},
                   seconds["total"] / devices / 3600)


def plan_dataset(params: dict, dataset: str, plan: PlanParams) -> DatasetPlan:
    """The cost of one dataset's sweep, with its own schedule applied."""
    from .train import TrainParams

    params = for_dataset(params, dataset)
    train = parse_section(TrainParams, lookup(params, "train"), "train")
    sweep = parse_section(SweepParams, lookup(params, "sweep"), "sweep")
    config = train.config_for(dataset)
    if dataset not in plan.cost:
        raise ParamsError(f"params.yaml: plan.cost has no figures for dataset '{dataset}' "
                          f"(it has: {', '.join(plan.cost) or 'none'}); docs/real-data.md")
    cost = plan.cost[dataset]
    config_batch, config_iterations, config_val, config_checkpoint = config_world(config)
    batch = train.batch_size or config_batch
    devices = sweep.gpus_per_worker * sweep.workers if sweep.use_gpu else \
        sweep.workers * sweep.cpus_per_worker
    notes, speedup = [], 1.0
    if train.amp and sweep.use_gpu:
        if cost.amp_speedup:
            speedup = cost.amp_speedup
            notes.append(f"AMP ({train.amp}): training priced {speedup:g}x faster than fp32 "
                         "(plan.cost.amp_speedup, measured)")
        else:
            notes.append(f"AMP ({train.amp}): its speed-up is not measured "
                         f"(plan.cost.{dataset}.amp_speedup: null), so training is priced "
                         "at fp32; make gpu-check measures it")
    iterations = train.iterations or config_iterations
    val_interval = train.val_interval or config_val or iterations
    checkpoint = train.checkpoint_interval or (val_interval if train.iterations or
                                               train.val_interval else config_checkpoint)
    val_images = validation_images(params, dataset)
    protocol = (params.get("study") or {}).get("protocol", "finetune")
    common = dict(val_images=val_images, images_per_iteration=batch * sweep.workers,
                  devices=devices, cost=cost, upload_gb_per_s=plan.upload_gb_per_s,
                  speedup=speedup)
    arms = [_arm("finetune", len(sweep.losses) * len(sweep.lr_search.rates()) *
                 len(sweep.seeds), iterations, val_interval, checkpoint or val_interval,
                 subset=train.val_subset, start_pass=protocol == "finetune", **common)]
    arm = sweep.convergence
    if arm.losses:
        arms.append(_arm("convergence", len(arm.losses) * len(sweep.seeds), arm.iterations,
                         arm.val_interval,
                         arm.checkpoint_interval(train.checkpoint_interval) or arm.val_interval,
                         subset=train.val_subset,
                         start_pass=arm.start == "early", **common))
    result = DatasetPlan(dataset, Path(config).stem, sweep.gpus_per_trial, devices, batch,
                         train.amp, arms, cost.source, notes)
    for a in arms:
        for part, share in a.shares().items():
            if share > plan.warn_share:
                result.warnings.append(
                    f"{dataset} ({a.arm}): {part} takes {share:.0%} of a trial's time "
                    f"(over {plan.warn_share:.0%}): "
                    + ("evaluate less often (val_interval) or on fewer images (val_subset)"
                       if part == "evaluation" else
                       "checkpoint less often (train.schedules.<dataset>.checkpoint_interval)"))
    return result


@dataclass
class StudyPlan:
    datasets: list[DatasetPlan]
    max_gpu_hours: float | None

    def gpu_hours(self) -> float:
        return sum(d.gpu_hours() for d in self.datasets)

    def over_cap(self) -> list[DatasetPlan]:
        cap = self.max_gpu_hours
        return [d for d in self.datasets if cap is not None and d.gpu_hours() > cap]

    def to_json(self) -> dict:
        return {"datasets": {d.dataset: d.to_json() for d in self.datasets},
                "gpu_hours": self.gpu_hours(), "max_gpu_hours": self.max_gpu_hours,
                "over_cap": [d.dataset for d in self.over_cap()],
                "warnings": [w for d in self.datasets for w in d.warnings]}


def load_plan(params_file: Path | str = "params.yaml",
              datasets: list[str] | None = None) -> StudyPlan:
    params = load_params(params_file)
    plan = parse_section(PlanParams, params.get("plan") or {}, "plan")
    cap = parse_section(SweepParams, lookup(params, "sweep"), "sweep").max_gpu_hours
    names = datasets if datasets is not None else lookup(params, "study.datasets")
    return StudyPlan([plan_dataset(params, name, plan) for name in names], cap)


class OverBudget(ParamsError):
    """A sweep whose plan exceeds sweep.max_gpu_hours."""


def check_budget(dataset: str, params_file: Path | str = "params.yaml") -> None:
    """Raise OverBudget when the dataset's sweep is planned above `sweep.max_gpu_hours`; with
    no cap, plan nothing (a study without plan.cost figures runs as before)."""
    params = load_params(params_file)
    cap = parse_section(SweepParams, lookup(for_dataset(params, dataset), "sweep"),
                        "sweep").max_gpu_hours
    if cap is None:
        return
    plan = parse_section(PlanParams, params.get("plan") or {}, "plan")
    estimate = plan_dataset(params, dataset, plan)
    if estimate.gpu_hours() > cap:
        split = ", ".join(f"{part} {_hours(estimate.hours(part))}"
                          for part in ("training", "evaluation", "checkpointing"))
        raise OverBudget(f"sweep@{dataset} is planned at {_hours(estimate.gpu_hours())} "
                         f"GPU-hours ({estimate.trials} trials: {split}), over the cap "
                         f"sweep.max_gpu_hours = {cap:g}. Nothing was started. Raise the cap, "
                         "or shorten the study (make plan shows where the hours go)")


def _hours(value: float) -> str:
    return f"{value:,.1f}" if value >= 0.1 else f"{value:.3f}"


def render(study: StudyPlan) -> str:
    lines = []
    for d in study.datasets:
        unit = "GPU-h" if d.gpus_per_trial else "CPU-core-h"
        devices = (f"{d.gpus_per_trial:g} GPU(s)" if d.gpus_per_trial else
                   f"{d.devices_per_trial:g} CPU core(s)")
        lines += [f"{d.dataset}: {d.config}, {devices} per trial, batch {d.batch_per_worker} "
                  f"per worker, {d.amp or 'fp32'}",
                  f"  {'arm':<12}{'trials':>7}{'iters':>8}{'evals':>7}{'ckpts':>7}"
                  f"{'GB up':>8}{'h/trial':>9}   {unit}: {'train':>9}{'eval':>9}"
                  f"{'ckpt':>9}{'total':>10}"]
        for a in d.arms:
            h = a.gpu_hours
            lines.append(f"  {a.arm:<12}{a.trials:>7}{a.iterations_per_trial:>8}"
                         f"{a.evaluations_per_trial:>7}{a.checkpoints_per_trial:>7}"
                         f"{a.checkpoint_gb_per_trial:>8.2f}{a.trial_hours:>9.2f}   "
                         f"{'':>{len(unit) + 1}} {_hours(h['training']):>9}"
                         f"{_hours(h['evaluation']):>9}{_hours(h['checkpointing']):>9}"
                         f"{_hours(h['total']):>10}")
        total = d.hours()
        split = ", ".join(f"{part} {d.hours(part) / (total or 1):.0%}"
                          for part in ("training", "evaluation", "checkpointing"))
        lines.append(f"  {d.trials} trials: {_hours(total)} {unit} ({split})")
        lines += [f"  note: {n}" for n in d.notes]
        lines.append(f"  figures: {d.source}")
    lines.append(f"Total: {_hours(study.gpu_hours())} GPU-hours"
                 + (f"; cap sweep.max_gpu_hours: {study.max_gpu_hours:g} per sweep"
                    if study.max_gpu_hours is not None else " (no cap: sweep.max_gpu_hours)"))
    lines += [f"warning: {w}" for d in study.datasets for w in d.warnings]
    lines += [f"over the cap: {d.dataset} ({_hours(d.gpu_hours())} GPU-hours > "
              f"{study.max_gpu_hours:g}): its sweep will refuse to start"
              for d in study.over_cap()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--json", action="store_true", help="the same numbers as JSON")
    args = parser.parse_args(argv)
    try:
        study = load_plan(args.params)
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(study.to_json(), indent=2) if args.json else render(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
