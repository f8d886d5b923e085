"""The on-disk layouts MMSegmentation's dataset classes read, shared by every data stage.

- VOC-aug (`PascalVOCDataset`): VOCdevkit/VOC2012/JPEGImages/<id>.jpg, labels in
  SegmentationClassAug/<id>.png (class indices, 255 on boundaries), split lists in
  ImageSets/Segmentation/<split>.txt; train_aug = SBD train+val + VOC train - VOC val.
- Cityscapes (`CityscapesDataset`): leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png and
  gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png (19 train ids, 255 ignore).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                      "truck", "bus", "train", "motorcycle", "bicycle")
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Layout:
    """Where the images and labels of each split lie under a dataset root."""

    name: str
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    # the classes that come as countable objects (the data statistics' "objects per image")
    things: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def pairs(self, root: Path, split: str) -> list[tuple[Path, Path]]:
        raise NotImplementedError


class VOCAugLayout(Layout):
    def __init__(self):
        super().__init__("voc-aug", VOC_CLASSES, ("train_aug", "val"), VOC_CLASSES[1:])

    @staticmethod
    def voc_root(root: Path) -> Path:
        return root / "VOCdevkit" / "VOC2012"

    def split_file(self, root: Path, split: str) -> Path:
        return self.voc_root(root) / "ImageSets" / "Segmentation" / f"{split}.txt"

    def image(self, root: Path, image_id: str) -> Path:
        return self.voc_root(root) / "JPEGImages" / f"{image_id}.jpg"

    def label(self, root: Path, image_id: str) -> Path:
        return self.voc_root(root) / "SegmentationClassAug" / f"{image_id}.png"

    def pairs(self, root: Path, split: str) -> list[tuple[Path, Path]]:
        split_file = self.split_file(root, split)
        if not split_file.is_file():
            raise FileNotFoundError(f"{split_file}: split list missing")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        return [(self.image(root, i), self.label(root, i)) for i in ids]


class CityscapesLayout(Layout):
    IMAGE_SUFFIX = "_leftImg8bit.png"
    LABEL_SUFFIX = "_gtFine_labelTrainIds.png"

    def __init__(self):
        # Cityscapes' instance classes (Cordts et al. 2016: the 'human' and 'vehicle' groups)
        super().__init__("cityscapes", CITYSCAPES_CLASSES, ("train", "val"),
                         CITYSCAPES_CLASSES[11:])

    def image(self, root: Path, split: str, city: str, stem: str) -> Path:
        return root / "leftImg8bit" / split / city / f"{stem}{self.IMAGE_SUFFIX}"

    def label(self, root: Path, split: str, city: str, stem: str) -> Path:
        return root / "gtFine" / split / city / f"{stem}{self.LABEL_SUFFIX}"

    def pairs(self, root: Path, split: str) -> list[tuple[Path, Path]]:
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"{image_dir}: image folder missing")
        pairs = []
        for image in sorted(image_dir.glob(f"*/*{self.IMAGE_SUFFIX}")):
            stem = image.name[: -len(self.IMAGE_SUFFIX)]
            pairs.append((image, self.label(root, split, image.parent.name, stem)))
        return pairs


VOC_AUG = VOCAugLayout()
CITYSCAPES = CityscapesLayout()
LAYOUTS = {layout.name: layout for layout in (VOC_AUG, CITYSCAPES)}


def layout_of(root: Path) -> Layout:
    """The layout a built dataset's manifest.json names."""
    import json

    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise ValueError(f"{manifest}: missing (build the dataset first: dvc repro data@<key>)")
    name = json.loads(manifest.read_text()).get("layout")
    if name not in LAYOUTS:
        raise ValueError(f"{manifest}: unknown layout {name!r} (known: {', '.join(LAYOUTS)})")
    return LAYOUTS[name]
