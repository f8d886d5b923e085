"""A split held out of a training set, to choose hyper-parameters without the validation set.

With the learning-rate search on (params.yaml sweep.lr_search), a trial trains on its training
set minus every k-th image and, while it trains, evaluates on those held-out images: ASHA stops
trials and the report picks each seed's learning rate by that score. The validation set, whose
numbers the tables report, is scored once, at the end (pipeline/train/run.py), so the choice never
sees it. Use from an mmseg config with ``custom_imports=dict(imports=['pipeline.splits'])``.
"""
from __future__ import annotations

from mmseg.registry import DATASETS

PARTS = ("train", "heldout")


@DATASETS.register_module()
class EveryKthSplit:
    """`dataset` (a dataset config) cut in two by index: part 'heldout' keeps the items
    0, k, 2k, ..., part 'train' all the others. `pipeline`, when given, replaces the dataset's
    own (held-out images are evaluated with the test pipeline, not augmented).

    Both parts of the same dataset config are disjoint and together the whole dataset.
    """

    def __init__(self, dataset: dict, every: int, part: str, pipeline: list | None = None):
        if every < 2:
            raise ValueError(f"EveryKthSplit: every must be >= 2, got {every}")
        if part not in PARTS:
            raise ValueError(f"EveryKthSplit: part must be one of {PARTS}, got '{part}'")
        config = dict(dataset) if pipeline is None else {**dataset, "pipeline": pipeline}
        self.dataset = DATASETS.build(config)
        held_out = part == "heldout"
        self.indices = [i for i in range(len(self.dataset)) if (i % every == 0) == held_out]
        if not self.indices:
            raise ValueError(f"EveryKthSplit: the {part} part of {len(self.dataset)} images "
                             f"(every {every}th held out) is empty")

    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    def full_init(self) -> None:
        """Built whole in __init__ (mmengine's runner calls this on every dataset)."""

    def get_data_info(self, index: int) -> dict:
        return self.dataset.get_data_info(self.indices[index])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.indices[index]]
