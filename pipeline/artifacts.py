"""What a finished run leaves beside its checkpoints for MLflow: the confusion matrix (PNG and
JSON) of its final evaluation and a few prediction overlays (image | ground truth | prediction).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_JSON = "confusion_matrix.json"
OVERLAYS = "overlays"


def colourise(label: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """[H, W] class ids -> [H, W, 3] RGB; ignored pixels are white."""
    rgb = np.full(label.shape + (3,), 255, dtype=np.uint8)
    valid = label != ignore_index
    rgb[valid] = palette[label[valid]]
    return rgb


def overlay_panel(image_rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                  palette: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """image | image blended with the ground truth | image blended with the prediction."""
    def blend(label):
        return (alpha * colourise(label, palette) + (1 - alpha) * image_rgb).astype(np.uint8)

    return np.concatenate([image_rgb, blend(gt), blend(pred)], axis=1)


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    size = max(4.0, 0.35 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class EvaluationArtifacts:
    """Collects, during one validation pass, the confusion matrix and the overlays of a fixed set
    of images, so the run's artifacts cost no second pass over the validation set.

    Under DDP every rank sees part of the validation set, and mmengine's sampler pads the parts
    to equal length by repeating images. So counts are kept per image, an image counted once
    however often it comes, and `gather()` merges the ranks' images: the matrix then covers the
    whole validation set exactly, on 1 rank or on N.
    """

    def __init__(self, classes: list[str], palette, overlay_paths: list[str],
                 ignore_index: int = 255):
        self.classes = list(classes)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.overlay_paths = list(overlay_paths)  # drawn whichever rank evaluates them
        self.ignore_index = ignore_index
        self.per_image: dict[str, np.ndarray] = {}  # image path -> flat confusion counts
        self.panels: dict[str, np.ndarray] = {}  # image path -> overlay panel

    def add(self, samples) -> None:
        import cv2
        import torch

        num_classes = len(self.classes)
        for sample in samples:
            if sample.img_path in self.per_image:  # the sampler's padding repeats images
                continue
            pred = sample.pred_sem_seg.data.squeeze(0).cpu().long()
            gt = sample.gt_sem_seg.data.squeeze(0).cpu().long()
            valid = gt != self.ignore_index
            self.per_image[sample.img_path] = torch.bincount(
                gt[valid] * num_classes + pred[valid], minlength=num_classes ** 2).numpy()
            if sample.img_path in self.overlay_paths:
                image = cv2.imread(sample.img_path)[..., ::-1]
                self.panels[sample.img_path] = overlay_panel(image, gt.numpy(), pred.numpy(),
                                                             self.palette)

    def gather(self) -> None:
        """Merge every rank's images into each rank's collector (a collective: all ranks call
        it; a no-op in one process)."""
        from mmengine.dist import all_gather_object, get_world_size

        if get_world_size() == 1:
            return
        for per_image, panels in all_gather_object((self.per_image, self.panels)):
            for path, counts in per_image.items():
                self.per_image.setdefault(path, counts)
            for path, panel in panels.items():
                self.panels.setdefault(path, panel)

    def matrix(self) -> np.ndarray:
        """[classes, classes] pixel counts, rows: ground truth, columns: prediction."""
        num_classes = len(self.classes)
        total = np.zeros(num_classes ** 2, dtype=np.int64)
        for counts in self.per_image.values():
            total += counts
        return total.reshape(num_classes, num_classes)

    def overlays(self) -> list[tuple[str, str]]:
        """(file name, image path) of each overlay drawn, in validation-set order."""
        return [(f"{i:02d}_{Path(path).stem}.png", path)
                for i, path in enumerate(self.overlay_paths) if path in self.panels]

    def write(self, work_dir: Path) -> None:
        import cv2

        matrix = self.matrix()
        (work_dir / CONFUSION_JSON).write_text(
            json.dumps({"classes": self.classes, "images": len(self.per_image),
                        "matrix": matrix.tolist()}) + "\n")
        plot_confusion(matrix, self.classes, work_dir / CONFUSION_PNG)
        overlay_dir = work_dir / OVERLAYS
        overlay_dir.mkdir(parents=True, exist_ok=True)
        for name, path in self.overlays():
            cv2.imwrite(str(overlay_dir / name), self.panels[path][..., ::-1])
