"""The stage's output, `results/<dataset>.json`: one record per trial, finished, stopped or
failed, from what the sweep's storage holds and what Ray reported. A copy goes to the storage
(`<storage>/<dataset>/results.json`), so a sweep run as a Ray job can be fetched back:

    python -m pipeline.sweep synthetic_voc --fetch
"""
from __future__ import annotations

import json
from pathlib import Path

from ..measures import METRICS
from ..train import RunSummary
from .plan import Study, Trial
from .storage import Storage

RESULTS_DIR = Path("results")
RESULTS = "results.json"


def trial_record(study: Study, trial: Trial, *, summary: RunSummary | None, stopped: dict | None,
                 error: str | None, history: list[dict], nodes: list[str] | None,
                 run_id: str | None) -> dict:
    spec = trial.spec
    record = {"trial": trial.name, "key": trial.key, "dataset": study.dataset,
              "loss": spec.loss, "loss_terms": spec.terms, "seed": spec.seed, "lr": spec.lr,
              "config": Path(spec.config).stem, "iterations": spec.iterations,
              "batch_size": spec.batch_size, "workers": study.sweep.workers,
              "effective_batch_size": trial.batch.effective_batch,
              "effective_lr": trial.batch.lr, "nodes": nodes,
              "storage": study.storage.uri_of(*trial.folder), "mlflow_run_id": run_id,
              "arm": trial.arm, "start": trial.start.identity(),
              "val_interval": spec.val_interval, "schedule": spec.schedule}
    if summary is not None:
        record.update(status="finished", error=None, **summary.metrics,
                      per_class=summary.per_class, history=summary.history,
                      iterations=summary.iterations, world_size=summary.world_size,
                      wall_time_s=summary.wall_time_s, selection=summary.selection)
    elif stopped is not None:
        record.update(status="stopped", error=None, **{m: stopped.get(m) for m in METRICS},
                      per_class=None,
                      history=stopped.get("history", []), world_size=None, wall_time_s=None)
    else:
        record.update(status="failed", error=error or "did not finish",
                      **dict.fromkeys(METRICS), per_class=None, history=history, world_size=None,
                      wall_time_s=None)
    return record


def write_results(study: Study, records: list[dict], parent_id: str | None,
                  results_dir: Path) -> dict:
    """results/<dataset>.json, renamed into place whole; the same in the sweep's storage."""
    results = {"dataset": study.dataset, "config": Path(study.config).stem,
               "data_hash": study.data_hash, "data": data_statistics(study),
               "storage": study.storage.uri_of(study.dataset),
               "start": study.start.identity() | {"source": study.start.source},
               "convergence_start": study.convergence_start.identity()
               if study.convergence_start else None,
               "mlflow_parent_run_id": parent_id, "trials": records}
    for storage, name in ((study.storage, f"{study.dataset}/{RESULTS}"),
                          (Storage.parse(str(results_dir.resolve())), f"{study.dataset}.json")):
        storage.write_json(results, name)
    return results


def data_statistics(study: Study) -> dict | None:
    """The data stage's label statistics and target check (manifest.json), for the report;
    None where the manifest is not on this machine (a dataset pulled by each node)."""
    if study.data.path is None:
        return None
    manifest = Path(study.data.path) / study.dataset / "manifest.json"
    if not manifest.is_file():
        return None
    content = json.loads(manifest.read_text())
    return {"statistics": content.get("statistics"), "targets": content.get("targets")}


def fetch_results(storage: Storage, dataset: str, results_dir: Path) -> Path:
    """Bring the storage's results of `dataset` to results/<dataset>.json."""
    results = storage.read_json(dataset, RESULTS)
    if results is None:
        raise FileNotFoundError(f"{storage.uri_of(dataset, RESULTS)}: no results there yet "
                                "(has the sweep of this dataset finished?)")
    Storage.parse(str(results_dir.resolve())).write_json(results, f"{dataset}.json")
    return results_dir / f"{dataset}.json"

