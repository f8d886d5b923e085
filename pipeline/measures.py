"""The study's measures by name: what every evaluation reports, what the sweep records, what
MLflow logs and what the report compares. Definitions (docs/study.md, "The measures"):

- mIoU        dataset IoU per class (Σ_images |G∩P| / Σ_images |G∪P|), mean over the classes;
              what a batch-mode (whole-dataset) Jaccard loss optimises;
- image-mIoU  per image and class IoU = |G∩P| / |G∪P| where the union is non-empty, per class
              the mean over the images where it is defined, then the mean over the classes
              defined in at least one image; what a per-image Jaccard loss optimises
              (Berman et al. 2018, "per image versus over the dataset");
- mPixIoU     dataset PixIoU per class (docs/pixiou.md), mean over the classes.

All in percent. Per class they are reported as IoU.<class>, image-IoU.<class>, PixIoU.<class>.
"""
from __future__ import annotations

MIOU = "mIoU"
IMAGE_MIOU = "image-mIoU"
MPIXIOU = "mPixIoU"
#: Every evaluation's summary values, in the order the tables show them.
METRICS = (MIOU, IMAGE_MIOU, MPIXIOU)
#: The per-class value behind each summary value: "<prefix>.<class name>".
PER_CLASS = {MIOU: "IoU", IMAGE_MIOU: "image-IoU", MPIXIOU: "PixIoU"}
