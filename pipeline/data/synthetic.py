"""Generated datasets in the exact VOC-aug and Cityscapes layouts: the embedded default.

They are built to exercise IoU losses rather than to look real: many objects per image, with
sizes spread log-uniformly from a few pixels to half the image, a Zipf-like class imbalance,
objects occluding each other, and textured backgrounds. Each class has its own appearance (a hue
and a stripe texture of its own frequency and angle, with noise), so a small CNN can learn it
from scratch in minutes, but small and partly hidden objects stay hard, and that is where
Jaccard-type losses differ from cross-entropy. Everything is deterministic given the seed.
"""
from __future__ import annotations

import colorsys
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..params import ParamsError
from .layouts import CITYSCAPES, IGNORE_INDEX, VOC_AUG


@dataclass
class SyntheticParams:
    """params.yaml: datasets.synthetic_voc / datasets.synthetic_cityscapes."""

    seed: int
    train: int
    val: int
    height: int
    width: int
    objects_per_image: list[int]  # [min, max]
    imbalance: float = 1.0  # Zipf exponent of the object class frequencies
    colour_jitter: float = 0.12  # per-object colour shift: colour alone must not give the class
    pixel_noise: float = 0.12  # per-pixel noise
    distractors: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # [min, max]
    # background blobs that borrow an object class's colour but not its texture

    def validate(self, where: str) -> None:
        if self.train < 1 or self.val < 1:
            raise ParamsError(f"params.yaml: {where}: train and val must be >= 1")
        if min(self.height, self.width) < 32:
            raise ParamsError(f"params.yaml: {where}: height and width must be >= 32")
        for name in ("objects_per_image", "distractors"):
            value = getattr(self, name)
            if len(value) != 2 or not 0 <= value[0] <= value[1]:
                raise ParamsError(f"params.yaml: {where}.{name} must be [min, max], "
                                  f"0 <= min <= max, got {value}")


class Appearance:
    """A fixed look per class: hue, saturation, brightness and a stripe texture."""

    def __init__(self, num_classes: int, seed: int, colour_jitter: float, pixel_noise: float):
        self.colour_jitter, self.pixel_noise = colour_jitter, pixel_noise
        rng = np.random.default_rng(seed)
        hues = (np.arange(num_classes) / num_classes + rng.uniform(0, 0.02, num_classes)) % 1
        rng.shuffle(hues)
        self.colour = np.array([colorsys.hsv_to_rgb(h, rng.uniform(0.45, 0.9),
                                                    rng.uniform(0.45, 0.95)) for h in hues])
        self.frequency = rng.uniform(0.15, 0.9, num_classes)  # stripes per pixel / 2π
        self.angle = rng.uniform(0, np.pi, num_classes)
        self.contrast = rng.uniform(0.08, 0.25, num_classes)

    def paint(self, image: np.ndarray, mask: np.ndarray, cls: int, rng, grid,
              texture: int | None = None) -> None:
        """Paint class `cls`'s colour with the stripes of class `texture` (default: its own)."""
        texture = cls if texture is None else texture
        rows, cols = grid
        phase = rng.uniform(0, 2 * np.pi)
        angle = self.angle[texture]
        along = rows[mask] * np.sin(angle) + cols[mask] * np.cos(angle)
        stripes = np.sin(along * self.frequency[texture] + phase)[:, None]
        jitter = rng.normal(0, self.colour_jitter, 3)
        noise = rng.normal(0, self.pixel_noise, (stripes.shape[0], 3))
        image[mask] = self.colour[cls] + jitter + self.contrast[texture] * stripes + noise


def _shape_mask(kind: int, centre, radii, angle, grid) -> np.ndarray:
    rows, cols = grid
    dr, dc = rows - centre[0], cols - centre[1]
    u = dr * np.cos(angle) + dc * np.sin(angle)
    v = -dr * np.sin(angle) + dc * np.cos(angle)
    a, b = radii
    if kind == 0:  # ellipse
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == 1:  # rotated rectangle
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    return (u >= -a) & (u <= a) & (np.abs(v) <= b * (a - u) / (2 * a))  # triangle


