"""DVC stage `sweep@<dataset>`: every (loss, seed[, lr]) trial of the study through Ray Tune.

    python -m pipeline.sweep synthetic_voc [--params params.yaml]
    python -m pipeline.sweep synthetic_voc --fetch   # results of a sweep run as a Ray job
    python -m pipeline.sweep synthetic_voc --force   # take over a dead driver's lock now

Ray Tune's `Tuner` runs one trial per grid point; each trial is a Ray Train `TorchTrainer`
with `sweep.gpus_per_trial` GPU workers (or `sweep.cpu_workers_per_trial` gloo workers), each
running `pipeline.train.run` under DDP. Locally Ray starts on this machine; with RAY_ADDRESS set
(or inside `ray job submit`) the sweep joins that cluster.

The package, by concern:
    plan.py      params.yaml's sweep section, the study and its keyed trials
    storage.py   the sweep's storage (a path or s3://...), one pyarrow filesystem
    datasets.py  the dataset on every node: a shared path, or pulled from a DVC remote
    trial.py     what runs inside Ray: the trial's TorchTrainer and its DDP workers
    checkpoints.py  a trial's checkpoints in the storage: the newest whole one, Ray's snapshot
    failures.py  which failures of a trial are worth another attempt
    lock.py      one driver per sweep storage
    cluster.py   the Ray the sweep runs on, and whether a trial fits there
    driver.py    the Tuner over the pending trials, then the results
    callbacks.py the Tune callback: trial events to the log and MLflow (none raises)
    mlflow_runs.py  the sweep's MLflow runs, and the reconciliation at the end
    logline.py   its log lines
    results.py   results/<dataset>.json

Its params schema is pipeline/sweep_params.py (read without the stage by pipeline.plan).

A trial's state lives in the storage, written by Ray Train: a trial whose `final` checkpoint is
there is finished and is never trained again; an unfinished one resumes from its last
checkpoint there, whichever node it lands on.
"""
from .cluster import check_cluster_resources, init_ray, on_cluster
from .driver import run_sweep
from .plan import LRSearchParams, SweepParams, load_study, plan_trials
from .trial import scaling_config

__all__ = ["LRSearchParams", "SweepParams", "check_cluster_resources", "init_ray",
           "load_study", "on_cluster", "plan_trials", "run_sweep", "scaling_config"]
