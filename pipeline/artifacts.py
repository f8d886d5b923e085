"""What a finished run leaves beside its checkpoints for MLflow: a confusion matrix (PNG and
JSON) over the validation set and a few prediction overlays (image | ground truth | prediction).
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


def write_run_artifacts(runner, work_dir: Path, overlays: int, ignore_index: int = 255) -> None:
    """One pass of the trained model over the validation set (rank 0 only)."""
    import cv2
    import torch
    from mmengine.model import is_model_wrapper

    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    model.eval()
    meta = runner.val_dataloader.dataset.metainfo
    classes = list(meta["classes"])
    palette = np.asarray(meta["palette"], dtype=np.uint8)
    num_classes = len(classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    overlay_dir = work_dir / OVERLAYS
    overlay_dir.mkdir(parents=True, exist_ok=True)
    shown = 0
    with torch.no_grad():
        for batch in runner.val_dataloader:
            for sample in model.val_step(batch):
                pred = sample.pred_sem_seg.data.squeeze(0).cpu().long()
                gt = sample.gt_sem_seg.data.squeeze(0).cpu().long()
                valid = gt != ignore_index
                confusion += torch.bincount(gt[valid] * num_classes + pred[valid],
                                            minlength=num_classes ** 2)
                if shown < overlays:
                    image = cv2.imread(sample.img_path)[..., ::-1]
                    panel = overlay_panel(image, gt.numpy(), pred.numpy(), palette)
                    name = f"{shown:02d}_{Path(sample.img_path).stem}.png"
                    cv2.imwrite(str(overlay_dir / name), panel[..., ::-1])
                    shown += 1
    matrix = confusion.view(num_classes, num_classes).numpy()
    (work_dir / CONFUSION_JSON).write_text(
        json.dumps({"classes": classes, "matrix": matrix.tolist()}) + "\n")
    plot_confusion(matrix, classes, work_dir / CONFUSION_PNG)
