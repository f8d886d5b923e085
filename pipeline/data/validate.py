"""The last step of every dataset stage: check the layout and write manifest.json.

Checks that each split exists and has the expected number of pairs, that every image has its
label with the same size, and that label values lie in [0, C) ∪ {255}. The first bad file fails
the stage by name. The manifest records counts, the class pixel histogram, the label statistics
(`pipeline.data.stats`) and a content hash.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .layouts import IGNORE_INDEX, Layout
from .stats import LabelStatistics


class DatasetError(ValueError):
    """A dataset on disk that does not match its layout."""


def manifest_hash(root: Path) -> str | None:
    """The content hash in `root`'s manifest.json (the data stage's), None without one."""
    manifest = root / "manifest.json"
    return json.loads(manifest.read_text())["content_sha256"] if manifest.is_file() else None


def _read(path: Path, root: Path, content) -> Image.Image:
    """Read `path` once: its bytes feed the content hash and are decoded from memory."""
    data = path.read_bytes()
    content.update(f"{path.relative_to(root)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return Image.open(io.BytesIO(data))


def validate(layout: Layout, root: Path, expected: dict[str, int] | None = None) -> dict:
    """Validate `root` against `layout`; return the manifest (also written to root)."""
    histogram = np.zeros(layout.num_classes + 1, dtype=np.int64)  # last bin: ignore
    counts, content = {}, hashlib.sha256()
    statistics = LabelStatistics(layout)
    for split in layout.splits:
        try:
            pairs = layout.pairs(root, split)
        except FileNotFoundError as error:
            raise DatasetError(f"{layout.name} split '{split}': {error}") from error
        counts[split] = len(pairs)
        want = (expected or {}).get(split)
        if want is not None and want != len(pairs):
            raise DatasetError(f"{layout.name} split '{split}': {len(pairs)} image/label "
                               f"pairs under {root}, expected {want}")
        if not pairs:
            raise DatasetError(f"{layout.name} split '{split}': no images under {root}")
        for image_path, label_path in tqdm(pairs, desc=f"validate {split}", unit="img",
                                           mininterval=5.0):
            for path in (image_path, label_path):
                if not path.is_file():
                    raise DatasetError(f"{path}: missing (pair of {image_path.name})")
            try:
                with _read(image_path, root, content) as image:
                    image_size = image.size
                with _read(label_path, root, content) as label_image:
                    label = np.asarray(label_image)
            except OSError as error:
                raise DatasetError(f"{image_path} / {label_path}: unreadable: {error}") from error
            if label.ndim != 2:
                raise DatasetError(f"{label_path}: label must be a single-channel image, "
                                   f"got shape {label.shape}")
            if (label.shape[1], label.shape[0]) != image_size:
                raise DatasetError(f"{label_path}: size {label.shape[1]}x{label.shape[0]} "
                                   f"differs from its image {image_path.name} "
                                   f"{image_size[0]}x{image_size[1]}")
            values = np.bincount(label.ravel(), minlength=256)
            bad = np.flatnonzero(values[layout.num_classes:IGNORE_INDEX]) + layout.num_classes
            bad = np.concatenate([bad, np.flatnonzero(values[IGNORE_INDEX + 1:]) + 256])
            if bad.size:
                raise DatasetError(f"{label_path}: label values {bad.tolist()} outside "
                                   f"[0, {layout.num_classes}) and not {IGNORE_INDEX}")
            statistics.add(label)
            histogram[:-1] += values[:layout.num_classes]
            histogram[-1] += values[IGNORE_INDEX]
    manifest = {
        "layout": layout.name,
        "num_classes": layout.num_classes,
        "counts": counts,
        "class_pixels": dict(zip(layout.classes, histogram[:-1].tolist(), strict=True)),
        "ignored_pixels": int(histogram[-1]),
        "statistics": statistics.summary(),
        "content_sha256": content.hexdigest(),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
