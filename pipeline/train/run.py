"""One run: train (or resume) and report; evaluate a checkpoint."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..determinism import determinism
from ..files import write_atomic
from ..measures import METRICS
from ..watch import keep_log
from .config import build_config
from .reporter import Reporter, last_checkpoint
from .spec import LOGS, SUMMARY, Placement, RunSpec, RunSummary
from .weights import ensure_pretrained


def run(spec: RunSpec, placement: Placement, reporter: Reporter | None = None) -> RunSummary:
    """Train (or resume) one run where `placement` says and return its summary (also written
    to the work dir on rank 0).

    `reporter` (every rank has one) restores the run, and gets every evaluation and the final
    files; the default keeps them in the work dir.
    """
    from mmengine.dist import get_world_size, is_distributed, is_main_process

    from .engine import StudyRunner, isolated_mmengine_state
    from .hook import StudyHook

    reporter = reporter or Reporter()
    world_size = get_world_size() if is_distributed() else 1
    work_dir = Path(placement.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    done = reporter.restore(work_dir)
    if done is not None:  # finished by an earlier attempt that did not live to say so
        reporter.finished(done, None)
        return done
    cfg = prepare(spec, placement, world_size)
    starts_from_init = placement.init_checkpoint is not None and last_checkpoint(work_dir) is None
    if starts_from_init:  # weights only: the optimizer, schedule and iteration start afresh
        cfg.load_from, cfg.resume = placement.init_checkpoint, False
    started = time.time()
    with isolated_mmengine_state():
        runner = StudyRunner.from_cfg(cfg)
        hook = StudyHook(work_dir, reporter, spec.overlays, evaluate_start=starts_from_init)
        runner.register_hook(hook)
        resumed_from = _latest_iteration(work_dir)
        runner.train()
        if hook.artifacts is None or hook.history[-1]["iteration"] != runner.iter:
            # Resumed at the end of the schedule (killed after the last checkpoint): the final
            # evaluation, and the artifacts drawn from it, happen now.
            runner.val_loop.run()
        final = hook.history[-1]
        if spec.holdout or spec.val_subset:
            # the history scored the held-out split or a part of the validation set; the
            # result is the whole validation set's
            runner.test()
            final = hook.test_record
        summary = RunSummary(
            iterations=runner.iter, world_size=world_size,
            wall_time_s=round(time.time() - started, 2),
            metrics={k: final[k] for k in METRICS}, per_class=final["per_class"],
            history=[{k: v for k, v in r.items() if k != "per_class"} for r in hook.history],
            resumed_from=resumed_from, spec=spec.to_dict(), config_name=Path(spec.config).stem,
            selection={"split": f"every {spec.holdout}th training image",
                       **{k: hook.history[-1][k] for k in METRICS}} if spec.holdout else None)
        if is_main_process():
            cfg.dump(str(work_dir / "config.py"))
            keep_log(runner, work_dir, LOGS)
            hook.artifacts.write(work_dir)  # from the final evaluation
            # written last: its presence means "finished"
            write_atomic(work_dir / SUMMARY, json.dumps(summary.to_dict(), indent=2) + "\n")
        reporter.finished(summary, work_dir if is_main_process() else None)
    return summary


def prepare(spec: RunSpec, placement: Placement, world_size: int):
    """This process set up for the spec (threads, determinism) and the run's config."""
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    on_gpu = torch.cuda.is_available()
    determinism(spec.deterministic, on_gpu).apply()  # before the first CUDA matrix product
    cfg = build_config(spec, placement, world_size, on_gpu,
                       torch.cuda.current_device() if on_gpu else None)
    ensure_pretrained(cfg.model)
    return cfg


def evaluate(spec: RunSpec, placement: Placement, checkpoint: str) -> dict:
    """One process evaluates `checkpoint` on the spec's whole validation set.

    Returns the metrics and the confusion matrix ([classes, classes] list, rows: ground truth);
    logs go to the placement's work dir.
    """
    from .engine import StudyRunner, isolated_mmengine_state
    from .hook import StudyHook

    cfg = prepare(spec, placement, world_size=1)
    cfg.load_from, cfg.resume = checkpoint, False
    Path(placement.work_dir).mkdir(parents=True, exist_ok=True)
    with isolated_mmengine_state():  # StudyRunner loads the checkpoint as a trusted one
        runner = StudyRunner.from_cfg(cfg)
        hook = StudyHook(placement.work_dir, None, spec.overlays, training=False)
        runner.register_hook(hook)
        metrics = runner.val()
    return {"metrics": dict(metrics), "confusion": hook.artifacts.matrix().tolist(),
            "overlays": [name for name, _ in hook.artifacts.overlays()]}


def _latest_iteration(work_dir: Path) -> int:
    checkpoint = last_checkpoint(work_dir)
    name = checkpoint.stem if checkpoint else ""  # iter_<n>
    return int(name.split("_")[-1]) if name.startswith("iter_") else 0
