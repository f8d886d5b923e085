"""One training run: an mmseg config with the study's loss, seed and overrides, on mmengine.

    python -m pipeline.train mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py \\
        --loss pixiou --seed 0 [--iterations 50] [--work-dir work_dirs/debug]

The same `run()` is the body of every Ray trial (pipeline/sweep/trial.py), where it runs on
each DDP worker. A run evaluates mIoU, image-mIoU and mPixIoU every `val_interval` iterations,
checkpoints at the same interval and, restarted with the same work dir, resumes from its last
checkpoint. When it ends, rank 0 writes `summary.json` (the final and per-class values and the
validation history), a confusion matrix and a few prediction overlays into the work dir. A
`Reporter`
carries each evaluation, checkpoint and the final files beyond the work dir (the Ray trial's
sends them through `ray.train.report` to the sweep's storage) and restores the run from there.

The package, by concern:
    spec.py      params.yaml's train section, the run's spec, placement and summary, its
                 files, the code its key hashes
    config.py    the mmengine config of a run
    weights.py   the pretrained weights a config asks for
    engine.py    mmengine's process-wide state; the study's runner (mmengine RUNNERS)
    hook.py      the study's hook (mmengine HOOKS): history, reports, preemption
    reporter.py  where a run reports (the default: its work dir)
    run.py       one run, and the evaluation of a checkpoint
    __main__.py  the command line

Importing the package imports no mmengine: `run` imports the engine and hook when it starts.
"""
from .config import apply_loss, build_config, hold_out, set_iterations
from .reporter import Reporter, last_checkpoint, read_summary
from .run import evaluate, prepare, run
from .spec import (
    DEFAULT_AUX_WEIGHT,
    HISTORY,
    LOGS,
    PREEMPTION_POLL,
    RESULT_FILES,
    SUMMARY,
    Placement,
    RunSpec,
    RunSummary,
    TrainParams,
    code_fingerprint,
    load_train_params,
)
from .weights import PretrainedWeightsError, ensure_pretrained

__all__ = ["DEFAULT_AUX_WEIGHT", "HISTORY", "LOGS", "PREEMPTION_POLL", "RESULT_FILES", "SUMMARY",
           "Placement", "PretrainedWeightsError", "Reporter", "RunSpec",
           "RunSummary", "TrainParams",
           "apply_loss", "build_config", "code_fingerprint", "ensure_pretrained", "evaluate",
           "hold_out", "last_checkpoint", "load_train_params", "prepare", "read_summary", "run",
           "set_iterations"]
