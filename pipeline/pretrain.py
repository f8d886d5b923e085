"""Stage pretrain@<dataset>: the cross-entropy model that every fine-tuning trial starts from.

    python -m pipeline.pretrain synthetic_voc

Both papers fine-tune a network trained with cross-entropy (Berman et al. fine-tune a CE-trained
DeepLab with Lovász-Softmax; their code's README advises CE first, then Lovász). With
`study.protocol: finetune` this stage provides that network:

- a dataset listed in `pretrain.published` (the real VOC and Cityscapes) starts from a published
  CE checkpoint of mmseg's model zoo, downloaded once and checked against its sha256;
- any other dataset (the generated ones) is trained with CE on its `train.configs` config for
  `pretrain.iterations`, logged to MLflow as a run of its own, and resumed from its last
  checkpoint (work_dirs/pretrain/<dataset>/<key>/) when the stage is killed.

It writes, as one DVC-cached output:

    models/pretrain/<dataset>/model.pth      the weights (mmengine's {'state_dict', 'meta'})
    models/pretrain/<dataset>/early.pth      the weights at `pretrain.early_iteration`, an
                                             under-trained start for the convergence arm
    models/pretrain/<dataset>/summary.json   their sha256, mIoU, mPixIoU, history and source

With `study.protocol: scratch` the stage writes only a summary that says so, and trains nothing.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .contracts import (
    EARLY,
    MODEL,
    PRETRAIN_KEY,
    PRETRAIN_SUMMARY,
    DataParams,
    PretrainParams,
    PublishedCheckpoint,
    identity_key,
    sha256_of,
    study_protocol,
)
from .measures import METRICS
from .params import ParamsError, load_params, lookup, parse_section

if TYPE_CHECKING:
    from .train import TrainParams

SUMMARY = PRETRAIN_SUMMARY
#: The pre-training's loss: plain cross-entropy, as the model zoo's CE checkpoints were trained.
PRETRAIN_LOSS = {"type": "CrossEntropyLoss", "loss_weight": 1.0}


# --- a published checkpoint ---------------------------------------------------------------------

def fetch_published(dataset: str, published: PublishedCheckpoint, downloads: Path,
                    staging: Path, retries: int, backoff: float) -> dict:
    """Download (once, resumably) and verify a model-zoo checkpoint into `staging`."""
    from .data.download import DownloadError, ResumableDownloader, fetch

    name = Path(urlparse(published.url).path).name
    try:
        path = fetch(published.url, None, downloads / "checkpoints", name,
                     ResumableDownloader(retries=retries, backoff_seconds=backoff))
    except (DownloadError, OSError) as error:
        raise DownloadError(
            f"pretrain.published.{dataset}: {published.url} could not be downloaded "
            f"({type(error).__name__}: {error}). Offline, put the file at "
            f"{downloads / 'checkpoints' / name}") from error
    found = sha256_of(path)
    if not found.startswith(published.sha256):
        path.unlink()
        raise DownloadError(f"pretrain.published.{dataset}: {name} has sha256 {found[:16]}..., "
                            f"not {published.sha256}: the download was corrupt and was "
                            f"deleted; run the stage again")
    shutil.copyfile(path, staging / MODEL)
    return {"source": "published", "url": published.url, "mIoU": published.mIoU,
            **{m: None for m in METRICS if m != "mIoU"}, "iterations": None, "history": []}


# --- a trained checkpoint ------------------------------------------------------------------------

def train_checkpoint(dataset: str, params: dict, pretrain: PretrainParams, train: TrainParams,
                     staging: Path) -> dict:
    """Train the dataset's config with CE into `staging/model.pth` (and the early weights into
    `staging/early.pth`); its MLflow run on the way."""
    from .data.validate import manifest_hash
    from .tracking import NOTE, Tracker, TrackingParams
    from .train import Placement, Reporter, RunSpec, code_fingerprint, last_checkpoint, run

    data_root = parse_section(DataParams, lookup(params, "data"), "data").root
    data_hash = manifest_hash(Path(data_root) / dataset)
    if data_hash is None:
        raise ParamsError(f"{Path(data_root) / dataset / 'manifest.json'} is missing: build "
                          f"the dataset first (dvc repro data@{dataset})")
    spec = RunSpec(config=train.config_for(dataset), loss="ce", terms=[PRETRAIN_LOSS],
                   seed=pretrain.seed, lr=pretrain.lr, iterations=pretrain.iterations,
                   val_interval=pretrain.val_interval, deterministic=train.deterministic,
                   overlays=train.overlays)
    key = identity_key({**spec.to_dict(), "data": data_hash, "code": code_fingerprint(),
                        "early_iteration": pretrain.early_iteration})
    work_dir = Path(pretrain.work_dir) / dataset / key[:16]
    config = Path(spec.config).stem

    tracker = Tracker(parse_section(TrackingParams, params.get("tracking", {}), "tracking"))
    tracker.check()
    run_id = tracker.keyed_run(
        PRETRAIN_KEY, key, f"pretrain-{dataset}",
        params={"dataset": dataset, "config": config, "loss": "ce",
                "seed": spec.seed, "iterations": spec.iterations, "lr": spec.lr,
                "val_interval": spec.val_interval},
        tags={"dataset": dataset, "data_hash": data_hash, "stage": f"pretrain@{dataset}",
              NOTE: f"Cross-entropy pre-training of {config} on {dataset} for "
                    f"{spec.iterations} iterations: the model every fine-tuning trial of the "
                    f"study starts from."})

    early = work_dir / EARLY
    _keep_early_weights_of_a_killed_run(work_dir, early, pretrain.early_iteration, dataset,
                                        config)

    class TrackedRun(Reporter):
        def evaluation(self, record: dict, checkpoint: Path | None) -> None:
            if record["iteration"] == pretrain.early_iteration and checkpoint is not None:
                save_weights(checkpoint, early, dataset, config, record["iteration"],
                             record["mIoU"])
            tracker.log_evaluations(run_id, [record])
            print(f"[pretrain] {dataset} iter {record['iteration']}: "
                  + " ".join(f"{m} {record[m]:.2f}" for m in METRICS), flush=True)

    summary = run(spec, Placement(str(work_dir), data_root), TrackedRun())
    save_weights(last_checkpoint(work_dir), staging / MODEL, dataset, config, summary.iterations,
                 summary.metrics["mIoU"])
    early_record = None
    if pretrain.early_iteration is not None:
        shutil.copyfile(early, staging / EARLY)
        at = next(r for r in summary.history if r["iteration"] == pretrain.early_iteration)
        early_record = {"iteration": pretrain.early_iteration, "sha256": sha256_of(early),
                       "mIoU": at["mIoU"]}
    tracker.finish_trial(run_id, summary, work_dir)
    # How this run went (resumed or not, how long) is the MLflow run's; the stage's output holds
    # only what the model is, so the same params and data give the same bytes (and DVC hash).
    tracker.set_tags(run_id, {"resumed_from": summary.resumed_from})
    return {"source": "trained", "key": key, "data_hash": data_hash, **summary.metrics,
            "per_class": summary.per_class, "iterations": summary.iterations,
            "history": summary.history,
            "config": config, "seed": spec.seed, "early": early_record}


def _keep_early_weights_of_a_killed_run(work_dir: Path, early: Path, early_iteration: int | None,
                                        dataset: str, config: str) -> None:
    """The early weights of a run killed after its early evaluation but before their copy.

    The resumed run does not evaluate that iteration again, but the checkpoint it resumes from
    is still that iteration's (mmengine keeps one, and the next replaces it only after the
    copy), so the copy is made from it now. Without either, the stage could not finish.
    """
    from .train import HISTORY, last_checkpoint

    resumes_from = last_checkpoint(work_dir)
    if early_iteration is None or early.exists() or resumes_from is None:
        return
    iteration = int(resumes_from.stem.removeprefix("iter_"))
    if iteration > early_iteration:
        raise RuntimeError(f"{early} is missing and the checkpoint of iteration "
                           f"{early_iteration} is gone: delete {work_dir} to train the "
                           f"pre-training again")
    if iteration == early_iteration:
        history = map(json.loads, (work_dir / HISTORY).read_text().splitlines())
        (record,) = [r for r in history if r["iteration"] == early_iteration]
        save_weights(resumes_from, early, dataset, config, early_iteration, record["mIoU"])
        print(f"[pretrain] {dataset}: the early weights (iteration {early_iteration}) copied "
              f"from the checkpoint the run resumes from", flush=True)


def save_weights(checkpoint: Path, target: Path, dataset: str, config: str, iteration: int,
                 miou: float) -> None:
    """The weights of an mmengine checkpoint of our own work dir, without the optimizer (what
    a fine-tuning run loads, a quarter of the bytes). Our own file: mmengine's resume state
    needs full unpickling. Written beside `target` and renamed: a kill leaves none, never half."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    staging = target.with_name(target.name + ".tmp")
    torch.save({"state_dict": state["state_dict"],
                "meta": {"dataset": dataset, "config": config, "iterations": iteration,
                         "mIoU": miou}}, staging)
    staging.replace(target)


