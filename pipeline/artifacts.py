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
    """Collects, during one validation pass, the confusion matrix and the first `overlays`
    predictions, so the run's artifacts cost no second pass over the validation set."""

    def __init__(self, classes: list[str], palette, overlays: int, ignore_index: int = 255):
        import torch

        self.classes = list(classes)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.overlays = overlays
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(len(classes) ** 2, dtype=torch.int64)
        self.panels: list[tuple[str, np.ndarray]] = []

    def add(self, samples) -> None:
        import cv2
        import torch

        num_classes = len(self.classes)
        for sample in samples:
            pred = sample.pred_sem_seg.data.squeeze(0).cpu().long()
            gt = sample.gt_sem_seg.data.squeeze(0).cpu().long()
            valid = gt != self.ignore_index
            self.confusion += torch.bincount(gt[valid] * num_classes + pred[valid],
                                             minlength=num_classes ** 2)
            if len(self.panels) < self.overlays:
                image = cv2.imread(sample.img_path)[..., ::-1]
                name = f"{len(self.panels):02d}_{Path(sample.img_path).stem}.png"
                self.panels.append((name, overlay_panel(image, gt.numpy(), pred.numpy(),
                                                        self.palette)))

    def write(self, work_dir: Path) -> None:
        import cv2

        num_classes = len(self.classes)
        matrix = self.confusion.view(num_classes, num_classes).numpy()
        (work_dir / CONFUSION_JSON).write_text(
            json.dumps({"classes": self.classes, "matrix": matrix.tolist()}) + "\n")
        plot_confusion(matrix, self.classes, work_dir / CONFUSION_PNG)
        overlay_dir = work_dir / OVERLAYS
        overlay_dir.mkdir(parents=True, exist_ok=True)
        for name, panel in self.panels:
            cv2.imwrite(str(overlay_dir / name), panel[..., ::-1])
