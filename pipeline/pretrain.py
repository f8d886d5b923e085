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
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .contracts import (  # noqa: F401 - what this stage writes, defined under the stages
    EARLY,
    MODEL,
    PRETRAIN_KEY,
    PRETRAIN_SUMMARY,
    DataParams,
    StartingPoint,
    sha256_of,
)
from .measures import METRICS
from .params import ParamsError, check_schedule, load_params, lookup, parse_section

PROTOCOLS = ("finetune", "scratch")
SUMMARY = PRETRAIN_SUMMARY
#: The pre-training's loss: plain cross-entropy, as the model zoo's CE checkpoints were trained.
PRETRAIN_LOSS = {"type": "CrossEntropyLoss", "loss_weight": 1.0}


class MissingPretrain(ParamsError):
    """study.protocol is finetune, and the pretrain stage's model is not here."""


@dataclass
class PublishedCheckpoint:
    """params.yaml: pretrain.published.<dataset>. A CE checkpoint and the mIoU its authors
    published for it; `sha256` may be the prefix that the model zoo's file names carry."""

    url: str
    sha256: str
    mIoU: float

    def validate(self, where: str) -> None:
        if len(self.sha256) < 8 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ParamsError(f"params.yaml: {where}.sha256 must be the file's sha256 or its "
                              f"first 8 or more hex digits (lower case), got '{self.sha256}'")
        if urlparse(self.url).scheme not in ("http", "https"):
            raise ParamsError(f"params.yaml: {where}.url must be an http(s) URL, got "
                              f"'{self.url}'")


@dataclass
class PretrainParams:
    """params.yaml: pretrain."""

    iterations: int = 3000
    val_interval: int = 500
    seed: int = 0
    lr: float | None = None  # null: the config's
    # the weights at this iteration (a multiple of val_interval) are kept as early.pth, where
    # the convergence arm (sweep.convergence) starts; null keeps none
    early_iteration: int | None = 500
    output: str = "models/pretrain"
    work_dir: str = "work_dirs/pretrain"
    published: dict[str, PublishedCheckpoint] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        check_schedule(self, where)
        if self.seed < 0:
            raise ParamsError(f"params.yaml: {where}.seed must be >= 0, got {self.seed}")
        early = self.early_iteration
        if early is not None and not (0 < early < self.iterations
                                      and early % self.val_interval == 0):
            raise ParamsError(f"params.yaml: {where}.early_iteration must be a multiple of "
                              f"{where}.val_interval ({self.val_interval}) below "
                              f"{where}.iterations ({self.iterations}), or null; got {early}")


def study_protocol(params: dict) -> str:
    protocol = lookup(params, "study.protocol")
    if protocol not in PROTOCOLS:
        raise ParamsError(f"params.yaml: study.protocol must be one of {PROTOCOLS}, got "
                          f"'{protocol}'")
    return protocol


def pretrain_output(dataset: str, params: dict) -> Path:
    """Where the pretrain stage writes `dataset`'s model (models/pretrain/<dataset>)."""
    pretrain = parse_section(PretrainParams, lookup(params, "pretrain"), "pretrain")
    return Path(pretrain.output) / dataset


def starting_point(dataset: str, params: dict, folder: Path | None = None) -> StartingPoint:
    """The sweep's start for `dataset`: from the pretrain stage's output in `folder` (by
    default where the stage writes it on this machine)."""
    protocol = study_protocol(params)
    if protocol == "scratch":
        return StartingPoint("scratch")
    folder = folder or pretrain_output(dataset, params)
    summary = json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).is_file() \
        else None
    if summary is None or summary.get("protocol") != "finetune" or \
            not (folder / MODEL).is_file():
        raise MissingPretrain(f"{folder / MODEL} is missing: study.protocol is finetune, so the "
                              f"trials start from the pretrain stage's model (dvc repro "
                              f"pretrain@{dataset}; in a Ray job, sweep.data.source: dvc and "
                              f"`dvc push` bring it from the DVC remote)")
    return StartingPoint("finetune", summary["sha256"], summary["mIoU"], summary["source"],
                         str((folder / MODEL).resolve()))


def early_point(dataset: str, folder: Path) -> StartingPoint:
    """The pre-training's early weights in the pretrain stage's output `folder`."""
    summary = json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).is_file() \
        else {}
    early = summary.get("early")
    if not early or not (folder / EARLY).is_file():
        why = ("its checkpoint is a published one" if summary.get("source") == "published"
               else "pretrain.early_iteration was null, or the stage has not run")
        raise ParamsError(f"sweep.convergence.start is early, but {folder} has no early "
                          f"checkpoint ({why}). Run `dvc repro pretrain@{dataset}` with "
                          f"pretrain.early_iteration set, or set sweep.convergence.start: "
                          f"scratch, or sweep.convergence.losses: [] to leave the arm out")
    return StartingPoint("early", early["sha256"], early["mIoU"], "trained",
                         str((folder / EARLY).resolve()), early["iteration"])


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

