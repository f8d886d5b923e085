"""Lovász losses as MMSegmentation modules, registered in mmseg's MODELS registry.

Use from any mmseg config with ``custom_imports=dict(imports=['pipeline.losses'])``, alone or
beside CE::

    loss_decode=[dict(type='CrossEntropyLoss', loss_weight=1.0),
                 dict(type='LovaszPixIoULoss', per_image=False, loss_weight=1.0)]
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor

from .lovasz import lovasz_pixiou, lovasz_softmax


class _LovaszLossBase(nn.Module):
    """Takes logits like mmseg's CrossEntropyLoss; softmax is taken in fp32."""

    default_name = "loss_lovasz"

    def __init__(self, classes="present", per_image: bool = False, loss_weight: float = 1.0,
                 loss_name: str | None = None):
        super().__init__()
        if isinstance(classes, (list, tuple)):
            classes = list(classes)
        self.classes = classes
        self.per_image = per_image
        self.loss_weight = loss_weight
        self._loss_name = loss_name or self.default_name
        if not self._loss_name.startswith("loss_"):
            raise ValueError(f"loss_name must start with 'loss_' for mmseg to back-propagate "
                             f"it, got {self._loss_name!r}")

    def _loss(self, probas: Tensor, label: Tensor, ignore_index: int) -> Tensor:
        raise NotImplementedError

    def forward(self, cls_score: Tensor, label: Tensor, weight: Tensor | None = None,
                ignore_index: int = 255, **kwargs) -> Tensor:
        """cls_score: [B, C, H, W] logits; label: [B, H, W]. Returns the weighted 0-dim loss."""
        if weight is not None:
            raise ValueError(f"{type(self).__name__} has no per-pixel weights (the Lovász "
                             "extension is not a sum over pixels); drop the sampler")
        probas = F.softmax(cls_score.float(), dim=1)
        return self.loss_weight * self._loss(probas, label, ignore_index)

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def extra_repr(self) -> str:
        return (f"classes={self.classes!r}, per_image={self.per_image}, "
                f"loss_weight={self.loss_weight}, loss_name={self._loss_name!r}")


@MODELS.register_module()
class LovaszSoftmaxLoss(_LovaszLossBase):
    """Lovász-Softmax (Berman et al., 2018) on logits; batch mode needs no reduction='none'."""

    default_name = "loss_lovasz"

    def _loss(self, probas, label, ignore_index):
        return lovasz_softmax(probas, label, self.classes, self.per_image, ignore_index)


@MODELS.register_module()
class LovaszPixIoULoss(_LovaszLossBase):
    """Lovász-PixIoU (Yu et al., 2021, as defined in docs/pixiou.md) on logits."""

    default_name = "loss_pixiou"

    def __init__(self, classes="present", per_image: bool = False, loss_weight: float = 1.0,
                 loss_name: str | None = None, use_distance: bool = True):
        super().__init__(classes, per_image, loss_weight, loss_name)
        self.use_distance = use_distance

    def _loss(self, probas, label, ignore_index):
        return lovasz_pixiou(probas, label, self.classes, self.per_image, ignore_index,
                             self.use_distance)
