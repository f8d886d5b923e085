"""DVC stage `data@<key>`: build data/<key>/ from params.yaml, validate it, write its manifest.

    python -m pipeline.data synthetic_voc       # or voc, cityscapes, synthetic_cityscapes

Reads `data` (folders, retries) and `datasets.<key>`. The dataset is built in a temporary folder
beside data/<key> and renamed into place only after validation; verified downloads stay in
data.downloads, so a rerun resumes where the last one stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..contracts import DataParams
from ..files import atomic_folder
from ..params import ParamsError, load_params, lookup, parse_section
from .archives import UnsafeArchiveError
from .cityscapes import CityscapesParams, MissingCredentials, build_cityscapes, check_access
from .download import DownloadError, ResumableDownloader
from .layouts import CITYSCAPES, VOC_AUG, Layout
from .stats import describe
from .synthetic import SyntheticParams, write_synthetic_cityscapes, write_synthetic_voc
from .validate import DatasetError, validate
from .voc import VOCParams, build_voc_aug


@dataclass
class Dataset:
    params: type
    layout: Layout
    build: Callable  # (spec, data params, staging folder) -> None
    expected: Callable  # spec -> {split: count}


def _build_voc(spec: VOCParams, data: DataParams, staging: Path) -> None:
    downloader = ResumableDownloader(retries=data.retries, backoff_seconds=data.backoff_seconds)
    build_voc_aug(spec, Path(data.downloads), staging, downloader)


def _build_cityscapes(spec: CityscapesParams, data: DataParams, staging: Path) -> None:
    build_cityscapes(spec, Path(data.downloads), staging, data.retries, data.backoff_seconds)


def _synthetic(write):
    def build(spec: SyntheticParams, data: DataParams, staging: Path) -> None:
        with tqdm(total=spec.train + spec.val, desc="generate", unit="img",
                  mininterval=2.0) as progress:
            write(spec, staging, progress)
    return build


DATASETS = {
    "voc": Dataset(VOCParams, VOC_AUG, _build_voc, lambda spec: spec.expected),
    "cityscapes": Dataset(CityscapesParams, CITYSCAPES, _build_cityscapes,
                          lambda spec: spec.expected),
    "synthetic_voc": Dataset(SyntheticParams, VOC_AUG, _synthetic(write_synthetic_voc),
                             lambda spec: {"train_aug": spec.train, "val": spec.val}),
    "synthetic_cityscapes": Dataset(SyntheticParams, CITYSCAPES,
                                    _synthetic(write_synthetic_cityscapes),
                                    lambda spec: {"train": spec.train, "val": spec.val}),
}

FAILURES = (ParamsError, DownloadError, DatasetError, UnsafeArchiveError, MissingCredentials)


def run(key: str, params_file: Path = Path("params.yaml")) -> dict:
    if key not in DATASETS:
        raise ParamsError(f"unknown dataset '{key}' (known: {', '.join(DATASETS)})")
    dataset = DATASETS[key]
    params = load_params(params_file)
    data = parse_section(DataParams, lookup(params, "data"), "data")
    spec = parse_section(dataset.params, lookup(params, f"datasets.{key}"), f"datasets.{key}")
    if isinstance(spec, CityscapesParams):
        check_access(spec)  # before any work: say exactly what to set
    targets = getattr(spec, "targets", None)
    unknown = targets.unknown_classes(dataset.layout.classes) if targets else []
    if unknown:
        raise ParamsError(f"params.yaml: datasets.{key}.targets names {unknown[0]!r}, not a "
                          f"class of {dataset.layout.name} ({', '.join(dataset.layout.classes)})")
    with atomic_folder(Path(data.root) / key) as staging:
        dataset.build(spec, data, staging)
        manifest = validate(dataset.layout, staging, dataset.expected(spec))
        if targets:
            manifest["targets"] = targets.check(manifest["statistics"])
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{key}: {manifest['counts']} -> {Path(data.root) / key} "
          f"(content sha256 {manifest['content_sha256'][:12]})")
    if targets:
        rows = manifest["targets"]
        missed = [r for r in rows if not r["met"]]
        print(f"{key}: label statistics against datasets.{key}.targets "
              f"({len(rows) - len(missed)}/{len(rows)} met):\n{describe(rows)}")
        if missed:
            print(f"warning: data@{key}: {len(missed)} target(s) missed: the generated labels no "
                  f"longer look like the dataset they stand for (datasets.{key}.targets.source)",
                  file=sys.stderr)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data", description=__doc__.split(
        "\n")[0])
    parser.add_argument("dataset", help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        run(args.dataset, args.params)
    except FAILURES as error:
        print(f"error: data@{args.dataset}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