# --- the stage -----------------------------------------------------------------------------------

def run_stage(dataset: str, params_file: Path | str = "params.yaml") -> dict:
    from .files import atomic_folder
    from .train import TrainParams

    params = load_params(params_file)
    datasets = lookup(params, "study.datasets")
    if dataset not in datasets:
        raise ParamsError(f"unknown dataset '{dataset}': params.yaml study.datasets is "
                          f"{datasets}")
    protocol = study_protocol(params)
    pretrain = parse_section(PretrainParams, lookup(params, "pretrain"), "pretrain")
    trains = protocol != "scratch" and dataset not in pretrain.published
    # read before the output is touched: a bad value loses nothing
    train = parse_section(TrainParams, lookup(params, "train"), "train") if trains else None
    output = Path(pretrain.output) / dataset
    with atomic_folder(output) as staging:
        if protocol == "scratch":
            summary = {"protocol": "scratch", "dataset": dataset,
                       "note": "study.protocol is scratch: the trials train from scratch"}
        else:
            if dataset in pretrain.published:
                data = parse_section(DataParams, lookup(params, "data"), "data")
                result = fetch_published(dataset, pretrain.published[dataset],
                                         Path(data.downloads), staging, data.retries,
                                         data.backoff_seconds)
            else:
                result = train_checkpoint(dataset, params, pretrain, train, staging)
            summary = {"protocol": "finetune", "dataset": dataset,
                       "sha256": sha256_of(staging / MODEL), **result}
        (staging / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if protocol == "finetune" and summary["source"] == "trained":
        shutil.rmtree(Path(pretrain.work_dir) / dataset / summary["key"][:16],
                      ignore_errors=True)  # the model now lives in DVC's cache
    return summary


def main(argv: list[str] | None = None) -> int:
    from .data.download import DownloadError
    from .tracking import TrackingError
    from .train import PretrainedWeightsError

    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="a dataset of params.yaml study.datasets")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        summary = run_stage(args.dataset, args.params)
    except (ParamsError, DownloadError, TrackingError, PretrainedWeightsError) as error:
        print(f"error: pretrain@{args.dataset}: {error}", file=sys.stderr)
        return 2
    if summary["protocol"] == "scratch":
        print(f"[pretrain] {args.dataset}: {summary['note']}")
    else:
        print(f"[pretrain] {args.dataset}: {summary['source']} checkpoint "
              f"{summary['sha256'][:12]}, mIoU {summary['mIoU']:.2f} -> "
              f"{Path(load_params(args.params)['pretrain']['output']) / args.dataset / MODEL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