def _boundary(label: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another label (VOC marks object borders 255)."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:-1] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    return edge


class SceneGenerator:
    """Draws (image, label) pairs: a background layout, then objects in depth order."""

    def __init__(self, params: SyntheticParams, num_classes: int, background: list[tuple],
                 object_classes: list[int], boundary_ignore: bool):
        self.params = params
        self.num_classes = num_classes
        self.background = background  # [(class, top fraction, bottom fraction)] bands
        self.object_classes = np.array(object_classes)
        ranks = np.arange(1, len(object_classes) + 1, dtype=float)
        self.class_probability = ranks ** -params.imbalance / np.sum(ranks ** -params.imbalance)
        self.boundary_ignore = boundary_ignore
        self.appearance = Appearance(num_classes, params.seed, params.colour_jitter,
                                     params.pixel_noise)
        self.grid = np.mgrid[0:params.height, 0:params.width].astype(np.float32)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        height, width = self.params.height, self.params.width
        image = np.zeros((height, width, 3), dtype=np.float32)
        label = np.zeros((height, width), dtype=np.uint8)
        rows = self.grid[0]
        for cls, top, bottom in self.background:
            # bands with a wavy border, so the layout is not a fixed template
            wave = np.sin(self.grid[1] / width * rng.uniform(2, 6) + rng.uniform(0, 6)) * 0.04
            band = (rows >= (top + wave) * height) & (rows < (bottom + wave) * height)
            label[band] = cls
            self.appearance.paint(image, band, cls, rng, self.grid)
        scale = min(height, width)

        def blob() -> np.ndarray:  # tiny to large, log-uniform
            size = np.exp(rng.uniform(np.log(2.0), np.log(scale * 0.3)))
            centre = (rng.uniform(0, height), rng.uniform(0, width))
            return _shape_mask(int(rng.integers(3)), centre, (size, size * rng.uniform(0.4, 1.6)),
                               rng.uniform(0, np.pi), self.grid)

        for _ in range(rng.integers(self.params.distractors[0], self.params.distractors[1] + 1)):
            # clutter: an object class's colour with a background texture, labelled background
            mask = blob()
            under = int(label[mask].max()) if mask.any() else 0
            self.appearance.paint(image, mask, int(rng.choice(self.object_classes)), rng,
                                  self.grid, texture=under)
        low, high = self.params.objects_per_image
        for _ in range(rng.integers(low, high + 1)):  # later objects occlude earlier ones
            cls = int(rng.choice(self.object_classes, p=self.class_probability))
            mask = blob()
            if not mask.any():
                continue
            label[mask] = cls
            self.appearance.paint(image, mask, cls, rng, self.grid)
        if self.boundary_ignore:
            label[_boundary(label)] = IGNORE_INDEX
        pixels = np.clip(image * 255, 0, 255).astype(np.uint8)
        return pixels, label


def voc_generator(params: SyntheticParams) -> SceneGenerator:
    # background (class 0) everywhere, 20 object classes; borders ignored like VOC's
    return SceneGenerator(params, len(VOC_AUG.classes), [(0, -0.1, 1.1)],
                          list(range(1, 21)), boundary_ignore=True)


def cityscapes_generator(params: SyntheticParams) -> SceneGenerator:
    # sky / building / vegetation / sidewalk / road bands, then things and small stuff
    bands = [(10, -0.1, 0.25), (2, 0.25, 0.5), (8, 0.5, 0.6), (1, 0.6, 0.72), (0, 0.72, 1.1)]
    objects = [13, 11, 5, 7, 8, 18, 9, 3, 4, 6, 12, 14, 15, 17, 16]
    return SceneGenerator(params, len(CITYSCAPES.classes), bands, objects, boundary_ignore=False)


def _split_rngs(seed: int, split: str, count: int):
    root = np.random.SeedSequence([seed, {"train": 0, "train_aug": 0, "val": 1}[split]])
    return [np.random.default_rng(s) for s in root.spawn(count)]


def write_synthetic_voc(params: SyntheticParams, root: Path, progress=None) -> None:
    generator = voc_generator(params)
    split_dir = VOC_AUG.split_file(root, "val").parent
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, count in (("train_aug", params.train), ("val", params.val)):
        ids = [f"{2000 + (split == 'val')}_{i:06d}" for i in range(count)]
        for image_id, rng in zip(ids, _split_rngs(params.seed, split, count), strict=True):
            pixels, label = generator.draw(rng)
            image_path, label_path = VOC_AUG.image(root, image_id), VOC_AUG.label(root, image_id)
            image_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(image_path, quality=95)
            Image.fromarray(label).save(label_path)
            if progress:
                progress.update(1)
        VOC_AUG.split_file(root, split).write_text("\n".join(ids) + "\n")


def write_synthetic_cityscapes(params: SyntheticParams, root: Path, progress=None) -> None:
    generator = cityscapes_generator(params)
    for split, count, cities in (("train", params.train, ("aachen", "bremen", "zurich")),
                                 ("val", params.val, ("frankfurt", "lindau"))):
        for i, rng in enumerate(_split_rngs(params.seed, split, count)):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_000019"
            pixels, label = generator.draw(rng)
            image_path = CITYSCAPES.image(root, split, city, stem)
            label_path = CITYSCAPES.label(root, split, city, stem)
            image_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(image_path)
            Image.fromarray(label).save(label_path)
            if progress:
                progress.update(1)
