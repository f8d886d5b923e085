"""The report's figures (matplotlib, headless Agg), saved without a timestamp so the same results
give the same PNG bytes."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..measures import IMAGE_MIOU, MIOU  # noqa: E402
from .compare import LossRow  # noqa: E402
from .convergence import curve_band  # noqa: E402
from .gradients import CASES, COLUMNS, SETTINGS  # noqa: E402
from .results import FINISHED, DatasetResults  # noqa: E402

COLOURS = plt.get_cmap("tab10").colors


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


#: The two sides of Berman et al.'s "per image versus over the dataset": a row of plots each.
SIDES = (MIOU, IMAGE_MIOU)


def miou_per_seed(studies: list[tuple[DatasetResults, list[LossRow]]], path: Path) -> Path:
    """mIoU (top) and image-mIoU (bottom) per loss and dataset: every finished seed a dot, the
    mean a bar; unfinished trials are counted under the loss's name."""
    width = max(5.5, 0.9 * max(len(rows) for _, rows in studies) + 1)
    fig, axes = plt.subplots(len(SIDES), len(studies), figsize=(width * len(studies), 8.4),
                             squeeze=False)
    for metric, axes_row in zip(SIDES, axes, strict=True):
        for ax, (results, rows) in zip(axes_row, studies, strict=True):
            for x, row in enumerate(rows):
                seeds = row.values[metric]
                colour = COLOURS[x % len(COLOURS)]
                for j, value in enumerate(seeds.values()):
                    ax.plot(x + (j - (len(seeds) - 1) / 2) * 0.08, value, "o", color=colour,
                            markersize=6, markeredgecolor="black", markeredgewidth=0.5)
                if seeds:
                    ax.hlines(row.summaries[metric].mean, x - 0.3, x + 0.3, color=colour, lw=2)
            ax.set_xticks(range(len(rows)), [_tick(row) for row in rows], fontsize=7)
            ax.set_ylabel(f"{metric} (%)")
            ax.set_title(f"{results.dataset}: {metric} per seed (bar: mean)", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _tick(row: LossRow) -> str:
    label = row.label.replace(" + ", "\n+ ").replace(" (", "\n(")
    return label + (f"\n({', '.join(row.problems)})" if row.problems else "")


def validation_curves(studies: list[tuple[DatasetResults, list[LossRow]]], path: Path) -> Path:
    """Validation mIoU (top) and image-mIoU (bottom) against iteration: each seed a thin line, a
    loss one colour."""
    fig, axes = plt.subplots(len(SIDES), len(studies), figsize=(5.5 * len(studies), 8.0),
                             squeeze=False)
    for metric, axes_row in zip(SIDES, axes, strict=True):
        for ax, (results, rows) in zip(axes_row, studies, strict=True):
            for x, row in enumerate(rows):
                colour = COLOURS[x % len(COLOURS)]
                drawn = False
                for trial in results.loss(row.loss).trials:
                    points = [p for p in trial.history if p.get(metric) is not None]
                    if not points:
                        continue
                    style = "-" if trial.status == FINISHED else ":"
                    ax.plot([p["iteration"] for p in points], [p[metric] for p in points], style,
                            color=colour, lw=1.2, marker="o", markersize=3,
                            label=None if drawn else row.label)
                    drawn = True
            ax.set_xlabel("iteration")
            ax.set_ylabel(f"validation {metric} (%)")
            ax.set_title(f"{results.dataset}: {metric} (dotted: unfinished)", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    return _save(fig, path)


def convergence_curves(studies: list[tuple[DatasetResults, float | None]], confidence: float,
                       path: Path) -> Path:
    """The convergence arm's mIoU curves, a panel per dataset: per loss the mean over the seeds
    with its interval as a band, and the threshold of the iterations-to-threshold column."""
    fig, axes = plt.subplots(1, len(studies), figsize=(5.5 * len(studies), 4.2), squeeze=False)
    for ax, (results, threshold) in zip(axes[0], studies, strict=True):
        for x, losses in enumerate(results.convergence):
            band = curve_band(losses, confidence)
            if not band:
                continue
            iterations, means, lows, highs, _ = zip(*band, strict=True)
            colour = COLOURS[x % len(COLOURS)]
            ax.plot(iterations, means, "-", color=colour, lw=1.5,
                    label=f"{losses.name} ({len(losses.chosen())} seeds)")
            ax.fill_between(iterations, lows, highs, color=colour, alpha=0.2, lw=0)
        if threshold is not None:
            ax.axhline(threshold, color="black", lw=0.8, ls="--", label="threshold")
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation mIoU (%)")
        ax.set_title(f"{results.dataset}: convergence arm (band: {confidence:.0%} CI over "
                     f"seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def per_class_bars(results: DatasetResults, rows: list[LossRow], path: Path) -> Path:
    """IoU per class, a bar per loss (mean over the finished seeds)."""
    columns = [row for row in rows if row.counts["finished"]]
    width = 0.8 / max(len(columns), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(results.classes) + 2), 4.2))
    for j, row in enumerate(columns):
        per_class = results.loss(row.loss).finished_per_class()
        means = [sum(pc.get(f"IoU.{c}", 0.0) for pc in per_class) / len(per_class)
                 for c in results.classes]
        ax.bar([i + (j - (len(columns) - 1) / 2) * width for i in range(len(results.classes))],
               means, width, color=COLOURS[rows.index(row) % len(COLOURS)], label=row.label)
    ax.set_xticks(range(len(results.classes)), results.classes, rotation=60, ha="right",
                  fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"{results.dataset}: IoU per class (mean over seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(len(columns), 5))
    return _save(fig, path)


def gradient_study(points: list[dict], path: Path) -> Path:
    """Mean |gradient| on false-positive pixels against the shift: one column per case, one
    row per setting (one class w.r.t. p; the training default w.r.t. the logit)."""
    fig, axes = plt.subplots(len(SETTINGS), len(CASES), figsize=(5.0 * len(CASES), 3.6 * 2),
                             squeeze=False)
    for row, setting in enumerate(SETTINGS):
        columns = [c for c, (_, s) in COLUMNS.items() if s == setting]
        for ax, case in zip(axes[row], CASES, strict=True):
            mine = [p for p in points if p["case"] == case.name]
            for j, column in enumerate(columns):
                ax.plot([p["shift"] for p in mine], [p[column] for p in mine], "o-",
                        color=COLOURS[j + 1], label=column)
            twin = ax.twinx()
            twin.plot([p["shift"] for p in mine], [p["iou"] for p in mine], "--", color="grey",
                      lw=1, label="IoU of the prediction")
            twin.set_ylim(-0.05, 1.05)
            twin.set_ylabel("IoU", color="grey")
            ax.set_xlabel("shift s (pixels)")
            ax.set_ylabel("mean |∂loss/∂z_object|" if setting.wrt_logits
                          else "mean |∂loss/∂p_object|")
            ax.set_title(f"{case.name}: " + ("classes 'present', w.r.t. logits"
                                              if setting.wrt_logits
                                              else "object class only, w.r.t. p"), fontsize=9)
            ax.grid(alpha=0.3)
            handles = ax.get_legend_handles_labels()
            extra = twin.get_legend_handles_labels()
            ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7, loc="best")
    return _save(fig, path)