def train_checkpoint(dataset: str, params: dict, pretrain: PretrainParams,
                     staging: Path) -> dict:
    """Train the dataset's config with CE into `staging/model.pth` (and the early weights into
    `staging/early.pth`); its MLflow run on the way."""
    from .data.validate import manifest_hash
    from .tracking import NOTE, Tracker, TrackingParams
    from .train import (
        Reporter,
        RunSpec,
        TrainParams,
        code_fingerprint,
        last_checkpoint,
        run,
    )

    train = parse_section(TrainParams, lookup(params, "train"), "train")
    data_root = parse_section(DataParams, lookup(params, "data"), "data").root
    data_hash = manifest_hash(Path(data_root) / dataset)
    if data_hash is None:
        raise ParamsError(f"{Path(data_root) / dataset / 'manifest.json'} is missing: build "
                          f"the dataset first (dvc repro data@{dataset})")
    spec = RunSpec(config=train.config_for(dataset), loss="ce", terms=[PRETRAIN_LOSS],
                   seed=pretrain.seed, work_dir="", data_root=data_root, lr=pretrain.lr,
                   iterations=pretrain.iterations, val_interval=pretrain.val_interval,
                   deterministic=train.deterministic, overlays=train.overlays)
    identity = {**spec.to_dict(), "work_dir": None, "data": data_hash,
                "code": code_fingerprint(), "early_iteration": pretrain.early_iteration}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    work_dir = Path(pretrain.work_dir) / dataset / key[:16]
    spec = RunSpec(**{**spec.to_dict(), "work_dir": str(work_dir)})

    tracker = Tracker(parse_section(TrackingParams, params.get("tracking", {}), "tracking"))
    tracker.check()
    run_id = tracker.keyed_run(
        PRETRAIN_KEY, key, f"pretrain-{dataset}",
        params={"dataset": dataset, "config": Path(spec.config).stem, "loss": "ce",
                "seed": spec.seed, "iterations": spec.iterations, "lr": spec.lr,
                "val_interval": spec.val_interval},
        tags={"dataset": dataset, "data_hash": data_hash, "stage": f"pretrain@{dataset}",
              NOTE: f"Cross-entropy pre-training of "
                                     f"{Path(spec.config).stem} on {dataset} for "
                                     f"{spec.iterations} iterations: the model every "
                                     f"fine-tuning trial of the study starts from."})

    early = work_dir / EARLY

    class TrackedRun(Reporter):
        def evaluation(self, record: dict, checkpoint: Path | None) -> None:
            if record["iteration"] == pretrain.early_iteration and checkpoint is not None:
                save_weights(checkpoint, early, dataset, Path(spec.config).stem, record)
            tracker.log_evaluations(run_id, [record])
            print(f"[pretrain] {dataset} iter {record['iteration']}: "
                  + " ".join(f"{m} {record[m]:.2f}" for m in METRICS), flush=True)

    summary = run(spec, TrackedRun())
    save_weights(last_checkpoint(work_dir), staging / MODEL, dataset, Path(spec.config).stem,
                 summary)
    early_point = None
    if pretrain.early_iteration is not None:
        shutil.copyfile(early, staging / EARLY)
        at = next(r for r in summary["history"] if r["iteration"] == pretrain.early_iteration)
        early_point = {"iteration": pretrain.early_iteration, "sha256": sha256_of(early),
                       "mIoU": at["mIoU"]}
    tracker.finish_trial(run_id, summary, work_dir)
    # How this run went (resumed or not, how long) is the MLflow run's; the stage's output holds
    # only what the model is, so the same params and data give the same bytes (and DVC hash).
    tracker.set_tags(run_id, {"resumed_from": summary["resumed_from"]})
    return {"source": "trained", "key": key, "data_hash": data_hash,
            **{k: summary[k] for k in (*METRICS, "per_class", "iterations", "history")},
            "config": Path(spec.config).stem, "seed": spec.seed, "early": early_point}


def save_weights(checkpoint: Path, target: Path, dataset: str, config: str,
                 reached: dict) -> None:
    """The weights of an mmengine checkpoint of our own work dir, without the optimizer (what
    a fine-tuning run loads, a quarter of the bytes). Our own file: mmengine's resume state
    needs full unpickling."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    torch.save({"state_dict": state["state_dict"],
                "meta": {"dataset": dataset, "config": config,
                         "iterations": reached["iteration"] if "iteration" in reached
                         else reached["iterations"], "mIoU": reached["mIoU"]}}, target)


# --- the stage -----------------------------------------------------------------------------------

def run_stage(dataset: str, params_file: Path | str = "params.yaml") -> dict:
    from .files import atomic_folder

    params = load_params(params_file)
    datasets = lookup(params, "study.datasets")
    if dataset not in datasets:
        raise ParamsError(f"unknown dataset '{dataset}': params.yaml study.datasets is "
                          f"{datasets}")
    protocol = study_protocol(params)
    pretrain = parse_section(PretrainParams, lookup(params, "pretrain"), "pretrain")
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
                result = train_checkpoint(dataset, params, pretrain, staging)
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
