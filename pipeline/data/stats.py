"""What a segmentation dataset's labels look like, where per-image and dataset IoU part ways: how
much of the image each class covers, how many objects and object classes an image holds, how
large and how thin the objects are. The data stage writes them into `manifest.json`
(`statistics`) and checks them against `datasets.<key>.targets`; on a real dataset the same
numbers come from the same code:

    python -m pipeline.data.stats data/voc        # any built dataset; prints the statistics

An object is a connected region (8-neighbourhood) of one class in one image's label; ignored
pixels (VOC's object borders) separate regions, as VOC's own instance outlines do. Thickness is
a region's area over its bounding box's longer side (a pole's width), over the image width.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..params import ParamsError
from .layouts import IGNORE_INDEX, Layout, layout_of

QUANTILES = (0.1, 0.5, 0.9)
_EIGHT = np.ones((3, 3), dtype=bool)


class LabelStatistics:
    """Accumulates label images one by one (`add`), then `summary()`."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.pixels = np.zeros(layout.num_classes, dtype=np.int64)
        self.images_with = np.zeros(layout.num_classes, dtype=np.int64)
        self.images = 0
        self.objects: list[int] = []  # per image
        self.object_classes: list[int] = []  # per image
        self.areas: list[list[float]] = [[] for _ in layout.classes]  # region area / image area
        self.thickness: list[list[float]] = [[] for _ in layout.classes]  # / image width
        self.things = np.array([c in layout.things for c in layout.classes])

    def add(self, label: np.ndarray) -> None:
        from scipy import ndimage

        counts = np.bincount(label[label != IGNORE_INDEX].ravel(),
                             minlength=self.layout.num_classes)[:self.layout.num_classes]
        present = counts > 0
        self.pixels += counts
        self.images_with += present
        self.images += 1
        height, width = label.shape
        objects = 0
        for cls in np.flatnonzero(present):
            regions, n = ndimage.label(label == cls, structure=_EIGHT)
            sizes = np.bincount(regions.ravel())[1:]
            for box, size in zip(ndimage.find_objects(regions), sizes, strict=True):
                longer = max(box[0].stop - box[0].start, box[1].stop - box[1].start)
                self.areas[cls].append(size / (height * width))
                self.thickness[cls].append(size / longer / width)
            objects += n if self.things[cls] else 0
        self.objects.append(objects)
        self.object_classes.append(int((present & self.things).sum()))

    def summary(self) -> dict:
        """JSON-ready: shares as fractions, quantiles per class (classes never seen: absent)."""
        total = max(int(self.pixels.sum()), 1)
        images = max(self.images, 1)

        def quantiles(values: list[float]) -> dict[str, float]:
            return {f"q{int(q * 100)}": round(float(v), 6)
                    for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True)}

        names = self.layout.classes
        return {
            "images": self.images,
            "objects_per_image": {"mean": round(float(np.mean(self.objects or [0])), 3),
                                  "median": float(np.median(self.objects or [0]))},
            "object_classes_per_image": {
                "mean": round(float(np.mean(self.object_classes or [0])), 3),
                "median": float(np.median(self.object_classes or [0]))},
            "class_share": {n: round(int(p) / total, 6) for n, p in zip(names, self.pixels,
                                                                        strict=True)},
            "image_share": {n: round(int(i) / images, 4) for n, i in zip(names, self.images_with,
                                                                         strict=True)},
            "object_area": {n: quantiles(a) for n, a in zip(names, self.areas, strict=True) if a},
            "thickness": {n: quantiles(t) for n, t in zip(names, self.thickness, strict=True)
                          if t},
        }


@dataclass
class StatisticsTargets:
    """params.yaml: datasets.<key>.targets: what the labels must look like, each a [low, high]
    range (fractions of pixels, of the image width, or counts per image), with its source.
    Classes are named with '_' for ' ' (traffic_sign), so `dvc exp run -S` reaches every key."""

    objects_per_image: list[float] | None = None  # mean
    object_classes_per_image: list[float] | None = None  # mean
    class_share: dict[str, list[float]] = field(default_factory=dict)
    thickness: dict[str, list[float]] = field(default_factory=dict)  # median, / image width
    largest: list[str] = field(default_factory=list)  # the classes of largest share, any order
    source: str = ""

    def validate(self, where: str) -> None:
        ranges = {"objects_per_image": self.objects_per_image,
                  "object_classes_per_image": self.object_classes_per_image,
                  **{f"class_share.{k}": v for k, v in self.class_share.items()},
                  **{f"thickness.{k}": v for k, v in self.thickness.items()}}
        for key, value in ranges.items():
            if value is not None and (len(value) != 2 or not 0 <= value[0] <= value[1]):
                raise ParamsError(f"params.yaml: {where}.{key} must be [low, high] with "
                                  f"0 <= low <= high, got {value}")

    def check(self, statistics: dict) -> list[dict]:
        """One row per target: what, the range, the value, and whether it lies in the range."""
        rows = []

        def within(what: str, value: float | None, bounds: list[float]) -> None:
            ok = value is not None and bounds[0] <= value <= bounds[1]
            rows.append({"target": what, "range": list(bounds), "value": value, "met": ok})

        for key in ("objects_per_image", "object_classes_per_image"):
            if getattr(self, key) is not None:
                within(f"{key} (mean)", statistics[key]["mean"], getattr(self, key))
        for name, bounds in self.class_share.items():
            within(f"class_share.{name}", statistics["class_share"].get(_class(name)), bounds)
        for name, bounds in self.thickness.items():
            thickness = statistics["thickness"].get(_class(name))
            within(f"thickness.{name} (median)", thickness and thickness["q50"], bounds)
        if self.largest:
            shares = statistics["class_share"]
            top = sorted(shares, key=shares.get, reverse=True)[:len(self.largest)]
            wanted = sorted(map(_class, self.largest))
            rows.append({"target": "largest classes", "range": wanted, "value": sorted(top),
                         "met": sorted(top) == wanted})
        return rows

    def unknown_classes(self, classes: tuple[str, ...]) -> list[str]:
        named = [*self.class_share, *self.thickness, *self.largest]
        return [name for name in named if _class(name) not in classes]


def _class(name: str) -> str:
    """A target's class name as the layout spells it (traffic_sign -> traffic sign)."""
    return name.replace("_", " ")


def describe(rows: list[dict]) -> str:
    """The target check as lines for a person: 'ok  objects_per_image (mean) 2.41 in [2, 2.8]'."""
    def shown(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return "\n".join(f"  {'ok ' if r['met'] else 'OFF'} {r['target']} {shown(r['value'])} "
                     f"in {r['range']}" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.stats",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a dataset folder (e.g. data/voc)")
    args = parser.parse_args(argv)
    try:
        layout = layout_of(args.root)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    statistics = LabelStatistics(layout)
    from PIL import Image

    for split in layout.splits:
        for _, label_path in layout.pairs(args.root, split):
            statistics.add(np.asarray(Image.open(label_path)))
    print(json.dumps(statistics.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
