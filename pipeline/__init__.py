"""pixiou-repro: the Lovász-Softmax / Lovász-PixIoU segmentation-loss study as a DVC pipeline."""
__version__ = "0.1.0"
