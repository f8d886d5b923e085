"""Lovász-Softmax and Lovász-PixIoU losses, and the PixIoU measure.

Importing this package registers `LovaszSoftmaxLoss` and `LovaszPixIoULoss` in mmseg's MODELS.
"""
from .geometry import iou_and_pixiou, pixiou_counts, pixiou_geometry, pixiou_weights
from .lovasz import jaccard_gradient, lovasz_coefficients_, lovasz_pixiou, lovasz_softmax
from .modules import LovaszPixIoULoss, LovaszSoftmaxLoss

__all__ = [
    "LovaszPixIoULoss", "LovaszSoftmaxLoss", "iou_and_pixiou", "jaccard_gradient",
    "lovasz_coefficients_", "lovasz_pixiou",
    "lovasz_softmax", "pixiou_counts", "pixiou_geometry", "pixiou_weights",
]
