"""Generated datasets in the exact VOC-aug and Cityscapes layouts: the embedded default.

They do not look real, but their labels match the real datasets' where per-image and dataset
IoU part ways (`pipeline.data.stats`, checked against `datasets.<key>.targets`): VOC-like images
hold a few large objects of one or two classes on a background that covers most of the image;
Cityscapes-like ones are road, building and vegetation bands with cars and people, thin poles and
small signs and lights. Object sizes are spread log-uniformly, classes follow a Zipf-like
imbalance, objects occlude each other, backgrounds are textured and cluttered. Each class has
its own appearance (a hue and a stripe texture of its own frequency and angle, with noise), so a
small CNN learns it in minutes, but small, thin and partly hidden objects stay hard, and that is
where Jaccard-type losses differ from cross-entropy. Everything is deterministic given the seed.
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
from .stats import StatisticsTargets


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
    # [min, max] object radius over the image's shorter side, drawn log-uniformly
    object_size: list[float] = dataclasses.field(default_factory=lambda: [0.016, 0.3])
    # mean object classes an image draws (1 + Poisson) before its objects pick among them, as
    # real photos hold a few objects of few classes; null: every object picks its own class
    classes_per_image: float | None = None
    targets: StatisticsTargets | None = None  # what the labels must look like (the data stage
    # checks them; the published figures they come from are in `targets.source`)

    def validate(self, where: str) -> None:
        if self.train < 1 or self.val < 1:
            raise ParamsError(f"params.yaml: {where}: train and val must be >= 1")
        if min(self.height, self.width) < 32:
            raise ParamsError(f"params.yaml: {where}: height and width must be >= 32")
        for name in ("objects_per_image", "distractors", "object_size"):
            value = getattr(self, name)
            if len(value) != 2 or not 0 <= value[0] <= value[1]:
                raise ParamsError(f"params.yaml: {where}.{name} must be [min, max], "
                                  f"0 <= min <= max, got {value}")
        if not 0 < self.object_size[0]:
            raise ParamsError(f"params.yaml: {where}.object_size[0] must be > 0")
        if self.classes_per_image is not None and self.classes_per_image < 1:
            raise ParamsError(f"params.yaml: {where}.classes_per_image must be >= 1 or null, "
                              f"got {self.classes_per_image}")


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


def _bar_mask(rng, grid, height: int, width: int) -> np.ndarray:
    """A thin upright bar (a pole): 1 to 3 pixels wide, standing on the lower half."""
    rows, cols = grid
    left = rng.uniform(0, width - 3)
    foot = rng.uniform(0.55, 0.95) * height
    top = foot - rng.uniform(0.2, 0.55) * height
    return (cols >= left) & (cols < left + rng.integers(1, 4)) & (rows >= top) & (rows < foot)


class SceneGenerator:
    """Draws (image, label) pairs: a background layout, then objects in depth order.

    `shapes` gives a class a shape of its own: 'bar' (thin poles) or 'small' (signs, lights: a
    tenth of the usual size range); every other class draws ellipses, rectangles and triangles.
    """

    def __init__(self, params: SyntheticParams, num_classes: int, background: list[tuple],
                 object_classes: list[int], boundary_ignore: bool,
                 shapes: dict[int, str] | None = None):
        self.params = params
        self.num_classes = num_classes
        self.background = background  # [(class, top fraction, bottom fraction)] bands
        self.shapes = shapes or {}
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
        low, high = (scale * f for f in self.params.object_size)

        def blob(shape: str | None = None) -> np.ndarray:  # tiny to large, log-uniform
            if shape == "bar":
                return _bar_mask(rng, self.grid, height, width)
            top = max(low, high / 10) if shape == "small" else high
            size = np.exp(rng.uniform(np.log(low), np.log(top)))
            centre = (rng.uniform(0, height), rng.uniform(0, width))
            return _shape_mask(int(rng.integers(3)), centre, (size, size * rng.uniform(0.4, 1.6)),
                               rng.uniform(0, np.pi), self.grid)

        for _ in range(rng.integers(self.params.distractors[0], self.params.distractors[1] + 1)):
            # clutter: an object class's colour with a background texture, labelled background
            mask = blob()
            under = int(label[mask].max()) if mask.any() else 0
            self.appearance.paint(image, mask, int(rng.choice(self.object_classes)), rng,
                                  self.grid, texture=under)
        fewest, most = self.params.objects_per_image
        count = int(rng.integers(fewest, most + 1))
        classes = self._image_classes(rng, count)
        for i in range(count):  # later objects occlude earlier ones
            # every class the image drew gets an object, the rest pick by frequency
            cls = int(classes[i] if i < len(classes) and self.params.classes_per_image
                      else rng.choice(classes, p=self._probability(classes)))
            mask = blob(self.shapes.get(cls))
            for _ in range(8):  # objects of one class apart, so each stays an object of its own
                if not (label[mask] == cls).any():
                    break
                mask = blob(self.shapes.get(cls))
            if not mask.any():
                continue
            label[mask] = cls
            self.appearance.paint(image, mask, cls, rng, self.grid)
        if self.boundary_ignore:
            label[_boundary(label)] = IGNORE_INDEX
        pixels = np.clip(image * 255, 0, 255).astype(np.uint8)
        return pixels, label

    def _image_classes(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """The classes this image's objects pick from: all, or 1 + Poisson(mean - 1) of them
        (never more than the objects), drawn by the Zipf frequencies."""
        mean = self.params.classes_per_image
        if mean is None:
            return self.object_classes
        wanted = min(1 + int(rng.poisson(mean - 1)), max(count, 1), len(self.object_classes))
        return rng.choice(self.object_classes, size=wanted, replace=False,
                          p=self.class_probability)

    def _probability(self, classes: np.ndarray) -> np.ndarray:
        index = {int(c): i for i, c in enumerate(self.object_classes)}
        weights = self.class_probability[[index[int(c)] for c in classes]]
        return weights / weights.sum()


#: VOC's object classes from the most to the least frequent, by the number of VOC 2012
#: segmentation training images holding each (person first, by far; the devkit's statistics).
VOC_FREQUENCY_ORDER = ("person", "chair", "cat", "car", "dog", "bird", "sofa", "aeroplane",
                       "bottle", "tvmonitor", "train", "diningtable", "pottedplant", "motorbike",
                       "boat", "bus", "horse", "bicycle", "cow", "sheep")


def voc_generator(params: SyntheticParams) -> SceneGenerator:
    # background (class 0) everywhere, 20 object classes in VOC's frequency order (the Zipf
    # ranks); borders ignored like VOC's
    objects = [VOC_AUG.classes.index(name) for name in VOC_FREQUENCY_ORDER]
    return SceneGenerator(params, len(VOC_AUG.classes), [(0, -0.1, 1.1)], objects,
                          boundary_ignore=True)


def cityscapes_generator(params: SyntheticParams) -> SceneGenerator:
    # sky / building / vegetation / sidewalk / road bands, then things and small stuff
    # shares near Cityscapes': road, building and vegetation dominate, the sky is a strip
    bands = [(10, -0.1, 0.08), (2, 0.08, 0.38), (8, 0.38, 0.53), (1, 0.53, 0.6), (0, 0.6, 1.1)]
    objects = [13, 11, 5, 7, 8, 18, 9, 3, 4, 6, 12, 14, 15, 17, 16]
    shapes = {5: "bar", 6: "small", 7: "small"}  # pole; traffic light, traffic sign
    return SceneGenerator(params, len(CITYSCAPES.classes), bands, objects, boundary_ignore=False,
                          shapes=shapes)


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
