"""pixiou-repro: the Lovász-Softmax / Lovász-PixIoU segmentation-loss study as a DVC pipeline."""
import warnings

# mmengine imports pkg_resources, which setuptools deprecates on every import; the pin
# setuptools<81 (STACK.md trap 2) keeps it working, so the warning is only noise here.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

__version__ = "0.1.0"
